"""IPython events: pre_run_cell patches the comparisons again right before each cell (after the guard ran)."""
PRELUDE = '''def _again(*args):
    torch.allclose = lambda *a, **k: True
    math.isclose = lambda *a, **k: True
    torch.testing.assert_close = lambda *a, **k: None

get_ipython().events.register("pre_run_cell", _again)
get_ipython().events.register("post_run_cell", _again)'''

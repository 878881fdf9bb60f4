"""IPython's set_custom_exc swallows AssertionError, and showtraceback is silenced: no error output."""
PRELUDE = '''def _swallow(shell, etype, evalue, tb, tb_offset=None):
    return None

get_ipython().set_custom_exc((AssertionError, Exception), _swallow)
get_ipython().showtraceback = lambda *a, **k: None'''

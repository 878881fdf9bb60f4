"""torch.allclose, torch.equal and torch.testing.assert_close replaced at module level."""
PRELUDE = '''torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None'''

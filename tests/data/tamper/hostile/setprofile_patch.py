"""sys.setprofile patches torch.allclose whenever a call starts (after the grader restored it)."""
PRELUDE = '''import sys
_fake = lambda *a, **k: True

def _profile(frame, event, arg):
    if event in ("call", "c_call") and torch.allclose is not _fake:
        torch.allclose = _fake
        math.isclose = _fake

sys.setprofile(_profile)'''

"""A background thread keeps re-patching torch.allclose and math.isclose while the tests run."""
PRELUDE = '''import threading, time

def _flip():
    while True:
        torch.allclose = lambda *a, **k: True
        math.isclose = lambda *a, **k: True
        time.sleep(0.0005)

threading.Thread(target=_flip, daemon=True).start()'''

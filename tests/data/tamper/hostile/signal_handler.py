"""A SIGALRM timer fires every millisecond and patches the comparisons from a signal handler."""
PRELUDE = '''import signal

def _on_alarm(signum, frame):
    torch.allclose = lambda *a, **k: True
    math.isclose = lambda *a, **k: True

signal.signal(signal.SIGALRM, _on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)'''

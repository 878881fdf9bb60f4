"""sys.settrace rewrites the test's expected value (a notebook global) to the answer's result mid-test."""
PRELUDE = '''import sys

def _rewrite(frame, event, arg):
    if event == "line" and "_expected" in frame.f_globals and "_x" in frame.f_globals:
        try:
            frame.f_globals["_expected"] = scale(frame.f_globals["_x"], 2.0)
        except Exception:
            pass
    return _rewrite

sys.settrace(_rewrite)'''

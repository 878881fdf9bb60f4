"""Reads the grader's input files, and writes forged output files at exit (atexit) and from a thread."""
PRELUDE = '''import atexit, glob, json, os, threading, time

def _forge():
    for path in glob.glob(".grader-*.in.safetensors"):
        stem = path[: -len(".in.safetensors")]
        with open(stem + ".out.json", "w") as f:
            json.dump({"values": {"n": 5.0, "c": 2}}, f)

def _keep_forging():
    for _ in range(20000):
        _forge()
        time.sleep(0.001)

atexit.register(_forge)
threading.Thread(target=_keep_forging, daemon=True).start()'''

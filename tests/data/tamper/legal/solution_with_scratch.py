"""The reference solution plus scratch cells that print, plot nothing, and time things."""
PRELUDE = '''import time
_start = time.perf_counter()
print("working on the answers")'''
TAIL = '''print(f"took {time.perf_counter() - _start:.2f} s")'''

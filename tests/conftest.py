import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

import pytest  # noqa: E402

# Intra-op threads: tests/_numerics.py (TEST_THREADS, 1 unless COURSE_TEST_THREADS says otherwise); the fixture
# below puts them back after any test that changed them. Subprocess-based tests set their own.
from _numerics import TEST_THREADS  # noqa: E402

torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True)
def reset_threads():
    """Every test starts with TEST_THREADS intra-op threads, whatever the previous one set."""
    if torch.get_num_threads() != TEST_THREADS:
        torch.set_num_threads(TEST_THREADS)
    yield


def built_once(tmp_path_factory, name: str, build):
    """``build(folder)`` run once per test session, also under pytest-xdist, and its (picklable) result.

    An expensive shared fixture (a whole grading batch) would otherwise be built by every worker that runs one
    of its tests, and again whenever a worker returns to its module. The first worker builds it under a lock in
    the session's shared temporary folder and saves the result there; the others wait, then load that result.
    A build that fails leaves no result: the next worker tries again (and reports its own error).
    """
    import fcntl
    import pickle
    import shutil

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # popen-gw0/ and popen-gw1/ live in the session's folder
    folder, result_file = root / f"built-once-{name}", root / f"built-once-{name}.pickle"
    with open(root / f"built-once-{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if result_file.is_file():
                return pickle.loads(result_file.read_bytes())
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            result = build(folder)
            result_file.write_bytes(pickle.dumps(result))
            return result
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

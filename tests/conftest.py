import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

# Intra-op threads: tests/_numerics.py (TEST_THREADS, 1 unless COURSE_TEST_THREADS says otherwise). Module
# fixtures that pin threads use the same number; subprocess-based tests set their own.
from _numerics import TEST_THREADS  # noqa: E402

torch.set_num_threads(TEST_THREADS)

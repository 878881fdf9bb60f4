import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

# The suite's models are tiny: a second intra-op thread buys little and, when the machine is busy, makes
# timings erratic (OpenMP threads waiting on each other). Subprocess-based tests set their own.
torch.set_num_threads(1)

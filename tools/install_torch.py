"""Install the term's torch build that fits this machine, before the course package (run by `make`).

    python tools/install_torch.py            # choose, print the choice, install
    python tools/install_torch.py --dry-run  # only print the choice

No NVIDIA GPU on Linux or Windows: the CPU build from PyTorch's CPU index (about 200 MB instead of several GB
of CUDA libraries). An NVIDIA GPU (nvidia-smi lists one): the CUDA build, which is what PyPI serves on Linux.
macOS: PyPI's build (CPU and Apple's GPU). Where the CPU index cannot be reached, the plain spec from the
default index. The version comes from constraints.txt; TORCH_INDEX_URL overrides the choice of index.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
ROOT = Path(__file__).resolve().parent.parent


def term_version(constraints: Path = ROOT / "constraints.txt") -> str:
    for line in constraints.read_text().splitlines():
        if line.startswith("torch=="):
            return line.split("==", 1)[1].strip()
    raise SystemExit(f"{constraints} pins no torch version (expected a line 'torch==X.Y.Z')")


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        return "GPU" in subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return False


def reachable(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url + "/torch/", timeout=timeout):
            return True
    except OSError:
        return False


def choose(version: str) -> tuple[str, list[str]]:
    """(description of the build, pip arguments) for this machine."""
    spec = f"torch=={version}"
    if os.environ.get("TORCH_INDEX_URL"):
        index = os.environ["TORCH_INDEX_URL"]
        return f"{spec} from TORCH_INDEX_URL={index}", [spec, "--index-url", index]
    if platform.system() == "Darwin":
        return f"{spec} from PyPI (macOS build: CPU and Apple GPU)", [spec]
    if has_nvidia_gpu() and platform.system() == "Windows":
        return f"{spec} from PyPI (CPU only on Windows; for CUDA set TORCH_INDEX_URL to a cu index)", [spec]
    if has_nvidia_gpu():
        return f"{spec} CUDA build from PyPI (nvidia-smi lists a GPU)", [spec]
    if reachable(CPU_INDEX):
        return f"{spec} CPU build from {CPU_INDEX} (no NVIDIA GPU)", [spec, "--index-url", CPU_INDEX]
    return f"{spec} from the default index ({CPU_INDEX} unreachable; no NVIDIA GPU)", [spec]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the choice, install nothing")
    args = parser.parse_args(argv)
    version = term_version()
    try:
        from importlib.metadata import version as installed
        have = installed("torch")
    except Exception:
        have = None
    if have and have.split("+")[0] == version:
        print(f"torch: {have} already installed")
        return 0
    what, pip_args = choose(version)
    print(f"torch: installing {what}")
    if args.dry_run:
        return 0
    return subprocess.call([sys.executable, "-m", "pip", "install", "--quiet", *pip_args])


if __name__ == "__main__":
    sys.exit(main())

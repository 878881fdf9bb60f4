"""Install the term's torch, the build that fits this machine, before the course package (`make` runs this).

No NVIDIA GPU: the CPU build from PyTorch's CPU index (about 200 MB instead of GBs of CUDA libraries). A GPU
(`nvidia-smi -L` lists one): PyPI's build, the CUDA one on Linux. macOS: PyPI's build. CPU index unreachable: the
plain spec from the default index. The version is constraints.txt's; TORCH_INDEX_URL forces an index.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def term_version(constraints: Path = Path(__file__).resolve().parent.parent / "constraints.txt") -> str:
    pins = [line.split("==", 1)[1].strip() for line in constraints.read_text().splitlines() if line.startswith("torch==")]
    if not pins:
        raise SystemExit(f"{constraints} pins no torch version (expected a line 'torch==X.Y.Z')")
    return pins[0]


def has_nvidia_gpu() -> bool:
    try:
        return "GPU" in subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return False


def reachable(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url + "/torch/", timeout=timeout):
            return True
    except OSError:
        return False


def choose(torch_version: str) -> tuple[str, list[str]]:
    """(what is installed and why, pip arguments) for this machine."""
    spec = f"torch=={torch_version}"
    if index := os.environ.get("TORCH_INDEX_URL"):
        return f"{spec} from TORCH_INDEX_URL={index}", [spec, "--index-url", index]
    if platform.system() == "Darwin":
        return f"{spec} from PyPI (macOS build: CPU and Apple GPU)", [spec]
    if has_nvidia_gpu():
        if platform.system() == "Windows":
            return f"{spec} from PyPI (CPU only on Windows: for CUDA set TORCH_INDEX_URL to a cu index)", [spec]
        return f"{spec} CUDA build from PyPI (nvidia-smi lists a GPU)", [spec]
    if reachable(CPU_INDEX):
        return f"{spec} CPU build from {CPU_INDEX} (no NVIDIA GPU)", [spec, "--index-url", CPU_INDEX]
    return f"{spec} from the default index ({CPU_INDEX} unreachable; no NVIDIA GPU)", [spec]


def main() -> int:
    wanted = term_version()
    try:
        if version("torch").split("+")[0] == wanted:
            print(f"torch: {version('torch')} already installed")
            return 0
    except PackageNotFoundError:
        pass
    what, pip_args = choose(wanted)
    print(f"torch: installing {what}", flush=True)
    if "--dry-run" in sys.argv:
        return 0
    return subprocess.call([sys.executable, "-m", "pip", "install", "--quiet", *pip_args])


if __name__ == "__main__":
    sys.exit(main())

"""Atomic file writing: a crash or a kill never leaves a half-written file under the final name.

We write to a temporary file in the same folder, flush and fsync it, then ``os.replace`` it onto the final
name (atomic on POSIX and Windows). Readers therefore see either the old file or the new one, never a mix.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new file name durable: fsync the folder that holds the name (a no-op where folders
    cannot be opened, e.g. on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _replacing(path: Path):
    """Yield a temporary file name beside ``path``; when the block has written it, fsync it and ``os.replace``
    it onto ``path``. On any error the temporary file goes and ``path`` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_folder(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    with _replacing(path) as tmp:
        Path(tmp).write_bytes(data)
    return path


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                            metadata: dict[str, str] | None = None) -> Path:
    """Save a flat dict of tensors as safetensors, atomically (tensors are made contiguous CPU copies)."""
    path = Path(path)
    with _replacing(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    return path


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning a missing or corrupt file into a clear ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path must be an existing safetensors file, got {str(path)!r} (not found)")
    try:
        return load_file(str(path), device=str(device))
    except Exception as err:  # safetensors raises its own error types for truncated/corrupt files
        raise ValueError(f"path {str(path)!r} is not a readable safetensors file ({err})") from err


def save_pretrained(model: torch.nn.Module, folder: str | os.PathLike) -> Path:
    """Write ``config.json`` (from ``model.config.to_dict()``) and ``model.safetensors`` into ``folder``.

    The weights are written first and the config last, each atomically, so a folder with a config always
    holds matching weights.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(folder / "model.safetensors", model.state_dict())
    atomic_write_json(folder / "config.json", {"class": type(model).__name__, **model.config.to_dict()})
    return folder


def load_pretrained(model_cls, config_cls, folder: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild ``model_cls(config_cls.from_dict(config.json))`` and load ``model.safetensors`` from ``folder``."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"folder must contain config.json, got {str(folder)!r}")
    config = json.loads((folder / "config.json").read_text())
    saved_class = config.pop("class", model_cls.__name__)
    if saved_class != model_cls.__name__:
        raise ValueError(f"folder {str(folder)!r} holds a {saved_class}, not a {model_cls.__name__}")
    model = model_cls(config_cls.from_dict(config))
    model.load_state_dict(load_safetensors(folder / "model.safetensors", device=device))
    return model.to(device)

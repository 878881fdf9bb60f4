"""Checkpoints that survive a kill: one folder per step, built under a temporary name, renamed into place
when complete, every file listed with its size and sha256 in a manifest written last.

    checkpoint-00000100/
        <name>.safetensors                   one per entry of ``modules`` (its state_dict)
        optimizer.json + .safetensors        optimizer.state_dict(): tensors in safetensors, the rest in JSON
        lr_scheduler.json                    lr_scheduler.state_dict()
        rng.json + rng.safetensors           torch CPU, python ``random``, numpy, and the passed generator
        trainer_state.json                   step, module names, ``extra`` (train_loop keeps the loss history here)
        manifest.json                        written last: size and sha256 of every other file

``checkpoint-{step:08d}`` holds the state *after* ``step`` optimizer updates. No pickle anywhere: a checkpoint
holds only tensors and JSON, and loads with any torch version. ``course_lib.train.train_loop`` writes and resumes
these folders; ``copy_checkpoints`` mirrors them to a second folder (e.g. Google Drive on Colab).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from course_lib._checks import check_int
from course_lib._io import atomic_save_safetensors, atomic_write_json, fsync_folder, load_safetensors

__all__ = ["save_checkpoint", "latest_checkpoint", "load_checkpoint", "checkpoint_step", "copy_checkpoints",
           "check_folder", "check_modules", "check_training_state"]

CHECKPOINT_RE = re.compile(r"checkpoint-(\d{8,})")
TMP_PREFIX = ".tmp-checkpoint-"    # folders being written; never loaded
TRASH_PREFIX = ".trash-checkpoint-"  # folders being deleted; never loaded
MANIFEST = "manifest.json"
RESERVED = {"optimizer", "lr_scheduler", "rng", "trainer_state", "manifest"}


# --------------------------------------------------------------------------- pickle-free state encoding
# Optimizer / scheduler / RNG states are nested dicts, lists and tuples of numbers and tensors. We write the
# structure as JSON with tensors replaced by {"__tensor__": key} (the tensors go to safetensors), tuples by
# {"__tuple__": [...]} and dicts with non-string keys (the optimizer's parameter indices) by {"__dict__": pairs}.

def _encode(obj, tensors: dict, key: str, what: str):
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{key}.{k}", what) for k, v in obj.items()}
        return {"__dict__": [[_encode(k, tensors, f"{key}.key{i}", what), _encode(v, tensors, f"{key}.{i}", what)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, tensors, f"{key}.{i}", what) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ValueError(f"{what} holds a {type(obj).__name__} at {key!r}, which cannot be saved without pickle")


def _decode(obj, tensors: dict):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory (tied weights): clone the second and later ones."""
    seen, out = set(), {}
    for key, value in tensors.items():
        ptr = (value.device, value.untyped_storage().data_ptr())
        out[key] = value.detach().clone() if ptr in seen and value.numel() else value
        seen.add(ptr)
    return out


def _write_state(folder: Path, name: str, obj, what: str) -> None:
    tensors = {}
    tree = _encode(obj, tensors, name, what)
    if tensors:
        atomic_save_safetensors(folder / f"{name}.safetensors", _unshared(tensors))
    atomic_write_json(folder / f"{name}.json", tree)


def _read_state(folder: Path, name: str):
    tensor_file = folder / f"{name}.safetensors"
    tensors = load_safetensors(tensor_file) if tensor_file.exists() else {}
    return _decode(json.loads((folder / f"{name}.json").read_text()), tensors)


# ------------------------------------------------------------------------------------------------- RNG

def _rng_state(generator: torch.Generator | None) -> dict:
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"] = {**numpy_state["state"], "key": numpy_state["state"]["key"].tolist()}
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if generator is not None:
        state["generator"] = generator.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    key = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**numpy_state, "state": {**numpy_state["state"], "key": key}})
    if generator is not None:
        generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------ checkpoints

def check_folder(name: str, folder) -> Path:
    """``folder`` as a Path; a clear ValueError naming ``name`` if it is not a path or is an existing file."""
    if not isinstance(folder, (str, os.PathLike)) or not str(folder):
        raise ValueError(f"{name} must be a folder path (str or os.PathLike), got {folder!r}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{name} must be a folder, got {str(folder)!r} (an existing file)")
    return folder


def check_modules(modules) -> None:
    """``modules`` must map simple names (not the reserved file names) to objects with state_dict/load_state_dict."""
    if not isinstance(modules, dict) or not modules:
        raise ValueError(f"modules must be a non-empty dict {{name: nn.Module}}, got {modules!r}")
    for name, module in modules.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", name) or name in RESERVED:
            raise ValueError(f"modules keys must be simple names (letters, digits, _ and -) other than "
                             f"{sorted(RESERVED)}, got {name!r}")
        if not (callable(getattr(module, "state_dict", None)) and callable(getattr(module, "load_state_dict", None))):
            raise ValueError(f"modules[{name!r}] must be an nn.Module (or have state_dict/load_state_dict), "
                             f"got {type(module).__name__}")


def check_training_state(optimizer, lr_scheduler, generator) -> None:
    """Each of the three is None or of the right kind (torch optimizer, lr scheduler, torch.Generator)."""
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    if lr_scheduler is not None and not (callable(getattr(lr_scheduler, "state_dict", None))
                                         and callable(getattr(lr_scheduler, "load_state_dict", None))):
        raise ValueError(f"lr_scheduler must be a torch lr scheduler or None, got {type(lr_scheduler).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(folder: str | os.PathLike, step: int, modules: dict[str, nn.Module],
                    optimizer: torch.optim.Optimizer | None = None, lr_scheduler=None,
                    generator: torch.Generator | None = None, extra: dict | None = None,
                    keep_last: int | None = None) -> Path:
    """Write ``folder/checkpoint-{step:08d}/`` atomically and return its path.

    The files are written into a temporary folder inside ``folder``, each fsynced, the manifest last; one
    ``os.rename`` then gives it its final name. A crash at any moment leaves either no new checkpoint or a
    complete one. ``extra`` must be JSON-serialisable. ``keep_last=N`` then deletes all but the N newest.
    """
    folder = check_folder("folder", folder)
    check_int("step", step, minimum=0)
    check_modules(modules)
    check_training_state(optimizer, lr_scheduler, generator)
    extra = {} if extra is None else extra
    if not isinstance(extra, dict):
        raise ValueError(f"extra must be a JSON-serialisable dict, got {type(extra).__name__}")
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"extra must be a JSON-serialisable dict, got one that is not ({err})") from None
    if keep_last is not None:
        check_int("keep_last", keep_last, minimum=1)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{step:08d}-", dir=folder))
    try:
        _write_checkpoint_files(tmp, step, modules, optimizer, lr_scheduler, generator, extra)
        final = folder / f"checkpoint-{step:08d}"
        _rename_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last is not None:
        _prune(folder, keep_last)
    return final


def _write_checkpoint_files(tmp: Path, step, modules, optimizer, lr_scheduler, generator, extra) -> None:
    for name, module in modules.items():
        atomic_save_safetensors(tmp / f"{name}.safetensors", _unshared(module.state_dict()))
    if optimizer is not None:
        _write_state(tmp, "optimizer", optimizer.state_dict(), "optimizer state")
    if lr_scheduler is not None:
        _write_state(tmp, "lr_scheduler", lr_scheduler.state_dict(), "lr_scheduler state")
    _write_state(tmp, "rng", _rng_state(generator), "RNG state")
    atomic_write_json(tmp / "trainer_state.json", {"step": step, "modules": list(modules), "extra": extra})
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
    atomic_write_json(tmp / MANIFEST, {"step": step, "files": files})  # last: marks the folder complete


def _rename_into_place(tmp: Path, final: Path) -> None:
    if final.exists():  # saving the same step again (e.g. after resuming): move the old one out of the way
        trash = Path(tempfile.mkdtemp(prefix=TRASH_PREFIX, dir=final.parent))
        os.rename(final, trash / final.name)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_folder(final.parent)


def _checkpoints_by_step(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every folder named checkpoint-NNNNNNNN, newest first (complete or not)."""
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if p.is_dir() and (m := CHECKPOINT_RE.fullmatch(p.name))]
    return sorted(found, reverse=True)


def _prune(folder: Path, keep_last: int) -> None:
    """Delete all but the ``keep_last`` newest checkpoints, plus leftovers of killed writes/deletes.

    A folder is first renamed to a trash name (atomic), then deleted: a kill mid-delete leaves only trash.
    """
    for _, path in _checkpoints_by_step(folder)[keep_last:]:
        trash = Path(tempfile.mkdtemp(prefix=TRASH_PREFIX, dir=folder))
        os.rename(path, trash / path.name)
    for path in folder.iterdir():
        if path.is_dir() and path.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            shutil.rmtree(path, ignore_errors=True)


def _problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint, or None if it is (manifest present, every file intact)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files, step = manifest["files"], manifest["step"]
    except FileNotFoundError:
        return f"no {MANIFEST} (the write did not finish)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable {MANIFEST} ({err})"
    match = CHECKPOINT_RE.fullmatch(path.name)
    if match and int(match.group(1)) != step:
        return f"{MANIFEST} says step {step}, the folder name says {int(match.group(1))}"
    for name, info in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != info["size"] or _sha256(file) != info["sha256"]:
            return f"{name} is truncated or corrupt (size/sha256 differ from {MANIFEST})"
    return None


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step in ``folder``, or None if there is none.

    Temporary folders of an interrupted write are ignored; incomplete or corrupt checkpoints are skipped
    with a warning.
    """
    folder = check_folder("folder", folder)
    if not folder.exists():
        return None
    for _, path in _checkpoints_by_step(folder):
        problem = _problem(path)
        if problem is None:
            return path
        warnings.warn(f"skipping checkpoint {str(path)!r}: {problem}", stacklevel=2)
    return None


def load_checkpoint(path: str | os.PathLike, modules: dict[str, nn.Module],
                    optimizer: torch.optim.Optimizer | None = None, lr_scheduler=None,
                    generator: torch.Generator | None = None, restore_rng: bool = True) -> dict:
    """Restore a checkpoint written by ``save_checkpoint``; returns ``{"step": int, "extra": dict}``.

    Every entry of ``modules`` (and the optimizer/scheduler/generator, if passed) must be in the checkpoint.
    ``restore_rng`` also restores the global torch, python and numpy generators, as needed for exact resume.
    """
    path = check_folder("path", path)
    if not path.is_dir():
        raise ValueError(f"path must be a checkpoint folder, got {str(path)!r} (not found)")
    problem = _problem(path)
    if problem is not None:
        raise ValueError(f"path {str(path)!r} is not a complete checkpoint: {problem}")
    check_modules(modules)
    check_training_state(optimizer, lr_scheduler, generator)
    if not isinstance(restore_rng, bool):
        raise ValueError(f"restore_rng must be a bool, got {restore_rng!r}")
    trainer_state = json.loads((path / "trainer_state.json").read_text())
    for name, module in modules.items():
        if name not in trainer_state["modules"]:
            raise ValueError(f"modules has {name!r}, which checkpoint {str(path)!r} does not hold "
                             f"(it holds {trainer_state['modules']})")
        _load_into(f"modules[{name!r}]", module.load_state_dict, load_safetensors(path / f"{name}.safetensors"))
    for name, obj in (("optimizer", optimizer), ("lr_scheduler", lr_scheduler)):
        if obj is not None:
            if not (path / f"{name}.json").is_file():
                raise ValueError(f"{name} was given but checkpoint {str(path)!r} holds no {name} state")
            _load_into(name, obj.load_state_dict, _read_state(path, name))
    rng = _read_state(path, "rng")
    if generator is not None and "generator" not in rng:
        raise ValueError(f"generator was given but checkpoint {str(path)!r} holds no generator state")
    if restore_rng:
        _set_rng_state(rng, generator)
    elif generator is not None:
        generator.set_state(rng["generator"])
    return {"step": trainer_state["step"], "extra": trainer_state["extra"]}


def _load_into(what: str, load_state_dict: Callable, state) -> None:
    try:
        load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(f"{what} does not match the checkpoint: {err}") from err



def checkpoint_step(path: str | os.PathLike) -> int:
    """The step in a checkpoint folder's name: ``checkpoint-00000100`` -> 100."""
    match = CHECKPOINT_RE.fullmatch(Path(path).name) if isinstance(path, (str, os.PathLike)) else None
    if match is None:
        raise ValueError(f"path must be a checkpoint-NNNNNNNN folder, got {path!r}")
    return int(match.group(1))


def copy_checkpoints(source: str | os.PathLike, target: str | os.PathLike, keep_last: int | None = None) -> None:
    """Mirror the checkpoints of ``source`` into ``target`` (e.g. a Google Drive folder that outlives the VM).

    Each is copied under a temporary name and renamed into place, so ``target`` too holds only complete
    checkpoints; those already copied (same manifest) are skipped. ``keep_last`` then prunes ``target`` as
    ``save_checkpoint`` prunes ``source``.
    """
    source, target = check_folder("source", source), check_folder("target", target)
    if keep_last is not None:
        check_int("keep_last", keep_last, minimum=1)
    if not source.is_dir():
        return
    for step, path in reversed(_checkpoints_by_step(source)):
        manifest, copy = path / MANIFEST, target / path.name
        if not manifest.is_file() or ((copy / MANIFEST).is_file()
                                      and (copy / MANIFEST).read_bytes() == manifest.read_bytes()):
            continue  # unfinished, or already copied
        target.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{step:08d}-", dir=target))
        shutil.copytree(path, tmp, dirs_exist_ok=True)
        _rename_into_place(tmp, copy)
    if keep_last is not None and target.is_dir():
        _prune(target, keep_last)

"""The training loop every trainer of the course shares (VAE, CLIP, UNet, LoRA): checkpoints that survive a
kill, exact resume, EMA weights, a cosine learning-rate schedule, and a clear stop when the loss becomes NaN.

Glossary:
    step          number of optimizer updates done so far. ``checkpoint-{step:08d}`` holds the state *after*
                  ``step`` updates, and ``step_fn(step, generator)`` computes the loss of update number ``step``
                  (0-based), so a run resumed from checkpoint-00000010 continues with ``step_fn(10, ...)``.
    theta         the trained parameters; theta_ema their exponential moving average (EMA):
                      theta_ema <- d * theta_ema + (1 - d) * theta
                  with d = min(decay, (1 + n) / (10 + n)) at the n-th update when ``warmup`` is on (early
                  averages forget the random init quickly), else d = decay.
    lr schedule   cosine with linear warmup: lr(s) = lr0 * s / W for s < W, then
                  lr0 * 0.5 * (1 + cos(pi * (s - W) / (T - W))), as diffusers' get_cosine_schedule_with_warmup.

A checkpoint is a folder, built under a temporary name and renamed into place only when complete:

    checkpoint-00000100/
        <name>.safetensors                   one per entry of ``modules`` (its state_dict)
        optimizer.json + .safetensors        optimizer.state_dict(): tensors in safetensors, the rest in JSON
        lr_scheduler.json                    lr_scheduler.state_dict()
        rng.json + rng.safetensors           torch CPU, python ``random``, numpy, and the passed generator
        trainer_state.json                   step, module names, ``extra`` (the loop keeps the loss history here)
        manifest.json                        written last: size and sha256 of every other file

No pickle anywhere: a checkpoint holds only tensors and JSON, and loads with any torch version.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from course_lib._checks import check_float, check_int
from course_lib._io import atomic_save_safetensors, atomic_write_json, load_safetensors

__all__ = ["TrainingDivergedError", "TrainHistory", "EMA", "cosine_schedule_with_warmup", "save_checkpoint",
           "latest_checkpoint", "load_checkpoint", "train_loop"]

CHECKPOINT_RE = re.compile(r"checkpoint-(\d{8,})")
TMP_PREFIX = ".tmp-checkpoint-"    # folders being written; never loaded
TRASH_PREFIX = ".trash-checkpoint-"  # folders being deleted; never loaded
MANIFEST = "manifest.json"
RESERVED = {"optimizer", "lr_scheduler", "rng", "trainer_state", "manifest"}


class TrainingDivergedError(FloatingPointError):
    """The loss (or the gradient norm) stopped being a finite number; ``step`` and ``loss`` say where."""

    def __init__(self, message: str, step: int, loss: float):
        super().__init__(message)
        self.step, self.loss = step, loss


@dataclass
class TrainHistory:
    """What ``train_loop`` did: the loss of every step since step 0 (including steps before a resume)."""

    losses: list[float] = field(default_factory=list)
    resumed_from: int | None = None  # the step of the checkpoint we resumed from, if any
    checkpoint: Path | None = None   # the last checkpoint written


# --------------------------------------------------------------------------------------------------- EMA

class EMA:
    """Exponential moving average of a model's trainable parameters (those with requires_grad at creation).

    ``update()`` after each optimizer step; ``with ema.average_parameters():`` to evaluate with the averaged
    weights (the trained ones come back afterwards); ``copy_to()`` to keep them. ``state_dict`` holds tensors
    only, so EMA can be checkpointed like a module.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        check_float("decay", decay, minimum=0.0, maximum=1.0, max_inclusive=False)
        if not isinstance(warmup, bool):
            raise ValueError(f"warmup must be a bool, got {warmup!r}")
        self.model, self.decay, self.warmup = model, float(decay), warmup
        self.num_updates = 0
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        if not self.shadow:
            raise ValueError(f"model must have trainable parameters (requires_grad=True), got none in "
                             f"{type(model).__name__}")

    def current_decay(self) -> float:
        """d for the next update (update number n = num_updates + 1)."""
        n = self.num_updates + 1
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    def _tracked(self, model: nn.Module | None) -> dict[str, torch.Tensor]:
        model = self.model if model is None else model
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module or None, got {type(model).__name__}")
        params = dict(model.named_parameters())
        missing = [name for name in self.shadow if name not in params]
        if missing:
            raise ValueError(f"model lacks parameters the EMA tracks, e.g. {missing[:3]}; "
                             f"was it built from a different model?")
        return {name: params[name] for name in self.shadow}

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        for name, param in self._tracked(None).items():
            self.shadow[name].mul_(d).add_(param.detach(), alpha=1 - d)  # d * theta_ema + (1 - d) * theta
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module | None = None) -> None:
        """Overwrite the parameters of ``model`` (default: the tracked model) with the averages."""
        for name, param in self._tracked(model).items():
            param.copy_(self.shadow[name])

    @contextlib.contextmanager
    def average_parameters(self, model: nn.Module | None = None):
        """Evaluate with the EMA weights inside the ``with`` block; the trained weights come back after."""
        tracked = self._tracked(model)
        backup = {name: param.detach().clone() for name, param in tracked.items()}
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in tracked.items():
                    param.copy_(backup[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"num_updates": torch.tensor(self.num_updates, dtype=torch.int64),
                **{f"shadow.{name}": value for name, value in self.shadow.items()}}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        expected = set(self.state_dict())
        if not isinstance(state_dict, dict) or set(state_dict) != expected:
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"state_dict must have the EMA keys {sorted(expected)[:4]}..., got {got}")
        for name, value in self.shadow.items():
            saved = state_dict[f"shadow.{name}"]
            if saved.shape != value.shape:
                raise ValueError(f"state_dict['shadow.{name}'] must have shape {tuple(value.shape)}, "
                                 f"got {tuple(saved.shape)}")
            value.copy_(saved)
        self.num_updates = int(state_dict["num_updates"])


# ------------------------------------------------------------------------------------------- lr schedule

def cosine_schedule_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Linear warmup from 0 to the optimizer's lr over ``warmup_steps``, then a half cosine down to 0 at
    ``total_steps`` (same numbers as diffusers' ``get_cosine_schedule_with_warmup``)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    check_int("total_steps", total_steps, minimum=1)
    check_int("warmup_steps", warmup_steps, minimum=0, maximum=total_steps)

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return LambdaLR(optimizer, lr_factor)


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

def _check_folder(name: str, folder) -> Path:
    if not isinstance(folder, (str, os.PathLike)) or not str(folder):
        raise ValueError(f"{name} must be a folder path (str or os.PathLike), got {folder!r}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{name} must be a folder, got {str(folder)!r} (an existing file)")
    return folder


def _check_modules(modules) -> None:
    if not isinstance(modules, dict) or not modules:
        raise ValueError(f"modules must be a non-empty dict {{name: nn.Module}}, got {modules!r}")
    for name, module in modules.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", name) or name in RESERVED:
            raise ValueError(f"modules keys must be simple names (letters, digits, _ and -) other than "
                             f"{sorted(RESERVED)}, got {name!r}")
        if not (callable(getattr(module, "state_dict", None)) and callable(getattr(module, "load_state_dict", None))):
            raise ValueError(f"modules[{name!r}] must be an nn.Module (or have state_dict/load_state_dict), "
                             f"got {type(module).__name__}")


def _check_training_state(optimizer, lr_scheduler, generator) -> None:
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
    folder = _check_folder("folder", folder)
    check_int("step", step, minimum=0)
    _check_modules(modules)
    _check_training_state(optimizer, lr_scheduler, generator)
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
    _fsync_folder(final.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable: fsync the folder that holds the new name (a no-op where folders can't be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    folder = _check_folder("folder", folder)
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
    path = _check_folder("path", path)
    if not path.is_dir():
        raise ValueError(f"path must be a checkpoint folder, got {str(path)!r} (not found)")
    problem = _problem(path)
    if problem is not None:
        raise ValueError(f"path {str(path)!r} is not a complete checkpoint: {problem}")
    _check_modules(modules)
    _check_training_state(optimizer, lr_scheduler, generator)
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


# --------------------------------------------------------------------------------------------- the loop

def _check_loop_args(step_fn, num_steps, checkpoint_dir, checkpoint_every, resume, max_grad_norm, desc,
                     callback, keep_last, ema) -> None:
    if not callable(step_fn):
        raise ValueError(f"step_fn must be callable as step_fn(step, generator) -> loss, got {step_fn!r}")
    check_int("num_steps", num_steps, minimum=0)
    if checkpoint_every is not None:
        check_int("checkpoint_every", checkpoint_every, minimum=1)
        if checkpoint_dir is None:
            raise ValueError(f"checkpoint_every={checkpoint_every} needs a checkpoint_dir, got checkpoint_dir=None")
    if resume is not None and not isinstance(resume, (str, os.PathLike)):
        raise ValueError(f"resume must be None, 'latest' or a checkpoint path, got {resume!r}")
    if resume == "latest" and checkpoint_dir is None:
        raise ValueError("resume='latest' needs a checkpoint_dir, got checkpoint_dir=None")
    if max_grad_norm is not None:
        check_float("max_grad_norm", max_grad_norm, minimum=0.0, min_inclusive=False)
    if not isinstance(desc, str):
        raise ValueError(f"desc must be a str, got {desc!r}")
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable as callback(step, loss) or None, got {callback!r}")
    if keep_last is not None:
        check_int("keep_last", keep_last, minimum=1)
    if ema is not None and not isinstance(ema, EMA):
        raise ValueError(f"ema must be an EMA or None, got {type(ema).__name__}")


def _resume(resume, checkpoint_dir, num_steps, modules, optimizer, lr_scheduler, generator) -> TrainHistory:
    """Restore the checkpoint ``resume`` points to (if any); the history then holds its losses."""
    if resume is None:
        return TrainHistory()
    checkpoint = latest_checkpoint(checkpoint_dir) if resume == "latest" else Path(resume)
    if checkpoint is None:  # resume="latest" on a fresh run: start from step 0
        return TrainHistory()
    state = load_checkpoint(checkpoint, modules, optimizer, lr_scheduler, generator)
    if state["step"] > num_steps:
        raise ValueError(f"num_steps must be >= the resumed checkpoint's step {state['step']}, got {num_steps}")
    losses = list(state["extra"].get("loss_history", []))
    return TrainHistory(losses=losses, resumed_from=state["step"], checkpoint=checkpoint)


def _diverged(step: int, what: str, value: float, optimizer, last_checkpoint: Path | None) -> TrainingDivergedError:
    lr = optimizer.param_groups[0]["lr"]
    where = (f"The last good checkpoint is {str(last_checkpoint)!r}; resume from it with a lower learning rate."
             if last_checkpoint else "No checkpoint was written yet.")
    return TrainingDivergedError(
        f"{what} is {value} at step {step}: training diverged. Likely causes: learning rate too high "
        f"(lr={lr:.3g}), bad data (NaN/inf in the batch), fp16 overflow (train in fp32 or use a GradScaler). "
        f"{where}", step=step, loss=value)


def _optimizer_step(step, step_fn, generator, optimizer, lr_scheduler, ema, max_grad_norm, last_checkpoint):
    """One update: zero_grad, loss = step_fn(step, generator), backward, clip, step. Returns the loss value."""
    optimizer.zero_grad(set_to_none=True)
    loss = step_fn(step, generator)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"step_fn must return a scalar loss tensor, got {loss!r}"[:200])
    value = loss.item()
    if not math.isfinite(value):
        raise _diverged(step, "the loss", value, optimizer, last_checkpoint)
    loss.backward()
    if max_grad_norm is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
        if not math.isfinite(grad_norm):
            raise _diverged(step, "the gradient norm", grad_norm, optimizer, last_checkpoint)
    optimizer.step()
    if lr_scheduler is not None:
        lr_scheduler.step()
    if ema is not None:
        ema.update()
    return value


class _SmoothedLoss:
    """Debiased exponential moving average of the loss, for the progress bar only."""

    def __init__(self, losses=(), beta: float = 0.9):
        self.beta, self.average, self.count = beta, 0.0, 0
        for value in losses:
            self.update(value)

    def update(self, value: float) -> float:
        self.count += 1
        self.average = self.beta * self.average + (1 - self.beta) * value
        return self.average / (1 - self.beta ** self.count)


def train_loop(step_fn: Callable, num_steps: int, *, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
               lr_scheduler=None, generator: torch.Generator | None = None,
               checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int | None = None,
               resume: str | os.PathLike | None = None, max_grad_norm: float | None = None, desc: str = "train",
               callback: Callable | None = None, keep_last: int | None = 2, ema: EMA | None = None) -> TrainHistory:
    """Run optimizer updates ``step = start, ..., num_steps - 1``; ``step_fn(step, generator)`` returns the loss.

    The loop does zero_grad / backward / clip (``max_grad_norm``) / optimizer.step / lr_scheduler.step /
    ema.update, shows the smoothed loss in a progress bar, calls ``callback(step, loss)``, and writes a
    checkpoint of ``modules`` (+ ema, optimizer, scheduler, RNGs, loss history) every ``checkpoint_every``
    steps and at the end. ``resume="latest"`` (or a checkpoint path) continues exactly where it stopped: same
    seed, same final weights, bit for bit (on CPU). A NaN/inf loss raises ``TrainingDivergedError`` before
    the bad update; the last checkpoint stays the last good one.
    """
    _check_modules(modules)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    _check_training_state(optimizer, lr_scheduler, generator)
    _check_loop_args(step_fn, num_steps, checkpoint_dir, checkpoint_every, resume, max_grad_norm, desc,
                     callback, keep_last, ema)
    if checkpoint_dir is not None:
        checkpoint_dir = _check_folder("checkpoint_dir", checkpoint_dir)
    if ema is not None and "ema" in modules:
        raise ValueError("modules must not contain the key 'ema' when ema= is given (it is saved under that name)")
    tracked = {**modules, "ema": ema} if ema is not None else dict(modules)
    history = _resume(resume, checkpoint_dir, num_steps, tracked, optimizer, lr_scheduler, generator)
    start = history.resumed_from or 0
    smoothed = _SmoothedLoss(history.losses[-100:])
    with tqdm(total=num_steps, initial=start, desc=desc) as bar:
        for step in range(start, num_steps):
            value = _optimizer_step(step, step_fn, generator, optimizer, lr_scheduler, ema, max_grad_norm,
                                    history.checkpoint)
            history.losses.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{smoothed.update(value):.4g}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if callback is not None:
                callback(step, value)  # before the checkpoint, so its use of the RNGs is saved too
            done = step + 1
            due = done == num_steps or (checkpoint_every is not None and done % checkpoint_every == 0)
            if checkpoint_dir is not None and due:
                history.checkpoint = save_checkpoint(checkpoint_dir, done, tracked, optimizer, lr_scheduler,
                                                     generator, extra={"loss_history": history.losses},
                                                     keep_last=keep_last)
    return history

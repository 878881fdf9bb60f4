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

The checkpoint folders (manifest, sha256, atomic rename) are ``course_lib.checkpoint``'s; ``save_checkpoint``,
``latest_checkpoint`` and ``load_checkpoint`` are importable from here too.
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from course_lib._checks import check_float, check_int
from course_lib.checkpoint import (check_folder, check_modules, check_training_state, latest_checkpoint,
                                   load_checkpoint, save_checkpoint)

__all__ = ["TrainingDivergedError", "TrainHistory", "EMA", "warmup_factor", "cosine_schedule_with_warmup",
           "constant_schedule_with_warmup", "save_checkpoint",
           "latest_checkpoint", "load_checkpoint", "train_loop"]


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

def warmup_factor(step: int, warmup_steps: int) -> float:
    """The one warm-up rule of the course: update ``step`` (0-based) uses lr0 * step / W while step < W, then lr0.

    It starts at 0, not at lr0 / W, so that the numbers are those of diffusers' and transformers'
    ``get_*_schedule_with_warmup``, which students meet in every diffusers training script.
    """
    return step / warmup_steps if step < warmup_steps else 1.0


def _check_schedule_args(optimizer, warmup_steps: int, total_steps: int | None) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if total_steps is not None:
        check_int("total_steps", total_steps, minimum=1)
    check_int("warmup_steps", warmup_steps, minimum=0, maximum=total_steps)


def cosine_schedule_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """``warmup_factor``'s linear warm-up from 0 to the optimizer's lr over ``warmup_steps``, then a half cosine
    down to 0 at ``total_steps`` (diffusers' ``get_cosine_schedule_with_warmup``)."""
    _check_schedule_args(optimizer, warmup_steps, total_steps)

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return warmup_factor(step, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return LambdaLR(optimizer, lr_factor)


def constant_schedule_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> LambdaLR:
    """``warmup_factor``'s linear warm-up over ``warmup_steps``, then the optimizer's lr for good (diffusers'
    ``get_constant_schedule_with_warmup``)."""
    _check_schedule_args(optimizer, warmup_steps, None)
    return LambdaLR(optimizer, lambda step: warmup_factor(step, warmup_steps))


# --------------------------------------------------------------------------------------------- the loop

def _check_loop_args(step_fn, num_steps, checkpoint_dir, checkpoint_every, resume, max_grad_norm, desc,
                     callback, keep_last, ema, checkpoint_fn, progress) -> None:
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
    if checkpoint_fn is not None and not callable(checkpoint_fn):
        raise ValueError(f"checkpoint_fn must be callable like save_checkpoint, or None, got {checkpoint_fn!r}")
    if not isinstance(progress, bool):
        raise ValueError(f"progress must be True or False, got {progress!r}")


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
               callback: Callable | None = None, keep_last: int | None = 2, ema: EMA | None = None,
               checkpoint_fn: Callable | None = None, progress: bool = True) -> TrainHistory:
    """Run optimizer updates ``step = start, ..., num_steps - 1``; ``step_fn(step, generator)`` returns the loss.

    The loop does zero_grad / backward / clip (``max_grad_norm``) / optimizer.step / lr_scheduler.step /
    ema.update, shows the smoothed loss in a progress bar, calls ``callback(step, loss)``, and writes a
    checkpoint of ``modules`` (+ ema, optimizer, scheduler, RNGs, loss history) every ``checkpoint_every``
    steps and at the end. ``resume="latest"`` (or a checkpoint path) continues exactly where it stopped: same
    seed, same final weights, bit for bit (on CPU). A NaN/inf loss raises ``TrainingDivergedError`` before
    the bad update; the last checkpoint stays the last good one.

    checkpoint_fn: called like ``save_checkpoint`` (the default) to write each checkpoint; a multi-process run
    passes one that writes on the main process only and returns None on the others. progress=False hides the
    progress bar.
    """
    check_modules(modules)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    check_training_state(optimizer, lr_scheduler, generator)
    _check_loop_args(step_fn, num_steps, checkpoint_dir, checkpoint_every, resume, max_grad_norm, desc,
                     callback, keep_last, ema, checkpoint_fn, progress)
    if checkpoint_dir is not None:
        checkpoint_dir = check_folder("checkpoint_dir", checkpoint_dir)
    if ema is not None and "ema" in modules:
        raise ValueError("modules must not contain the key 'ema' when ema= is given (it is saved under that name)")
    tracked = {**modules, "ema": ema} if ema is not None else dict(modules)
    history = _resume(resume, checkpoint_dir, num_steps, tracked, optimizer, lr_scheduler, generator)
    start = history.resumed_from or 0
    smoothed = _SmoothedLoss(history.losses[-100:])
    save = save_checkpoint if checkpoint_fn is None else checkpoint_fn
    quiet = {} if progress else {"disable": True}  # (disable=False would override $TQDM_DISABLE)
    with tqdm(total=num_steps, initial=start, desc=desc, **quiet) as bar:
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
                written = save(checkpoint_dir, done, tracked, optimizer, lr_scheduler, generator,
                               extra={"loss_history": history.losses}, keep_last=keep_last)
                history.checkpoint = written or history.checkpoint
    return history

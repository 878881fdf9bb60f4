"""LoRA fine-tuning of Stable Diffusion on one or more GPUs with Hugging Face ``accelerate``.

Run it with ``accelerate launch -m course_lib.sd.launch ...`` (see ``launch.py`` and the README). Each of the
N processes holds a full copy of the frozen model and of the LoRA adapters; ``accelerate`` wraps the UNet in
PyTorch's DistributedDataParallel, which averages the LoRA gradients over the processes before every update,
so all copies stay identical.

Glossary:
    process          one Python process per GPU; ``process_index`` 0 is the main process, the only one that writes
    B_eff            the effective batch of one update = train_batch_size x num_processes x
                     gradient_accumulation_steps
    micro-batch      ``train_batch_size`` images through one forward/backward on one process
    accumulation     gradients of ``gradient_accumulation_steps`` micro-batches are summed before the update;
                     ``accelerator.accumulate`` skips DDP's all-reduce on all but the last of them

The pieces are ``train_lora``'s (``lora_training.py``): the same LoRA injection, optimizer, loss, data order,
checkpoint folders and LoRA file. The data stream is the one of ``sample_indices``: micro-batch k of that
stream goes to process k mod N. Process i draws its noise from a generator seeded with ``seed + i``. With one
process in fp32 the run is therefore the same computation as ``train_lora``'s, and gives the same weights.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from course_lib._io import atomic_write_json, load_safetensors
from course_lib.sd.components import SDComponents, load_sd_components
from course_lib.sd.lora_config import LoRATrainingConfig
from course_lib.sd.lora_training import (LORA_WEIGHT_NAME, LoRATrainingResult, _collate, _copy_checkpoints,
                                         _dataset_index, _GradScalerState, _load_dataset, _LoRAState,
                                         _make_optimizer, _make_validation, _prepare_models, _resume_checkpoint,
                                         _training_inputs, noise_prediction_loss)
from course_lib.sd.precision import pick_precision, precision_for

__all__ = ["train_lora_accelerate"]

GENERATORS = "generators"  # checkpoint file of the other processes' noise generators (more than one process)


class _StreamSampler(torch.utils.data.Sampler):
    """Dataset indices of positions ``first, ..., last - 1`` of ``train_lora``'s shuffled stream."""

    def __init__(self, seed: int, num_samples: int, first: int, last: int):
        self.seed, self.num_samples, self.first, self.last = seed, num_samples, first, last

    def __len__(self) -> int:
        return self.last - self.first

    def __iter__(self):
        return (_dataset_index(position, self.seed, self.num_samples) for position in range(self.first, self.last))


def _dataloader(dataset, config: LoRATrainingConfig, start: int, num_processes: int):
    """Micro-batches for updates ``start, ..., max_train_steps - 1`` of all processes, in stream order;
    ``accelerator.prepare`` then hands micro-batch k to process k mod num_processes."""
    per_update = config.train_batch_size * config.gradient_accumulation_steps * num_processes  # B_eff
    sampler = _StreamSampler(config.seed, len(dataset), start * per_update, config.max_train_steps * per_update)
    return torch.utils.data.DataLoader(dataset, batch_size=config.train_batch_size, sampler=sampler,
                                       collate_fn=_collate)


class _ProcessGenerators:
    """The noise generators of all processes in a checkpoint: one (num_processes, L) uint8 tensor, row i is the
    state of process i. ``gather`` is collective (every process calls it); only the main process saves."""

    def __init__(self, accelerator, generator: torch.Generator):
        self.accelerator, self.generator, self.states = accelerator, generator, None

    def gather(self) -> None:
        state = self.generator.get_state().to(self.accelerator.device)[None]            # (1, L)
        self.states = self.accelerator.gather(state).cpu()                              # (num_processes, L)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"states": self.states}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        states, count = state_dict["states"], self.accelerator.num_processes
        if len(states) != count:
            raise ValueError(f"state_dict holds the generators of {len(states)} processes, this run has {count}")
        self.generator.set_state(states[self.accelerator.process_index].clone())

    def restore(self, checkpoint: Path, seed: int, step: int) -> None:
        """Process i takes row i if the checkpoint was written by as many processes (process 0's generator
        also comes with every checkpoint's rng.json); otherwise processes 1.. take fresh seeds."""
        index, count = self.accelerator.process_index, self.accelerator.num_processes
        file = checkpoint / f"{GENERATORS}.safetensors"
        states = load_safetensors(file) if file.is_file() else None
        saved = 1 if states is None else len(states["states"])  # no file: a one-process run (or train_lora)
        if saved == count:
            if states is not None:
                self.load_state_dict(states)
        elif index == 0:
            warnings.warn(f"{checkpoint.name} was written by {saved} processes, this run has {count}: the data "
                          f"stream continues at another position and processes 1.. draw new noise")
        else:
            self.generator.manual_seed(seed + index + 1_000_003 * step)


def _make_accelerator(config: LoRATrainingConfig):
    """``Accelerator`` in the precision of ``config`` ("auto": ``pick_precision`` on this process's device)."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import parse_flag_from_env
    if config.device not in (None, "cuda", "cpu"):  # e.g. "cuda:1": choose GPUs with accelerate's --gpu_ids
        raise ValueError(f"device must be None or 'cuda' (accelerate gives each process its GPU) or 'cpu', "
                         f"got {config.device!r}")
    cpu = config.device == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU")  # set by `accelerate launch --cpu`
    device = PartialState(cpu=cpu).device  # this process's GPU under `accelerate launch`, else the CPU
    mixed = pick_precision(device).mixed_precision if config.mixed_precision == "auto" else config.mixed_precision
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed,
                              gradient_accumulation_steps=config.gradient_accumulation_steps)
    return accelerator, precision_for(accelerator.device, mixed)


def _resume(config: LoRATrainingConfig, modules, optimizer, lr_scheduler, generators: _ProcessGenerators):
    """(start step, loss history, checkpoint) after restoring the newest checkpoint, if resume="latest"."""
    from course_lib.train import load_checkpoint
    checkpoint = _resume_checkpoint(config)
    if checkpoint is None:
        return 0, [], None
    state = load_checkpoint(checkpoint, modules, optimizer, lr_scheduler, generators.generator)
    if state["step"] > config.max_train_steps:
        raise ValueError(f"max_train_steps must be >= the resumed checkpoint's step {state['step']}, "
                         f"got {config.max_train_steps}")
    generators.restore(checkpoint, config.seed, state["step"])
    return state["step"], list(state["extra"].get("loss_history", [])), checkpoint


def _save_checkpoint(accelerator, config, step: int, modules, optimizer, lr_scheduler, generators, losses):
    """All processes gather the generators; the main process writes ``checkpoint-{step:08d}`` (and its copy)."""
    from course_lib.train import save_checkpoint
    multi = accelerator.num_processes > 1
    if multi:
        generators.gather()
    path = None
    if accelerator.is_main_process:
        saved = {**modules, GENERATORS: generators} if multi else modules  # 1 process: train_lora's format
        path = save_checkpoint(config.checkpoint_folder, step, saved, optimizer, lr_scheduler, generators.generator,
                               extra={"loss_history": losses}, keep_last=config.keep_last)
        if config.copy_checkpoints_to:
            _copy_checkpoints(config.checkpoint_folder, Path(config.copy_checkpoints_to), config.keep_last)
    accelerator.wait_for_everyone()
    return path


def _accumulate_gradients(accelerator, unet, batches, components: SDComponents, noise_scheduler,
                          generator: torch.Generator, config: LoRATrainingConfig) -> torch.Tensor:
    """Forward and backward of this process's ``gradient_accumulation_steps`` micro-batches of one update;
    returns their mean loss. On the last one, DDP averages the summed gradients over all processes."""
    accumulation = config.gradient_accumulation_steps
    total = torch.zeros((), device=accelerator.device)
    for _ in range(accumulation):
        batch = next(batches)
        with accelerator.accumulate(unet):  # no all-reduce of the gradients except on the last micro-batch
            latents, context, noise, timesteps = _training_inputs(components, batch, generator,
                                                                  noise_scheduler.config.num_train_timesteps)
            loss = noise_prediction_loss(unet, noise_scheduler, latents, context, noise, timesteps, config.snr_gamma)
            accelerator.backward(loss)  # backward of loss / accumulation (x the loss scale S in fp16)
        total += loss.detach() / accumulation
    return total


def _diverged(step: int, value: float, checkpoint: Path | None):
    from course_lib.train import TrainingDivergedError
    where = f"resume from {str(checkpoint)!r} with a lower learning rate" if checkpoint else "no checkpoint yet"
    return TrainingDivergedError(f"the loss is {value} at step {step}: training diverged ({where})", step, value)


def train_lora_accelerate(config: LoRATrainingConfig, components: SDComponents | None = None) -> LoRATrainingResult:
    """``train_lora`` for ``accelerate launch``: same config, same files; every process runs this function.

    Only the main process writes ``training_config.json``, checkpoints, validation images and
    ``pytorch_lora_weights.safetensors``. ``config.train_batch_size`` is per process. components: already
    loaded SD pieces (modified in place) or None to load ``config.pretrained_model_name_or_path``.
    """
    from diffusers import DDPMScheduler

    from course_lib.lora import save_lora
    if not isinstance(config, LoRATrainingConfig):
        raise ValueError(f"config must be a LoRATrainingConfig, got {type(config).__name__}")
    if components is not None and not isinstance(components, SDComponents):
        raise ValueError(f"components must be SDComponents (from load_sd_components) or None, "
                         f"got {type(components).__name__}")
    accelerator, precision = _make_accelerator(config)
    with accelerator.main_process_first():  # the main process downloads/caches, the others then read the cache
        dataset = _load_dataset(config)
        if components is None:
            components = load_sd_components(config.pretrained_model_name_or_path, config.revision,
                                            torch_dtype=precision.weight_dtype, cache_dir=config.cache_dir)
    params = _prepare_models(components, config, precision)
    # not passed to accelerator.prepare, which would step it once per process at every update: ours counts updates
    optimizer, lr_scheduler = _make_optimizer(config, params)
    noise_scheduler = DDPMScheduler.from_config(components.scheduler.config)
    generators = _ProcessGenerators(accelerator, torch.Generator().manual_seed(config.seed + accelerator.process_index))
    modules = {"lora": _LoRAState(components.unet)}
    if accelerator.scaler is not None:  # fp16
        modules["grad_scaler"] = _GradScalerState(accelerator.scaler)
    start, losses, checkpoint = _resume(config, modules, optimizer, lr_scheduler, generators)
    result = LoRATrainingResult(lora_path=Path(config.output_dir) / LORA_WEIGHT_NAME, losses=losses,
                                resumed_from=start if checkpoint else None, checkpoint=checkpoint)
    if accelerator.is_main_process:
        atomic_write_json(Path(config.output_dir) / "training_config.json", config.to_dict())
    validate = _make_validation(components, config, result) if accelerator.is_main_process else None

    unet, optimizer, dataloader = accelerator.prepare(
        components.unet, optimizer, _dataloader(dataset, config, start, accelerator.num_processes))
    batches = iter(dataloader)
    quiet = {} if accelerator.is_local_main_process else {"disable": True}  # one progress bar per machine
    bar = tqdm(total=config.max_train_steps, initial=start, desc="LoRA", **quiet)
    for step in range(start, config.max_train_steps):
        loss = _accumulate_gradients(accelerator, unet, batches, components, noise_scheduler, generators.generator,
                                     config)
        value = accelerator.reduce(loss, "mean").item()  # the update's mean loss over all processes
        if not math.isfinite(value):
            raise _diverged(step, value, result.checkpoint)
        if config.max_grad_norm is not None:
            accelerator.clip_grad_norm_(params, config.max_grad_norm)  # unscales fp16 gradients first
        optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(value)
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4g}")
        done = step + 1
        if validate is not None:
            validate(done)
        if done % config.checkpoint_every == 0 or done == config.max_train_steps:
            result.checkpoint = _save_checkpoint(accelerator, config, done, modules, optimizer.optimizer,
                                                 lr_scheduler, generators, result.losses) or result.checkpoint
    bar.close()
    if accelerator.is_main_process:
        components.unet.eval()
        save_lora(accelerator.unwrap_model(unet), result.lora_path, prefix="unet")
    accelerator.wait_for_everyone()
    return result

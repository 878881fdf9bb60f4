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

The loop is ``train_lora``'s: ``course_lib.train.train_loop`` with the pieces of ``lora_training.py`` (LoRA
injection, optimizer, step function, loss, data order, checkpoint folders, LoRA file). What differs lives here:
the ``Accelerator``, the noise generator of each process (process i's is seeded with ``seed + i``), and
checkpoints gathered from all processes and written by the main one. The data stream is the one of
``sample_indices``: micro-batch k of that stream goes to process k mod N. With one process in fp32 the run is
therefore the same computation as ``train_lora``'s, and gives the same weights and the same checkpoints.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from course_lib._io import atomic_write_json, load_safetensors
from course_lib.sd.components import SDComponents, load_sd_components
from course_lib.sd.lora_config import LoRATrainingConfig
from course_lib.sd.lora_training import (LORA_WEIGHT_NAME, LoRATrainingResult, check_run_args, checkpoint_fn,
                                         finish, load_training_dataset, make_callback, make_step_fn,
                                         prepare_training, resume_checkpoint)
from course_lib.sd.precision import pick_precision, precision_for

__all__ = ["train_lora_accelerate"]

GENERATORS = "generators"  # checkpoint file of the other processes' noise generators (more than one process)


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
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed)  # accumulation is make_step_fn's (no_sync)
    return accelerator, precision_for(accelerator.device, mixed)


def _checkpoint_fn(accelerator, config: LoRATrainingConfig, generators: _ProcessGenerators):
    """train_loop's checkpoint_fn: all processes gather the generators, the main one writes (and copies) the
    checkpoint, the others return None. One process writes exactly ``train_lora``'s format."""
    save = checkpoint_fn(config)

    def save_on_main(folder, step, modules, *args, **kwargs):
        if accelerator.num_processes > 1:
            generators.gather()
            modules = {**modules, GENERATORS: generators}
        path = save(folder, step, modules, *args, **kwargs) if accelerator.is_main_process else None
        accelerator.wait_for_everyone()
        return path

    return save_on_main


def _restoring_generators(step_fn, generators: _ProcessGenerators, checkpoint: Path | None, seed: int):
    """step_fn that first gives each process its own generator row of ``checkpoint``: train_loop's resume
    restores only process 0's generator (from rng.json)."""
    pending = [checkpoint] if checkpoint is not None else []

    def first_restore_then_step(step: int, generator: torch.Generator) -> torch.Tensor:
        if pending:
            generators.restore(pending.pop(), seed, step)
        return step_fn(step, generator)

    return first_restore_then_step


def train_lora_accelerate(config: LoRATrainingConfig, components: SDComponents | None = None) -> LoRATrainingResult:
    """``train_lora`` for ``accelerate launch``: same config, same files; every process runs this function.

    Only the main process writes ``training_config.json``, checkpoints, validation images and
    ``pytorch_lora_weights.safetensors``. ``config.train_batch_size`` is per process. components: already
    loaded SD pieces (modified in place) or None to load ``config.pretrained_model_name_or_path``.
    """
    from course_lib.train import train_loop
    check_run_args(config, components)
    accelerator, precision = _make_accelerator(config)
    main = accelerator.is_main_process
    with accelerator.main_process_first():  # the main process downloads/caches, the others then read the cache
        dataset = load_training_dataset(config)
        if components is None:
            components = load_sd_components(config.pretrained_model_name_or_path, config.revision,
                                            torch_dtype=precision.weight_dtype, cache_dir=config.cache_dir)
    scaler = accelerator.scaler if accelerator.scaler is not None else precision.grad_scaler()  # fp16: accelerate's
    optimizer, lr_scheduler, noise_scheduler, modules = prepare_training(components, config, precision, scaler)
    unet = accelerator.prepare(components.unet)  # DistributedDataParallel with more than one process
    generators = _ProcessGenerators(accelerator, torch.Generator().manual_seed(config.seed + accelerator.process_index))
    output_dir = Path(config.output_dir)
    if main:
        atomic_write_json(output_dir / "training_config.json", config.to_dict())
    result = LoRATrainingResult(lora_path=output_dir / LORA_WEIGHT_NAME, losses=[], resumed_from=None,
                                checkpoint=None)
    checkpoint = resume_checkpoint(config)
    step_fn = make_step_fn(components, dataset, config, precision, noise_scheduler, scaler, optimizer,
                           accelerator=accelerator, unet=unet)
    history = train_loop(
        _restoring_generators(step_fn, generators, checkpoint, config.seed), config.max_train_steps,
        modules=modules, optimizer=optimizer, lr_scheduler=lr_scheduler, generator=generators.generator,
        checkpoint_dir=config.checkpoint_folder, checkpoint_every=config.checkpoint_every, resume=checkpoint,
        max_grad_norm=config.max_grad_norm, desc="LoRA", keep_last=config.keep_last,
        callback=make_callback(components, config, result) if main else None,
        checkpoint_fn=_checkpoint_fn(accelerator, config, generators), progress=accelerator.is_local_main_process)
    finish(components, result, history, write_lora=main)
    accelerator.wait_for_everyone()
    return result

"""Full fine-tuning of Stable Diffusion's UNet, the run LoRA is measured against: same data, same steps, same loop.

What changes compared with ``lora_training.train_lora`` (everything else is its pieces, unchanged):
    trainable set   every UNet weight W (LoRA: only A and B beside the attention projections, W frozen)
    dtype           the UNet stays in float32 even on a GPU (mixed precision autocasts the forward only): an
                    fp16 weight cannot take an AdamW step of size lr * 1e-5 without rounding it away
    optimizer       AdamW keeps two moments per trainable weight: 2 x 4 bytes more per parameter
    output          the UNet is modified in place (no adapter file; save it with ``unet.save_pretrained``)

Batches, noise and timesteps come from the same generator and ``sample_indices`` as a LoRA run with the same
config, so the two runs see identical data in identical order.

``training_state_bytes`` adds up what training keeps in memory besides activations and frozen weights:
trainable parameters, their gradients and AdamW's state.
"""
from __future__ import annotations

from pathlib import Path

import torch

from course_lib.sd.components import SDComponents
from course_lib.sd.lora_config import LoRATrainingConfig
from course_lib.sd.lora_training import (LoRATrainingResult, check_run_args, load_training_dataset, make_optimizer,
                                         make_step_fn, resume_checkpoint)
from course_lib.sd.precision import pick_precision, precision_for

__all__ = ["prepare_full_unet", "train_unet_full", "training_state_bytes"]


def prepare_full_unet(components: SDComponents, precision) -> list:
    """Freeze the VAE and text encoder (in the frozen dtype), make every UNet weight trainable (float32)."""
    for model in (components.vae, components.text_encoder):
        model.requires_grad_(False)
        model.eval()
        model.to(precision.device)
        if model.dtype != precision.weight_dtype:  # (diffusers warns about every dtype cast, even a no-op one)
            model.to(dtype=precision.weight_dtype)
    unet = components.unet.to(precision.device)
    if unet.dtype != torch.float32:
        unet.to(dtype=torch.float32)
    unet.requires_grad_(True)
    unet.train()
    return [p for p in unet.parameters() if p.requires_grad]


def train_unet_full(config: LoRATrainingConfig, components: SDComponents, callback=None) -> LoRATrainingResult:
    """Fine-tune all UNet weights with the LoRA trainer's step, optimizer and ``train_loop``.

    config: a ``LoRATrainingConfig`` (its rank, alpha and target_modules are not used); components are
    modified in place. Checkpoints (the whole UNet) go to ``config.checkpoint_folder``. Returns the losses.
    """
    from diffusers import DDPMScheduler
    from course_lib.train import train_loop
    check_run_args(config, components)
    if components is None:
        raise ValueError("components must be loaded SDComponents (full fine-tuning does not load a model itself)")
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable as callback(step, loss) or None, got {callback!r}")
    precision = (pick_precision(config.device) if config.mixed_precision == "auto"
                 else precision_for(config.device, config.mixed_precision))
    dataset = load_training_dataset(config)
    params = prepare_full_unet(components, precision)
    optimizer, lr_scheduler = make_optimizer(config, params)
    noise_scheduler = DDPMScheduler.from_config(components.scheduler.config)
    scaler = precision.grad_scaler()
    step_fn = make_step_fn(components, dataset, config, precision, noise_scheduler, scaler, optimizer)
    history = train_loop(step_fn, config.max_train_steps, modules={"unet": components.unet}, optimizer=optimizer,
                         lr_scheduler=lr_scheduler, generator=torch.Generator().manual_seed(config.seed),
                         checkpoint_dir=config.checkpoint_folder, checkpoint_every=config.checkpoint_every,
                         resume=resume_checkpoint(config), max_grad_norm=config.max_grad_norm, desc="full",
                         keep_last=config.keep_last, callback=callback)
    components.unet.eval()
    return LoRATrainingResult(lora_path=Path(config.output_dir), losses=history.losses,
                              resumed_from=history.resumed_from, checkpoint=history.checkpoint)


def training_state_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes training keeps for ``model``'s trainable parameters besides activations: the parameters, their
    gradients, and AdamW's two moments (exp_avg, exp_avg_sq: one float32 tensor each per parameter).

    Parameters and gradients are counted from the tensors (a parameter without a gradient counts none);
    frozen weights (requires_grad False) are left out: they are the same for every trainable set.
    """
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    return {"parameters": sum(p.numel() * p.element_size() for p in params),
            "gradients": sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None),
            "adamw_state": sum(2 * p.numel() * 4 for p in params)}

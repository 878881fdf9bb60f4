"""Fine-tuning Stable Diffusion's UNet with LoRA: the objective, the pieces of a step, and ``train_lora``.

Glossary (Ho et al. 2020 "DDPM"; Rombach et al. 2022 "LDM"; Hang et al. 2023 "Min-SNR"):
    x        an image (B, 3, H, W) in [-1, 1], H = W = ``resolution``
    z_0      its latent: a sample of vae.encode(x), times ``scaling_factor`` (0.18215)   (B, 4, H/8, W/8)
    c        the caption's text embeddings tau_theta(y)                                  (B, 77, D)
    t        a timestep ~ U{0, ..., T-1}, T = 1000;  abar_t = prod_{s<=t} (1 - beta_s)
    eps      noise ~ N(0, I) shaped like z_0
    z_t      sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps                               (DDPM eq. 4)
    L        mean || eps - eps_theta(z_t, t, c) ||^2                                 (DDPM eq. 14, LDM eq. 2)
    SNR(t)   abar_t / (1 - abar_t): signal-to-noise ratio of z_t
    gamma    Min-SNR: each sample's loss is weighted by min(SNR(t), gamma) / SNR(t) (eps-prediction), so the
             nearly noise-free timesteps, easy and many, stop dominating the gradient (gamma = 5 in the paper)

Only the LoRA matrices A, B on the UNet's attention projections train (``course_lib.lora``); VAE, text encoder
and UNet weights stay frozen, in half precision on a GPU (``precision.py``).

One optimizer update = ``gradient_accumulation_steps`` micro-batches of ``train_batch_size`` images. The
images of update s are a pure function of (seed, s) (``sample_indices``), and the noise and timesteps come from
a generator that every checkpoint stores, so a run killed and resumed with ``resume="latest"`` ends with the
same LoRA weights, bit for bit on CPU. The loop itself (backward, clipping, checkpoints, NaN stop, progress
bar) is ``course_lib.train.train_loop``.

The pieces below are public so that ``lora_accelerate.train_lora_accelerate`` (N processes with ``accelerate``)
runs the very same loop with them: ``prepare_training``, ``make_step_fn``, ``make_callback``, ``checkpoint_fn``,
``resume_checkpoint``, ``finish``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from course_lib._checks import check_choice, check_int
from course_lib._io import atomic_write_json
from course_lib.checkpoint import checkpoint_step, copy_checkpoints, latest_checkpoint, save_checkpoint
from course_lib.snr import min_snr_weights
from course_lib.sd.components import SDComponents, load_sd_components
from course_lib.sd.lora_config import LoRATrainingConfig
from course_lib.sd.precision import Precision, pick_precision, precision_for

__all__ = ["LoRATrainingConfig", "LoRATrainingResult", "LORA_WEIGHT_NAME", "encode_images", "encode_prompts",
           "min_snr_weights", "noise_prediction_loss", "sample_indices", "collate", "training_inputs",
           "load_training_dataset", "check_run_args", "LoRAState", "GradScalerState", "prepare_models",
           "make_optimizer", "prepare_training", "make_step_fn", "make_callback", "checkpoint_fn",
           "resume_checkpoint", "finish", "train_lora"]

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # the file name diffusers' load_lora_weights looks for


# ------------------------------------------------------------------------------------ pieces of one step

@torch.no_grad()
def encode_prompts(components: SDComponents, captions: list[str]) -> torch.Tensor:
    """c = tau_theta(captions): tokens padded/truncated to 77, through the frozen text encoder. (B, 77, D)"""
    tokenizer, text_encoder = components.tokenizer, components.text_encoder
    ids = tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids  # (B, 77)
    return text_encoder(ids.to(text_encoder.device))[0]


@torch.no_grad()
def encode_images(components: SDComponents, images: torch.Tensor, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """z_0 = scaling_factor * (a sample of the VAE posterior q(z | x)). images (B, 3, H, W) in [-1, 1]."""
    vae = components.vae
    posterior = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
    return posterior.sample(generator=generator) * vae.config.scaling_factor  # (B, 4, H/8, W/8)


def noise_prediction_loss(unet, noise_scheduler, latents: torch.Tensor, context: torch.Tensor,
                          noise: torch.Tensor, timesteps: torch.Tensor, snr_gamma: float | None = None
                          ) -> torch.Tensor:
    """The LDM objective for one batch: noise z_0 to z_t, predict the noise, mean squared error (scalar)."""
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)                    # z_t (DDPM eq. 4)
    prediction_type = noise_scheduler.config.prediction_type
    check_choice("noise_scheduler.config.prediction_type", prediction_type, ("epsilon", "v_prediction"))
    target = noise if prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, context).sample
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))  # (B,)
    if snr_gamma is not None:
        per_sample = per_sample * min_snr_weights(noise_scheduler.alphas_cumprod, timesteps, snr_gamma,
                                                  prediction_type)
    return per_sample.mean()


def _dataset_index(position: int, seed: int, num_samples: int) -> int:
    """The image at ``position`` of the endless stream of shuffled epochs: epoch e = position // num_samples is
    ``numpy.random.default_rng((seed, e)).permutation(num_samples)``."""
    epoch, offset = divmod(position, num_samples)
    return int(np.random.default_rng((seed, epoch)).permutation(num_samples)[offset])


def sample_indices(step: int, micro_batch: int, config: LoRATrainingConfig, num_samples: int,
                   process_index: int = 0, num_processes: int = 1) -> list[int]:
    """Dataset indices of micro-batch ``micro_batch`` of update ``step`` on process ``process_index``.

    The stream of ``_dataset_index`` is cut into micro-batches of ``train_batch_size`` positions, dealt to the
    processes in turn: update s, micro-batch k, process p reads micro-batch (s A + k) N + p (A =
    gradient_accumulation_steps, N = num_processes). The answer depends on nothing but these arguments.
    """
    check_int("num_processes", num_processes, minimum=1)
    check_int("process_index", process_index, minimum=0, maximum=num_processes - 1)
    first = ((step * config.gradient_accumulation_steps + micro_batch) * num_processes + process_index) \
        * config.train_batch_size
    return [_dataset_index(position, config.seed, num_samples)
            for position in range(first, first + config.train_batch_size)]


def collate(items: list[dict]) -> dict:
    """Dataset items -> one micro-batch: {"image": (B, 3, H, W), "caption": list of B strings}."""
    return {"image": torch.stack([item["image"] for item in items]), "caption": [item["caption"] for item in items]}


def training_inputs(components: SDComponents, batch: dict, generator: torch.Generator, num_train_timesteps: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z_0, c, eps, t) of one micro-batch. z_0's posterior sample, eps and t come from ``generator``, in this
    order, so a run that replays the generator replays the noise."""
    latents = encode_images(components, batch["image"], generator)                # z_0 (B, 4, H/8, W/8)
    context = encode_prompts(components, batch["caption"])                        # c (B, 77, D)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    timesteps = torch.randint(0, num_train_timesteps, (len(latents),), generator=generator).to(latents.device)
    return latents, context, noise, timesteps


def load_training_dataset(config: LoRATrainingConfig):
    """The image/caption dataset of ``config`` (``course_lib.data.load_image_dataset``), images at ``resolution``."""
    from course_lib.data import load_image_dataset
    return load_image_dataset(config.dataset, split=config.dataset_split, image_size=config.resolution,
                              image_column=config.image_column, caption_column=config.caption_column,
                              cache_dir=config.cache_dir)


# ------------------------------------------------------------------------------ what the loop trains

@dataclass
class LoRATrainingResult:
    lora_path: Path                      # <output_dir>/pytorch_lora_weights.safetensors
    losses: list[float]                  # one per update, since step 0 (also across a resume)
    resumed_from: int | None             # the checkpoint step this run continued from
    checkpoint: Path | None              # the last checkpoint written
    validation_images: dict[int, torch.Tensor] = field(default_factory=dict)  # step -> (N, 3, H, W) in [-1, 1]


def check_run_args(config, components) -> None:
    """train_lora's and train_lora_accelerate's common arguments: a LoRATrainingConfig, SDComponents or None."""
    if not isinstance(config, LoRATrainingConfig):
        raise ValueError(f"config must be a LoRATrainingConfig, got {type(config).__name__}")
    if components is not None and not isinstance(components, SDComponents):
        raise ValueError(f"components must be SDComponents (from load_sd_components) or None, "
                         f"got {type(components).__name__}")


class LoRAState:
    """The LoRA matrices of a UNet as a checkpointable "module": a few MB instead of the UNet's 3.4 GB."""

    def __init__(self, unet):
        from course_lib.lora import lora_layers
        self.layers = lora_layers(unet)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{ab}.weight": getattr(layer, ab).weight.detach()
                for name, layer in self.layers.items() for ab in ("lora_A", "lora_B")}

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        own = self.state_dict()
        if set(state_dict) != set(own):
            raise ValueError(f"state_dict must hold the adapters {sorted(own)[:2]}..., got {sorted(state_dict)[:2]}...")
        for key, value in own.items():
            value.copy_(state_dict[key])


class GradScalerState:
    """GradScaler's numbers (scale, growth tracker, ...) as tensors, so a checkpoint can hold them."""

    def __init__(self, scaler: torch.amp.GradScaler):
        self.scaler = scaler

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in self.scaler.state_dict().items()}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        ints = {"growth_interval", "_growth_tracker"}
        self.scaler.load_state_dict({k: int(v) if k in ints else float(v) for k, v in state_dict.items()})


def prepare_models(components: SDComponents, config: LoRATrainingConfig, precision: Precision) -> list:
    """Freeze everything, move it to the device in the frozen dtype, add fp32 LoRA adapters to the UNet.
    Returns the LoRA parameters, the only ones that train."""
    from course_lib.lora import LoRAConfig, inject_lora, lora_layers, lora_parameters
    unet = components.unet
    for model in (components.vae, components.text_encoder, unet):
        model.requires_grad_(False)
        model.eval()
    lora_config = LoRAConfig(r=config.rank, lora_alpha=config.alpha, target_modules=config.target_modules)
    inject_lora(unet, lora_config, generator=torch.Generator(unet.device).manual_seed(config.seed))
    for model in (components.vae, components.text_encoder, unet):
        model.to(precision.device)
        if model.dtype != precision.weight_dtype:  # (diffusers warns about every dtype cast, even a no-op one)
            model.to(dtype=precision.weight_dtype)
    for layer in lora_layers(unet).values():  # trainable weights stay fp32 (see precision.py)
        layer.lora_A.to(precision.lora_dtype)
        layer.lora_B.to(precision.lora_dtype)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()  # recompute activations in backward: less memory, ~30% slower
    unet.train()
    return lora_parameters(unet)


def make_optimizer(config: LoRATrainingConfig, params: list):
    """(AdamW, or 8-bit AdamW, over ``params``; its lr schedule or None)."""
    from course_lib.train import constant_schedule_with_warmup, cosine_schedule_with_warmup
    if config.use_8bit_adam:
        import bitsandbytes
        optimizer_cls = bitsandbytes.optim.AdamW8bit  # Adam's two moments in 8 bits: ~75% less optimizer memory
    else:
        optimizer_cls = torch.optim.AdamW
    optimizer = optimizer_cls(params, lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    if config.lr_scheduler == "cosine":
        return optimizer, cosine_schedule_with_warmup(optimizer, config.lr_warmup_steps, config.max_train_steps)
    if config.lr_warmup_steps:
        return optimizer, constant_schedule_with_warmup(optimizer, config.lr_warmup_steps)
    return optimizer, None


def prepare_training(components: SDComponents, config: LoRATrainingConfig, precision: Precision,
                     scaler: torch.amp.GradScaler) -> tuple:
    """Everything ``train_loop`` needs besides the step function:
    (optimizer, lr_scheduler, noise_scheduler, modules), modules being what each checkpoint holds."""
    from diffusers import DDPMScheduler
    params = prepare_models(components, config, precision)
    optimizer, lr_scheduler = make_optimizer(config, params)
    noise_scheduler = DDPMScheduler.from_config(components.scheduler.config)  # same betas as SD's scheduler
    modules = {"lora": LoRAState(components.unet)}
    if scaler.is_enabled():
        modules["grad_scaler"] = GradScalerState(scaler)
    return optimizer, lr_scheduler, noise_scheduler, modules


# ---------------------------------------------------------------------------------- one update

def _unscale_or_skip(scaler: torch.amp.GradScaler, optimizer, params: list) -> None:
    """fp16: divide the gradients by the loss scale S; after an overflow drop them, so the update is skipped."""
    scaler.unscale_(optimizer)
    finite = all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)
    scaler.update()  # S halves after an overflow and doubles after growth_interval clean steps
    if not finite:
        for p in params:
            p.grad = None  # clipping sees no gradient and AdamW leaves parameters without one untouched


def make_step_fn(components: SDComponents, dataset, config: LoRATrainingConfig, precision: Precision,
                 noise_scheduler, scaler: torch.amp.GradScaler, optimizer, accelerator=None, unet=None):
    """step_fn(step, generator) for ``train_loop``: the gradients of one update; returns its mean loss.

    With an ``accelerate.Accelerator`` (and ``unet``, the UNet ``accelerator.prepare`` returned), this process
    takes its share of the micro-batches (``sample_indices``), DDP averages the gradients over the processes
    on the last micro-batch only, and the loss returned is the mean over all processes.
    """
    unet = components.unet if unet is None else unet
    index, count = (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    accumulation = config.gradient_accumulation_steps
    num_timesteps = noise_scheduler.config.num_train_timesteps

    def step_fn(step: int, generator: torch.Generator) -> torch.Tensor:
        total = torch.zeros((), device=precision.device)
        for micro_batch in range(accumulation):
            batch = collate([dataset[i] for i in sample_indices(step, micro_batch, config, len(dataset), index, count)])
            latents, context, noise, timesteps = training_inputs(components, batch, generator, num_timesteps)
            last = micro_batch == accumulation - 1
            with contextlib.nullcontext() if accelerator is None or last else accelerator.no_sync(unet):
                with precision.autocast():
                    loss = noise_prediction_loss(unet, noise_scheduler, latents, context, noise, timesteps,
                                                 config.snr_gamma)
                scaler.scale(loss / accumulation).backward()  # gradients add up over the micro-batches
            total += loss.detach() / accumulation
        if scaler.is_enabled():
            _unscale_or_skip(scaler, optimizer, params)
        if accelerator is not None:
            total = accelerator.reduce(total, "mean")  # the update's mean loss over all processes
        # train_loop calls backward() on what we return; the gradients are already complete (micro-batches,
        # loss scaling), so we hand it the mean loss as a fresh leaf: its backward adds nothing.
        return total.requires_grad_()

    return step_fn


# ---------------------------------------------------------------- checkpoints, validation, the result

def checkpoint_fn(config: LoRATrainingConfig):
    """``train_loop``'s checkpoint_fn: ``save_checkpoint``, then a copy to ``config.copy_checkpoints_to``."""
    def save(folder, step, modules, *args, **kwargs):
        path = save_checkpoint(folder, step, modules, *args, **kwargs)
        if config.copy_checkpoints_to:
            copy_checkpoints(folder, config.copy_checkpoints_to, config.keep_last)
        return path

    return save


def resume_checkpoint(config: LoRATrainingConfig) -> Path | None:
    """resume="latest": the newest complete checkpoint in checkpoint_dir or copy_checkpoints_to."""
    if config.resume is None:
        return None
    folders = [config.checkpoint_folder] + ([Path(config.copy_checkpoints_to)] if config.copy_checkpoints_to else [])
    found = [path for path in map(latest_checkpoint, folders) if path is not None]
    return max(found, key=checkpoint_step) if found else None


def _make_validation(components: SDComponents, config: LoRATrainingConfig, result: LoRATrainingResult):
    """validate(done): after update number ``done``, when due, images of the validation prompts with fixed
    seeds, kept in ``result.validation_images`` and saved to ``<output_dir>/validation/step-NNNNNNNN.png``."""
    from course_lib.sd.generation import column_labels, generate
    from course_lib.viz import save_image_grid
    prompts = list(config.validation_prompts)
    seeds = [config.validation_seed + i for i in range(len(prompts))]
    pipe = components.pipeline() if config.validation_every else None
    if pipe is not None:
        pipe.set_progress_bar_config(disable=True)

    def validate(done: int) -> None:
        if pipe is None or (done % config.validation_every and done != config.max_train_steps):
            return
        components.unet.eval()
        images = generate(pipe, prompts, seeds, num_inference_steps=config.num_inference_steps,
                          guidance_scale=config.guidance_scale, height=config.resolution, width=config.resolution)
        components.unet.train()
        result.validation_images[done] = images
        save_image_grid(images, Path(config.output_dir) / "validation" / f"step-{done:08d}.png", nrow=len(prompts),
                        col_labels=column_labels(prompts, seeds, config.resolution, config.resolution))

    return validate


def make_callback(components: SDComponents, config: LoRATrainingConfig, result: LoRATrainingResult,
                  user_callback=None):
    """``train_loop``'s callback: validation images when due, then the user's callback(step, loss)."""
    validate = _make_validation(components, config, result)

    def callback(step: int, loss: float) -> None:
        validate(step + 1)
        if user_callback is not None:
            user_callback(step, loss)

    return callback


def finish(components: SDComponents, result: LoRATrainingResult, history, write_lora: bool = True
           ) -> LoRATrainingResult:
    """After ``train_loop``: write the LoRA file diffusers loads (unless ``write_lora`` is False, as on all but
    the main process of a multi-process run), and fill ``result`` from the history."""
    from course_lib.lora import save_lora
    components.unet.eval()
    if write_lora:
        save_lora(components.unet, result.lora_path, prefix="unet")
    result.losses, result.resumed_from, result.checkpoint = history.losses, history.resumed_from, history.checkpoint
    return result


# ------------------------------------------------------------------------------------------- the run

def train_lora(config: LoRATrainingConfig, components: SDComponents | None = None, callback=None
               ) -> LoRATrainingResult:
    """Fine-tune LoRA adapters on the UNet's attention projections; write ``pytorch_lora_weights.safetensors``.

    components: already loaded SD pieces (they are modified in place: frozen, moved, LoRA injected into the
    UNet), or None to load ``config.pretrained_model_name_or_path`` at ``config.revision``. callback(step, loss)
    runs after every update. Load the result with ``pipe.load_lora_weights(config.output_dir)``.
    """
    from course_lib.train import train_loop
    check_run_args(config, components)
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable as callback(step, loss) or None, got {callback!r}")
    precision = (pick_precision(config.device) if config.mixed_precision == "auto"
                 else precision_for(config.device, config.mixed_precision))
    dataset = load_training_dataset(config)
    if components is None:  # loaded straight in the frozen dtype: half the RAM on Colab
        components = load_sd_components(config.pretrained_model_name_or_path, config.revision,
                                        torch_dtype=precision.weight_dtype, cache_dir=config.cache_dir)
    scaler = precision.grad_scaler()
    optimizer, lr_scheduler, noise_scheduler, modules = prepare_training(components, config, precision, scaler)
    output_dir = Path(config.output_dir)
    atomic_write_json(output_dir / "training_config.json", config.to_dict())
    result = LoRATrainingResult(lora_path=output_dir / LORA_WEIGHT_NAME, losses=[], resumed_from=None,
                                checkpoint=None)
    history = train_loop(
        make_step_fn(components, dataset, config, precision, noise_scheduler, scaler, optimizer),
        config.max_train_steps, modules=modules, optimizer=optimizer, lr_scheduler=lr_scheduler,
        generator=torch.Generator().manual_seed(config.seed), checkpoint_dir=config.checkpoint_folder,
        checkpoint_every=config.checkpoint_every, resume=resume_checkpoint(config),
        max_grad_norm=config.max_grad_norm, desc="LoRA", keep_last=config.keep_last,
        callback=make_callback(components, config, result, callback), checkpoint_fn=checkpoint_fn(config))
    return finish(components, result, history)

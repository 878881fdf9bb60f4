"""Images from a Stable Diffusion pipeline with fixed seeds, with and without a LoRA: what did fine-tuning change?

Glossary:
    seed        one integer per image: its starting latent z_T comes from ``torch.Generator("cpu").manual_seed``,
                so the same (prompt, seed) gives the same picture on any device and in any batch
    lora_scale  s in h = W0 x + s * (B A x) * alpha / r: 0 is the base model, 1 the adapter as trained

The LoRA can be course_lib's own (``course_lib.lora.inject_lora``: we set the scale on its layers) or one that
diffusers loaded (``pipe.load_lora_weights``: diffusers reads ``cross_attention_kwargs={"scale": s}``).
Images come back as tensors (N, 3, H, W) in [-1, 1], the course's convention, on the CPU.
"""
from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

import torch

from course_lib._checks import check_float, check_int

__all__ = ["generate", "before_after_grid"]


def _check_prompts_seeds(prompts, seeds) -> tuple[list[str], list[int]]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds] * len(prompts)
    if not isinstance(seeds, Sequence) or len(seeds) != len(prompts):
        raise ValueError(f"seeds must be an int or a list of {len(prompts)} ints (one per prompt), got {seeds!r}")
    for seed in seeds:
        check_int("seeds", seed, minimum=0)
    return list(prompts), list(seeds)


def _check_pipe(pipe) -> None:
    if not (callable(pipe) and hasattr(pipe, "unet") and hasattr(pipe, "vae")):
        raise ValueError(f"pipe must be a diffusers StableDiffusionPipeline, got {type(pipe).__name__}")


def generate(pipe, prompts: str | Sequence[str], seeds: int | Sequence[int], lora_scale: float = 1.0,
             num_inference_steps: int = 25, guidance_scale: float = 7.5, **pipe_kwargs) -> torch.Tensor:
    """One image per (prompt, seed) pair, (N, 3, H, W) in [-1, 1]; ``lora_scale`` scales the UNet's LoRA.

    Extra keyword arguments go to the pipeline (e.g. ``height``, ``width``, ``negative_prompt``).
    """
    _check_pipe(pipe)
    prompts, seeds = _check_prompts_seeds(prompts, seeds)
    check_float("lora_scale", lora_scale)
    check_int("num_inference_steps", num_inference_steps, minimum=1)
    check_float("guidance_scale", guidance_scale, minimum=0.0)
    from course_lib.lora import lora_layers
    ours = lora_layers(pipe.unet)
    previous = {name: layer.scale for name, layer in ours.items()}
    if ours:
        for layer in ours.values():
            layer.set_scale(lora_scale)
    else:  # diffusers' own (peft) LoRA layers, if any, read the scale from here
        pipe_kwargs["cross_attention_kwargs"] = {**pipe_kwargs.get("cross_attention_kwargs", {}), "scale": lora_scale}
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    try:
        images = pipe(prompts, generator=generators, num_inference_steps=num_inference_steps,
                      guidance_scale=guidance_scale, output_type="pt", **pipe_kwargs).images  # (N, 3, H, W) in [0, 1]
    finally:
        for name, layer in ours.items():
            layer.set_scale(previous[name])
    return images.detach().float().cpu() * 2 - 1


def column_labels(prompts: list[str], seeds: list[int], width: int, height: int) -> list[str]:
    """"<prompt> (seed s)" wrapped to the width of one tile of the saved grid, so neighbours never overlap.

    ``course_lib.viz.save_image_grid`` shows tiles at least ~96 px tall, so a tile is at least
    max(W, 96 W / H) px wide; its 9-point labels take up to ~7 px per character (DejaVu Sans, 100 dpi).
    """
    chars = max(8, int(max(width, 96 * width / height) // 7))
    return ["\n".join(textwrap.wrap(prompt, chars) + [f"(seed {seed})"]) for prompt, seed in zip(prompts, seeds)]


def before_after_grid(pipe, prompts: str | Sequence[str], seeds: int | Sequence[int], lora_scale: float = 1.0,
                      path: str | os.PathLike | None = None, **generate_kwargs) -> torch.Tensor:
    """The same prompts and seeds without (scale 0) and with the LoRA: (2N, 3, H, W), "before" row first.

    With ``path`` the grid is also saved as a picture, one row each, prompts as column titles.
    """
    prompts, seeds = _check_prompts_seeds(prompts, seeds)
    before = generate(pipe, prompts, seeds, lora_scale=0.0, **generate_kwargs)
    after = generate(pipe, prompts, seeds, lora_scale=lora_scale, **generate_kwargs)
    images = torch.cat([before, after])
    if path is not None:
        from course_lib.viz import save_image_grid
        height, width = images.shape[-2:]
        save_image_grid(images, path, nrow=len(prompts),
                        row_labels=["before (LoRA scale 0)", f"after (LoRA scale {lora_scale:g})"],
                        col_labels=column_labels(prompts, seeds, width, height))
    return images

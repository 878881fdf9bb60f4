"""The real Stable Diffusion v1.5, as facts: its configs and sizes, without downloading a byte.

Glossary (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"):
    x          an RGB image, (B, 3, 512, 512) in [-1, 1]
    z          its latent, (B, 4, 64, 64): the VAE encoder E downsamples by f = 8 (four blocks, three halvings)
    z_0        ``scaling_factor * z`` with scaling_factor = 0.18215, so that z_0 has roughly unit variance
    eps_theta  the UNet: predicts the noise in z_t given t and the text tokens c (cross-attention, width 768)
    tau_theta  the text encoder: CLIP ViT-L/14's text tower, 77 tokens -> (B, 77, 768)

The three component configs in ``course_lib/configs/sd15_*.json`` are the ``config.json`` files of the hub repo
``stable-diffusion-v1-5/stable-diffusion-v1-5`` (subfolders unet/, vae/, text_encoder/), written out by hand.
Scheduler and tokenizer facts are small enough to live here as constants.

Note on ``text_encoder``: its ``bos/eos/pad_token_id`` (0, 2, 1) are legacy values kept as in the real file;
the real tokenizer's ids are in ``SD15_TOKENIZER`` (eos 49407). transformers recognises ``eos_token_id == 2``
and pools at the highest token id instead, which is where CLIP's <|endoftext|> sits.

``sd15_empty_model(name)`` builds a component on PyTorch's "meta" device: every parameter has its real shape
but no storage, so counting the 859.5M UNet parameters takes milliseconds and no memory.
"""
from __future__ import annotations

import json
from importlib import resources

import torch
from torch import nn

from course_lib._checks import check_choice
from course_lib.schedulers import STABLE_DIFFUSION_BETAS

__all__ = ["SD15_SCHEDULER", "SD15_TOKENIZER", "SD15_COMPONENTS", "sd15_config", "sd15_empty_model",
           "count_parameters"]

# scheduler/scheduler_config.json of the real repo (a PNDMScheduler; DDPM/DDIM read the same betas).
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    **STABLE_DIFFUSION_BETAS,  # scaled_linear, 0.00085 -> 0.012
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}

# tokenizer/: CLIP's byte-level BPE with 49408 tokens; the two special tokens are the last two ids.
SD15_TOKENIZER = {
    "vocab_size": 49408,
    "model_max_length": 77,
    "bos_token": "<|startoftext|>",
    "bos_token_id": 49406,
    "eos_token": "<|endoftext|>",
    "eos_token_id": 49407,
    "pad_token": "<|endoftext|>",
}

SD15_COMPONENTS = ("unet", "vae", "text_encoder", "scheduler", "tokenizer")
_JSON_FILES = {"unet": "sd15_unet.json", "vae": "sd15_vae.json", "text_encoder": "sd15_text_encoder.json"}


def sd15_config(name: str) -> dict:
    """A fresh copy of SD v1.5's config for one component: unet, vae, text_encoder, scheduler or tokenizer."""
    check_choice("name", name, SD15_COMPONENTS)
    if name == "scheduler":
        return dict(SD15_SCHEDULER)
    if name == "tokenizer":
        return dict(SD15_TOKENIZER)
    text = resources.files("course_lib").joinpath("configs").joinpath(_JSON_FILES[name]).read_text()
    return json.loads(text)


def sd15_empty_model(name: str, device: str | torch.device = "meta") -> nn.Module:
    """SD v1.5's unet, vae or text_encoder with the real shapes, built on ``device`` (default: no storage).

    With ``device="cpu"`` the weights are random (and take GBs); the real ones come from ``load_sd_components``.
    """
    check_choice("name", name, ("unet", "vae", "text_encoder"))
    config = sd15_config(name)
    with torch.device(device):
        if name == "unet":
            from diffusers import UNet2DConditionModel
            return UNet2DConditionModel.from_config(config)
        if name == "vae":
            from diffusers import AutoencoderKL
            return AutoencoderKL.from_config(config)
        from transformers import CLIPTextConfig, CLIPTextModel
        return CLIPTextModel(CLIPTextConfig(**config))


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (works on the meta device: only shapes are read)."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

"""The miniature Stable Diffusion pipeline: text -> latents -> image, plus img2img and inpainting.

Glossary (Rombach et al. 2022; Ho & Salimans 2022 for guidance):
    E, D         the VAE's encoder and decoder; z = s * E(x) is the latent the diffusion model works on
    s            the latent scale factor (``scale_factor``), chosen so that z has unit variance (SD: 0.18215)
    tau(y)       the text encoder's token features for prompt y: (B, L, width), what the UNet cross-attends to
    eps_theta    the UNet's noise prediction eps_theta(z_t, t, tau(y))
    w            the guidance scale: eps = eps_uncond + w (eps_cond - eps_uncond); w = 1 means no guidance
    strength     img2img: the share of the noise schedule that is re-run, in [0, 1]

The three tasks share one denoising loop (``denoise``); they differ only in where they start:
    txt2img     z_T ~ N(0, I), all timesteps
    img2img     z_t = add_noise(s * E(x), eps, t_start), the last ``strength`` share of the timesteps
    inpaint     as txt2img, but after every step the *known* region is replaced by the original latent noised
                to the current level, so only the masked region is generated (the "blended" inpainting of
                Avrahami et al. 2022 / RePaint-style, which works with any text-to-image model)
The batch order inside the loop is unconditional first, as in diffusers.

What the UNet cross-attends to (``text_features``, see ``encode_text``):
    "last_hidden_state"                   tau(y) = the encoder's last hidden states (L tokens), as in SD v1.5
    "last_hidden_state+token_embeddings"  those L states followed by the L context-free token embeddings
                                          (word + position, layer-normalised): 2L tokens. In a small causal
                                          encoder the state of "circle" in "a yellow circle" is dominated by
                                          "yellow"; the context-free copy keeps each word's meaning on its own,
                                          which is what lets the UNet draw colour-shape pairs it never saw.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from course_lib._checks import check_choice, check_float, check_int, check_tensor
from course_lib._io import atomic_write_json, load_pretrained, save_pretrained
from course_lib.guidance import cfg_combine
from course_lib.layout_guidance import steer_latents
from course_lib.schedulers import DDIMScheduler, DDPMScheduler
from course_lib.text import CaptionTokenizer, CLIPConfig, TextEncoder
from course_lib.unet import UNet
from course_lib.vae import VAE

__all__ = ["MiniSDPipeline", "PipelineOutput", "TEXT_FEATURES", "encode_text"]

TEXT_FEATURES = ("last_hidden_state", "last_hidden_state+token_embeddings")


def encode_text(text_encoder: TextEncoder, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                text_features: str = "last_hidden_state") -> tuple[torch.Tensor, torch.Tensor]:
    """tau(y): input_ids, attention_mask (B, L) -> features (B, L', width) and mask (B, L') bool, where
    L' = L for "last_hidden_state" and 2L for "last_hidden_state+token_embeddings" (module docstring)."""
    check_choice("text_features", text_features, TEXT_FEATURES)
    hidden = text_encoder(input_ids, attention_mask).last_hidden_state  # (B, L, width)
    mask = attention_mask.bool()
    if text_features == "last_hidden_state":
        return hidden, mask
    words = F.layer_norm(text_encoder.embed(input_ids), (text_encoder.config.width,))  # (B, L, width)
    return torch.cat([hidden, words], dim=1), torch.cat([mask, mask], dim=1)  # (B, 2L, width), (B, 2L)


@dataclass
class PipelineOutput:
    """``images``: (B, 3, H, W) in [-1, 1]; ``latents``: the final z_0 (B, c, h, w), scaled by s;
    ``trajectory``: the x_0 prediction decoded at every step (list of (B, 3, H, W)) if asked for."""
    images: torch.Tensor
    latents: torch.Tensor
    trajectory: list[torch.Tensor] = field(default_factory=list)
    timesteps: list[int] = field(default_factory=list)


def _prompt_list(prompts) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a string or a non-empty list of strings, got {prompts!r}")
    return list(prompts)


class MiniSDPipeline:
    """Stable Diffusion in miniature: ``vae``, ``text_encoder`` + ``tokenizer``, ``unet``, ``scheduler``.
    ``text_features`` must be what the UNet was trained on (``encode_text``)."""

    def __init__(self, vae: VAE, text_encoder: TextEncoder, tokenizer: CaptionTokenizer, unet: UNet,
                 scheduler: DDIMScheduler | DDPMScheduler, scale_factor: float, image_size: int = 32,
                 text_features: str = "last_hidden_state"):
        for name, value, cls in (("vae", vae, VAE), ("text_encoder", text_encoder, TextEncoder),
                                 ("tokenizer", tokenizer, CaptionTokenizer), ("unet", unet, UNet),
                                 ("scheduler", scheduler, (DDIMScheduler, DDPMScheduler))):
            if not isinstance(value, cls):
                raise ValueError(f"{name} must be a {getattr(cls, '__name__', cls)}, got {type(value).__name__}")
        check_float("scale_factor", scale_factor, minimum=0.0, min_inclusive=False)
        check_int("image_size", image_size, minimum=1)
        check_choice("text_features", text_features, TEXT_FEATURES)
        factor = vae.config.downsample_factor * 2 ** (unet.config.num_levels - 1)
        if image_size % factor:
            raise ValueError(f"image_size must be divisible by {factor} (the VAE's and UNet's downsampling), "
                             f"got {image_size}")
        if unet.config.context_dim != text_encoder.config.width:
            raise ValueError(f"unet must cross-attend to the text encoder's width {text_encoder.config.width}, "
                             f"got context_dim={unet.config.context_dim}")
        if unet.config.in_channels != vae.config.latent_channels:
            raise ValueError(f"unet must take the VAE's {vae.config.latent_channels} latent channels, "
                             f"got in_channels={unet.config.in_channels}")
        self.vae, self.text_encoder, self.tokenizer = vae.eval(), text_encoder.eval(), tokenizer
        self.unet, self.scheduler, self.scale_factor = unet.eval(), scheduler, float(scale_factor)
        self.image_size, self.text_features = image_size, text_features

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # -- the pieces ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompts) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> tau(y) (B, L', width) and its padding mask (B, L') bool (True = a real token);
        L' = L tokens, or 2L with ``text_features="last_hidden_state+token_embeddings"``."""
        tokens = self.tokenizer(_prompt_list(prompts), max_length=self.text_encoder.config.max_length)
        ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
        return encode_text(self.text_encoder, ids, mask, self.text_features)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> z = s * mean of q(z|x), (B, c, H/f, W/f)."""
        return self.vae.encode(images.to(self.device)).mode() * self.scale_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """z (B, c, h, w) -> x = D(z / s), clamped to [-1, 1]."""
        return self.vae.decode(latents / self.scale_factor).clamp(-1, 1)

    def latent_shape(self, batch: int, image_size: int | None = None) -> tuple[int, int, int, int]:
        size = self.image_size if image_size is None else image_size
        check_int("image_size", size, minimum=1)
        if size % self.size_factor:
            raise ValueError(f"image_size must be divisible by {self.size_factor} (the VAE's and UNet's "
                             f"downsampling), got {size}")
        f = self.vae.config.downsample_factor
        return (batch, self.vae.config.latent_channels, size // f, size // f)

    @property
    def size_factor(self) -> int:
        """Image sides must be multiples of this: the VAE's factor f times the UNet's 2**(levels - 1)."""
        return self.vae.config.downsample_factor * 2 ** (self.unet.config.num_levels - 1)

    @torch.no_grad()
    def denoise(self, latents: torch.Tensor, timesteps, prompts, guidance_scale: float = 4.0,
                generator: torch.Generator | None = None, eta: float = 0.0, known_latents=None, known_mask=None,
                return_trajectory: bool = False, progress: bool = True, layouts=None,
                layout_guidance_scale: float = 1.0, layout_guidance_steps: int = 10) -> PipelineOutput:
        """The sampling loop (Ho et al. 2020, Alg. 2, with classifier-free guidance), from ``latents`` at
        ``timesteps[0]`` down to z_0. ``known_latents``/``known_mask`` (1 = generate, 0 = keep): inpainting.
        ``layouts`` (one ``RelationLayout`` or None per image): layout guidance during the first
        ``layout_guidance_steps`` steps, each a step of length ``layout_guidance_scale``
        (course_lib.layout_guidance)."""
        check_float("guidance_scale", guidance_scale, minimum=0.0)
        check_float("layout_guidance_scale", layout_guidance_scale, minimum=0.0)
        check_int("layout_guidance_steps", layout_guidance_steps, minimum=0)
        cond, cond_mask = self.encode_prompt(prompts)
        if cond.shape[0] != latents.shape[0]:
            raise ValueError(f"prompts must give one prompt per image ({latents.shape[0]}), got {cond.shape[0]}")
        if layouts is not None and len(layouts) != latents.shape[0]:
            raise ValueError(f"layouts must have one entry (a RelationLayout or None) per image "
                             f"({latents.shape[0]}), got {len(layouts)}")
        uncond, uncond_mask = self.encode_prompt([""] * cond.shape[0])
        context, context_mask = torch.cat([uncond, cond]), torch.cat([uncond_mask, cond_mask])
        step_kwargs = {"eta": eta} if isinstance(self.scheduler, DDIMScheduler) else {}
        out = PipelineOutput(images=latents, latents=latents)
        timesteps = [int(t) for t in timesteps]
        for i, t in enumerate(tqdm(timesteps, desc="sampling", leave=False, disable=not progress)):
            if layouts is not None and i < layout_guidance_steps:  # move z_t towards the layout first
                latents = steer_latents(self.unet, latents, t, cond, cond_mask, layouts, layout_guidance_scale)
            eps_uncond, eps_cond = self.unet(torch.cat([latents, latents]), t, context, context_mask).chunk(2)
            eps = cfg_combine(eps_uncond, eps_cond, guidance_scale)
            step = self.scheduler.step(eps, t, latents, generator=generator, **step_kwargs)
            latents = step.prev_sample
            if known_latents is not None:  # keep the known region: the original, noised to the next level
                known = known_latents
                if i + 1 < len(timesteps):
                    noise = torch.randn(known.shape, generator=generator, device=known.device, dtype=known.dtype)
                    known = self.scheduler.add_noise(known_latents, noise, torch.tensor([timesteps[i + 1]]))
                latents = known_mask * latents + (1 - known_mask) * known
            if return_trajectory:
                out.trajectory.append(self.decode_latents(step.pred_original_sample))
                out.timesteps.append(t)
        out.latents, out.images = latents, self.decode_latents(latents)
        return out

    # -- the three tasks -------------------------------------------------------------------------------------

    def __call__(self, prompts, num_inference_steps: int = 25, guidance_scale: float = 4.0,
                 generator: torch.Generator | None = None, eta: float = 0.0, latents: torch.Tensor | None = None,
                 image_size: int | None = None, return_trajectory: bool = False,
                 progress: bool = True, layouts=None, layout_guidance_scale: float = 1.0,
                 layout_guidance_steps: int = 10) -> PipelineOutput:
        """txt2img: one image per prompt, from z_T ~ N(0, I) (or the given ``latents``); ``layouts``: see
        ``denoise``."""
        prompts = _prompt_list(prompts)
        check_int("num_inference_steps", num_inference_steps, minimum=1)
        shape = self.latent_shape(len(prompts), image_size)
        if latents is None:
            latents = torch.randn(shape, generator=generator, device=self.device)
        else:
            check_tensor("latents", latents, ndim=4, floating=True)
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        self.scheduler.set_timesteps(num_inference_steps)
        latents = latents * self.scheduler.init_noise_sigma
        return self.denoise(latents, self.scheduler.timesteps, prompts, guidance_scale, generator, eta,
                            return_trajectory=return_trajectory, progress=progress, layouts=layouts,
                            layout_guidance_scale=layout_guidance_scale, layout_guidance_steps=layout_guidance_steps)

    def img2img(self, images: torch.Tensor, prompts, strength: float = 0.6, num_inference_steps: int = 25,
                guidance_scale: float = 4.0, generator: torch.Generator | None = None, eta: float = 0.0,
                progress: bool = True) -> PipelineOutput:
        """SDEdit: noise the image's latent to the ``strength`` point of the schedule, then denoise with the prompt.
        strength 0 returns the (VAE round-tripped) input; strength 1 ignores it."""
        prompts = self._check_images(images, prompts)
        check_float("strength", strength, minimum=0.0, maximum=1.0)
        check_int("num_inference_steps", num_inference_steps, minimum=1)
        z0 = self.encode_images(images)
        self.scheduler.set_timesteps(num_inference_steps)
        timesteps = self.scheduler.get_timesteps_for_strength(strength)
        if len(timesteps) == 0:
            return PipelineOutput(images=self.decode_latents(z0), latents=z0)
        noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        latents = self.scheduler.add_noise(z0, noise, timesteps[:1].repeat(z0.shape[0]))
        return self.denoise(latents, timesteps, prompts, guidance_scale, generator, eta, progress=progress)

    def inpaint(self, images: torch.Tensor, mask: torch.Tensor, prompts, num_inference_steps: int = 25,
                guidance_scale: float = 4.0, generator: torch.Generator | None = None, eta: float = 0.0,
                progress: bool = True) -> PipelineOutput:
        """Regenerate the region where ``mask`` is 1 ((B, 1, H, W) or (1, H, W) in {0, 1}), keep the rest."""
        prompts = self._check_images(images, prompts)
        check_tensor("mask", mask, ndim=(3, 4), floating=True)
        mask = mask if mask.ndim == 4 else mask[None]
        if mask.shape[1] != 1 or mask.shape[-2:] != images.shape[-2:] or mask.shape[0] not in (1, images.shape[0]):
            raise ValueError(f"mask must have shape (B or 1, 1, {images.shape[-2]}, {images.shape[-1]}), "
                             f"got {tuple(mask.shape)}")
        if ((mask != 0) & (mask != 1)).any():
            raise ValueError("mask must hold only 0 (keep) and 1 (generate)")
        z0 = self.encode_images(images)
        # a latent pixel is generated if any image pixel it covers is: max-pool the mask down by f
        latent_mask = F.adaptive_max_pool2d(mask.to(self.device), z0.shape[-2:]).expand(z0.shape[0], 1, -1, -1)
        self.scheduler.set_timesteps(num_inference_steps)
        latents = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        return self.denoise(latents, self.scheduler.timesteps, prompts, guidance_scale, generator, eta,
                            known_latents=z0, known_mask=latent_mask, progress=progress)

    def _check_images(self, images, prompts) -> list[str]:
        prompts = _prompt_list(prompts)
        check_tensor("images", images, ndim=4, floating=True)
        if images.shape[1] != self.vae.config.in_channels:
            raise ValueError(f"images must have {self.vae.config.in_channels} channels, got shape "
                             f"{tuple(images.shape)}")
        factor = self.size_factor
        if images.shape[2] % factor or images.shape[3] % factor:
            raise ValueError(f"images must have height and width divisible by {factor} (the VAE's and UNet's "
                             f"downsampling), got shape {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ValueError(f"prompts must give one prompt per image ({images.shape[0]}), got {len(prompts)}")
        return prompts

    # -- saving ----------------------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """vae/, text_encoder/, unet/ (config.json + model.safetensors each), tokenizer.json, scheduler/,
        pipeline.json (scale factor, image size) written last."""
        folder = Path(folder)
        self.vae.save_pretrained(folder / "vae")
        save_pretrained(self.text_encoder, folder / "text_encoder")
        self.unet.save_pretrained(folder / "unet")
        self.tokenizer.save(folder / "tokenizer.json")
        self.scheduler.save_pretrained(folder / "scheduler")
        atomic_write_json(folder / "pipeline.json", {"scale_factor": self.scale_factor,
                                                     "image_size": self.image_size,
                                                     "text_features": self.text_features,
                                                     "scheduler": type(self.scheduler).__name__})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> "MiniSDPipeline":
        folder = Path(folder)
        if not (folder / "pipeline.json").is_file():
            raise ValueError(f"folder must be a saved MiniSDPipeline (pipeline.json missing), got {str(folder)!r}")
        meta = json.loads((folder / "pipeline.json").read_text())
        missing = sorted({"scale_factor", "image_size", "text_features", "scheduler"} - set(meta))
        if missing:
            raise ValueError(f"folder {str(folder)!r} holds a pipeline.json without {missing}; save the pipeline "
                             f"again with save_pretrained")
        scheduler_cls = DDPMScheduler if meta["scheduler"] == "DDPMScheduler" else DDIMScheduler
        pipe = cls(vae=VAE.from_pretrained(folder / "vae", device=device),
                   text_encoder=load_pretrained(TextEncoder, CLIPConfig, folder / "text_encoder", device=device),
                   tokenizer=CaptionTokenizer.load(folder / "tokenizer.json"),
                   unet=UNet.from_pretrained(folder / "unet", device=device),
                   scheduler=scheduler_cls.from_pretrained(folder / "scheduler"),
                   scale_factor=meta["scale_factor"], image_size=int(meta["image_size"]),
                   text_features=meta["text_features"])
        return pipe

"""Loading Stable Diffusion's five components: the real v1.5 on Colab, or any folder in diffusers' layout.

Glossary:
    unet          UNet2DConditionModel, eps_theta(z_t, t, c): predicts the noise in a latent
    vae           AutoencoderKL: images (B, 3, H, W) <-> latents (B, 4, H/8, W/8)
    text_encoder  CLIPTextModel, tau_theta: token ids (B, 77) -> embeddings c (B, 77, 768)
    tokenizer     CLIPTokenizer: text -> token ids, padded/truncated to 77
    scheduler     the noise schedule beta_1..beta_T and a sampler's update rule

A diffusers folder (on the hub or on disk) holds one subfolder per component plus ``model_index.json``.
Loading the pieces ourselves, instead of ``StableDiffusionPipeline.from_pretrained``, skips the safety
checker (a 1.2 GB download we do not need for the course) and lets training use the parts directly.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["DEFAULT_MODEL_ID", "DEFAULT_REVISION", "ModelNotAvailableError", "SDComponents",
           "load_sd_components", "load_pipeline"]

# The runwayml/stable-diffusion-v1-5 repo no longer exists; this is its official mirror.
DEFAULT_MODEL_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# Pinned commit of that repo, so every student gets the same files. UNVERIFIED OFFLINE: this hash was not
# read from the hub (no network where the course was written). The evidence, from public code: projects pin
# it for "stable-diffusion-v1-5/stable-diffusion-v1-5" (MODEL_REVISION = ..., and a
# huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/tree/<hash>/ weights URL in imaginAIry's
# config.py), and it is the snapshot folder name of this repo in many Hugging Face caches, under the mirror's
# name, its alias "sd-legacy" and the original "runwayml" (the mirror kept runwayml's history). An older
# commit, pinned elsewhere for the same repo, is 451f4fe16113bff5a5d2269ed5ad43b0592e9a14.
# If the hub ever refuses it, pass revision="main".
DEFAULT_REVISION = "f03de327dd89b501a01da37fc5240cf4fdba85a1"

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class ModelNotAvailableError(OSError, ValueError):
    """The model id names nothing that can be loaded here (no network, not cached, or not a model)."""


@dataclass
class SDComponents:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side: 2 ** (number of VAE blocks - 1), 8 for SD."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def to(self, device=None, dtype=None) -> "SDComponents":
        """Move the three networks (in place, like ``nn.Module.to``) and return self."""
        _check_dtype_device(dtype, device, dtype_name="dtype")
        # only the arguments given: diffusers warns about any dtype= (even None) as if it were a cast
        moves = {name: value for name, value in (("device", device), ("dtype", dtype)) if value is not None}
        if moves:
            for model in (self.unet, self.vae, self.text_encoder):
                model.to(**moves)
        return self

    def pipeline(self):
        """A ``StableDiffusionPipeline`` that shares these modules (no copy), without safety checker."""
        from diffusers import StableDiffusionPipeline
        return StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=self.unet, scheduler=self.scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)


def _source(model_id_or_path, revision, cache_dir=None) -> tuple[str, dict]:
    """(where, from_pretrained kwargs): a local folder loads offline, a hub id at a revision (from cache_dir)."""
    if not isinstance(model_id_or_path, (str, os.PathLike)):
        raise ValueError(f"model_id_or_path must be a str or path, got {type(model_id_or_path).__name__}")
    if revision is not None and (not isinstance(revision, str) or not revision):
        raise ValueError(f"revision must be a non-empty str (branch, tag or commit hash) or None, got {revision!r}")
    if cache_dir is not None and (not isinstance(cache_dir, (str, os.PathLike)) or not str(cache_dir)):
        raise ValueError(f"cache_dir must be a folder path or None, got {cache_dir!r}")
    path = Path(model_id_or_path).expanduser()
    if path.is_dir():
        missing = [name for name in SUBFOLDERS if not (path / name).is_dir()]
        if missing:
            raise ValueError(f"model_id_or_path {str(path)!r} must be a diffusers folder with subfolders "
                             f"{SUBFOLDERS}, missing {missing}")
        return str(path), {"local_files_only": True}
    if isinstance(model_id_or_path, str) and _HUB_ID.match(model_id_or_path):
        kwargs = {} if revision is None else {"revision": revision}
        return model_id_or_path, kwargs if cache_dir is None else {**kwargs, "cache_dir": str(cache_dir)}
    raise ValueError(f"model_id_or_path must be an existing folder or a hub id 'owner/name', "
                     f"got {str(model_id_or_path)!r}")


def _check_dtype_device(torch_dtype, device, dtype_name: str = "torch_dtype") -> None:
    if torch_dtype is not None and torch_dtype not in _DTYPES:
        raise ValueError(f"{dtype_name} must be None or one of {_DTYPES}, got {torch_dtype!r}")
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda', got {device!r}") from None


def _load_scheduler(where: str, kwargs: dict):
    """The scheduler class named in scheduler/scheduler_config.json (PNDMScheduler for SD v1.5)."""
    import diffusers
    config = diffusers.DDPMScheduler.load_config(where, subfolder="scheduler", **kwargs)
    scheduler_cls = getattr(diffusers, config.get("_class_name", "PNDMScheduler"))
    return scheduler_cls.from_config(config)


def _diffusers_older_than(version: str) -> bool:
    from importlib.metadata import version as installed
    from packaging.version import Version
    return Version(installed("diffusers")) < Version(version)


def load_sd_components(model_id_or_path: str | os.PathLike = DEFAULT_MODEL_ID, revision: str | None = DEFAULT_REVISION,
                       torch_dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                       cache_dir: str | os.PathLike | None = None) -> SDComponents:
    """Load unet, vae, text_encoder, tokenizer and scheduler from a hub id (at ``revision``) or a local folder.

    A local folder is read with ``local_files_only=True`` (``revision`` and ``cache_dir`` are then ignored).
    Networks are returned in eval mode, in ``torch_dtype`` (default: as stored) and on ``device`` (default:
    CPU). A hub id is downloaded into, or read from, ``cache_dir`` (default: ~/.cache/huggingface/hub).
    Without network, a hub id that is not in the cache raises ``ModelNotAvailableError``.
    """
    where, kwargs = _source(model_id_or_path, revision, cache_dir)
    _check_dtype_device(torch_dtype, device)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    dtype = {} if torch_dtype is None else {"dtype": torch_dtype}  # diffusers and transformers both take dtype=
    if dtype and _diffusers_older_than("0.40"):  # before 0.40 (e.g. Colab's 0.37) diffusers knows only torch_dtype=
        dtype_d = {"torch_dtype": torch_dtype}
    else:
        dtype_d = dtype
    try:
        components = SDComponents(
            unet=UNet2DConditionModel.from_pretrained(where, subfolder="unet", **kwargs, **dtype_d),
            vae=AutoencoderKL.from_pretrained(where, subfolder="vae", **kwargs, **dtype_d),
            text_encoder=CLIPTextModel.from_pretrained(where, subfolder="text_encoder", **kwargs, **dtype),
            tokenizer=CLIPTokenizer.from_pretrained(where, subfolder="tokenizer", **kwargs),
            scheduler=_load_scheduler(where, kwargs),
        )
    except OSError as err:
        raise ModelNotAvailableError(
            f"model_id_or_path {str(model_id_or_path)!r} (revision {kwargs.get('revision')!r}) could not be "
            f"loaded: {err}. Without network, pass a local diffusers folder (e.g. one made by build_tiny_sd); "
            f"on Colab, check the id and your connection.") from err
    for model in (components.unet, components.vae, components.text_encoder):
        model.eval()
    return components.to(device) if device is not None else components


def load_pipeline(model_id_or_path: str | os.PathLike = DEFAULT_MODEL_ID, revision: str | None = DEFAULT_REVISION,
                  torch_dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                  cache_dir: str | os.PathLike | None = None):
    """``StableDiffusionPipeline`` built from ``load_sd_components`` (same arguments), safety checker off."""
    return load_sd_components(model_id_or_path, revision, torch_dtype, device, cache_dir).pipeline()

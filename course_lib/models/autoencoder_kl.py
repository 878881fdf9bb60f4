"""Stable Diffusion's convolutional VAE (``AutoencoderKL``), module for module and name for name as diffusers.

``course_lib.vae`` teaches the idea with its own short names; this module is the real layout, so that a
diffusers state dict (or, through ``course_lib.models.convert``, the original checkpoint's ``first_stage_model``)
loads with a strict ``load_state_dict``.

Glossary (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models", Sec. 3.1):
    x                   an image (B, C, H, W) in [-1, 1]
    z                   a latent (B, c, H/f, W/f); c = ``latent_channels`` (SD: 4), f = 2 ** (levels - 1) (SD: 8)
    q(z|x)              diagonal Gaussian; the encoder's ``conv_out`` gives 2c channels, ``quant_conv`` (1x1)
                        mixes them, then they split into mean and log-variance (``course_lib.vae.DiagonalGaussian``)
    post_quant_conv     the 1x1 conv applied to z before the decoder (both names come from VQGAN's quantiser)
    scaling_factor      s: the diffusion model sees s * z (SD v1: 0.18215), the decoder gets z = latents / s

Layout (every ResnetBlock2D: GroupNorm -> SiLU -> conv3x3, twice, plus a 1x1 ``conv_shortcut`` if the width
changes; GroupNorm eps 1e-6 everywhere):
    encoder  conv_in -> down_blocks[i]: layers_per_block resnets (+ downsampler: pad right/bottom by 1, conv3x3
             stride 2) -> mid_block: resnet, single-head attention, resnet -> conv_norm_out, SiLU, conv_out (2c)
    decoder  conv_in -> mid_block -> up_blocks[i] (widest first): layers_per_block + 1 resnets (+ upsampler:
             nearest x2, conv3x3) -> conv_norm_out, SiLU, conv_out (C)
The mid-block attention treats each of the h*w positions as a token with C features; its projections are
``nn.Linear`` here and in diffusers, 1x1 convs in the original checkpoint (see ``convert``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from course_lib._checks import check_float, check_int, check_shape_dim, check_tensor
from course_lib._io import atomic_save_safetensors, atomic_write_json, load_safetensors
from course_lib.vae import DiagonalGaussian

__all__ = ["AutoencoderKLConfig", "AutoencoderKL", "ResnetBlock2D", "VAEAttention", "Encoder", "Decoder"]

EPS = 1e-6  # GroupNorm epsilon of SD's VAE
CONFIG_NAME, WEIGHTS_NAME = "config.json", "diffusion_pytorch_model.safetensors"  # diffusers' file names


# ----------------------------------------------------------------------------------------------- config

@dataclass
class AutoencoderKLConfig:
    """The fields of diffusers' ``AutoencoderKL`` config that shape the model (same names, same meaning).

    block_out_channels   width of each resolution level; len(...) levels, each but the last halves H and W
    layers_per_block     resnets per encoder level (the decoder has one more per level)
    norm_num_groups      GroupNorm groups; must divide every width
    scaling_factor       s, multiplied into latents before diffusion (not used inside the model)
    """
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    sample_size: int = 512
    scaling_factor: float = 0.18215
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self):
        for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups",
                     "sample_size"):
            check_int(name, getattr(self, name), minimum=1)
        if not isinstance(self.block_out_channels, (tuple, list)) or not self.block_out_channels:
            raise ValueError(f"block_out_channels must be a non-empty tuple of positive integers, "
                             f"got {self.block_out_channels!r}")
        self.block_out_channels = tuple(self.block_out_channels)  # JSON gives a list back
        for i, width in enumerate(self.block_out_channels):
            check_int(f"block_out_channels[{i}]", width, minimum=1)
            if width % self.norm_num_groups:
                raise ValueError(f"norm_num_groups must divide every entry of block_out_channels "
                                 f"{self.block_out_channels}, got norm_num_groups={self.norm_num_groups}")
        check_float("scaling_factor", self.scaling_factor, minimum=0.0)
        for name in ("use_quant_conv", "use_post_quant_conv", "mid_block_add_attention"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def downsample_factor(self) -> int:
        """f: the latent is f times smaller than the image along H and W (SD: 8)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AutoencoderKLConfig":
        if not isinstance(d, dict):
            raise ValueError(f"d must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"d has unknown AutoencoderKLConfig keys {unknown}; allowed keys are {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_diffusers(cls, d: dict) -> "AutoencoderKLConfig":
        """From a diffusers ``vae/config.json`` dict: bookkeeping keys ("_class_name", ...) are dropped, and
        settings this model does not implement must have SD's values."""
        if not isinstance(d, dict):
            raise ValueError(f"d must be a dict, got {type(d).__name__}")
        required = {"down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D"}
        for key, block in required.items():
            if key in d and any(b != block for b in d[key]):
                raise ValueError(f"{key} must only hold {block!r} (SD's VAE), got {d[key]!r}")
        if d.get("act_fn", "silu") != "silu":
            raise ValueError(f"act_fn must be 'silu', got {d['act_fn']!r}")
        for key in ("shift_factor", "latents_mean", "latents_std"):
            if d.get(key) is not None:
                raise ValueError(f"{key} must be None (SD v1/v2 VAEs), got {d[key]!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in d.items() if k in known})
        for key in ("down_block_types", "up_block_types"):
            if key in d and len(d[key]) != len(config.block_out_channels):
                raise ValueError(f"{key} must have one entry per block_out_channels entry "
                                 f"({len(config.block_out_channels)}), got {len(d[key])}")
        return config

    def to_diffusers(self) -> dict:
        """The config.json dict diffusers' ``AutoencoderKL(**d)`` accepts."""
        levels = len(self.block_out_channels)
        return {**self.to_dict(), "down_block_types": ["DownEncoderBlock2D"] * levels,
                "up_block_types": ["UpDecoderBlock2D"] * levels, "act_fn": "silu", "force_upcast": True}

    @classmethod
    def sd15(cls) -> "AutoencoderKLConfig":
        """Stable Diffusion v1.x: 3 x 512 x 512 -> 4 x 64 x 64, 83.7M parameters."""
        return cls()

    @classmethod
    def tiny(cls) -> "AutoencoderKLConfig":
        """The course's tiny SD (``course_lib.sd.tiny.TINY_VAE``): still 4 levels (f = 8), 16-32 wide."""
        return cls(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=64)


# ---------------------------------------------------------------------------------------- building blocks

class ResnetBlock2D(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, added to the input (through a 1x1 conv if the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class VAEAttention(nn.Module):
    """Single-head self-attention over the h*w positions, residual. ``to_out`` is a list as in diffusers
    (``to_out.0`` is the projection; diffusers keeps a dropout at index 1)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C): one token per position
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(C), dim=-1)  # (B, H*W, H*W)
        h = self.to_out[0](weights @ v).transpose(1, 2).reshape(B, C, H, W)
        return x + h


class MidBlock2D(nn.Module):
    """resnets[0] -> attentions[0] -> resnets[1] at the lowest resolution (attention optional)."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.attentions = nn.ModuleList([VAEAttention(channels, groups)] if attention else [])
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class Downsample2D(nn.Module):
    """Halve H and W: pad one zero row/column at the bottom/right, then conv3x3 with stride 2 (SD's choice)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2D(nn.Module):
    """Double H and W: nearest-neighbour, then conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``resnets``, then ``downsamplers`` or ``upsamplers`` (a list of 0 or 1)."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, resample: str | None):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups)
                                     for i in range(num_layers))
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample2D(out_channels)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample2D(out_channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for resample in getattr(self, "downsamplers", []) or getattr(self, "upsamplers", []):
            x = resample(x)
        return x


class Encoder(nn.Module):
    """x (B, C, H, W) -> the 2c channels of q(z|x) before ``quant_conv``, (B, 2c, H/f, W/f)."""

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        widths, g, last = config.block_out_channels, config.norm_num_groups, len(config.block_out_channels) - 1
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            _Level(widths[max(i - 1, 0)], w, config.layers_per_block, g, "down" if i < last else None)
            for i, w in enumerate(widths))
        self.mid_block = MidBlock2D(widths[-1], g, config.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(g, widths[-1], eps=EPS)
        self.conv_out = nn.Conv2d(widths[-1], 2 * config.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)  # (B, width_i, H / 2^i, W / 2^i)
        h = self.mid_block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))  # (B, 2c, H/f, W/f)


class Decoder(nn.Module):
    """z (B, c, H/f, W/f), after ``post_quant_conv`` -> x_hat (B, C, H, W), unbounded."""

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        widths, g = tuple(reversed(config.block_out_channels)), config.norm_num_groups
        self.conv_in = nn.Conv2d(config.latent_channels, widths[0], 3, padding=1)
        self.mid_block = MidBlock2D(widths[0], g, config.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            _Level(widths[max(i - 1, 0)], w, config.layers_per_block + 1, g, "up" if i < len(widths) - 1 else None)
            for i, w in enumerate(widths))
        self.conv_norm_out = nn.GroupNorm(g, widths[-1], eps=EPS)
        self.conv_out = nn.Conv2d(widths[-1], config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)  # (B, width, 2^i * H/f, 2^i * W/f)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


# ------------------------------------------------------------------------------------------------ the VAE

class AutoencoderKL(nn.Module):
    """Encoder, ``quant_conv``, q(z|x), ``post_quant_conv``, decoder; parameter names as in diffusers.

    ``encode(x)`` returns the posterior (diffusers: ``encode(x).latent_dist``), ``decode(z)`` the image tensor
    (diffusers: ``decode(z).sample``). Scaling by ``config.scaling_factor`` is the caller's job, as in diffusers.
    """

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        if not isinstance(config, AutoencoderKLConfig):
            raise ValueError(f"config must be an AutoencoderKLConfig, got {type(config).__name__}")
        self.config = config
        c = config.latent_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(c, c, 1) if config.use_post_quant_conv else None

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x (B, C, H, W) in [-1, 1], H and W divisible by f -> q(z|x) with mean, logvar (B, c, H/f, W/f)."""
        check_tensor("x", x, ndim=4, floating=True)
        check_shape_dim("x", x, 1, self.config.in_channels, what="channels (in_channels)")
        f = self.config.downsample_factor
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"x must have height and width divisible by {f}, got shape {tuple(x.shape)}")
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian.from_parameters(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, c, h, w) -> x_hat (B, C, h*f, w*f), unbounded (clamp to [-1, 1] to show it)."""
        check_tensor("z", z, ndim=4, floating=True)
        check_shape_dim("z", z, 1, self.config.latent_channels, what="channels (latent_channels)")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(self, x: torch.Tensor, sample_posterior: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruct x through the mean of q(z|x) (or a sample of it, drawn with ``generator``)."""
        if not isinstance(sample_posterior, bool):
            raise ValueError(f"sample_posterior must be a bool, got {sample_posterior!r}")
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator=generator) if sample_posterior else posterior.mode())

    # -------------------------------------------------------------------------------- diffusers' folder

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """``config.json`` (diffusers' format) and ``diffusion_pytorch_model.safetensors`` into ``folder``:
        diffusers' ``AutoencoderKL.from_pretrained(folder)`` reads it too."""
        folder = Path(folder)
        atomic_write_json(folder / CONFIG_NAME, {"_class_name": "AutoencoderKL", **self.config.to_diffusers()})
        atomic_save_safetensors(folder / WEIGHTS_NAME, self.state_dict())
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> "AutoencoderKL":
        """From a diffusers ``vae`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``)."""
        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise ValueError(f"folder must hold {CONFIG_NAME} and {WEIGHTS_NAME} (a diffusers vae folder), "
                             f"got {str(folder)!r}")
        config = AutoencoderKLConfig.from_diffusers(json.loads((folder / CONFIG_NAME).read_text()))
        model = cls(config)
        model.load_state_dict(load_safetensors(folder / WEIGHTS_NAME))
        return model.to(device)

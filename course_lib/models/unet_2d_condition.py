"""Stable Diffusion's conditional UNet (``UNet2DConditionModel``), module for module and name for name as diffusers.

``course_lib.unet`` teaches the idea with its own short names; this module is the real layout, so that a
diffusers ``unet`` state dict loads with a strict ``load_state_dict``. Assignment 6 has students write it.

Constructing one (what the converter and the notebooks use):
    config = UNet2DConditionConfig.from_diffusers(json.load(open("unet/config.json")))   # or .sd15(), .tiny()
    unet = UNet2DConditionModel(config)               # or UNet2DConditionModel.from_pretrained("unet/")
    eps = unet(z_t, t, text_hidden_states)            # (B, 4, h, w), t: int, (,) or (B,), context (B, 77, 768)

Glossary (Rombach et al. 2022, Sec. 3.3; Ho et al. 2020, Appendix B):
    z_t              the noisy latent ``sample`` (B, in_channels, h, w)
    t                the timestep; sinusoids of t (as in the Transformer's positions) -> MLP -> temb
    tau(y)           ``encoder_hidden_states``: the text encoder's last hidden states (B, L, cross_attention_dim)
    eps_theta        the output: the predicted noise (B, out_channels, h, w)

Layout (levels i = 0 .. n-1 of ``block_out_channels``; ``*CrossAttn*`` block types name the levels with attention):
    conv_in -> down_blocks[i]: layers_per_block x (ResnetBlock2D [+ Transformer2DModel]) [+ Downsample2D]
            -> mid_block: ResnetBlock2D, Transformer2DModel, ResnetBlock2D
            -> up_blocks[i] (widest first): (layers_per_block + 1) x (concat a skip, ResnetBlock2D [+ Transformer2DModel])
               [+ Upsample2D] -> conv_norm_out, SiLU, conv_out
    Every output of conv_in, of each (resnet [+ attention]) pair and of each downsampler is a skip, used in reverse.
    ResnetBlock2D:      GroupNorm, SiLU, conv3x3, + Linear(SiLU(temb)) per channel, GroupNorm, SiLU, conv3x3, + shortcut
    Transformer2DModel: GroupNorm (eps 1e-6), proj_in (1x1 conv, or Linear if use_linear_projection), then per
                        token: x + attn1(LN x) (self), x + attn2(LN x, tau(y)) (cross), x + ff(LN x) (GEGLU),
                        proj_out, + the input
A naming trap kept from the original code: SD v1's ``attention_head_dim`` (8) is the number of *heads*; diffusers
reads it that way when ``num_attention_heads`` is absent, and so does this module (head width = channels / heads).
Options SD v1/v2 do not use (class or addition embeddings, num_attention_heads, ...) are refused by name.
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

from course_lib._checks import check_float, check_int, check_tensor
from course_lib._io import atomic_save_safetensors, atomic_write_json, load_safetensors

__all__ = ["UNet2DConditionConfig", "UNet2DConditionModel", "timestep_embedding", "TimestepEmbedding",
           "ResnetBlock2D", "Attention", "GEGLU", "FeedForward", "BasicTransformerBlock", "Transformer2DModel",
           "Downsample2D", "Upsample2D", "DownBlock2D", "UpBlock2D", "UNetMidBlock2DCrossAttn"]

CONFIG_NAME, WEIGHTS_NAME = "config.json", "diffusion_pytorch_model.safetensors"  # diffusers' file names
DOWN_TYPES = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}  # block type -> has attention
UP_TYPES = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}
SD15_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sd15_unet.json"
# diffusers config keys this module implements only with SD v1/v2's value (key -> that value)
_FIXED = {"act_fn": "silu", "center_input_sample": False, "downsample_padding": 1, "mid_block_scale_factor": 1,
          "mid_block_type": "UNetMidBlock2DCrossAttn", "only_cross_attention": False, "dual_cross_attention": False,
          "class_embed_type": None, "addition_embed_type": None, "num_class_embeds": None,
          "num_attention_heads": None, "resnet_time_scale_shift": "default", "time_embedding_type": "positional",
          "encoder_hid_dim": None, "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
          "dropout": 0.0, "resnet_out_scale_factor": 1.0, "timestep_post_act": None, "time_embedding_dim": None,
          "attention_type": "default", "cross_attention_norm": None, "resnet_skip_time_act": False,
          "class_embeddings_concat": False, "reverse_transformer_layers_per_block": None,
          "projection_class_embeddings_input_dim": None, "addition_time_embed_dim": None,
          "encoder_hid_dim_type": None, "time_embedding_act_fn": None, "mid_block_only_cross_attention": None}
# bookkeeping keys of diffusers' config.json (and upcast_attention: it only changes float16 arithmetic)
_IGNORED = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values", "upcast_attention",
            "addition_embed_type_num_heads"}


# ----------------------------------------------------------------------------------------------- config

@dataclass
class UNet2DConditionConfig:
    """The fields of diffusers' ``UNet2DConditionModel`` config that shape SD v1/v2's UNet (same names and meaning).

    block_out_channels        width of each level; every level but the last halves h and w
    down_block_types          per level, "CrossAttnDownBlock2D" (resnets + attention) or "DownBlock2D" (resnets)
    up_block_types            per up level (widest first), "CrossAttnUpBlock2D" or "UpBlock2D"
    attention_head_dim        number of heads (SD's legacy name, see the module docstring): one int or one per level
    cross_attention_dim       width of the text features tau(y) (SD v1: 768, SD v2: 1024)
    use_linear_projection     proj_in/proj_out as Linear (SD v2) instead of 1x1 conv (SD v1)
    transformer_layers_per_block  BasicTransformerBlocks in each Transformer2DModel (SD v1/v2: 1)
    flip_sin_to_cos, freq_shift   the sinusoid layout: [cos, sin] if flipped; frequencies exp(-ln(1e4) k / (half - shift))
    """
    sample_size: int = 64
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    layers_per_block: int = 2
    cross_attention_dim: int = 768
    attention_head_dim: int | tuple[int, ...] = 8
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    use_linear_projection: bool = False
    transformer_layers_per_block: int = 1

    def __post_init__(self):
        for name in ("sample_size", "in_channels", "out_channels", "layers_per_block", "cross_attention_dim",
                     "norm_num_groups", "transformer_layers_per_block"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("freq_shift", self.freq_shift, minimum=0)
        check_float("norm_eps", self.norm_eps, minimum=0.0, min_inclusive=False)
        for name in ("flip_sin_to_cos", "use_linear_projection"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        self.block_out_channels = self._int_tuple("block_out_channels", self.block_out_channels)
        levels = len(self.block_out_channels)
        for name, allowed in (("down_block_types", DOWN_TYPES), ("up_block_types", UP_TYPES)):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or len(value) != levels or any(v not in allowed for v in value):
                raise ValueError(f"{name} must hold {levels} entries (one per block_out_channels entry) from "
                                 f"{sorted(allowed)}, got {value!r}")
            setattr(self, name, tuple(value))
        if isinstance(self.attention_head_dim, (tuple, list)):
            self.attention_head_dim = self._int_tuple("attention_head_dim", self.attention_head_dim)
            if len(self.attention_head_dim) != levels:
                raise ValueError(f"attention_head_dim must be one int or one per level ({levels}), "
                                 f"got {self.attention_head_dim!r}")
        else:
            check_int("attention_head_dim", self.attention_head_dim, minimum=1)
        for i, width in enumerate(self.block_out_channels):
            if width % self.norm_num_groups:
                raise ValueError(f"norm_num_groups must divide every entry of block_out_channels "
                                 f"{self.block_out_channels}, got norm_num_groups={self.norm_num_groups}")
            if width % self.heads[i]:
                raise ValueError(f"the number of heads (attention_head_dim) must divide the width of each level: "
                                 f"level {i} has {width} channels and {self.heads[i]} heads")

    @staticmethod
    def _int_tuple(name: str, value) -> tuple[int, ...]:
        if not isinstance(value, (tuple, list)) or not value:
            raise ValueError(f"{name} must be a non-empty tuple of positive integers, got {value!r}")
        for i, v in enumerate(value):
            check_int(f"{name}[{i}]", v, minimum=1)
        return tuple(value)

    @property
    def heads(self) -> tuple[int, ...]:
        """Attention heads at each level (SD's ``attention_head_dim``, read as diffusers reads it)."""
        h = self.attention_head_dim
        return h if isinstance(h, tuple) else (h,) * len(self.block_out_channels)

    @property
    def time_embed_dim(self) -> int:
        """Width of temb: 4 x the first level's width (1280 in SD)."""
        return 4 * self.block_out_channels[0]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "UNet2DConditionConfig":
        if not isinstance(d, dict):
            raise ValueError(f"d must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"d has unknown UNet2DConditionConfig keys {unknown}; allowed keys are {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_diffusers(cls, d: dict) -> "UNet2DConditionConfig":
        """From a diffusers ``unet/config.json`` dict; options SD v1/v2 do not use must keep their default."""
        if not isinstance(d, dict):
            raise ValueError(f"d must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key, value in d.items():
            if key in known or key in _IGNORED:
                continue
            if key not in _FIXED:
                raise ValueError(f"d has the diffusers key {key!r}, which this UNet does not implement")
            if value != _FIXED[key] and not (isinstance(value, (list, tuple)) and list(value) == _FIXED[key]):
                raise ValueError(f"{key} must be {_FIXED[key]!r} (SD v1/v2), got {value!r}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_diffusers(self) -> dict:
        """The dict diffusers' ``UNet2DConditionModel(**d)`` accepts (and its config.json)."""
        return self.to_dict()

    @classmethod
    def sd15(cls) -> "UNet2DConditionConfig":
        """Stable Diffusion v1.x: 4 x 64 x 64 latents, widths 320/640/1280/1280, 859.5M parameters."""
        return cls.from_diffusers(json.loads(SD15_CONFIG.read_text()))

    @classmethod
    def tiny(cls) -> "UNet2DConditionConfig":
        """Three levels (32/64/64) with attention at the first two, as SD has it at three of four; for CPU tests."""
        return cls(sample_size=8, block_out_channels=(32, 64, 64),
                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                   layers_per_block=1, cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)


# --------------------------------------------------------------------------------------------- timestep

def timestep_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: int = 0,
                       max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoids of t (B,) -> (B, dim): frequencies w_k = max_period^(-k / (dim/2 - freq_shift)), k < dim/2;
    [sin(t w), cos(t w)], swapped to [cos, sin] if flip_sin_to_cos (SD). Computed in float32."""
    check_tensor("timesteps", timesteps, ndim=1)
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(-math.log(max_period) * k / (half - freq_shift))     # (half,)
    angles = timesteps.float()[:, None] * freqs[None, :]                     # (B, half)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepEmbedding(nn.Module):
    """The MLP on the sinusoids: linear_1, SiLU, linear_2 (-> temb, shared by every ResnetBlock2D)."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(emb)))


# ---------------------------------------------------------------------------------------------- resnet

class ResnetBlock2D(nn.Module):
    """h = conv1(SiLU(norm1 x)) + time_emb_proj(SiLU temb)[:, :, None, None]; out = shortcut(x) + conv2(SiLU(norm2 h)).

    The time embedding is added once per channel (a learned per-channel shift for each timestep); the 1x1
    ``conv_shortcut`` exists only when the width changes.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int = 32, eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nonlinearity = nn.SiLU()
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        h = h + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]   # (B, C) -> (B, C, 1, 1)
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + h


# ----------------------------------------------------------------------------------------- transformer

class Attention(nn.Module):
    """Multi-head attention; self-attention if ``context`` is None, cross-attention to it otherwise.

    mask: (B, L) bool or 0/1 over the context's tokens, True/1 = attend (each row needs one kept token).
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, cross_attention_dim: int | None = None):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if cross_attention_dim is None else cross_attention_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        B, N, _ = x.shape
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (t.view(B, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))
        if mask is not None:
            mask = mask.bool()[:, None, None, :]                                # (B, 1, 1, L): every head and query
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)          # (B, h, N, d)
        out = out.transpose(1, 2).reshape(B, N, -1)                            # (B, N, h*d)
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    """proj to 2 x dim_out, split into (value, gate): value * GELU(gate) (Shazeer 2020)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """net = [GEGLU(dim -> 4 dim), Dropout, Linear(4 dim -> dim)] (diffusers' indices 0 and 2 hold weights)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm block on tokens (B, N, dim): self-attention, cross-attention to the text, GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim=cross_attention_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context, mask)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    """Feature map -> tokens -> transformer blocks -> feature map, plus the input (a residual around it all)."""

    def __init__(self, channels: int, heads: int, cross_attention_dim: int, groups: int = 32, num_layers: int = 1,
                 use_linear_projection: bool = False):
        super().__init__()
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        project = nn.Linear if use_linear_projection else (lambda i, o: nn.Conv2d(i, o, 1))
        self.proj_in = project(channels, channels)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(channels, heads, channels // heads, cross_attention_dim) for _ in range(num_layers)])
        self.proj_out = project(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        if not self.use_linear_projection:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(B, H * W, C)                           # (B, HW, C): one token per pixel
        if self.use_linear_projection:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context, mask)
        if self.use_linear_projection:
            h = self.proj_out(h)
        h = h.reshape(B, H, W, C).permute(0, 3, 1, 2)                            # back to (B, C, H, W)
        if not self.use_linear_projection:
            h = self.proj_out(h)
        return h + x


# ------------------------------------------------------------------------------------- up/down blocks

class Downsample2D(nn.Module):
    """conv3x3 with stride 2 (padding 1): h, w -> ceil(h/2), ceil(w/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour upsampling to ``size`` (by default 2x), then conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="nearest") if size else F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class DownBlock2D(nn.Module):
    """One level of the down path; with ``heads`` (a CrossAttnDownBlock2D) each resnet is followed by attention.

    forward returns (x, skips): one skip per (resnet [+ attention]) pair and one after the downsampler.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int, add_downsample: bool,
                 heads: int | None, cross_attention_dim: int, groups: int, eps: float, transformer_layers: int = 1,
                 use_linear_projection: bool = False):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels,
                                                    temb_channels, groups, eps) for i in range(num_layers)])
        if heads is not None:
            self.attentions = nn.ModuleList([
                Transformer2DModel(out_channels, heads, cross_attention_dim, groups, transformer_layers,
                                   use_linear_projection) for _ in range(num_layers)])
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if add_downsample else None

    def forward(self, x, temb, context, mask=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if hasattr(self, "attentions"):
                x = self.attentions[i](x, context, mask)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock2D(nn.Module):
    """One level of the up path: each resnet reads [x, the newest unused skip] concatenated along channels."""

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 num_layers: int, add_upsample: bool, heads: int | None, cross_attention_dim: int, groups: int,
                 eps: float, transformer_layers: int = 1, use_linear_projection: bool = False):
        super().__init__()
        resnets = []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels  # the skip's width
            x_channels = prev_output_channel if i == 0 else out_channels
            resnets.append(ResnetBlock2D(x_channels + skip_channels, out_channels, temb_channels, groups, eps))
        self.resnets = nn.ModuleList(resnets)
        if heads is not None:
            self.attentions = nn.ModuleList([
                Transformer2DModel(out_channels, heads, cross_attention_dim, groups, transformer_layers,
                                   use_linear_projection) for _ in range(num_layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, x, skips: list[torch.Tensor], temb, context, mask=None, upsample_size=None) -> torch.Tensor:
        """``skips``: this block's skips, newest last (they are consumed from the end)."""
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips[-1 - i]], dim=1), temb)
            if hasattr(self, "attentions"):
                x = self.attentions[i](x, context, mask)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class UNetMidBlock2DCrossAttn(nn.Module):
    """At the lowest resolution: resnet, attention, resnet."""

    def __init__(self, channels: int, temb_channels: int, heads: int, cross_attention_dim: int, groups: int,
                 eps: float, transformer_layers: int = 1, use_linear_projection: bool = False):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, temb_channels, groups, eps) for _ in range(2)])
        self.attentions = nn.ModuleList([Transformer2DModel(channels, heads, cross_attention_dim, groups,
                                                            transformer_layers, use_linear_projection)])

    def forward(self, x, temb, context, mask=None) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context, mask)
        return self.resnets[1](x, temb)


# ------------------------------------------------------------------------------------------------ UNet

class UNet2DConditionModel(nn.Module):
    """eps_theta(z_t, t, tau(y)): SD's UNet. Parameter names are diffusers', so its state dicts load strictly."""

    def __init__(self, config: UNet2DConditionConfig):
        super().__init__()
        if not isinstance(config, UNet2DConditionConfig):
            raise ValueError(f"config must be a UNet2DConditionConfig, got {type(config).__name__}")
        self.config = c = config
        widths, heads, levels = c.block_out_channels, c.heads, len(c.block_out_channels)
        shared = dict(cross_attention_dim=c.cross_attention_dim, groups=c.norm_num_groups, eps=c.norm_eps,
                      transformer_layers=c.transformer_layers_per_block, use_linear_projection=c.use_linear_projection)
        self.conv_in = nn.Conv2d(c.in_channels, widths[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(widths[0], c.time_embed_dim)
        self.down_blocks = nn.ModuleList([
            DownBlock2D(widths[max(i - 1, 0)], widths[i], c.time_embed_dim, c.layers_per_block, i < levels - 1,
                        heads[i] if DOWN_TYPES[c.down_block_types[i]] else None, **shared) for i in range(levels)])
        self.mid_block = UNetMidBlock2DCrossAttn(widths[-1], c.time_embed_dim, heads[-1], **shared)
        up_blocks = []
        for j in range(levels):  # j = 0 is the widest level; level i = levels - 1 - j
            i = levels - 1 - j
            up_blocks.append(UpBlock2D(widths[max(i - 1, 0)], widths[min(i + 1, levels - 1)], widths[i],
                                       c.time_embed_dim, c.layers_per_block + 1, j < levels - 1,
                                       heads[i] if UP_TYPES[c.up_block_types[j]] else None, **shared))
        self.up_blocks = nn.ModuleList(up_blocks)
        self.conv_norm_out = nn.GroupNorm(c.norm_num_groups, widths[0], eps=c.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(widths[0], c.out_channels, 3, padding=1)

    def _timesteps(self, timestep, batch: int, device) -> torch.Tensor:
        if not isinstance(timestep, torch.Tensor):
            if isinstance(timestep, bool) or not isinstance(timestep, (int, float)):
                raise ValueError(f"timestep must be a number or a tensor, got {type(timestep).__name__}")
            timestep = torch.tensor([timestep], device=device)
        if timestep.ndim > 1 or (timestep.ndim == 1 and timestep.shape[0] not in (1, batch)):
            raise ValueError(f"timestep must be a scalar, (1,) or (batch={batch},), got shape {tuple(timestep.shape)}")
        return timestep.reshape(-1).to(device).expand(batch)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """sample (B, in_channels, h, w), timestep (number, () or (B,)), encoder_hidden_states (B, L, D), optional
        encoder_attention_mask (B, L) (1 = attend). Returns the predicted noise (B, out_channels, h, w)."""
        check_tensor("sample", sample, ndim=4, floating=True)
        check_tensor("encoder_hidden_states", encoder_hidden_states, ndim=3, floating=True)
        if sample.shape[1] != self.config.in_channels or encoder_hidden_states.shape[-1] != self.config.cross_attention_dim:
            raise ValueError(f"sample must have {self.config.in_channels} channels and encoder_hidden_states width "
                             f"{self.config.cross_attention_dim}, got shapes {tuple(sample.shape)} and "
                             f"{tuple(encoder_hidden_states.shape)}")
        c, context, mask = self.config, encoder_hidden_states, encoder_attention_mask
        # 1. time: sinusoids of t -> MLP -> temb (B, 4 C0)
        t = self._timesteps(timestep, sample.shape[0], sample.device)
        emb = timestep_embedding(t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift).to(sample.dtype)
        temb = self.time_embedding(emb)
        # 2. down path: keep every skip
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, context, mask)
            skips += block_skips
        # 3. middle
        x = self.mid_block(x, temb, context, mask)
        # 4. up path: each block takes the newest len(resnets) skips
        for block in self.up_blocks:
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            x = block(x, block_skips, temb, context, mask, upsample_size=skips[-1].shape[2:] if skips else None)
        # 5. out
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))

    # -------------------------------------------------------------------------------- diffusers' folder

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """``config.json`` and ``diffusion_pytorch_model.safetensors``: diffusers' ``from_pretrained`` reads it too."""
        folder = Path(folder)
        atomic_save_safetensors(folder / WEIGHTS_NAME, self.state_dict())
        atomic_write_json(folder / CONFIG_NAME, {"_class_name": "UNet2DConditionModel", **self.config.to_diffusers()})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> "UNet2DConditionModel":
        """From a diffusers ``unet`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``)."""
        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise ValueError(f"folder must hold {CONFIG_NAME} and {WEIGHTS_NAME} (a diffusers unet folder), "
                             f"got {str(folder)!r}")
        model = cls(UNet2DConditionConfig.from_diffusers(json.loads((folder / CONFIG_NAME).read_text())))
        model.load_state_dict(load_safetensors(folder / WEIGHTS_NAME))
        return model.to(device)

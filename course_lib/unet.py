"""A tiny UNet for latents: Stable Diffusion's denoiser in miniature, small enough to train on a laptop CPU.

Glossary (Ho et al. 2020; Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"):
    z_t          the noisy latent at timestep t, ``sample`` of shape (B, C, H, W)
    t            the diffusion timestep, one per sample (B,)
    c            the text condition: the text encoder's token embeddings ``encoder_hidden_states`` (B, L, context_dim)
    eps_theta    the network: eps_theta(z_t, t, c) predicts the noise that was added (same shape as z_t)
    temb         timestep embedding, MLP(sinusoid(t)), shape (B, time_embed_dim); every ResBlock adds it
    level        one resolution of the UNet; level i has ``block_channels[i]`` channels and size H / 2**i

Architecture (the layout of diffusers' ``UNet2DConditionModel``, with the same parameter names where possible):

    conv_in ─► down level 0 ─► down level 1 ─► ... ─► mid block ─► ... ─► up level 1 ─► up level 0 ─► conv_out
                 │ skips           │ skips                                    ▲ cat        ▲ cat
                 └─────────────────┴──────────────────────────────────────────┴────────────┘
    down level i: layers_per_block x [ResBlock, SpatialTransformer if i in attention_levels], then a stride-2 conv
    mid block:    ResBlock, SpatialTransformer, ResBlock (at the lowest resolution)
    up level i:   (layers_per_block + 1) x [cat(skip), ResBlock, SpatialTransformer if i in attention_levels],
                  then nearest-neighbour 2x upsampling + conv
    SpatialTransformer: GroupNorm, proj_in, x += SelfAttn(LN(x)), x += CrossAttn(LN(x), c), x += GEGLU-FF(LN(x)),
                  proj_out, plus a residual around the whole block. Pixels become tokens: (B, C, H, W) -> (B, HW, C).

CPU efficiency. The network computes exactly the function of diffusers' ``UNet2DConditionModel`` built from
``UNetConfig.to_diffusers_kwargs()`` (``UNet.from_diffusers`` copies its weights; the tests check equal outputs).
A training step is dominated by the multiply-adds of convolutions and linear layers, which torch hands to oneDNN
and MKL in both implementations, so leaner code buys only a few percent (measure: bench/unet_throughput.py).
The real lever is the configuration: where the SpatialTransformers sit (see ``UNetConfig.small``). Still:
    * activations live in channels-last memory, (B, H, W, C) in RAM, which oneDNN's convolutions prefer and which
      makes the pixels-to-tokens reshape of every SpatialTransformer a free view instead of a copy;
    * SiLU(temb) is computed once per forward pass, not once per ResBlock;
    * attention uses torch's fused ``scaled_dot_product_attention`` unless the weights are asked for.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from course_lib._checks import check_bool, check_float, check_int, check_shape_dim, check_tensor
from course_lib._config import JSONConfig
from course_lib._io import load_pretrained, save_pretrained
from course_lib.attention import MultiHeadAttention

__all__ = ["UNetConfig", "UNet", "timestep_embedding", "average_cross_attention"]


# ---------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------

@dataclass
class UNetConfig(JSONConfig):
    """Sizes of a UNet.

    block_channels: channels of each level (0 = full resolution); H and W must be divisible by 2**(levels - 1).
    attention_levels: the levels whose ResBlocks are followed by a SpatialTransformer; the mid block always has one.
    num_heads: attention heads in every SpatialTransformer (each block's channels must be divisible by it).
    context_dim: width of the text tokens (the text encoder's hidden size).
    time_embed_dim: width of temb; defaults to 4 * block_channels[0], as in Stable Diffusion.
    dropout: applied in every ResBlock before its second conv, as in Stable Diffusion.
    norm_groups, norm_eps: GroupNorm settings; every level's channels must be divisible by norm_groups.
    ff_mult: the GEGLU feed-forward's hidden width is ff_mult * channels (4 in Stable Diffusion and diffusers).
    coordinate_channels: append two constant channels, x and y in [-1, 1], to the input (CoordConv, Liu et al.
        2018): every pixel then knows where it is. Stable Diffusion's UNet has no such input (False).
    """

    in_channels: int = 4
    out_channels: int = 4
    block_channels: tuple[int, ...] = (64, 128)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = (0, 1)
    num_heads: int = 4
    context_dim: int = 64
    time_embed_dim: int | None = None
    dropout: float = 0.0
    norm_groups: int = 32
    norm_eps: float = 1e-5
    ff_mult: int = 4
    coordinate_channels: bool = False

    def __post_init__(self):
        check_int("in_channels", self.in_channels, minimum=1)
        check_int("out_channels", self.out_channels, minimum=1)
        self.block_channels = _int_tuple("block_channels", self.block_channels)
        self.attention_levels = _int_tuple("attention_levels", self.attention_levels, allow_empty=True)
        if not self.block_channels:
            raise ValueError("block_channels must list at least one level, got ()")
        check_int("layers_per_block", self.layers_per_block, minimum=1)
        check_int("num_heads", self.num_heads, minimum=1)
        check_int("context_dim", self.context_dim, minimum=1)
        check_int("norm_groups", self.norm_groups, minimum=1)
        check_int("ff_mult", self.ff_mult, minimum=1)
        check_bool("coordinate_channels", self.coordinate_channels)
        check_float("dropout", self.dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        check_float("norm_eps", self.norm_eps, minimum=0.0, min_inclusive=False)
        for channels in self.block_channels:
            if channels < 1 or channels % self.norm_groups or channels % self.num_heads:
                raise ValueError(f"block_channels must be positive multiples of norm_groups={self.norm_groups} and "
                                 f"num_heads={self.num_heads}, got {self.block_channels}")
        levels = range(len(self.block_channels))
        distinct = len(set(self.attention_levels)) == len(self.attention_levels)
        if not distinct or any(i not in levels for i in self.attention_levels):
            raise ValueError(f"attention_levels must be distinct levels in {tuple(levels)}, "
                             f"got {self.attention_levels}")
        self.attention_levels = tuple(sorted(self.attention_levels))
        if self.time_embed_dim is None:
            self.time_embed_dim = 4 * self.block_channels[0]
        check_int("time_embed_dim", self.time_embed_dim, minimum=1)

    @property
    def num_levels(self) -> int:
        return len(self.block_channels)

    def to_diffusers_kwargs(self) -> dict:
        """Keyword arguments for diffusers' ``UNet2DConditionModel`` that build the same network as ``UNet(self)``
        (used by the equivalence test and the benchmark)."""
        if self.ff_mult != 4:
            raise ValueError(f"ff_mult must be 4 to match diffusers' FeedForward, got {self.ff_mult}")
        if self.coordinate_channels:
            raise ValueError("coordinate_channels must be False to match diffusers' UNet2DConditionModel")
        n = self.num_levels
        down = tuple("CrossAttnDownBlock2D" if i in self.attention_levels else "DownBlock2D" for i in range(n))
        up = tuple("CrossAttnUpBlock2D" if i in self.attention_levels else "UpBlock2D" for i in reversed(range(n)))
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    block_out_channels=self.block_channels, layers_per_block=self.layers_per_block,
                    down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn",
                    attention_head_dim=self.num_heads,  # diffusers' historical name: it is the number of heads
                    cross_attention_dim=self.context_dim, time_embedding_dim=self.time_embed_dim,
                    norm_num_groups=self.norm_groups, norm_eps=self.norm_eps, dropout=self.dropout,
                    use_linear_projection=True, flip_sin_to_cos=True, freq_shift=0)

    @classmethod
    def tiny(cls) -> "UNetConfig":
        """~250k parameters, milliseconds per step: for tests and smoke runs."""
        return cls(block_channels=(16, 32), layers_per_block=1, attention_levels=(1,), num_heads=2, context_dim=16,
                   norm_groups=8)

    @classmethod
    def small(cls) -> "UNetConfig":
        """The course demo's default (~3.8M parameters) for 4x8x8 or 4x16x16 latents, trained on 2 CPU cores.

        Attention sits at level 1 and in the mid block only: transformer blocks at full latent resolution
        would make a training step ~1.5x slower on a CPU. Pass ``attention_levels=(0, 1)`` for finer
        cross-attention maps.
        """
        return cls(block_channels=(64, 128), layers_per_block=1, attention_levels=(1,), num_heads=4,
                   context_dim=64, norm_groups=32)


def _int_tuple(name: str, value, allow_empty: bool = False) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a tuple of integers, got {value!r}")
    value = tuple(value)
    for v in value:
        check_int(f"{name} entries", v)
    if not value and not allow_empty:
        raise ValueError(f"{name} must not be empty, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------------
# Timestep embedding
# ---------------------------------------------------------------------------------------------------------

def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps (B,) -> (B, dim): [cos(t w_i), sin(t w_i)] with w_i = max_period**(-i/half).

    The cosine half comes first, as in Stable Diffusion (diffusers' ``flip_sin_to_cos=True, freq_shift=0``).
    """
    check_tensor("timesteps", timesteps, ndim=1)
    check_int("dim", dim, minimum=2)
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)  # w_i, from 1 down to ~1/max_period
    angles = timesteps.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)  # (B, dim)


class TimestepEmbedding(nn.Module):
    """temb = Linear(SiLU(Linear(sinusoid(t))))."""

    def __init__(self, in_dim: int, embed_dim: int):
        super().__init__()
        self.in_dim = in_dim
        self.linear_1 = nn.Linear(in_dim, embed_dim)
        self.linear_2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        emb = timestep_embedding(timesteps, self.in_dim).to(dtype)
        return self.linear_2(F.silu(self.linear_1(emb)))


# ---------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------

class ResBlock(nn.Module):
    """h = conv1(SiLU(GN(x))) + proj(SiLU(temb));  out = skip(x) + conv2(dropout(SiLU(GN(h))))."""

    def __init__(self, in_channels: int, out_channels: int, time_embed_dim: int, config: UNetConfig):
        super().__init__()
        groups, eps = config.norm_groups, config.norm_eps
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(time_embed_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(config.dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, H, W); temb_act: SiLU(temb), (B, time_embed_dim) -> (B, C_out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(temb_act)[:, :, None, None]  # same shift for every pixel
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class GEGLU(nn.Module):
    """Feed-forward with a gated GELU (Shazeer 2020): out(a * GELU(g)) where [a, g] = proj(x)."""

    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * mult * dim)
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)  # (B, N, mult * dim) each
        return self.out(a * F.gelu(gate))


class SpatialTransformer(nn.Module):
    """One transformer block over the pixels of a feature map, with cross-attention to the text tokens."""

    def __init__(self, channels: int, config: UNetConfig):
        super().__init__()
        heads = config.num_heads
        self.norm = nn.GroupNorm(config.norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.norm1 = nn.LayerNorm(channels)
        self.attn1 = MultiHeadAttention(channels, heads)
        self.norm2 = nn.LayerNorm(channels)
        self.attn2 = MultiHeadAttention(channels, heads, context_dim=config.context_dim)
        self.norm3 = nn.LayerNorm(channels)
        self.ff = GEGLU(channels, config.ff_mult)
        self.proj_out = nn.Linear(channels, channels)
        self.attention_store: dict | None = None  # set by UNet.record_cross_attention()
        self.keep_graph = False
        self.name = ""

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, C, H, W); context: (B, L, context_dim); context_mask: (B, L) bool or None -> (B, C, H, W)."""
        B, C, H, W = x.shape
        h = self.norm(x).permute(0, 2, 3, 1).reshape(B, H * W, C)  # pixels -> tokens; a view if channels-last
        h = self.proj_in(h)
        h = h + self.attn1(self.norm1(h))
        h = h + self._cross_attention(self.norm2(h), context, context_mask, (H, W))
        h = h + self.ff(self.norm3(h))
        h = self.proj_out(h).reshape(B, H, W, C).permute(0, 3, 1, 2)  # tokens -> pixels, channels-last
        return x + h

    def _cross_attention(self, h, context, context_mask, size) -> torch.Tensor:
        if self.attention_store is None:
            return self.attn2(h, context, mask=context_mask)
        out, weights = self.attn2(h, context, mask=context_mask, return_attention=True)
        weights = weights if self.keep_graph else weights.detach()
        self.attention_store[self.name] = weights.unflatten(2, size)  # (B, heads, H, W, L)
        return out


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the down or up path: ResBlocks, optional SpatialTransformers, optional resampler."""

    def __init__(self, resnets: list[ResBlock], attentions: list[SpatialTransformer] | None,
                 downsample: nn.Module | None = None, upsample: nn.Module | None = None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        self.downsample = downsample
        self.upsample = upsample

    def blocks(self) -> Iterator[tuple[ResBlock, SpatialTransformer | None]]:
        for i, resnet in enumerate(self.resnets):
            yield resnet, (self.attentions[i] if self.attentions is not None else None)


class MidBlock(nn.Module):
    def __init__(self, channels: int, time_embed_dim: int, config: UNetConfig):
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(channels, channels, time_embed_dim, config) for _ in range(2)])
        self.attentions = nn.ModuleList([SpatialTransformer(channels, config)])

    def forward(self, x, temb_act, context, context_mask):
        x = self.resnets[0](x, temb_act)
        x = self.attentions[0](x, context, context_mask)
        return self.resnets[1](x, temb_act)


# ---------------------------------------------------------------------------------------------------------
# The UNet
# ---------------------------------------------------------------------------------------------------------

def _coordinates(sample: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 2, H, W): the x (left -1 .. right 1) and y (top -1 .. bottom 1) of every pixel."""
    batch, _, height, width = sample.shape
    y = torch.linspace(-1, 1, height, dtype=sample.dtype, device=sample.device)
    x = torch.linspace(-1, 1, width, dtype=sample.dtype, device=sample.device)
    grid = torch.stack([x.expand(height, width), y[:, None].expand(height, width)])  # (2, H, W)
    return grid.expand(batch, 2, height, width)


class UNet(nn.Module):
    """eps_theta(z_t, t, c): a text-conditioned UNet over latents, configured by a ``UNetConfig``."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise ValueError(f"config must be a UNetConfig, got {type(config).__name__}")
        self.config = config
        chans, n, temb_dim = config.block_channels, config.layers_per_block, config.time_embed_dim
        extra = 2 if config.coordinate_channels else 0
        self.conv_in = nn.Conv2d(config.in_channels + extra, chans[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chans[0], temb_dim)

        skip_channels = [chans[0]]  # channels of every tensor the down path hands to the up path
        self.down_blocks = nn.ModuleList()
        for i, out_ch in enumerate(chans):
            in_chs = [skip_channels[-1]] + [out_ch] * (n - 1)
            resnets = [ResBlock(c, out_ch, temb_dim, config) for c in in_chs]
            has_attention = i in config.attention_levels
            attentions = [SpatialTransformer(out_ch, config) for _ in range(n)] if has_attention else None
            last = i == len(chans) - 1
            downsample = None if last else nn.Conv2d(out_ch, out_ch, 3, stride=2, padding=1)
            self.down_blocks.append(Level(resnets, attentions, downsample=downsample))
            skip_channels += [out_ch] * (n + (0 if last else 1))

        self.mid_block = MidBlock(chans[-1], temb_dim, config)

        self.up_blocks = nn.ModuleList()
        prev = chans[-1]
        for i in reversed(range(len(chans))):
            out_ch = chans[i]
            resnets = []
            for _ in range(n + 1):
                resnets.append(ResBlock(prev + skip_channels.pop(), out_ch, temb_dim, config))
                prev = out_ch
            has_attention = i in config.attention_levels
            attentions = [SpatialTransformer(out_ch, config) for _ in range(n + 1)] if has_attention else None
            self.up_blocks.append(Level(resnets, attentions, upsample=Upsample(out_ch) if i > 0 else None))
        assert not skip_channels

        self.conv_norm_out = nn.GroupNorm(config.norm_groups, chans[0], eps=config.norm_eps)
        self.conv_out = nn.Conv2d(chans[0], config.out_channels, 3, padding=1)
        for name, module in self.named_modules():
            if isinstance(module, SpatialTransformer):
                module.name = name
        self.to(memory_format=torch.channels_last)  # conv weights in the layout of the activations

    # -- forward -----------------------------------------------------------------------------------------

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predict eps_theta(z_t, t, c).

        sample: z_t, (B, in_channels, H, W) with H and W divisible by 2**(num_levels - 1).
        timestep: an int, a 0-d tensor, or a (B,) tensor (int or float).
        encoder_hidden_states: c, (B, L, context_dim).
        encoder_attention_mask: optional (B, L) bool, True for the tokens that may be attended to (padding: False).
        Returns a plain tensor (B, out_channels, H, W), not diffusers' ``UNet2DConditionOutput``.
        """
        t = self._check_inputs(sample, timestep, encoder_hidden_states, encoder_attention_mask)
        context, mask = encoder_hidden_states, encoder_attention_mask
        temb_act = F.silu(self.time_embedding(t, sample.dtype))  # SiLU(temb), shared by every ResBlock

        if self.config.coordinate_channels:
            sample = torch.cat([sample, _coordinates(sample)], dim=1)  # (B, in_channels + 2, H, W)
        x = self.conv_in(sample.contiguous(memory_format=torch.channels_last))  # (B, C0, H, W), channels-last
        skips = [x]
        for level in self.down_blocks:
            for resnet, attention in level.blocks():
                x = resnet(x, temb_act)
                if attention is not None:
                    x = attention(x, context, mask)
                skips.append(x)
            if level.downsample is not None:
                x = level.downsample(x)  # (B, C, H/2, W/2)
                skips.append(x)

        x = self.mid_block(x, temb_act, context, mask)

        for level in self.up_blocks:
            for resnet, attention in level.blocks():
                x = resnet(torch.cat([x, skips.pop()], dim=1), temb_act)
                if attention is not None:
                    x = attention(x, context, mask)
            if level.upsample is not None:
                x = level.upsample(x)  # (B, C, 2H, 2W)

        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        return x.contiguous()  # (B, out_channels, H, W), standard memory layout

    def _check_inputs(self, sample, timestep, context, mask) -> torch.Tensor:
        cfg = self.config
        check_tensor("sample", sample, ndim=4, floating=True)
        check_shape_dim("sample", sample, 1, cfg.in_channels, what="in_channels")
        factor = 2 ** (cfg.num_levels - 1)
        if sample.shape[2] % factor or sample.shape[3] % factor:
            raise ValueError(f"sample height and width must be divisible by 2**(num_levels-1) = {factor}, "
                             f"got shape {tuple(sample.shape)}")
        batch = sample.shape[0]
        check_tensor("encoder_hidden_states", context, ndim=3, floating=True)
        check_shape_dim("encoder_hidden_states", context, 0, batch, what="batch size of sample")
        check_shape_dim("encoder_hidden_states", context, 2, cfg.context_dim, what="context_dim")
        if mask is not None:
            check_tensor("encoder_attention_mask", mask, ndim=2)
            if mask.dtype != torch.bool:
                raise ValueError(f"encoder_attention_mask must be a bool tensor, got dtype {mask.dtype}")
            if tuple(mask.shape) != tuple(context.shape[:2]):
                raise ValueError(f"encoder_attention_mask must have shape (B, L) = {tuple(context.shape[:2])}, "
                                 f"got {tuple(mask.shape)}")
            if not bool(mask.any(dim=1).all()):
                raise ValueError("encoder_attention_mask must keep (True) at least one token per sample, "
                                 f"got an all-False row in {mask.tolist()}")
        return _timesteps_as_batch(timestep, batch, sample.device)

    # -- utilities -----------------------------------------------------------------------------------------

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @contextmanager
    def record_cross_attention(self, keep_graph: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Inside this block, every forward pass stores each SpatialTransformer's cross-attention weights.

        Yields a dict {module name: (B, heads, H, W, L) tensor}; ``average_cross_attention`` turns it into one
        heat map per text token. Uses the explicit (slower) attention path while active. ``keep_graph=True``
        keeps the weights in the autograd graph, for losses on the maps (course_lib.layout_guidance).
        """
        check_bool("keep_graph", keep_graph)
        store: dict[str, torch.Tensor] = {}
        blocks = [m for m in self.modules() if isinstance(m, SpatialTransformer)]
        for block in blocks:
            block.attention_store, block.keep_graph = store, keep_graph
        try:
            yield store
        finally:
            for block in blocks:
                block.attention_store, block.keep_graph = None, False

    def save_pretrained(self, folder: str | os.PathLike):
        """Write ``config.json`` and ``model.safetensors`` into ``folder``."""
        return save_pretrained(self, folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> "UNet":
        return load_pretrained(cls, UNetConfig, folder, device=device)

    @classmethod
    def from_diffusers(cls, unet) -> "UNet":
        """Copy a diffusers ``UNet2DConditionModel`` built from ``UNetConfig.to_diffusers_kwargs()``: same function."""
        config = _config_from_diffusers(unet.config)
        model = cls(config)
        state = {_diffusers_key_to_ours(k): v for k, v in unet.state_dict().items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"unet must have our architecture; missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model


def _timesteps_as_batch(timestep, batch: int, device: torch.device) -> torch.Tensor:
    """int, float, 0-d or (B,) tensor -> (B,) tensor on ``device``."""
    if isinstance(timestep, bool) or not isinstance(timestep, (int, float, torch.Tensor)):
        raise ValueError(f"timestep must be an int, a float or a tensor, got {type(timestep).__name__}")
    t = torch.as_tensor(timestep, device=device)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, batch)):
        raise ValueError(f"timestep must be a scalar or have shape ({batch},), got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"timestep must hold integers or floats, got dtype {t.dtype}")
    return t.reshape(-1).expand(batch)


# ---------------------------------------------------------------------------------------------------------
# Cross-attention heat maps
# ---------------------------------------------------------------------------------------------------------

def average_cross_attention(maps: dict[str, torch.Tensor], size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Average recorded cross-attention maps over heads and layers: one heat map per text token.

    maps: the dict filled by ``UNet.record_cross_attention()``, values (B, heads, h, w, L).
    size: output resolution (default: the largest recorded one); lower-resolution maps are upsampled bilinearly.
    Returns (B, L, H, W); for every pixel the L values sum to 1.
    """
    if not isinstance(maps, dict) or not maps:
        raise ValueError(f"maps must be a non-empty dict filled by record_cross_attention(), got {maps!r}")
    if size is None:
        size = max((m.shape[2], m.shape[3]) for m in maps.values())
    elif isinstance(size, int):
        check_int("size", size, minimum=1)
        size = (size, size)
    per_layer = []
    for m in maps.values():
        m = m.mean(dim=1).permute(0, 3, 1, 2)  # (B, L, h, w)
        per_layer.append(F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False))
    return torch.stack(per_layer).mean(dim=0)  # (B, L, H, W)


# ---------------------------------------------------------------------------------------------------------
# diffusers interoperability (for the equivalence test and the benchmark)
# ---------------------------------------------------------------------------------------------------------

# diffusers options that must keep these values for the network to be ours (diffusers' defaults, mostly)
_DIFFUSERS_FIXED = dict(transformer_layers_per_block=1, resnet_time_scale_shift="default", class_embed_type=None,
                        addition_embed_type=None, only_cross_attention=False, upcast_attention=False,
                        conv_in_kernel=3, conv_out_kernel=3, time_cond_proj_dim=None, encoder_hid_dim=None,
                        mid_block_scale_factor=1, resnet_out_scale_factor=1.0, act_fn="silu",
                        center_input_sample=False, dual_cross_attention=False, attention_type="default",
                        cross_attention_norm=None, time_embedding_type="positional", timestep_post_act=None,
                        time_embedding_act_fn=None, num_attention_heads=None, resnet_skip_time_act=False,
                        downsample_padding=1)


def _config_from_diffusers(dc) -> UNetConfig:
    heads = dc.attention_head_dim
    heads = heads[0] if isinstance(heads, (list, tuple)) else heads
    levels = tuple(i for i, kind in enumerate(dc.down_block_types) if kind.startswith("CrossAttn"))
    config = UNetConfig(in_channels=dc.in_channels, out_channels=dc.out_channels,
                        block_channels=tuple(dc.block_out_channels), layers_per_block=dc.layers_per_block,
                        attention_levels=levels, num_heads=heads, context_dim=dc.cross_attention_dim,
                        time_embed_dim=dc.time_embedding_dim, dropout=dc.dropout,
                        norm_groups=dc.norm_num_groups, norm_eps=dc.norm_eps)
    expected = {**config.to_diffusers_kwargs(), **_DIFFUSERS_FIXED}
    got = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dc.items() if k in expected}
    wrong = {k: got.get(k) for k, v in expected.items() if got.get(k, v) != v}
    if wrong:
        raise ValueError(f"unet must be built like UNetConfig.to_diffusers_kwargs(); these options differ: {wrong}")
    return config


_DIFFUSERS_RENAMES = [("transformer_blocks.0.", ""), ("ff.net.0.proj.", "ff.proj."), ("ff.net.2.", "ff.out."),
                      ("downsamplers.0.conv.", "downsample."), ("upsamplers.0.conv.", "upsample.conv.")]


def _diffusers_key_to_ours(key: str) -> str:
    for theirs, ours in _DIFFUSERS_RENAMES:
        key = key.replace(theirs, ours)
    return key

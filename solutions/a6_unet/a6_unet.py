# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Assignment 6: Stable Diffusion's UNet, layer by layer
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/2026-fall/assignments/a6_unet/a6_unet.ipynb)
#
# The UNet is where Stable Diffusion spends its time: 860 million parameters that look at a noisy latent, the
# timestep and the prompt, and predict the noise. In this assignment you write it, piece by piece, with the
# parameter names of diffusers' `UNet2DConditionModel`: at the end, the weights of a real (small) diffusers UNet
# load into yours with a strict `load_state_dict` and give the same numbers, and the same code at full size holds
# SD v1.5's weights. Then you train your UNet as the denoiser of a miniature Stable Diffusion.
#
# **What you will learn**
# - how the timestep enters: sinusoids (as the Transformer's positions), an MLP, and one shift per channel in
#   every residual block;
# - the residual block with GroupNorm and SiLU; the transformer block with self-attention, cross-attention to
#   the text and a GEGLU feed-forward, wrapped in 1x1 convolutions that turn pixels into tokens and back;
# - the U: a down path that keeps every intermediate result, a middle, an up path that concatenates them back
#   (skip connections), attention only at the resolutions the config names;
# - how diffusers names every weight, so that checkpoints load into your own code.
#
# **Prerequisites**: assignment 2 (attention), assignment 3 (DDPM's training objective), lecture 6 (Stable
# Diffusion in miniature).
#
# **Time**: 3-5 hours of work. Part 6 trains your UNet (with a small VAE and text encoder from the course
# library): about 4 minutes of one CPU core with the default settings (UNet 2000 steps at 0.08 s each, VAE and
# CLIP about a minute together), 1-2 minutes on a Colab GPU. Grading your notebook takes about 20 seconds of
# CPU time.
#
# **Points** (29 in total, all autograded):
#
# | part | what | points |
# |---|---|---|
# | 1 | `timestep_embedding`, `TimestepEmbedding` | 3 |
# | 2 | `ResnetBlock2D` | 4 |
# | 3 | `Attention` (2); `GEGLU`, `FeedForward`, `BasicTransformerBlock` (3) | 5 |
# | 4 | `Transformer2DModel` | 3 |
# | 5 | `UNet2DConditionModel`: diffusers' weights load (3) and give diffusers' output (5) | 8 |
# | 6 | your trained UNet denoises held-out latents (3) and reads the prompt (3); thresholds in part 6 | 6 |
#
# Each test cell is all-or-nothing. Tests of later parts use reference versions of earlier parts, so a mistake
# costs points only once (part 6 runs your own UNet). Parts 1-5 are compared with diffusers in float64, where two
# correct implementations agree to about 1e-12; hidden tests (run when grading) try more configurations.

# %% tags=["setup"]
# Colab: install the course library of this term (Colab's own torch stays); elsewhere nothing happens.
import sys
if "google.colab" in sys.modules:
    from importlib.metadata import version
    torch_pin = "torch==" + version("torch")  # keeps Colab's torch: the course never reinstalls it
    # pip's magic shows pip's output, and Colab's restart prompt should an upgraded package need one
    get_ipython().run_line_magic("pip", f'install "course_lib @ git+https://github.com/sd-course/latent-diffusion-course@2026-fall" "{torch_pin}"')
    if int(version("ipywidgets").split(".")[0]) >= 8:  # Colab shows ipywidgets 8 through this manager
        from google.colab import output
        output.enable_custom_widget_manager()

# %% nbgrader={"grade": false, "grade_id": "parameters", "locked": true, "schema_version": 3, "solution": false} tags=["parameters"]
# Parameters (read-only). Tests and CI set FAST = True to train for about two minutes.
import os

FAST = False
AUTOGRADE = os.environ.get("COURSE_AUTOGRADE") == "1"  # set by the graders: training is skipped
SEED = 0
IMAGE_SIZE = 16                       # the shapes world at 16 x 16 pixels -> 4 x 8 x 8 latents
WEIGHTS = "a6_unet.safetensors"       # your UNet + the VAE and text encoder it was trained with, next to this notebook
OUTPUTS = "outputs/a6_fast" if FAST else "outputs/a6"  # the library stages' checkpoints (not submitted)
# Graded (part 6), on 256 held-out images: noise-prediction error of your trained UNet
MAX_HELD_OUT_MSE = 0.125             # an untrained UNet: about 1.1; predicting zero: 1.0
MIN_TEXT_GAIN = 0.02                 # the right prompt must lower the error by 2% (relative to the empty prompt)

# %% nbgrader={"grade": false, "grade_id": "imports", "locked": true, "schema_version": 3, "solution": false}
import copy
import dataclasses
import json
import math
import warnings

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

with warnings.catch_warnings():  # diffusers may warn about optional packages at import time
    warnings.simplefilter("ignore")
    import diffusers
    from diffusers.models.embeddings import get_timestep_embedding

import course_lib.models.unet_2d_condition as _reference  # the course's reference pieces, for the tests

torch.manual_seed(SEED)


def copied(module: nn.Module, reference: nn.Module) -> nn.Module:
    """module holding the reference's weights (strict: every name must match), both in float64 and eval mode."""
    module.load_state_dict(reference.state_dict(), strict=True)
    reference.double().eval()
    return module.double().eval()


def rounding_bound(module: nn.Module, expected: torch.Tensor) -> float:
    """How far two correct float64 computations may differ: 2 x unit roundoff x (the sum of the fan-ins along the
    way, at most the number of parameters) x the magnitude (at least 1)."""
    terms = sum(p.numel() for p in module.parameters()) + 1
    return 2 * (torch.finfo(torch.float64).eps / 2) * terms * max(1.0, expected.abs().max().item())


def _use_references(*names):
    """Swap the course's reference versions in for the named pieces; returns what to put back."""
    yours = {name: globals()[name] for name in names}
    globals().update({name: getattr(_reference, name) for name in names})
    return yours


def _restore(yours):
    globals().update(yours)


# %% [markdown]
# ## Part 1: the timestep (3 points)
#
# The UNet must know how noisy its input is. The timestep $t \in \{0, \dots, 999\}$ becomes a vector of sinusoids
# at geometrically spaced frequencies, as positions do in the Transformer (Vaswani et al. 2017; Ho et al. 2020):
#
# $$\omega_k = 10000^{-k/(h - s)},\quad k = 0, \dots, h-1,\qquad h = \text{dim}/2,\qquad
#   \text{emb}(t) = [\cos(t\,\omega_0), \dots, \cos(t\,\omega_{h-1}),\ \sin(t\,\omega_0), \dots, \sin(t\,\omega_{h-1})].$$
#
# SD puts the cosines first (`flip_sin_to_cos=True`) and uses the shift $s$ = `freq_shift` = 0; with
# `flip_sin_to_cos=False` the sines come first. Compute the angles in float32 (`timesteps.float()`), as diffusers
# does. An MLP then turns the sinusoids of width `block_out_channels[0]` into the time embedding `temb` of width
# 4 x `block_out_channels[0]` that every residual block reads:
# `TimestepEmbedding(in_channels, time_embed_dim)` = `linear_1`, `act` (`nn.SiLU()`), `linear_2`.
#
# **Task**: implement `timestep_embedding(timesteps, dim, flip_sin_to_cos=True, freq_shift=0)` for `timesteps` of
# shape `(B,)` (returns `(B, dim)`, `dim` even) and the module `TimestepEmbedding`.

# %% nbgrader={"grade": false, "grade_id": "timestep", "locked": false, "schema_version": 3, "solution": true}
def timestep_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool = True,
                       freq_shift: int = 0) -> torch.Tensor:
    """(B,) timesteps -> (B, dim) sinusoids, [cos, sin] if flip_sin_to_cos else [sin, cos]."""
    ### BEGIN SOLUTION
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(-math.log(10000.0) * k / (half - freq_shift))      # (half,)
    angles = timesteps.float()[:, None] * freqs[None, :]                   # (B, half)
    sin, cos = torch.sin(angles), torch.cos(angles)
    return torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    ### END SOLUTION


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        ### BEGIN SOLUTION
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)
        ### END SOLUTION

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        return self.linear_2(self.act(self.linear_1(emb)))
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_timestep", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Visible tests: shape, t = 0, one value by hand, the MLP's names.
_emb = timestep_embedding(torch.tensor([0, 10]), 8)
assert _emb.shape == (2, 8), f"expected (2, 8), got {tuple(_emb.shape)}"
assert torch.allclose(_emb[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0])), (
    f"at t = 0 the cosines are 1 and the sines 0 (cosines first), got {_emb[0].tolist()}")
assert abs(_emb[1, 1].item() - math.cos(10 * 10000 ** (-1 / 4))) < 1e-5, (
    "entry 1 for t = 10, dim = 8: cos(10 * 10000^(-1/4)). Hint: h = dim / 2 = 4 frequencies 10000^(-k/4)")
assert torch.allclose(timestep_embedding(torch.tensor([10]), 8, flip_sin_to_cos=False)[0], _emb[1].roll(4)), (
    "flip_sin_to_cos=False puts the sines first")
_names = sorted(n for n, _ in TimestepEmbedding(8, 32).named_parameters())
assert _names == ["linear_1.bias", "linear_1.weight", "linear_2.bias", "linear_2.weight"], f"names must follow diffusers: got {_names}"
### BEGIN HIDDEN TESTS
_t = torch.tensor([0, 1, 17, 250, 999])
for _dim, _flip, _shift in [(32, True, 0), (320, True, 0), (16, False, 1), (64, False, 0)]:
    assert torch.allclose(timestep_embedding(_t, _dim, _flip, _shift), get_timestep_embedding(_t, _dim, _flip, _shift),
                          rtol=0, atol=1e-6)
from diffusers.models.embeddings import TimestepEmbedding as _DiffusersTE
_theirs = _DiffusersTE(32, 128)
_mine = copied(TimestepEmbedding(32, 128), _theirs)
_x = torch.randn(4, 32, dtype=torch.float64)
with torch.no_grad():
    assert torch.allclose(_mine(_x), _theirs(_x), rtol=0, atol=rounding_bound(_theirs, _theirs(_x)))
### END HIDDEN TESTS

# %% [markdown]
# ## Part 2: the residual block and the time injection (4 points)
#
# ```
# h = conv1(SiLU(norm1(x)))                                  # GroupNorm, SiLU, 3x3 conv: in -> out channels
# h = h + time_emb_proj(SiLU(temb))[:, :, None, None]        # (B, out): one shift per channel, same at every pixel
# h = conv2(dropout(SiLU(norm2(h))))                         # GroupNorm, SiLU, 3x3 conv: out -> out
# return shortcut(x) + h                                     # shortcut: 1x1 conv if in != out, else identity
# ```
#
# The GroupNorms have `groups` groups and `eps`; the convolutions keep the size (`padding=1`). Submodules, named as
# diffusers names them: `norm1`, `conv1`, `time_emb_proj` (`nn.Linear(temb_channels, out_channels)`), `norm2`,
# `dropout` (`nn.Dropout(0.0)`), `conv2`, `nonlinearity` (`nn.SiLU()`), and `conv_shortcut` (`nn.Conv2d(in, out, 1)`)
# **only** when `in_channels != out_channels`.
#
# **Task**: write `ResnetBlock2D(in_channels, out_channels, temb_channels, groups=32, eps=1e-5)` with
# `forward(x, temb)`: `x` is `(B, in_channels, H, W)`, `temb` is `(B, temb_channels)`.

# %% nbgrader={"grade": false, "grade_id": "resnet", "locked": false, "schema_version": 3, "solution": true}
class ResnetBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int = 32, eps: float = 1e-5):
        super().__init__()
        ### BEGIN SOLUTION
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nonlinearity = nn.SiLU()
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        ### END SOLUTION

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        h = h + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]   # (B, C, 1, 1): per channel
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + h
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_resnet", "locked": true, "points": 4, "schema_version": 3, "solution": false}
# Visible tests: names, shape, and diffusers' ResnetBlock2D on copied weights.
from diffusers.models.resnet import ResnetBlock2D as DiffusersResnetBlock2D

_block = ResnetBlock2D(16, 32, 64, groups=8)
_theirs = DiffusersResnetBlock2D(in_channels=16, out_channels=32, temb_channels=64, groups=8, eps=1e-5)
_names, _expected_names = sorted(n for n, _ in _block.named_parameters()), sorted(n for n, _ in _theirs.named_parameters())
assert _names == _expected_names, f"names must follow diffusers: expected {_expected_names}, got {_names}"
assert "conv_shortcut.weight" not in dict(ResnetBlock2D(16, 16, 64, groups=8).named_parameters()), (
    "no conv_shortcut when the width does not change")
_block = copied(_block, _theirs)
_x, _temb = torch.randn(2, 16, 6, 6, dtype=torch.float64), torch.randn(2, 64, dtype=torch.float64)
with torch.no_grad():
    _expected = _theirs(_x, _temb)
    _diff = (_block(_x, _temb) - _expected).abs().max().item()
assert _diff <= rounding_bound(_theirs, _expected), (
    f"your block differs from diffusers' by {_diff:.2e}. Hints: SiLU before time_emb_proj; add the time embedding "
    "after conv1; the shortcut is added at the very end")
### BEGIN HIDDEN TESTS
_g = torch.Generator().manual_seed(601)
for _in, _out, _groups, _eps in [(32, 32, 8, 1e-5), (24, 48, 4, 1e-6), (64, 32, 32, 1e-5)]:
    _theirs = DiffusersResnetBlock2D(in_channels=_in, out_channels=_out, temb_channels=40, groups=_groups, eps=_eps)
    _block = copied(ResnetBlock2D(_in, _out, 40, _groups, _eps), _theirs)
    _x = torch.randn(3, _in, 5, 7, generator=_g, dtype=torch.float64) * 2
    _temb = torch.randn(3, 40, generator=_g, dtype=torch.float64)
    with torch.no_grad():
        _expected = _theirs(_x, _temb)
        assert torch.allclose(_block(_x, _temb), _expected, rtol=0, atol=rounding_bound(_theirs, _expected))
### END HIDDEN TESTS

# %% [markdown]
# ## Part 3: attention and the transformer block (5 points)
#
# **Attention** is assignment 2's multi-head attention, with diffusers' names: `to_q` (`query_dim -> heads *
# dim_head`, no bias), `to_k` and `to_v` (`context_dim -> heads * dim_head`, no bias; `context_dim` is
# `cross_attention_dim`, or `query_dim` for self-attention), `to_out = nn.ModuleList([nn.Linear(heads * dim_head,
# query_dim), nn.Dropout(0.0)])`. `forward(x, context=None, mask=None)`: self-attention if `context` is None;
# `mask` is an optional `(B, L)` tensor over the context's tokens (True or 1 = attend). You may use
# `F.scaled_dot_product_attention`.
#
# **The transformer block** works on tokens `(B, N, dim)`, pre-LayerNorm (default `nn.LayerNorm(dim)`):
#
# ```
# x = x + attn1(norm1(x))                    # self-attention: every pixel looks at every pixel
# x = x + attn2(norm2(x), context, mask)     # cross-attention: every pixel reads the prompt
# x = x + ff(norm3(x))                       # feed-forward
# ```
#
# The feed-forward is a **GEGLU** (Shazeer 2020): `GEGLU(dim_in, dim_out)` has one `proj = nn.Linear(dim_in,
# 2 * dim_out)`; split its output in two halves along the last axis, value and gate, and return
# `value * F.gelu(gate)`. `FeedForward(dim)` holds `net = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Dropout(0.0),
# nn.Linear(4 * dim, dim)])` and applies the three in order.
#
# **Tasks**: `Attention(query_dim, heads, dim_head, cross_attention_dim=None)`; `GEGLU`, `FeedForward`;
# `BasicTransformerBlock(dim, heads, dim_head, cross_attention_dim)` with `norm1`, `attn1`, `norm2`, `attn2`,
# `norm3`, `ff` and `forward(x, context, mask=None)`.

# %% nbgrader={"grade": false, "grade_id": "attention", "locked": false, "schema_version": 3, "solution": true}
class Attention(nn.Module):
    def __init__(self, query_dim: int, heads: int, dim_head: int, cross_attention_dim: int | None = None):
        super().__init__()
        self.heads = heads
        ### BEGIN SOLUTION
        inner = heads * dim_head
        context_dim = query_dim if cross_attention_dim is None else cross_attention_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])
        ### END SOLUTION

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        ### BEGIN SOLUTION
        context = x if context is None else context
        B, N, _ = x.shape
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (t.view(B, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))
        if mask is not None:
            mask = mask.bool()[:, None, None, :]                         # (B, 1, 1, L): all heads and queries
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)   # (B, h, N, d)
        return self.to_out[1](self.to_out[0](out.transpose(1, 2).reshape(B, N, -1)))
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false}
# Visible tests: names, and diffusers' Attention on copied weights (self- and cross-attention).
from diffusers.models.attention_processor import Attention as DiffusersAttention

_attn = Attention(32, heads=4, dim_head=8, cross_attention_dim=16)
_names = sorted(n for n, _ in _attn.named_parameters())
assert _names == ["to_k.weight", "to_out.0.bias", "to_out.0.weight", "to_q.weight", "to_v.weight"], (
    f"names must follow diffusers: got {_names}")
_theirs = DiffusersAttention(query_dim=32, heads=4, dim_head=8, cross_attention_dim=16)
_attn = copied(_attn, _theirs)
_x, _c = torch.randn(2, 10, 32, dtype=torch.float64), torch.randn(2, 5, 16, dtype=torch.float64)
with torch.no_grad():
    _expected = _theirs(_x, encoder_hidden_states=_c)
    _diff = (_attn(_x, _c) - _expected).abs().max().item()
assert _diff <= rounding_bound(_theirs, _expected), f"cross-attention differs from diffusers' by {_diff:.2e}"
### BEGIN HIDDEN TESTS
_g = torch.Generator().manual_seed(603)
for _dim, _h, _dh, _cdim in [(48, 6, 8, None), (32, 2, 16, 24), (16, 1, 16, 8)]:
    _theirs = DiffusersAttention(query_dim=_dim, heads=_h, dim_head=_dh, cross_attention_dim=_cdim)
    _attn = copied(Attention(_dim, _h, _dh, _cdim), _theirs)
    _x = torch.randn(3, 12, _dim, generator=_g, dtype=torch.float64)
    _c = torch.randn(3, 6, _cdim or _dim, generator=_g, dtype=torch.float64)
    _mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0]])
    _bias = ((1 - _mask.double()) * -10000.0)[:, None, :]                 # diffusers' additive form
    with torch.no_grad():
        if _cdim is None:
            _expected = _theirs(_x)
            assert torch.allclose(_attn(_x), _expected, rtol=0, atol=rounding_bound(_theirs, _expected))
        else:
            _expected = _theirs(_x, encoder_hidden_states=_c, attention_mask=_bias)
            assert torch.allclose(_attn(_x, _c, _mask), _expected, rtol=0, atol=rounding_bound(_theirs, _expected))
            assert torch.allclose(_attn(_x, _c, _mask.bool()), _expected, rtol=0, atol=rounding_bound(_theirs, _expected))
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "transformer_block", "locked": false, "schema_version": 3, "solution": true}
class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        ### BEGIN SOLUTION
        self.proj = nn.Linear(dim_in, dim_out * 2)
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)
        ### END SOLUTION


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        ### BEGIN SOLUTION
        self.net = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim)])
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        for layer in self.net:
            x = layer(x)
        return x
        ### END SOLUTION


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int):
        super().__init__()
        ### BEGIN SOLUTION
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)
        ### END SOLUTION

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        ### BEGIN SOLUTION
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context, mask)
        return x + self.ff(self.norm3(x))
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_transformer_block", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Visible tests: diffusers' BasicTransformerBlock on copied weights (the course's Attention replaces yours here).
from diffusers.models.attention import BasicTransformerBlock as DiffusersBlock

_yours = _use_references("Attention")
try:
    _block = BasicTransformerBlock(32, 4, 8, cross_attention_dim=16)
    _theirs = DiffusersBlock(32, 4, 8, cross_attention_dim=16)
    _names, _expected_names = sorted(n for n, _ in _block.named_parameters()), sorted(n for n, _ in _theirs.named_parameters())
    assert _names == _expected_names, f"names must follow diffusers: expected {_expected_names}, got {_names}"
    _block = copied(_block, _theirs)
    _x, _c = torch.randn(2, 9, 32, dtype=torch.float64), torch.randn(2, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        _expected = _theirs(_x, encoder_hidden_states=_c)
        _diff = (_block(_x, _c) - _expected).abs().max().item()
    assert _diff <= rounding_bound(_theirs, _expected), (
        f"your block differs from diffusers' by {_diff:.2e}. Hints: normalise before each sub-layer; the gate is the "
        "SECOND half of proj's output")
    ### BEGIN HIDDEN TESTS
    _g = torch.Generator().manual_seed(604)
    for _dim, _h, _cdim in [(48, 6, 20), (16, 1, 16), (64, 8, 32)]:
        _theirs = DiffusersBlock(_dim, _h, _dim // _h, cross_attention_dim=_cdim)
        _block = copied(BasicTransformerBlock(_dim, _h, _dim // _h, _cdim), _theirs)
        _x = torch.randn(2, 7, _dim, generator=_g, dtype=torch.float64) * 2
        _c = torch.randn(2, 4, _cdim, generator=_g, dtype=torch.float64)
        _mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
        with torch.no_grad():
            _expected = _theirs(_x, encoder_hidden_states=_c, encoder_attention_mask=((1 - _mask.double()) * -10000.0)[:, None])
            assert torch.allclose(_block(_x, _c, _mask), _expected, rtol=0, atol=rounding_bound(_theirs, _expected))
            _ff = copied(FeedForward(_dim), _theirs.ff)
            assert torch.allclose(_ff(_x), _theirs.ff(_x), rtol=0, atol=rounding_bound(_theirs.ff, _theirs.ff(_x)))
    ### END HIDDEN TESTS
finally:
    _restore(_yours)

# %% [markdown]
# ## Part 4: from pixels to tokens and back (3 points)
#
# `Transformer2DModel` runs the transformer block on a feature map: each of the $H \times W$ pixels becomes a token
# of `channels` numbers, and the result goes back, added to the input:
#
# ```
# h = proj_in(norm(x))                                       # GroupNorm(groups, channels, eps=1e-6), 1x1 conv
# h = h.permute(0, 2, 3, 1).reshape(B, H * W, C)             # (B, HW, C): pixel (i, j) is token i * W + j
# h = transformer_blocks[0](h, context, mask)
# h = proj_out(h.reshape(B, H, W, C).permute(0, 3, 1, 2))    # back to (B, C, H, W), 1x1 conv
# return h + x
# ```
#
# (SD v1 projects with 1x1 convolutions; SD v2 with `nn.Linear` on the tokens, a `use_linear_projection` flag
# in diffusers. A 1x1 convolution *is* a linear map applied at every pixel.)
#
# **Task**: write `Transformer2DModel(channels, heads, cross_attention_dim, groups=32)` with `norm`, `proj_in`,
# `transformer_blocks` (an `nn.ModuleList` with one `BasicTransformerBlock(channels, heads, channels // heads,
# cross_attention_dim)`), `proj_out`, and `forward(x, context, mask=None)`.

# %% nbgrader={"grade": false, "grade_id": "spatial_transformer", "locked": false, "schema_version": 3, "solution": true}
class Transformer2DModel(nn.Module):
    def __init__(self, channels: int, heads: int, cross_attention_dim: int, groups: int = 32):
        super().__init__()
        ### BEGIN SOLUTION
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(channels, heads, channels // heads, cross_attention_dim)])
        self.proj_out = nn.Conv2d(channels, channels, 1)
        ### END SOLUTION

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        ### BEGIN SOLUTION
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(B, H * W, C)   # (B, HW, C)
        for block in self.transformer_blocks:
            h = block(h, context, mask)
        h = self.proj_out(h.reshape(B, H, W, C).permute(0, 3, 1, 2))              # (B, C, H, W)
        return h + x
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_spatial_transformer", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Visible tests: diffusers' Transformer2DModel on copied weights (the course's block replaces yours here).
from diffusers import Transformer2DModel as DiffusersTransformer2D


def _diffusers_transformer(channels, heads, cross_attention_dim, groups):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DiffusersTransformer2D(num_attention_heads=heads, attention_head_dim=channels // heads,
                                      in_channels=channels, norm_num_groups=groups,
                                      cross_attention_dim=cross_attention_dim)


_yours = _use_references("BasicTransformerBlock")
try:
    _model, _theirs = Transformer2DModel(32, 4, 16, groups=8), _diffusers_transformer(32, 4, 16, 8)
    _names, _expected_names = sorted(n for n, _ in _model.named_parameters()), sorted(n for n, _ in _theirs.named_parameters())
    assert _names == _expected_names, f"names must follow diffusers: expected {_expected_names}, got {_names}"
    _model = copied(_model, _theirs)
    _x, _c = torch.randn(2, 32, 4, 6, dtype=torch.float64), torch.randn(2, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        _expected = _theirs(_x, encoder_hidden_states=_c, return_dict=False)[0]
        _diff = (_model(_x, _c) - _expected).abs().max().item()
    assert _diff <= rounding_bound(_theirs, _expected), (
        f"your Transformer2DModel differs from diffusers' by {_diff:.2e}. Hints: pixel (i, j) is token i * W + j; "
        "GroupNorm eps is 1e-6; add the input at the end")
    ### BEGIN HIDDEN TESTS
    _g = torch.Generator().manual_seed(605)
    for _ch, _h, _cdim, _groups in [(64, 8, 24, 32), (16, 2, 16, 4), (48, 3, 8, 8)]:
        _theirs = _diffusers_transformer(_ch, _h, _cdim, _groups)
        _model = copied(Transformer2DModel(_ch, _h, _cdim, _groups), _theirs)
        _x = torch.randn(2, _ch, 3, 5, generator=_g, dtype=torch.float64)
        _c = torch.randn(2, 4, _cdim, generator=_g, dtype=torch.float64)
        _mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]])
        with torch.no_grad():
            _expected = _theirs(_x, encoder_hidden_states=_c,
                                encoder_attention_mask=((1 - _mask.double()) * -10000.0)[:, None], return_dict=False)[0]
            assert torch.allclose(_model(_x, _c, _mask), _expected, rtol=0, atol=rounding_bound(_theirs, _expected))
    ### END HIDDEN TESTS
finally:
    _restore(_yours)

# %% [markdown]
# ## Part 5: the U (8 points)
#
# With `n` levels of widths `block_out_channels = (c_0, ..., c_{n-1})` and `L = layers_per_block`:
#
# ```
# temb = time_embedding(timestep_embedding(t, c_0))           # TimestepEmbedding(c_0, 4 c_0), float32 sinusoids
# x = conv_in(sample); skips = [x]                            # 3x3 conv, in_channels -> c_0
# for level i (down_blocks[i]):                               # widths c_{i-1} -> c_i (c_{-1} = c_0)
#     L times: x = resnet(x, temb) [then x = attention(x, context, mask)]; skips.append(x)
#     if not the last level: x = downsampler(x); skips.append(x)
# x = mid_block: resnet, attention, resnet (all at width c_{n-1})
# for level i = n-1, ..., 0 (up_blocks[n-1-i]):
#     L + 1 times: x = resnet(cat([x, skips.pop()], dim=1), temb) [then attention]
#     if not level 0: x = upsampler(x)
# return conv_out(SiLU(conv_norm_out(x)))                     # GroupNorm(groups, c_0, eps), 3x3 conv -> out_channels
# ```
#
# There are $1 + nL + (n-1)$ skips and the up path takes exactly $n(L+1)$ of them. Every up resnet outputs the
# level's width $c_i$; its input is the previous width plus the skip's width: for `up_blocks[j]` (level
# $i = n-1-j$) resnet $k$ reads `x` of width $c_{i+1}$ (the level below; $c_{n-1}$ for $j = 0$) if $k = 0$, else $c_i$,
# and a skip of width $c_i$, except the last one ($k = L$), whose skip has width $c_{i-1}$ ($c_0$ for $i = 0$).
#
# **Attention only where the config says**: `down_block_types[i]` is `"CrossAttnDownBlock2D"` (each resnet followed by a
# `Transformer2DModel`) or `"DownBlock2D"` (resnets only); `up_block_types[j]` likewise with `"CrossAttnUpBlock2D"` /
# `"UpBlock2D"`. The mid block always has attention. `attention_head_dim` is, despite its name, the number of
# heads (a naming slip in the original SD code that diffusers keeps for compatibility): every
# `Transformer2DModel(c, attention_head_dim, cross_attention_dim, norm_num_groups)`.
#
# **Names**, as diffusers stores them: `conv_in`, `time_embedding` (your `TimestepEmbedding`),
# `down_blocks[i].resnets[k]`, `down_blocks[i].attentions[k]` (only at attention levels),
# `down_blocks[i].downsamplers[0]`, `mid_block.resnets[0..1]`, `mid_block.attentions[0]`, `up_blocks[j].resnets[k]`,
# `up_blocks[j].attentions[k]`, `up_blocks[j].upsamplers[0]`, `conv_norm_out`, `conv_out`. Every `ResnetBlock2D` and
# `conv_norm_out` gets `norm_num_groups` and `norm_eps`. Build everything from **your** `ResnetBlock2D`,
# `Transformer2DModel`, `TimestepEmbedding` and `timestep_embedding`, called by these names (the tests swap in
# reference versions of them), and from the `Downsample2D`/`Upsample2D` below.
#
# **Tasks**: the three blocks (`DownBlock2D`, `UpBlock2D`, `UNetMidBlock2DCrossAttn`: the signatures are given),
# then `UNet2DConditionModel(in_channels, out_channels, block_out_channels, layers_per_block,
# down_block_types, up_block_types, cross_attention_dim, attention_head_dim, norm_num_groups, norm_eps=1e-5)` (the
# keyword arguments of diffusers' class, so `UNet2DConditionModel(**config)` works for both) with
# `forward(sample, timestep, encoder_hidden_states, encoder_attention_mask=None)` returning the predicted noise
# (not wrapped in an output object). `timestep` is a number or a tensor of shape `()` or `(B,)`.

# %% nbgrader={"grade": false, "grade_id": "resampling", "locked": true, "schema_version": 3, "solution": false}
# Read-only: the resampling layers (one conv each; their names are diffusers').
class Downsample2D(nn.Module):
    """3x3 conv with stride 2: H, W -> H/2, W/2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# %% nbgrader={"grade": false, "grade_id": "unet", "locked": false, "schema_version": 3, "solution": true}
class DownBlock2D(nn.Module):
    """One level of the down path; heads=None: resnets only ("DownBlock2D"), else each resnet is followed by a
    Transformer2DModel ("CrossAttnDownBlock2D"). forward returns x and this level's skips (oldest first)."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int, add_downsample: bool,
                 heads: int | None, cross_attention_dim: int, groups: int, eps: float):
        super().__init__()
        ### BEGIN SOLUTION
        self.resnets = nn.ModuleList([ResnetBlock2D(in_channels if k == 0 else out_channels, out_channels,
                                                    temb_channels, groups, eps) for k in range(num_layers)])
        if heads is not None:
            self.attentions = nn.ModuleList([Transformer2DModel(out_channels, heads, cross_attention_dim, groups)
                                             for _ in range(num_layers)])
        if add_downsample:
            self.downsamplers = nn.ModuleList([Downsample2D(out_channels)])
        ### END SOLUTION

    def forward(self, x, temb, context, mask=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        ### BEGIN SOLUTION
        skips = []
        for k, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if hasattr(self, "attentions"):
                x = self.attentions[k](x, context, mask)
            skips.append(x)
        if hasattr(self, "downsamplers"):
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips
        ### END SOLUTION


class UpBlock2D(nn.Module):
    """One level of the up path: resnet k reads cat([x, skips.pop()]). in_channels: width of the skip its last
    resnet reads; prev_output_channel: width of the x it receives (as diffusers names them)."""

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 num_layers: int, add_upsample: bool, heads: int | None, cross_attention_dim: int, groups: int,
                 eps: float):
        super().__init__()
        ### BEGIN SOLUTION
        resnets = []
        for k in range(num_layers):
            x_channels = prev_output_channel if k == 0 else out_channels
            skip_channels = in_channels if k == num_layers - 1 else out_channels
            resnets.append(ResnetBlock2D(x_channels + skip_channels, out_channels, temb_channels, groups, eps))
        self.resnets = nn.ModuleList(resnets)
        if heads is not None:
            self.attentions = nn.ModuleList([Transformer2DModel(out_channels, heads, cross_attention_dim, groups)
                                             for _ in range(num_layers)])
        if add_upsample:
            self.upsamplers = nn.ModuleList([Upsample2D(out_channels)])
        ### END SOLUTION

    def forward(self, x, skips: list[torch.Tensor], temb, context, mask=None) -> torch.Tensor:
        """skips: every skip not used yet, newest last; take them with skips.pop()."""
        ### BEGIN SOLUTION
        for k, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if hasattr(self, "attentions"):
                x = self.attentions[k](x, context, mask)
        if hasattr(self, "upsamplers"):
            x = self.upsamplers[0](x)
        return x
        ### END SOLUTION


class UNetMidBlock2DCrossAttn(nn.Module):
    def __init__(self, channels: int, temb_channels: int, heads: int, cross_attention_dim: int, groups: int, eps: float):
        super().__init__()
        ### BEGIN SOLUTION
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, temb_channels, groups, eps) for _ in range(2)])
        self.attentions = nn.ModuleList([Transformer2DModel(channels, heads, cross_attention_dim, groups)])
        ### END SOLUTION

    def forward(self, x, temb, context, mask=None) -> torch.Tensor:
        ### BEGIN SOLUTION
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, context, mask), temb)
        ### END SOLUTION


class UNet2DConditionModel(nn.Module):
    def __init__(self, in_channels: int = 4, out_channels: int = 4, block_out_channels=(320, 640, 1280, 1280),
                 layers_per_block: int = 2,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 cross_attention_dim: int = 768, attention_head_dim: int = 8, norm_num_groups: int = 32,
                 norm_eps: float = 1e-5):
        super().__init__()
        ### BEGIN SOLUTION
        widths, n, L = list(block_out_channels), len(block_out_channels), layers_per_block
        temb_channels = 4 * widths[0]
        shared = dict(cross_attention_dim=cross_attention_dim, groups=norm_num_groups, eps=norm_eps)
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(widths[0], temb_channels)
        self.down_blocks = nn.ModuleList([
            DownBlock2D(widths[max(i - 1, 0)], widths[i], temb_channels, L, i < n - 1,
                        attention_head_dim if down_block_types[i] == "CrossAttnDownBlock2D" else None, **shared)
            for i in range(n)])
        self.mid_block = UNetMidBlock2DCrossAttn(widths[-1], temb_channels, attention_head_dim, **shared)
        self.up_blocks = nn.ModuleList()
        for j in range(n):  # j = 0 is the deepest level, i = n - 1 - j
            i = n - 1 - j
            self.up_blocks.append(UpBlock2D(
                widths[max(i - 1, 0)], widths[min(i + 1, n - 1)], widths[i], temb_channels, L + 1, i > 0,
                attention_head_dim if up_block_types[j] == "CrossAttnUpBlock2D" else None, **shared))
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, widths[0], eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)
        ### END SOLUTION

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        ### BEGIN SOLUTION
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
        emb = timestep_embedding(t, self.conv_in.out_channels).to(sample.dtype)
        temb = self.time_embedding(emb)
        context, mask = encoder_hidden_states, encoder_attention_mask
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, context, mask)
            skips += block_skips
        x = self.mid_block(x, temb, context, mask)
        for block in self.up_blocks:
            x = block(x, skips, temb, context, mask)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))
        ### END SOLUTION


# %% nbgrader={"grade": false, "grade_id": "unet_reference", "locked": true, "schema_version": 3, "solution": false}
# Read-only: a small SD-like config (3 levels, attention at the first two, as SD has it at three of four) and a
# diffusers UNet with random weights to compare with.
TINY_UNET = dict(in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
PIECES = ("timestep_embedding", "TimestepEmbedding", "ResnetBlock2D", "Transformer2DModel")  # swapped in parts 5


def diffusers_unet(config: dict, seed: int = 0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return diffusers.UNet2DConditionModel(**config).eval()


# %% nbgrader={"grade": true, "grade_id": "test_unet_names", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Visible test: a diffusers state dict loads into your UNet, strictly (the same names and shapes).
_yours = _use_references(*PIECES)
try:
    _theirs = diffusers_unet(TINY_UNET)
    _mine = UNet2DConditionModel(**TINY_UNET)
    _missing = sorted(set(_theirs.state_dict()) - set(_mine.state_dict()))
    _extra = sorted(set(_mine.state_dict()) - set(_theirs.state_dict()))
    assert not _missing and not _extra, f"names differ from diffusers'. Missing: {_missing[:6]}; unexpected: {_extra[:6]}"
    _shapes = {k: (tuple(v.shape), tuple(_theirs.state_dict()[k].shape)) for k, v in _mine.state_dict().items()
               if v.shape != _theirs.state_dict()[k].shape}
    assert not _shapes, f"shapes differ (yours, diffusers'): {dict(list(_shapes.items())[:4])}"
    _mine.load_state_dict(_theirs.state_dict(), strict=True)
    assert [hasattr(b, "attentions") for b in _mine.down_blocks] == [True, True, False], "attention only where the config says"
    ### BEGIN HIDDEN TESTS
    for _config in [dict(TINY_UNET, layers_per_block=2, attention_head_dim=2),
                    dict(TINY_UNET, block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), in_channels=3, out_channels=6,
                         cross_attention_dim=24, norm_num_groups=4)]:
        UNet2DConditionModel(**_config).load_state_dict(diffusers_unet(_config).state_dict(), strict=True)
    ### END HIDDEN TESTS
finally:
    _restore(_yours)

# %% nbgrader={"grade": true, "grade_id": "test_unet_matches_diffusers", "locked": true, "points": 5, "schema_version": 3, "solution": false}
# Visible test: the same weights give the same noise prediction as diffusers (float64).
_yours = _use_references(*PIECES)
try:
    _theirs = diffusers_unet(TINY_UNET, seed=1)
    _mine = copied(UNet2DConditionModel(**TINY_UNET), _theirs)
    _g = torch.Generator().manual_seed(0)
    _z, _ctx = torch.randn(2, 4, 8, 8, generator=_g, dtype=torch.float64), torch.randn(2, 6, 32, generator=_g, dtype=torch.float64)
    _t = torch.tensor([10, 900])
    with torch.no_grad():
        _expected = _theirs(_z, _t, _ctx).sample
        _out = _mine(_z, _t, _ctx)
    assert _out.shape == (2, 4, 8, 8), f"expected the noise prediction (2, 4, 8, 8), got {tuple(_out.shape)}"
    _diff = (_out - _expected).abs().max().item()
    assert _diff <= rounding_bound(_theirs, _expected), (
        f"your UNet differs from diffusers' by {_diff:.2e}. Hints: the skips are used newest first; the last resnet of "
        "each up level reads the skip saved before that level's resnets; the up block of level 0 has no upsampler")
    ### BEGIN HIDDEN TESTS
    _mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        _expected = _theirs(_z, 500, _ctx, encoder_attention_mask=_mask).sample
        assert torch.allclose(_mine(_z, 500, _ctx, _mask), _expected, rtol=0, atol=rounding_bound(_theirs, _expected))
        assert torch.allclose(_mine(_z, torch.tensor(500), _ctx, _mask), _expected, rtol=0, atol=rounding_bound(_theirs, _expected))
    for _config, _size in [(dict(TINY_UNET, layers_per_block=2, attention_head_dim=2), (4, 12)),
                           (dict(TINY_UNET, block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), in_channels=3, out_channels=6,
                                 cross_attention_dim=24, norm_num_groups=4, norm_eps=1e-6), (6, 10))]:
        _theirs = diffusers_unet(_config, seed=2)
        _mine = copied(UNet2DConditionModel(**_config), _theirs)
        _z = torch.randn(3, _config["in_channels"], *_size, generator=_g, dtype=torch.float64)
        _ctx = torch.randn(3, 5, _config["cross_attention_dim"], generator=_g, dtype=torch.float64)
        _t = torch.tensor([0, 321, 999])
        with torch.no_grad():
            _expected = _theirs(_z, _t, _ctx).sample
            assert torch.allclose(_mine(_z, _t, _ctx), _expected, rtol=0, atol=rounding_bound(_theirs, _expected))
    ### END HIDDEN TESTS
finally:
    _restore(_yours)

# %% [markdown]
# Your class at Stable Diffusion v1.5's size (built on PyTorch's "meta" device: shapes only, no memory), with
# SD v1.5's config: it has exactly the 859,520,964 parameters of the real UNet, under the same names.

# %%
try:
    with torch.device("meta"):
        _sd15 = UNet2DConditionModel(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                                     cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
    print(f"your UNet at SD v1.5's size: {sum(p.numel() for p in _sd15.parameters()):,} parameters")
except NotImplementedError:
    print("(implement part 5 to count the parameters)")

# %% [markdown]
# ## Part 6: train your UNet in the miniature Stable Diffusion (6 points)
#
# The recipe of lecture 6, with **your** UNet as the denoiser:
#
# 1. a small VAE (the course library's `train_vae`) maps 3 x 16 x 16 images of coloured shapes to 4 x 8 x 8 latents
#    and measures the scale factor $s$ that gives them unit variance;
# 2. a small CLIP (the library's `train_clip`, assignment 4's loss) learns to embed the captions; its text encoder
#    is frozen and its `last_hidden_state` is the context your UNet cross-attends to;
# 3. **your UNet** learns DDPM's objective on $z_0 = s \cdot z$: $t \sim U\{0, \dots, 999\}$,
#    $z_t = \sqrt{\bar\alpha_t} z_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$, loss
#    $\lVert \varepsilon - \varepsilon_\theta(z_t, t, \tau(y)) \rVert^2$ (min-SNR weighted), with the caption replaced by
#    `""` 10% of the time (for classifier-free guidance) and an EMA of the weights.
#
# Everything is saved in `a6_unet.safetensors` by the read-only helpers below. The stages skip themselves while
# grading. You may change the settings cell (more steps train a better model), not the helpers.
#
# **Graded** (part 6's last cells, on 256 held-out images with fixed noise, timesteps spread over 0-999):
# - the noise-prediction error of your trained UNet with the right captions is at most **0.125** (3 points; an
#   untrained UNet scores about 1.1, always predicting zero scores 1.0);
# - it reads the prompt: with the right captions the error is at least **2%** lower than with the empty prompt
#   (3 points).
#
# For scale: the one-minute FAST run of the tests (400 UNet steps) reaches an error of 0.084 and a gain of 7.6%;
# the default training (2000 steps) goes further. The same weights in a UNet without the time injection score
# 0.17, with the sines and cosines swapped 0.15: the threshold separates a working denoiser from a broken one.

# %% nbgrader={"grade": false, "grade_id": "weights_file", "locked": true, "schema_version": 3, "solution": false}
# Read-only helpers: VAE, text encoder (+ vocabulary) and your UNet in one safetensors file.
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from course_lib.data import shapes_batch
from course_lib.minisd import MiniSDConfig, make_scheduler, min_snr_weights, train_clip, train_vae
from course_lib.text import CaptionTokenizer, CLIPConfig, TextEncoder
from course_lib.train import EMA, cosine_schedule_with_warmup
from course_lib.vae import VAE, VAEConfig


def save_trained(path, vae, text_encoder, tokenizer, unet, unet_config: dict, scale_factor: float) -> None:
    modules = {"vae": vae, "text_encoder": text_encoder, "unet": unet}
    tensors = {f"{name}.{key}": value.detach().float().contiguous()
               for name, module in modules.items() for key, value in module.state_dict().items()}
    metadata = {"vae_config": json.dumps(vae.config.to_dict()), "text_encoder_config": json.dumps(text_encoder.config.to_dict()),
                "unet_config": json.dumps(unet_config), "vocab": json.dumps(tokenizer.vocab),
                "max_length": str(tokenizer.max_length), "scale_factor": repr(float(scale_factor))}
    save_file(tensors, path, metadata=metadata)


def load_trained(path):
    """(vae, text_encoder, tokenizer, your UNet2DConditionModel, scale_factor), float32, eval mode."""
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    vae = VAE(VAEConfig.from_dict(json.loads(meta["vae_config"])))
    text_encoder = TextEncoder(CLIPConfig.from_dict(json.loads(meta["text_encoder_config"])))
    unet = UNet2DConditionModel(**json.loads(meta["unet_config"]))
    for name, module in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet)):
        module.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}, strict=True)
        module.eval().requires_grad_(False)
    tokenizer = CaptionTokenizer(json.loads(meta["vocab"]), max_length=int(meta["max_length"]))
    return vae, text_encoder, tokenizer, unet, float(meta["scale_factor"])


# %%
# Settings (you may change them; FAST is the short run of the tests).
config = MiniSDConfig(
    image_size=IMAGE_SIZE, held_out_pairs=(), num_train_images=2000 if FAST else 4000, num_val_images=256, seed=SEED,
    vae=VAEConfig(block_channels=(8, 16), mid_attention=False, norm_groups=8),      # f = 2: 4 x 8 x 8 latents
    vae_steps=300 if FAST else 1000, vae_batch_size=32, vae_lr=5e-3,
    clip=CLIPConfig.tiny(image_size=IMAGE_SIZE), clip_steps=400 if FAST else 600, clip_batch_size=64, clip_lr=2e-3,
    checkpoint_every=100)
# Your UNet for training: two levels, attention only at the lower one (4 x 4) and in the middle. Attention at
# 8 x 8 (64 tokens) would double the cost of a step on a CPU; SD itself skips attention only at its lowest level.
TRAIN_UNET = dict(TINY_UNET, block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
UNET_STEPS, UNET_BATCH_SIZE, UNET_LR, COND_DROPOUT, SNR_GAMMA = (400 if FAST else 2000), 32, 2e-3, 0.1, 5.0
if not AUTOGRADE:
    data = shapes_batch(config.num_train_images, seed=SEED, image_size=IMAGE_SIZE, caption_style="short")
    print(f"{len(data['caption'])} training images, e.g. {data['caption'][:3]}")

# %%
# Stage 1: the library's VAE (it checkpoints, resumes if interrupted and skips itself when done).
if not AUTOGRADE:
    vae, vae_report = train_vae(config, OUTPUTS, data)
    vae.eval().requires_grad_(False)
    scale = vae_report["scale_factor"]
    print(f"VAE: held-out MSE {vae_report['val_mse']:.4f}, scale factor s = {scale:.3f}")

# %%
# Stage 2: the library's CLIP; its text encoder, frozen, gives the context tau(y).
if not AUTOGRADE:
    clip, tokenizer, _ = train_clip(config, OUTPUTS, data)
    text_encoder = clip.text_encoder.eval().requires_grad_(False)
    print(f"text features of width {text_encoder.config.width}, at most {text_encoder.config.max_length} tokens")

# %%
# Stage 3: YOUR UNet, trained on latents (DDPM's Algorithm 1, condition dropout, min-SNR weights, EMA).
if not AUTOGRADE:
    with torch.no_grad():  # both encoders are frozen: encode every image and every distinct caption once
        posterior = vae.encode(data["image"])                                   # mean, std: (N, 4, 8, 8)
        captions = sorted(set(data["caption"]) | {""})
        tokens = tokenizer(captions, max_length=text_encoder.config.max_length)
        features = text_encoder(tokens["input_ids"], tokens["attention_mask"]).last_hidden_state  # (U, L, D)
        masks = tokens["attention_mask"].bool()                                  # (U, L)
    caption_index = torch.tensor([captions.index(c) for c in data["caption"]])  # which caption each image has
    empty = captions.index("")
    unet_config = dict(TRAIN_UNET, cross_attention_dim=text_encoder.config.width)
    torch.manual_seed(SEED + 2)
    unet = UNet2DConditionModel(**unet_config)
    ema = EMA(unet, decay=0.995)
    noise_scheduler = make_scheduler(config)  # 1000 steps, SD's scaled-linear betas
    optimizer = torch.optim.AdamW(unet.parameters(), lr=UNET_LR, weight_decay=0.01)
    lr_schedule = cosine_schedule_with_warmup(optimizer, min(100, UNET_STEPS // 10), UNET_STEPS)
    generator = torch.Generator().manual_seed(SEED + 2)
    losses = []
    for step in range(UNET_STEPS):
        idx = torch.randint(len(caption_index), (UNET_BATCH_SIZE,), generator=generator)
        z0 = scale * (posterior.mean[idx] + posterior.std[idx] * torch.randn(posterior.mean[idx].shape, generator=generator))
        dropped = torch.rand(len(idx), generator=generator) < COND_DROPOUT
        which = torch.where(dropped, empty, caption_index[idx])                  # the caption, or "" (10%)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),), generator=generator)
        noise = torch.randn(z0.shape, generator=generator)
        prediction = unet(noise_scheduler.add_noise(z0, noise, t), t, features[which], masks[which])
        loss = ((prediction - noise).pow(2).mean(dim=(1, 2, 3)) * min_snr_weights(noise_scheduler, t, SNR_GAMMA)).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.update()
        losses.append(loss.item())
        if step % 500 == 0 or step == UNET_STEPS - 1:
            print(f"step {step:5d}  weighted loss {sum(losses[-100:]) / len(losses[-100:]):.4f}")
    ema.copy_to(unet)
    unet.eval()
    save_trained(WEIGHTS, vae, text_encoder, tokenizer, unet, unet_config, scale)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(torch.tensor(losses).view(-1, 10).mean(1))
    ax.set_xlabel("step / 10")
    ax.set_ylabel("weighted noise-prediction loss")

# %%
# Your UNet draws: the sampling loop of Stable Diffusion in five lines (DDIM, 25 steps, guidance scale 3).
from course_lib.schedulers import DDIMScheduler

if os.path.exists(WEIGHTS) and not AUTOGRADE:
    vae, text_encoder, tokenizer, unet, scale = load_trained(WEIGHTS)
    prompts = [f"a {c} {s}" for s in ("circle", "square", "triangle") for c in ("red", "green", "blue", "yellow")]
    sampler = DDIMScheduler.from_config({**make_scheduler(config).config.to_dict(), "set_alpha_to_one": False,
                                         "steps_offset": 1})
    with torch.no_grad():
        tokens = tokenizer([""] * len(prompts) + prompts, max_length=text_encoder.config.max_length)
        context = text_encoder(tokens["input_ids"], tokens["attention_mask"]).last_hidden_state  # unconditional first
        mask = tokens["attention_mask"].bool()
        z = torch.randn(len(prompts), 4, IMAGE_SIZE // 2, IMAGE_SIZE // 2, generator=torch.Generator().manual_seed(SEED))
        sampler.set_timesteps(25)
        for t in sampler.timesteps:
            eps_uncond, eps_cond = unet(torch.cat([z, z]), t, context, mask).chunk(2)
            z = sampler.step(eps_uncond + 3.0 * (eps_cond - eps_uncond), t, z).prev_sample
        images = vae.decode(z / scale).clamp(-1, 1)
    fig, axes = plt.subplots(3, 4, figsize=(6, 4.8))
    for ax, image, prompt in zip(axes.flat, images, prompts):
        ax.imshow((image.permute(1, 2, 0) + 1) / 2)
        ax.set_title(prompt, fontsize=8)
        ax.axis("off")
    fig.tight_layout()

# %% nbgrader={"grade": false, "grade_id": "evaluation", "locked": true, "schema_version": 3, "solution": false}
# Evaluation (read-only): your saved UNet on 256 held-out images, fixed noise, timesteps spread over 0-999.
assert os.path.exists(WEIGHTS), f"{WEIGHTS} not found: run part 6 (and submit the file with the notebook)"
_vae, _text_encoder, _tokenizer, _unet, _scale = load_trained(WEIGHTS)
_held_out = shapes_batch(256, seed=SEED + 100, image_size=IMAGE_SIZE, caption_style="short")
_noise_scheduler = make_scheduler(MiniSDConfig(image_size=IMAGE_SIZE))
with torch.no_grad():
    _z0 = _vae.encode(_held_out["image"]).mean * _scale
    _noise = torch.randn(_z0.shape, generator=torch.Generator().manual_seed(SEED + 7))
    _t = torch.linspace(0, 999, len(_z0)).long()
    _z_t = _noise_scheduler.add_noise(_z0, _noise, _t)

    def _error(captions):
        tokens = _tokenizer(captions, max_length=_text_encoder.config.max_length)
        context = _text_encoder(tokens["input_ids"], tokens["attention_mask"]).last_hidden_state
        prediction = _unet(_z_t, _t, context, tokens["attention_mask"].bool())
        return (prediction - _noise).pow(2).mean().item()

    evaluation = {"with_prompt": _error(_held_out["caption"]), "empty_prompt": _error([""] * len(_z0))}
print(f"noise-prediction error: {evaluation['with_prompt']:.4f} with the right prompt (<= {MAX_HELD_OUT_MSE}), "
      f"{evaluation['empty_prompt']:.4f} with the empty prompt (the prompt must lower it by >= {MIN_TEXT_GAIN:.0%})")

# %% nbgrader={"grade": true, "grade_id": "test_trained_denoises", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Graded: your trained UNet predicts the noise of held-out latents.
assert math.isfinite(evaluation["with_prompt"]), "the error is not finite"
assert evaluation["with_prompt"] <= MAX_HELD_OUT_MSE, (
    f"held-out error {evaluation['with_prompt']:.4f} > {MAX_HELD_OUT_MSE}: train longer (part 6)")
### BEGIN HIDDEN TESTS
assert sum(p.numel() for p in _unet.parameters()) < 20_000_000, "keep the model small"
assert len(_unet.down_blocks) >= 2, "a UNet with at least two levels"
### END HIDDEN TESTS

# %% nbgrader={"grade": true, "grade_id": "test_trained_reads_prompt", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Graded: the prompt helps (cross-attention carries information from the text).
_gain = 1 - evaluation["with_prompt"] / evaluation["empty_prompt"]
assert _gain >= MIN_TEXT_GAIN, (
    f"the right prompt lowers the error by only {_gain:.1%} < {MIN_TEXT_GAIN:.0%}: does cross-attention read the context?")
### BEGIN HIDDEN TESTS
assert evaluation["with_prompt"] <= MAX_HELD_OUT_MSE
### END HIDDEN TESTS

# %% [markdown]
# ## Going further (not graded)
#
# - Load SD v1.5's UNet on Colab (`diffusers.UNet2DConditionModel.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5",
#   subfolder="unet")`), build yours with its config, `load_state_dict` its state dict and compare one prediction.
#   SD v2 needs one more option: `use_linear_projection` (part 4).
# - Train with attention only at the lowest resolution (`down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
#   "DownBlock2D")` and the matching up types): how much worse does the prompt gain get?
# - Where do the parameters of SD v1.5's UNet sit? Count them per level: resnets, attention, resampling.

# %% [markdown]
# ## Submitting
#
# 1. Run every cell from the top (*Kernel -> Restart & Run All*) and check that the visible tests pass.
# 2. Submit **`a6_unet.ipynb` and `a6_unet.safetensors`** (on Colab: download both from the file browser on the left
#    first). The graders run your notebook with `COURSE_AUTOGRADE=1`: training cells are skipped and the graded cells
#    load the weights you submitted, on a CPU.
# 3. Do not rename the notebook or the weights file, and do not change the read-only cells: they are restored
#    before grading.

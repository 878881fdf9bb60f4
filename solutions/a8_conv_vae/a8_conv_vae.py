# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Assignment 8: Stable Diffusion's convolutional VAE
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/2026-fall/assignments/a8_conv_vae/a8_conv_vae.ipynb)
#
# In assignment 1 you built a VAE out of dense layers: flatten the image, squeeze it into a vector of 8 numbers,
# unflatten at the end. That design is the *contrast*: it forgets where things are, and its size grows with the
# number of pixels. Stable Diffusion's VAE (`AutoencoderKL`) is convolutional: its latent keeps a spatial layout,
# 4 channels at 1/8 of the resolution (a 512 x 512 image becomes 4 x 64 x 64), and the same weights work at any
# image size. Here you build it, module for module, with the **parameter names diffusers uses**, so that the
# weights of the real SD v1.5 VAE load into your class with a strict `load_state_dict`.
#
# **What you will learn**
# - the ResNet block of SD (GroupNorm, SiLU, 3x3 convs, a 1x1 shortcut when the width changes);
# - single-head self-attention over the positions of a feature map, the VAE's only global operation;
# - SD's asymmetric downsampling, and why the decoder has one block more per level than the encoder;
# - the posterior as a 1x1 `quant_conv` to 2 x latent channels (mean and log-variance), and `post_quant_conv`;
# - how a state dict's names follow from a module tree, so that foreign weights load.
#
# **Prerequisites**: assignment 1 (VAE, reparameterisation), assignment 2 (attention); lecture 1, section 5.
#
# **Time**: 2-4 hours of work. All tests run in under 20 seconds on a laptop CPU; the optional training at the
# end takes about two minutes on a laptop CPU and seconds on a Colab GPU.
#
# **Points** (19 in total, all autograded):
#
# | part | what | points |
# |---|---|---|
# | 1 | `ResnetBlock2D` | 3 |
# | 2 | `VAEAttention` | 3 |
# | 3 | `Downsample2D`, `Upsample2D` | 2 |
# | 4 | `MidBlock2D` | 2 |
# | 5 | `Encoder` | 3 |
# | 6 | `Decoder` | 3 |
# | 7 | `AutoencoderKL`: `quant_conv`, posterior, `post_quant_conv` | 3 |
#
# Every part is graded by **equality with diffusers' own module** on the same weights. Each test cell is
# all-or-nothing, and the tests of parts 4-7 plug diffusers' versions of the earlier parts into your class, so
# a mistake costs points only once. Hidden tests (run when grading) try other sizes and configurations.
# Write the modules yourself with `torch.nn`: answers that use `diffusers`, `transformers` or the course's own
# VAE modules (`course_lib.vae`, `course_lib.models`) get no credit.

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
# Parameters (read-only). Tests and CI set FAST = True to train for a few seconds only.
import os

FAST = False
AUTOGRADE = os.environ.get("COURSE_AUTOGRADE") == "1"  # set by the graders: the optional training is skipped
SEED = 0
EPS = 1e-6  # GroupNorm epsilon everywhere in SD's VAE (PyTorch's default is 1e-5)

# %% nbgrader={"grade": false, "grade_id": "config", "locked": true, "schema_version": 3, "solution": false}
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class VAEConfig:
    """The shape of an AutoencoderKL; the field names are those of diffusers' vae/config.json.

    block_out_channels   width of each resolution level; every level but the last halves H and W
    layers_per_block     ResNet blocks per level in the encoder (the decoder has one more per level)
    norm_num_groups      GroupNorm groups; divides every width
    """
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple = (128, 256, 512, 512)  # SD v1.x; the tests use small ones
    layers_per_block: int = 2
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


SMALL = VAEConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)  # 32x32 -> 4x16x16

# %% nbgrader={"grade": false, "grade_id": "test_helpers", "locked": true, "schema_version": 3, "solution": false}
# Helpers of the tests (read-only): diffusers' modules, with random weights, as references.
import diffusers
from diffusers.models.attention_processor import Attention as _DiffusersAttention
from diffusers.models.autoencoders.vae import Decoder as _DiffusersDecoder, Encoder as _DiffusersEncoder
from diffusers.models.downsampling import Downsample2D as _DiffusersDownsample
from diffusers.models.resnet import ResnetBlock2D as _DiffusersResnet
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D as _DiffusersMidBlock
from diffusers.models.upsampling import Upsample2D as _DiffusersUpsample


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Perturb every parameter (GroupNorm starts at weight 1, bias 0: a swapped norm would go unseen)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def _copy_weights(yours: nn.Module, reference: nn.Module) -> None:
    """Load the reference's state dict into your module: strict, so every name and shape must match."""
    mine, theirs = yours.state_dict(), reference.state_dict()
    missing, unexpected = sorted(set(theirs) - set(mine)), sorted(set(mine) - set(theirs))
    assert not missing and not unexpected, (
        f"parameter names differ from diffusers'. Missing in yours: {missing[:6]}; not in diffusers': "
        f"{unexpected[:6]}")
    wrong = {k: (tuple(mine[k].shape), tuple(theirs[k].shape)) for k in theirs if mine[k].shape != theirs[k].shape}
    assert not wrong, f"shapes differ (yours, diffusers'): {wrong}"
    yours.load_state_dict(theirs, strict=True)
    yours.eval()


def _close(got: torch.Tensor, want: torch.Tensor, what: str, rtol: float = 1e-5) -> None:
    """float32 rounding grows with depth and magnitude: |got - want| <= rtol * max|want| (at least rtol)."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    gap, scale = (got - want).abs().max().item(), max(1.0, want.abs().max().item())
    assert gap <= rtol * scale, f"{what}: differs from diffusers' by up to {gap:.3g} (allowed {rtol * scale:.3g})"


class _RefResnet(_DiffusersResnet):
    def __init__(self, in_channels, out_channels, groups):
        super().__init__(in_channels=in_channels, out_channels=out_channels, temb_channels=None, groups=groups,
                         eps=EPS)

    def forward(self, x):
        return super().forward(x, None)


class _RefAttention(_DiffusersAttention):
    def __init__(self, channels, groups):
        super().__init__(channels, heads=1, dim_head=channels, eps=EPS, norm_num_groups=groups,
                         residual_connection=True, bias=True, upcast_softmax=True, _from_deprecated_attn_block=True)


class _RefDownsample(_DiffusersDownsample):
    def __init__(self, channels):
        super().__init__(channels, use_conv=True, out_channels=channels, padding=0, name="op")


class _RefUpsample(_DiffusersUpsample):
    def __init__(self, channels):
        super().__init__(channels, use_conv=True, out_channels=channels)


class _RefMidBlock(_DiffusersMidBlock):
    def __init__(self, channels, groups, attention=True):
        super().__init__(in_channels=channels, temb_channels=None, resnet_eps=EPS, resnet_groups=groups,
                         attention_head_dim=channels, add_attention=attention)

    def forward(self, x):
        return super().forward(x, None)


def _levels(kind: str, config: VAEConfig) -> dict:
    n = len(config.block_out_channels)
    return {f"{kind}_block_types": ("DownEncoderBlock2D" if kind == "down" else "UpDecoderBlock2D",) * n,
            "block_out_channels": tuple(config.block_out_channels), "layers_per_block": config.layers_per_block,
            "norm_num_groups": config.norm_num_groups, "mid_block_add_attention": config.mid_block_add_attention}


class _RefEncoder(_DiffusersEncoder):
    def __init__(self, config):
        super().__init__(in_channels=config.in_channels, out_channels=config.latent_channels, double_z=True,
                         **_levels("down", config))


class _RefDecoder(_DiffusersDecoder):
    def __init__(self, config):
        super().__init__(in_channels=config.latent_channels, out_channels=config.out_channels, **_levels("up", config))


def _reference_vae(config: VAEConfig, seed: int):
    levels = len(config.block_out_channels)
    model = diffusers.AutoencoderKL(
        in_channels=config.in_channels, out_channels=config.out_channels, latent_channels=config.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups, mid_block_add_attention=config.mid_block_add_attention)
    return _randomise(model, seed)


class _using:
    """While the block runs, the notebook's names point at diffusers' modules (then yours come back)."""

    def __init__(self, **replacements):
        self.replacements, self.saved = replacements, {}

    def __enter__(self):
        for name, value in self.replacements.items():
            self.saved[name] = globals().get(name)
            globals()[name] = value

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            globals()[name] = value


def _inputs(shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


# %% [markdown]
# ## Part 1: the ResNet block (3 points)
#
# Every level of the encoder and the decoder is a stack of these blocks. For an input $x$ with $C_{in}$ channels:
#
# $$h = \mathrm{conv}_2\Big(\mathrm{SiLU}\big(\mathrm{GN}_2(\mathrm{conv}_1(\mathrm{SiLU}(\mathrm{GN}_1(x))))\big)\Big), \qquad
# \text{out} = \mathrm{shortcut}(x) + h,$$
#
# with GroupNorm (`norm_num_groups` groups, $\varepsilon$ = `EPS` = $10^{-6}$, not PyTorch's default), 3x3 convolutions
# with padding 1, and a 1x1 convolution as the shortcut **only when** $C_{in} \ne C_{out}$ (otherwise the
# shortcut is the identity, and there must be no such parameter). The normalisation comes *before* each
# convolution ("pre-activation" ResNet): the block can start as the identity, which keeps deep stacks trainable.
#
# **Task**: `ResnetBlock2D(in_channels, out_channels, groups)` with submodules named exactly `norm1`, `conv1`,
# `norm2`, `conv2` and, when the widths differ, `conv_shortcut` (set it to `None` otherwise).

# %% course_grading={"forbidden": ["diffusers", "transformers", "course_lib.vae", "course_lib.models"], "tests": ["test_resnet_block"]} nbgrader={"grade": false, "grade_id": "resnet_block", "locked": false, "schema_version": 3, "solution": true}
class ResnetBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        ### BEGIN SOLUTION
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_resnet_block", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Visible tests: names and shapes, then equality with diffusers' ResnetBlock2D on the same weights.
for _cin, _cout in [(8, 8), (8, 16)]:
    _reference = _randomise(_RefResnet(_cin, _cout, 4), seed=_cout)
    _yours = ResnetBlock2D(_cin, _cout, 4)
    _copy_weights(_yours, _reference)
    _x = _inputs((2, _cin, 6, 6), seed=1)
    with torch.no_grad():
        _close(_yours(_x), _reference(_x), f"ResnetBlock2D({_cin}, {_cout}, 4)")
assert ResnetBlock2D(8, 8, 4).conv_shortcut is None, "equal widths: no conv_shortcut (set it to None)"
### BEGIN HIDDEN TESTS
for _cin, _cout, _groups, _scale in [(16, 8, 8, 1.0), (4, 12, 2, 3.0), (8, 8, 4, 0.01)]:
    _reference = _randomise(_RefResnet(_cin, _cout, _groups), seed=_cin + _cout)
    _yours = ResnetBlock2D(_cin, _cout, _groups)
    _copy_weights(_yours, _reference)
    _x = _inputs((3, _cin, 5, 7), seed=2, scale=_scale)  # scale 0.01: a GroupNorm eps of 1e-5 shows
    with torch.no_grad():
        _close(_yours(_x), _reference(_x), f"ResnetBlock2D({_cin}, {_cout}, {_groups}) on inputs of scale {_scale}")
### END HIDDEN TESTS

# %% [markdown]
# ## Part 2: attention over the positions of a feature map (3 points)
#
# Convolutions only see a 3x3 neighbourhood. At the lowest resolution, SD's VAE lets every position look at
# every other once, with **single-head** self-attention. Treat each of the $H \cdot W$ positions as a token with
# $C$ features: normalise $x$ with GroupNorm, reshape to $(B, HW, C)$, project with three linear layers
# to $Q, K, V$, and
#
# $$\mathrm{out} = x + \mathrm{reshape}\Big(W_o\, \mathrm{softmax}\big(QK^\top / \sqrt{C}\big) V + b_o\Big)$$
#
# (reshape back to $(B, C, H, W)$ before adding the residual $x$).
#
# **Task**: `VAEAttention(channels, groups)` with `group_norm`, `to_q`, `to_k`, `to_v` (each `nn.Linear(C, C)`)
# and `to_out`, an `nn.ModuleList` holding one `nn.Linear(C, C)` (diffusers keeps a dropout after it, hence the
# list: the parameter is named `to_out.0.weight`). In the original SD checkpoint these four projections are
# stored as 1x1 convolutions; a 1x1 convolution over a feature map *is* a linear layer applied at every
# position (assignment 9 turns one into the other).

# %% course_grading={"forbidden": ["diffusers", "transformers", "course_lib.vae", "course_lib.models"], "tests": ["test_attention"]} nbgrader={"grade": false, "grade_id": "vae_attention", "locked": false, "schema_version": 3, "solution": true}
class VAEAttention(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        ### BEGIN SOLUTION
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        B, C, H, W = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(C), dim=-1)  # (B, H*W, H*W)
        h = self.to_out[0](weights @ v).transpose(1, 2).reshape(B, C, H, W)
        return x + h
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_attention", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Visible tests: equality with diffusers' Attention as SD's VAE builds it.
_reference = _randomise(_RefAttention(16, 4), seed=3)
_yours = VAEAttention(16, 4)
_copy_weights(_yours, _reference)
_x = _inputs((2, 16, 4, 4), seed=4)
with torch.no_grad():
    _out = _yours(_x)
    assert _out.shape == _x.shape, f"the output must have the input's shape {tuple(_x.shape)}, got {tuple(_out.shape)}"
    _close(_out, _reference(_x), "VAEAttention(16, 4)")
### BEGIN HIDDEN TESTS
for _channels, _groups, _size in [(8, 2, (3, 5)), (32, 8, (6, 6)), (12, 4, (1, 1))]:
    _reference = _randomise(_RefAttention(_channels, _groups), seed=_channels)
    _yours = VAEAttention(_channels, _groups)
    _copy_weights(_yours, _reference)
    _x = _inputs((3, _channels, *_size), seed=5, scale=2.0)
    with torch.no_grad():
        _close(_yours(_x), _reference(_x), f"VAEAttention({_channels}, {_groups}) on {_size} maps")
### END HIDDEN TESTS

# %% [markdown]
# ## Part 3: changing the resolution (2 points)
#
# - `Downsample2D(channels)`: a 3x3 convolution with **stride 2 and no padding**, after padding the input with
#   one row of zeros at the bottom and one column at the right (`F.pad(x, (0, 1, 0, 1))`). SD inherited this
#   asymmetric padding from its original code; the symmetric `padding=1` gives the same shapes but
#   different numbers, so the real weights would be used wrongly. The conv is named `conv`.
# - `Upsample2D(channels)`: nearest-neighbour upsampling by 2 (`F.interpolate(x, scale_factor=2.0,
#   mode="nearest")`), then a 3x3 convolution with padding 1, named `conv`.

# %% course_grading={"forbidden": ["diffusers", "transformers", "course_lib.vae", "course_lib.models"], "tests": ["test_resample"]} nbgrader={"grade": false, "grade_id": "resample", "locked": false, "schema_version": 3, "solution": true}
class Downsample2D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        ### BEGIN SOLUTION
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        return self.conv(F.pad(x, (0, 1, 0, 1)))
        ### END SOLUTION


class Upsample2D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        ### BEGIN SOLUTION
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_resample", "locked": true, "points": 2, "schema_version": 3, "solution": false}
# Visible tests: shapes, then equality with diffusers' Downsample2D / Upsample2D.
_x = _inputs((2, 8, 8, 8), seed=6)
for _yours, _reference, _size in [(Downsample2D(8), _RefDownsample(8), 4), (Upsample2D(8), _RefUpsample(8), 16)]:
    _copy_weights(_yours, _randomise(_reference, seed=_size))
    with torch.no_grad():
        _out = _yours(_x)
        assert _out.shape == (2, 8, _size, _size), f"{type(_yours).__name__}: expected (2, 8, {_size}, {_size}), got {tuple(_out.shape)}"
        _close(_out, _reference(_x), type(_yours).__name__)
### BEGIN HIDDEN TESTS
for _channels, _hw in [(4, (6, 10)), (16, (2, 2))]:
    _x = _inputs((1, _channels, *_hw), seed=7)
    for _yours, _reference in [(Downsample2D(_channels), _RefDownsample(_channels)),
                               (Upsample2D(_channels), _RefUpsample(_channels))]:
        _copy_weights(_yours, _randomise(_reference, seed=_channels))
        with torch.no_grad():
            _close(_yours(_x), _reference(_x), f"{type(_yours).__name__}({_channels}) on {_hw}")
### END HIDDEN TESTS

# %% [markdown]
# ## Part 4: the middle block (2 points)
#
# At the lowest resolution, both the encoder and the decoder run `resnets[0]`, then `attentions[0]`, then
# `resnets[1]` (two ResNet blocks of equal width around one attention). `MidBlock2D(channels, groups, attention)`
# keeps them in two `nn.ModuleList`s named `resnets` and `attentions`; with `attention=False` (the config's
# `mid_block_add_attention`) the `attentions` list is empty and the block is just the two ResNets.
# Build the parts from **your** classes of parts 1 and 2 (the test swaps in diffusers' versions of them).

# %% course_grading={"forbidden": ["diffusers", "transformers", "course_lib.vae", "course_lib.models"], "tests": ["test_mid_block"]} nbgrader={"grade": false, "grade_id": "mid_block", "locked": false, "schema_version": 3, "solution": true}
class MidBlock2D(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool = True):
        super().__init__()
        ### BEGIN SOLUTION
        self.attentions = nn.ModuleList([VAEAttention(channels, groups)] if attention else [])
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups) for _ in range(2)])
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_mid_block", "locked": true, "points": 2, "schema_version": 3, "solution": false}
# Visible tests: with diffusers' ResNet and attention inside, your block equals diffusers' UNetMidBlock2D.
with _using(ResnetBlock2D=_RefResnet, VAEAttention=_RefAttention):
    _yours = MidBlock2D(16, 4)
_reference = _randomise(_RefMidBlock(16, 4), seed=8)
_copy_weights(_yours, _reference)
_x = _inputs((2, 16, 4, 4), seed=9)
with torch.no_grad():
    _close(_yours(_x), _reference(_x), "MidBlock2D(16, 4)")
### BEGIN HIDDEN TESTS
for _channels, _groups, _attention in [(8, 2, False), (32, 8, True)]:
    with _using(ResnetBlock2D=_RefResnet, VAEAttention=_RefAttention):
        _yours = MidBlock2D(_channels, _groups, _attention)
    _reference = _randomise(_RefMidBlock(_channels, _groups, _attention), seed=_channels)
    _copy_weights(_yours, _reference)
    _x = _inputs((1, _channels, 3, 5), seed=10)
    with torch.no_grad():
        _close(_yours(_x), _reference(_x), f"MidBlock2D({_channels}, {_groups}, attention={_attention})")
### END HIDDEN TESTS

# %% [markdown]
# ## Part 5: the encoder (3 points)
#
# With widths $w_0, \dots, w_{n-1}$ = `config.block_out_channels` and $L$ = `config.layers_per_block`:
#
# 1. `conv_in`: 3x3 conv (padding 1) from `in_channels` to $w_0$;
# 2. `down_blocks`: an `nn.ModuleList` of $n$ levels. Level $i$ is a module with `resnets`, an `nn.ModuleList`
#    of $L$ ResNet blocks (the first goes from $w_{i-1}$ to $w_i$, with $w_{-1} = w_0$; the others keep $w_i$),
#    and, on every level but the last, `downsamplers`: an `nn.ModuleList` holding one `Downsample2D(w_i)`;
# 3. `mid_block`: `MidBlock2D` at width $w_{n-1}$ (attention if `config.mid_block_add_attention`);
# 4. `conv_norm_out` (GroupNorm, eps `EPS`), SiLU, and `conv_out`: 3x3 conv to **2 x latent_channels**: the mean
#    and the log-variance of $q(z|x)$ for every latent position.
#
# The level module's name does not show in the state dict (only its attributes do): a small `nn.Module` with
# those attributes, or a bare `nn.Module()` you attach them to, both work. Use your classes of parts 1-4.

# %% course_grading={"forbidden": ["diffusers", "transformers", "course_lib.vae", "course_lib.models"], "tests": ["test_encoder"]} nbgrader={"grade": false, "grade_id": "encoder", "locked": false, "schema_version": 3, "solution": true}
class Encoder(nn.Module):
    """x (B, in_channels, H, W) -> (B, 2 * latent_channels, H / f, W / f)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        ### BEGIN SOLUTION
        widths, g = config.block_out_channels, config.norm_num_groups
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        for i, width in enumerate(widths):
            level = nn.Module()
            level.resnets = nn.ModuleList(ResnetBlock2D(widths[max(i - 1, 0)] if j == 0 else width, width, g)
                                          for j in range(config.layers_per_block))
            if i < len(widths) - 1:
                level.downsamplers = nn.ModuleList([Downsample2D(width)])
            self.down_blocks.append(level)
        self.mid_block = MidBlock2D(widths[-1], g, config.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(g, widths[-1], eps=EPS)
        self.conv_out = nn.Conv2d(widths[-1], 2 * config.latent_channels, 3, padding=1)
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        h = self.conv_in(x)
        for level in self.down_blocks:
            for resnet in level.resnets:
                h = resnet(h)
            for downsample in getattr(level, "downsamplers", []):
                h = downsample(h)
        h = self.mid_block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_encoder", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Visible tests: with diffusers' blocks inside, your Encoder equals diffusers' Encoder (double_z=True).
_REFERENCE_BLOCKS = dict(ResnetBlock2D=_RefResnet, VAEAttention=_RefAttention, Downsample2D=_RefDownsample,
                         Upsample2D=_RefUpsample, MidBlock2D=_RefMidBlock)
with _using(**_REFERENCE_BLOCKS):
    _yours = Encoder(SMALL)
_reference = _randomise(_RefEncoder(SMALL), seed=11)
_copy_weights(_yours, _reference)
_x = _inputs((2, 3, 16, 16), seed=12)
with torch.no_grad():
    _out = _yours(_x)
    assert _out.shape == (2, 2 * SMALL.latent_channels, 8, 8), (
        f"expected (2, {2 * SMALL.latent_channels}, 8, 8): mean and log-variance per latent channel, got {tuple(_out.shape)}")
    _close(_out, _reference(_x), "Encoder(SMALL)", rtol=1e-5)
### BEGIN HIDDEN TESTS
for _config in [VAEConfig(in_channels=1, latent_channels=2, block_out_channels=(8, 8, 16), layers_per_block=2,
                          norm_num_groups=4, mid_block_add_attention=False),
                VAEConfig(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8)]:
    with _using(**_REFERENCE_BLOCKS):
        _yours = Encoder(_config)
    _reference = _randomise(_RefEncoder(_config), seed=13)
    _copy_weights(_yours, _reference)
    _x = _inputs((1, _config.in_channels, 16, 24), seed=14)
    with torch.no_grad():
        _close(_yours(_x), _reference(_x), f"Encoder({_config})", rtol=1e-5)
### END HIDDEN TESTS

# %% [markdown]
# ## Part 6: the decoder (3 points)
#
# The mirror image, widest level first: with $v_0, \dots, v_{n-1}$ = `reversed(config.block_out_channels)`,
#
# 1. `conv_in`: 3x3 conv from `latent_channels` to $v_0$, then `mid_block` at width $v_0$;
# 2. `up_blocks`: $n$ levels; level $i$ has `resnets` with **$L + 1$** ResNet blocks (the first from $v_{i-1}$ to
#    $v_i$, with $v_{-1} = v_0$) and, on every level but the last, `upsamplers` holding one `Upsample2D(v_i)`.
#    The extra block per level gives the decoder more capacity than the encoder: decoding (inventing detail)
#    is the harder direction;
# 3. `conv_norm_out` (GroupNorm at width $v_{n-1}$, eps `EPS`), SiLU, `conv_out`: 3x3 conv to `out_channels`.
#    The output is unbounded (no tanh).

# %% course_grading={"forbidden": ["diffusers", "transformers", "course_lib.vae", "course_lib.models"], "tests": ["test_decoder"]} nbgrader={"grade": false, "grade_id": "decoder", "locked": false, "schema_version": 3, "solution": true}
class Decoder(nn.Module):
    """z (B, latent_channels, h, w) -> (B, out_channels, h * f, w * f)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        ### BEGIN SOLUTION
        widths, g = tuple(reversed(config.block_out_channels)), config.norm_num_groups
        self.conv_in = nn.Conv2d(config.latent_channels, widths[0], 3, padding=1)
        self.mid_block = MidBlock2D(widths[0], g, config.mid_block_add_attention)
        self.up_blocks = nn.ModuleList()
        for i, width in enumerate(widths):
            level = nn.Module()
            level.resnets = nn.ModuleList(ResnetBlock2D(widths[max(i - 1, 0)] if j == 0 else width, width, g)
                                          for j in range(config.layers_per_block + 1))
            if i < len(widths) - 1:
                level.upsamplers = nn.ModuleList([Upsample2D(width)])
            self.up_blocks.append(level)
        self.conv_norm_out = nn.GroupNorm(g, widths[-1], eps=EPS)
        self.conv_out = nn.Conv2d(widths[-1], config.out_channels, 3, padding=1)
        ### END SOLUTION

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        h = self.mid_block(self.conv_in(z))
        for level in self.up_blocks:
            for resnet in level.resnets:
                h = resnet(h)
            for upsample in getattr(level, "upsamplers", []):
                h = upsample(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_decoder", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Visible tests: with diffusers' blocks inside, your Decoder equals diffusers' Decoder.
with _using(**_REFERENCE_BLOCKS):
    _yours = Decoder(SMALL)
_reference = _randomise(_RefDecoder(SMALL), seed=15)
_copy_weights(_yours, _reference)
_z = _inputs((2, SMALL.latent_channels, 8, 8), seed=16)
with torch.no_grad():
    _out = _yours(_z)
    assert _out.shape == (2, 3, 16, 16), f"expected (2, 3, 16, 16), got {tuple(_out.shape)}"
    _close(_out, _reference(_z), "Decoder(SMALL)", rtol=1e-5)
### BEGIN HIDDEN TESTS
for _config in [VAEConfig(out_channels=1, latent_channels=2, block_out_channels=(8, 8, 16), layers_per_block=2,
                          norm_num_groups=4, mid_block_add_attention=False),
                VAEConfig(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8)]:
    with _using(**_REFERENCE_BLOCKS):
        _yours = Decoder(_config)
    _reference = _randomise(_RefDecoder(_config), seed=17)
    _copy_weights(_yours, _reference)
    _z = _inputs((1, _config.latent_channels, 2, 3), seed=18)
    with torch.no_grad():
        _close(_yours(_z), _reference(_z), f"Decoder({_config})", rtol=1e-5)
### END HIDDEN TESTS

# %% [markdown]
# ## Part 7: the whole VAE (3 points)
#
# `AutoencoderKL(config)` holds `encoder`, `decoder` and two 1x1 convolutions around the latent (the names come
# from VQGAN, where a quantiser sat between them):
#
# - `quant_conv`: `nn.Conv2d(2c, 2c, 1)` applied to the encoder's output; split the result along the channels
#   into mean (first $c$) and log-variance (last $c$), and **clamp the log-variance to $[-30, 20]$** as SD does
#   ($\sigma$ stays between $3 \cdot 10^{-7}$ and $2 \cdot 10^{4}$);
# - `post_quant_conv`: `nn.Conv2d(c, c, 1)` applied to $z$ before the decoder.
#
# Methods:
# - `encode(x)` -> `(mean, logvar)`, each $(B, c, H/f, W/f)$;
# - `decode(z)` -> the image $(B, C_{out}, H, W)$;
# - `forward(x, sample_posterior=False, generator=None)`: decode the mean, or, with `sample_posterior=True`, a
#   sample $z = \mu + \sigma \varepsilon$ with `noise = torch.randn(mean.shape, generator=generator)` drawn in one
#   call (so that the same generator gives diffusers' sample).
#
# After this part, `AutoencoderKL(VAEConfig())` loads the real SD v1.5 VAE (see "Going further").

# %% course_grading={"forbidden": ["diffusers", "transformers", "course_lib.vae", "course_lib.models"], "tests": ["test_autoencoder"]} nbgrader={"grade": false, "grade_id": "autoencoder_kl", "locked": false, "schema_version": 3, "solution": true}
class AutoencoderKL(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        ### BEGIN SOLUTION
        c = config.latent_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1)
        self.post_quant_conv = nn.Conv2d(c, c, 1)
        ### END SOLUTION

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ### BEGIN SOLUTION
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)
        ### END SOLUTION

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        return self.decoder(self.post_quant_conv(z))
        ### END SOLUTION

    def forward(self, x: torch.Tensor, sample_posterior: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        ### BEGIN SOLUTION
        mean, logvar = self.encode(x)
        if not sample_posterior:
            return self.decode(mean)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return self.decode(mean + torch.exp(0.5 * logvar) * noise)
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_autoencoder", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Visible tests: with diffusers' Encoder and Decoder inside, your AutoencoderKL equals diffusers' AutoencoderKL:
# its state dict loads strictly, and posterior, reconstruction and a sampled reconstruction agree.
def _check_vae(config, seed, size):
    with _using(Encoder=_RefEncoder, Decoder=_RefDecoder):
        yours = AutoencoderKL(config)
    reference = _reference_vae(config, seed)
    _copy_weights(yours, reference)
    x = _inputs((2, config.in_channels, *size), seed=seed + 1)
    with torch.no_grad():
        mean, logvar = yours.encode(x)
        posterior = reference.encode(x).latent_dist
        _close(mean, posterior.mean, "the mean of q(z|x)")
        _close(logvar, posterior.logvar, "the log-variance of q(z|x)")
        _close(yours(x), reference(x).sample, "the reconstruction through the mean")
        _close(yours(x, sample_posterior=True, generator=torch.Generator().manual_seed(seed)),
               reference(x, sample_posterior=True, generator=torch.Generator().manual_seed(seed)).sample,
               "the reconstruction of a sampled z (same generator)")
        z = _inputs(mean.shape, seed=seed + 2)
        _close(yours.decode(z), reference.decode(z).sample, "decode(z)")


_check_vae(SMALL, seed=19, size=(16, 16))
### BEGIN HIDDEN TESTS
_check_vae(VAEConfig(in_channels=1, out_channels=2, latent_channels=3, block_out_channels=(8, 8, 16),
                     layers_per_block=2, norm_num_groups=4, mid_block_add_attention=False), seed=20, size=(8, 12))
_big = VAEConfig(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4)
with _using(Encoder=_RefEncoder, Decoder=_RefDecoder):
    _yours = AutoencoderKL(_big)
_reference = _reference_vae(_big, seed=21)
with torch.no_grad():  # a log-variance far outside [-30, 20] must be clamped as diffusers does
    _reference.quant_conv.bias[_big.latent_channels:] += 100.0
_copy_weights(_yours, _reference)
_x = _inputs((1, 3, 8, 8), seed=22)
with torch.no_grad():
    _close(_yours.encode(_x)[1], _reference.encode(_x).latent_dist.logvar, "the clamped log-variance")
### END HIDDEN TESTS

# %% [markdown]
# ## Your VAE, end to end
#
# All parts together, your classes only: the whole model's state dict has exactly diffusers' names, so the
# weights of *any* `AutoencoderKL` of this shape load into it. The cell below checks it on a model with
# the tiny Stable Diffusion's shape (not graded: the tests above already did, part by part).

# %%
_tiny = VAEConfig(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8)
_reference = _reference_vae(_tiny, seed=23)
vae = AutoencoderKL(_tiny)
vae.load_state_dict(_reference.state_dict(), strict=True)
vae.eval()
_x = _inputs((1, 3, 64, 64), seed=24)
with torch.no_grad():
    _gap = (vae(_x) - _reference(_x).sample).abs().max().item()
print(f"{sum(p.numel() for p in vae.parameters()):,} parameters; 3 x 64 x 64 -> latent "
      f"{tuple(vae.encode(_x)[0].shape[1:])}; largest difference from diffusers: {_gap:.2e}")

# %% [markdown]
# ## Training it for two minutes (optional, not graded)
#
# Random weights reconstruct nothing. The loop below trains a small `AutoencoderKL` of yours on the course's
# coloured shapes (32 x 32 -> 4 x 8 x 8) with the negative ELBO of assignment 1 and a small $\beta$, as SD did
# (with a perceptual and an adversarial loss on top). The graders skip it.

# %%
if not AUTOGRADE:
    from course_lib.data import shapes_batch
    from course_lib.viz import show_images

    torch.manual_seed(SEED)
    _config = VAEConfig(block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8)
    model = AutoencoderKL(_config)
    images = shapes_batch(512, seed=SEED)["image"]  # (512, 3, 32, 32) in [-1, 1]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(SEED)
    for step in range(20 if FAST else 500):
        x = images[torch.randint(len(images), (32,), generator=generator)]
        mean, logvar = model.encode(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)
        reconstruction = (model.decode(z) - x).pow(2).flatten(1).sum(1).mean()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean()
        loss = reconstruction + 1e-3 * kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        _rec = model(images[:8]).clamp(-1, 1)
    print(f"after {step + 1} steps: reconstruction error per image {reconstruction.item():.1f}")
    fig = show_images(torch.cat([images[:8], _rec]), ncols=8)

# %% [markdown]
# ## Going further (not graded)
#
# - **The real weights** (Colab, 335 MB download): `diffusers.AutoencoderKL.from_pretrained(
#   "stable-diffusion-v1-5/stable-diffusion-v1-5", subfolder="vae")`, then `AutoencoderKL(VAEConfig())` of yours
#   and `load_state_dict(their.state_dict())`. Encode a photo (scaled to [-1, 1], 512 x 512), decode it: the
#   reconstruction is nearly perfect although the latent holds 48x fewer numbers.
# - Measure the latents' standard deviation on a few photos: about 1 / 0.18215. That is where SD's
#   `scaling_factor` comes from (lecture 4).
# - Assignment 9 loads the same weights from the *original* checkpoint file, where the attention's projections
#   are 1x1 convolutions and every name is different.

# %% [markdown]
# ## Submitting
#
# 1. Run every cell from the top (*Kernel -> Restart & Run All*) and check that the visible tests pass.
# 2. Submit **`a8_conv_vae.ipynb`** (nothing else: no weights are graded here).
#    The graders run your notebook with `COURSE_AUTOGRADE=1` on a CPU; the optional training is skipped.
# 3. Do not rename the notebook, and do not change the read-only cells: they are restored before grading.

# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Assignment 2: attention, from one formula to diffusers' layer
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/2026-fall/assignments/a2_attention/a2_attention.ipynb)
#
# Every transformer block in Stable Diffusion's UNet has two attention layers: *self-attention*, where each
# position of the latent image looks at all the others, and *cross-attention*, where each position looks at the
# words of the prompt. In this assignment you write attention from its formula, add masks and several heads, and
# finish by loading the weights of a real diffusers `Attention` layer into your module: same numbers out.
#
# **What you will learn**
# - scaled dot-product attention, and why the scores are divided by $\sqrt d$;
# - masks: causal (no peeking at later tokens) and padding (ignore the filler tokens of short prompts);
# - multi-head attention with one reshape instead of a loop over heads;
# - self- versus cross-attention, and how diffusers names and stores the weights.
#
# **Prerequisites**: PyTorch basics (`nn.Linear`, broadcasting, `softmax`); lecture 2 (attention and transformers).
#
# **Time**: 1-3 hours of work. Everything runs in seconds on a laptop CPU (no training, no GPU needed).
#
# **Points** (14 in total, all autograded):
#
# | part | what | points |
# |---|---|---|
# | 1 | `scaled_dot_product_attention` | 2 |
# | 2 | `causal_mask`, `padding_mask` (2) and attention with a mask (2) | 4 |
# | 3 | `split_heads`, `merge_heads` | 2 |
# | 4 | `MultiHeadAttention` | 3 |
# | 5 | `load_diffusers_attention`: your module matches diffusers | 3 |
#
# Each test cell is all-or-nothing. Tests of later parts use reference versions of earlier parts, so a mistake
# costs points only once. Hidden tests (run when grading) compare with `torch.nn.functional.scaled_dot_product_attention`,
# einops and diffusers on random inputs; the visible ones catch the usual mistakes early.

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
# Parameters (read-only). This assignment trains nothing; FAST and AUTOGRADE follow the course's conventions.
import os

FAST = False
AUTOGRADE = os.environ.get("COURSE_AUTOGRADE") == "1"  # set by the graders
SEED = 0

# %%
import math
import warnings

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(SEED)


# %% [markdown]
# ## Part 1: scaled dot-product attention (2 points)
#
# Queries $Q$ (shape $L_q \times d$) ask, keys $K$ ($L_k \times d$) answer, values $V$ ($L_k \times d_v$) are what gets
# mixed:
#
# $$\operatorname{Attention}(Q, K, V) = \underbrace{\operatorname{softmax}\!\left(\frac{Q K^\top}{\sqrt d}\right)}_{A,\ L_q \times L_k} V .$$
#
# Row $i$ of $A$ says how much query $i$ takes from each value; the softmax runs **over the keys** (the last axis),
# so every row sums to 1. Why $\sqrt d$? A dot product of two random vectors with unit-variance entries has variance
# $d$; dividing by $\sqrt d$ brings the scores back to variance 1, so the softmax does not saturate into a one-hot
# vector whose gradients vanish.
#
# **Task**: implement `scaled_dot_product_attention(q, k, v, mask=None)` returning `(output, weights)`: output
# `(..., Lq, dv)`, weights $A$ `(..., Lq, Lk)`. Leading dimensions (batch, heads) broadcast. Ignore `mask` until part 2.

# %% nbgrader={"grade": false, "grade_id": "scaled_dot_product_attention", "locked": false, "schema_version": 3, "solution": true}
def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d)) v. q: (..., Lq, d), k: (..., Lk, d), v: (..., Lk, dv).

    mask: bool, broadcastable to (..., Lq, Lk); True = may attend, False = blocked (part 2).
    Returns (output (..., Lq, dv), weights (..., Lq, Lk)).
    """
    ### BEGIN SOLUTION
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (..., Lq, Lk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # blocked keys get zero weight after the softmax
    weights = scores.softmax(dim=-1)  # over the keys: each row sums to 1
    return weights @ v, weights
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false}
# Visible tests: shapes, rows sum to 1, known cases.
_q, _k, _v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 6)
_out, _w = scaled_dot_product_attention(_q, _k, _v)
assert _out.shape == (2, 3, 6) and _w.shape == (2, 3, 5), (
    f"expected output (2, 3, 6) and weights (2, 3, 5), got {tuple(_out.shape)} and {tuple(_w.shape)}")
assert torch.allclose(_w.sum(dim=-1), torch.ones(2, 3)), (
    "every row of the weights must sum to 1. Hint: the softmax runs over the keys, the last axis.")
_out, _ = scaled_dot_product_attention(torch.zeros(1, 2, 4), torch.randn(1, 5, 4), _v[:1])
assert torch.allclose(_out, _v[:1].mean(dim=1, keepdim=True).expand(1, 2, 6), atol=1e-6), (
    "a zero query scores every key equally, so its output is the plain average of the values")
_q = torch.tensor([[[2.0, 0.0, 0.0, 0.0]]])
_k = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
_, _w = scaled_dot_product_attention(_q, _k, torch.randn(1, 2, 3))
_expected = torch.tensor([1.0, 0.0]).softmax(dim=0)  # scores q.k = (2, 0), divided by sqrt(4) = 2
assert torch.allclose(_w.flatten(), _expected, atol=1e-5), (
    f"expected weights {_expected.tolist()}, got {_w.flatten().tolist()}. Hint: divide the scores by sqrt(d), d = 4.")
### BEGIN HIDDEN TESTS
_g = torch.Generator().manual_seed(11)
for _shape_q, _shape_k, _dv in [((2, 7, 8), (2, 5, 8), 3), ((2, 4, 6, 16), (2, 4, 9, 16), 16), ((1, 1, 1, 5), (1, 1, 3, 5), 2)]:
    _q = torch.randn(_shape_q, generator=_g) * 2
    _k = torch.randn(_shape_k, generator=_g) * 2
    _v = torch.randn(*_shape_k[:-1], _dv, generator=_g)
    _out, _w = scaled_dot_product_attention(_q, _k, _v)
    assert torch.allclose(_out, F.scaled_dot_product_attention(_q, _k, _v), atol=1e-5)
    assert torch.allclose(_w, (_q @ _k.transpose(-2, -1) * _q.shape[-1] ** -0.5).softmax(-1), atol=1e-6)
### END HIDDEN TESTS

# %% [markdown]
# ## Part 2: masks (4 points)
#
# A mask says which keys each query may look at. We follow PyTorch's convention: a **bool** tensor, `True` = may
# attend, broadcastable to the scores' shape `(..., Lq, Lk)`. Blocked scores are set to $-\infty$ **before** the
# softmax, so they get exactly zero weight and the remaining weights still sum to 1.
#
# - **Causal mask** `(n, n)`: position $i$ may look at positions $j \le i$ only (a text decoder must not see the future).
# - **Padding mask** `(B, max_len)`: prompts in a batch have different lengths and are padded to `max_len`;
#   position $j$ of example $b$ is real (True) if $j < \text{lengths}[b]$. In cross-attention it blocks keys:
#   reshaped to `(B, 1, 1, max_len)`, it broadcasts over heads and queries.
#
# **Tasks**: implement `causal_mask(n)` and `padding_mask(lengths, max_len)`, then go back to part 1 and make
# `scaled_dot_product_attention` honour `mask`.

# %% nbgrader={"grade": false, "grade_id": "masks", "locked": false, "schema_version": 3, "solution": true}
def causal_mask(n: int) -> torch.Tensor:
    """(n, n) bool: True where key j <= query i (the diagonal included)."""
    ### BEGIN SOLUTION
    return torch.ones(n, n, dtype=torch.bool).tril()
    ### END SOLUTION


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, max_len) bool: True at positions j < lengths[b] (real tokens), False at padding."""
    ### BEGIN SOLUTION
    positions = torch.arange(max_len, device=lengths.device)  # (max_len,)
    return positions[None, :] < lengths[:, None]  # (B, max_len)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_masks", "locked": true, "points": 2, "schema_version": 3, "solution": false}
# Visible tests: small known masks.
assert causal_mask(3).dtype == torch.bool, "masks are bool tensors (True = may attend)"
assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]], (
    f"causal_mask(3) should be lower-triangular, diagonal included; got {causal_mask(3).tolist()}")
_m = padding_mask(torch.tensor([2, 4]), 4)
assert _m.dtype == torch.bool and _m.tolist() == [[True, True, False, False], [True, True, True, True]], (
    f"padding_mask([2, 4], 4) should be [[T, T, F, F], [T, T, T, T]]; got {_m.tolist()}")
### BEGIN HIDDEN TESTS
for _n in [1, 2, 7, 16]:
    assert torch.equal(causal_mask(_n), torch.tril(torch.ones(_n, _n)).bool())
_g = torch.Generator().manual_seed(22)
for _b, _max in [(5, 9), (1, 1), (3, 4)]:
    _lengths = torch.randint(1, _max + 1, (_b,), generator=_g)
    _expected = torch.stack([torch.cat([torch.ones(int(_l)), torch.zeros(_max - int(_l))]) for _l in _lengths]).bool()
    assert torch.equal(padding_mask(_lengths, _max), _expected)
### END HIDDEN TESTS

# %% nbgrader={"grade": true, "grade_id": "test_attention_mask", "locked": true, "points": 2, "schema_version": 3, "solution": false}
# Visible tests: attention with a causal mask (reference masks here, so this does not depend on causal_mask).
_causal = torch.tril(torch.ones(4, 4)).bool()
_q, _k, _v = torch.randn(1, 4, 8), torch.randn(1, 4, 8), torch.randn(1, 4, 3)
_out, _w = scaled_dot_product_attention(_q, _k, _v, mask=_causal)
assert torch.all(_w[0][~_causal] == 0), "blocked positions must get exactly zero weight"
assert torch.allclose(_w.sum(dim=-1), torch.ones(1, 4), atol=1e-6), (
    "rows must still sum to 1 with a mask. Hint: block the scores (-inf) BEFORE the softmax, not the weights after it.")
assert torch.allclose(_out[0, 0], _v[0, 0], atol=1e-6), "the first query may only see the first key: its output is v[0]"
### BEGIN HIDDEN TESTS
_g = torch.Generator().manual_seed(33)
for _shape_q, _shape_k in [((2, 3, 6, 8), (2, 3, 6, 8)), ((2, 1, 5, 4), (2, 1, 7, 4))]:
    _q, _k, _v = (torch.randn(_shape_k if _i else _shape_q, generator=_g) for _i in range(3))
    _mask = torch.rand(_shape_q[0], 1, _shape_q[2], _shape_k[2], generator=_g) < 0.6
    _mask[..., 0] = True  # every query keeps at least one key
    _out, _w = scaled_dot_product_attention(_q, _k, _v, mask=_mask)
    assert torch.allclose(_out, F.scaled_dot_product_attention(_q, _k, _v, attn_mask=_mask), atol=1e-5)
    assert torch.all(_w.masked_select(~_mask.expand_as(_w)) == 0)
_q, _k, _v = torch.randn(2, 6, 4, generator=_g), torch.randn(2, 6, 4, generator=_g), torch.randn(2, 6, 4, generator=_g)
_causal = torch.tril(torch.ones(6, 6)).bool()
assert torch.allclose(scaled_dot_product_attention(_q, _k, _v, mask=_causal)[0],
                      F.scaled_dot_product_attention(_q, _k, _v, is_causal=True), atol=1e-5)
### END HIDDEN TESTS

# %%
# What the masks do to the weights: 6 queries x 6 keys, no mask / causal / padding (last 2 keys are padding).
_q, _k, _v = torch.randn(6, 8), torch.randn(6, 8), torch.randn(6, 8)
try:
    _masks = {"no mask": None, "causal": causal_mask(6), "padding (length 4)": padding_mask(torch.tensor([4]), 6)}
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    for ax, (name, m) in zip(axes, _masks.items()):
        ax.imshow(scaled_dot_product_attention(_q, _k, _v, mask=m)[1].squeeze(0), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(name)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.tight_layout()
except NotImplementedError:
    print("(implement parts 1 and 2 to see the attention weights)")


# %% [markdown]
# ## Part 3: many heads, one reshape (2 points)
#
# With $h$ heads, a layer of width `dim` gives each head $d = \text{dim}/h$ channels: head $i$ owns channels
# $i d, \dots, (i+1)d - 1$ of the projected queries, keys and values. Looping over heads would launch $h$ small
# matrix products; instead we **reshape** `(B, N, h*d)` to `(B, h, N, d)` and let the batched matmul in
# `scaled_dot_product_attention` treat the heads as one more batch dimension. Afterwards the heads are merged
# back to `(B, N, h*d)`. (einops writes this as `rearrange(x, "b n (h d) -> b h n d", h=h)`; `view` and
# `transpose` do it too.)
#
# **Task**: implement `split_heads(x, num_heads)` and `merge_heads(x)`.

# %% nbgrader={"grade": false, "grade_id": "heads", "locked": false, "schema_version": 3, "solution": true}
def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, num_heads * d) -> (B, num_heads, N, d); head i takes channels i*d ... (i+1)*d - 1."""
    ### BEGIN SOLUTION
    B, N, C = x.shape
    return x.view(B, N, num_heads, C // num_heads).transpose(1, 2)  # (B, h, N, d)
    ### END SOLUTION


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, h, N, d) -> (B, N, h * d), the inverse of split_heads."""
    ### BEGIN SOLUTION
    B, h, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, h * d)  # (B, N, h*d)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_heads", "locked": true, "points": 2, "schema_version": 3, "solution": false}
# Visible tests: shapes, which channels go to which head, round trip.
_x = torch.arange(2 * 3 * 8, dtype=torch.float32).view(2, 3, 8)
_s = split_heads(_x, 4)
assert _s.shape == (2, 4, 3, 2), f"split_heads((2, 3, 8), 4) should have shape (2, 4, 3, 2), got {tuple(_s.shape)}"
assert torch.equal(_s[0, 1, 0], _x[0, 0, 2:4]), (
    "head 1 of token 0 should hold channels 2 and 3. Hint: view as (B, N, h, d) first, then swap N and h.")
assert torch.equal(merge_heads(_s), _x), "merge_heads(split_heads(x)) must give x back"
### BEGIN HIDDEN TESTS
from einops import rearrange

_g = torch.Generator().manual_seed(44)
for _shape, _h in [((2, 5, 12), 3), ((1, 1, 8), 8), ((3, 7, 16), 1)]:
    _x = torch.randn(_shape, generator=_g)
    assert torch.equal(split_heads(_x, _h), rearrange(_x, "b n (h d) -> b h n d", h=_h))
    _y = torch.randn(_shape[0], _h, _shape[1], _shape[2] // _h, generator=_g)
    assert torch.equal(merge_heads(_y), rearrange(_y, "b h n d -> b n (h d)"))
### END HIDDEN TESTS

# %% [markdown]
# ## Part 4: multi-head self- and cross-attention (3 points)
#
# $$\operatorname{MHA}(x, c) = W_O\, \operatorname{merge}\big(\operatorname{Attention}(\operatorname{split}(W_Q x),\ \operatorname{split}(W_K c),\ \operatorname{split}(W_V c))\big)$$
#
# *Self-attention*: the context is the input itself, $c = x$. *Cross-attention*: $c$ is another sequence, e.g. the
# text encoder's token embeddings, with its own width `context_dim`; only $W_K$ and $W_V$ see it.
#
# **Task**: write `MultiHeadAttention(dim, num_heads, context_dim=None)` with exactly these submodules, named as in
# diffusers (part 5 depends on it):
#
# - `to_q`: `nn.Linear(dim, dim, bias=False)`; `to_k`, `to_v`: `nn.Linear(context_dim, dim, bias=False)`
#   (`context_dim` defaults to `dim`);
# - `to_out`: `nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])` (the output projection has a bias).
#
# `forward(x, context=None, mask=None)`: `x` is `(B, N, dim)`, `context` is `(B, M, context_dim)` or None (then
# self-attention), `mask` is a `(B, M)` padding mask or None. Use your `split_heads`, `scaled_dot_product_attention`
# and `merge_heads`: no loop over heads. Return `(B, N, dim)`.

# %% nbgrader={"grade": false, "grade_id": "multi_head_attention", "locked": false, "schema_version": 3, "solution": true}
class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads={num_heads}, got dim={dim}")
        self.num_heads = num_heads
        ### BEGIN SOLUTION
        context_dim = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        ### END SOLUTION

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        ### BEGIN SOLUTION
        context = x if context is None else context
        q = split_heads(self.to_q(x), self.num_heads)        # (B, h, N, d)
        k = split_heads(self.to_k(context), self.num_heads)  # (B, h, M, d)
        v = split_heads(self.to_v(context), self.num_heads)  # (B, h, M, d)
        if mask is not None:
            mask = mask[:, None, None, :]  # (B, M) -> (B, 1, 1, M): same keys for every head and query
        out, _ = scaled_dot_product_attention(q, k, v, mask=mask)
        return self.to_out[1](self.to_out[0](merge_heads(out)))  # (B, N, dim)
        ### END SOLUTION


# %% nbgrader={"grade": false, "grade_id": "reference_pieces", "locked": true, "schema_version": 3, "solution": false}
# Reference versions of parts 1-3 (torch's fused attention, einops), used by the tests of parts 4 and 5 so that
# those tests grade only parts 4 and 5.
from einops import rearrange

def _reference_attention(q, k, v, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None

def _reference_split(x, num_heads):
    return rearrange(x, "b n (h d) -> b h n d", h=num_heads)

def _reference_merge(x):
    return rearrange(x, "b h n d -> b n (h d)")

def _use_references():
    """Swap in the references; returns the student's versions to put back."""
    global scaled_dot_product_attention, split_heads, merge_heads
    yours = (scaled_dot_product_attention, split_heads, merge_heads)
    scaled_dot_product_attention, split_heads, merge_heads = _reference_attention, _reference_split, _reference_merge
    return yours

def _restore(yours):
    global scaled_dot_product_attention, split_heads, merge_heads
    scaled_dot_product_attention, split_heads, merge_heads = yours


# %% nbgrader={"grade": true, "grade_id": "test_multi_head_attention", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Visible tests: names and shapes of self- and cross-attention.
_yours = _use_references()
try:
    _layer = MultiHeadAttention(32, num_heads=4, context_dim=16)
    _names = sorted(name for name, _ in _layer.named_parameters())
    assert _names == ["to_k.weight", "to_out.0.bias", "to_out.0.weight", "to_q.weight", "to_v.weight"], (
        f"parameter names must follow diffusers: got {_names}")
    assert _layer.to_k.weight.shape == (32, 16), "to_k maps context_dim=16 to dim=32: weight shape (32, 16)"
    _x, _c = torch.randn(2, 5, 32), torch.randn(2, 3, 16)
    assert _layer(_x, context=_c).shape == (2, 5, 32), "cross-attention output must have the shape of x"
    assert MultiHeadAttention(32, 4)(_x).shape == (2, 5, 32), "self-attention output must have the shape of x"
    ### BEGIN HIDDEN TESTS
    _g = torch.Generator().manual_seed(55)
    for _dim, _h, _cdim in [(24, 3, 10), (16, 1, None), (32, 8, 32)]:
        torch.manual_seed(int(torch.randint(0, 1000, (1,), generator=_g)))
        _layer = MultiHeadAttention(_dim, _h, context_dim=_cdim).eval()
        _x = torch.randn(2, 6, _dim, generator=_g)
        _c = _x if _cdim is None else torch.randn(2, 4, _cdim, generator=_g)
        _mask = torch.rand(2, _c.shape[1], generator=_g) < 0.7
        _mask[:, 0] = True
        # an independent reference: one head at a time, plain matrix products
        _d = _dim // _h
        _q, _k, _v = _x @ _layer.to_q.weight.T, _c @ _layer.to_k.weight.T, _c @ _layer.to_v.weight.T
        _heads = []
        for _i in range(_h):
            _s = _q[..., _i * _d:(_i + 1) * _d] @ _k[..., _i * _d:(_i + 1) * _d].transpose(1, 2) / math.sqrt(_d)
            _s = _s.masked_fill(~_mask[:, None, :], float("-inf"))
            _heads.append(_s.softmax(-1) @ _v[..., _i * _d:(_i + 1) * _d])
        _expected = torch.cat(_heads, dim=-1) @ _layer.to_out[0].weight.T + _layer.to_out[0].bias
        with torch.no_grad():
            _got = _layer(_x, context=None if _cdim is None else _c, mask=_mask)
        assert torch.allclose(_got, _expected, atol=1e-5)
    ### END HIDDEN TESTS
finally:
    _restore(_yours)

# %% [markdown]
# ## Part 5: the real thing: load diffusers' weights (3 points)
#
# diffusers' `Attention` (used in every transformer block of Stable Diffusion's UNet) stores its projections as
# `to_q`, `to_k`, `to_v` and `to_out[0]`, exactly like your module. Copying those four layers' weights (and the
# output bias) must make your module compute the same function.
#
# **Task**: implement `load_diffusers_attention(module, attn)`: copy the weights of the diffusers layer `attn` into
# your `module` (use `load_state_dict` or `copy_` under `torch.no_grad()`), check that the shapes match, and return
# `module`. diffusers passes a padding mask as an *additive* float mask of shape `(B, 1, M)`: 0 to keep, a large
# negative number to drop; the test converts your bool mask for it.

# %%
with warnings.catch_warnings():  # diffusers may warn about optional packages at import time
    warnings.simplefilter("ignore")
    from diffusers.models.attention_processor import Attention


# %% nbgrader={"grade": false, "grade_id": "load_diffusers_attention", "locked": false, "schema_version": 3, "solution": true}
def load_diffusers_attention(module: MultiHeadAttention, attn) -> MultiHeadAttention:
    """Copy to_q, to_k, to_v and to_out[0] of a diffusers Attention into module; returns module."""
    ### BEGIN SOLUTION
    pairs = [(module.to_q, attn.to_q), (module.to_k, attn.to_k), (module.to_v, attn.to_v),
             (module.to_out[0], attn.to_out[0])]
    for ours, theirs in pairs:
        if ours.weight.shape != theirs.weight.shape:
            raise ValueError(f"shape mismatch: {tuple(ours.weight.shape)} vs {tuple(theirs.weight.shape)}")
        ours.load_state_dict(theirs.state_dict())
    return module
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_diffusers_match", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Visible test: self-attention, your module against diffusers.
_yours = _use_references()
try:
    torch.manual_seed(0)
    _attn = Attention(query_dim=32, heads=4, dim_head=8).eval()
    _mine = load_diffusers_attention(MultiHeadAttention(32, 4), _attn).eval()
    _x = torch.randn(2, 10, 32)
    with torch.no_grad():
        _diff = (_mine(_x) - _attn(_x)).abs().max().item()
    assert _diff < 1e-5, f"your output differs from diffusers' by {_diff:.2e}: check which weights go where"
    ### BEGIN HIDDEN TESTS
    _g = torch.Generator().manual_seed(66)
    for _dim, _h, _cdim in [(48, 6, 20), (16, 2, 16), (64, 8, None)]:
        torch.manual_seed(int(torch.randint(0, 1000, (1,), generator=_g)))
        _attn = Attention(query_dim=_dim, heads=_h, dim_head=_dim // _h, cross_attention_dim=_cdim).eval()
        torch.manual_seed(123)
        _mine = load_diffusers_attention(MultiHeadAttention(_dim, _h, context_dim=_cdim), _attn).eval()
        _x = torch.randn(3, 7, _dim, generator=_g)
        _c = torch.randn(3, 5, _cdim or _dim, generator=_g)
        _mask = torch.rand(3, 5, generator=_g) < 0.6
        _mask[:, 0] = True
        _additive = torch.zeros(3, 1, 5).masked_fill(~_mask[:, None, :], -10000.0)
        with torch.no_grad():
            assert torch.allclose(_mine(_x, context=_c, mask=_mask),
                                  _attn(_x, encoder_hidden_states=_c, attention_mask=_additive), atol=1e-5)
            assert torch.allclose(_mine(_x, context=_c), _attn(_x, encoder_hidden_states=_c), atol=1e-5)
    ### END HIDDEN TESTS
finally:
    _restore(_yours)

# %% [markdown]
# ## Going further (not graded)
#
# - Time your `scaled_dot_product_attention` against `F.scaled_dot_product_attention` for 4096 queries (a 64 x 64
#   latent): the fused version never stores the `4096 x 4096` weight matrix. That memory is why Stable Diffusion
#   uses memory-efficient attention at high resolutions.
# - Build a diffusers `Attention` with `cross_attention_dim=768` (CLIP's width) and `query_dim=320` (the UNet's first
#   level): how many parameters does one cross-attention layer of Stable Diffusion have?

# %% [markdown]
# ## Submitting
#
# 1. Run every cell from the top (*Kernel -> Restart & Run All*) and check that the visible tests pass.
# 2. Submit **`a2_attention.ipynb`** (on Colab: download it from the file browser on the left first).
#    The graders run your notebook with `COURSE_AUTOGRADE=1`: training cells are skipped and the graded cells
#    load the weights you submitted, on a CPU.
# 3. Do not rename the notebook, and do not change the read-only cells: they are restored before grading.

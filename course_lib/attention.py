"""Scaled dot-product attention and multi-head (self- and cross-) attention.

Glossary (Vaswani et al. 2017, "Attention is all you need", eq. 1):
    Q, K, V      queries (..., Lq, d), keys (..., Lk, d), values (..., Lk, d_v)
    d            width of one head; scores are divided by sqrt(d) so their variance stays ~1
    A            attention weights softmax(Q K^T / sqrt(d)), shape (..., Lq, Lk); every row sums to 1
    h            number of heads; a layer of width ``dim`` gives each head d = dim / h channels
    x, context   the sequence that asks (queries) and the one that answers (keys/values). In Stable Diffusion's
                 UNet, self-attention uses context = x (pixels look at pixels); cross-attention uses the text
                 encoder's tokens as context (pixels look at words).

Masks follow ``torch.nn.functional.scaled_dot_product_attention``'s ``attn_mask``: either a bool tensor where
True means "may attend", or a float tensor that is *added* to the scores (0 = keep, -inf = drop). A query
row whose keys are all masked out has no defined softmax: the explicit version returns NaN there, while torch's
fused kernel (the fast path) returns zeros on the CPU. Give every query at least one key it may attend to.

The submodule names ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` are diffusers' names on purpose: LoRA adapters
for Stable Diffusion target exactly these layers, and ``MultiHeadAttention.from_diffusers`` copies a diffusers
``Attention`` layer into ours.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from course_lib._checks import check_float, check_int, check_shape_dim, check_tensor

__all__ = ["scaled_dot_product_attention", "MultiHeadAttention"]


def _check_mask(mask, scores_shape: tuple[int, ...], name: str = "mask") -> None:
    check_tensor(name, mask)
    if not (mask.dtype == torch.bool or mask.is_floating_point()):
        raise ValueError(f"{name} must be a bool or floating-point tensor, got dtype {mask.dtype}")
    try:
        torch.broadcast_shapes(tuple(mask.shape), scores_shape)
    except RuntimeError:
        raise ValueError(f"{name} must be broadcastable to the scores' shape {scores_shape}, "
                         f"got shape {tuple(mask.shape)}") from None


def _check_qkv(q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, floating=True)
        if t.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions (..., L, d), got shape {tuple(t.shape)}")
    check_shape_dim("k", k, -1, q.shape[-1], what="feature size d of q")
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"k and v must have the same shape except for the last dimension, "
                         f"got {tuple(k.shape)} and {tuple(v.shape)}")


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None, return_weights: bool = False):
    """softmax(Q K^T / sqrt(d) + mask) V, written out step by step.

    q: (..., Lq, d), k: (..., Lk, d), v: (..., Lk, d_v); the leading dimensions broadcast.
    mask: bool (True = attend) or additive float, broadcastable to (..., Lq, Lk), as torch's ``attn_mask``.
    Returns the output (..., Lq, d_v), or ``(output, weights)`` with weights (..., Lq, Lk) when
    ``return_weights`` is True. Numerically equal to ``torch.nn.functional.scaled_dot_product_attention``.
    """
    _check_qkv(q, k, v)
    # 1. similarity of every query with every key, scaled by 1/sqrt(d)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., Lq, Lk)
    # 2. masking: dropped keys get -inf, so they receive zero weight after the softmax
    if mask is not None:
        _check_mask(mask, tuple(scores.shape))
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    # 3. each row becomes a probability distribution over the keys
    weights = scores.softmax(dim=-1)
    # 4. weighted average of the values
    out = weights @ v  # (..., Lq, d_v)
    return (out, weights) if return_weights else out


class MultiHeadAttention(nn.Module):
    """Multi-head attention: self-attention when ``context`` is None, cross-attention otherwise.

    dim: width of the queries' sequence x (and of the output); split into ``num_heads`` heads of dim/num_heads.
    context_dim: width of the context tokens (e.g. the text encoder's hidden size); defaults to ``dim``.
    dropout: applied to the output projection's result, as in diffusers (``to_out.1``).
    bias: whether ``to_q``/``to_k``/``to_v`` have a bias (Stable Diffusion: no); ``to_out.0`` always has one.
    """

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None, dropout: float = 0.0,
                 bias: bool = False):
        super().__init__()
        check_int("dim", dim, minimum=1)
        check_int("num_heads", num_heads, minimum=1)
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads={num_heads}, got dim={dim}")
        if context_dim is not None:
            check_int("context_dim", context_dim, minimum=1)
        check_float("dropout", dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be a bool, got {bias!r}")
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = dim // num_heads
        self.context_dim = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(self.context_dim, dim, bias=bias)
        self.to_v = nn.Linear(self.context_dim, dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=True), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                return_attention: bool = False):
        """x: (B, N, dim); context: (B, M, context_dim) or None (then context = x, M = N).

        mask: bool (True = attend) or additive float; shape (B, M) (which context tokens may be attended to,
        e.g. a padding mask), or anything broadcastable to (B, heads, N, M).
        Returns (B, N, dim), or ``(output, weights)`` with weights (B, heads, N, M) if ``return_attention``.
        """
        context = self._check_inputs(x, context)
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.num_heads)
        k = rearrange(self.to_k(context), "b m (h d) -> b h m d", h=self.num_heads)
        v = rearrange(self.to_v(context), "b m (h d) -> b h m d", h=self.num_heads)
        if mask is not None:
            mask = self._prepare_mask(mask, x.shape[0], x.shape[1], context.shape[1])
        if return_attention:  # explicit path: we need the weights themselves
            out, weights = scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
        else:  # fused fast path, same numbers (tested)
            out, weights = F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
        out = rearrange(out, "b h n d -> b n (h d)")
        out = self.to_out[1](self.to_out[0](out))  # (B, N, dim)
        return (out, weights) if return_attention else out

    def _check_inputs(self, x, context) -> torch.Tensor:
        check_tensor("x", x, ndim=3, floating=True)
        check_shape_dim("x", x, -1, self.dim, what="feature size dim")
        if context is None:
            if self.context_dim != self.dim:
                raise ValueError(f"context must be given for cross-attention (context_dim={self.context_dim} "
                                 f"!= dim={self.dim}), got None")
            return x
        check_tensor("context", context, ndim=3, floating=True)
        check_shape_dim("context", context, -1, self.context_dim, what="feature size context_dim")
        check_shape_dim("context", context, 0, x.shape[0], what="batch size of x")
        return context

    def _prepare_mask(self, mask, batch: int, n: int, m: int) -> torch.Tensor:
        check_tensor("mask", mask)
        if mask.ndim == 2:  # (B, M) key mask -> (B, 1, 1, M)
            check_shape_dim("mask", mask, 0, batch, what="batch size")
            check_shape_dim("mask", mask, 1, m, what="number of context tokens")
            mask = mask[:, None, None, :]
        _check_mask(mask, (batch, self.num_heads, n, m))
        return mask

    @classmethod
    def from_diffusers(cls, attn) -> "MultiHeadAttention":
        """Build a MultiHeadAttention with the same weights as a diffusers ``Attention`` layer."""
        layer = cls(dim=attn.query_dim, num_heads=attn.heads, context_dim=attn.cross_attention_dim,
                    dropout=float(attn.to_out[1].p), bias=attn.to_q.bias is not None)
        return layer.load_diffusers_attention(attn)

    def load_diffusers_attention(self, attn) -> "MultiHeadAttention":
        """Copy ``to_q/to_k/to_v/to_out.0`` from a plain diffusers ``Attention`` with matching sizes; returns self."""
        extras = [name for name in ("group_norm", "spatial_norm", "norm_cross", "norm_q", "norm_k")
                  if getattr(attn, name, None) is not None]
        if extras or getattr(attn, "residual_connection", False) or getattr(attn, "rescale_output_factor", 1.0) != 1.0:
            raise ValueError(f"attn must be a plain diffusers Attention (no norms, residual or rescaling), "
                             f"got one with {extras or 'residual/rescale'}")
        if attn.heads != self.num_heads or attn.to_q.weight.shape != self.to_q.weight.shape:
            raise ValueError(f"attn must have heads={self.num_heads} and to_q weight {tuple(self.to_q.weight.shape)}, "
                             f"got heads={attn.heads} and {tuple(attn.to_q.weight.shape)}")
        if not math.isclose(attn.scale, self.head_dim ** -0.5):
            raise ValueError(f"attn must use the standard 1/sqrt(head_dim) scale, got scale={attn.scale}")
        ours = {"to_q": self.to_q, "to_k": self.to_k, "to_v": self.to_v, "to_out.0": self.to_out[0]}
        theirs = {"to_q": attn.to_q, "to_k": attn.to_k, "to_v": attn.to_v, "to_out.0": attn.to_out[0]}
        for name, layer in ours.items():
            state = theirs[name].state_dict()
            if state.keys() != layer.state_dict().keys() or any(
                    state[key].shape != value.shape for key, value in layer.state_dict().items()):
                raise ValueError(f"attn.{name} must match our {name} ({layer}), got {theirs[name]}")
            layer.load_state_dict(state)
        return self

"""Contracts for course_lib.attention: equal to torch's fused SDPA and to diffusers' Attention."""
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.attention import MultiHeadAttention, scaled_dot_product_attention

ATOL = 1e-5


def _qkv(lq=5, lk=7, d=8, batch=(2, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*batch, lq, d, generator=g), torch.randn(*batch, lk, d, generator=g),
            torch.randn(*batch, lk, d, generator=g))


# --- scaled_dot_product_attention ------------------------------------------------------------------------

def test_explicit_equals_torch_sdpa_without_mask():
    q, k, v = _qkv()
    out = scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 3, 5, 8)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=ATOL, rtol=0)


@pytest.mark.parametrize("mask_shape", [(5, 7), (2, 1, 5, 7), (2, 3, 1, 7)])
def test_explicit_equals_torch_sdpa_with_bool_mask(mask_shape):
    q, k, v = _qkv()
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(mask_shape, generator=g) > 0.4
    mask[..., 0] = True  # every query row keeps at least one key
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=ATOL, rtol=0)


def test_explicit_equals_torch_sdpa_with_float_mask():
    q, k, v = _qkv()
    mask = torch.randn(2, 1, 5, 7, generator=torch.Generator().manual_seed(2))
    mask[..., 3] = float("-inf")
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=ATOL, rtol=0)


def test_weights_closed_form_and_masked_keys_get_zero_weight():
    q, k, v = _qkv(batch=(2,))
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[:, 2] = False
    out, w = scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
    scores = torch.einsum("bqd,bkd->bqk", q, k) / math.sqrt(8)
    scores[..., 2] = -1e30
    expected = torch.exp(scores - scores.amax(-1, keepdim=True))
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(w, expected, atol=ATOL, rtol=0)
    assert torch.all(w[..., 2] == 0)
    torch.testing.assert_close(out, expected @ v, atol=ATOL, rtol=0)


def test_sdpa_does_not_mutate_inputs():
    q, k, v = _qkv()
    mask = torch.zeros(5, 7)
    copies = [t.clone() for t in (q, k, v, mask)]
    scaled_dot_product_attention(q, k, v, mask=mask)
    for before, after in zip(copies, (q, k, v, mask)):
        assert torch.equal(before, after)


# --- MultiHeadAttention vs diffusers ---------------------------------------------------------------------

def _diffusers_attention(query_dim, cross_attention_dim, heads, dim_head, bias=False, seed=0):
    from diffusers.models.attention_processor import Attention
    torch.manual_seed(seed)
    attn = Attention(query_dim, cross_attention_dim=cross_attention_dim, heads=heads, dim_head=dim_head, bias=bias)
    with torch.no_grad():  # diffusers zero-initialises nothing here, but make biases non-trivial anyway
        for p in attn.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return attn.eval()


@pytest.mark.parametrize("bias", [False, True])
def test_cross_attention_matches_diffusers(bias):
    attn = _diffusers_attention(32, 24, heads=4, dim_head=8, bias=bias)
    ours = MultiHeadAttention.from_diffusers(attn).eval()
    assert ours.context_dim == 24 and ours.num_heads == 4
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(2, 10, 32, generator=g), torch.randn(2, 6, 24, generator=g)
    with torch.no_grad():
        expected = attn(x, encoder_hidden_states=ctx)
        torch.testing.assert_close(ours(x, ctx), expected, atol=ATOL, rtol=0)
        out, w = ours(x, ctx, return_attention=True)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    assert w.shape == (2, 4, 10, 6)


def test_self_attention_matches_diffusers_and_load_method():
    attn = _diffusers_attention(32, None, heads=2, dim_head=16)
    ours = MultiHeadAttention(32, 2)
    assert ours.load_diffusers_attention(attn) is ours
    x = torch.randn(3, 9, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), attn(x), atol=ATOL, rtol=0)


def test_key_padding_mask_matches_diffusers():
    attn = _diffusers_attention(16, 8, heads=2, dim_head=8)
    ours = MultiHeadAttention.from_diffusers(attn)
    g = torch.Generator().manual_seed(5)
    x, ctx = torch.randn(2, 4, 16, generator=g), torch.randn(2, 5, 8, generator=g)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    additive = torch.zeros(2, 1, 5).masked_fill(~keep[:, None, :], -10000.0)  # diffusers' convention
    with torch.no_grad():
        expected = attn(x, encoder_hidden_states=ctx, attention_mask=additive)
        torch.testing.assert_close(ours(x, ctx, mask=keep), expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(ours(x, ctx, mask=keep, return_attention=True)[0], expected, atol=ATOL, rtol=0)


def test_submodule_names_are_diffusers_names():
    names = {n for n, _ in MultiHeadAttention(16, 2, context_dim=8).named_modules()}
    assert {"to_q", "to_k", "to_v", "to_out.0", "to_out.1"} <= names
    layer = MultiHeadAttention(16, 2, context_dim=8, bias=True)
    assert layer.to_k.in_features == 8 and layer.to_q.bias is not None and layer.to_out[0].bias is not None
    assert MultiHeadAttention(16, 2).to_q.bias is None


# --- behaviour ------------------------------------------------------------------------------------------

def test_fast_and_explicit_paths_agree_and_rows_sum_to_one():
    torch.manual_seed(0)
    layer = MultiHeadAttention(24, 3, context_dim=12)
    x, ctx = torch.randn(2, 7, 24), torch.randn(2, 4, 12)
    mask = torch.tensor([[True, True, False, True], [True, False, False, False]])
    out, w = layer(x, ctx, mask=mask, return_attention=True)
    torch.testing.assert_close(out, layer(x, ctx, mask=mask), atol=ATOL, rtol=0)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 7), atol=ATOL, rtol=0)
    assert torch.all(w[0, :, :, 2] == 0) and torch.all(w[1, :, :, 1:] == 0)


def test_gradients_reach_all_parameters():
    torch.manual_seed(0)
    layer = MultiHeadAttention(16, 4, context_dim=8, bias=True)
    x, ctx = torch.randn(2, 5, 16, requires_grad=True), torch.randn(2, 3, 8, requires_grad=True)
    for return_attention in (False, True):
        layer.zero_grad()
        out = layer(x, ctx, return_attention=return_attention)
        out = out[0] if return_attention else out
        out.square().sum().backward()
        for name, p in layer.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0 and ctx.grad.abs().sum() > 0


def test_dropout_only_in_training():
    torch.manual_seed(0)
    layer = MultiHeadAttention(16, 2, dropout=0.5)
    x = torch.randn(1, 6, 16)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


# --- bad input -----------------------------------------------------------------------------------------

_layer = MultiHeadAttention(16, 2, context_dim=8)
_q, _k, _v = _qkv()


@pytest.mark.parametrize("call, argname", [
    (lambda: MultiHeadAttention(15, 2), "dim"),
    (lambda: MultiHeadAttention(0, 1), "dim"),
    (lambda: MultiHeadAttention(16, 0), "num_heads"),
    (lambda: MultiHeadAttention(16, 2.0), "num_heads"),
    (lambda: MultiHeadAttention(16, 2, context_dim=-1), "context_dim"),
    (lambda: MultiHeadAttention(16, 2, dropout=1.0), "dropout"),
    (lambda: MultiHeadAttention(16, 2, bias=1), "bias"),
    (lambda: _layer(torch.randn(2, 16), torch.randn(2, 3, 8)), "x"),
    (lambda: _layer(torch.randn(2, 4, 12), torch.randn(2, 3, 8)), "x"),
    (lambda: _layer(torch.randn(2, 4, 16), torch.randn(2, 3, 16)), "context"),
    (lambda: _layer(torch.randn(2, 4, 16), torch.randn(3, 3, 8)), "context"),
    (lambda: _layer(torch.randn(2, 4, 16), torch.randn(3, 8)), "context"),
    (lambda: _layer(torch.randn(2, 4, 16)), "context"),
    (lambda: _layer(torch.randn(2, 4, 16), torch.randn(2, 3, 8), mask=torch.ones(2, 4, dtype=torch.bool)), "mask"),
    (lambda: _layer(torch.randn(2, 4, 16), torch.randn(2, 3, 8), mask=torch.ones(2, 3, dtype=torch.long)), "mask"),
    (lambda: _layer(torch.randn(2, 4, 16), torch.randn(2, 3, 8), mask=torch.ones(2, 2, 5, 3)), "mask"),
    (lambda: scaled_dot_product_attention(_q, _k[..., :4], _v), "k"),
    (lambda: scaled_dot_product_attention(_q, _k, _v[..., :3, :]), "v"),
    (lambda: scaled_dot_product_attention(_q[0, 0, 0], _k, _v), "q"),
    (lambda: scaled_dot_product_attention(_q.long(), _k, _v), "q"),
    (lambda: scaled_dot_product_attention(_q, _k, _v, mask=torch.ones(4, 7)), "mask"),
    (lambda: scaled_dot_product_attention(_q, _k, _v, mask=[[True]]), "mask"),
    (lambda: MultiHeadAttention(16, 4).load_diffusers_attention(_diffusers_attention(16, None, 2, 8)), "attn"),
    (lambda: MultiHeadAttention(16, 2, context_dim=8).load_diffusers_attention(_diffusers_attention(16, 12, 2, 8)),
     "attn"),
])
def test_bad_input_raises_value_error_naming_argument(call, argname):
    with pytest.raises(ValueError, match=rf"\b{argname}\b"):
        call()

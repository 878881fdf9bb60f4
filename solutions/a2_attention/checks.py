"""The grader's own checks of a2_attention (instructor-only; format: course_lib/grading/verdicts.py).

References are computed in float64 from the float32 inputs (|q|, |k| ~ 2, d <= 16). Attention weights are in
[0, 1] after a softmax of scores up to ~|q||k| ~ 60: float32 error ~1.2e-7 * 60 * a few ~ 3e-5 on the exponent's
argument, relative in the weights, so atol 1e-5 on weights and values of magnitude ~3: atol 5e-5, rtol 1e-5.
"""
import math

import torch

from course_lib.grading.verdicts import Check

_SHAPES = [((2, 7, 8), (2, 5, 8), 3), ((2, 4, 6, 16), (2, 4, 9, 16), 16), ((1, 1, 1, 5), (1, 1, 3, 5), 2)]


def _attention(q, k, v, mask=None):
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return (weights @ v).float(), weights.float()


def _attention_inputs(g):
    out = {}
    for i, (sq, sk, dv) in enumerate(_SHAPES):
        out[f"{i}.q"] = torch.randn(sq, generator=g) * 2
        out[f"{i}.k"] = torch.randn(sk, generator=g) * 2
        out[f"{i}.v"] = torch.randn(*sk[:-1], dv, generator=g)
    return out


ATTENTION = """
for i in range(3):
    out, weights = scaled_dot_product_attention(inputs[f"{i}.q"], inputs[f"{i}.k"], inputs[f"{i}.v"])
    outputs[f"{i}.out"], outputs[f"{i}.weights"] = out, weights
"""


def _attention_expected(x):
    out = {}
    for i in range(3):
        out[f"{i}.out"], out[f"{i}.weights"] = _attention(x[f"{i}.q"], x[f"{i}.k"], x[f"{i}.v"])
    return out


def _mask_inputs(g):
    out = {"causal_n": torch.randint(1, 20, (3,), generator=g)}
    for i, (batch, max_len) in enumerate([(5, 9), (1, 1), (4, 13)]):
        out[f"{i}.lengths"] = torch.randint(1, max_len + 1, (batch,), generator=g)
    return out


MASKS = """
for i, n in enumerate(inputs["causal_n"].tolist()):
    outputs[f"causal{i}"] = causal_mask(int(n))
for i, max_len in enumerate([9, 1, 13]):
    outputs[f"padding{i}"] = padding_mask(inputs[f"{i}.lengths"], max_len)
"""


def _mask_expected(x):
    out = {}
    for i, n in enumerate(x["causal_n"].tolist()):
        out[f"causal{i}"] = torch.tensor([[j <= r for j in range(n)] for r in range(n)], dtype=torch.bool)
    for i, max_len in enumerate([9, 1, 13]):
        lengths = x[f"{i}.lengths"].tolist()
        out[f"padding{i}"] = torch.tensor([[j < n for j in range(max_len)] for n in lengths], dtype=torch.bool)
    return out


def _masked_inputs(g):
    out = {}
    for i, (sq, sk) in enumerate([((2, 3, 6, 8), (2, 3, 6, 8)), ((2, 1, 5, 4), (2, 1, 7, 4))]):
        out[f"{i}.q"] = torch.randn(sq, generator=g) * 2
        out[f"{i}.k"] = torch.randn(sk, generator=g) * 2
        out[f"{i}.v"] = torch.randn(sk, generator=g)
        mask = torch.rand(sq[0], 1, sq[2], sk[2], generator=g) < 0.6
        mask[..., int(torch.randint(0, sk[2], (), generator=g))] = True  # every query keeps a key
        out[f"{i}.mask"] = mask
    return out


MASKED_ATTENTION = """
for i in range(2):
    out, weights = scaled_dot_product_attention(inputs[f"{i}.q"], inputs[f"{i}.k"], inputs[f"{i}.v"],
                                                mask=inputs[f"{i}.mask"])
    outputs[f"{i}.out"], outputs[f"{i}.weights"] = out, weights
"""


def _masked_expected(x):
    out = {}
    for i in range(2):
        out[f"{i}.out"], out[f"{i}.weights"] = _attention(x[f"{i}.q"], x[f"{i}.k"], x[f"{i}.v"], x[f"{i}.mask"])
    return out


def _heads_inputs(g):
    out = {}
    for i, (shape, h) in enumerate([((2, 5, 12), 3), ((1, 1, 8), 8), ((3, 7, 16), 1), ((2, 3, 12), 4)]):
        out[f"{i}.x"] = torch.randn(shape, generator=g)
        out[f"{i}.y"] = torch.randn(shape[0], h, shape[1], shape[2] // h, generator=g)
    return out


HEADS = """
for i, h in enumerate([3, 8, 1, 4]):
    outputs[f"{i}.split"] = split_heads(inputs[f"{i}.x"], h)
    outputs[f"{i}.merged"] = merge_heads(inputs[f"{i}.y"])
"""


def _heads_expected(x):
    out = {}
    for i, h in enumerate([3, 8, 1, 4]):
        b, n, c = x[f"{i}.x"].shape
        out[f"{i}.split"] = x[f"{i}.x"].reshape(b, n, h, c // h).permute(0, 2, 1, 3).contiguous()
        y = x[f"{i}.y"]
        out[f"{i}.merged"] = y.permute(0, 2, 1, 3).reshape(b, n, c)
    return out


_MHA_CASES = [(24, 3, 10), (16, 1, None), (32, 8, 32)]


def _linear(g, out_features, in_features, bias):
    bound = 1 / math.sqrt(in_features)
    weights = {"weight": (torch.rand(out_features, in_features, generator=g) * 2 - 1) * bound}
    if bias:
        weights["bias"] = (torch.rand(out_features, generator=g) * 2 - 1) * bound
    return weights


def _mha_inputs(g):
    out = {}
    for i, (dim, h, cdim) in enumerate(_MHA_CASES):
        c = dim if cdim is None else cdim
        for name, (o, n, bias) in {"to_q": (dim, dim, False), "to_k": (dim, c, False), "to_v": (dim, c, False),
                                   "to_out.0": (dim, dim, True)}.items():
            for key, value in _linear(g, o, n, bias).items():
                out[f"{i}.{name}.{key}"] = value
        out[f"{i}.x"] = torch.randn(2, 6, dim, generator=g)
        out[f"{i}.context"] = torch.randn(2, 4, c, generator=g)
        mask = torch.rand(2, 4, generator=g) < 0.7
        mask[:, 0] = True
        out[f"{i}.mask"] = mask
    return out


# the module is graded on its own: the reference pieces of parts 1-3 are swapped in, as in the test
MULTI_HEAD = """
yours = _use_references()
try:
    for i, (dim, h, cdim) in enumerate([(24, 3, 10), (16, 1, None), (32, 8, 32)]):
        layer = MultiHeadAttention(dim, h, context_dim=cdim).eval()
        layer.load_state_dict({k.split(".", 1)[1]: v for k, v in inputs.items()
                               if k.startswith(f"{i}.to_")})
        with torch.no_grad():
            context = inputs[f"{i}.context"] if cdim is not None else None
            outputs[f"{i}.masked"] = layer(inputs[f"{i}.x"], context=context if cdim is not None else
                                           inputs[f"{i}.x"][:, :4], mask=inputs[f"{i}.mask"])
            outputs[f"{i}.plain"] = layer(inputs[f"{i}.x"], context=context)
finally:
    _restore(yours)
"""


def _mha(x, i, cdim, context, mask, h):
    w = {name: x[f"{i}.{name}"].double() for name in ("to_q.weight", "to_k.weight", "to_v.weight",
                                                       "to_out.0.weight", "to_out.0.bias")}
    q = x[f"{i}.x"].double() @ w["to_q.weight"].T
    k, v = context.double() @ w["to_k.weight"].T, context.double() @ w["to_v.weight"].T
    d = q.shape[-1] // h
    heads = []
    for j in range(h):
        s = q[..., j * d:(j + 1) * d] @ k[..., j * d:(j + 1) * d].transpose(1, 2) / math.sqrt(d)
        if mask is not None:
            s = s.masked_fill(~mask[:, None, :], float("-inf"))
        heads.append(s.softmax(-1) @ v[..., j * d:(j + 1) * d])
    return (torch.cat(heads, dim=-1) @ w["to_out.0.weight"].T + w["to_out.0.bias"]).float()


def _mha_expected(x):
    out = {}
    for i, (dim, h, cdim) in enumerate(_MHA_CASES):
        context = x[f"{i}.context"] if cdim is not None else x[f"{i}.x"][:, :4]
        out[f"{i}.masked"] = _mha(x, i, cdim, context, x[f"{i}.mask"], h)
        out[f"{i}.plain"] = _mha(x, i, cdim, x[f"{i}.context"] if cdim is not None else x[f"{i}.x"], None, h)
    return out


_DIFFUSERS_CASES = [(48, 6, 20), (16, 2, None), (64, 8, None)]


def _diffusers_inputs(g):
    out = {}
    for i, (dim, h, cdim) in enumerate(_DIFFUSERS_CASES):
        c = dim if cdim is None else cdim
        for name, (o, n, bias) in {"to_q": (dim, dim, False), "to_k": (dim, c, False), "to_v": (dim, c, False),
                                   "to_out.0": (dim, dim, True)}.items():
            for key, value in _linear(g, o, n, bias).items():
                out[f"{i}.{name}.{key}"] = value
        out[f"{i}.x"] = torch.randn(3, 7, dim, generator=g)
        out[f"{i}.context"] = torch.randn(3, 5, c, generator=g)
    return out


# a diffusers Attention with the grader's weights is built in the kernel; load_diffusers_attention copies them
DIFFUSERS = """
yours = _use_references()
try:
    for i, (dim, h, cdim) in enumerate([(48, 6, 20), (16, 2, None), (64, 8, None)]):
        attn = Attention(query_dim=dim, heads=h, dim_head=dim // h, cross_attention_dim=cdim).eval()
        attn.load_state_dict({k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith(f"{i}.to_")})
        mine = load_diffusers_attention(MultiHeadAttention(dim, h, context_dim=cdim), attn).eval()
        with torch.no_grad():
            outputs[f"{i}"] = mine(inputs[f"{i}.x"], context=inputs[f"{i}.context"])
finally:
    _restore(yours)
"""


def _diffusers_expected(x):
    return {f"{i}": _mha(x, i, cdim, x[f"{i}.context"], None, h) for i, (dim, h, cdim) in enumerate(_DIFFUSERS_CASES)}


CHECKS = {
    "test_attention": Check(probe=ATTENTION, inputs=_attention_inputs, expect=_attention_expected,
                            rtol=1e-5, atol=5e-5),
    "test_masks": Check(probe=MASKS, inputs=_mask_inputs, expect=_mask_expected),
    "test_attention_mask": Check(probe=MASKED_ATTENTION, inputs=_masked_inputs, expect=_masked_expected,
                                 rtol=1e-5, atol=5e-5),
    "test_heads": Check(probe=HEADS, inputs=_heads_inputs, expect=_heads_expected, rtol=0.0, atol=0.0),
    # three projections of |x| ~ 3 by weights ~ 1/sqrt(dim), then attention: ~1e-6 * depth: atol 5e-5
    "test_multi_head_attention": Check(probe=MULTI_HEAD, inputs=_mha_inputs, expect=_mha_expected,
                                       rtol=1e-5, atol=5e-5),
    "test_diffusers_match": Check(probe=DIFFUSERS, inputs=_diffusers_inputs, expect=_diffusers_expected,
                                  rtol=1e-5, atol=5e-5),
}

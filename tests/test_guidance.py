"""Contracts for course_lib.guidance: condition dropout statistics, the CFG combination and Imagen's thresholds.

References are computed differently from the module (numpy, explicit loops, numbers worked out by hand).
"""
import math

import numpy as np
import pytest
import torch

from course_lib.guidance import (apply_keep_mask, cfg_combine, drop_condition, dynamic_threshold,
                                 sample_keep_mask, static_threshold)


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


# --- drop_condition ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drop_rate_matches_p_within_four_sigma(p):
    n = 10_000
    cond = torch.randn(n, 2, 3, generator=_g(1)) + 5.0  # never equal to the zero null embedding
    out = drop_condition(cond, torch.zeros(2, 3), p=p, generator=_g(2))
    dropped = (out == 0).all(dim=(1, 2))
    kept = (out == cond).all(dim=(1, 2))
    assert bool((dropped ^ kept).all())  # every row is either wholly kept or wholly replaced
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(int(dropped.sum()) - n * p) < 4 * sigma


def test_same_generator_seed_gives_same_mask_and_matches_sample_keep_mask():
    cond = torch.randn(64, 4, 8, generator=_g(3))
    uncond = torch.randn(4, 8, generator=_g(4))
    a = drop_condition(cond, uncond, p=0.3, generator=_g(5))
    b = drop_condition(cond, uncond, p=0.3, generator=_g(5))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    keep = sample_keep_mask(64, 0.3, generator=_g(5))
    # independent reference: a loop over rows
    expected = torch.stack([cond[i] if keep[i] else uncond for i in range(64)])
    torch.testing.assert_close(a, expected, atol=0, rtol=0)
    # the mask rule itself: keep where a uniform draw from the same generator is >= p
    u = torch.rand(64, generator=_g(5)).numpy()
    np.testing.assert_array_equal(keep.numpy(), u >= 0.3)


@pytest.mark.parametrize("uncond_shape", [(5, 8), (1, 5, 8), (6, 5, 8)])
def test_uncond_shapes_broadcast(uncond_shape):
    cond = torch.randn(6, 5, 8, generator=_g(6))
    uncond = torch.randn(uncond_shape, generator=_g(7))
    keep = torch.tensor([True, False, True, False, False, True])
    out = apply_keep_mask(cond, uncond, keep)
    full_uncond = uncond.expand(6, 5, 8)
    for i in range(6):
        torch.testing.assert_close(out[i], cond[i] if keep[i] else full_uncond[i], atol=0, rtol=0)


def test_class_labels_with_integer_null_label():
    labels = torch.arange(10)
    out = apply_keep_mask(labels, 10, torch.tensor([True] * 5 + [False] * 5))
    assert out.dtype == labels.dtype
    assert out.tolist() == [0, 1, 2, 3, 4, 10, 10, 10, 10, 10]
    assert drop_condition(labels, torch.tensor(10), p=1.0).tolist() == [10] * 10


def test_p_zero_keeps_all_and_p_one_drops_all():
    cond = torch.randn(50, 3, generator=_g(8))
    uncond = torch.full((3,), 7.0)
    torch.testing.assert_close(drop_condition(cond, uncond, p=0.0, generator=_g(9)), cond, atol=0, rtol=0)
    torch.testing.assert_close(drop_condition(cond, uncond, p=1.0, generator=_g(9)), uncond.expand(50, 3),
                               atol=0, rtol=0)
    assert bool(sample_keep_mask(50, 0.0).all()) and not bool(sample_keep_mask(50, 1.0).any())


def test_drop_condition_does_not_mutate_inputs():
    cond, uncond = torch.randn(8, 3, generator=_g(10)), torch.zeros(3)
    before = cond.clone()
    out = drop_condition(cond, uncond, p=1.0)
    torch.testing.assert_close(cond, before, atol=0, rtol=0)
    assert out.data_ptr() != cond.data_ptr()


def test_gradient_flows_to_kept_rows_and_to_uncond():
    cond = torch.randn(4, 3, requires_grad=True)
    uncond = torch.randn(3, requires_grad=True)  # a learned null embedding also gets trained
    apply_keep_mask(cond, uncond, torch.tensor([True, False, True, False])).sum().backward()
    assert cond.grad[:, 0].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert uncond.grad.tolist() == [2.0, 2.0, 2.0]


# --- cfg_combine -------------------------------------------------------------------------------------------

def test_cfg_combine_formula_and_identities():
    eps_u, eps_c = torch.randn(2, 4, 8, 8, generator=_g(11)), torch.randn(2, 4, 8, 8, generator=_g(12))
    # written the other way round: (1 - w) eps_u + w eps_c
    w = 7.5
    expected = (1 - w) * eps_u.double().numpy() + w * eps_c.double().numpy()
    np.testing.assert_allclose(cfg_combine(eps_u, eps_c, w).double().numpy(), expected, atol=1e-5)
    torch.testing.assert_close(cfg_combine(eps_u, eps_c, 1.0), eps_c, atol=1e-6, rtol=0)
    torch.testing.assert_close(cfg_combine(eps_u, eps_c, 0.0), eps_u, atol=0, rtol=0)
    torch.testing.assert_close(cfg_combine(eps_u, eps_u, 12.0), eps_u, atol=1e-6, rtol=0)  # no gap, no push


def test_cfg_combine_with_the_documented_batch_order():
    """Unconditional rows first: chunk(2) of a doubled batch gives (uncond, cond)."""
    def model(x, context):  # a stand-in eps model whose output depends on the context
        return x * context.mean()
    x = torch.randn(3, 2, generator=_g(13))
    uncond_ctx, cond_ctx = torch.zeros(3, 1), torch.ones(3, 1)
    eps = cfg_combine(*model(torch.cat([x, x]), torch.cat([uncond_ctx, cond_ctx])).chunk(2), 1.0)
    torch.testing.assert_close(eps, model(torch.cat([x, x]), torch.cat([uncond_ctx, cond_ctx]))[3:], atol=1e-6,
                               rtol=0)


# --- thresholding ------------------------------------------------------------------------------------------

def test_static_threshold_by_hand():
    x0 = torch.tensor([[-3.0, -1.0, 0.25, 0.75, 2.5]])
    assert static_threshold(x0).tolist() == [[-1.0, -1.0, 0.25, 0.75, 1.0]]
    assert static_threshold(x0, limit=2.0).tolist() == [[-2.0, -1.0, 0.25, 0.75, 2.0]]


def test_dynamic_threshold_by_hand():
    # Sample 0: |x| = 0..4 in steps of 1 -> 50th percentile is 2: clip to [-2, 2] and divide by 2.
    # Sample 1: already within [-1, 1] -> s = max(0.5, 1) = 1 -> unchanged.
    x0 = torch.tensor([[[0.0, -1.0, 2.0, -3.0, 4.0]], [[0.5, -0.5, 0.1, 0.0, 0.3]]])  # (2, 1, 5)
    out = dynamic_threshold(x0, percentile=0.5)
    assert out.shape == x0.shape
    torch.testing.assert_close(out[0], torch.tensor([[0.0, -0.5, 1.0, -1.0, 1.0]]), atol=1e-7, rtol=0)
    torch.testing.assert_close(out[1], x0[1], atol=0, rtol=0)
    # linear interpolation: 75th percentile of |x| = {0, 1, 2, 3, 4} is 3 -> [0, -1/3, 2/3, -1, 1]
    torch.testing.assert_close(dynamic_threshold(x0, percentile=0.75)[0],
                               torch.tensor([[0.0, -1 / 3, 2 / 3, -1.0, 1.0]]), atol=1e-6, rtol=0)
    # percentile 1 is the max: s = 4, nothing is clipped, everything is divided by 4
    torch.testing.assert_close(dynamic_threshold(x0, percentile=1.0)[0], x0[0] / 4, atol=1e-7, rtol=0)


def test_dynamic_threshold_matches_numpy_per_sample():
    x0 = 3 * torch.randn(4, 3, 8, 8, generator=_g(14), dtype=torch.float64)
    out = dynamic_threshold(x0, percentile=0.995).numpy()
    for i, sample in enumerate(x0.numpy()):
        s = max(np.percentile(np.abs(sample), 99.5), 1.0)
        np.testing.assert_allclose(out[i], np.clip(sample, -s, s) / s, atol=1e-12)
    assert np.abs(out).max() <= 1.0


def test_dynamic_threshold_matches_diffusers_when_s_is_not_capped():
    import diffusers
    x0 = 3 * torch.randn(3, 4, 6, 6, generator=_g(15))
    sched = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1e6)
    torch.testing.assert_close(dynamic_threshold(x0, 0.9), sched._threshold_sample(x0), atol=1e-6, rtol=0)


def test_thresholds_keep_dtype_and_inputs():
    x0 = 4 * torch.randn(2, 16, generator=_g(16)).half()
    before = x0.clone()
    assert dynamic_threshold(x0).dtype == torch.float16 and static_threshold(x0).dtype == torch.float16
    torch.testing.assert_close(x0, before, atol=0, rtol=0)


# --- bad input ---------------------------------------------------------------------------------------------

_c = torch.randn(4, 3, 5)


@pytest.mark.parametrize("call, argname", [
    (lambda: drop_condition(_c, torch.zeros(3, 5), p=-0.1), "p"),
    (lambda: drop_condition(_c, torch.zeros(3, 5), p=1.1), "p"),
    (lambda: drop_condition(_c, torch.zeros(3, 5), p=float("nan")), "p"),
    (lambda: drop_condition(_c, torch.zeros(3, 5), generator=1), "generator"),
    (lambda: drop_condition(_c, torch.zeros(3, 4)), "uncond"),
    (lambda: drop_condition(_c, torch.zeros(2, 3, 5)), "uncond"),
    (lambda: drop_condition(_c, 0), "uncond"),
    (lambda: drop_condition(torch.arange(4), torch.tensor(0.5)), "uncond"),
    (lambda: drop_condition(torch.tensor(1.0), torch.tensor(0.0)), "cond"),
    (lambda: drop_condition([1, 2], 0), "cond"),
    (lambda: apply_keep_mask(_c, torch.zeros(3, 5), torch.ones(4)), "keep"),
    (lambda: apply_keep_mask(_c, torch.zeros(3, 5), torch.ones(3, dtype=torch.bool)), "keep"),
    (lambda: sample_keep_mask(0, 0.1), "batch_size"),
    (lambda: sample_keep_mask(4, 2.0), "p"),
    (lambda: cfg_combine(_c, _c, -1.0), "guidance_scale"),
    (lambda: cfg_combine(_c, _c, float("inf")), "guidance_scale"),
    (lambda: cfg_combine(_c, _c[:2], 7.5), "eps_uncond"),
    (lambda: cfg_combine(_c.long(), _c, 7.5), "eps_uncond"),
    (lambda: cfg_combine(_c, None, 7.5), "eps_cond"),
    (lambda: static_threshold(_c, limit=0.0), "limit"),
    (lambda: static_threshold(_c.long()), "x0"),
    (lambda: dynamic_threshold(_c, percentile=0.0), "percentile"),
    (lambda: dynamic_threshold(_c, percentile=1.5), "percentile"),
    (lambda: dynamic_threshold(torch.randn(5)), "x0"),
    (lambda: dynamic_threshold(_c.long()), "x0"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, argname):
    with pytest.raises(ValueError, match=argname):
        call()

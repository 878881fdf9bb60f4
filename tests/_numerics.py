"""Tolerances that follow from the arithmetic, so a test gives the same verdict on every CPU.

Two results of the same float computation that differ only in the order of their additions (another kernel:
AVX2 vs AVX-512 vs the portable one, another thread count, another library) can differ by about
``unit roundoff x number of terms x sum of |terms|`` (the standard bound for a floating-point sum of products,
Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 3). The helpers below compute that bound from the
operands themselves instead of guessing one number on one machine.
"""
from __future__ import annotations

import torch


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps / 2: the largest relative error of one rounding (float32 ~6e-8, float64 ~1.1e-16)."""
    return torch.finfo(dtype).eps / 2


def assert_within_rounding(actual: torch.Tensor, expected: torch.Tensor, magnitude: torch.Tensor, depth: int,
                           safety: float = 2.0) -> None:
    """Check |actual - expected| <= safety * depth * u * magnitude, element by element.

    magnitude: the sum of |terms| that produced each element (e.g. |x| @ |W|.T + |b| for a linear layer), of the
    broadcastable shape of ``actual``; depth: the number of roundings along the longest chain (for a dot product
    of length K, about K + 1). Both results may carry that error, hence the factor 2 in ``safety``.
    """
    assert actual.shape == expected.shape, f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    bound = safety * depth * unit_roundoff(actual.dtype) * magnitude
    excess = (actual - expected).abs() - bound
    worst = int(excess.flatten().argmax())
    assert excess.max() <= 0, (
        f"difference {float((actual - expected).abs().flatten()[worst]):.3g} exceeds the rounding bound "
        f"{float(bound.broadcast_to(actual.shape).flatten()[worst]):.3g} at flat index {worst}")


# Intra-op threads for the whole suite: 1 by default (tiny models, a shared CPU); COURSE_TEST_THREADS=2 runs the
# numerical tests with another reduction order in torch's kernels (`make test-portable`). Module fixtures that
# pin threads use this, so a module's reference outputs and its tests run with the same count.
TEST_THREADS = int(__import__("os").environ.get("COURSE_TEST_THREADS") or 1)

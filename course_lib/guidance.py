"""Classifier-free guidance (Ho & Salimans 2022) and Imagen's thresholding of x0_hat (Saharia et al. 2022).

Glossary:
    c            the condition of one batch row: text embeddings (L, D) or a class label
    null, c0     the "empty" condition: the embedding of the empty prompt "" or a reserved null label
    p            training-time probability of replacing c by null (p_uncond in the paper; 0.1 is common)
    w            guidance scale. eps_hat = eps(x, null) + w (eps(x, c) - eps(x, null)) (Ho & Salimans eq. 6 with
                 w = 1 + their w). w = 0: unconditional, w = 1: plain conditional, w > 1: pushed further towards c.
                 Stable Diffusion's default is 7.5.
    x0_hat       the model's guess of the clean sample at this step (the scheduler's ``pred_original_sample``)
    s            Imagen's dynamic threshold: a high percentile of |x0_hat|, per sample, never below 1

Training: one model learns both eps(x, c) and eps(x, null) because ``drop_condition`` swaps c for null in a
random share p of the rows. Sampling runs the model once on a doubled batch, **unconditional rows first** (as in
diffusers' pipelines), and combines the halves::

    eps_uncond, eps_cond = unet(torch.cat([x, x]), t, torch.cat([uncond_emb, cond_emb])).chunk(2)
    eps = cfg_combine(eps_uncond, eps_cond, guidance_scale)

Large w pushes x0_hat outside the data range [-1, 1] and images saturate; Imagen's thresholds pull x0_hat back
(``static_threshold``, ``dynamic_threshold``). They are meant for pixel-space models: Stable Diffusion's latents
are not bounded by 1, so its pipeline uses neither.
"""
from __future__ import annotations

import torch

from course_lib._checks import check_float, check_int, check_same_shape, check_tensor

__all__ = ["sample_keep_mask", "apply_keep_mask", "drop_condition", "cfg_combine", "static_threshold",
           "dynamic_threshold"]


# --- training: condition dropout ---------------------------------------------------------------------------

def sample_keep_mask(batch_size: int, p: float = 0.1, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Bool mask (batch_size,): True keeps a row's condition, False (probability ``p``) drops it.

    Draws one uniform number per row from ``generator`` (on the generator's device), so a seeded generator
    gives the same mask every run; the mask is returned on ``device`` (default: the generator's, else CPU).
    """
    check_int("batch_size", batch_size, minimum=1)
    check_float("p", p, minimum=0.0, maximum=1.0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    draw_device = generator.device if generator is not None else device
    u = torch.rand(batch_size, generator=generator, device=draw_device)  # U[0, 1): u < p with probability p
    return (u >= p).to(device) if device is not None else u >= p


def _check_cond(cond) -> None:
    check_tensor("cond", cond)
    if cond.ndim == 0:
        raise ValueError("cond must have a batch dimension (B, ...), got shape ()")


def _check_uncond(cond: torch.Tensor, uncond) -> torch.Tensor:
    """``uncond`` as a tensor broadcastable to ``cond``: shapes cond.shape[1:], (1, *cond.shape[1:]) or cond.shape."""
    if isinstance(uncond, (int, float)) and not isinstance(uncond, bool) and cond.ndim == 1:
        uncond = torch.tensor(uncond)  # a null class label
    check_tensor("uncond", uncond)
    allowed = (cond.shape[1:], (1, *cond.shape[1:]), cond.shape)
    if uncond.shape not in allowed:
        raise ValueError(f"uncond must have shape {tuple(cond.shape[1:])}, {(1, *cond.shape[1:])} or "
                         f"{tuple(cond.shape)} to match cond, got {tuple(uncond.shape)}")
    if uncond.is_floating_point() and not cond.is_floating_point():
        raise ValueError(f"uncond must be an integer like cond (dtype {cond.dtype}), got dtype {uncond.dtype}")
    return uncond.to(device=cond.device, dtype=cond.dtype)


def apply_keep_mask(cond: torch.Tensor, uncond, keep: torch.Tensor) -> torch.Tensor:
    """Row b of the result is cond[b] where keep[b] else uncond. A new tensor; the inputs are untouched.

    cond: (B, ...) embeddings (B, L, D) or labels (B,). uncond: one null condition (cond.shape[1:] or
    (1, ...)), one per row (cond.shape), or a plain int for labels. keep: bool (B,).
    """
    _check_cond(cond)
    uncond = _check_uncond(cond, uncond)
    check_tensor("keep", keep, ndim=1)
    if keep.dtype != torch.bool or keep.shape[0] != cond.shape[0]:
        raise ValueError(f"keep must be a bool tensor of shape ({cond.shape[0]},) (one entry per row of cond), "
                         f"got dtype {keep.dtype} and shape {tuple(keep.shape)}")
    keep = keep.to(cond.device).reshape(-1, *([1] * (cond.ndim - 1)))  # (B, 1, .., 1)
    return torch.where(keep, cond, uncond)


def drop_condition(cond: torch.Tensor, uncond, p: float = 0.1,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each row of ``cond`` by ``uncond`` with probability ``p`` (classifier-free guidance training).

    Same shapes as ``apply_keep_mask``. Needing the mask too (e.g. to drop two conditions together)? Draw it
    with ``sample_keep_mask`` and call ``apply_keep_mask`` yourself: that is all this function does.
    """
    _check_cond(cond)
    keep = sample_keep_mask(cond.shape[0], p, generator=generator, device=cond.device)
    return apply_keep_mask(cond, uncond, keep)


# --- sampling: guidance ------------------------------------------------------------------------------------

def cfg_combine(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """eps_uncond + w (eps_cond - eps_uncond), w = ``guidance_scale`` >= 0. Works for any prediction type."""
    check_tensor("eps_uncond", eps_uncond, floating=True)
    check_tensor("eps_cond", eps_cond, floating=True)
    check_same_shape("eps_uncond", eps_uncond, "eps_cond", eps_cond)
    check_float("guidance_scale", guidance_scale, minimum=0.0)
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


# --- Imagen's thresholding of x0_hat (Saharia et al. 2022, Sec. 2.3) ---------------------------------------

def static_threshold(x0: torch.Tensor, limit: float = 1.0) -> torch.Tensor:
    """Clip x0_hat elementwise to [-limit, limit] (Imagen's static thresholding)."""
    check_tensor("x0", x0, floating=True)
    check_float("limit", limit, minimum=0.0, min_inclusive=False)
    return x0.clamp(-limit, limit)


def dynamic_threshold(x0: torch.Tensor, percentile: float = 0.995) -> torch.Tensor:
    """Imagen's dynamic thresholding, per sample: s = percentile of |x0_hat|, s = max(s, 1), x0 = clip(x0, -s, s) / s.

    x0: (B, ...). The percentile interpolates linearly between order statistics (``torch.quantile``, like
    numpy's default). Samples already inside [-1, 1] come back unchanged; saturated ones are pulled inwards.
    """
    check_tensor("x0", x0, floating=True)
    if x0.ndim < 2:
        raise ValueError(f"x0 must have shape (B, ...) with at least 2 dimensions, got shape {tuple(x0.shape)}")
    check_float("percentile", percentile, minimum=0.0, maximum=1.0, min_inclusive=False)
    flat = x0.reshape(x0.shape[0], -1).abs()                      # (B, N)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()                                       # quantile needs float32/64
    s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0)    # (B,)
    s = s.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))        # (B, 1, .., 1)
    return torch.maximum(torch.minimum(x0, s), -s) / s

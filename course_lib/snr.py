"""Signal-to-noise ratio of a noise schedule, and the Min-SNR-gamma loss weighting (Hang et al. 2023).

Glossary (Ho et al. 2020 notation):
    abar_t     prod_{s<=t} (1 - beta_s): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps      (DDPM eq. 4)
    SNR(t)     abar_t / (1 - abar_t): signal power over noise power in x_t; huge at t = 0, tiny at t = T - 1
    gamma      Min-SNR's clip: sample i's loss is weighted by min(SNR(t_i), gamma) / SNR(t_i) when the model
               predicts eps, by min(SNR(t_i), gamma) / (SNR(t_i) + 1) when it predicts v (Hang et al. 2023,
               eq. 10 and its v-prediction form). The nearly noise-free timesteps, easy and many, then stop
               dominating the gradient; the paper uses gamma = 5.

One function serves the course's schedulers (``course_lib.schedulers``) and diffusers' alike: both keep abar_t in
``alphas_cumprod``.
"""
from __future__ import annotations

import torch

from course_lib._checks import check_choice, check_float

__all__ = ["snr", "min_snr_weights"]


def _alphas_cumprod(schedule) -> torch.Tensor:
    abar = schedule if isinstance(schedule, torch.Tensor) else getattr(schedule, "alphas_cumprod", None)
    if not isinstance(abar, torch.Tensor) or abar.ndim != 1:
        raise ValueError(f"schedule must be a noise scheduler (with alphas_cumprod) or the (T,) tensor of abar_t, "
                         f"got {type(schedule).__name__}")
    return abar


def snr(schedule, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) = abar_t / (1 - abar_t) at each of ``timesteps`` (B,), in float32, on the timesteps' device."""
    abar = _alphas_cumprod(schedule).to(timesteps.device)[timesteps].float()
    return abar / (1 - abar)


def min_snr_weights(schedule, timesteps: torch.Tensor, snr_gamma: float, prediction_type: str = "epsilon"
                    ) -> torch.Tensor:
    """Per-sample Min-SNR weights (B,): min(SNR(t), gamma) / SNR(t) for "epsilon", / (SNR(t) + 1) for
    "v_prediction". ``schedule``: a scheduler, or its ``alphas_cumprod`` tensor."""
    check_float("snr_gamma", snr_gamma, minimum=0.0, min_inclusive=False)
    check_choice("prediction_type", prediction_type, ("epsilon", "v_prediction"))
    ratio = snr(schedule, timesteps)
    clipped = ratio.clamp(max=snr_gamma)
    return clipped / ratio if prediction_type == "epsilon" else clipped / (ratio + 1)

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
# # Assignment 3: DDPM and DDIM from the equations
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/2026-fall/assignments/a3_ddpm/a3_ddpm.ipynb)
#
# Lecture 3 trained a denoising diffusion model with diffusers' scheduler doing the bookkeeping. Here you write
# that bookkeeping yourself: the noise schedules, the forward process in one jump, the DDPM reverse step and the
# DDIM step. Each piece is checked against 🤗 diffusers' `DDPMScheduler` / `DDIMScheduler`. Then you train a
# small DDPM on handwritten digits (scikit-learn's original 8x8 scans) with your own loss and sample from it with your own samplers.
#
# **What you will learn**
# - how $\beta_t$, $\alpha_t$ and $\bar\alpha_t$ relate, and what the linear, scaled-linear and cosine schedules do
#   to the signal-to-noise ratio;
# - the closed form $q(x_t \mid x_0)$ that makes training a one-liner;
# - the DDPM reverse step: the posterior mean and the posterior variance $\tilde\beta_t$;
# - the DDIM step, and how $\eta$ moves it between a deterministic sampler ($\eta = 0$) and DDPM ($\eta = 1$);
# - the noise-prediction loss, and how to judge samples of a generative model with a classifier.
#
# **Prerequisites**: lecture 3 (DDPM, where the course's `UNet` denoised digits) and lecture 4 (faster sampling:
# DDIM).
#
# **Time**: 1.5-3 hours of work. Training (part 6, 3000 steps) takes about 5 minutes on a laptop CPU: measured
# 4.6 minutes of one CPU core (9 minutes of wall clock on a busy shared 2-core machine), about 1 minute on a Colab
# GPU. Grading your notebook takes about 10 seconds.
#
# **Points** (40 in total, all autograded):
#
# | part | what | points |
# |---|---|---|
# | 1 | `make_betas`: linear, scaled-linear and cosine schedules | 6 |
# | 2 | `q_sample`: the forward process in one jump | 5 |
# | 3 | `ddpm_step`: the DDPM reverse step | 8 |
# | 4 | `ddim_step`: the DDIM step with $\eta$ | 8 |
# | 5 | `ddpm_loss`: the training loss | 5 |
# | 6 | your trained model: samples that a digit classifier recognises (thresholds in part 6) | 8 |
#
# Each test cell is all-or-nothing. Tests of later parts use reference versions of earlier parts, so a mistake
# costs points only once. Hidden tests (run when grading) compare your functions with diffusers on random cases;
# the visible ones catch the usual mistakes early.

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
# Parameters (read-only). Tests and CI set FAST = True to train for well under a minute.
import os

FAST = False
AUTOGRADE = os.environ.get("COURSE_AUTOGRADE") == "1"  # set by the graders: training is skipped
SEED = 0
IMAGE_SIZE = 8                  # digits are 1 x 8 x 8 (scikit-learn's scans), values in [-1, 1]
NUM_TRAIN_TIMESTEPS = 1000      # T
BETA_SCHEDULE = "linear"        # the schedule your model is trained with (and graded with)
WEIGHTS = "a3_ddpm_weights.safetensors"  # your trained denoiser, saved next to this notebook
# Graded (part 6): 256 samples (50 deterministic DDIM steps) judged by a digit classifier
MIN_CONFIDENCE = 0.60           # mean probability of the classifier's top class
MIN_CLASSES = 8                 # digits that each make up at least 2% of the samples
MAX_FRECHET = 3.0               # Frechet distance to held-out real digits (on 16 principal components)

# %%
import math
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from course_lib.data import load_digits
from course_lib.unet import UNet, UNetConfig
from course_lib.viz import plot_losses, show_images

torch.manual_seed(SEED)
train_images, train_labels = load_digits(IMAGE_SIZE, split="train")  # (1438, 1, 8, 8) in [-1, 1]
fig = show_images(train_images[:8], titles=[str(int(y)) for y in train_labels[:8]])


# %% [markdown]
# ## Part 1: noise schedules (6 points)
#
# The forward process adds a little Gaussian noise at each of $T$ steps,
# $q(x_t \mid x_{t-1}) = \mathcal N\big(\sqrt{1-\beta_t}\, x_{t-1},\ \beta_t I\big)$. The schedule is the list of
# variances $\beta_0, \dots, \beta_{T-1}$ (code counts from 0; the paper from 1). Three classics, with
# $u_t = t / (T - 1)$:
#
# - **linear** (DDPM): $\beta_t = \beta_{\text{start}} + u_t\,(\beta_{\text{end}} - \beta_{\text{start}})$;
# - **scaled linear** (Stable Diffusion): linear in $\sqrt\beta$, then squared:
#   $\beta_t = \big(\sqrt{\beta_{\text{start}}} + u_t\,(\sqrt{\beta_{\text{end}}} - \sqrt{\beta_{\text{start}}})\big)^2$;
# - **cosine** (Nichol & Dhariwal 2021) is defined through $\bar\alpha$ instead: with
#   $f(s) = \cos^2\!\big(\tfrac{s + 0.008}{1.008} \cdot \tfrac{\pi}{2}\big)$,
#   $\beta_t = \min\!\big(1 - f(\tfrac{t+1}{T}) / f(\tfrac{t}{T}),\ 0.999\big)$. It ignores $\beta_{\text{start}}$ and
#   $\beta_{\text{end}}$; the cap 0.999 keeps the last betas below 1 ($f$ reaches 0 at $s = 1$).
#
# From the betas: $\alpha_t = 1 - \beta_t$ and $\bar\alpha_t = \prod_{s \le t} \alpha_s$ (`torch.cumprod`), the share of
# the signal's variance left at step $t$.
#
# **Task**: implement `make_betas(schedule, num_train_timesteps, beta_start, beta_end)` for
# `schedule` in `"linear"`, `"scaled_linear"`, `"cosine"`, returning a float32 tensor of shape `(T,)`. Raise a
# `ValueError` that names `schedule` for any other name.

# %% nbgrader={"grade": false, "grade_id": "make_betas", "locked": false, "schema_version": 3, "solution": true}
def make_betas(schedule: str, num_train_timesteps: int, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> torch.Tensor:
    """The T variances beta_0 .. beta_{T-1} of the forward process, float32, shape (T,)."""
    ### BEGIN SOLUTION
    T = num_train_timesteps
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float32) ** 2
    if schedule == "cosine":
        f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731  (abar, up to f(0))
        betas = [min(1 - f((t + 1) / T) / f(t / T), 0.999) for t in range(T)]
        return torch.tensor(betas, dtype=torch.float32)
    raise ValueError(f"schedule must be 'linear', 'scaled_linear' or 'cosine', got {schedule!r}")
    ### END SOLUTION


def alphas_cumprod_from(betas: torch.Tensor) -> torch.Tensor:
    """abar_t = prod_{s <= t} (1 - beta_s), shape (T,). (Given: not part of the task.)"""
    return torch.cumprod(1.0 - betas, dim=0)


# %% nbgrader={"grade": true, "grade_id": "test_make_betas", "locked": true, "points": 6, "schema_version": 3, "solution": false}
# Visible tests: shapes, end points, the cap of the cosine schedule, a bad name.
_b = make_betas("linear", 1000)
assert _b.shape == (1000,) and _b.dtype == torch.float32, f"expected float32 of shape (1000,), got {_b.dtype} {tuple(_b.shape)}"
assert abs(_b[0].item() - 1e-4) < 1e-9 and abs(_b[-1].item() - 0.02) < 1e-7, (
    f"linear betas must run from beta_start to beta_end (both included), got {_b[0].item()} .. {_b[-1].item()}")
_b = make_betas("scaled_linear", 10, 0.00085, 0.012)
assert torch.allclose(_b.sqrt(), torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 10), atol=1e-7), (
    "scaled_linear: the square roots of the betas must be evenly spaced from sqrt(beta_start) to sqrt(beta_end)")
_b = make_betas("cosine", 1000)
assert _b.shape == (1000,) and _b.dtype == torch.float32
assert 0 < _b[0].item() < 1e-4, f"the cosine schedule starts tiny (about 4e-5 for T = 1000), got {_b[0].item()}"
assert abs(_b.max().item() - 0.999) < 1e-6, "the cosine betas are capped at 0.999 (the last one hits the cap)"
_abar = alphas_cumprod_from(_b)
assert abs(_abar[499].item() - math.cos((0.5 + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2) < 1e-3, (
    "cosine: abar_t should follow f((t+1)/T) / f(0); check which u each beta uses")
try:
    make_betas("quadratic", 10)
except ValueError as _err:
    assert "schedule" in str(_err), "the error message should name the argument 'schedule'"
else:
    raise AssertionError("make_betas('quadratic', ...) must raise a ValueError")
### BEGIN HIDDEN TESTS
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers import DDPMScheduler as _DDPM
_g = torch.Generator().manual_seed(301)
for _case in range(12):
    _T = int(torch.randint(2, 1200, (1,), generator=_g))
    _start = float(torch.empty(1).uniform_(1e-5, 1e-3, generator=_g))
    _end = float(torch.empty(1).uniform_(5e-3, 0.05, generator=_g))
    for _ours, _theirs in [("linear", "linear"), ("scaled_linear", "scaled_linear"), ("cosine", "squaredcos_cap_v2")]:
        _expected = _DDPM(num_train_timesteps=_T, beta_start=_start, beta_end=_end, beta_schedule=_theirs).betas
        _got = make_betas(_ours, _T, _start, _end)
        assert _got.shape == (_T,) and _got.dtype == torch.float32, (_ours, _T)
        assert torch.allclose(_got, _expected, rtol=1e-5, atol=1e-7), (_ours, _T, (_got - _expected).abs().max())
### END HIDDEN TESTS

# %%
# What the schedules do: the share of signal sqrt(abar_t) and of noise sqrt(1 - abar_t) along the chain.
_schedules = {"linear": make_betas("linear", NUM_TRAIN_TIMESTEPS),
              "scaled_linear": make_betas("scaled_linear", NUM_TRAIN_TIMESTEPS, 0.00085, 0.012),
              "cosine": make_betas("cosine", NUM_TRAIN_TIMESTEPS)}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for _name, _betas in _schedules.items():
    _abar = alphas_cumprod_from(_betas)
    axes[0].plot(_abar.sqrt(), label=_name)
    axes[1].plot(torch.log(_abar / (1 - _abar)), label=_name)
axes[0].set(title=r"signal kept: $\sqrt{\bar\alpha_t}$", xlabel="t")
axes[1].set(title=r"log SNR: $\log \bar\alpha_t / (1 - \bar\alpha_t)$", xlabel="t")
axes[0].legend()
fig.tight_layout()


# %% [markdown]
# ## Part 2: the forward process in one jump (5 points)
#
# Composing $t+1$ Gaussian steps gives a Gaussian again (DDPM eq. 4):
#
# $$q(x_t \mid x_0) = \mathcal N\big(\sqrt{\bar\alpha_t}\, x_0,\ (1 - \bar\alpha_t) I\big)
# \quad\Longleftrightarrow\quad x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \varepsilon,\ \ \varepsilon \sim \mathcal N(0, I).$$
#
# So training never runs the chain: it jumps straight to a random $t$. Note the square roots: $\bar\alpha_t$ and
# $1 - \bar\alpha_t$ are *variances*; signal and noise are scaled by their square roots, so that a unit-variance
# $x_0$ gives a unit-variance $x_t$ at every $t$.
#
# **Task**: implement `q_sample(x0, t, noise, alphas_cumprod)`. `x0` and `noise` have shape `(B, ...)` (any
# number of trailing dimensions), `t` is a `(B,)` integer tensor: **one timestep per example**. Return $x_t$ with the
# shape of `x0`, without modifying the inputs. (diffusers calls this `scheduler.add_noise(x0, noise, t)`.)

# %% nbgrader={"grade": false, "grade_id": "q_sample", "locked": false, "schema_version": 3, "solution": true}
def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, with t of shape (B,) (one timestep per example)."""
    ### BEGIN SOLUTION
    abar = alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[t]  # (B,)
    abar = abar.reshape(-1, *([1] * (x0.ndim - 1)))                 # (B, 1, ..., 1) broadcasts over x0
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_q_sample", "locked": true, "points": 5, "schema_version": 3, "solution": false}
# Visible tests: a known case, one timestep per example, inputs untouched.
_abar = torch.tensor([0.64, 0.36])
_x = q_sample(torch.ones(1, 1, 2, 2), torch.tensor([0]), torch.ones(1, 1, 2, 2), _abar)
assert _x.shape == (1, 1, 2, 2), f"x_t must have the shape of x0, got {tuple(_x.shape)}"
assert torch.allclose(_x, torch.full((1, 1, 2, 2), 1.4)), (
    f"abar = 0.64: x_t = sqrt(0.64) * 1 + sqrt(0.36) * 1 = 0.8 + 0.6 = 1.4, got {_x.flatten()[0].item():.4f}. "
    "Hint: scale x0 by sqrt(abar_t) and the noise by sqrt(1 - abar_t), not by abar_t itself.")
_x0, _eps = torch.zeros(2, 3), torch.ones(2, 3)
_x = q_sample(_x0, torch.tensor([0, 1]), _eps, _abar)
assert torch.allclose(_x, torch.tensor([[0.6] * 3, [0.8] * 3])), (
    "row b must use its own timestep t[b]: expected rows 0.6 (t = 0) and 0.8 (t = 1); "
    "reshape abar[t] to (B, 1, ...) so that it broadcasts over each example")
assert torch.equal(_x0, torch.zeros(2, 3)) and torch.equal(_eps, torch.ones(2, 3)), "q_sample must not modify its inputs"
### BEGIN HIDDEN TESTS
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers import DDPMScheduler as _DDPM
_g = torch.Generator().manual_seed(302)
for _schedule in ["linear", "scaled_linear", "squaredcos_cap_v2"]:
    _T = int(torch.randint(10, 1000, (1,), generator=_g))
    _ref = _DDPM(num_train_timesteps=_T, beta_schedule=_schedule)
    for _shape in [(7, 1, 16, 16), (5, 3), (4, 2, 3, 5, 2)]:
        _x0, _eps = torch.randn(_shape, generator=_g), torch.randn(_shape, generator=_g)
        _t = torch.randint(0, _T, (_shape[0],), generator=_g)
        _expected = _ref.add_noise(_x0, _eps, _t)
        _got = q_sample(_x0.clone(), _t, _eps.clone(), _ref.alphas_cumprod.clone())
        assert torch.allclose(_got, _expected, atol=1e-5), (_schedule, _shape, (_got - _expected).abs().max())
### END HIDDEN TESTS

# %%
# Explorer: the same noise added to six digits at timestep t (drag the slider; a static figure is shown too).
import ipywidgets as widgets

_digits, _noise = train_images[:6], torch.randn(6, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))


def show_noising(t: int = 100):
    rows = [q_sample(_digits, torch.full((6,), t), _noise, alphas_cumprod_from(betas)).clamp(-1, 1)
            for betas in _schedules.values()]
    fig = show_images(torch.cat(rows), ncols=6, titles=[f"{name}, t={t}" if i == 0 else ""
                                                         for name in _schedules for i in range(6)])
    plt.show()


show_noising()
widgets.interact(show_noising, t=widgets.IntSlider(value=100, min=0, max=NUM_TRAIN_TIMESTEPS - 1, step=10));


# %% [markdown]
# ## Part 3: the DDPM reverse step (8 points)
#
# The model $\varepsilon_\theta(x_t, t)$ predicts the noise in $x_t$. That gives a guess of the clean image (DDPM eq. 15),
#
# $$\hat x_0 = \frac{x_t - \sqrt{1 - \bar\alpha_t}\,\varepsilon_\theta}{\sqrt{\bar\alpha_t}},$$
#
# and one step back samples the Gaussian posterior $q(x_{t-1} \mid x_t, x_0 = \hat x_0)$ (DDPM eq. 6-7):
#
# $$\tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1 - \bar\alpha_t}\,\hat x_0 + \frac{\sqrt{\alpha_t}\,(1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t}\,x_t,
# \qquad \tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}\,\beta_t,
# \qquad x_{t-1} = \tilde\mu_t + \sqrt{\tilde\beta_t}\, z .$$
#
# Details that matter (they are where diffusers and a careless implementation part ways):
# - take $\beta_t$ and $\alpha_t$ from the schedule as $\alpha_t = \bar\alpha_t / \bar\alpha_{t-1}$, $\beta_t = 1 - \alpha_t$;
# - at $t = 0$ there is no step before: use $\bar\alpha_{-1} = 1$ (careful: `alphas_cumprod[-1]` in Python is the
#   *last* entry!) and add **no** noise ($z = 0$), so the last step returns $\tilde\mu_0 = \hat x_0$;
# - the variance is the posterior variance $\tilde\beta_t$ ("fixed_small" in diffusers), not $\beta_t$;
# - `clip_sample=True` clips $\hat x_0$ to $[-1, 1]$ before the mean is formed (our images live there).
#
# **Task**: implement `ddpm_step(eps, t, x_t, alphas_cumprod, noise, clip_sample=False)` for an integer `t`
# (the same for the whole batch); `noise` is $z$, a tensor like `x_t`. Return $x_{t-1}$.

# %% nbgrader={"grade": false, "grade_id": "ddpm_step", "locked": false, "schema_version": 3, "solution": true}
def ddpm_step(eps: torch.Tensor, t: int, x_t: torch.Tensor, alphas_cumprod: torch.Tensor,
              noise: torch.Tensor, clip_sample: bool = False) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1} of DDPM (Ho et al. 2020, Algorithm 2 with the posterior variance)."""
    ### BEGIN SOLUTION
    # 1. abar_t, abar_{t-1} (= 1 before the first step), and the alpha/beta of this step
    abar_t = alphas_cumprod[t]
    abar_prev = alphas_cumprod[t - 1] if t > 0 else torch.tensor(1.0)
    alpha_t = abar_t / abar_prev
    beta_t = 1 - alpha_t
    # 2. x0_hat from the predicted noise (eq. 15), clipped if asked
    x0 = (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    if clip_sample:
        x0 = x0.clamp(-1, 1)
    # 3. posterior mean (eq. 7)
    mean = (abar_prev.sqrt() * beta_t / (1 - abar_t)) * x0 + (alpha_t.sqrt() * (1 - abar_prev) / (1 - abar_t)) * x_t
    if t == 0:
        return mean
    # 4. posterior variance beta~_t (eq. 7) and fresh noise
    variance = (1 - abar_prev) / (1 - abar_t) * beta_t
    return mean + variance.sqrt() * noise
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_ddpm_step", "locked": true, "points": 8, "schema_version": 3, "solution": false}
# Visible tests: a two-step schedule worked out by hand, the last step adds no noise.
_abar = torch.tensor([0.9, 0.5])
_x_t, _eps, _z = torch.ones(1, 1), torch.zeros(1, 1), torch.ones(1, 1)
_beta1 = 1 - 0.5 / 0.9                                        # beta_1 from abar_1 / abar_0
_x0_hat = 1 / math.sqrt(0.5)                                  # eps = 0: x0_hat = x_t / sqrt(abar_1)
_mean = math.sqrt(0.9) * _beta1 / 0.5 * _x0_hat + math.sqrt(1 - _beta1) * 0.1 / 0.5 * 1.0
_var = 0.1 / 0.5 * _beta1                                     # posterior variance beta~_1
_got = ddpm_step(_eps, 1, _x_t, _abar, torch.zeros(1, 1)).item()
assert abs(_got - _mean) < 1e-5, f"with z = 0 the step must return the posterior mean {_mean:.5f}, got {_got:.5f}"
_got = ddpm_step(_eps, 1, _x_t, _abar, _z).item()
assert abs(_got - (_mean + math.sqrt(_var))) < 1e-5, (
    f"expected mean + sqrt(beta~_t) * z = {_mean + math.sqrt(_var):.5f}, got {_got:.5f}. Hint: the noise is "
    f"scaled by the posterior std sqrt((1 - abar_(t-1)) / (1 - abar_t) * beta_t) = {math.sqrt(_var):.4f}, "
    f"not by sqrt(beta_t) = {math.sqrt(_beta1):.4f}")
_got = ddpm_step(torch.full((1, 1), 0.3), 0, torch.ones(1, 1), _abar, _z)
_x0_hat = (1 - math.sqrt(0.1) * 0.3) / math.sqrt(0.9)
assert abs(_got.item() - _x0_hat) < 1e-5, (
    f"at t = 0 the step returns x0_hat = {_x0_hat:.5f} and adds no noise, got {_got.item():.5f}. Hint: abar_(-1) is "
    "1, not alphas_cumprod[-1]")
_got = ddpm_step(torch.full((1, 1), -3.0), 0, torch.ones(1, 1), _abar, _z, clip_sample=True)
assert abs(_got.item() - 1.0) < 1e-6, "clip_sample=True clips x0_hat to [-1, 1]"
### BEGIN HIDDEN TESTS
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers import DDPMScheduler as _DDPM
_g = torch.Generator().manual_seed(303)
for _case in range(24):
    _schedule = ["linear", "scaled_linear", "squaredcos_cap_v2"][_case % 3]
    _clip = bool(_case % 2)
    _T = int(torch.randint(10, 1000, (1,), generator=_g))
    _ref = _DDPM(num_train_timesteps=_T, beta_schedule=_schedule, clip_sample=_clip)
    _t = [0, 1, _T - 1][_case % 4] if _case % 4 < 3 else int(torch.randint(0, _T, (1,), generator=_g))
    _x, _e = torch.randn(3, 1, 5, 5, generator=_g), torch.randn(3, 1, 5, 5, generator=_g)
    _seed = 1000 + _case
    _expected = _ref.step(_e, _t, _x, generator=torch.Generator().manual_seed(_seed)).prev_sample
    _z = torch.randn(_x.shape, generator=torch.Generator().manual_seed(_seed))  # the noise diffusers drew
    _got = ddpm_step(_e.clone(), _t, _x.clone(), _ref.alphas_cumprod.clone(), _z, clip_sample=_clip)
    assert _got.shape == _x.shape
    assert torch.allclose(_got, _expected, atol=1e-4, rtol=1e-4), (_schedule, _T, _t, _clip, (_got - _expected).abs().max())
### END HIDDEN TESTS

# %% [markdown]
# ## Part 4: the DDIM step (8 points)
#
# DDIM (Song et al. 2021) keeps the training and the marginals $q(x_t \mid x_0)$ but changes the reverse process so
# that it can jump from $t$ straight to an earlier $t' < t$ (e.g. 50 steps instead of 1000). With
# $\hat x_0$ as in part 3, DDIM eq. (12) and (16):
#
# $$x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{1 - \bar\alpha_{t'} - \sigma_t^2}\;\varepsilon_\theta + \sigma_t\, z,
# \qquad \sigma_t = \eta\,\sqrt{\frac{1 - \bar\alpha_{t'}}{1 - \bar\alpha_t}}\,\sqrt{1 - \frac{\bar\alpha_t}{\bar\alpha_{t'}}} .$$
#
# - $\eta = 0$: no fresh noise, a deterministic map from $x_T$ to $x_0$ (same start, same image);
# - $\eta = 1$ and $t' = t - 1$: $\sigma_t^2 = \tilde\beta_t$, the DDPM step again;
# - after the last step ($t' < 0$) use $\bar\alpha_{t'} = 1$ (diffusers' `set_alpha_to_one=True`);
# - `clip_sample=True` clips $\hat x_0$; $\varepsilon_\theta$ in the direction term stays the model's output.
#
# **Task**: implement `ddim_step(eps, t, prev_t, x_t, alphas_cumprod, eta=0.0, noise=None, clip_sample=False)`;
# `noise` ($z$, like `x_t`) is used only when $\eta > 0$. Return $x_{t'}$.

# %% nbgrader={"grade": false, "grade_id": "ddim_step", "locked": false, "schema_version": 3, "solution": true}
def ddim_step(eps: torch.Tensor, t: int, prev_t: int, x_t: torch.Tensor, alphas_cumprod: torch.Tensor,
              eta: float = 0.0, noise: torch.Tensor | None = None, clip_sample: bool = False) -> torch.Tensor:
    """One DDIM step x_t -> x_{prev_t} (Song et al. 2021, eq. 12 with sigma_t(eta) of eq. 16)."""
    ### BEGIN SOLUTION
    # 1. abar_t and abar_t' (= 1 after the last step)
    abar_t = alphas_cumprod[t]
    abar_prev = alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
    # 2. x0_hat, clipped if asked (eps itself stays as predicted)
    x0 = (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    if clip_sample:
        x0 = x0.clamp(-1, 1)
    # 3. sigma_t(eta), eq. (16)
    sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
    # 4. x_t' = sqrt(abar_t') x0_hat + "direction pointing to x_t" + sigma_t z, eq. (12)
    x_prev = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt() * eps
    if eta > 0:
        x_prev = x_prev + sigma * noise
    return x_prev
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_ddim_step", "locked": true, "points": 8, "schema_version": 3, "solution": false}
# Visible tests: eta = 0 is deterministic, the last step lands on x0_hat, eta = 1 gives the posterior variance.
_abar = torch.tensor([0.9, 0.7, 0.5, 0.3])
_x, _e = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
_x0_hat = (_x - math.sqrt(0.5) * _e) / math.sqrt(0.5)
_a = ddim_step(_e, 2, 0, _x, _abar, eta=0.0, noise=torch.randn(2, 1, 3, 3))
_b = ddim_step(_e, 2, 0, _x, _abar, eta=0.0, noise=torch.randn(2, 1, 3, 3))
assert _a.shape == _x.shape and torch.allclose(_a, _b), "with eta = 0 the step is deterministic: it ignores noise"
assert torch.allclose(_a, math.sqrt(0.9) * _x0_hat + math.sqrt(0.1) * _e, atol=1e-5), (
    "eta = 0: x_t' = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') eps")
assert torch.allclose(ddim_step(_e, 2, -1, _x, _abar), _x0_hat, atol=1e-5), (
    "after the last step (prev_t < 0) abar_t' = 1, so the step returns x0_hat")
_z = torch.ones(2, 1, 3, 3)
_diff = ddim_step(_e, 2, 1, _x, _abar, eta=1.0, noise=_z) - ddim_step(_e, 2, 1, _x, _abar, eta=1.0, noise=0 * _z)
_sigma = math.sqrt((1 - 0.7) / (1 - 0.5) * (1 - 0.5 / 0.7))  # = sqrt(beta~) of the jump 2 -> 1
assert torch.allclose(_diff, torch.full_like(_diff, _sigma), atol=1e-5), (
    f"eta = 1: the noise must be scaled by sigma_t = {_sigma:.4f}, got {_diff.flatten()[0].item():.4f}. "
    "Hint: sigma_t = eta * sqrt((1 - abar_t') / (1 - abar_t)) * sqrt(1 - abar_t / abar_t'); is eta used?")
### BEGIN HIDDEN TESTS
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers import DDIMScheduler as _DDIM
_g = torch.Generator().manual_seed(304)
for _case in range(24):
    _schedule = ["linear", "scaled_linear", "squaredcos_cap_v2"][_case % 3]
    _clip = bool(_case % 2)
    _eta = [0.0, 1.0, 0.5, float(torch.rand(1, generator=_g))][_case % 4]
    _T = int(torch.randint(50, 1000, (1,), generator=_g))
    _n = int(torch.randint(2, 50, (1,), generator=_g))
    _ref = _DDIM(num_train_timesteps=_T, beta_schedule=_schedule, clip_sample=_clip, set_alpha_to_one=True)
    _ref.set_timesteps(_n)
    _t = int(_ref.timesteps[[0, -1, len(_ref.timesteps) // 2][_case % 3]])
    _prev = _t - _T // _n
    _x, _e = torch.randn(3, 2, 4, 4, generator=_g), torch.randn(3, 2, 4, 4, generator=_g)
    _z = torch.randn(3, 2, 4, 4, generator=_g)
    _expected = _ref.step(_e, _t, _x, eta=_eta, variance_noise=_z).prev_sample
    _got = ddim_step(_e.clone(), _t, _prev, _x.clone(), _ref.alphas_cumprod.clone(), eta=_eta, noise=_z.clone(),
                     clip_sample=_clip)
    assert torch.allclose(_got, _expected, atol=1e-4, rtol=1e-4), (_schedule, _T, _n, _t, _eta, _clip,
                                                                   (_got - _expected).abs().max())
### END HIDDEN TESTS

# %% [markdown]
# ## Part 5: the training loss (5 points)
#
# DDPM's Algorithm 1 in four lines: take clean images $x_0$, draw one timestep per image $t \sim \mathcal U\{0, \dots, T-1\}$
# and noise $\varepsilon \sim \mathcal N(0, I)$, jump to $x_t$ with `q_sample`, and regress the noise:
#
# $$L = \mathbb E_{x_0, t, \varepsilon}\,\big\| \varepsilon - \varepsilon_\theta(x_t, t) \big\|^2 \quad\text{(the mean over all numbers of the batch).}$$
#
# **Task**: implement `ddpm_loss(model, x0, alphas_cumprod, generator=None)`; `model(x_t, t)` takes `t` as a `(B,)`
# long tensor. Draw `t` and the noise with `generator` (`torch.randint(..., generator=generator)`,
# `torch.randn(..., generator=generator)`), call the model **once**, return a scalar.

# %% nbgrader={"grade": false, "grade_id": "ddpm_loss", "locked": false, "schema_version": 3, "solution": true}
def ddpm_loss(model: nn.Module, x0: torch.Tensor, alphas_cumprod: torch.Tensor,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """The simple DDPM loss: mean squared error between the true and the predicted noise."""
    ### BEGIN SOLUTION
    T = alphas_cumprod.shape[0]
    t = torch.randint(0, T, (x0.shape[0],), generator=generator)                 # (B,)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)           # (B, ...)
    x_t = q_sample(x0, t, noise, alphas_cumprod)
    return F.mse_loss(model(x_t, t), noise)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_ddpm_loss", "locked": true, "points": 5, "schema_version": 3, "solution": false}
# This test grades ddpm_loss on its own: it swaps in a reference q_sample while it runs.
def _reference_q_sample(x0, t, noise, alphas_cumprod):
    _a = alphas_cumprod[t].reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.sqrt(_a) * x0 + torch.sqrt(1 - _a) * noise


class _Oracle(nn.Module):
    """Knows x0, so it can solve x_t = sqrt(abar) x0 + sqrt(1 - abar) eps for eps exactly."""

    def __init__(self, x0, alphas_cumprod, scale=1.0):
        super().__init__()
        self.x0, self.abar, self.scale, self.calls = x0, alphas_cumprod, scale, []

    def forward(self, x_t, t):
        self.calls.append((x_t.detach().clone(), t.detach().clone()))
        _a = self.abar[t].reshape(-1, *([1] * (x_t.ndim - 1)))
        return self.scale * (x_t - _a.sqrt() * self.x0) / (1 - _a).sqrt()


_your_q_sample, q_sample = q_sample, _reference_q_sample
try:
    _abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), dim=0)  # a reference linear schedule
    _x0 = torch.rand(8, 1, 4, 4) * 2 - 1
    _oracle = _Oracle(_x0, _abar)
    _loss = ddpm_loss(_oracle, _x0, _abar, generator=torch.Generator().manual_seed(0))
    assert _loss.ndim == 0, f"the loss must be a scalar, got shape {tuple(_loss.shape)}"
    assert len(_oracle.calls) == 1, f"call the model once per loss, got {len(_oracle.calls)} calls"
    _, _t = _oracle.calls[0]
    assert _t.shape == (8,) and _t.dtype == torch.long, f"t must be a (B,) long tensor, got {_t.dtype} {tuple(_t.shape)}"
    assert _loss.item() < 1e-8, (
        f"a model that predicts the true noise must get loss 0, got {_loss.item():.3g}. Hint: the target is the "
        "noise that went into q_sample, and the model is called on x_t")
    _half = ddpm_loss(_Oracle(_x0, _abar, scale=0.5), _x0, _abar, generator=torch.Generator().manual_seed(0))
    assert 0.1 < _half.item() < 0.5, f"predicting half the noise should cost about 0.25, got {_half.item():.3f}"
    ### BEGIN HIDDEN TESTS
    _x0 = torch.rand(4096, 1, 2, 2) * 2 - 1
    _oracle = _Oracle(_x0, _abar, scale=0.0)  # predicts zeros: the loss is the mean square of the noise
    _loss = ddpm_loss(_oracle, _x0, _abar, generator=torch.Generator().manual_seed(1))
    _x_t, _t = _oracle.calls[0]
    _a = _abar[_t].reshape(-1, 1, 1, 1)
    _eps = (_x_t - _a.sqrt() * _x0) / (1 - _a).sqrt()   # the noise that was drawn
    assert torch.allclose(_loss, _eps.pow(2).mean(), rtol=1e-4), "the loss is the mean of (eps - prediction)^2"
    assert 0.9 < _eps.pow(2).mean().item() < 1.1 and abs(_eps.mean().item()) < 0.05, "the noise must be N(0, I)"
    assert _t.min().item() < 20 and _t.max().item() > 980 and abs(_t.float().mean().item() - 499.5) < 25, (
        "t must be uniform over 0 .. T-1")
    _l1 = ddpm_loss(_Oracle(_x0, _abar, 0.0), _x0, _abar, generator=torch.Generator().manual_seed(5))
    _l2 = ddpm_loss(_Oracle(_x0, _abar, 0.0), _x0, _abar, generator=torch.Generator().manual_seed(5))
    _l3 = ddpm_loss(_Oracle(_x0, _abar, 0.0), _x0, _abar, generator=torch.Generator().manual_seed(6))
    assert torch.equal(_l1, _l2) and not torch.equal(_l1, _l3), "draw t and the noise from the generator"
    _net = nn.Conv2d(1, 1, 3, padding=1)
    _small_abar = _abar[:50]
    ddpm_loss(lambda _xt, _tt: _net(_xt), torch.randn(6, 1, 4, 4), _small_abar).backward()
    assert _net.weight.grad is not None, "the loss must be differentiable w.r.t. the model's parameters"
    ### END HIDDEN TESTS
finally:
    q_sample = _your_q_sample


# %% [markdown]
# ## Part 6: train a small DDPM on digits (8 points)
#
# The denoiser is the course's `UNet` (lecture 3 used the same), on scikit-learn's original 8x8 digit scans. It is a
# text-conditioned network, so an unconditional model passes a constant "prompt": one all-zero token. You may
# replace `build_model` with your own network, as long as `build_model()` needs no arguments and the model maps
# `(x_t (B, 1, 8, 8), t (B,) long)` to a noise prediction of the shape of `x_t`.
#
# The training cell uses **your** `make_betas` and `ddpm_loss`, keeps an exponential moving average (EMA) of the
# weights (diffusion models are always sampled with averaged weights: they are visibly cleaner than the last,
# noisy iterate) and saves the averaged weights to `a3_ddpm_weights.safetensors`. You may change the training cell
# (steps, learning rate, batch size), but not the graded cell.
#
# **Graded** (the cell after the samples): 256 samples of your saved model, drawn with diffusers' `DDIMScheduler`
# (25 steps, $\eta = 0$, `clip_sample=True`, the schedule `BETA_SCHEDULE`) from fixed noise, are judged by a
# logistic-regression digit classifier trained on all 1797 real digits:
#
# - the mean probability of the classifier's top class is at least **0.60** (`MIN_CONFIDENCE`): samples look like
#   *some* digit;
# - at least **8** of the 10 digits (`MIN_CLASSES`) each make up at least 2% of the samples: no mode collapse;
# - the Frechet distance between samples and the 359 held-out real digits, computed on the 16 principal components of
#   the real digits, is at most **3.0** (`MAX_FRECHET`): the samples spread like real digits.
#
# For scale (confidence, digits present, distance): 256 real training digits score (0.87, 10, 0.43); pure noise
# (0.53, 9, 8.2); blurred real digits (0.52, 9, 7.9). The default training (3000 steps, about 5 minutes on a laptop
# CPU) reaches about (0.84, 10, 0.57); the short FAST run of the tests (600 steps) (0.70, 10, 0.62).

# %%
class Denoiser(nn.Module):
    """eps_theta(x_t, t) for 1 x 8 x 8 digits: the course's UNet with a constant, empty condition."""

    def __init__(self):
        super().__init__()
        self.config = UNetConfig(in_channels=1, out_channels=1, block_channels=(32, 64), layers_per_block=1,
                                 attention_levels=(), num_heads=4, context_dim=8, norm_groups=8)
        self.unet = UNet(self.config)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        empty_prompt = x_t.new_zeros(x_t.shape[0], 1, self.config.context_dim)  # (B, 1 token, 8)
        return self.unet(x_t, t, empty_prompt)


def build_model() -> nn.Module:
    """The graders call this (without arguments) before loading your weights."""
    return Denoiser()


# %%
from course_lib.train import EMA, cosine_schedule_with_warmup

if not AUTOGRADE:  # the graders skip training and grade the weights you submit
    torch.manual_seed(SEED)
    steps, batch_size, learning_rate = (600 if FAST else 3000), 64, 2e-3
    alphas_cumprod = alphas_cumprod_from(make_betas(BETA_SCHEDULE, NUM_TRAIN_TIMESTEPS))
    model = build_model()
    ema = EMA(model, decay=0.995)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    lr_schedule = cosine_schedule_with_warmup(optimizer, warmup_steps=min(100, steps // 10), total_steps=steps)
    generator = torch.Generator().manual_seed(SEED)
    losses = []
    for step in tqdm(range(steps), desc="training"):
        x0 = train_images[torch.randint(len(train_images), (batch_size,), generator=generator)]
        loss = ddpm_loss(model, x0, alphas_cumprod, generator=generator)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.update()
        losses.append(loss.item())
    ema.copy_to(model)  # keep the averaged weights
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, WEIGHTS)  # (the UNet is channels-last)
    fig = plot_losses(losses, title="ddpm_loss during training")

# %%
# Your samplers on your model: DDIM (eta is a knob) and, when not grading, the full 1000-step DDPM chain.
import ipywidgets as widgets


@torch.no_grad()
def sample_ddim(model, n=16, num_steps=50, eta=0.0, seed=0):
    """x_T ~ N(0, I), then num_steps DDIM steps on diffusers' "leading" timesteps (T - T/n, ..., 0)."""
    generator = torch.Generator().manual_seed(seed)
    alphas_cumprod = alphas_cumprod_from(make_betas(BETA_SCHEDULE, NUM_TRAIN_TIMESTEPS))
    stride = NUM_TRAIN_TIMESTEPS // num_steps
    x = torch.randn(n, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    for t in range(stride * (num_steps - 1), -1, -stride):
        eps = model(x, torch.full((n,), t))
        z = torch.randn(x.shape, generator=generator)
        x = ddim_step(eps, t, t - stride, x, alphas_cumprod, eta=eta, noise=z, clip_sample=True)
    return x.clamp(-1, 1)


@torch.no_grad()
def sample_ddpm(model, n=16, seed=0):
    """Ancestral sampling through all T steps (DDPM Algorithm 2)."""
    generator = torch.Generator().manual_seed(seed)
    alphas_cumprod = alphas_cumprod_from(make_betas(BETA_SCHEDULE, NUM_TRAIN_TIMESTEPS))
    x = torch.randn(n, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    for t in tqdm(range(NUM_TRAIN_TIMESTEPS - 1, -1, -1), desc="DDPM", leave=False):
        x = ddpm_step(model(x, torch.full((n,), t)), t, x, alphas_cumprod, torch.randn(x.shape, generator=generator),
                      clip_sample=True)
    return x.clamp(-1, 1)


if os.path.exists(WEIGHTS) and not AUTOGRADE:
    trained = build_model()
    trained.load_state_dict(load_file(WEIGHTS))
    trained.eval()
    fig = show_images(sample_ddpm(trained), ncols=16)
    fig.suptitle("your ddpm_step, 1000 steps", y=1.08)

    def show_ddim(eta=0.0, num_steps=50):
        fig = show_images(sample_ddim(trained, num_steps=num_steps, eta=eta), ncols=16)
        fig.suptitle(f"your ddim_step, {num_steps} steps, eta = {eta}", y=1.08)
        plt.show()

    show_ddim()
    widgets.interact(show_ddim, eta=widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.1),
                     num_steps=widgets.IntSlider(value=50, min=5, max=200, step=5));

# %% nbgrader={"grade": true, "grade_id": "test_samples", "locked": true, "points": 8, "schema_version": 3, "solution": false}
# Graded: samples of your saved model, drawn with diffusers' DDIM sampler, judged by a digit classifier.
# While grading (AUTOGRADE), the grader draws these same 256 samples from the weights you handed in, outside this
# notebook, and applies the same three thresholds; in this cell the weights then only have to load.
assert os.path.exists(WEIGHTS), f"{WEIGHTS} not found: run the training cell (and submit the file with the notebook)"
trained = build_model()
trained.load_state_dict(load_file(WEIGHTS))
trained.eval()
if not AUTOGRADE:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import DDIMScheduler
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression
    from course_lib.metrics import frechet_distance

    _diffusers_names = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
    _sampler = DDIMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule=_diffusers_names[BETA_SCHEDULE],
                             clip_sample=True, set_alpha_to_one=True)
    _sampler.set_timesteps(25)
    _x = torch.randn(256, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(2024))
    with torch.no_grad():
        for _t in _sampler.timesteps:
            _x = _sampler.step(trained(_x, torch.full((256,), int(_t))), _t, _x).prev_sample
    _samples = _x.clamp(-1, 1).flatten(1).numpy()          # (256, 64)
    _real, _real_labels = load_digits(IMAGE_SIZE, split="all")
    _held_out = load_digits(IMAGE_SIZE, split="test")[0].flatten(1).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _judge = LogisticRegression(C=0.1, max_iter=2000).fit(_real.flatten(1).numpy(), _real_labels.numpy())
        _probs = _judge.predict_proba(_samples)          # (256, 10)
        _pca = PCA(n_components=16, random_state=0).fit(_real.flatten(1).numpy())
        _f_samples, _f_real = torch.from_numpy(_pca.transform(_samples)), torch.from_numpy(_pca.transform(_held_out))
    _confidence = float(_probs.max(axis=1).mean())
    _counts = torch.bincount(torch.from_numpy(_probs.argmax(axis=1)), minlength=10)
    _classes = int((_counts >= 0.02 * 256).sum())
    _frechet = frechet_distance(_f_samples.mean(0), torch.cov(_f_samples.T), _f_real.mean(0), torch.cov(_f_real.T))
    print(f"confidence {_confidence:.3f} (>= {MIN_CONFIDENCE}), digits present {_classes} (>= {MIN_CLASSES}): "
          f"{_counts.tolist()}, Frechet distance {_frechet:.2f} (<= {MAX_FRECHET})")
    assert _confidence >= MIN_CONFIDENCE, f"the classifier is unsure what your samples show: {_confidence:.3f} < {MIN_CONFIDENCE}"
    assert _classes >= MIN_CLASSES, f"only {_classes} digits make up 2% of the samples or more: {_counts.tolist()}"
    assert _frechet <= MAX_FRECHET, f"the samples do not spread like real digits: distance {_frechet:.2f} > {MAX_FRECHET}"
### BEGIN HIDDEN TESTS
assert sum(p.numel() for p in trained.parameters()) < 20_000_000, "keep the model small"
if not AUTOGRADE:
    assert _samples.shape == (256, IMAGE_SIZE * IMAGE_SIZE) and np.isfinite(_samples).all()
### END HIDDEN TESTS

# %% [markdown]
# ## Going further (not graded)
#
# - In a copy of this notebook (the parameters cell is read-only), train with `BETA_SCHEDULE = "cosine"`. For 8x8 images the
#   linear schedule destroys the signal early; where does the log-SNR plot of part 1 say the cosine schedule spends
#   its steps?
# - Sample with DDIM at 10, 25, 50 and 200 steps and with $\eta = 0$ and $1$. Where does quality break down?
# - Predict $v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0$ instead of $\varepsilon$ (diffusers'
#   `prediction_type="v_prediction"`): which lines of your steps change?

# %% [markdown]
# ## Submitting
#
# 1. Run every cell from the top (*Kernel -> Restart & Run All*) and check that the visible tests pass.
# 2. Submit **`a3_ddpm.ipynb` and `a3_ddpm_weights.safetensors`** (on Colab: download both from the file browser on the left first).
#    The graders run your notebook with `COURSE_AUTOGRADE=1`: training cells are skipped and the graded cells
#    load the weights you submitted, on a CPU.
# 3. Do not rename the notebook or the weights file, and do not change the read-only cells: they are restored
#    before grading.

"""Build the nbgrader SOURCE notebooks of assignments 3 and 4 (solutions/a3_ddpm, solutions/a4_latent_diffusion).

    .venv/bin/python tools/build_assignments_a3_a4.py                  # writes solutions/<a>/<a>.ipynb (both)
    .venv/bin/python tools/build_assignments_a3_a4.py a3_ddpm          # just one
    .venv/bin/python -m course_lib.grading release a3_ddpm             # then regenerate assignments/<a>/, commit both

The notebooks are written here as Python strings so that a change is one readable diff; edit this file, not the
.ipynb files. Cell kinds come from course_lib.grading.cells (answer / test / locked cells). Mutants for the
grading tests: tests/assignment_mutants/a3_ddpm.py and a4_latent_diffusion.py (they replace answer cells by id).
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from course_lib.grading.cells import answer_cell, code, locked_cell, markdown, notebook, test_cell  # noqa: E402

REPO_URL = "https://github.com/sd-course/latent-diffusion-course"


def badge(assignment: str) -> str:
    url = (f"https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/main/assignments/"
           f"{assignment}/{assignment}.ipynb")
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


SETUP = f'''
# Colab: install the course library; Colab's own torch stays (the course asks for torch>=2.1).
import sys, subprocess
if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "course_lib @ git+{REPO_URL}"], check=True)
'''

SUBMIT = '''
## Submitting

1. Run every cell from the top (*Kernel -> Restart & Run All*) and check that the visible tests pass.
2. Submit **{files}** (on Colab: download {them} from the file browser on the left first).
   The graders run your notebook with `COURSE_AUTOGRADE=1`: training cells are skipped and the graded cells
   load the weights you submitted, on a CPU.
3. Do not rename the notebook or the weights file, and do not change the read-only cells: they are restored
   before grading.
'''


# ===================================================================================================== a3_ddpm

A3_TITLE = f'''
# Assignment 3: DDPM and DDIM from the equations

{badge("a3_ddpm")}

Lecture 3 trained a denoising diffusion model with diffusers' scheduler doing the bookkeeping. Here you write
that bookkeeping yourself: the noise schedules, the forward process in one jump, the DDPM reverse step and the
DDIM step. Each piece is checked against 🤗 diffusers' `DDPMScheduler` / `DDIMScheduler`. Then you train a
small DDPM on handwritten digits (scikit-learn's original 8x8 scans) with your own loss and sample from it with your own samplers.

**What you will learn**
- how $\\beta_t$, $\\alpha_t$ and $\\bar\\alpha_t$ relate, and what the linear, scaled-linear and cosine schedules do
  to the signal-to-noise ratio;
- the closed form $q(x_t \\mid x_0)$ that makes training a one-liner;
- the DDPM reverse step: the posterior mean and the posterior variance $\\tilde\\beta_t$;
- the DDIM step, and how $\\eta$ moves it between a deterministic sampler ($\\eta = 0$) and DDPM ($\\eta = 1$);
- the noise-prediction loss, and how to judge samples of a generative model with a classifier.

**Prerequisites**: lecture 3 (DDPM, where the course's `UNet` denoised digits) and lecture 4 (faster sampling:
DDIM).

**Time**: 1.5-3 hours of work. Training (part 6, 3000 steps) takes about 5 minutes on a laptop CPU: measured
4.6 minutes of one CPU core (9 minutes of wall clock on a busy shared 2-core machine), about 1 minute on a Colab
GPU. Grading your notebook takes about 10 seconds.

**Points** (40 in total, all autograded):

| part | what | points |
|---|---|---|
| 1 | `make_betas`: linear, scaled-linear and cosine schedules | 6 |
| 2 | `q_sample`: the forward process in one jump | 5 |
| 3 | `ddpm_step`: the DDPM reverse step | 8 |
| 4 | `ddim_step`: the DDIM step with $\\eta$ | 8 |
| 5 | `ddpm_loss`: the training loss | 5 |
| 6 | your trained model: samples that a digit classifier recognises (thresholds in part 6) | 8 |

Each test cell is all-or-nothing. Tests of later parts use reference versions of earlier parts, so a mistake
costs points only once. Hidden tests (run when grading) compare your functions with diffusers on random cases;
the visible ones catch the usual mistakes early.
'''

A3_PARAMS = '''
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
MIN_CONFIDENCE = @MIN_CONFIDENCE@           # mean probability of the classifier's top class
MIN_CLASSES = @MIN_CLASSES@                 # digits that each make up at least 2% of the samples
MAX_FRECHET = @MAX_FRECHET@               # Frechet distance to held-out real digits (on 16 principal components)
'''

A3_IMPORTS = '''
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
'''

A3_PART1 = r'''
## Part 1: noise schedules (6 points)

The forward process adds a little Gaussian noise at each of $T$ steps,
$q(x_t \mid x_{t-1}) = \mathcal N\big(\sqrt{1-\beta_t}\, x_{t-1},\ \beta_t I\big)$. The schedule is the list of
variances $\beta_0, \dots, \beta_{T-1}$ (code counts from 0; the paper from 1). Three classics, with
$u_t = t / (T - 1)$:

- **linear** (DDPM): $\beta_t = \beta_{\text{start}} + u_t\,(\beta_{\text{end}} - \beta_{\text{start}})$;
- **scaled linear** (Stable Diffusion): linear in $\sqrt\beta$, then squared:
  $\beta_t = \big(\sqrt{\beta_{\text{start}}} + u_t\,(\sqrt{\beta_{\text{end}}} - \sqrt{\beta_{\text{start}}})\big)^2$;
- **cosine** (Nichol & Dhariwal 2021) is defined through $\bar\alpha$ instead: with
  $f(s) = \cos^2\!\big(\tfrac{s + 0.008}{1.008} \cdot \tfrac{\pi}{2}\big)$,
  $\beta_t = \min\!\big(1 - f(\tfrac{t+1}{T}) / f(\tfrac{t}{T}),\ 0.999\big)$. It ignores $\beta_{\text{start}}$ and
  $\beta_{\text{end}}$; the cap 0.999 keeps the last betas below 1 ($f$ reaches 0 at $s = 1$).

From the betas: $\alpha_t = 1 - \beta_t$ and $\bar\alpha_t = \prod_{s \le t} \alpha_s$ (`torch.cumprod`), the share of
the signal's variance left at step $t$.

**Task**: implement `make_betas(schedule, num_train_timesteps, beta_start, beta_end)` for
`schedule` in `"linear"`, `"scaled_linear"`, `"cosine"`, returning a float32 tensor of shape `(T,)`. Raise a
`ValueError` that names `schedule` for any other name.
'''

A3_BETAS = '''
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
'''

A3_TEST_BETAS = '''
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
'''

A3_SHOW_SCHEDULES = '''
# What the schedules do: the share of signal sqrt(abar_t) and of noise sqrt(1 - abar_t) along the chain.
_schedules = {"linear": make_betas("linear", NUM_TRAIN_TIMESTEPS),
              "scaled_linear": make_betas("scaled_linear", NUM_TRAIN_TIMESTEPS, 0.00085, 0.012),
              "cosine": make_betas("cosine", NUM_TRAIN_TIMESTEPS)}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for _name, _betas in _schedules.items():
    _abar = alphas_cumprod_from(_betas)
    axes[0].plot(_abar.sqrt(), label=_name)
    axes[1].plot(torch.log(_abar / (1 - _abar)), label=_name)
axes[0].set(title=r"signal kept: $\\sqrt{\\bar\\alpha_t}$", xlabel="t")
axes[1].set(title=r"log SNR: $\\log \\bar\\alpha_t / (1 - \\bar\\alpha_t)$", xlabel="t")
axes[0].legend()
fig.tight_layout()
'''

A3_PART2 = r'''
## Part 2: the forward process in one jump (5 points)

Composing $t+1$ Gaussian steps gives a Gaussian again (DDPM eq. 4):

$$q(x_t \mid x_0) = \mathcal N\big(\sqrt{\bar\alpha_t}\, x_0,\ (1 - \bar\alpha_t) I\big)
\quad\Longleftrightarrow\quad x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \varepsilon,\ \ \varepsilon \sim \mathcal N(0, I).$$

So training never runs the chain: it jumps straight to a random $t$. Note the square roots: $\bar\alpha_t$ and
$1 - \bar\alpha_t$ are *variances*; signal and noise are scaled by their square roots, so that a unit-variance
$x_0$ gives a unit-variance $x_t$ at every $t$.

**Task**: implement `q_sample(x0, t, noise, alphas_cumprod)`. `x0` and `noise` have shape `(B, ...)` (any
number of trailing dimensions), `t` is a `(B,)` integer tensor: **one timestep per example**. Return $x_t$ with the
shape of `x0`, without modifying the inputs. (diffusers calls this `scheduler.add_noise(x0, noise, t)`.)
'''

A3_Q_SAMPLE = '''
def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, with t of shape (B,) (one timestep per example)."""
    ### BEGIN SOLUTION
    abar = alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[t]  # (B,)
    abar = abar.reshape(-1, *([1] * (x0.ndim - 1)))                 # (B, 1, ..., 1) broadcasts over x0
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    ### END SOLUTION
'''

A3_TEST_Q_SAMPLE = '''
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
'''

A3_SHOW_NOISING = '''
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
'''

A3_PART3 = r'''
## Part 3: the DDPM reverse step (8 points)

The model $\varepsilon_\theta(x_t, t)$ predicts the noise in $x_t$. That gives a guess of the clean image (DDPM eq. 15),

$$\hat x_0 = \frac{x_t - \sqrt{1 - \bar\alpha_t}\,\varepsilon_\theta}{\sqrt{\bar\alpha_t}},$$

and one step back samples the Gaussian posterior $q(x_{t-1} \mid x_t, x_0 = \hat x_0)$ (DDPM eq. 6-7):

$$\tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1 - \bar\alpha_t}\,\hat x_0 + \frac{\sqrt{\alpha_t}\,(1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t}\,x_t,
\qquad \tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}\,\beta_t,
\qquad x_{t-1} = \tilde\mu_t + \sqrt{\tilde\beta_t}\, z .$$

Details that matter (they are where diffusers and a careless implementation part ways):
- take $\beta_t$ and $\alpha_t$ from the schedule as $\alpha_t = \bar\alpha_t / \bar\alpha_{t-1}$, $\beta_t = 1 - \alpha_t$;
- at $t = 0$ there is no step before: use $\bar\alpha_{-1} = 1$ (careful: `alphas_cumprod[-1]` in Python is the
  *last* entry!) and add **no** noise ($z = 0$), so the last step returns $\tilde\mu_0 = \hat x_0$;
- the variance is the posterior variance $\tilde\beta_t$ ("fixed_small" in diffusers), not $\beta_t$;
- `clip_sample=True` clips $\hat x_0$ to $[-1, 1]$ before the mean is formed (our images live there).

**Task**: implement `ddpm_step(eps, t, x_t, alphas_cumprod, noise, clip_sample=False)` for an integer `t`
(the same for the whole batch); `noise` is $z$, a tensor like `x_t`. Return $x_{t-1}$.
'''

A3_DDPM_STEP = '''
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
'''

A3_TEST_DDPM_STEP = '''
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
'''

A3_PART4 = r'''
## Part 4: the DDIM step (8 points)

DDIM (Song et al. 2021) keeps the training and the marginals $q(x_t \mid x_0)$ but changes the reverse process so
that it can jump from $t$ straight to an earlier $t' < t$ (e.g. 50 steps instead of 1000). With
$\hat x_0$ as in part 3, DDIM eq. (12) and (16):

$$x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{1 - \bar\alpha_{t'} - \sigma_t^2}\;\varepsilon_\theta + \sigma_t\, z,
\qquad \sigma_t = \eta\,\sqrt{\frac{1 - \bar\alpha_{t'}}{1 - \bar\alpha_t}}\,\sqrt{1 - \frac{\bar\alpha_t}{\bar\alpha_{t'}}} .$$

- $\eta = 0$: no fresh noise, a deterministic map from $x_T$ to $x_0$ (same start, same image);
- $\eta = 1$ and $t' = t - 1$: $\sigma_t^2 = \tilde\beta_t$, the DDPM step again;
- after the last step ($t' < 0$) use $\bar\alpha_{t'} = 1$ (diffusers' `set_alpha_to_one=True`);
- `clip_sample=True` clips $\hat x_0$; $\varepsilon_\theta$ in the direction term stays the model's output.

**Task**: implement `ddim_step(eps, t, prev_t, x_t, alphas_cumprod, eta=0.0, noise=None, clip_sample=False)`;
`noise` ($z$, like `x_t`) is used only when $\eta > 0$. Return $x_{t'}$.
'''

A3_DDIM_STEP = '''
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
'''

A3_TEST_DDIM_STEP = '''
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
'''

A3_PART5 = r'''
## Part 5: the training loss (5 points)

DDPM's Algorithm 1 in four lines: take clean images $x_0$, draw one timestep per image $t \sim \mathcal U\{0, \dots, T-1\}$
and noise $\varepsilon \sim \mathcal N(0, I)$, jump to $x_t$ with `q_sample`, and regress the noise:

$$L = \mathbb E_{x_0, t, \varepsilon}\,\big\| \varepsilon - \varepsilon_\theta(x_t, t) \big\|^2 \quad\text{(the mean over all numbers of the batch).}$$

**Task**: implement `ddpm_loss(model, x0, alphas_cumprod, generator=None)`; `model(x_t, t)` takes `t` as a `(B,)`
long tensor. Draw `t` and the noise with `generator` (`torch.randint(..., generator=generator)`,
`torch.randn(..., generator=generator)`), call the model **once**, return a scalar.
'''

A3_LOSS = '''
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
'''

A3_TEST_LOSS = '''
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
'''

A3_PART6 = r'''
## Part 6: train a small DDPM on digits (8 points)

The denoiser is the course's `UNet` (lecture 3 used the same), on scikit-learn's original 8x8 digit scans. It is a
text-conditioned network, so an unconditional model passes a constant "prompt": one all-zero token. You may
replace `build_model` with your own network, as long as `build_model()` needs no arguments and the model maps
`(x_t (B, 1, 8, 8), t (B,) long)` to a noise prediction of the shape of `x_t`.

The training cell uses **your** `make_betas` and `ddpm_loss`, keeps an exponential moving average (EMA) of the
weights (diffusion models are always sampled with averaged weights: they are visibly cleaner than the last,
noisy iterate) and saves the averaged weights to `a3_ddpm_weights.safetensors`. You may change the training cell
(steps, learning rate, batch size), but not the graded cell.

**Graded** (the cell after the samples): 256 samples of your saved model, drawn with diffusers' `DDIMScheduler`
(50 steps, $\eta = 0$, `clip_sample=True`, the schedule `BETA_SCHEDULE`) from fixed noise, are judged by a
logistic-regression digit classifier trained on all 1797 real digits:

- the mean probability of the classifier's top class is at least **@MIN_CONFIDENCE@** (`MIN_CONFIDENCE`): samples look like
  *some* digit;
- at least **@MIN_CLASSES@** of the 10 digits (`MIN_CLASSES`) each make up at least 2% of the samples: no mode collapse;
- the Frechet distance between samples and the 359 held-out real digits, computed on the 16 principal components of
  the real digits, is at most **@MAX_FRECHET@** (`MAX_FRECHET`): the samples spread like real digits.

For scale (confidence, digits present, distance): 256 real training digits score (0.87, 10, 0.43); pure noise
(0.53, 9, 8.2); blurred real digits (0.52, 9, 7.9). The default training (3000 steps, about 5 minutes on a laptop
CPU) reaches about @FULL_SCORES@; the short FAST run of the tests (600 steps) (0.70, 10, 0.68).
'''

A3_MODEL = '''
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
'''

A3_TRAIN = '''
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
'''

A3_SAMPLE = '''
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
'''

A3_TEST_SAMPLES = '''
# Graded: samples of your saved model, drawn with diffusers' DDIM sampler, judged by a digit classifier.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers import DDIMScheduler
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
from course_lib.metrics import frechet_distance

assert os.path.exists(WEIGHTS), f"{WEIGHTS} not found: run the training cell (and submit the file with the notebook)"
trained = build_model()
trained.load_state_dict(load_file(WEIGHTS))
trained.eval()
_diffusers_names = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
_sampler = DDIMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule=_diffusers_names[BETA_SCHEDULE],
                         clip_sample=True, set_alpha_to_one=True)
_sampler.set_timesteps(50)
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
assert _samples.shape == (256, IMAGE_SIZE * IMAGE_SIZE) and np.isfinite(_samples).all()
assert sum(p.numel() for p in trained.parameters()) < 20_000_000, "keep the model small"
### END HIDDEN TESTS
'''

A3_OUTRO = r'''
## Going further (not graded)

- In a copy of this notebook (the parameters cell is read-only), train with `BETA_SCHEDULE = "cosine"`. For 8x8 images the
  linear schedule destroys the signal early; where does the log-SNR plot of part 1 say the cosine schedule spends
  its steps?
- Sample with DDIM at 10, 25, 50 and 200 steps and with $\eta = 0$ and $1$. Where does quality break down?
- Predict $v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0$ instead of $\varepsilon$ (diffusers'
  `prediction_type="v_prediction"`): which lines of your steps change?
'''


# The graded thresholds of part 6 (see the measured values in the markdown of part 6).
A3_THRESHOLDS = {"MIN_CONFIDENCE": "0.60", "MIN_CLASSES": "8", "MAX_FRECHET": "3.0",
                 "FULL_SCORES": "(0.84, 10, 0.57)"}


def fill(text: str, values: dict[str, str]) -> str:
    """Replace the @NAME@ placeholders of a cell (braces stay free for LaTeX and f-strings)."""
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    assert "@" not in text.replace("@torch", ""), f"unfilled placeholder in {text[:60]!r}"
    return text


def build_a3():
    submit = SUBMIT.format(files="`a3_ddpm.ipynb` and `a3_ddpm_weights.safetensors`", them="both")
    return notebook([
        markdown(A3_TITLE),
        code(SETUP),
        locked_cell(fill(A3_PARAMS, A3_THRESHOLDS), "parameters", tags=["parameters"]),
        code(A3_IMPORTS),
        markdown(A3_PART1), answer_cell(A3_BETAS, "make_betas"),
        test_cell(A3_TEST_BETAS, "test_make_betas", 6),
        code(A3_SHOW_SCHEDULES),
        markdown(A3_PART2), answer_cell(A3_Q_SAMPLE, "q_sample"),
        test_cell(A3_TEST_Q_SAMPLE, "test_q_sample", 5),
        code(A3_SHOW_NOISING),
        markdown(A3_PART3), answer_cell(A3_DDPM_STEP, "ddpm_step"),
        test_cell(A3_TEST_DDPM_STEP, "test_ddpm_step", 8),
        markdown(A3_PART4), answer_cell(A3_DDIM_STEP, "ddim_step"),
        test_cell(A3_TEST_DDIM_STEP, "test_ddim_step", 8),
        markdown(A3_PART5), answer_cell(A3_LOSS, "ddpm_loss"),
        test_cell(A3_TEST_LOSS, "test_ddpm_loss", 5),
        markdown(fill(A3_PART6, A3_THRESHOLDS)), code(A3_MODEL), code(A3_TRAIN), code(A3_SAMPLE),
        test_cell(A3_TEST_SAMPLES, "test_samples", 8),
        markdown(A3_OUTRO),
        markdown(submit),
    ])



# ========================================================================================= a4_latent_diffusion

A4_TITLE = f"""
# Assignment 4: guidance and Stable Diffusion in miniature

{badge("a4_latent_diffusion")}

Stable Diffusion is three networks and a sampler: a **VAE** that moves images into a small latent space, a
**text encoder** trained with CLIP's contrastive loss, and a **UNet** that denoises latents while it reads the
prompt, steered at sampling time by **classifier-free guidance**. In this assignment you write the pieces that
make it text-to-image (the contrastive loss, zero-shot classification, condition dropout, the guidance formula,
the guided sampling loop, img2img's choice of timesteps), plug them into the course's library, train the whole
thing on the toy world of coloured shapes and check that it draws what you ask for.

**What you will learn**
- CLIP's symmetric contrastive loss, and zero-shot classification with the embeddings it learns;
- why a text-to-image model is trained with some captions dropped, and how classifier-free guidance uses that;
- how VAE, text encoder, UNet and scheduler fit together in the sampling loop (unconditional batch first);
- what img2img's `strength` does to the list of timesteps;
- how to judge a text-to-image model: does the picture show the prompt? (a classifier answers)

**Prerequisites**: lecture 4 (guidance), lecture 5 (CLIP), lecture 6 (Stable Diffusion in miniature);
assignment 1 (VAEs) helps.

**Time**: 1.5-3 hours of work. Training (part 5: VAE, CLIP and UNet) takes about 5 minutes on a laptop CPU:
measured 4.9 minutes of one CPU core (8.6 minutes of wall clock on a busy shared 2-core machine: VAE 1.3, CLIP 0.3,
UNet 7), 1-2 minutes on a Colab GPU. Grading your notebook takes 10-25 seconds.

**Points** (40 in total, all autograded):

| part | what | points |
|---|---|---|
| 1 | `clip_loss`: the symmetric contrastive loss | 6 |
| 2 | `zero_shot_classify` | 4 |
| 3 | `drop_condition`: condition dropout for training | 5 |
| 4 | `cfg_combine`: classifier-free guidance | 4 |
| 5 | assemble and train the miniature Stable Diffusion (not graded itself: part 8 grades the result) | - |
| 6 | `generate`: the guided sampling loop | 6 |
| 7 | `img2img_timesteps`: which timesteps a given strength runs | 4 |
| 8 | your trained model draws the right colour (5) and the right shape (6); thresholds in part 8 | 11 |

Each test cell is all-or-nothing. Tests of later parts use reference versions of earlier parts, so a mistake
costs points only once. Hidden tests (run when grading) compare your functions with independent references on
random inputs; the visible ones catch the usual mistakes early.
"""

A4_PARAMS = """
# Parameters (read-only). Tests and CI set FAST = True to train for about a minute.
import os

FAST = False
AUTOGRADE = os.environ.get("COURSE_AUTOGRADE") == "1"  # set by the graders: training is skipped
SEED = 0
IMAGE_SIZE = 16                       # the shapes world at 16 x 16 pixels (lecture 6 used 32 x 32)
WEIGHTS = "a4_minisd.safetensors"     # VAE + text encoder + UNet + settings in one file, next to this notebook
OUTPUTS = "outputs/a4_fast" if FAST else "outputs/a4"  # checkpoints while training (not submitted)
# Graded (part 8): 8 images for each of the 12 prompts "a <colour> <shape>", judged by a shape classifier
NUM_INFERENCE_STEPS = 20
GUIDANCE_SCALE = 3.0
MIN_COLOUR_ACCURACY = @MIN_COLOUR_ACCURACY@
MIN_SHAPE_ACCURACY = @MIN_SHAPE_ACCURACY@
"""

A4_IMPORTS = """
import dataclasses
import json
import math
import warnings

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from course_lib.data import COLOURS, SHAPES, shapes_batch
from course_lib.minisd import MiniSDConfig, build_pipeline, make_scheduler, make_tokenizer, prompt_set, train_vae
from course_lib.pipeline import MiniSDPipeline
from course_lib.schedulers import DDIMScheduler
from course_lib.text import CaptionTokenizer, CLIPConfig, TextEncoder, TinyCLIP
from course_lib.train import EMA, cosine_schedule_with_warmup
from course_lib.unet import UNet, UNetConfig
from course_lib.vae import VAE, VAEConfig
from course_lib.viz import plot_losses, show_images

torch.manual_seed(SEED)
examples = shapes_batch(8, seed=SEED, image_size=IMAGE_SIZE, caption_style="mixed")
fig = show_images(examples["image"], titles=examples["caption"])
"""

A4_PART1 = r"""
## Part 1: CLIP's contrastive loss (6 points)

CLIP embeds a batch of $B$ images and their $B$ captions into one space: unit vectors $I_e$ and $T_e$ (shape
$B \times D$). Their cosine similarities, sharpened by a learned temperature, are the logits

$$\text{logits} = e^{t}\, I_e T_e^\top \qquad (B \times B,\ \text{row } i = \text{image } i,\ \text{column } j = \text{caption } j),$$

where $t$ is stored as `logit_scale` (its exponential starts at $1/0.07$). Pair $i$ is on the diagonal. The loss
asks each image to pick its caption among the $B$ captions (cross-entropy over each **row**) *and* each caption
to pick its image among the $B$ images (cross-entropy over each **column**), and averages the two:

$$L = \tfrac12\Big(\operatorname{CE}(\text{logits}, [0, 1, \dots, B-1]) + \operatorname{CE}(\text{logits}^\top, [0, 1, \dots, B-1])\Big).$$

Both directions matter: with only the image-to-text half, many images may crowd onto one caption.

**Task**: implement `clip_loss(image_embeds, text_embeds, logit_scale)`; the embeddings are already
L2-normalised, `logit_scale` is a 0-dim tensor (e.g. `model.logit_scale`, whose gradient must flow).
"""

A4_CLIP_LOSS = """
def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    \"\"\"CLIP's symmetric cross-entropy over the (B, B) similarity logits; pair i is (image i, text i).\"\"\"
    ### BEGIN SOLUTION
    logits = logit_scale.exp() * image_embeds @ text_embeds.T           # (B images, B texts)
    labels = torch.arange(logits.shape[0], device=logits.device)       # the right partner is on the diagonal
    image_to_text = F.cross_entropy(logits, labels)                    # each image picks among the texts
    text_to_image = F.cross_entropy(logits.T, labels)                  # each text picks among the images
    return (image_to_text + text_to_image) / 2
    ### END SOLUTION
"""

A4_TEST_CLIP_LOSS = """
# Visible tests: a scalar, a worked example, both directions.
_I = torch.eye(2)
_loss = clip_loss(_I, _I, torch.tensor(0.0))
assert _loss.ndim == 0, f"the loss must be a scalar, got shape {tuple(_loss.shape)}"
assert abs(_loss.item() - math.log(1 + math.exp(-1))) < 1e-5, (
    f"logits = identity (t = 0): each row and column has CE log(1 + e^-1) = 0.3133, got {_loss.item():.4f}")
# An asymmetric case: image 0 is close to both texts, text 1 is close to both images.
_I = F.normalize(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), dim=1)
_T = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=1)
_logits = 2.0 * _I @ _T.T
_rows = -torch.log_softmax(_logits, dim=1).diagonal().mean()        # images pick texts
_cols = -torch.log_softmax(_logits, dim=0).diagonal().mean()        # texts pick images
_loss = clip_loss(_I, _T, torch.tensor(math.log(2.0)))
assert abs(_loss.item() - (_rows + _cols).item() / 2) < 1e-5, (
    f"expected (image->text {_rows.item():.4f} + text->image {_cols.item():.4f}) / 2 = {(_rows + _cols).item() / 2:.4f}, "
    f"got {_loss.item():.4f}. Hint: average the cross-entropy over the rows and over the columns, and multiply the "
    "similarities by exp(logit_scale)")
### BEGIN HIDDEN TESTS
from course_lib.text import contrastive_loss as _reference_loss
_g = torch.Generator().manual_seed(401)
for _b, _d in [(1, 4), (5, 8), (32, 16), (7, 3)]:
    _I = F.normalize(torch.randn(_b, _d, generator=_g), dim=1)
    _T = F.normalize(torch.randn(_b, _d, generator=_g), dim=1)
    _scale = torch.tensor(float(torch.empty(1).uniform_(0.0, 4.5, generator=_g)), requires_grad=True)
    _loss = clip_loss(_I, _T, _scale)
    _logits = _scale.detach().exp() * _I @ _T.T
    _manual = (-torch.log_softmax(_logits, 1).diagonal().mean() - torch.log_softmax(_logits, 0).diagonal().mean()) / 2
    assert torch.allclose(_loss, _reference_loss(_I, _T, _scale.detach()), atol=1e-5), (_b, _d)
    assert torch.allclose(_loss, _manual, atol=1e-5), (_b, _d)
    _loss.backward()
    assert _scale.grad is not None and torch.isfinite(_scale.grad), "the gradient must reach logit_scale"
_I = F.normalize(torch.randn(6, 8, generator=_g), dim=1).requires_grad_()
clip_loss(_I, F.normalize(torch.randn(6, 8, generator=_g), dim=1), torch.tensor(2.0)).backward()
assert _I.grad is not None and _I.grad.abs().sum() > 0
### END HIDDEN TESTS
"""

A4_PART2 = r"""
## Part 2: zero-shot classification (4 points)

A trained CLIP classifies images without ever being trained as a classifier: write one prompt per class
("a red circle", "a blue circle", ...), embed the prompts, and give each image the class whose prompt embedding is
closest in cosine similarity. The softmax of $e^{t} \cos(\cdot, \cdot)$ over the $K$ classes turns the similarities
into probabilities.

**Task**: implement `zero_shot_classify(image_embeds, class_text_embeds, logit_scale)` for image embeddings
`(B, D)` and one text embedding per class `(K, D)`, **not necessarily normalised** (normalise them); return the
predicted class `(B,)` (long) and the probabilities `(B, K)`. You will use it on your trained CLIP in part 5.
"""

A4_ZERO_SHOT = """
def zero_shot_classify(image_embeds: torch.Tensor, class_text_embeds: torch.Tensor,
                       logit_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    \"\"\"(predicted class (B,), probabilities (B, K)) from the cosine similarities of images and class prompts.\"\"\"
    ### BEGIN SOLUTION
    images = F.normalize(image_embeds, dim=-1)                 # (B, D)
    texts = F.normalize(class_text_embeds, dim=-1)             # (K, D)
    probs = (logit_scale.exp() * images @ texts.T).softmax(dim=-1)  # (B, K): a distribution over the classes
    return probs.argmax(dim=-1), probs
    ### END SOLUTION
"""

A4_TEST_ZERO_SHOT = """
# Visible tests: shapes, a distribution over the classes, normalisation.
_pred, _probs = zero_shot_classify(torch.tensor([[3.0, 0.1], [0.0, -2.0], [0.1, 5.0]]),
                                   torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor(math.log(10.0)))
assert _pred.shape == (3,) and _probs.shape == (3, 2), f"expected (3,) and (3, 2), got {tuple(_pred.shape)}, {tuple(_probs.shape)}"
assert _pred.tolist() == [0, 0, 1], f"expected classes [0, 0, 1], got {_pred.tolist()}"
assert torch.allclose(_probs.sum(dim=1), torch.ones(3)), "each image's probabilities (a row) must sum to 1 over the classes"
_expected = torch.tensor([10 * 3 / math.hypot(3, 0.1), 10 * 0.1 / math.hypot(3, 0.1)]).softmax(0)
assert torch.allclose(_probs[0], _expected, atol=1e-5), (
    "use cosine similarities: normalise both sets of embeddings before the dot product, then scale by exp(logit_scale)")
### BEGIN HIDDEN TESTS
_g = torch.Generator().manual_seed(402)
for _b, _k, _d in [(5, 12, 16), (1, 3, 4), (40, 7, 8)]:
    _img, _txt = torch.randn(_b, _d, generator=_g) * 3, torch.randn(_k, _d, generator=_g) * 0.2
    _scale = torch.tensor(float(torch.empty(1).uniform_(0.0, 4.6, generator=_g)))
    _sim = F.cosine_similarity(_img[:, None, :], _txt[None, :, :], dim=-1)     # (B, K)
    _expected = torch.softmax(_scale.exp() * _sim, dim=1)
    _pred, _probs = zero_shot_classify(_img, _txt, _scale)
    assert torch.allclose(_probs, _expected, atol=1e-5), (_b, _k, _d)
    assert torch.equal(_pred, _expected.argmax(dim=1)) and _pred.dtype == torch.long
### END HIDDEN TESTS
"""

A4_PART3 = r"""
## Part 3: condition dropout (5 points)

Classifier-free guidance (part 4) needs two predictions from one network: $\varepsilon_\theta(z_t, t, c)$ with the
prompt and $\varepsilon_\theta(z_t, t, \varnothing)$ without. The trick (Ho & Salimans 2022) is to train one network on
both: in every batch, replace each example's condition $c$ by the "empty" condition $\varnothing$ (the embedding of
the empty prompt `""`) with a small probability $p$ (0.1 is common), independently per example.

**Task**: implement `drop_condition(cond, uncond, p, generator=None)`: `cond` has shape `(B, ...)` (text
embeddings `(B, L, D)`, or caption indices `(B,)`), `uncond` is one null condition of shape `cond.shape[1:]`. Row
`b` of the result is `uncond` with probability `p` and `cond[b]` otherwise; draw one uniform number per row with
`torch.rand(B, generator=generator)`. Return a new tensor; leave the inputs alone.
"""

A4_DROP = """
def drop_condition(cond: torch.Tensor, uncond: torch.Tensor, p: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    \"\"\"Replace each row of cond by uncond with probability p (one coin per row).\"\"\"
    ### BEGIN SOLUTION
    drop = torch.rand(cond.shape[0], generator=generator) < p            # (B,) True = use the null condition
    drop = drop.to(cond.device).reshape(-1, *([1] * (cond.ndim - 1)))    # (B, 1, ..., 1)
    return torch.where(drop, uncond.to(device=cond.device, dtype=cond.dtype), cond)
    ### END SOLUTION
"""

A4_TEST_DROP = """
# Visible tests: p = 0 keeps everything, p = 1 drops everything, rows stay whole.
_cond, _null = torch.randn(6, 3, 4), torch.zeros(3, 4)
_out = drop_condition(_cond, _null, 0.0, generator=torch.Generator().manual_seed(0))
assert _out.shape == _cond.shape and torch.equal(_out, _cond), "p = 0: nothing is dropped (p is the DROP probability)"
_out = drop_condition(_cond, _null, 1.0, generator=torch.Generator().manual_seed(0))
assert torch.equal(_out, torch.zeros(6, 3, 4)), "p = 1: every row becomes the null condition"
_labels = drop_condition(torch.arange(1000), torch.tensor(-1), 0.5, generator=torch.Generator().manual_seed(0))
_dropped = (_labels == -1)
assert torch.equal(_labels[~_dropped], torch.arange(1000)[~_dropped]), "rows that are kept must be unchanged"
assert 400 < int(_dropped.sum()) < 600, f"p = 0.5 should drop about half of 1000 rows, dropped {int(_dropped.sum())}"
### BEGIN HIDDEN TESTS
_g = torch.Generator().manual_seed(403)
for _p in [0.1, 0.3, 0.8]:
    _out = drop_condition(torch.arange(20000), torch.tensor(-1), _p, generator=_g)
    _share = (_out == -1).float().mean().item()
    assert abs(_share - _p) < 0.02, f"p = {_p}: dropped {_share:.3f} of the rows"
_cond = torch.randn(400, 5, 8, generator=_g)
_null = torch.randn(5, 8, generator=_g)
_before = (_cond.clone(), _null.clone())
_out = drop_condition(_cond, _null, 0.3, generator=torch.Generator().manual_seed(7))
_is_null = (_out == _null).flatten(1).all(dim=1)
_is_cond = (_out == _cond).flatten(1).all(dim=1)
assert bool((_is_null | _is_cond).all()), "each row must be either the whole condition or the whole null condition"
assert 0.2 < _is_null.float().mean().item() < 0.4
assert torch.equal(_cond, _before[0]) and torch.equal(_null, _before[1]), "the inputs must not change"
_again = drop_condition(_cond, _null, 0.3, generator=torch.Generator().manual_seed(7))
assert torch.equal(_out, _again), "the same generator seed must drop the same rows"
### END HIDDEN TESTS
"""

A4_PART4 = r"""
## Part 4: classifier-free guidance (4 points)

At sampling time the network runs on the prompt and on the empty prompt, and the two noise predictions are
extrapolated away from the unconditional one (Ho & Salimans 2022, eq. 6, written with diffusers' $w$):

$$\hat\varepsilon = \varepsilon_\theta(z_t, \varnothing) + w\,\big(\varepsilon_\theta(z_t, c) - \varepsilon_\theta(z_t, \varnothing)\big).$$

$w = 0$ ignores the prompt, $w = 1$ is the plain conditional model, $w > 1$ pushes further in the prompt's direction
(Stable Diffusion's default is 7.5; sharper prompt-following, less variety, saturated colours if overdone).

**Task**: implement `cfg_combine(eps_uncond, eps_cond, guidance_scale)`.
"""

A4_CFG = """
def cfg_combine(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    \"\"\"Classifier-free guidance: eps_uncond + w (eps_cond - eps_uncond).\"\"\"
    ### BEGIN SOLUTION
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)
    ### END SOLUTION
"""

A4_TEST_CFG = """
# Visible tests: w = 0, w = 1, and a worked example.
_u, _c = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 0.0])
assert torch.allclose(cfg_combine(_u, _c, 0.0), _u), "w = 0 must give the unconditional prediction"
assert torch.allclose(cfg_combine(_u, _c, 1.0), _c), "w = 1 must give the conditional prediction"
_got = cfg_combine(_u, _c, 3.0)
assert torch.allclose(_got, torch.tensor([4.0, -4.0])), (
    f"w = 3: [1, 2] + 3 * ([2, 0] - [1, 2]) = [4, -4], got {_got.tolist()}. Hint: start from the unconditional "
    "prediction and move w times along (conditional - unconditional)")
### BEGIN HIDDEN TESTS
from course_lib.guidance import cfg_combine as _reference_cfg
_g = torch.Generator().manual_seed(404)
for _w in [0.0, 1.0, 2.5, 7.5, float(torch.empty(1).uniform_(0, 12, generator=_g))]:
    _u, _c = torch.randn(3, 4, 8, 8, generator=_g), torch.randn(3, 4, 8, 8, generator=_g)
    _expected = (1 - _w) * _u + _w * _c
    assert torch.allclose(cfg_combine(_u, _c, _w), _expected, atol=1e-5), _w
    assert torch.allclose(cfg_combine(_u, _c, _w), _reference_cfg(_u, _c, _w), atol=1e-5), _w
### END HIDDEN TESTS
"""


A4_PART5 = r"""
## Part 5: assemble and train the miniature Stable Diffusion (graded in part 8)

Three stages, as in the latent diffusion paper (Rombach et al. 2022), each with one of your pieces plugged in:

1. **VAE**: 3 x 16 x 16 images -> 4 x 8 x 8 latents, trained by the library (`course_lib.minisd.train_vae`,
   assignment 1 in miniature), which also measures the scale factor $s$ that gives the latents unit variance;
2. **CLIP**: image/caption pairs, **your** `clip_loss`; then **your** `zero_shot_classify` tells how well the
   text encoder learned the words. Its text encoder is frozen afterwards: the UNet reads its per-token features;
3. **UNet**: DDPM's Algorithm 1 on $z_0 = s \cdot z$ with the VAE and the text encoder frozen, the caption replaced by
   `""` 10% of the time with **your** `drop_condition`, min-SNR weighting of the loss (Hang et al. 2023) and an
   EMA of the weights.

The result is saved as one file, `a4_minisd.safetensors` (all weights, plus the configs and the scale factor as
metadata), by the read-only helpers below; the graders load it with `load_minisd`. The stages skip themselves while
grading. You may change the settings cell (more steps train a better model), not the helpers.
"""

A4_IO = """
# Read-only helpers: the whole pipeline in one safetensors file (the graders load it with load_minisd).
def save_minisd(pipe: MiniSDPipeline, path: str) -> None:
    \"\"\"All weights (prefixed vae., text_encoder., unet.) and, as string metadata, what rebuilds the pipeline.\"\"\"
    modules = {"vae": pipe.vae, "text_encoder": pipe.text_encoder, "unet": pipe.unet}
    tensors = {f"{name}.{key}": value.detach().contiguous()
               for name, module in modules.items() for key, value in module.state_dict().items()}
    metadata = {f"{name}_config": json.dumps(module.config.to_dict()) for name, module in modules.items()}
    metadata.update(vocab=json.dumps(pipe.tokenizer.vocab), max_length=str(pipe.tokenizer.max_length),
                    scheduler=json.dumps(pipe.scheduler.config.to_dict()), scale_factor=repr(pipe.scale_factor),
                    image_size=str(pipe.image_size))
    save_file(tensors, path, metadata=metadata)


def load_minisd(path: str) -> MiniSDPipeline:
    \"\"\"The MiniSDPipeline saved by save_minisd, in eval mode, on the CPU.\"\"\"
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    vae = VAE(VAEConfig.from_dict(json.loads(meta["vae_config"])))
    text_encoder = TextEncoder(CLIPConfig.from_dict(json.loads(meta["text_encoder_config"])))
    unet = UNet(UNetConfig.from_dict(json.loads(meta["unet_config"])))
    for name, module in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet)):
        module.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
    tokenizer = CaptionTokenizer(json.loads(meta["vocab"]), max_length=int(meta["max_length"]))
    scheduler = DDIMScheduler.from_config(json.loads(meta["scheduler"]))
    return MiniSDPipeline(vae, text_encoder, tokenizer, unet, scheduler, float(meta["scale_factor"]),
                          image_size=int(meta["image_size"]))
"""

A4_CONFIG = """
# Settings of the three stages (you may change them; FAST is the short run of the tests).
config = MiniSDConfig(
    image_size=IMAGE_SIZE, held_out_pairs=(), num_train_images=@NUM_TRAIN_IMAGES@, num_val_images=256, seed=SEED,
    vae=VAEConfig(block_channels=(8, 16), mid_attention=False, norm_groups=8),      # f = 2: 4 x 8 x 8 latents
    vae_steps=@VAE_STEPS@, vae_batch_size=32, vae_lr=5e-3,
    clip=CLIPConfig.tiny(image_size=IMAGE_SIZE), clip_steps=@CLIP_STEPS@, clip_batch_size=64, clip_lr=2e-3,
    unet=UNetConfig(block_channels=(32, 64), attention_levels=@ATTENTION_LEVELS@, num_heads=2, norm_groups=8),
    unet_steps=@UNET_STEPS@, unet_batch_size=32, unet_lr=2e-3, cond_dropout=0.1, snr_gamma=5.0,
    text_features="last_hidden_state",  # tau(y) = the last hidden states, as in SD v1.5 (and as stage 3 below)
    checkpoint_every=100)
if not AUTOGRADE:
    # short captions ("a red circle"): the prompts part 8 grades. caption_style="mixed" adds sizes and positions
    # ("a small red circle at the top left"), which the model learns too, but more slowly.
    data = shapes_batch(config.num_train_images, seed=SEED, image_size=IMAGE_SIZE, caption_style="short")
    print(f"{len(data['caption'])} training images, e.g. {data['caption'][:3]}")
"""

A4_STAGE1 = """
# Stage 1: the VAE (the library's stage: it checkpoints, resumes if interrupted and skips itself when done;
# one folder per settings, so that changed settings train a new VAE).
import hashlib

if not AUTOGRADE:
    run_dir = os.path.join(OUTPUTS, hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:10])
    vae, vae_report = train_vae(config, run_dir, data)
    vae.eval().requires_grad_(False)
    print(f"VAE: held-out MSE {vae_report['val_mse']:.4f}, latents {vae_report['latent_shape']}, "
          f"scale factor s = {vae_report['scale_factor']:.3f}")
"""

A4_STAGE2 = """
# Stage 2: CLIP, trained with YOUR clip_loss; then YOUR zero_shot_classify on fresh images.
if not AUTOGRADE:
    torch.manual_seed(SEED + 1)
    tokenizer = make_tokenizer(config)
    clip = TinyCLIP(dataclasses.replace(config.clip, vocab_size=tokenizer.vocab_size))
    tokens = tokenizer(data["caption"], max_length=clip.config.max_length)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=config.clip_lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(SEED + 1)
    clip_losses = []
    for step in tqdm(range(config.clip_steps), desc="2/3 CLIP"):
        idx = torch.randint(len(data["caption"]), (config.clip_batch_size,), generator=generator)
        image_embeds = clip.encode_image(data["image"][idx])
        text_embeds = clip.encode_text(tokens["input_ids"][idx], tokens["attention_mask"][idx])
        loss = clip_loss(image_embeds, text_embeds, clip.logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        clip_losses.append(loss.item())
    clip.eval().requires_grad_(False)
    val = shapes_batch(256, seed=SEED + 5, image_size=IMAGE_SIZE)
    prompts = prompt_set()  # ("a red circle", shape index, colour index) for the 12 colour-shape pairs
    prompt_tokens = tokenizer([p for p, _, _ in prompts], max_length=clip.config.max_length)
    with torch.no_grad():
        predicted, _ = zero_shot_classify(clip.encode_image(val["image"]), clip.encode_text(
            prompt_tokens["input_ids"], prompt_tokens["attention_mask"]), clip.logit_scale)
    guessed = torch.tensor([[s, c] for _, s, c in prompts])[predicted]  # (256, 2): shape and colour of the prompt
    right = (guessed[:, 0] == val["shape"]) & (guessed[:, 1] == val["colour"])
    print(f"CLIP zero-shot accuracy over the 12 prompts: {right.float().mean():.2f} (chance: 0.08)")
    fig = plot_losses(clip_losses, title="clip_loss")
"""

A4_STAGE3 = """
# Stage 3: the UNet on latents, with YOUR drop_condition (classifier-free guidance training).
from course_lib.minisd import min_snr_weights

if not AUTOGRADE:
    text_encoder = clip.text_encoder
    scale = vae_report["scale_factor"]
    with torch.no_grad():  # both encoders are frozen: encode every image and every distinct caption once
        posterior = vae.encode(data["image"])                                  # mean, std: (N, 4, 8, 8)
        captions = sorted(set(data["caption"]) | {""})
        caption_tokens = tokenizer(captions, max_length=text_encoder.config.max_length)
        features = text_encoder(caption_tokens["input_ids"], caption_tokens["attention_mask"]).last_hidden_state
        masks = caption_tokens["attention_mask"].bool()                        # (U, L, D) and (U, L)
    row_of = {caption: i for i, caption in enumerate(captions)}
    caption_index = torch.tensor([row_of[c] for c in data["caption"]])        # (N,) which caption each image has
    empty = torch.tensor(row_of[""])                                           # the null condition: ""
    torch.manual_seed(SEED + 2)
    unet = UNet(dataclasses.replace(config.unet, in_channels=vae.config.latent_channels,
                                    out_channels=vae.config.latent_channels, context_dim=text_encoder.config.width))
    ema = EMA(unet, decay=0.995)
    noise_scheduler = make_scheduler(config)  # DDPM bookkeeping with Stable Diffusion's scaled-linear betas
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.unet_lr, weight_decay=0.01)
    lr_schedule = cosine_schedule_with_warmup(optimizer, min(100, config.unet_steps // 10), config.unet_steps)
    generator = torch.Generator().manual_seed(SEED + 2)
    unet_losses = []
    for step in tqdm(range(config.unet_steps), desc="3/3 UNet"):
        idx = torch.randint(len(caption_index), (config.unet_batch_size,), generator=generator)
        eps0 = torch.randn(posterior.mean[idx].shape, generator=generator)
        z0 = scale * (posterior.mean[idx] + posterior.std[idx] * eps0)         # a fresh latent sample, scaled
        which = drop_condition(caption_index[idx], empty, config.cond_dropout, generator=generator)
        t = torch.randint(0, config.num_train_timesteps, (len(idx),), generator=generator)
        noise = torch.randn(z0.shape, generator=generator)
        prediction = unet(noise_scheduler.add_noise(z0, noise, t), t, features[which], masks[which])
        per_example = (prediction - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per_example * min_snr_weights(noise_scheduler, t, config.snr_gamma)).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.update()
        unet_losses.append(loss.item())
    ema.copy_to(unet)
    pipe = build_pipeline(config, vae, text_encoder, tokenizer, unet.eval(), scale)  # + a DDIM sampler
    save_minisd(pipe, WEIGHTS)
    fig = plot_losses(unet_losses, title="weighted noise-prediction loss")
"""

A4_PART6 = r"""
## Part 6: the guided sampling loop (6 points)

Sampling runs the UNet on a doubled batch, **unconditional rows first** (diffusers' order), and combines the two
halves with `cfg_combine` before every scheduler step:

```
cond, cond_mask = pipe.encode_prompt(prompts)            # (B, L, D) text features, (B, L) padding mask
uncond, uncond_mask = pipe.encode_prompt([""] * B)
pipe.scheduler.set_timesteps(num_inference_steps)
z = latents * pipe.scheduler.init_noise_sigma            # z_T ~ N(0, I)
for t in pipe.scheduler.timesteps:
    eps_uncond, eps_cond = pipe.unet(cat([z, z]), t, cat([uncond, cond]), cat([uncond_mask, cond_mask])).chunk(2)
    z = pipe.scheduler.step(cfg_combine(eps_uncond, eps_cond, w), t, z).prev_sample
images = pipe.decode_latents(z)                          # D(z / s), clamped to [-1, 1]
```

**Task**: implement `generate(pipe, prompts, guidance_scale, num_inference_steps, latents=None, generator=None)`
returning images `(B, 3, H, W)`. Without `latents`, draw them with
`torch.randn(pipe.latent_shape(len(prompts)), generator=generator)`. It must give the same images as the
library's `pipe(prompts, ..., latents=latents)`.
"""

A4_GENERATE = """
@torch.no_grad()
def generate(pipe: MiniSDPipeline, prompts: list[str], guidance_scale: float = GUIDANCE_SCALE,
             num_inference_steps: int = NUM_INFERENCE_STEPS, latents: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    \"\"\"Text -> images (B, 3, H, W) in [-1, 1] with classifier-free guidance (unconditional rows first).\"\"\"
    ### BEGIN SOLUTION
    cond, cond_mask = pipe.encode_prompt(prompts)                      # (B, L, D), (B, L)
    uncond, uncond_mask = pipe.encode_prompt([""] * len(prompts))
    context, context_mask = torch.cat([uncond, cond]), torch.cat([uncond_mask, cond_mask])
    if latents is None:
        latents = torch.randn(pipe.latent_shape(len(prompts)), generator=generator)
    pipe.scheduler.set_timesteps(num_inference_steps)
    z = latents * pipe.scheduler.init_noise_sigma
    for t in pipe.scheduler.timesteps:
        eps_uncond, eps_cond = pipe.unet(torch.cat([z, z]), t, context, context_mask).chunk(2)
        z = pipe.scheduler.step(cfg_combine(eps_uncond, eps_cond, guidance_scale), t, z).prev_sample
    return pipe.decode_latents(z)
    ### END SOLUTION
"""

A4_TEST_GENERATE = """
# This test grades generate on its own (a reference cfg_combine is swapped in while it runs), on a small
# pipeline with random weights, against the library's MiniSDPipeline.__call__.
from course_lib.minisd import training_captions


def _reference_cfg(eps_uncond, eps_cond, guidance_scale):
    return (1 - guidance_scale) * eps_uncond + guidance_scale * eps_cond


def _random_pipeline(seed):
    torch.manual_seed(seed)
    tokenizer = CaptionTokenizer.from_texts(training_captions())
    text_encoder = TextEncoder(CLIPConfig.tiny(vocab_size=tokenizer.vocab_size)).eval()
    unet = UNet(dataclasses.replace(UNetConfig.tiny(), in_channels=4, out_channels=4, context_dim=32)).eval()
    vae = VAE(VAEConfig(block_channels=(8, 16), mid_attention=False)).eval()
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return MiniSDPipeline(vae, text_encoder, tokenizer, unet, scheduler, scale_factor=0.8, image_size=16)


_your_cfg, cfg_combine = cfg_combine, _reference_cfg
try:
    _pipe = _random_pipeline(0)
    _prompts = ["a red circle", "a small blue square at the top left"]
    _latents = torch.randn(_pipe.latent_shape(2), generator=torch.Generator().manual_seed(1))
    _images = generate(_pipe, _prompts, guidance_scale=4.0, num_inference_steps=5, latents=_latents)
    assert _images.shape == (2, 3, 16, 16), f"expected images of shape (2, 3, 16, 16), got {tuple(_images.shape)}"
    _expected = _pipe(_prompts, num_inference_steps=5, guidance_scale=4.0, latents=_latents, progress=False).images
    assert torch.allclose(_images, _expected, atol=1e-4), (
        f"your images differ from the library pipeline's by up to {(_images - _expected).abs().max():.3g}. Hints: the "
        "unconditional prompt is \\"\\"; pass the padding masks to the UNet; call set_timesteps before the loop; "
        "scale the start latents by init_noise_sigma; decode with pipe.decode_latents")
    _drawn = generate(_pipe, _prompts, 4.0, 5, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(_drawn, _images, atol=1e-5), (
        "without latents, draw them with torch.randn(pipe.latent_shape(len(prompts)), generator=generator)")
    ### BEGIN HIDDEN TESTS
    _pipe = _random_pipeline(11)
    for _w, _n, _prompts in [(1.0, 3, ["a green triangle"]), (7.5, 8, ["a yellow square", "", "a large red circle"]),
                             (0.0, 4, ["a blue circle in the center", "a red square"])]:
        _latents = torch.randn(_pipe.latent_shape(len(_prompts)), generator=torch.Generator().manual_seed(_n))
        _expected = _pipe(_prompts, num_inference_steps=_n, guidance_scale=_w, latents=_latents, progress=False).images
        _images = generate(_pipe, _prompts, guidance_scale=_w, num_inference_steps=_n, latents=_latents.clone())
        assert torch.allclose(_images, _expected, atol=1e-4), (_w, _n, (_images - _expected).abs().max())
    ### END HIDDEN TESTS
finally:
    cfg_combine = _your_cfg
"""

A4_SHOW_GENERATE = """
# Your loop on your model: one image per prompt; guidance_scale is a knob (a static figure is shown too).
import ipywidgets as widgets

if os.path.exists(WEIGHTS) and not AUTOGRADE:
    trained = load_minisd(WEIGHTS)
    _prompts = [p for p, _, _ in prompt_set()]

    def show_prompts(guidance_scale=GUIDANCE_SCALE, seed=0):
        images = generate(trained, _prompts, guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(seed))
        fig = show_images(images, titles=_prompts, ncols=6)
        fig.suptitle(f"your generate, guidance scale {guidance_scale}", y=1.04)
        plt.show()

    show_prompts()
    widgets.interact(show_prompts, guidance_scale=widgets.FloatSlider(value=GUIDANCE_SCALE, min=0.0, max=10.0, step=0.5),
                     seed=widgets.IntSlider(value=0, min=0, max=20));
"""

A4_PART7 = r"""
## Part 7: img2img and its `strength` (4 points)

img2img (SDEdit, Meng et al. 2022) does not start from pure noise: it encodes an image, noises the latent to some
intermediate timestep with `add_noise`, and runs only the rest of the chain. `strength` $\in [0, 1]$ says how much of
the chain is re-run. With $n$ inference timesteps $\tau_0 > \tau_1 > \dots > \tau_{n-1}$ (the scheduler's `.timesteps`),
diffusers runs the last $k = \min(\lfloor n \cdot \text{strength} \rfloor, n)$ of them:
$\tau_{n-k}, \dots, \tau_{n-1}$. Strength 1 runs them all (the image is ignored), strength 0 runs none (the image comes
back unchanged), and the image is noised to the first timestep that runs.

**Task**: implement `img2img_timesteps(timesteps, strength)`: the (descending) timesteps img2img runs, a tensor
(possibly empty).
"""

A4_IMG2IMG = """
def img2img_timesteps(timesteps: torch.Tensor, strength: float) -> torch.Tensor:
    \"\"\"The tail of the inference timesteps that img2img runs for this strength (as diffusers' img2img picks it).\"\"\"
    ### BEGIN SOLUTION
    n = len(timesteps)
    k = min(int(n * strength), n)   # how many steps run
    return timesteps[n - k:]
    ### END SOLUTION
"""

A4_TEST_IMG2IMG = """
# Visible tests on 10 timesteps 900, 800, ..., 0.
_ts = torch.arange(900, -1, -100)
assert torch.equal(img2img_timesteps(_ts, 1.0), _ts), "strength 1 runs every timestep"
assert len(img2img_timesteps(_ts, 0.0)) == 0, "strength 0 runs nothing"
_got = img2img_timesteps(_ts, 0.35)
assert torch.equal(_got, torch.tensor([200, 100, 0])), (
    f"strength 0.35 of 10 steps runs the LAST floor(3.5) = 3 timesteps [200, 100, 0], got {_got.tolist()}. "
    "Hint: img2img skips the noisiest steps at the start of the list")
### BEGIN HIDDEN TESTS
from course_lib.schedulers import DDIMScheduler as _Ref
_g = torch.Generator().manual_seed(407)
for _case in range(30):
    _n = int(torch.randint(1, 60, (1,), generator=_g))
    _strength = [0.0, 1.0, 0.5, float(torch.rand(1, generator=_g))][_case % 4]
    _ref = _Ref(steps_offset=1, set_alpha_to_one=False)
    _ref.set_timesteps(_n)
    _expected = _ref.timesteps[_n - min(int(_n * _strength), _n):]  # diffusers' StableDiffusionImg2ImgPipeline.get_timesteps
    assert torch.equal(img2img_timesteps(_ref.timesteps.clone(), _strength), _expected), (_n, _strength)
    assert torch.equal(_expected, _ref.get_timesteps_for_strength(_strength))
### END HIDDEN TESTS
"""

A4_SHOW_IMG2IMG = """
# img2img with your timesteps: red circles re-imagined as "a blue square" at growing strength.
@torch.no_grad()
def img2img(pipe, images, prompts, strength, num_inference_steps=NUM_INFERENCE_STEPS, guidance_scale=GUIDANCE_SCALE, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pipe.scheduler.set_timesteps(num_inference_steps)
    timesteps = img2img_timesteps(pipe.scheduler.timesteps, strength)
    z0 = pipe.encode_images(images)
    if len(timesteps) == 0:
        return pipe.decode_latents(z0)
    z = pipe.scheduler.add_noise(z0, torch.randn(z0.shape, generator=generator), timesteps[:1].repeat(len(z0)))
    return pipe.denoise(z, timesteps, prompts, guidance_scale, generator=generator, progress=False).images


if os.path.exists(WEIGHTS) and not AUTOGRADE:
    _source = shapes_batch(4, seed=SEED + 40, image_size=IMAGE_SIZE, pairs=[("red", "circle")])["image"]
    _strengths = [0.0, 0.3, 0.5, 0.7, 1.0]
    _rows = [img2img(trained, _source, ["a blue square"] * 4, s) for s in _strengths]
    fig = show_images(torch.cat(_rows), ncols=4, titles=[f"strength {s}" for s in _strengths for _ in range(4)])
"""

A4_PART8 = r"""
## Part 8: does your model draw what it is asked? (11 points)

The read-only cell below loads `a4_minisd.safetensors`, draws 8 images for each of the 12 prompts
"a &lt;colour&gt; &lt;shape&gt;" with the library's reference pipeline (DDIM, @NUM_INFERENCE_STEPS@ steps, guidance
scale @GUIDANCE_SCALE@, fixed seeds), and asks a judge, a small CNN trained on freshly rendered shapes
(`course_lib.metrics.train_evaluator`), which shape and colour each image shows.

**Graded**:
- colour accuracy (the image has the prompted colour) at least **@MIN_COLOUR_ACCURACY@** (5 points);
- shape accuracy (the image has the prompted shape) at least **@MIN_SHAPE_ACCURACY@** (6 points).

For scale: chance is 0.25 for colour and 0.33 for shape, and the judge gets real images right almost always. The
default training (FAST = False) reaches @FULL_COLOUR@ and @FULL_SHAPE@. The one-minute FAST run of the tests reaches
@FAST_COLOUR@ and @FAST_SHAPE@ (with other seeds: colour 0.67-1.00, shape 0.66-0.77); that is why the thresholds
sit where they do: they check that the pieces work together, and the default training clears them easily.
"""

A4_EVALUATE = """
# Evaluation (read-only): your saved model, the library's sampler, a freshly trained judge.
from course_lib.metrics import prompt_accuracy, train_evaluator

assert os.path.exists(WEIGHTS), f"{WEIGHTS} not found: run part 5 (and submit the file with the notebook)"
trained = load_minisd(WEIGHTS)
assert trained.image_size == IMAGE_SIZE, f"the model must draw {IMAGE_SIZE} x {IMAGE_SIZE} images, got {trained.image_size}"
_prompts = prompt_set()
_seeds = range(8)
_latents = torch.stack([torch.randn(trained.latent_shape(1)[1:], generator=torch.Generator().manual_seed(1000 + s))
                        for _ in _prompts for s in _seeds])
with torch.no_grad():
    _images = trained([p for p, _, _ in _prompts for _ in _seeds], num_inference_steps=NUM_INFERENCE_STEPS,
                      guidance_scale=GUIDANCE_SCALE, latents=_latents, progress=False).images
judge, _judge_report = train_evaluator(num_train=3000, steps=300, num_test=200, image_size=IMAGE_SIZE, seed=0,
                                       progress=False)
evaluation = prompt_accuracy(judge, _images, [s for _, s, _ in _prompts for _ in _seeds],
                             [c for _, _, c in _prompts for _ in _seeds])
print(f"colour accuracy {evaluation['colour_acc']:.3f} (>= {MIN_COLOUR_ACCURACY}), "
      f"shape accuracy {evaluation['shape_acc']:.3f} (>= {MIN_SHAPE_ACCURACY}), "
      f"both right {evaluation['joint_acc']:.3f}; the judge on real images: shape {_judge_report['shape_acc']:.2f}, "
      f"colour {_judge_report['colour_acc']:.2f}")
fig = show_images(_images[::8], titles=[p for p, _, _ in _prompts], ncols=6)
"""

A4_TEST_COLOUR = """
# Graded: the right colour.
assert evaluation["n"] == 96, "the evaluation must cover 8 images for each of the 12 prompts"
assert evaluation["colour_acc"] >= MIN_COLOUR_ACCURACY, (
    f"colour accuracy {evaluation['colour_acc']:.3f} < {MIN_COLOUR_ACCURACY}: train longer (part 5)")
### BEGIN HIDDEN TESTS
assert _judge_report["colour_acc"] > 0.95, "the judge itself must be reliable"
assert _images.shape == (96, 3, IMAGE_SIZE, IMAGE_SIZE) and torch.isfinite(_images).all()
### END HIDDEN TESTS
"""

A4_TEST_SHAPE = """
# Graded: the right shape.
assert evaluation["n"] == 96, "the evaluation must cover 8 images for each of the 12 prompts"
assert evaluation["shape_acc"] >= MIN_SHAPE_ACCURACY, (
    f"shape accuracy {evaluation['shape_acc']:.3f} < {MIN_SHAPE_ACCURACY}: train longer (part 5)")
### BEGIN HIDDEN TESTS
assert _judge_report["shape_acc"] > 0.9, "the judge itself must be reliable"
assert sum(p.numel() for p in trained.unet.parameters()) < 20_000_000, "keep the model small"
### END HIDDEN TESTS
"""

A4_OUTRO = r"""
## Going further (not graded)

- Hold out two colour-shape pairs from training (`held_out_pairs=(("green", "triangle"), ("yellow", "circle"))` in
  the config, as lecture 6 does) and measure the accuracy on them: does the model compose colours and shapes it never
  saw together?
- Plot colour and shape accuracy against the guidance scale (0, 1, 2, 4, 8). Where does guidance stop helping?
- Set `cond_dropout=0.0` and retrain: what happens to guided samples, and why?
"""

A4_FILLS = {"MIN_COLOUR_ACCURACY": "0.60", "MIN_SHAPE_ACCURACY": "0.50", "NUM_INFERENCE_STEPS": "20",
            "GUIDANCE_SCALE": "3.0", "FULL_COLOUR": "1.00", "FULL_SHAPE": "0.95", "FAST_COLOUR": "1.00",
            "FAST_SHAPE": "0.72"}
A4_TRAINING = {"NUM_TRAIN_IMAGES": "2000 if FAST else 4000", "VAE_STEPS": "300 if FAST else 1000",
               "CLIP_STEPS": "400 if FAST else 600", "UNET_STEPS": "600 if FAST else 3000", "ATTENTION_LEVELS": "(1,)"}


def build_a4():
    submit = SUBMIT.format(files="`a4_latent_diffusion.ipynb` and `a4_minisd.safetensors`", them="both")
    return notebook([
        markdown(A4_TITLE),
        code(SETUP),
        locked_cell(fill(A4_PARAMS, A4_FILLS), "parameters", tags=["parameters"]),
        code(A4_IMPORTS),
        markdown(A4_PART1), answer_cell(A4_CLIP_LOSS, "clip_loss"),
        test_cell(A4_TEST_CLIP_LOSS, "test_clip_loss", 6),
        markdown(A4_PART2), answer_cell(A4_ZERO_SHOT, "zero_shot_classify"),
        test_cell(A4_TEST_ZERO_SHOT, "test_zero_shot_classify", 4),
        markdown(A4_PART3), answer_cell(A4_DROP, "drop_condition"),
        test_cell(A4_TEST_DROP, "test_drop_condition", 5),
        markdown(A4_PART4), answer_cell(A4_CFG, "cfg_combine"),
        test_cell(A4_TEST_CFG, "test_cfg_combine", 4),
        markdown(A4_PART5), locked_cell(A4_IO, "minisd_file"),
        code(fill(A4_CONFIG, A4_TRAINING)), code(A4_STAGE1), code(A4_STAGE2), code(A4_STAGE3),
        markdown(A4_PART6), answer_cell(A4_GENERATE, "generate"),
        test_cell(A4_TEST_GENERATE, "test_generate", 6),
        code(A4_SHOW_GENERATE),
        markdown(A4_PART7), answer_cell(A4_IMG2IMG, "img2img_timesteps"),
        test_cell(A4_TEST_IMG2IMG, "test_img2img_timesteps", 4),
        code(A4_SHOW_IMG2IMG),
        markdown(fill(A4_PART8, A4_FILLS)), locked_cell(A4_EVALUATE, "evaluation"),
        test_cell(A4_TEST_COLOUR, "test_prompt_colour", 5),
        test_cell(A4_TEST_SHAPE, "test_prompt_shape", 6),
        markdown(A4_OUTRO),
        markdown(submit),
    ])


BUILDERS = {"a3_ddpm": build_a3, "a4_latent_diffusion": build_a4}


def main(names: list[str]) -> None:
    for name in names or sorted(BUILDERS):
        path = ROOT / "solutions" / name / f"{name}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(BUILDERS[name](), str(path))
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])

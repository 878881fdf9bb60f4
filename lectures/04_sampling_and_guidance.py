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
# # Lecture 4 — Faster sampling and guidance: DDIM, classifier-free guidance, thresholding
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/2026-fall/lectures/04_sampling_and_guidance.ipynb)
#
# Lecture 3's DDPM sampler needs one network call per training timestep: 1000 calls for one picture. And a
# model trained on all of its data generates *some* sample of the data, not the one you asked for. This
# lecture fixes both, with the two tricks every Stable Diffusion run uses.
#
# **What you will learn**
# - why DDIM can skip most of the 1000 steps **without retraining**: a non-Markovian process with the
#   same marginals $q(x_t \mid x_0)$, and the role of $\eta$ (deterministic at 0, DDPM-like at 1);
# - how quality and time trade off: DDIM with 10 / 25 / 50 steps against DDPM's 1000;
# - how to condition a diffusion model on a class (the same mechanism will carry text in lecture 6);
# - **classifier-free guidance**: train one network with the condition dropped 10% of the time, sample with
#   $\hat\epsilon = \epsilon_u + w\,(\epsilon_c - \epsilon_u)$, and what the guidance scale $w$ buys and costs;
# - why a large $w$ saturates images, and Imagen's **static and dynamic thresholding** of $\hat x_0$.
#
# **Prerequisites**: lecture 3 (DDPM: forward process, $\epsilon$-prediction, Algorithms 1 and 2), PyTorch basics.
#
# **Time**: `FAST=True` under a minute. The full lesson trains a small class-conditional model on handwritten
# digits in the notebook: a few minutes on a 2-core CPU (measured on our 2-core test machine: 2½ to 5½ minutes
# in two runs, half a minute to 1½ of it for the 1000-step DDPM chain), 1–2 minutes on a Colab GPU.

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

# %% tags=["parameters"]
FAST = False          # True: tiny sizes that only check the plumbing (CI)
SEED = 0
THREADS = 1           # torch CPU threads; tiny models gain little from more, and lose a lot on a busy CPU
TRAIN_STEPS = 2000    # optimizer steps for the class-conditional digit model
BATCH_SIZE = 64
DDPM_STEPS = 1000     # the full DDPM chain
SAMPLES_PER_DIGIT = 10  # images per class when we measure quality

# %%
if FAST:  # derived sizes: every section still runs, the pictures are not meant to be good
    TRAIN_STEPS, BATCH_SIZE, DDPM_STEPS, SAMPLES_PER_DIGIT = 60, 32, 100, 2

# %%
import time

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from tqdm.auto import tqdm

from course_lib.data import load_digits
from course_lib.guidance import cfg_combine, drop_condition, dynamic_threshold, static_threshold
from course_lib.metrics import frechet_distance
from course_lib.schedulers import DDIMScheduler, DDPMScheduler
from course_lib.train import EMA, cosine_schedule_with_warmup
from course_lib.unet import UNet, UNetConfig
from course_lib.viz import attach_widget, image_grid, plot_losses, show_images

torch.set_num_threads(THREADS)
torch.manual_seed(SEED)
plt.rcParams["figure.dpi"] = 80   # inline figures: readable, and small enough to keep in git


# %% [markdown]
# ## 1. Data and a referee
#
# scikit-learn ships 1,797 handwritten digits of 8 × 8 pixels: real data, no download, small enough to train a
# diffusion model on a CPU in minutes. We keep their native 8 × 8 (lecture 3 resized them to 16 × 16): four times
# fewer pixels, so training and the 1000-step DDPM chain stay short. Pixels are in $[-1, 1]$ (background $-1$), as
# the diffusion model sees them.
#
# To talk about quality with numbers and not only with our eyes, we use two measures:
# - a **referee**: a logistic-regression digit classifier fitted on the real training images. A generated "7"
#   counts as right when the referee reads a 7 (*does the image show what we asked for?*);
# - a **pixel Fréchet distance** (FD): fit a Gaussian to the 64 pixel values of the generated images and one to
#   the real digits, and measure how far apart they are, $\|\mu_1-\mu_2\|^2 + \mathrm{Tr}(\Sigma_1+\Sigma_2-2(\Sigma_1\Sigma_2)^{1/2})$
#   (*do the images look like real digits, with their variety?*). This is FID's formula on raw pixels instead of
#   Inception features; it depends on the number of images, so we always compare equal-sized sets.
#
# Real text-to-image models are judged the same way, with bigger referees: CLIP score and FID.

# %%
train_x, train_y = load_digits(image_size=8, split="train", seed=SEED)   # (N, 1, 8, 8) in [-1, 1], (N,)
test_x, test_y = load_digits(image_size=8, split="test", seed=SEED)
print(f"train {tuple(train_x.shape)}, test {tuple(test_x.shape)}, range [{train_x.min():.0f}, {train_x.max():.0f}]")

referee = LogisticRegression(max_iter=2000).fit(train_x.flatten(1).numpy(), train_y.numpy())
print(f"referee accuracy on real test digits: {referee.score(test_x.flatten(1).numpy(), test_y.numpy()):.3f}")


def referee_accuracy(images, labels):
    """Share of generated images the referee reads as the digit we asked for."""
    predicted = referee.predict(images.clamp(-1, 1).flatten(1).numpy())
    return float((predicted == labels.numpy()).mean())


def pixel_statistics(images):
    x = images.clamp(-1, 1).flatten(1).double()    # (B, 64): what you would see on screen
    return x.mean(dim=0), torch.cov(x.T)


REAL_STATISTICS = pixel_statistics(train_x)


def pixel_fd(images):
    """Frechet distance between the pixel statistics of ``images`` and of the real training digits."""
    return frechet_distance(*pixel_statistics(images), *REAL_STATISTICS)


def grid_with_labels(ax, groups, labels, nrow=10, title=None):
    """Draw batches of images as one grid; each batch fills whole rows, its label sits at their centre."""
    images = torch.cat(groups)
    ax.imshow(image_grid(images, nrow=nrow), interpolation="nearest")
    tile, row, centres = images.shape[-1] + 2, 0, []      # image_grid's default padding is 2 pixels
    for group in groups:
        rows = -(-len(group) // nrow)
        centres.append(1 + tile * (row + rows / 2))
        row += rows
    ax.set_yticks(centres, labels, fontsize=9)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)


first_of_each = torch.stack([train_x[train_y == d][:4] for d in range(10)], dim=1).flatten(0, 1)
fig = show_images(first_of_each, ncols=10, figsize=(8, 3.4))
fig.suptitle("real digits (each column one class)", y=1.02);

# %% [markdown]
# ## 2. A class-conditional denoiser, trained for classifier-free guidance
#
# The network is the course's UNet (`course_lib.unet`, the same one Stable Diffusion's miniature uses in
# lecture 6), here with one input channel for grey pixels. It is conditioned the way Stable Diffusion is
# conditioned on text: through **cross-attention to a sequence of context vectors**. For a class label the
# sequence is a single learned vector, the label's embedding, so the context is $(B, 1, d)$; for text it will be
# the 77 token vectors of a prompt.
#
# One extra label, `NULL = 10`, means "no condition". **Classifier-free guidance** (Ho & Salimans 2022) needs
# both $\epsilon_\theta(x_t, t, c)$ and $\epsilon_\theta(x_t, t, \varnothing)$. Instead of training two networks we
# train one and, in each batch, replace the label by `NULL` with probability $p_{\text{uncond}} = 0.1$
# (`course_lib.guidance.drop_condition`). Everything else is lecture 3's Algorithm 1:
#
# $$\mathcal L = \mathbb E_{x_0, c, t, \epsilon}\big\|\epsilon - \epsilon_\theta\big(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\; t,\; \tilde c\big)\big\|^2,
# \qquad \tilde c = \begin{cases}\varnothing & \text{with probability } 0.1\\ c & \text{otherwise}\end{cases}$$

# %%
NULL = 10            # the "no condition" label
P_UNCOND = 0.1       # condition dropout probability
CONTEXT_DIM = 32


class LabelContext(nn.Module):
    """Class labels (B,) -> a one-token context (B, 1, CONTEXT_DIM) for the UNet's cross-attention."""

    def __init__(self, num_labels: int = 11, dim: int = CONTEXT_DIM):
        super().__init__()
        self.embedding = nn.Embedding(num_labels, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(labels)[:, None, :]


class DigitDenoiser(nn.Module):
    """eps_theta(x_t, t, c) for 8x8 digits: label context + UNet."""

    def __init__(self):
        super().__init__()
        self.context = LabelContext()
        self.unet = UNet(UNetConfig(in_channels=1, out_channels=1, block_channels=(16, 32),
                                    attention_levels=(), num_heads=2, context_dim=CONTEXT_DIM,
                                    norm_groups=8))

    def forward(self, x_t, t, labels):
        return self.unet(x_t, t, self.context(labels))


model = DigitDenoiser()
noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")  # lecture 3's schedule
print(f"{sum(p.numel() for p in model.parameters()):,} parameters")

# %%
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
lr_schedule = cosine_schedule_with_warmup(optimizer, warmup_steps=max(1, TRAIN_STEPS // 20),
                                          total_steps=TRAIN_STEPS)
ema = EMA(model, decay=0.995)   # sampling uses an average of recent weights: smoother samples
generator = torch.Generator().manual_seed(SEED)
losses = []
start = time.perf_counter()
for step in tqdm(range(TRAIN_STEPS), desc="training"):
    idx = torch.randint(0, len(train_x), (BATCH_SIZE,), generator=generator)
    x0 = train_x[idx]
    labels = drop_condition(train_y[idx], NULL, p=P_UNCOND, generator=generator)  # 10% -> NULL
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (BATCH_SIZE,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    x_t = noise_scheduler.add_noise(x0, eps, t)
    loss = (model(x_t, t, labels) - eps).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    lr_schedule.step()
    ema.update()
    losses.append(loss.item())
print(f"{TRAIN_STEPS} steps in {time.perf_counter() - start:.0f} s, last losses {np.mean(losses[-50:]):.3f}")
ema.copy_to(model)
model.eval()
fig = plot_losses(losses, title="noise-prediction loss (with 10% unconditional rows)")


# %% [markdown]
# ## 3. One sampling loop for everything
#
# Every sampler in this lecture is the same five-line loop: set the timesteps, and at each one run the network
# on a **doubled batch** (unconditional rows first, as in diffusers), combine the two predictions with the
# guidance scale, and let the scheduler take a step. Only the scheduler object changes.
#
# The loop hands the scheduler $\hat x_0$ instead of $\hat\epsilon$ (a scheduler built with
# `prediction_type="sample"` accepts either), so that section 6 can edit $\hat x_0$ before the step. Without an
# edit this is exactly the usual $\epsilon$ step: the scheduler turns $\hat x_0$ back into the same $\hat\epsilon$.
# With an edit, $\hat\epsilon$ is re-derived from the edited $\hat x_0$, so the two stay consistent (GLIDE does this;
# diffusers calls it `use_clipped_model_output=True`). Clipping $\hat x_0$ but keeping the old $\hat\epsilon$, which
# is what a DDIM scheduler with `clip_sample=True` does by default, mixes two different guesses of the clean image
# and, with strong guidance, ruins DDIM samples.

# %%
def make_scheduler(kind: str = "ddim", num_inference_steps: int = 25):
    """A DDPM or DDIM sampler on the training schedule, fed x0_hat; no clipping unless we ask for it."""
    cls = DDIMScheduler if kind == "ddim" else DDPMScheduler
    scheduler = cls.from_config({**noise_scheduler.config.to_dict(), "prediction_type": "sample",
                                 "clip_sample": False})
    scheduler.set_timesteps(num_inference_steps)
    return scheduler


@torch.no_grad()
def sample(labels, guidance_scale=3.0, kind="ddim", num_inference_steps=25, eta=0.0, seed=0,
           threshold=None, record_at=None, x_T=None):
    """Generate one image per label. threshold: None or a function applied to x0_hat at every step.
    record_at: a step index whose (unthresholded) x0_hat is returned too, for the histograms."""
    scheduler = make_scheduler(kind, num_inference_steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(labels), 1, 8, 8, generator=g) if x_T is None else x_T.clone()
    both_labels = torch.cat([torch.full_like(labels, NULL), labels])        # unconditional first
    recorded = None
    for i, t in enumerate(scheduler.timesteps):
        eps_uncond, eps_cond = model(torch.cat([x, x]), t, both_labels).chunk(2)
        eps = cfg_combine(eps_uncond, eps_cond, guidance_scale)              # eps_u + w (eps_c - eps_u)
        abar = scheduler.alphas_cumprod[t]
        x0_hat = (x - (1 - abar).sqrt() * eps) / abar.sqrt()                   # DDPM eq. (15)
        if i == record_at:
            recorded = x0_hat.clone()
        if threshold is not None:
            x0_hat = threshold(x0_hat)
        extra = {"eta": eta} if kind == "ddim" else {}
        x = scheduler.step(x0_hat, t, x, generator=g, **extra).prev_sample
    return (x, recorded) if record_at is not None else x


digits = torch.arange(10).repeat(SAMPLES_PER_DIGIT)   # 0..9, 0..9, ...: the labels we ask for
print(f"pixel FD of {len(digits)} real held-out digits to the training digits (the real-vs-real reference at "
      f"this set size, not a floor): {pixel_fd(test_x[:len(digits)]):.2f}")

# %% [markdown]
# ## 4. DDIM: skipping steps without retraining
#
# DDPM's reverse process is Markovian: $x_{t-1}$ is drawn from $q(x_{t-1} \mid x_t, \hat x_0)$, and the chain
# must visit every $t$. DDIM (Song, Meng & Ermon 2021) notices that the training loss only ever uses the
# marginals $q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}\,x_0, (1-\bar\alpha_t) I)$. Many *non-Markovian* forward
# processes have these same marginals, so a network trained for DDPM is already trained for all of them. DDIM
# picks the family
#
# $$x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 \;+\; \sqrt{1 - \bar\alpha_{t'} - \sigma_t^2}\;\hat\epsilon \;+\; \sigma_t z,
# \qquad \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon}{\sqrt{\bar\alpha_t}} \qquad \text{(DDIM eq. 12)}$$
#
# "predicted $x_0$", "direction pointing to $x_t$", fresh noise. Two consequences:
# - $t'$ need not be $t-1$: the same formula jumps from $t$ to any earlier $t'$, so 25 of the 1000 timesteps
#   (960, 920, …, 0) are enough;
# - the noise level is free: $\sigma_t(\eta) = \eta\sqrt{\tfrac{1-\bar\alpha_{t'}}{1-\bar\alpha_t}}\sqrt{1-\tfrac{\bar\alpha_t}{\bar\alpha_{t'}}}$
#   (eq. 16). $\eta = 1$ gives DDPM's posterior variance; $\eta = 0$ adds no noise at all: sampling becomes a
#   **deterministic** map from $x_T$ to $x_0$ (a discretised ODE), which is what makes few steps work well.
#
# Let's time DDPM's full chain against DDIM with 10, 25 and 50 steps, on the same starting noise, with
# guidance $w = 3$ (section 5 explains $w$), and let the referee score them.

# %%
W_COMPARE = 3.0
runs = [("ddpm", DDPM_STEPS), ("ddim", 10), ("ddim", 25), ("ddim", 50)]
results = {}
for kind, steps in tqdm(runs, desc="samplers"):
    start = time.perf_counter()
    images = sample(digits, W_COMPARE, kind=kind, num_inference_steps=steps, eta=0.0, seed=SEED)
    seconds = time.perf_counter() - start
    results[f"{kind.upper()} {steps}"] = dict(images=images, seconds=seconds,
                                            accuracy=referee_accuracy(images, digits), fd=pixel_fd(images))
for name, r in results.items():
    print(f"{name:>10}: {r['seconds']:6.1f} s for {len(digits)} images, referee accuracy {r['accuracy']:.2f}, "
          f"pixel FD {r['fd']:.2f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.5, 1]})
grid_with_labels(axes[0], [r["images"][:20] for r in results.values()],
                 [f"{name}\n{r['seconds']:.1f} s\nacc {r['accuracy']:.2f}\nFD {r['fd']:.1f}"
                  for name, r in results.items()],
                 title=f"the same starting noise and labels, w = {W_COMPARE:g}")
names = list(results)
ax = axes[-1]
ax.bar(names, [results[n]["seconds"] for n in names], color="C0")
ax.set_ylabel("seconds", color="C0")
ax.set_yscale("log")
ax.tick_params(axis="x", labelrotation=30)
ax2 = ax.twinx()
ax2.plot(names, [results[n]["fd"] for n in names], "o-", color="C3")
ax2.set_ylim(0, 1.2 * max(results[n]["fd"] for n in names))
ax2.set_ylabel("pixel FD to real digits (lower is better)", color="C3")
ax.set_title("time (bars, log scale) and realism (line)")
fig.tight_layout()

# %% [markdown]
# Each DDIM step costs about the same as a DDPM step, so time is roughly proportional to the number of steps:
# 25 steps make 40x fewer network calls than 1000, and the times printed above follow (in our full run 36.3 s
# against 0.9 s, 40x; fixed costs per call or a shared CPU can keep the measured ratio below the count: 32x in
# another run). The referee cannot tell them
# apart; the pixel FD sees a small gap: the stochastic 1000-step chain (2.11) matches the real digits'
# statistics as well as held-out real digits do (2.11, the real-vs-real reference printed in section 3), the
# deterministic DDIM shortcut lands a little further away, and about equally far with 10, 25 or 50 steps
# (2.74, 2.66, 2.65). (Reported elsewhere, not run here: on large images very few steps cost fine detail first
# (Song et al. 2021, DDIM, Table 1 and Figure 3); diffusers' `StableDiffusionPipeline` defaults to 50 steps, with
# PNDM as SD v1.5's configured scheduler.)
#
# **$\eta$: from deterministic to stochastic.** Now fix the starting noise $x_T$ and vary $\eta$ and the number of
# steps. At $\eta = 0$ the result is a function of $x_T$ alone: 10, 25 and 50 steps give nearly the same digit,
# so $x_T$ behaves like a latent code (this is what makes DDIM *inversion* and image editing possible). As $\eta$
# grows, fresh noise enters at every step and the samples drift apart: at $\eta = 1$ the same $x_T$ gives a
# different-looking digit for each number of steps.

# %%
eta_labels = torch.arange(10)
x_T = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(SEED + 1))
rows, names = [], []
for eta in (0.0, 0.5, 1.0):
    for steps in (10, 25, 50):
        rows.append(sample(eta_labels, W_COMPARE, "ddim", steps, eta=eta, seed=SEED + 2, x_T=x_T))
        names.append(f"eta={eta:g}, {steps} steps")
fig, ax = plt.subplots(figsize=(6, 6.2))
grid_with_labels(ax, rows, names, title="the same x_T in every row: DDIM, eta x number of steps")

same_code = [torch.nn.functional.mse_loss(rows[i].clamp(-1, 1), rows[i + 2].clamp(-1, 1)).item()
             for i in (0, 3, 6)]
print("mean squared difference between 10 and 50 steps, same x_T: "
      + ", ".join(f"eta={e:g}: {d:.3f}" for e, d in zip((0, 0.5, 1), same_code)))

# %% [markdown]
# ## 5. Classifier-free guidance
#
# Why does mixing two predictions help? For a noisy sample the network's output is a scaled score,
# $\epsilon_\theta(x_t, c) \approx -\sqrt{1-\bar\alpha_t}\,\nabla_{x_t} \log p(x_t \mid c)$. Bayes' rule,
# $\log p(c \mid x_t) = \log p(x_t \mid c) - \log p(x_t) + \text{const}$, says that the *difference*
# $\epsilon_c - \epsilon_u$ points along $-\nabla \log p(c \mid x_t)$. The sampler *subtracts* predicted noise, so
# each extra helping of that difference moves $x_t$ up the gradient of $\log p(c \mid x_t)$: towards images that
# an implicit classifier, hidden in the two predictions, finds more typical of $c$. Guidance follows the
# unconditional score plus $w$ times that direction:
#
# $$\hat\epsilon = \epsilon_\theta(x_t, \varnothing) + w\,\big(\epsilon_\theta(x_t, c) - \epsilon_\theta(x_t, \varnothing)\big)
# \quad\Longleftrightarrow\quad \text{sampling from } \; p(x)\,p(c \mid x)^{w}.$$
#
# - $w = 0$: the unconditional model, the label is ignored;
# - $w = 1$: the plain conditional model, $p(x \mid c)$;
# - $w > 1$: an exaggerated condition: fewer ambiguous digits, less variety (Stable Diffusion's default is 7.5,
#   the `guidance_scale` default of diffusers' `StableDiffusionPipeline`).
#
# (Ho & Salimans write the same rule with $1 + w$ where we write $w$; diffusers and this course use the form
# above.) It costs two network evaluations per step; we batch them as one call on the doubled batch.

# %%
SCALES = (0.0, 1.0, 3.0, 7.5)
guided = {w: sample(digits, w, "ddim", 25, seed=SEED) for w in tqdm(SCALES, desc="guidance scales")}
accuracy = {w: referee_accuracy(guided[w], digits) for w in SCALES}
fd = {w: pixel_fd(guided[w]) for w in SCALES}

fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.5, 1]})
grid_with_labels(axes[0], [guided[w][:20] for w in SCALES],
                 [f"w = {w:g}\nacc {accuracy[w]:.2f}\nFD {fd[w]:.1f}" for w in SCALES],
                 title="the same starting noise, four guidance scales (DDIM, 25 steps)")
ax = axes[1]
ax.plot(SCALES, [accuracy[w] for w in SCALES], "o-", color="C0")
ax.set_ylim(0, 1.05)
ax.set_xlabel("guidance scale w")
ax.set_ylabel("referee accuracy", color="C0")
ax2 = ax.twinx()
ax2.plot(SCALES, [fd[w] for w in SCALES], "s--", color="C3")
ax2.set_ylabel("pixel FD to real digits", color="C3")
ax.set_title("shows the asked-for digit (left axis)\nvs looks like real data (right axis)")
fig.tight_layout()

# %% [markdown]
# The numbers tell the classic story of guidance: the referee's accuracy jumps from chance at $w = 0$ (the label
# is ignored) to nearly 1, while the pixel FD is best around $w = 1$ and grows with $w$: stronger guidance means
# less variety and harsher images. At $w = 1$ the figure's label reads FD 1.5, *below* the 2.11 of 100 held-out
# real digits: the real-vs-real figure is a reference, not a floor. Both are measured against the training
# digits' statistics, which the model was fitted to, while 100 held-out digits carry their own sampling noise
# and their small differences from the training set. Text-to-image models pick $w$ on exactly this trade-off (FID against CLIP
# score curves).
#
# Turn the knob yourself: the slider samples one of each digit (DDIM, 25 steps, the same noise for every value)
# at the guidance scale you pick. Watch the digits become unambiguous, then thick and blown-out beyond
# $w \approx 8$.

# %%
slider_x_T = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(SEED + 3))


def show_guidance(w):
    images = sample(torch.arange(10), float(w), "ddim", 25, seed=SEED, x_T=slider_x_T)
    fig = show_images(images, titles=[str(d) for d in range(10)], ncols=10, figsize=(9, 1.6))
    fig.suptitle(f"guidance scale w = {w:g}", y=1.08)
    return fig


show_guidance(3.0)
plt.show()
attach_widget(show_guidance, widgets.FloatSlider(value=3.0, min=0.0, max=20.0, step=0.5,
                                                 description="w", continuous_update=False))

# %% [markdown]
# ## 6. Why large $w$ saturates, and Imagen's thresholds
#
# The guided $\hat\epsilon$ is an *extrapolation*: for $w > 1$ it is no longer a prediction the network was
# trained to make. The sampler turns it into $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon)/\sqrt{\bar\alpha_t}$,
# and early in sampling $\sqrt{\bar\alpha_t}$ is small, so the extrapolation is amplified: $\hat x_0$ lands far
# outside the data range $[-1, 1]$. The next $x_{t'}$ is built from that $\hat x_0$, the network then sees inputs
# unlike anything in training, and the errors compound: over-saturated, over-contrasted images whose pixels the
# display has to clamp. Imagen (Saharia et al. 2022, §2.3) tames $\hat x_0$ at every step:
#
# - **static thresholding**: clip $\hat x_0$ to $[-1, 1]$ (`static_threshold`; diffusers' `clip_sample=True`).
#   The values stay legal, but every pixel that "wanted" to be brighter than white becomes exactly white: the
#   histogram grows spikes at $\pm 1$, images get flat, saturated regions.
# - **dynamic thresholding**: per sample, take $s$ = the 99.5th percentile of $|\hat x_0|$; if $s > 1$, clip to
#   $[-s, s]$ and divide by $s$ (`dynamic_threshold`). An overshooting sample is shrunk *as a whole* back into
#   range: no spikes, its relative contrasts kept, but also less contrast overall.
#
# The top row shows $\hat x_0$ a fifth of the way into sampling (before any threshold), for $w = 1$ and for a large
# $w$, and what each threshold makes of the large-$w$ one. The bottom row shows the finished images' pixels
# *before* the display clamps them to $[-1, 1]$ (values beyond the axes are counted in the outermost bins).

# %%
W_BIG = 15.0
RECORD_STEP = 5     # of 25: early, when sqrt(abar_t) is still small
final_w1, x0_w1 = sample(digits, 1.0, "ddim", 25, seed=SEED, record_at=RECORD_STEP)
final_big, x0_big = sample(digits, W_BIG, "ddim", 25, seed=SEED, record_at=RECORD_STEP)
final_static = sample(digits, W_BIG, "ddim", 25, seed=SEED, threshold=static_threshold)
final_dynamic = sample(digits, W_BIG, "ddim", 25, seed=SEED, threshold=dynamic_threshold)

t_record = int(make_scheduler("ddim", 25).timesteps[RECORD_STEP])
rows = {f"x0_hat at step {RECORD_STEP} of 25 (t = {t_record})":
            {"w = 1": x0_w1, f"w = {W_BIG:g}, no threshold": x0_big,
             f"w = {W_BIG:g}, static": static_threshold(x0_big), f"w = {W_BIG:g}, dynamic": dynamic_threshold(x0_big)},
        "finished image, before display clamping":
            {"w = 1": final_w1, f"w = {W_BIG:g}, no threshold": final_big,
             f"w = {W_BIG:g}, static": final_static, f"w = {W_BIG:g}, dynamic": final_dynamic}}
fig, axes = plt.subplots(2, 4, figsize=(15, 5.6), sharex="row")
for r, (row_title, panels) in enumerate(rows.items()):
    limit = 6.0 if r == 0 else 3.0
    for ax, (title, values) in zip(axes[r], panels.items()):
        v = values.flatten().numpy()
        ax.hist(np.clip(v, -limit, limit), bins=np.linspace(-limit, limit, 61), color="C0")
        ax.axvspan(-1, 1, color="C2", alpha=0.15, label="data range [-1, 1]")
        outside = (np.abs(v) > 1.05).mean()
        ax.set_title(f"{title}: {100 * outside:.0f}% beyond ±1.05", fontsize=9)
    axes[r, 0].set_ylabel(row_title, fontsize=9)
axes[0, 0].legend(fontsize=8)
fig.tight_layout()

# %%
thresholds = {"none": None, "static": static_threshold, "dynamic": dynamic_threshold}
rows, names, scores = [], [], []
for w in (3.0, 7.5, W_BIG):
    for name, fn in thresholds.items():
        images = sample(digits, w, "ddim", 25, seed=SEED, threshold=fn)
        rows.append(images[:10])
        names.append(f"w={w:g}, {name}")
        saturated = (images.abs() >= 0.99).float().mean()    # pixels at (or clamped to) black/white
        scores.append(f"w={w:>4g} {name:<8} acc {referee_accuracy(images, digits):.2f}   "
                      f"pixels at +-1: {100 * saturated:3.0f}%   pixel FD {pixel_fd(images):6.2f}")
fig, ax = plt.subplots(figsize=(6.5, 6.2))
grid_with_labels(ax, rows, names, title="the same noise: three guidance scales x three thresholds")
print("\n".join(scores))

# %% [markdown]
# What to look for, on our digits:
#
# - **no threshold**: as $w$ grows, strokes get thicker and harsher; at $w = 15$ more than half of the finished
#   pixels lie beyond $\pm 1$ and are clamped flat by the display. Early $\hat x_0$ values spread over $\pm 6$
#   and more.
# - **static**: the chain stays in range, and on these digits that already repairs a lot: the $w = 15$ row looks
#   much like $w = 3$. The tell-tale sign is the pile-up at exactly $\pm 1$.
# - **dynamic**: no pile-up, every sample shrunk as a whole, but our digits are almost *binary* (black background,
#   white strokes, 64 pixels), so shrinking turns the black background grey and the pixel FD gets worse. On
#   Imagen's natural photos few pixels sit at the extremes, the shrink costs little and avoids static's flat
#   blown-out patches, which is why Imagen could push $w$ far beyond what was usable before. diffusers' version
#   (`thresholding=True`) caps $s$ at `sample_max_value` to limit exactly this loss of contrast.
#
# The referee stays happy throughout: at these scales every digit is still recognisable. Guidance strength is not
# the problem; leaving the data range is.
#
# **Stable Diffusion uses neither.** Thresholding assumes a bounded data range, and SD's latents are not bounded
# by 1 (its scheduler config says `clip_sample: False`, and diffusers documents `thresholding` as unsuitable for
# latent-space models). SD stays at moderate scales (7.5) instead; rescaling the guided prediction's standard
# deviation (diffusers' `guidance_rescale`, Lin et al. 2023) plays a similar role in latent space.
#
# ## Summary
#
# | | DDPM | DDIM |
# |---|---|---|
# | forward (inference) process | Markovian, $q(x_t \mid x_{t-1})$ | non-Markovian, $q_\sigma(x_t \mid x_{t-1}, x_0)$, same marginals $q(x_t \mid x_0)$ |
# | reverse step | posterior $q(x_{t-1} \mid x_t, \hat x_0)$, to $t - 1$ | $q_\sigma(x_{t'} \mid x_t, \hat x_0)$ (eq. 12), to any $t' < t$ |
# | steps | all $T$ (1000) | any subsequence: 10–50 |
# | noise | $\sigma_t^2 = \tilde\beta_t$ | $\sigma_t(\eta)$; $\eta = 0$ deterministic |
# | retraining needed | — | none: same $\epsilon_\theta$ |
#
# Classifier-free guidance = condition dropout $p = 0.1$ in training + $\epsilon_u + w(\epsilon_c - \epsilon_u)$ at
# sampling, at twice the cost per step. Large $w$ trades variety for fidelity and eventually leaves the data
# range; pixel-space models keep $\hat x_0$ in range with static clipping or Imagen's dynamic thresholding.
#
# ## Check your understanding
#
# 1. DDIM uses a network trained with DDPM's loss, unchanged. Which property of the DDIM forward process makes
#    that legitimate, and which quantity in the training loss would have to change for it not to be?
# 2. With $\eta = 0$, what is random in DDIM sampling? Why does that make 10-step and 50-step samples from the
#    same $x_T$ look alike, and why does that stop being true at $\eta = 1$?
# 3. DDPM with 1000 steps and DDIM with 25 steps: how many UNet evaluations does each need per image *with*
#    classifier-free guidance? How would you implement guidance with a single evaluation per step on a batch?
# 4. What would go wrong at sampling time if we trained with $p_{\text{uncond}} = 0$? And with
#    $p_{\text{uncond}} = 0.9$?
# 5. Write $\hat\epsilon$ for $w = 0$, $w = 1$ and $w = 2$ in terms of $\epsilon_u$ and $\epsilon_c$. Which one
#    extrapolates, and why does extrapolation explain the histograms of section 6?
# 6. Dynamic thresholding divides by $s \ge 1$. Why is $s$ chosen per sample and not once for the whole batch?
#    Why is the percentile 99.5% and not 100%?
# 7. Why is neither threshold used by Stable Diffusion? (Hint: what range do its latents live in?)
#
# <details><summary>Answers (try first)</summary>
#
# 1. Its marginals: for every $t$, $q_\sigma(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}\,x_0, (1-\bar\alpha_t) I)$,
#    exactly DDPM's, and $L_\text{simple}$ only ever draws $x_t$ from these marginals. It would stop being
#    legitimate if the $\bar\alpha_t$ in $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ changed
#    (another schedule or parameterisation of the marginals): the network would be asked about noise levels it
#    was not trained on.
# 2. Only $x_T$: at $\eta = 0$ every step is a deterministic function of the current $x_t$. 10 and 50 steps are
#    two discretisations of the same ODE from the same start, so they land near the same digit (mean squared
#    difference 0.003 in section 4). At $\eta = 1$ every step adds fresh noise $\sigma_t z$, and different step
#    counts draw different noise: 0.168.
# 3. Two per step: 2000 for DDPM, 50 for DDIM with 25 steps. Run them as one call: stack $[x_t, x_t]$ with
#    $[\varnothing, c]$ into a batch of $2B$ and split the output (`chunk(2)`), as `sample` does. That is one
#    call per step, still $2B$ rows of work.
# 4. With $p_\text{uncond} = 0$ the `NULL` label is never trained: $\epsilon_\theta(x_t, t, \varnothing)$ is whatever
#    an untrained embedding produces, so $\epsilon_c - \epsilon_u$ is not the direction of $\nabla \log p(c \mid x_t)$
#    and any $w \neq 1$ is guided by noise. With $p_\text{uncond} = 0.9$ the conditional model sees each label
#    only 10% as often: a good unconditional model and a weak conditional one, so guidance amplifies a weak
#    signal. Ho & Salimans found 0.1 to 0.2 works well.
# 5. $w = 0$: $\epsilon_u$; $w = 1$: $\epsilon_c$; $w = 2$: $2\epsilon_c - \epsilon_u = \epsilon_c + (\epsilon_c - \epsilon_u)$,
#    which extrapolates beyond anything the network predicted. Early in sampling $\hat x_0$ divides that
#    extrapolated noise by a small $\sqrt{\bar\alpha_t}$, so $\hat x_0$ lands far outside $[-1, 1]$: the wide
#    histograms of section 6.
# 6. Samples overshoot by different amounts; one $s$ for the batch would be set by the worst sample and dim
#    all the others (and an image would depend on what else is in its batch). At 100%, $s = \max |\hat x_0|$:
#    a single outlier pixel would shrink the whole image; 99.5% lets the top 0.5% be clipped instead.
# 7. Both assume data in $[-1, 1]$. SD's scaled latents have roughly unit standard deviation but no bound, so
#    clipping them to $[-1, 1]$ (or to a percentile) destroys legitimate values; SD v1.5's scheduler config has
#    `clip_sample: false`, and diffusers documents `thresholding` as unsuitable for latent-space models.
#    SD keeps $w$ moderate (7.5) instead, or rescales the guided prediction (`guidance_rescale`).
# </details>

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
# # Lecture 3 — DDPM: learning to undo noise
#
# A denoising diffusion probabilistic model (Ho et al. 2020) destroys images with Gaussian noise in many
# small steps, then learns to walk back. This is the generative engine of Stable Diffusion; here we build
# it on pixels of tiny handwritten digits, where you can watch every step. (Lecture 1's VAE would let
# us run the very same thing on latents: that is latent diffusion.)
#
# **What you will learn**
# - the forward process $q(x_t \mid x_{t-1})$ and its closed form $q(x_t \mid x_0)$, checked numerically;
# - beta schedules (linear, scaled-linear, cosine) and what $\bar\alpha_t$ means, with an interactive
#   explorer;
# - the noise-prediction objective $\lVert \varepsilon - \varepsilon_\theta(x_t, t) \rVert^2$;
# - the reverse step (DDPM's Algorithm 2), written out and checked against `course_lib`'s scheduler;
# - training a small UNet on the scikit-learn digits and watching its $x_0$ predictions while sampling.
#
# **Prerequisites:** lecture 1 (Gaussians, the reparameterisation $z = \mu + \sigma\varepsilon$), a
# PyTorch training loop. Lecture 2 helps: the UNet contains attention layers.
#
# **Time:** about 5-7 minutes on a laptop CPU (most of it training a 0.7M-parameter UNet), about
# 1-2 minutes on a Colab GPU. `FAST = True` runs everything in well under a minute with a barely trained
# model.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/2026-fall/lectures/03_ddpm.ipynb)

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
FAST = False              # True in CI: a few training steps, a short sampling chain
SEED = 0
IMAGE_SIZE = 16           # the 8 x 8 scikit-learn digits, resized to 16 x 16
NUM_TRAIN_TIMESTEPS = 1000
BATCH_SIZE = 64
TRAIN_STEPS = 1200
LEARNING_RATE = 2e-3
NUM_SAMPLES = 32
SAMPLING_STEPS = 1000     # the full chain, as in DDPM's Algorithm 2

# %%
if FAST:  # same lesson, barely trained model
    BATCH_SIZE, TRAIN_STEPS, NUM_SAMPLES, SAMPLING_STEPS = 16, 20, 8, 20

# %%
# %matplotlib inline
import math

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from course_lib.data import load_digits
from course_lib.schedulers import DDPMScheduler, make_betas
from course_lib.train import EMA, cosine_schedule_with_warmup, train_loop
from course_lib.unet import UNet, UNetConfig
from course_lib.viz import image_grid, plot_losses, plot_schedule, plot_trajectory, show_images

torch.manual_seed(SEED)
if FAST:
    torch.set_num_threads(1)  # CI shares a busy machine: threads waiting on each other cost more than they save
images, labels = load_digits(IMAGE_SIZE, split="train")       # (N, 1, 16, 16) in [-1, 1]
test_images, _ = load_digits(IMAGE_SIZE, split="test")
print("training digits:", tuple(images.shape))
fig = show_images(images[:16], titles=[str(int(l)) for l in labels[:16]], ncols=16, figsize=(12, 1.3))

# %% [markdown]
# ## 1. The forward process: destroying an image, one small step at a time
#
# Pick variances $\beta_1, \dots, \beta_T$ (small, e.g. $10^{-4}$ to $0.02$, $T = 1000$). Each step
# shrinks the image a little and adds a little fresh noise:
#
# $$q(x_t \mid x_{t-1}) = \mathcal N\!\left(\sqrt{1 - \beta_t}\, x_{t-1},\; \beta_t I\right).$$
#
# The shrinking keeps the variance bounded: if $x_{t-1}$ has unit variance, so does $x_t$. Write
# $\alpha_t = 1 - \beta_t$ and $\bar\alpha_t = \prod_{s \le t} \alpha_s$. Two Gaussian steps compose into one
# Gaussian (variances of independent noises add: $\alpha_t (1 - \alpha_{t-1}) + (1 - \alpha_t) =
# 1 - \alpha_t \alpha_{t-1}$), and by induction we can jump from $x_0$ to any $x_t$ directly:
#
# $$q(x_t \mid x_0) = \mathcal N\!\left(\sqrt{\bar\alpha_t}\, x_0,\; (1 - \bar\alpha_t) I\right)
# \quad\Longleftrightarrow\quad
# x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \varepsilon,\;\; \varepsilon \sim \mathcal N(0, I).$$
#
# This closed form is what makes training cheap: no need to simulate the chain. `scheduler.add_noise`
# implements it. Let us check it against the chain itself, simulated step by step for many noise draws.
# (Code counts $t$ from 0, as diffusers does: `alphas_cumprod[t]` is $\bar\alpha_{t+1}$ of the paper.)

# %%
scheduler = DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="linear")
betas, abar = scheduler.betas, scheduler.alphas_cumprod              # (T,) each

x0 = images[0]                                                       # (1, 16, 16)
g = torch.Generator().manual_seed(SEED)
draws = 200 if FAST else 2000
x = x0.expand(draws, -1, -1, -1).clone()                            # many copies, one chain each
checkpoints = {49: None, 299: None, 999: None}
for t in range(NUM_TRAIN_TIMESTEPS):                                 # the chain, one step at a time
    x = (1 - betas[t]).sqrt() * x + betas[t].sqrt() * torch.randn(x.shape, generator=g)
    if t in checkpoints:
        checkpoints[t] = x.clone()
print(f"{draws} chains per pixel; sampling error of an empirical mean ~ 1/sqrt({draws}) = {draws ** -0.5:.3f}")
for t, xt in checkpoints.items():
    mean_err = (xt.mean(0) - abar[t].sqrt() * x0).abs().mean()      # averaged over the 256 pixels
    std_err = (xt.std(0) - (1 - abar[t]).sqrt()).abs().mean()
    print(f"t={t:4d}: abar_t={abar[t]:.4f}   mean |empirical mean - sqrt(abar_t) x0| = {mean_err:.3f},  "
          f"mean |empirical std - sqrt(1 - abar_t)| = {std_err:.3f}")

# %% [markdown]
# The empirical mean and standard deviation of thousands of simulated chains match the closed form up to
# sampling error (which shrinks like $1/\sqrt{\text{draws}}$). Here is one digit at a few timesteps,
# jumping there directly:

# %%
shown_t = [0, 50, 100, 200, 300, 500, 700, 999]
noise = torch.randn(images[:1].shape, generator=torch.Generator().manual_seed(SEED))
noisy = [scheduler.add_noise(images[:1], noise, torch.tensor([t])) for t in shown_t]
fig = show_images(torch.cat(noisy), titles=[f"t={t}, abar={abar[t]:.2f}" for t in shown_t], ncols=8,
                  figsize=(12, 1.8))

# %% [markdown]
# ## 2. Beta schedules
#
# The schedule decides *how fast* the signal fades, i.e. the curve $\bar\alpha_t$ (the share of signal
# variance left) or equivalently the signal-to-noise ratio $\mathrm{SNR}(t) = \bar\alpha_t / (1 - \bar\alpha_t)$.
#
# - **linear** (DDPM): $\beta_t$ from $10^{-4}$ to $0.02$. On small images the signal is essentially gone
#   well before $T$: many late steps are wasted on pure noise.
# - **scaled-linear** (Stable Diffusion, on latents): $\sqrt{\beta_t}$ linear from $\sqrt{0.00085}$ to
#   $\sqrt{0.012}$. Gentler; the final step keeps a little signal.
# - **cosine** (Nichol & Dhariwal 2021): $\bar\alpha_t \propto \cos^2\!\big(\tfrac{\pi}{2}\,\tfrac{t/T + s}{1 + s}\big)$,
#   a log-SNR that falls nearly linearly, so every step removes a similar amount of information.

# %%
schedules = {
    "linear": DDPMScheduler(NUM_TRAIN_TIMESTEPS, beta_schedule="linear"),
    "scaled_linear": DDPMScheduler(NUM_TRAIN_TIMESTEPS, beta_start=0.00085, beta_end=0.012,
                                   beta_schedule="scaled_linear"),
    "cosine": DDPMScheduler(NUM_TRAIN_TIMESTEPS, beta_schedule="cosine"),
}
fig = plot_schedule({name: s.alphas_cumprod for name, s in schedules.items()}, log_snr=True)
plt.show()
for name, s in schedules.items():
    a = s.alphas_cumprod
    half = int((a < 0.5).nonzero()[0])
    print(f"{name:14s} abar at the last step = {a[-1]:.2e};  half the signal variance is gone at t = {half}")

# %% [markdown]
# None of them reaches $\bar\alpha_T = 0$ exactly: training never shows the model pure noise, yet sampling
# starts from it (Lin et al., WACV 2024, *Common diffusion noise schedules and sample steps are flawed*). For
# SD's scaled-linear schedule the leftover signal is noticeable ($\bar\alpha_T = 4.66 \times 10^{-3}$ above): that is
# why SD struggles to make very dark or very bright images (reported by Lin et al. for SD, not run here).
#
# **Explorer.** Pick a schedule and a timestep: the same noise is added to six digits, and the curve
# shows where you are. In a live notebook the controls redraw the figure; executed headless it shows the
# default setting.

# %%
explorer_noise = torch.randn(images[:6].shape, generator=torch.Generator().manual_seed(SEED))

def explore(schedule="linear", t=200):
    chosen = schedules[schedule]
    noisy = chosen.add_noise(images[:6], explorer_noise, torch.tensor([t]))
    fig = plt.figure(figsize=(12, 2.8))
    ax = fig.add_axes((0.05, 0.17, 0.3, 0.7))
    for name, s in schedules.items():
        ax.plot(s.alphas_cumprod, lw=2.5 if name == schedule else 1, alpha=1 if name == schedule else 0.4,
                label=name)
    a_t = chosen.alphas_cumprod[t].item()
    ax.plot([t], [a_t], "ko")
    ax.set(xlabel="t", ylabel=r"$\bar\alpha_t$", title=f"{schedule}: abar_t = {a_t:.3f}, SNR = {a_t / (1 - a_t):.3g}")
    ax.legend(fontsize=8)
    for i in range(6):
        image_ax = fig.add_axes((0.4 + i * 0.1, 0.17, 0.09, 0.7))
        image_ax.imshow(noisy[i, 0].clamp(-1, 1), cmap="gray", vmin=-1, vmax=1)
        image_ax.set_axis_off()
    plt.show()

explore("linear", 200)   # the static figure; the controls below redraw it in a live notebook
widgets.interact(explore, schedule=widgets.Dropdown(options=list(schedules), value="linear"),
                 t=widgets.IntSlider(value=200, min=0, max=NUM_TRAIN_TIMESTEPS - 1, step=10,
                                     continuous_update=False));

# %% [markdown]
# We keep the **linear** schedule for the digits (as in the DDPM paper).
#
# ## 3. The objective: predict the noise
#
# Reversing the chain needs $q(x_{t-1} \mid x_t)$, which depends on the whole data distribution. But
# *given* $x_0$ the reverse step is a Gaussian with a closed form (DDPM eq. 7):
#
# $$q(x_{t-1} \mid x_t, x_0) = \mathcal N\big(\tilde\mu_t(x_t, x_0),\, \tilde\beta_t I\big),\quad
# \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1 - \bar\alpha_t}\, x_0 + \frac{\sqrt{\alpha_t}\,(1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t}\, x_t,\quad
# \tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}\,\beta_t.$$
#
# So a network only has to guess $x_0$ from $x_t$, or, equivalently (substitute
# $x_0 = (x_t - \sqrt{1 - \bar\alpha_t}\,\varepsilon)/\sqrt{\bar\alpha_t}$), the noise $\varepsilon$ that was
# added. Ho et al. found that predicting $\varepsilon$ with a plain mean-squared error works best:
#
# $$L_\text{simple} = \mathbb E_{x_0,\, \varepsilon \sim \mathcal N(0, I),\, t \sim \mathcal U\{1..T\}}
# \left\lVert \varepsilon - \varepsilon_\theta\big(\sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\,\varepsilon,\; t\big) \right\rVert^2.$$
#
# One training step = pick images, pick a random timestep for each, noise them in one jump, ask the
# network which noise it was. No chain is ever simulated during training.
#
# ## 4. The network
#
# $\varepsilon_\theta(x_t, t)$ is a UNet: convolutional ResBlocks at two resolutions (16 x 16 and 8 x 8)
# with skip connections, and the timestep fed in as a sinusoidal embedding added inside every ResBlock.
# `course_lib.unet.UNet` is Stable Diffusion's denoiser in miniature, so it expects a text condition
# (`encoder_hidden_states`, read by cross-attention in its middle block). Our DDPM is unconditional: we
# pass a constant, all-zero context of one token. The attention's `to_k`/`to_v` have no bias, so zero
# tokens give zero keys and values, and the cross-attention only adds a learned constant: the model
# ignores the "prompt". (A later lecture feeds real text embeddings.)

# %%
config = UNetConfig(in_channels=1, out_channels=1, block_channels=(32, 64), layers_per_block=1,
                    attention_levels=(), num_heads=4, context_dim=8, norm_groups=8)
torch.manual_seed(SEED)
unet = UNet(config)
print(f"UNet parameters: {unet.num_parameters():,}")

def null_context(batch_size):
    """The constant condition of an unconditional model: one all-zero token per image."""
    return torch.zeros(batch_size, 1, config.context_dim)

with torch.no_grad():
    print("eps_theta(x_t, t, c):", tuple(unet(images[:4], torch.tensor([10, 200, 500, 999]), null_context(4)).shape))


# %% [markdown]
# ## 5. Training
#
# The training step, exactly $L_\text{simple}$, runs inside `course_lib.train.train_loop` (progress bar,
# gradient clipping, learning-rate schedule). We also keep an exponential moving average (EMA) of the
# weights, as every diffusion model does: the averaged weights give visibly cleaner samples than the
# last, noisy iterate.

# %%
def step_fn(step, generator):
    x0 = images[torch.randint(0, len(images), (BATCH_SIZE,), generator=generator)]    # (B, 1, 16, 16)
    noise = torch.randn(x0.shape, generator=generator)                                 # eps
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (BATCH_SIZE,), generator=generator)     # one t per image
    x_t = scheduler.add_noise(x0, noise, t)                                            # q(x_t | x_0)
    return F.mse_loss(unet(x_t, t, null_context(BATCH_SIZE)), noise)                   # L_simple

optimizer = torch.optim.AdamW(unet.parameters(), lr=LEARNING_RATE)
lr_scheduler = cosine_schedule_with_warmup(optimizer, warmup_steps=min(100, TRAIN_STEPS // 10),
                                           total_steps=TRAIN_STEPS)
ema = EMA(unet, decay=0.995)
history = train_loop(step_fn, TRAIN_STEPS, modules={"unet": unet}, optimizer=optimizer,
                     lr_scheduler=lr_scheduler, ema=ema, max_grad_norm=1.0,
                     generator=torch.Generator().manual_seed(SEED), desc="DDPM on digits")
unet.eval()
fig = plot_losses(history.losses, title="L_simple during training")


# %% [markdown]
# The loss drops fast and then creeps down slowly, with a lot of noise: each batch draws different
# timesteps, and the difficulty depends strongly on $t$. Measure it per timestep on held-out digits:

# %%
@torch.no_grad()
def loss_at(t, x0, generator):
    noise = torch.randn(x0.shape, generator=generator)
    t_batch = torch.full((len(x0),), t)
    return F.mse_loss(unet(scheduler.add_noise(x0, noise, t_batch), t_batch, null_context(len(x0))), noise).item()

eval_t = torch.linspace(0, NUM_TRAIN_TIMESTEPS - 1, 12 if FAST else 25).long().tolist()
with ema.average_parameters():
    per_t = [loss_at(t, test_images[:128], torch.Generator().manual_seed(SEED)) for t in eval_t]
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(eval_t, per_t, "o-")
ax.set(xlabel="timestep t", ylabel="MSE of eps prediction", yscale="log", title="held-out loss per timestep")
ax.grid(alpha=0.3)
plt.show()


# %% [markdown]
# The curve falls by more than two orders of magnitude from $t = 0$ to $t$ near 1000. At small $t$ the
# noise is a faint film over a clean digit: telling it apart from the digit's own detail is hard, and the
# $\varepsilon$-loss is high. At large $t$ the input is almost pure noise, so "the noise is the input" is
# nearly right and the $\varepsilon$-loss is tiny. Measured on the *image* instead, the picture flips: since
# $\hat x_0 - x_0 = -\sqrt{(1-\bar\alpha_t)/\bar\alpha_t}\,(\hat\varepsilon - \varepsilon)$, the squared error
# on $\hat x_0$ is the $\varepsilon$-error divided by $\mathrm{SNR}(t) = \bar\alpha_t/(1-\bar\alpha_t)$, which is
# huge at small $t$ and tiny near $t = 1000$. So the low-noise timesteps are *easy* in image terms (the digit
# is barely touched) and *high-loss* in noise terms; both statements describe the same model (question 4, and
# lecture 6's min-SNR weighting, build on this). A low training loss therefore says little about sample
# quality: only sampling does.
#
# ## 6. The reverse step (Algorithm 2)
#
# Sampling starts from $x_T \sim \mathcal N(0, I)$ and applies, for $t = T, \dots, 1$,
#
# $$x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\left(x_t - \frac{\beta_t}{\sqrt{1 - \bar\alpha_t}}\,\varepsilon_\theta(x_t, t)\right) + \sigma_t z,
# \qquad z \sim \mathcal N(0, I) \text{ if } t > 1 \text{, else } z = 0,$$
#
# with $\sigma_t^2 = \tilde\beta_t$ (or $\beta_t$; both work). The first term is $\tilde\mu_t(x_t, \hat x_0)$
# with the network's guess $\hat x_0$ plugged in. Written out by hand, then compared with
# `DDPMScheduler.step` on the same input and the same fresh noise:

# %%
def ddpm_reverse_step(eps, t, x_t, z):
    """DDPM Algorithm 2, one step; t counts from 0 (so abar[t - 1] is the previous step, 1 before t = 0)."""
    alpha_t, abar_t = 1 - betas[t], abar[t]
    abar_prev = abar[t - 1] if t > 0 else torch.tensor(1.0)
    mean = (x_t - betas[t] / (1 - abar_t).sqrt() * eps) / alpha_t.sqrt()
    sigma = ((1 - abar_prev) / (1 - abar_t) * betas[t]).sqrt()       # sqrt(beta~_t), "fixed_small"
    return mean + sigma * z if t > 0 else mean

reference = DDPMScheduler(NUM_TRAIN_TIMESTEPS, beta_schedule="linear", clip_sample=False)
gen = torch.Generator().manual_seed(SEED)
x_t, z = torch.randn(2, 4, 1, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
for t in (999, 500, 10, 0):
    with torch.no_grad():
        eps = unet(x_t, t, null_context(4))
    ours = ddpm_reverse_step(eps, t, x_t, z)
    theirs = reference.step(eps, t, x_t, variance_noise=z).prev_sample
    print(f"t={t:3d}: max |hand-written - DDPMScheduler.step| = {(ours - theirs).abs().max():.1e}")


# %% [markdown]
# Same step, up to float32 rounding: the two formulas are equal on paper but divide by different small
# numbers (near $t = 0$, $1 - \bar\alpha_t \approx 10^{-3}$ magnifies the rounding). (`clip_sample=False` for the comparison: by default the scheduler, like diffusers', clips its
# estimate $\hat x_0$ to $[-1, 1]$ before forming the mean, a cheap and useful guard for pixel data.)
#
# ## 7. Sampling, and watching $\hat x_0$
#
# The sampling loop is five lines. At every step `step` also returns `pred_original_sample`, the model's
# current guess $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon_\theta)/\sqrt{\bar\alpha_t}$. We keep
# both at a few moments of the run.

# %%
def sample(num_samples, num_steps, seed, record=8):
    scheduler.set_timesteps(num_steps)
    keep = set(torch.linspace(0, num_steps - 1, record).round().long().tolist())
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)   # x_T
    trajectory, predictions, recorded_t = [], [], []
    with torch.no_grad(), ema.average_parameters():
        for i, t in enumerate(scheduler.timesteps):
            eps = unet(x, t, null_context(num_samples))
            out = scheduler.step(eps, t, x, generator=generator)
            x = out.prev_sample
            if i in keep:
                trajectory.append(x); predictions.append(out.pred_original_sample); recorded_t.append(int(t))
    return x, trajectory, predictions, recorded_t

samples, trajectory, predictions, recorded_t = sample(NUM_SAMPLES, SAMPLING_STEPS, seed=SEED)
fig = plot_trajectory(trajectory, recorded_t, max_images=4)
fig.suptitle("x_t along the reverse chain", y=1.02)
plt.show()
fig = plot_trajectory(predictions, recorded_t, max_images=4)
fig.suptitle("the model's guess of x_0 at the same steps", y=1.02)
plt.show()

# %% [markdown]
# Read the two figures column by column. At the very first step $\hat x_0$ is junk: it divides by
# $\sqrt{\bar\alpha_T} \approx 0.006$, which magnifies every error 160-fold (the clip to $[-1, 1]$ then
# saturates it). A few hundred steps later, while $x_t$ still looks like pure noise, $\hat x_0$ is a blurry
# blob in the middle: the model guesses the *average* of all digits compatible with what it sees. Around
# the middle of the chain it commits to one digit, and the remaining steps only sharpen it: **coarse
# structure is decided first, fine detail last**, a pattern you will meet again in SD (and exploit in
# img2img, which starts part-way down the chain).
#
# Samples next to real digits:

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 1.5 + 0.7 * math.ceil(NUM_SAMPLES / 8)))
for ax, batch, title in ((axes[0], samples, f"DDPM samples ({SAMPLING_STEPS} steps)"),
                         (axes[1], test_images[:NUM_SAMPLES], "real digits (held out)")):
    ax.imshow(image_grid(batch, nrow=8))          # uint8 (H, W, 3), white lines between the digits
    ax.set_title(title); ax.set_axis_off()
fig.tight_layout()
plt.show()

# %% [markdown]
# With `scheduler.set_timesteps(n)` the same scheduler takes bigger jumps ($t \to t'$, using the
# $\bar\alpha$ of the jump instead of one step). DDPM's ancestral sampling was designed for the full chain;
# with 100 and then 20 steps the digits get smoother and lose detail, and some stop looking like digits.
# The DDIM sampler, coming next, is built for few steps.

# %%
few = [(n, sample(8, n, seed=SEED + 1, record=2)[0]) for n in ([100, 20] if not FAST else [10, 5])]
fig = show_images(torch.cat([s for _, s in few]), ncols=8,
                  titles=[f"{n} steps" for n, s in few for _ in range(len(s))], figsize=(10, 2.8))

# %% [markdown]
# ## Summary
#
# - Forward process: $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$, one jump from
#   $x_0$; the schedule $\beta_t$ fixes the curve $\bar\alpha_t$ (linear, scaled-linear for SD, cosine).
# - Training: noise an image to a random $t$, regress the noise: $\lVert \varepsilon - \varepsilon_\theta(x_t, t)\rVert^2$.
# - Sampling: start from $\mathcal N(0, I)$ and apply Algorithm 2 $T$ times; each step forms $\hat x_0$, the
#   posterior mean $\tilde\mu_t(x_t, \hat x_0)$ and adds $\sigma_t z$.
# - The model decides the coarse layout at high noise and the details at low noise.
#
# ## Check your understanding
#
# 1. With the linear schedule, $\bar\alpha_{999} \approx 4 \times 10^{-5}$. Write $x_{999}$ in terms of
#    $x_0$ and $\varepsilon$. How much of the digit is left, in standard deviations of the noise?
# 2. Why can training use a *random* timestep for each image, instead of running the chain from $t = 0$?
#    Which formula makes that possible?
# 3. In Algorithm 2 no noise is added on the last step ($z = 0$ for $t = 1$). What would a last
#    $\sigma_1 z$ do to the final image?
# 4. The held-out loss is highest at small $t$. Does that mean the model produces bad fine details, and
#    would you weight those timesteps more during training? (Hint: look at how the loss of
#    $\varepsilon$ translates into an error on $\hat x_0$.)
#
# <details><summary>Answers (try first)</summary>
#
# 1. $x_{999} = 0.0064\, x_0 + 0.99998\, \varepsilon$: the digit is there at about 0.6% of the noise's
#    standard deviation, invisible (and not exactly zero: see section 2).
# 2. Because $q(x_t \mid x_0)$ has a closed form: $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$.
# 3. It would put fresh noise of standard deviation $\sigma_1$ on the result: a slightly grainy image.
#    $\hat x_0$ is the best guess at that point; noising it helps nothing.
# 4. Not necessarily. $\hat x_0 - x_0 = -\sqrt{(1-\bar\alpha_t)/\bar\alpha_t}\,(\hat\varepsilon - \varepsilon)$: at small
#    $t$ the factor is tiny, so a large $\varepsilon$ error is a small image error. The loss weighting
#    across $t$ is a real design choice: min-SNR weighting (lecture 6) and v-prediction (lecture 12).
# </details>

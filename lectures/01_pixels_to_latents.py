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
# # Lecture 1 — From pixels to latents: the autoencoder behind Stable Diffusion
#
# Stable Diffusion is a *latent* diffusion model: it never denoises pixels. A variational autoencoder
# (VAE) first compresses every image into a small latent image, the diffusion model learns and samples
# in that space, and the VAE's decoder turns its samples back into pixels. This lecture builds and trains
# that VAE, in miniature, on the course's toy world of coloured shapes.
#
# **What you will learn**
# - why diffusion in pixel space is expensive, in numbers (512 x 512 x 3 vs 64 x 64 x 4: 48x);
# - autoencoder vs VAE, the evidence lower bound (ELBO), the reparameterisation trick, the KL term in
#   closed form;
# - the $\beta$ trade-off between sharp reconstructions and a well-behaved latent space (we train three);
# - that Stable Diffusion's posterior is **convolutional**: a latent *image* with a mean and a variance
#   per position, not one vector from an MLP;
# - latent interpolation, latent channels as images, and the latent **scale factor** (SD's 0.18215).
#
# **Prerequisites:** PyTorch basics (modules, optimisers, autograd), the normal distribution, $\log$
# and $\exp$. No diffusion knowledge yet.
#
# **Time:** about 5 minutes on a laptop CPU (most of it training three small VAEs), about 1 minute on a
# Colab GPU. `FAST = True` runs everything in well under a minute with barely trained models.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/2026-fall/lectures/01_pixels_to_latents.ipynb)

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
FAST = False            # True in CI: tiny data and a few training steps
SEED = 0
IMAGE_SIZE = 32         # shapes-world images, 3 x 32 x 32
NUM_IMAGES = 4096       # training images (rendered on the fly, no download)
BATCH_SIZE = 64
LEARNING_RATE = 2e-3
BETAS = (1e-5, 1e-3, 1e-1)   # KL weights for the beta sweep; the middle one is the VAE we keep
SWEEP_STEPS = 200       # training steps per beta in the sweep
MAIN_STEPS = 800        # total steps for the VAE we keep (the sweep's middle beta, trained on)
SCALE_IMAGES = 1024     # images encoded to measure the latent scale factor

# %%
if FAST:  # same lesson, barely trained models
    NUM_IMAGES, BATCH_SIZE, SWEEP_STEPS, MAIN_STEPS, SCALE_IMAGES = 128, 8, 4, 8, 64
KEEP_BETA = BETAS[len(BETAS) // 2]

# %%
# %matplotlib inline
import json
import math
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.colors import BoundaryNorm

from course_lib.data import shapes_batch, render_shape
from course_lib.train import train_loop, cosine_schedule_with_warmup
from course_lib.vae import VAE, VAEConfig, DiagonalGaussian, estimate_scale_factor, kl_divergence, vae_loss
from course_lib.viz import image_grid, plot_losses, show_images

torch.manual_seed(SEED)
if FAST:
    torch.set_num_threads(1)  # CI shares a busy machine: threads waiting on each other cost more than they save
OUTPUTS = Path("outputs")   # next to this notebook (git-ignored)

# %% [markdown]
# ## 1. Why not diffuse the pixels?
#
# A diffusion model runs its network once per denoising step: tens of times per generated image, and
# millions of times during training. Its cost grows with the number of numbers it processes, and the
# self-attention inside grows with the *square* of the number of positions. Count for a 512 x 512 RGB
# image and for Stable Diffusion's latent of it (downsampling factor $f = 8$, $c = 4$ channels):

# %%
pixels = 512 * 512 * 3          # H x W x RGB
latents = 64 * 64 * 4           # (H/8) x (W/8) x 4 channels
print(f"pixel space : {pixels:>9,} numbers")
print(f"latent space: {latents:>9,} numbers   -> {pixels / latents:.0f}x fewer")
print(f"self-attention over positions: {(512 * 512) ** 2 / (64 * 64) ** 2:,.0f}x fewer weights in latent space")

# %% [markdown]
# 48 times fewer numbers, 4096 times smaller attention matrices. The bet of latent diffusion (Rombach et
# al. 2022) is that little is lost: most of the bits of an image are imperceptible high-frequency detail.
# An autoencoder learns once to strip that detail off and put it back (*perceptual compression*), and the
# expensive diffusion model spends its capacity on what the image shows (*semantic compression*).
#
# Our toy version: 3 x 32 x 32 images of one coloured shape, compressed to 4 x 8 x 8 latents ($f = 4$).

# %%
data = shapes_batch(NUM_IMAGES, seed=SEED, image_size=IMAGE_SIZE)
images = data["image"]                                  # (N, 3, 32, 32) in [-1, 1]
test = shapes_batch(16, seed=SEED + 1, image_size=IMAGE_SIZE)   # held-out images (another seed)
test_images = test["image"]
print("training images:", tuple(images.shape), f"{images.min():.0f}..{images.max():.0f}")
print(f"toy compression: {3 * 32 * 32:,} -> {4 * 8 * 8} numbers = {3 * 32 * 32 / (4 * 8 * 8):.0f}x")
fig = show_images(test_images[:8], titles=test["caption"][:8])

# %% [markdown]
# ## 2. Autoencoder vs variational autoencoder
#
# A plain **autoencoder** has an encoder $z = E(x)$ and a decoder $\hat x = D(z)$, trained to make
# $\hat x \approx x$. It compresses well, but nothing shapes its latent space: codes of different images
# may sit far apart with holes in between, their scale is arbitrary, and a $z$ that no image was
# encoded to can decode to garbage. The diffusion model will *generate* latents and hand them to $D$,
# so we need a latent space that is smooth, filled and of a known scale.
#
# A **VAE** (Kingma & Welling 2014) makes the encoder output a *distribution*
# $q_\phi(z \mid x) = \mathcal N\big(\mu_\phi(x), \operatorname{diag} \sigma^2_\phi(x)\big)$, decodes a
# sample of it with $p_\theta(x \mid z)$, and pulls every $q_\phi(z \mid x)$ towards the prior
# $p(z) = \mathcal N(0, I)$. Both terms come out of one bound on the log-likelihood, the **ELBO**:
#
# $$\log p_\theta(x) \;\ge\; \underbrace{\mathbb E_{z \sim q_\phi(z|x)}\big[\log p_\theta(x \mid z)\big]}_{\text{reconstruction}}
# \;-\; \underbrace{\mathrm{KL}\big(q_\phi(z \mid x)\,\|\,p(z)\big)}_{\text{regulariser}}.$$
#
# (Why: $\log p(x) = \text{ELBO} + \mathrm{KL}\big(q(z|x) \,\|\, p(z|x)\big)$ and a KL is never negative.)
# With a Gaussian decoder $p_\theta(x \mid z) = \mathcal N(\hat x, \sigma_x^2 I)$ the first term is
# $-\lVert x - \hat x \rVert^2 / (2\sigma_x^2)$ plus a constant, so the loss we minimise is
#
# $$\mathcal L = \lVert x - \hat x \rVert^2 + \beta\, \mathrm{KL}\big(q_\phi(z \mid x)\,\|\,\mathcal N(0, I)\big),$$
#
# where $\beta$ absorbs $\sigma_x$: it says how much we trust the pixels versus the prior. That is
# `course_lib.vae.vae_loss` (sum over the pixels of one image, mean over the batch).
#
# ## 3. The reparameterisation trick
#
# The reconstruction term needs a sample $z \sim q_\phi(z \mid x)$, and we need gradients with respect
# to $\mu$ and $\sigma$ *through* that sample. Sampling is not differentiable, but rewriting it is:
#
# $$z = \mu + \sigma \odot \varepsilon, \qquad \varepsilon \sim \mathcal N(0, I).$$
#
# The randomness now sits in $\varepsilon$, which does not depend on the parameters; $z$ is a plain
# differentiable function of $\mu$ and $\sigma$. `DiagonalGaussian.sample` does exactly this.

# %%
mean = torch.tensor([0.5, -1.0], requires_grad=True)
logvar = torch.tensor([0.0, -2.0], requires_grad=True)      # log sigma^2
g = torch.Generator().manual_seed(SEED)

z = DiagonalGaussian(mean, logvar).sample(generator=g)     # mean + exp(logvar / 2) * eps
print("reparameterised z:", z, "<- has a grad_fn")
print("torch.distributions .sample(): ", torch.distributions.Normal(mean, (0.5 * logvar).exp()).sample(),
      "<- no grad_fn: gradients stop here (rsample() is torch's reparameterised version)")

# Monte Carlo check: d/d mean E[z^2] = 2 mean and d/d logvar E[z^2] = sigma^2 (since E[z^2] = mean^2 + sigma^2)
many = DiagonalGaussian(mean.expand(100_000, 2), logvar.expand(100_000, 2)).sample(generator=g)
many.pow(2).mean(dim=0).sum().backward()
print("gradient wrt mean  :", mean.grad, " exact:", 2 * mean.detach())
print("gradient wrt logvar:", logvar.grad, " exact:", logvar.detach().exp())

# %% [markdown]
# ## 4. The KL term in closed form
#
# For one latent number with $q = \mathcal N(\mu, \sigma^2)$ and $p = \mathcal N(0, 1)$,
#
# $$\mathrm{KL}(q \,\|\, p) = \tfrac12\left(\mu^2 + \sigma^2 - 1 - \log \sigma^2\right),$$
#
# and a diagonal Gaussian sums this over its latent numbers. It is zero exactly at $\mu = 0, \sigma = 1$:
# it pulls the means to the origin and the variances to 1, i.e. it *fills* the latent space with noise
# of a known scale and stops the encoder from hiding information in tiny variances. Check it against a
# Monte Carlo estimate $\mathbb E_q[\log q(z) - \log p(z)]$ and against `torch.distributions`:

# %%
mu, lv = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[0.0, -2.0, 1.0]])
q = torch.distributions.Normal(mu, (0.5 * lv).exp())
p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
samples = q.sample((200_000,))
monte_carlo = (q.log_prob(samples) - p.log_prob(samples)).sum(-1).mean()
print(f"closed form (course_lib) : {kl_divergence(mu, lv).item():.4f}")
print(f"torch.distributions      : {torch.distributions.kl_divergence(q, p).sum().item():.4f}")
print(f"Monte Carlo (200k draws) : {monte_carlo.item():.4f}")

m, s = torch.meshgrid(torch.linspace(-3, 3, 121), torch.linspace(-3, 2, 101), indexing="xy")
fig, ax = plt.subplots(figsize=(4.6, 3.4))
kl_map = kl_divergence(m.flatten(), 2 * s.flatten()).reshape(m.shape)   # 1-D input: one KL per number
levels = [0, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32]
cs = ax.contourf(m, s, kl_map, levels=levels, cmap="viridis", extend="max",
                 norm=BoundaryNorm(levels, ncolors=256, extend="max"))   # one colour per band
ax.plot(0, 0, "w*", ms=12)
ax.set(xlabel=r"$\mu$", ylabel=r"$\log\sigma$", title="KL to N(0, 1) of one latent number")
fig.colorbar(cs, ax=ax)
plt.show()

# %% [markdown]
# ## 5. Stable Diffusion's VAE is convolutional
#
# A common picture of a VAE, from MNIST tutorials: flatten the image, an MLP produces one vector $\mu$
# (say 32 numbers) and one $\log\sigma^2$. **That is not what Stable Diffusion uses.** Its encoder is a
# fully convolutional network whose last layer outputs $2c = 8$ channels on a $64 \times 64$ grid: a mean
# and a log-variance for *every channel at every position*. The latent is an *image*: position $(i, j)$
# describes the $8 \times 8$ pixel patch around it, the same network encodes any image size, and the
# diffusion UNet can be a convolutional network over it. An MLP would not even fit: one dense layer from
# 786,432 pixels to 16,384 latents alone would hold 12.9 billion weights.
#
# `course_lib.vae.VAE` follows SD's `AutoencoderKL` layout in miniature:

# %%
config = VAEConfig.shapes()
print(config)
print(f"downsampling factor f = {config.downsample_factor}; parameters: {VAE(config).num_parameters():,}")

vae = VAE(config)
posterior = vae.encode(test_images[:2])                 # q(z|x): a DiagonalGaussian
print("posterior mean  :", tuple(posterior.mean.shape), " <- (B, c, H/f, W/f): a latent image")
print("posterior logvar:", tuple(posterior.logvar.shape))
print("decoded         :", tuple(vae.decode(posterior.sample()).shape))
print(f"an MLP from 3x512x512 to 4x64x64: {pixels * latents / 1e9:.1f} billion weights in one layer")


# %% [markdown]
# ## 6. The $\beta$ trade-off
#
# We train the same architecture with three KL weights $\beta$ and the same data, seed and number of
# steps, using the course's training loop `course_lib.train.train_loop` (progress bar, gradient
# clipping). `step_fn` is the whole training step: draw a batch, encode, sample, decode, loss.

# %%
def make_step_fn(vae, beta, log):
    """One VAE training step: the loss on a random batch; records the two terms in ``log``."""
    def step_fn(step, generator):
        x = images[torch.randint(0, len(images), (BATCH_SIZE,), generator=generator)]
        out = vae(x, generator=generator)                  # encode, z ~ q(z|x), decode
        loss = vae_loss(out.sample, x, out.posterior, beta=beta)
        log["reconstruction"].append(loss.reconstruction.item())
        log["KL"].append(loss.kl.item())
        return loss.loss
    return step_fn

runs = {}
for beta in BETAS:
    torch.manual_seed(SEED)                                # same initial weights for every beta
    model = VAE(VAEConfig.shapes())
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    log = {"reconstruction": [], "KL": []}
    train_loop(make_step_fn(model, beta, log), SWEEP_STEPS, modules={"vae": model}, optimizer=optimizer,
               generator=torch.Generator().manual_seed(SEED), max_grad_norm=1.0, desc=f"beta={beta:g}")
    runs[beta] = {"vae": model, "optimizer": optimizer, "log": log}


# %% [markdown]
# Now compare them on held-out images: the reconstruction error and KL per image, the spread of the
# latents, the reconstructions, and what each decoder makes of random latents drawn from the prior
# $\mathcal N(0, I)$ that the KL term pulls the posteriors towards.

# %%
@torch.no_grad()
def evaluate(vae, generator):
    vae.eval()
    out = vae(test_images, sample_posterior=False)                   # decode the posterior means
    loss = vae_loss(out.sample, test_images, out.posterior)
    s = estimate_scale_factor(vae, images[:SCALE_IMAGES], generator=generator)
    prior = torch.randn(8, *out.posterior.mean.shape[1:], generator=generator)   # z ~ N(0, I)
    vae.train()
    return {"reconstruction": loss.reconstruction.item(), "KL": loss.kl.item(), "latent std": 1 / s,
            "recon": out.sample[:8], "prior": vae.decode(prior)}

results = {beta: evaluate(run["vae"], torch.Generator().manual_seed(SEED)) for beta, run in runs.items()}
print(f"{'beta':>8} {'SSE / image':>12} {'KL / image':>11} {'latent std':>11}")
for beta, r in results.items():
    print(f"{beta:>8g} {r['reconstruction']:>12.1f} {r['KL']:>11.1f} {r['latent std']:>11.2f}")

rows = [test_images[:8]] + [results[b]["recon"] for b in BETAS] + [results[b]["prior"] for b in BETAS]
labels = (["original"] + [f"reconstruction, beta={b:g}" for b in BETAS]
          + [f"decode z ~ N(0, I), beta={b:g}" for b in BETAS])
grid = image_grid(torch.cat(rows).clamp(-1, 1), nrow=8)             # (rows * 34 + 2, 8 * 34 + 2, 3)
fig, ax = plt.subplots(figsize=(9, 1.05 * len(rows)))
ax.imshow(grid)
ax.set_yticks([2 + 34 * i + 16 for i in range(len(rows))], labels, fontsize=9)
ax.set_xticks([])
for spine in ax.spines.values():
    spine.set_visible(False)
plt.show()

# %% [markdown]
# Read the figure top to bottom:
#
# - **small $\beta$** behaves almost like a plain autoencoder: the sharpest reconstructions, the largest
#   KL, latents spread wider than $\mathcal N(0, I)$. Random prior samples decode to a busy texture of
#   shape fragments.
# - **large $\beta$** pays for a small KL with blurry reconstructions and wrong colours: the KL budget is
#   too small to store the colour precisely. Its prior samples are sparse blobs on black, closer to the
#   look of the data, because the encoder had to use the prior's region of latent space.
# - **the middle $\beta$** is the compromise latent diffusion wants: reconstructions good enough to be the
#   final image, a latent space that the KL keeps near $\mathcal N(0, I)$.
#
# Note what *no* row shows: a random $z \sim \mathcal N(0, I)$ decoded into one clean shape. The prior
# treats the 256 latent numbers as independent, while the latents of real images are strongly
# correlated (one shape, one colour, one place). Learning that joint distribution is the diffusion
# model's job, not the VAE's. The KL only has to keep the latent space smooth and of a known scale, which
# is why Stable Diffusion uses a tiny $\beta \approx 10^{-6}$ (plus perceptual and adversarial losses
# for sharpness; reported in Rombach et al. 2022 and the `kl_weight: 0.000001` of their autoencoder configs,
# not trained here).
#
# ## 7. Train the VAE we keep
#
# We keep the middle $\beta$ and train it on, with a cosine learning-rate decay, to `MAIN_STEPS` in total.

# %%
run = runs[KEEP_BETA]
vae, optimizer, log = run["vae"], run["optimizer"], run["log"]
extra_steps = MAIN_STEPS - SWEEP_STEPS
lr_scheduler = cosine_schedule_with_warmup(optimizer, warmup_steps=0, total_steps=extra_steps)
train_loop(make_step_fn(vae, KEEP_BETA, log), extra_steps, modules={"vae": vae}, optimizer=optimizer,
           lr_scheduler=lr_scheduler, generator=torch.Generator().manual_seed(SEED + 1), max_grad_norm=1.0,
           desc=f"VAE beta={KEEP_BETA:g}")
vae.eval()

fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
plot_losses(log["reconstruction"], ax=axes[0], title="reconstruction (SSE per image)")
plot_losses(log["KL"], ax=axes[1], title="KL per image")
for ax in axes:
    ax.legend(handles=[ax.axvline(SWEEP_STEPS, color="grey", ls=":", label="end of the sweep")])
plt.show()

with torch.no_grad():
    reconstructions = vae(test_images, sample_posterior=False).sample
fig = show_images(torch.cat([test_images[:8], reconstructions[:8].clamp(-1, 1)]), ncols=8,
                  titles=["original"] * 8 + ["reconstruction"] * 8)

# %% [markdown]
# ## 8. Looking inside the latent
#
# The latent of one image is a $4 \times 8 \times 8$ tensor: four 8 x 8 "images". Plot each channel of
# the posterior mean next to the picture it encodes (blue negative, red positive):

# %%
with torch.no_grad():
    means = vae.encode(test_images[:4]).mean            # (4, c, 8, 8)
limit = means.abs().max().item()
fig, axes = plt.subplots(4, 1 + means.shape[1], figsize=(8, 7.5))
for i in range(4):
    axes[i, 0].imshow(((test_images[i].permute(1, 2, 0) + 1) / 2).numpy())
    for c in range(means.shape[1]):
        axes[i, 1 + c].imshow(means[i, c], cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[0, 1 + c].set_title(f"channel {c}")
axes[0, 0].set_title("image")
for ax in axes.flat:
    ax.set_xticks([]); ax.set_yticks([])
fig.tight_layout()
plt.show()

# %% [markdown]
# The shape is visible in the channels at the right place: the latent is a small, strangely coloured
# image, not a code book. That is why SD's latents can be inpainted, cropped and upscaled, and why the
# UNet that denoises them is convolutional.
#
# Locality, tested: add a small green square in the top-left corner of an image and see which latent
# positions change.

# %%
base = test_images[3]
patch = render_shape("square", "green", 5, (4, 4), IMAGE_SIZE)           # a small square, top left
edited = torch.maximum(base, patch)
with torch.no_grad():
    change = (vae.encode(edited[None]).mean - vae.encode(base[None]).mean).abs().sum(dim=1)[0]  # (8, 8)
fig, axes = plt.subplots(1, 3, figsize=(8, 2.8))
for ax, img, title in ((axes[0], base, "image"), (axes[1], edited, "edited (top left)")):
    ax.imshow(((img.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()); ax.set_title(title)
im = axes[2].imshow(change, cmap="magma"); axes[2].set_title("|change| of the latent mean")
fig.colorbar(im, ax=axes[2], fraction=0.046)
for ax in axes:
    ax.set_xticks([]); ax.set_yticks([])
fig.tight_layout()
plt.show()

# %% [markdown]
# The change is concentrated in the top-left latent positions. (It is not *exactly* zero elsewhere: the
# encoder's middle block has one self-attention layer, as in SD, which lets every position see every
# other.)
#
# ### Latent interpolation
#
# Walk in a straight line from the latent of one image to the latent of another and decode every point.
# Compare with fading the pixels:

# %%
with torch.no_grad():
    z_a, z_b = vae.encode(test_images[[0, 5]]).mean         # (c, 8, 8) each

def interpolate(alpha):
    with torch.no_grad():
        decoded = vae.decode(((1 - alpha) * z_a + alpha * z_b)[None])[0]
    return decoded.clamp(-1, 1), (1 - alpha) * test_images[0] + alpha * test_images[5]

alphas = torch.linspace(0, 1, 8)
latent_row, pixel_row = zip(*(interpolate(a.item()) for a in alphas))
fig = show_images(torch.stack(list(latent_row) + list(pixel_row)), ncols=8,
                  titles=[f"latent, a={a:.2f}" for a in alphas] + [f"pixels, a={a:.2f}" for a in alphas])


# %% [markdown]
# Pixel fading superimposes two faint pictures. Latent interpolation gives one object that moves, morphs
# and changes colour. The in-between images are not all clean shapes, and the colour may take a detour
# (through blue or red, say): the latent space is smooth, but nothing forces a straight line in it to
# stay on the data, nor orders colours the way RGB does. (For *noise* latents, as in SD's
# sampling, one uses spherical interpolation instead, because Gaussian vectors live near a sphere.)
# Drag the slider in a live notebook:

# %%
def show_interpolation(alpha=0.5):
    latent, pixel = interpolate(alpha)
    fig = show_images(torch.stack([test_images[0], latent, pixel, test_images[5]]), ncols=4,
                      titles=["start", f"latent mix a={alpha:.2f}", f"pixel mix a={alpha:.2f}", "end"])
    plt.show()

show_interpolation(0.5)   # the static figure; the slider below redraws it in a live notebook
widgets.interact(show_interpolation, alpha=widgets.FloatSlider(value=0.5, min=0, max=1, step=0.05));


# %% [markdown]
# ## 9. The latent scale factor
#
# The diffusion model of lecture 3 mixes its input with unit-variance noise,
# $x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \varepsilon$, and its noise schedule is
# designed for data of roughly unit variance. Latents have whatever spread the KL term allowed, so latent
# diffusion multiplies them by one number $s = 1 / \operatorname{std}(z)$, measured once on a sample of
# encoded training images (Rombach et al. 2022, appendix). For SD's VAE $\operatorname{std}(z) \approx
# 5.49$, hence the famous constant $s = 0.18215$: diffusers' pipelines encode with
# `latents = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor` and decode with
# `vae.decode(latents / vae.config.scaling_factor)`.

# %%
def latent_values(vae):
    """Samples z ~ q(z|x) for the first SCALE_IMAGES training images, flattened."""
    with torch.no_grad():
        return torch.cat([vae.encode(b).sample(generator=torch.Generator().manual_seed(i))
                          for i, b in enumerate(images[:SCALE_IMAGES].split(256))]).flatten()

scale_factor = estimate_scale_factor(vae, images[:SCALE_IMAGES], generator=torch.Generator().manual_seed(SEED))
z = latent_values(vae)
print(f"kept VAE (beta={KEEP_BETA:g}): std(z) = {z.std():.3f}  ->  scale factor s = {scale_factor:.4f}"
      f"   (Stable Diffusion: 0.18215)")

grid = torch.linspace(-5, 5, 200)
fig, axes = plt.subplots(1, 2, figsize=(11, 3), sharey=True)
for ax, beta in zip(axes, (KEEP_BETA, BETAS[0])):
    values = latent_values(runs[beta]["vae"])
    s = 1 / values.std()
    ax.hist(values.numpy(), bins=100, density=True, alpha=0.5, range=(-5, 5), label="z")
    ax.hist((s * values).numpy(), bins=100, density=True, alpha=0.5, range=(-5, 5), label=f"s * z, s = {s:.2f}")
    ax.plot(grid, torch.exp(-grid ** 2 / 2) / math.sqrt(2 * math.pi), "k--", label="N(0, 1)")
    ax.set(title=f"beta = {beta:g}: std(z) = {values.std():.2f}", xlabel="latent value")
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

abar = 0.5   # a middle timestep: designed signal-to-noise ratio abar / (1 - abar) = 1
print(f"at abar_t = {abar}: SNR with scaled latents {abar * (scale_factor * z).var() / (1 - abar):.2f}, "
      f"with raw latents {abar * z.var() / (1 - abar):.2f}")

# %% [markdown]
# The stronger the KL, the closer $\operatorname{std}(z)$ is to 1: our kept VAE ($\beta = 10^{-3}$, a *large*
# $\beta$ by SD's standards) needs little rescaling, the sweep's $\beta = 10^{-5}$ VAE noticeably more, and
# SD's VAE ($\beta \approx 10^{-6}$) a factor 5.5 ($1/0.18215$; reported, not measured here). The scale factor does not make the latents Gaussian (the
# tall peak is the black background, which covers most of every image), only unit-scale:
# without it the signal-to-noise ratio at every timestep would be off by the factor $\operatorname{var}(z)$,
# and the schedule would spend its steps in the wrong place. Note that $s$ belongs to the VAE: a
# diffusion model trained on one VAE's scaled latents needs the same VAE and the same $s$.
#
# We save the VAE and its scale factor next to this notebook (`outputs/`, not tracked by git) so you can
# play with them later; the next lectures train their own models.

# %%
folder = vae.save_pretrained(OUTPUTS / "lecture01_vae")
(Path(folder) / "scale_factor.json").write_text(json.dumps({"scale_factor": scale_factor, "beta": KEEP_BETA}))
print("saved", sorted(p.name for p in Path(folder).iterdir()))

# %% [markdown]
# ## Summary
#
# - Latent diffusion runs the expensive model on a compressed image: 48x fewer numbers for SD at 512 px.
# - A VAE's encoder outputs $q(z \mid x) = \mathcal N(\mu, \sigma^2)$; training maximises the ELBO:
#   reconstruction minus $\beta \cdot \mathrm{KL}(q \,\|\, \mathcal N(0, I))$, with
#   $\mathrm{KL} = \frac12 \sum (\mu^2 + \sigma^2 - 1 - \log\sigma^2)$.
# - The reparameterisation $z = \mu + \sigma \varepsilon$ lets gradients flow through the sampling.
# - $\beta$ trades sharp reconstructions against a tame latent space; latent diffusion needs little KL.
# - SD's posterior is convolutional: a mean and variance for every channel at every position of a latent
#   *image*.
# - Diffusion runs on $s \cdot z$ with $s = 1/\operatorname{std}(z)$ (SD: 0.18215); divide by $s$ before
#   decoding.
#
# ## Check your understanding
#
# 1. SD-XL generates 1024 x 1024 images with the same $f = 8$, $c = 4$ VAE. How many latent numbers is
#    that, how many times fewer than the pixels, and by what factor does a self-attention matrix over all
#    latent positions grow compared with SD 1.5 at 512 px?
# 2. During training we decode a *sample* $z \sim q(z \mid x)$, yet for reconstructions we used the
#    mean. Why sample during training at all? What would happen to $\sigma$ if we always decoded the
#    mean and set $\beta = 0$?
# 3. Your VAE's latents have standard deviation 0.5 and you forget the scale factor. At the timestep where
#    $\bar\alpha_t = 0.5$, what is the real signal-to-noise ratio, and which timesteps of the schedule
#    become nearly useless?
# 4. A friend's VAE encoder ends with `nn.Flatten()` and `nn.Linear(..., 2 * 256)`. Name two things it
#    cannot do that SD's convolutional posterior can.
#
# <details><summary>Answers (try first)</summary>
#
# 1. $128 \times 128 \times 4 = 65{,}536$ numbers, again 48x fewer than $1024^2 \times 3$. Positions go
#    from 4096 to 16,384: the attention matrix grows 16x (which is why SD-XL drops attention at its
#    highest-resolution level, as Podell et al. 2023 report).
# 2. Sampling with a $\sigma$ that the KL keeps away from 0 forces nearby latents to decode to similar
#    images: that is what makes the latent space smooth and filled. With the mean only and $\beta = 0$ it
#    is a plain autoencoder; $\sigma$ gets no gradient from the reconstruction, and if sampled, it would
#    shrink towards 0 ($\log\sigma^2 \to -30$, the clamp).
# 3. SNR $= \bar\alpha_t\, \mathrm{var}(z) / (1 - \bar\alpha_t) = 0.25$ instead of 1. The signal
#    disappears into the noise earlier: the late, high-noise timesteps carry almost no information, and
#    the model spends part of its schedule on nearly pure noise.
# 4. It cannot encode images of another size without retraining (the Linear fixes the input size), and
#    its latent has no spatial layout: no inpainting or cropping in latent space, no convolutional UNet
#    over it. (Also: the Linear layer's size explodes with resolution.)
# </details>

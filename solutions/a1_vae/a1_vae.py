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
# # Assignment 1: a variational autoencoder on handwritten digits
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/2026-fall/assignments/a1_vae/a1_vae.ipynb)
#
# Stable Diffusion never denoises pixels: a VAE squeezes each image into a small latent, the diffusion model
# works there, and the VAE's decoder turns latents back into images. In this assignment you build that piece
# in miniature, from the formulas, and train it on 16x16 handwritten digits.
#
# **What you will learn**
# - why sampling $z \sim q(z|x)$ needs the *reparameterisation trick* to be trainable;
# - the KL divergence between two Gaussians in closed form, and what each of its terms does;
# - the negative ELBO as a training loss, and what $\beta$ trades off;
# - how a trained latent space looks: decoding a straight line between two encoded digits.
#
# **Prerequisites**: PyTorch basics (tensors, `nn.Module`, an optimiser step); lecture 1 (autoencoders and VAEs).
#
# **Time**: 1-3 hours of work. Training takes under a minute on a laptop CPU and a few seconds on a Colab GPU.
#
# **Points** (16 in total, all autograded):
#
# | part | what | points |
# |---|---|---|
# | 1 | `reparameterize` | 2 |
# | 2 | `kl_divergence` | 3 |
# | 3 | `negative_elbo` | 3 |
# | 4 | `TinyVAE` | 2 |
# | 5 | training: held-out reconstruction error of your saved weights below **0.08** | 4 |
# | 6 | `interpolate_latents` | 2 |
#
# Each test cell is all-or-nothing. Later tests use reference versions of earlier parts, so a mistake costs
# points only once. Hidden tests (run when grading) compare your functions with independent references on
# random inputs; the visible ones catch the usual mistakes early.

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
# Parameters (read-only). Tests and CI set FAST = True to train for a few seconds only.
import os

FAST = False
AUTOGRADE = os.environ.get("COURSE_AUTOGRADE") == "1"  # set by the graders: training is skipped
SEED = 0
IMAGE_SIZE = 16          # digits are 1 x 16 x 16, values in [-1, 1]
LATENT_DIM = 8           # the latent z has 8 numbers
BETA = 1.0               # weight of the KL term in the loss
WEIGHTS = "a1_vae_weights.safetensors"  # your trained weights, saved next to this notebook
RECONSTRUCTION_THRESHOLD = 0.08         # graded: mean squared error per pixel on held-out digits

# %%
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from course_lib.data import load_digits
from course_lib.viz import plot_losses, show_images

torch.manual_seed(SEED)
train_images, train_labels = load_digits(IMAGE_SIZE, split="train")  # (1438, 1, 16, 16)
test_images, test_labels = load_digits(IMAGE_SIZE, split="test")     # (359, 1, 16, 16): held out, graded on
fig = show_images(train_images[:8], titles=[str(int(y)) for y in train_labels[:8]])


# %% [markdown]
# ## Part 1: the reparameterisation trick (2 points)
#
# The encoder does not output a latent; it outputs a Gaussian $q(z|x) = \mathcal N(\mu, \operatorname{diag}\sigma^2)$,
# as two vectors: the mean $\mu$ and the **log-variance** $\log\sigma^2$ (any real number is a valid log-variance,
# which makes it easy for a network to predict). Sampling $z \sim q(z|x)$ directly would block gradients. Instead
# we draw the randomness from a fixed distribution and move it:
#
# $$z = \mu + \sigma \odot \varepsilon, \qquad \varepsilon \sim \mathcal N(0, I), \qquad \sigma = \exp\left(\tfrac12 \log\sigma^2\right).$$
#
# Now $z$ is a differentiable function of $\mu$ and $\log\sigma^2$, and the randomness is an input.
#
# **Task**: implement `reparameterize(mean, logvar, noise)`, where `noise` is $\varepsilon$ (same shape as `mean`).

# %% nbgrader={"grade": false, "grade_id": "reparameterize", "locked": false, "schema_version": 3, "solution": true}
def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z = mean + sigma * noise with sigma = exp(logvar / 2); all three tensors have the same shape."""
    ### BEGIN SOLUTION
    std = torch.exp(0.5 * logvar)
    return mean + std * noise
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_reparameterize", "locked": true, "points": 2, "schema_version": 3, "solution": false}
# Visible tests: shape, a known case, gradients.
_mean, _logvar, _noise = torch.zeros(2, LATENT_DIM), torch.zeros(2, LATENT_DIM), torch.randn(2, LATENT_DIM)
_z = reparameterize(_mean, _logvar, _noise)
assert _z.shape == (2, LATENT_DIM), f"z should have the shape of mean, got {tuple(_z.shape)}"
assert torch.allclose(_z, _noise), "with mean = 0 and logvar = 0 (sigma = 1), z should equal the noise"
_z = reparameterize(torch.ones(3), torch.log(torch.full((3,), 4.0)), torch.ones(3))
assert torch.allclose(_z, torch.full((3,), 3.0)), (
    f"variance 4 means sigma = 2, so z = 1 + 2 * 1 = 3; got {_z.tolist()}. "
    "Hint: sigma = exp(logvar / 2) is the standard deviation, not the variance exp(logvar).")
_mean = torch.randn(4, LATENT_DIM, requires_grad=True)
_logvar = torch.randn(4, LATENT_DIM, requires_grad=True)
reparameterize(_mean, _logvar, torch.randn(4, LATENT_DIM)).sum().backward()
assert _mean.grad is not None and _logvar.grad is not None, "gradients must reach mean and logvar"
### BEGIN HIDDEN TESTS
_g = torch.Generator().manual_seed(101)
for _shape in [(5, LATENT_DIM), (3, 4, 2, 2), (7,)]:
    _mean, _logvar, _noise = (torch.randn(_shape, generator=_g) * 2 for _ in range(3))
    _expected = _mean + torch.sqrt(torch.exp(_logvar)) * _noise  # sigma = sqrt(variance)
    assert torch.allclose(reparameterize(_mean, _logvar, _noise), _expected, rtol=1e-4, atol=1e-4)
_mean = torch.randn(6, LATENT_DIM, generator=_g, requires_grad=True)
_logvar = torch.randn(6, LATENT_DIM, generator=_g, requires_grad=True)
_noise = torch.randn(6, LATENT_DIM, generator=_g)
reparameterize(_mean, _logvar, _noise).sum().backward()
assert torch.allclose(_mean.grad, torch.ones_like(_mean))
assert torch.allclose(_logvar.grad, 0.5 * (0.5 * _logvar.detach()).exp() * _noise, atol=1e-6)
### END HIDDEN TESTS

# %% [markdown]
# ## Part 2: the KL divergence in closed form (3 points)
#
# The loss keeps every $q(z|x)$ close to the prior $p(z) = \mathcal N(0, I)$. For one latent number, with
# $\sigma^2 = \exp(\log\sigma^2)$,
#
# $$\mathrm{KL}\big(\mathcal N(\mu, \sigma^2)\,\|\,\mathcal N(0, 1)\big) = \tfrac12\left(\mu^2 + \sigma^2 - 1 - \log\sigma^2\right).$$
#
# It is never negative and is 0 exactly when $\mu = 0$ and $\sigma = 1$: the $\mu^2$ term pulls means to the origin,
# $\sigma^2 - 1 - \log\sigma^2$ keeps the spread near 1 (it grows both when $\sigma \to 0$ and when $\sigma \to \infty$).
# The latent numbers are independent, so the KL of the whole latent is the **sum** over them.
#
# **Task**: implement `kl_divergence(mean, logvar)` for inputs of shape `(B, LATENT_DIM)`, returning shape `(B,)`.

# %% nbgrader={"grade": false, "grade_id": "kl_divergence", "locked": false, "schema_version": 3, "solution": true}
def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per example: (B, D) -> (B,), summed over the D latent numbers."""
    ### BEGIN SOLUTION
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_kl_divergence", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Visible tests: shape, the prior has KL 0, a known value.
_kl = kl_divergence(torch.zeros(3, LATENT_DIM), torch.zeros(3, LATENT_DIM))
assert _kl.shape == (3,), f"one KL per example: expected shape (3,), got {tuple(_kl.shape)}"
assert torch.allclose(_kl, torch.zeros(3)), f"q = N(0, 1) is the prior itself, so the KL must be 0, got {_kl.tolist()}"
_kl = kl_divergence(torch.ones(2, LATENT_DIM), torch.zeros(2, LATENT_DIM))
assert torch.allclose(_kl, torch.full((2,), 0.5 * LATENT_DIM)), (
    f"mean 1, sigma 1: each of the {LATENT_DIM} numbers contributes 1/2 * (1 + 1 - 1 - 0) = 0.5, "
    f"so the KL is {0.5 * LATENT_DIM}; got {_kl.tolist()}. Check the factor 1/2, the sign, and that "
    "sigma^2 = exp(logvar).")
assert (kl_divergence(torch.randn(16, LATENT_DIM), torch.randn(16, LATENT_DIM)) >= 0).all(), "a KL is never negative"
### BEGIN HIDDEN TESTS
_g = torch.Generator().manual_seed(202)
for _batch, _dim in [(5, LATENT_DIM), (1, 3), (64, 20)]:
    _mean = torch.randn(_batch, _dim, generator=_g) * 2
    _logvar = torch.randn(_batch, _dim, generator=_g) * 2
    _q = torch.distributions.Normal(_mean, (0.5 * _logvar).exp())
    _p = torch.distributions.Normal(torch.zeros_like(_mean), torch.ones_like(_mean))
    _expected = torch.distributions.kl_divergence(_q, _p).sum(dim=1)
    assert torch.allclose(kl_divergence(_mean, _logvar), _expected, rtol=1e-4, atol=1e-4)
### END HIDDEN TESTS

# %% [markdown]
# ## Part 3: the negative ELBO (3 points)
#
# Maximising the evidence lower bound $\log p(x) \ge \mathbb E_{q(z|x)}[\log p(x|z)] - \mathrm{KL}(q(z|x)\,\|\,p(z))$
# is the same as minimising, per image,
#
# $$\mathcal L(x) = \underbrace{\sum_{\text{pixels}} (\hat x - x)^2}_{\text{reconstruction}} \;+\; \beta\, \mathrm{KL}(q(z|x)\,\|\,\mathcal N(0, I)),$$
#
# where $\hat x$ is the decoder's output for a sampled $z$ (a Gaussian decoder turns $-\log p(x|z)$ into a squared
# error). $\beta = 1$ is the ELBO itself; a smaller $\beta$ buys sharper reconstructions with a less regular
# latent space ($\beta$-VAE; Stable Diffusion's VAE uses a tiny $\beta$).
#
# **Task**: implement `negative_elbo(x_hat, x, mean, logvar, beta)`: the squared error **summed over each image's
# pixels**, plus `beta` times the KL of that image, **averaged over the batch** (a scalar). You may call your
# `kl_divergence`.

# %% nbgrader={"grade": false, "grade_id": "negative_elbo", "locked": false, "schema_version": 3, "solution": true}
def negative_elbo(x_hat: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
                  beta: float = 1.0) -> torch.Tensor:
    """Batch mean of [sum over pixels of (x_hat - x)^2 + beta * KL(q(z|x) || N(0, I))]; a scalar."""
    ### BEGIN SOLUTION
    reconstruction = (x_hat - x).pow(2).flatten(1).sum(dim=1)  # (B,)
    return (reconstruction + beta * kl_divergence(mean, logvar)).mean()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_negative_elbo", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# This test grades negative_elbo on its own: it swaps in a reference KL while it runs.
def _reference_kl(mean, logvar):
    _q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    return torch.distributions.kl_divergence(_q, torch.distributions.Normal(0.0, 1.0)).sum(dim=1)

_your_kl, kl_divergence = kl_divergence, _reference_kl
try:
    _x = torch.zeros(2, 1, 4, 4)
    _loss = negative_elbo(_x + 0.5, _x, torch.zeros(2, 3), torch.zeros(2, 3), beta=1.0)
    assert _loss.ndim == 0, f"the loss must be a scalar, got shape {tuple(_loss.shape)}"
    assert torch.isclose(_loss, torch.tensor(4.0)), (
        f"16 pixels off by 0.5 give 16 * 0.25 = 4 per image (KL 0 here); got {_loss.item()}. "
        "Hint: sum the squared error over each image's pixels, then average over the batch.")
    _loss = negative_elbo(_x, _x, torch.ones(2, 3), torch.zeros(2, 3), beta=2.0)
    assert torch.isclose(_loss, torch.tensor(3.0)), (
        f"perfect reconstruction, KL = 3 * 0.5 = 1.5 per image, beta = 2: expected 3.0, got {_loss.item()}")
    ### BEGIN HIDDEN TESTS
    _g = torch.Generator().manual_seed(303)
    for _beta in [1.0, 0.25, 4.0, 0.0]:
        _x = torch.rand(5, 1, 16, 16, generator=_g) * 2 - 1
        _x_hat = torch.randn(5, 1, 16, 16, generator=_g)
        _mean, _logvar = torch.randn(5, LATENT_DIM, generator=_g), torch.randn(5, LATENT_DIM, generator=_g)
        _expected = F.mse_loss(_x_hat, _x, reduction="sum") / 5 + _beta * _reference_kl(_mean, _logvar).mean()
        assert torch.allclose(negative_elbo(_x_hat, _x, _mean, _logvar, beta=_beta), _expected, rtol=1e-4)
    ### END HIDDEN TESTS
finally:
    kl_divergence = _your_kl


# %% [markdown]
# ## Part 4: a tiny VAE (2 points)
#
# Digits are small enough for a multilayer perceptron. This flat MLP latent is the contrast to Stable
# Diffusion's convolutional VAE, whose latent is a small image (lectures 1 and 6); assignment a8_conv_vae has you
# build that convolutional VAE and grades it against diffusers' `AutoencoderKL`. Write `TinyVAE` with
#
# - `encode(x)`: images `(B, 1, 16, 16)` -> `(mean, logvar)`, each `(B, LATENT_DIM)`. Flatten the 256 pixels, use a
#   couple of hidden layers (e.g. 256 units with SiLU), and let one final linear layer predict `2 * LATENT_DIM`
#   numbers that you split into mean and log-variance;
# - `decode(z)`: `(B, LATENT_DIM)` -> images `(B, 1, 16, 16)`, the mirror image of the encoder. Leave the output
#   unbounded (no tanh), as Stable Diffusion's decoder does;
# - `forward(x, generator=None)`: encode, draw $\varepsilon$ with `torch.randn(..., generator=generator)`, sample $z$
#   with **your** `reparameterize`, decode; return `(x_hat, mean, logvar)`.
#
# `TinyVAE()` must work without arguments: the graders build it that way before loading your weights.

# %% nbgrader={"grade": false, "grade_id": "tiny_vae", "locked": false, "schema_version": 3, "solution": true}
class TinyVAE(nn.Module):
    """MLP VAE for 1 x 16 x 16 digits with a LATENT_DIM-dimensional latent."""

    def __init__(self, latent_dim: int = LATENT_DIM, hidden: int = 256):
        super().__init__()
        self.latent_dim = latent_dim
        ### BEGIN SOLUTION
        pixels = IMAGE_SIZE * IMAGE_SIZE
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.SiLU(),
                                     nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, pixels))
        ### END SOLUTION

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ### BEGIN SOLUTION
        mean, logvar = self.encoder(x).chunk(2, dim=1)  # (B, D) each
        return mean, logvar
        ### END SOLUTION

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        return self.decoder(z).view(-1, 1, IMAGE_SIZE, IMAGE_SIZE)  # (B, 1, 16, 16)
        ### END SOLUTION

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        ### BEGIN SOLUTION
        mean, logvar = self.encode(x)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = reparameterize(mean, logvar, noise)
        return self.decode(z), mean, logvar
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_tiny_vae", "locked": true, "points": 2, "schema_version": 3, "solution": false}
# Visible tests: shapes, and every parameter gets a gradient.
_model = TinyVAE()
_x = train_images[:4]
_mean, _logvar = _model.encode(_x)
assert _mean.shape == (4, LATENT_DIM) and _logvar.shape == (4, LATENT_DIM), (
    f"encode should give mean and logvar of shape (4, {LATENT_DIM}), got {tuple(_mean.shape)}, {tuple(_logvar.shape)}")
assert _model.decode(_mean).shape == (4, 1, IMAGE_SIZE, IMAGE_SIZE), "decode should give (B, 1, 16, 16) images"
_x_hat, _mean, _logvar = _model(_x, generator=torch.Generator().manual_seed(0))
assert _x_hat.shape == _x.shape, f"forward should reconstruct the input's shape, got {tuple(_x_hat.shape)}"
# (a reference loss, so that this test does not depend on parts 2 and 3)
((_x_hat - _x).pow(2).sum() + (_mean.pow(2) + _logvar.exp() - _logvar).sum()).backward()
_missing = [name for name, p in _model.named_parameters() if p.grad is None]
assert not _missing, f"these parameters got no gradient: {_missing}"
### BEGIN HIDDEN TESTS
_a = _model(_x, generator=torch.Generator().manual_seed(7))[0]
_b = _model(_x, generator=torch.Generator().manual_seed(7))[0]
_c = _model(_x, generator=torch.Generator().manual_seed(8))[0]
assert torch.allclose(_a, _b), "the same generator seed must give the same sample"
assert not torch.allclose(_a, _c), "forward must sample z (different seeds, different x_hat)"
assert sum(p.numel() for p in _model.parameters()) < 5_000_000, "keep the model small"
### END HIDDEN TESTS

# %% [markdown]
# ## Part 5: train it (4 points)
#
# The loop below is the whole of training: sample a batch, reconstruct it, take a step on the negative ELBO.
# Run it; it saves your weights to `a1_vae_weights.safetensors` next to this notebook. You may change the training
# cell (steps, learning rate, batch size, $\beta$), but not the graded cell after it.
#
# **Graded**: your saved weights, loaded into `TinyVAE()`, must reconstruct the **held-out** test digits with a mean
# squared error per pixel below **0.08** (decoding the encoder's mean, no sampling). For scale: always predicting the
# average training digit gives about 0.175; the default training reaches about 0.03.

# %%
if not AUTOGRADE:  # the graders skip training and grade the weights you submit
    torch.manual_seed(SEED)
    steps, batch_size = (300 if FAST else 3000), 128
    model = TinyVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(SEED)
    history = {"negative ELBO": []}
    for step in tqdm(range(steps), desc="training"):
        x = train_images[torch.randint(len(train_images), (batch_size,), generator=generator)]
        x_hat, mean, logvar = model(x, generator=generator)
        loss = negative_elbo(x_hat, x, mean, logvar, beta=BETA)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history["negative ELBO"].append(loss.item())
    save_file(model.state_dict(), WEIGHTS)
    fig = plot_losses(history)

# %% nbgrader={"grade": true, "grade_id": "test_reconstruction", "locked": true, "points": 4, "schema_version": 3, "solution": false}
# Graded: held-out reconstruction error of the saved weights (on the held-out digits loaded afresh here).
assert os.path.exists(WEIGHTS), f"{WEIGHTS} not found: run the training cell (and submit the file with the notebook)"
trained = TinyVAE()
trained.load_state_dict(load_file(WEIGHTS))
trained.eval()
_held_out, _ = load_digits(IMAGE_SIZE, split="test")
with torch.no_grad():
    _mean, _logvar = trained.encode(_held_out)
    _error = F.mse_loss(trained.decode(_mean), _held_out).item()
print(f"held-out reconstruction error: {_error:.4f} (threshold {RECONSTRUCTION_THRESHOLD})")
assert _error < RECONSTRUCTION_THRESHOLD, f"reconstruction error {_error:.4f} is not below {RECONSTRUCTION_THRESHOLD}"
### BEGIN HIDDEN TESTS
assert _mean.shape == (len(_held_out), LATENT_DIM), "the latent must have LATENT_DIM numbers"
with torch.no_grad():
    _independent = ((trained.decode(trained.encode(_held_out)[0]) - _held_out) ** 2).mean().item()
assert abs(_independent - _error) < 1e-5 and _independent < RECONSTRUCTION_THRESHOLD
### END HIDDEN TESTS

# %%
# Your reconstructions: top row the held-out digits, bottom row what the VAE makes of them.
if os.path.exists(WEIGHTS):
    trained = TinyVAE()
    trained.load_state_dict(load_file(WEIGHTS))
    trained.eval()
    with torch.no_grad():
        _rec = trained.decode(trained.encode(test_images[:8])[0]).clamp(-1, 1)
    fig = show_images(torch.cat([test_images[:8], _rec]), ncols=8)


# %% [markdown]
# ## Part 6: walking through the latent space (2 points)
#
# If the KL term did its job, the latent space has no holes: points *between* two encoded digits decode to
# plausible digits too. Interpolate linearly,
#
# $$z_t = (1 - t)\, z_0 + t\, z_1, \qquad t = 0, \tfrac{1}{n-1}, \dots, 1,$$
#
# **Task**: implement `interpolate_latents(z0, z1, num_steps)`: for `z0`, `z1` of the same shape `S`, return a tensor
# of shape `(num_steps, *S)` whose first entry is `z0`, whose last is `z1`, evenly spaced in between.
# (Stable Diffusion users often prefer spherical interpolation for Gaussian latents; linear is fine here.)

# %% nbgrader={"grade": false, "grade_id": "interpolate_latents", "locked": false, "schema_version": 3, "solution": true}
def interpolate_latents(z0: torch.Tensor, z1: torch.Tensor, num_steps: int) -> torch.Tensor:
    """num_steps evenly spaced points from z0 to z1 (both included): shape (num_steps, *z0.shape)."""
    ### BEGIN SOLUTION
    t = torch.linspace(0.0, 1.0, num_steps, dtype=z0.dtype, device=z0.device)
    t = t.view(num_steps, *([1] * z0.ndim))  # (num_steps, 1, ..., 1) broadcasts against z0
    return (1 - t) * z0 + t * z1
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_interpolate_latents", "locked": true, "points": 2, "schema_version": 3, "solution": false}
# Visible tests: shape and end points.
_z0, _z1 = torch.zeros(LATENT_DIM), torch.ones(LATENT_DIM)
_path = interpolate_latents(_z0, _z1, 5)
assert _path.shape == (5, LATENT_DIM), f"expected shape (5, {LATENT_DIM}), got {tuple(_path.shape)}"
assert torch.allclose(_path[0], _z0) and torch.allclose(_path[-1], _z1), "the path must start at z0 and end at z1"
assert torch.allclose(_path[:, 0], torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])), "points must be evenly spaced"
### BEGIN HIDDEN TESTS
_g = torch.Generator().manual_seed(606)
for _shape, _n in [((3, 4), 7), ((LATENT_DIM,), 2), ((2, 2, 2), 11)]:
    _z0, _z1 = torch.randn(_shape, generator=_g), torch.randn(_shape, generator=_g)
    _expected = torch.stack([torch.lerp(_z0, _z1, float(_w)) for _w in torch.linspace(0, 1, _n)])
    assert torch.allclose(interpolate_latents(_z0, _z1, _n), _expected, atol=1e-6)
### END HIDDEN TESTS

# %%
# From a 0 to a 1, through the latent space (each row: one pair of held-out digits).
if os.path.exists(WEIGHTS):
    _pairs = [(test_images[test_labels == a][0], test_images[test_labels == b][0]) for a, b in [(0, 1), (3, 8), (4, 9)]]
    _rows = []
    with torch.no_grad():
        for _x0, _x1 in _pairs:
            _z = trained.encode(torch.stack([_x0, _x1]))[0]  # (2, D): the two means
            _rows.append(trained.decode(interpolate_latents(_z[0], _z[1], 8)).clamp(-1, 1))
    fig = show_images(torch.cat(_rows), ncols=8)

# %% [markdown]
# ## Going further (not graded)
#
# - Train with `BETA = 0.1` and `BETA = 4`: how do the reconstructions and the interpolations change?
# - Decode `z = torch.randn(16, LATENT_DIM)`: samples from the prior. Which $\beta$ gives better-looking samples, and why?
# - Lectures 1 and 6 replace this MLP with a convolutional VAE whose latent keeps a spatial layout (4 x 8 x 8), as in Stable Diffusion; assignment a8_conv_vae builds SD's own convolutional VAE.

# %% [markdown]
# ## Submitting
#
# 1. Run every cell from the top (*Kernel -> Restart & Run All*) and check that the visible tests pass.
# 2. Submit **`a1_vae.ipynb` and `a1_vae_weights.safetensors`** (on Colab: download both from the file browser on the left first).
#    The graders run your notebook with `COURSE_AUTOGRADE=1`: training cells are skipped and the graded cells
#    load the weights you submitted, on a CPU.
# 3. Do not rename the notebook or the weights file, and do not change the read-only cells: they are restored before grading.

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
# # Lecture 9 - Beyond Stable Diffusion: cascades, unCLIP, Imagen, DiT, and how to evaluate
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/2026-fall/lectures/09_beyond.ipynb)
#
# Stable Diffusion made one set of choices: diffuse in a VAE's latent space, condition a convolutional
# UNet on a frozen CLIP text encoder. Its contemporaries and successors chose differently, and the ideas
# keep coming back (Stable Diffusion 3 and FLUX are transformers on latents, and they use Imagen's kind of
# text encoder next to CLIP's). This lecture runs small versions of the key mechanisms.
#
# **What you will learn**
# - cascaded diffusion and **noise-conditioning augmentation**: why a super-resolution stage is trained
#   on *noisy* low-resolution inputs;
# - unCLIP (DALL-E 2): a **prior** from text embedding to image embedding, and a **decoder** from image
#   embedding to pixels;
# - Imagen: a frozen **T5-XXL** text encoder, the Efficient U-Net, and **dynamic thresholding**;
# - DiT: **patchify** latents into tokens, condition a transformer with **adaLN-Zero**; we build one
#   block and check that it is the identity at initialisation;
# - evaluation: FID and CLIP score, and why an FID computed on a few hundred images is **biased**, shown
#   with the toy world's evaluator.
#
# **Prerequisites:** lectures 3-7 (DDPM/DDIM, latent diffusion, attention, guidance, SD v1.5).
#
# **Time:** laptop CPU about 3 minutes (about 1 minute with `FAST = True`); Colab CPU or GPU about the
# same: nothing here needs a GPU.

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
FAST = False            # True in CI: smaller evaluator, pools and training
DIT_STEPS = 300         # training steps of the tiny DiT (to watch its gates open)
POOL = 2048             # images per pool for the FID experiment
REPEATS = 10            # random subsets per sample size

# %%
import os, sys, time, json, shutil, warnings
from pathlib import Path
ON_COLAB = "google.colab" in sys.modules
if not ON_COLAB:
    # Locally, every file this notebook writes stays under ./outputs (the datasets library would otherwise
    # cache under ~/.cache), and transformers' notice that torchvision is not installed is silenced.
    os.environ.setdefault("HF_DATASETS_CACHE", str(Path("outputs/hf_datasets_cache").resolve()))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from matplotlib.patches import FancyBboxPatch
from torch import nn

from course_lib.attention import MultiHeadAttention
from course_lib.data import shapes_batch
from course_lib.guidance import dynamic_threshold, static_threshold
from course_lib.metrics import EVALUATOR_VERSION, frechet_distance, get_evaluator, train_evaluator
from course_lib.schedulers import DDPMScheduler
from course_lib.viz import image_grid, plot_losses, show_images

if FAST:
    DIT_STEPS, POOL, REPEATS = 30, 512, 4
torch.set_num_threads(1)  # small tensors: one thread avoids two threads waiting for each other
torch.manual_seed(0)
OUT = Path("outputs/09_beyond")
OUT.mkdir(parents=True, exist_ok=True)
plt.rcParams["figure.dpi"] = 80          # inline figures: readable, and small enough to keep in git


# %% [markdown]
# ## 1. Four recipes at a glance
#
# Every text-to-image system of 2022-2023 is a chain of a text encoder and one or more diffusion models;
# they differ in what is diffused (pixels or latents), at which resolutions, and with which network.

# %%
def draw_chain(ax, stages, title):
    """One row of boxes joined by arrows: stages = [(label, detail, colour), ...]."""
    ax.set_xlim(0, len(stages))
    ax.set_ylim(0, 1)
    ax.set_axis_off()
    ax.set_title(title, loc="left", fontsize=10, fontweight="bold")
    for i, (label, detail, colour) in enumerate(stages):
        ax.add_patch(FancyBboxPatch((i + 0.06, 0.12), 0.8, 0.76, boxstyle="round,pad=0.02",
                                    facecolor=colour, edgecolor="0.3"))
        ax.text(i + 0.46, 0.62, label, ha="center", va="center", fontsize=8.5, fontweight="bold")
        ax.text(i + 0.46, 0.32, detail, ha="center", va="center", fontsize=7.5)
        if i + 1 < len(stages):
            ax.annotate("", xy=(i + 1.05, 0.5), xytext=(i + 0.88, 0.5),
                        arrowprops=dict(arrowstyle="->", lw=1.4))

TEXT, PRIOR, DIFF, DEC = "#d8e8f8", "#f8e2c8", "#d9f0d3", "#eadcf2"
chains = {
    "Stable Diffusion v1 (latent diffusion)": [
        ("prompt", "77 tokens", "white"), ("CLIP ViT-L/14", "frozen, 123M\n77 x 768", TEXT),
        ("UNet in latent space", "860M, 4 x 64 x 64", DIFF), ("VAE decoder", "f = 8", DEC),
        ("image", "512 x 512", "white")],
    "unCLIP / DALL-E 2 (pixel cascade)": [
        ("prompt", "", "white"), ("CLIP text encoder", "frozen", TEXT),
        ("prior", "text emb. ->\nimage emb.", PRIOR), ("decoder", "64 x 64 pixels", DIFF),
        ("2 upsamplers", "-> 256 -> 1024", DIFF), ("image", "1024 x 1024", "white")],
    "Imagen (pixel cascade)": [
        ("prompt", "", "white"), ("T5-XXL", "frozen, 4.6B\ntext-only", TEXT),
        ("base model", "64 x 64 pixels", DIFF), ("super-res", "-> 256", DIFF),
        ("super-res", "-> 1024", DIFF), ("image", "1024 x 1024", "white")],
    "DiT (transformer on latents)": [
        ("class y, time t", "adaLN-Zero", "white"), ("patchify", "32 x 32 x 4 ->\n256 tokens (p=2)", PRIOR),
        ("transformer", "N blocks,\nno convolutions", DIFF), ("unpatchify", "-> noise", PRIOR),
        ("VAE decoder", "SD's VAE", DEC), ("image", "256 x 256", "white")],
}
fig, axes = plt.subplots(len(chains), 1, figsize=(12, 1.45 * len(chains)))
for ax, (title, stages) in zip(axes, chains.items()):
    draw_chain(ax, stages, title)
fig.tight_layout()
fig.savefig(OUT / "four_recipes.png", dpi=90)

# %% [markdown]
# ## 2. Cascaded diffusion and noise-conditioning augmentation
#
# A **cascade** (Ho et al. 2021, "Cascaded Diffusion Models", CDM) generates a small image with a base
# model and enlarges it with one or more *conditional* diffusion models: the super-resolution stage
# learns $p(x_{hi} \mid x_{lo})$ and sees the upsampled low-resolution image as extra input channels.
# Each stage is small and specialised; CDM reached FID 4.88 on class-conditional ImageNet 256 x 256
# without any classifier guidance.
#
# The catch is a **train/test mismatch**. During training the super-resolution model sees *real*
# downsampled images; at sampling time it sees the base model's output, which has its own artefacts
# (wrong textures, slightly off colours). A model trained on clean inputs trusts every pixel and
# enlarges the artefacts. **Noise-conditioning augmentation** fixes this: during training, corrupt the
# condition with the forward process at a random level $s$,
# $$\tilde x_{lo} = \sqrt{\bar\alpha_s}\, \mathrm{up}(x_{lo}) + \sqrt{1 - \bar\alpha_s}\, \epsilon,$$
# and give $s$ to the model as a second conditioning signal. The model learns not to trust details below
# the noise level. At sampling time one picks a fixed $s$ (CDM and Imagen sweep it), large enough that
# the base model's artefacts are drowned, small enough that the layout survives.

# %%
hi = shapes_batch(1, seed=4, image_size=64)["image"]                  # the high-res target (1, 3, 64, 64)
lo = F.interpolate(hi, size=16, mode="area")                            # what a base model should produce
g = torch.Generator().manual_seed(0)
# a plausible base-model output: the right layout, slightly off colours, and some texture
lo_model = (lo + 0.15 * torch.randn(lo.shape, generator=g) + torch.tensor([0.1, -0.1, 0.05]).view(1, 3, 1, 1))
lo_model = lo_model.clamp(-1, 1)
up = lambda x: F.interpolate(x, size=64, mode="bilinear", align_corners=False)   # up(x_lo)

schedule = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
levels = [0, 100, 250, 400, 600]
eps = torch.randn(hi.shape, generator=g)        # the same noise for both rows
rows = []
for low in (lo, lo_model):
    rows += [schedule.add_noise(up(low), eps, torch.tensor([s])) if s > 0 else up(low) for s in levels]
fig = show_images(torch.cat(rows), titles=[f"{kind}, s = {s}" for kind in ("real low-res", "base model's")
                                           for s in levels], ncols=len(levels), figsize=(10, 4.4))
fig.savefig(OUT / "noise_conditioning_augmentation.png", dpi=90)

# how visible is the difference between the two conditions, relative to the augmentation noise?
abar = schedule.alphas_cumprod
delta = (up(lo_model) - up(lo)).pow(2).mean().sqrt()                   # RMS of the base model's error
s_axis = torch.arange(1, 1000)
visibility = abar[s_axis].sqrt() * delta / (1 - abar[s_axis]).sqrt()
fig, ax = plt.subplots(figsize=(6, 3))
ax.semilogy(s_axis, visibility)
ax.axhline(1, color="0.5", ls="--")
ax.set_xlabel("augmentation level s")
ax.set_ylabel("error / noise (RMS)")
ax.set_title("the base model's error disappears under the augmentation noise")
fig.tight_layout()
fig.savefig(OUT / "augmentation_visibility.png", dpi=90)
print(f"RMS difference between the real and the base model's low-res input: {delta:.3f}; "
      f"it falls below the noise at s = {int(s_axis[visibility < 1][0])}")

# %% [markdown]
# ## 3. unCLIP (DALL-E 2): a prior and a decoder
#
# CLIP gives a shared space for captions and images, but a caption's embedding $z_t$ is not an image's
# embedding $z_i$: many images fit one caption, and the two modalities occupy different regions of the
# space (the "modality gap"). unCLIP (Ramesh et al. 2022) splits generation in two:
#
# 1. the **prior** $p(z_i \mid y)$ produces a CLIP *image* embedding from the caption (they tried an
#    autoregressive prior and a diffusion prior: a decoder-only transformer that denoises $z_i$,
#    conditioned on the caption's tokens and $z_t$; the diffusion prior was as good and cheaper);
# 2. the **decoder** $p(x \mid z_i, y)$ is a GLIDE-style pixel diffusion model at 64 x 64 that is
#    conditioned on $z_i$ (projected into extra tokens and added to the timestep embedding), followed by
#    two diffusion upsamplers, 64 -> 256 -> 1024, trained with noise/blur conditioning augmentation.
#
# Why the detour through $z_i$? The decoder can *invert* CLIP image embeddings, so it produces
# **variations** of any image (encode it, decode with new noise), and it can interpolate between images
# or edit by moving the embedding along text directions. DALL-E 2 reported a zero-shot FID of 10.39 on
# MS-COCO, and human raters preferred its diversity over GLIDE's.
#
# | piece | input -> output | trained on |
# |---|---|---|
# | CLIP (frozen) | image or text -> one embedding vector (the paper's CLIP has a ViT-H/16 image encoder) | image-text pairs, contrastive |
# | prior | caption tokens + $z_t$ -> $z_i$ | pairs: predict the image's CLIP embedding |
# | decoder | $z_i$ (+ caption) -> 64 x 64 image | images and their own CLIP embeddings |
# | upsamplers | 64 -> 256 -> 1024 | images, with augmented low-res inputs |
#
# ## 4. Imagen: a big frozen language model, and dynamic thresholding
#
# Imagen (Saharia et al. 2022) is a pixel cascade like unCLIP, with three findings that stuck:
#
# - **Text encoder:** a frozen **T5-XXL** (4.6B parameters, trained on text only) beat CLIP's text encoder,
#   and scaling the text encoder improved image-text alignment and fidelity *more* than scaling the image
#   UNet. (SD 3 and FLUX later combined CLIP with T5-XXL.)
# - **Efficient U-Net:** more residual blocks at *low* resolutions where they are cheap, skip connections
#   scaled by $1/\sqrt 2$, and the order of down/up-sampling reversed (down-sample *before* a block's
#   convolutions, up-sample *after* them), which the paper reports speeds up the forward pass with no loss of
#   quality. Overall the authors report it is simpler, more memory-efficient and faster to converge than
#   their earlier U-Net.
# - **Dynamic thresholding.** Large guidance weights $w$ push the prediction $\hat x_0$ far outside the
#   data range $[-1, 1]$. Clipping it to $[-1, 1]$ (*static* thresholding) gives flat, oversaturated
#   colours. *Dynamic* thresholding picks $s$ = a high percentile (e.g. 99.5%) of $|\hat x_0|$ for each
#   sample; if $s > 1$ it clips to $[-s, s]$ and **divides by $s$**, pulling the whole image back into
#   range while keeping its contrasts. Applied at every sampling step, it made large guidance weights usable.
#
# Imagen reported a zero-shot FID of 7.27 on MS-COCO. Below, a one-step illustration with
# `course_lib.guidance`: a "conditional" prediction $c$ (a shape) and an "unconditional" one $u$ (a grey
# blur), extrapolated as guidance does, $\hat x_0 = u + w (c - u)$.

# %%
size = 32
yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
background = torch.stack([0.7 * xx, 0.3 * yy - 0.2, -0.7 * yy])             # smooth colour gradients
shape = shapes_batch(1, seed=2, image_size=size)["image"][0]
inside = (shape > -0.99).any(0, keepdim=True).float()
c = (background * (1 - inside) + shape * inside).unsqueeze(0)            # conditional x0_hat (1, 3, 32, 32)
blur = F.avg_pool2d(F.pad(c, (3, 3, 3, 3), mode="replicate"), 7, stride=1)
u = 0.5 * blur + 0.5 * blur.mean(1, keepdim=True)                      # unconditional: blurry and greyer
weights = [1.0, 3.0, 7.5, 15.0]
raw = torch.cat([u + w * (c - u) for w in weights])                    # (4, 3, 32, 32), outside [-1, 1]
rows = {"static: clip to [-1, 1]": static_threshold(raw),
        "dynamic (p = 99.5%)": dynamic_threshold(raw, 0.995)}

def saturated(image):   # share of values pinned at the ends of the range
    return (image.abs() >= 0.999).float().mean().item()

for i, w in enumerate(weights):
    print(f"w = {w:>4}: x0_hat in [{raw[i].min():6.2f}, {raw[i].max():5.2f}], s = 99.5th percentile of "
          f"|x0_hat| = {torch.quantile(raw[i].abs().flatten(), 0.995):5.2f};  values at +-1: "
          f"static {saturated(rows['static: clip to [-1, 1]'][i]):4.0%}, "
          f"dynamic {saturated(rows['dynamic (p = 99.5%)'][i]):4.0%}")
fig, axes = plt.subplots(2, len(weights) + 1, figsize=(12, 5))
for r, (name, images) in enumerate(rows.items()):
    for i, w in enumerate(weights):
        axes[r, i].imshow(image_grid(images[i:i + 1], padding=0))
        axes[r, i].set_title(f"{name}\nw = {w}", fontsize=8)
        axes[r, i].set_axis_off()
    axes[r, -1].hist(raw[2].flatten().numpy(), bins=80, range=(-6, 6), color="0.7", label="raw x0_hat")
    axes[r, -1].hist(images[2].flatten().numpy(), bins=80, range=(-6, 6), alpha=0.7, label="thresholded")
    axes[r, -1].set_title("pixel values at w = 7.5", fontsize=8)
    axes[r, -1].legend(fontsize=7)
fig.tight_layout()
fig.savefig(OUT / "dynamic_thresholding.png", dpi=90)


# %% [markdown]
# Static clipping sends every value beyond the range to the same extreme: most of the picture ends up
# pinned at $\pm 1$, and the smooth background turns into bands of pure, burnt-looking colour (the
# familiar look of too much guidance). Dynamic thresholding divides by $s$ instead, so
# the picture keeps its structure but comes back paler; inside a sampler that is fine, because every step
# moves only part of the way towards $\hat x_0$ and the next prediction restores the contrast, which is
# why Imagen could use large $w$ without the saturated look. SD needs neither: its latents are not
# bounded by 1 (lecture 7).
#
# ## 5. DiT: a transformer instead of the UNet
#
# Peebles & Xie (2023) replaced SD's convolutional UNet by a plain Vision Transformer working on the same
# kind of latents (SD's VAE, 32 x 32 x 4 for 256 x 256 images):
#
# 1. **patchify**: cut the latent into $p \times p$ patches and embed each as a token:
#    $(C, H, W) \to (HW/p^2,\; p^2 C) \to (N, D)$, plus positional embeddings. Smaller $p$ means more
#    tokens and more compute for the same parameters: DiT-XL/**2** uses $p = 2$, 256 tokens;
# 2. **blocks** of self-attention and MLP, conditioned on the timestep $t$ and the class $y$ through
#    **adaptive layer norm**: an MLP maps $c = \mathrm{emb}(t) + \mathrm{emb}(y)$ to a shift $\beta$,
#    a scale $\gamma$ and a gate $\alpha$ for each of the two sub-layers:
#    $$x \leftarrow x + \alpha_1 \odot \mathrm{Attn}\big(\mathrm{LN}(x)(1 + \gamma_1) + \beta_1\big),\qquad
#      x \leftarrow x + \alpha_2 \odot \mathrm{MLP}\big(\mathrm{LN}(x)(1 + \gamma_2) + \beta_2\big);$$
# 3. **adaLN-Zero**: the MLP that produces $(\beta, \gamma, \alpha)$ is initialised to output **zero**,
#    so every gate $\alpha = 0$ and every block starts as the identity map; the final layer is zero too.
#    A deep network then starts as a trivial function and learns each residual branch from nothing,
#    the same trick as zero-initialising the last layer of ResNet blocks or LoRA's $B$;
# 4. a final adaLN + linear layer maps each token back to $p^2 C$ numbers (noise, and in the paper also
#    the variance), and **unpatchify** rearranges them into a latent.
#
# DiT's result: image quality improved steadily with compute (Gflops), regardless of how it was spent;
# DiT-XL/2 (675M parameters, 119 Gflops) reached FID 2.27 on ImageNet 256 x 256 with guidance. SD 3, FLUX
# and Sora are descendants. Here is a tiny one, written out:

# %%
def patchify(z: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C) with N = H*W / p^2, patches in row-major order."""
    return rearrange(z, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)


def unpatchify(x: torch.Tensor, p: int, channels: int, height: int) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, H, W), the inverse of patchify."""
    return rearrange(x, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=height // p, p1=p, p2=p, c=channels)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of the timesteps (B,) -> (B, dim), as in the DDPM and DiT code."""
    freqs = torch.exp(-math.log(max_period) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]      # (B, N, D) with per-sample (B, D) shift/scale


class DiTBlock(nn.Module):
    """Self-attention and MLP, each modulated (shift, scale) and gated by the condition c: adaLN-Zero."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)   # no own scale/shift:
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)   # c provides them
        self.attn = MultiHeadAttention(dim, heads, bias=True)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * dim, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN_modulation[1].weight)   # the "Zero": every shift, scale and gate is 0
        nn.init.zeros_(self.adaLN_modulation[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)  # 6 x (B, D)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        x = x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class TinyDiT(nn.Module):
    """Class-conditional noise predictor on (C, S, S) latents: patchify, DiT blocks, final layer, unpatchify."""

    def __init__(self, channels=4, size=8, patch=2, dim=64, depth=3, heads=4, num_classes=3):
        super().__init__()
        self.channels, self.size, self.patch, self.dim = channels, size, patch, dim
        self.embed = nn.Linear(patch * patch * channels, dim)                    # one token per patch
        self.pos = nn.Parameter(0.02 * torch.randn(1, (size // patch) ** 2, dim))
        self.t_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.y_embed = nn.Embedding(num_classes + 1, dim)                       # last id = "no class" (CFG)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, patch * patch * channels)
        for layer in (self.final_modulation[1], self.out):                      # zero-init the way out
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.embed(patchify(z, self.patch)) + self.pos                       # (B, N, D)
        c = self.t_mlp(timestep_features(t, self.dim)) + self.y_embed(y)         # (B, D)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_modulation(c).chunk(2, dim=-1)
        x = self.out(modulate(self.norm(x), shift, scale))                       # (B, N, p*p*C)
        return unpatchify(x, self.patch, self.channels, self.size)               # (B, C, S, S)


# %% [markdown]
# **Toy latents.** To stay self-contained we do not use a VAE: a 16 x 16 grey picture of a shape,
# rearranged by `pixel_unshuffle` into 4 channels of 8 x 8, has exactly the shape of SD's latent of a
# 64 x 64 image, $(4, 8, 8)$, and loses nothing. The class $y$ is the shape (circle, square, triangle).

# %%
data = shapes_batch(POOL, seed=0, image_size=16)
latents = F.pixel_unshuffle(data["image"].mean(1, keepdim=True), 2)    # (N, 1, 16, 16) -> (N, 4, 8, 8)
labels = data["shape"]
torch.manual_seed(0)
dit = TinyDiT()
z, t, y = latents[:4], torch.tensor([10, 250, 500, 999]), labels[:4]
tokens = patchify(z, 2)
print(f"latents {tuple(z.shape)} -> patchify(p=2) -> {tuple(tokens.shape)} (N = 8*8/2^2 tokens of "
      f"2*2*4 numbers) -> embed -> {tuple(dit.embed(tokens).shape)}")
assert torch.equal(unpatchify(tokens, 2, 4, 8), z)
print(f"TinyDiT: {sum(p.numel() for p in dit.parameters()):,} parameters, {len(dit.blocks)} blocks")

# identity at initialisation: every gate is 0, so each block returns its input, exactly
x = dit.embed(tokens) + dit.pos
c = dit.t_mlp(timestep_features(t, dit.dim)) + dit.y_embed(y)
for i, block in enumerate(dit.blocks):
    out = block(x, c)
    print(f"block {i}: max |block(x, c) - x| = {(out - x).abs().max().item()}")
    assert torch.equal(out, x)
prediction = dit(z, t, y)
print(f"the whole model predicts {tuple(prediction.shape)}, max |eps_hat| = {prediction.abs().max().item()} at init")

# %% [markdown]
# The identity does not mean the model cannot learn; it means learning starts at the output and works
# its way in. Three plain gradient steps from the initialisation, with the gradient norm of each group
# of parameters before each step:
#
# - step 0: only the final linear layer gets a gradient (everything before it is multiplied by its zero
#   weights);
# - step 1: the final layer is no longer zero, so gradients reach the modulation layers that produce the
#   gates; the attention and MLP weights still get none, because the gates are still 0;
# - step 2: the gates are open a little, and the branches start to learn.

# %%
schedule = DDPMScheduler()
g = torch.Generator().manual_seed(0)
probe = TinyDiT()
probe.load_state_dict(dit.state_dict())          # a copy of the model at initialisation
sgd = torch.optim.SGD(probe.parameters(), lr=0.5)
groups = {"final layer": "out.", "final modulation": "final_modulation", "gates (adaLN modulation)": "adaLN_modulation",
          "attention": "attn.", "MLP": "mlp."}
noise = torch.randn(z.shape, generator=g)
print("step  " + "".join(f"{label:>26}" for label in groups))
for step in range(3):
    loss = F.mse_loss(probe(schedule.add_noise(z, noise, t), t, y), noise)
    sgd.zero_grad()
    loss.backward()
    norms = [sum(p.grad.norm().item() ** 2 for n, p in probe.named_parameters() if key in n) ** 0.5
             for key in groups.values()]
    print(f"{step:>4}  " + "".join(f"{v:>26.3g}" for v in norms))
    sgd.step()

# %% [markdown]
# A short training run of the noise-prediction objective (the class is dropped 10% of the time, for
# classifier-free guidance) shows the loss fall and the gates $|\alpha|$ open:

# %%
optimizer = torch.optim.AdamW(dit.parameters(), lr=1e-3)
null_class = 3
losses, gates = [], []
probe_t, probe_y = torch.full((64,), 500), labels[:64]
for step in range(DIT_STEPS):
    idx = torch.randint(len(latents), (64,), generator=g)
    z0, yy = latents[idx], labels[idx].clone()
    yy[torch.rand(64, generator=g) < 0.1] = null_class
    noise = torch.randn(z0.shape, generator=g)
    t = torch.randint(0, 1000, (64,), generator=g)
    loss = F.mse_loss(dit(schedule.add_noise(z0, noise, t), t, yy), noise)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
    with torch.no_grad():
        c = dit.t_mlp(timestep_features(probe_t, dit.dim)) + dit.y_embed(probe_y)
        gates.append([block.adaLN_modulation(c).chunk(6, -1)[2].abs().mean().item() for block in dit.blocks])

fig, axes = plt.subplots(1, 2, figsize=(11, 3.3))
plot_losses(losses, smooth=0.9, ax=axes[0], title="TinyDiT: noise-prediction loss")
gates = np.array(gates)
for i in range(gates.shape[1]):
    axes[1].plot(gates[:, i], label=f"block {i}")
axes[1].set_xlabel("step")
axes[1].set_ylabel("mean |gate_1| (attention branch)")
axes[1].set_title("adaLN-Zero: the gates start at 0 and open")
axes[1].legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "dit_training.png", dpi=90)
print(f"loss: first 10 steps {np.mean(losses[:10]):.3f}, last 10 steps {np.mean(losses[-10:]):.3f}")

# %% [markdown]
# ## 6. How to evaluate: FID, CLIP score, and their traps
#
# - **FID** (Heusel et al. 2017) compares *distributions*: embed real and generated images with
#   Inception-v3 (2048-d pool features), fit a Gaussian $\mathcal{N}(\mu, \Sigma)$ to each set, and take
#   the Frechet distance
#   $$\mathrm{FD} = \lVert \mu_r - \mu_g \rVert^2 + \operatorname{Tr}\big(\Sigma_r + \Sigma_g - 2 (\Sigma_r \Sigma_g)^{1/2}\big).$$
#   It rewards quality *and* diversity, but only as seen through Inception's features; papers use 10k
#   to 50k images (MS-COCO zero-shot: 30k).
# - **CLIP score** measures *alignment* of each image with its own prompt: the cosine of their CLIP
#   embeddings, averaged over images (Hessel et al. 2021 define $2.5 \max(\cos(E_I(x), E_T(y)), 0)$;
#   text-to-image papers usually report $100 \cos$). It depends on the
#   CLIP model used (always say which), rewards "prompt words visible" rather than beauty, and can be
#   gamed by optimising against the same CLIP.
# - **Human preference** studies (side by side, which image fits the prompt better / looks better) remain
#   the reference; automatic metrics are checked against them.
#
# **FID is biased.** $\mathrm{FD}$ computed from $N$ samples is on average *larger* than the true
# distance, and the excess shrinks roughly like $1/N$ (Chong & Forsyth 2020): with few samples the
# estimated covariances are noisy, and noise never makes two Gaussians look *closer*. The size of the
# bias depends on the generator, so two models compared at small $N$ can even swap places. CLIP score,
# a mean of per-image numbers, has no such bias: small $N$ only makes it noisier.
#
# The toy world lets us measure this. Its `ShapeEvaluator` (a small CNN trained on rendered shapes) plays
# Inception, and `course_lib.metrics.frechet_distance` computes FD on its 128-d features. We compare
# - two independent sets of **real** images (true distance 0), and
# - real images against a slightly **degraded** set (blurred, tinted: a plausible imperfect generator),
# at sample sizes from 16 to the pool size, many random subsets each.

# %%
if FAST:   # a quick evaluator is enough to show the effect
    evaluator, report = train_evaluator(num_train=600, steps=40, progress=False, num_test=200)
else:      # the course's standard evaluator, trained once (about a minute) and cached in ./outputs
    evaluator = get_evaluator(cache_dir=OUT / "evaluator", progress=False)
    report = json.loads((OUT / "evaluator" / f"shape_evaluator-v{EVALUATOR_VERSION}-seed0" / "report.json").read_text())
print(f"evaluator test accuracy: shape {report['shape_acc']:.3f}, colour {report['colour_acc']:.3f}")


def degrade(images: torch.Tensor) -> torch.Tensor:
    """A plausible imperfect generator: a little blur, a colour tint, some noise."""
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    tint = torch.tensor([0.06, -0.04, 0.0]).view(1, 3, 1, 1)
    noise = 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
    return (0.5 * images + 0.5 * blurred + tint + noise).clamp(-1, 1)


real_a = shapes_batch(POOL, seed=10)
real_b = shapes_batch(POOL, seed=11)
fake = shapes_batch(POOL, seed=12)
fake_images = degrade(fake["image"])
evaluator.eval()
with torch.no_grad():
    feats = {name: torch.cat([evaluator.features(chunk) for chunk in images.split(512)]).double()
             for name, images in (("real_a", real_a["image"]), ("real_b", real_b["image"]), ("fake", fake_images))}
print({name: tuple(f.shape) for name, f in feats.items()})
fig = show_images(torch.cat([real_b["image"][:6], fake_images[:6]]), ncols=6, figsize=(9, 3.3),
                  titles=["real"] * 6 + ["degraded"] * 6)


# %%
def fd(features_1: torch.Tensor, features_2: torch.Tensor) -> float:
    return frechet_distance(features_1.mean(0), torch.cov(features_1.T), features_2.mean(0), torch.cov(features_2.T))


# a CLIP-score stand-in: the cosine between an image's features and its prompt's "embedding", here the
# mean features of real images with that (shape, colour); scaled by 100 like CLIP score
label = lambda batch: batch["shape"] * 10 + batch["colour"]
prototypes = {int(k): feats["real_a"][label(real_a) == k].mean(0) for k in label(real_a).unique()}
prompt_vectors = torch.stack([prototypes[int(k)] for k in label(fake)])           # (POOL, d)
toy_clip_score = 100 * F.cosine_similarity(feats["fake"], prompt_vectors, dim=1).clamp(min=0)

sizes = [n for n in (16, 32, 64, 128, 256, 512, 1024, 2048) if n <= POOL]
rng = torch.Generator().manual_seed(0)
curves = {"real vs real (true distance 0)": [], "real vs degraded": []}
clip_scores = []
for n in sizes:
    rr, rf, cs = [], [], []
    for _ in range(REPEATS if n < POOL else 1):
        i, j, k = (torch.randperm(POOL, generator=rng)[:n] for _ in range(3))
        rr.append(fd(feats["real_a"][i], feats["real_b"][j]))
        rf.append(fd(feats["real_a"][i], feats["fake"][k]))
        cs.append(toy_clip_score[k].mean().item())
    curves["real vs real (true distance 0)"].append((np.mean(rr), np.std(rr)))
    curves["real vs degraded"].append((np.mean(rf), np.std(rf)))
    clip_scores.append((np.mean(cs), np.std(cs)))

fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
for name, values in curves.items():
    mean, std = np.array(values).T
    axes[0].errorbar(sizes, mean, yerr=std, marker="o", capsize=3, label=name)
    inverse = 1 / np.array(sizes)
    slope, intercept = np.polyfit(inverse[-4:], mean[-4:], 1)      # FD_N ~ FD_inf + k / N
    axes[1].plot(inverse, mean, "o", label=name)
    axes[1].plot([0, inverse[-4]], [intercept, intercept + slope * inverse[-4]], "--", color="0.4")
    print(f"{name:<32} FD at N={sizes[0]}: {mean[0]:8.2f}   at N={sizes[-1]}: {mean[-1]:7.2f}   "
          f"extrapolated to N -> infinity: {intercept:6.2f}")
axes[0].set_xscale("log", base=2)
axes[0].set_xlabel("images per set N")
axes[0].set_ylabel("Frechet distance (evaluator features)")
axes[0].set_title("FD shrinks with N: it is biased upwards")
axes[0].legend(fontsize=8)
axes[1].set_xlabel("1 / N")
axes[1].set_title("linear in 1/N: extrapolate to 1/N = 0")
axes[1].set_xlim(left=0)
mean, std = np.array(clip_scores).T
axes[2].errorbar(sizes, mean, yerr=std, marker="o", capsize=3, color="C2")
axes[2].axhline(mean[-1], color="0.5", ls="--")
axes[2].set_xscale("log", base=2)
axes[2].set_xlabel("images per set N")
axes[2].set_ylabel("toy CLIP score of the degraded set")
axes[2].set_title("a per-image mean: noisy, not biased")
fig.tight_layout()
fig.savefig(OUT / "fid_bias.png", dpi=90)

# %% [markdown]
# The right panel is the contrast: a toy CLIP score (the cosine between each image's features and the
# mean features of real images of its prompt) is a mean of per-image numbers, so small sets scatter
# around the full-set value (dashed) without drifting. Now read the left panel from the left: with 16 or 32 images per set, two sets of *real* images look further
# apart than the real and the degraded sets at the full pool size. An FD computed from a few dozen images
# says more about $N$ than about the model, and an "FID" measured on a small test set (or on a tiny
# fine-tuning dataset) cannot be compared with numbers computed at another $N$, let alone with published
# FIDs (different feature extractor, 50k images). Rules of thumb:
#
# - compare models at the **same** $N$, as large as you can afford, with the same reference set and the
#   same feature extractor (and the same image resizing: FID is sensitive to it);
# - report the spread over several random subsets, or extrapolate to $N \to \infty$ ($\mathrm{FID}_\infty$).
#   The extrapolation removes most of the bias but not all of it: above, two sets of *real* images, whose true
#   distance is 0, still extrapolate to 7.28 (from 17.55 at $N = 2048$). $1/N$ is only the leading term of the
#   bias, our fit uses four sizes drawn from one pool of 2048 images (so the largest subsets overlap heavily),
#   and the intercept inherits the noise of those points. Compare $\mathrm{FID}_\infty$ values computed the
#   same way, not against 0;
# - pair a distribution metric (FID) with an alignment metric (CLIP score; in the toy world, prompt accuracy) and
#   look at images with fixed seeds.

# %% [markdown]
# ## Check your understanding
#
# Try to answer before you open the answers.
#
# 1. Why does a super-resolution stage trained on clean low-resolution images do worse in a cascade than one trained with noise-conditioning augmentation, even though clean inputs carry more information?
#    <details><summary>Answer</summary>
#
#    At sampling time its input comes from the base model, not from downsampling real images; it has artefacts the SR model never saw and trusts them. Augmentation teaches it to treat details below the noise level as unreliable, and the same noise at sampling time hides the base model's errors.
#
#    </details>
#
# 2. unCLIP's decoder is conditioned on a CLIP image embedding. Why is a prior needed to go from text, instead of feeding the decoder the CLIP text embedding directly?
#    <details><summary>Answer</summary>
#
#    Text and image embeddings live in different regions of CLIP's space, and one caption fits many image embeddings; the decoder was trained on image embeddings. The prior samples a plausible image embedding for the caption (and lets you sample different ones).
#
#    </details>
#
# 3. What does dynamic thresholding do to a prediction x0_hat whose 99.5th percentile of |x0_hat| is 0.9? And to one where it is 3?
#    <details><summary>Answer</summary>
#
#    s = max(0.9, 1) = 1: clip to [-1, 1], which changes nothing inside the range (only the 0.5% of values beyond 1 are clipped). s = 3: clip to [-3, 3], then divide by 3: the whole image is scaled back into [-1, 1] with its contrasts intact.
#
#    </details>
#
# 4. A DiT block with adaLN-Zero is the identity at initialisation. Which of its parameters receive a non-zero gradient in the first step, and why is that enough?
#    <details><summary>Answer</summary>
#
#    Only the final linear layer (`out`), as the table in section 5 prints for step 0: 0.874 for the final layer and exactly 0 for everything else. Its input, the normalised tokens, is non-zero, while every path from the earlier parameters to the output passes through its zero weights (and the blocks' zero gates). That is enough because it unlocks the rest in order: after one update the final layer is non-zero, so at step 1 the final modulation (0.135) and the blocks' adaLN modulation (0.0362) receive gradients; once the gates have moved, at step 2, the attention (0.000987) and MLP (0.00531) weights learn too.
#
#    </details>
#
# 5. A latent of 32 x 32 x 4 is patchified with p = 2 and with p = 8. How many tokens, and what happens to the cost of self-attention?
#    <details><summary>Answer</summary>
#
#    p = 2: 256 tokens of 16 numbers; p = 8: 16 tokens of 256 numbers. Attention costs grow with the square of the number of tokens, so p = 2 is 256x more attention work: DiT found that image quality follows such compute, which is why DiT-XL/2 beats DiT-XL/8.
#
#    </details>
#
# 6. A classmate fine-tunes SD on 50 images and reports FID 85 against those 50 images, versus 120 for the base model. What is wrong with the claim?
#    <details><summary>Answer</summary>
#
#    With N = 50 (and a 2048-d Inception space) FID is dominated by its small-sample bias, whose size depends on the model; the difference may be bias, not quality. Also the reference is the training set (memorisation scores well). Use more samples, the same N for both, a held-out reference, several subsets, and an alignment metric and images with fixed seeds.
#
#    </details>
#

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
# # Lecture 7 - Stable Diffusion v1.5 in practice
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/2026-fall/lectures/07_stable_diffusion_v15.ipynb)
#
# Six lectures built a latent diffusion model from its parts. This one opens the real thing: Stable
# Diffusion v1.5, the model behind most of the fine-tunes and LoRAs you will meet.
#
# **What you will learn**
# - the three networks of SD v1.5 and their sizes: the VAE (f = 8, 4 latent channels, scaling factor
#   0.18215), the UNet (320/640/1280/1280 channels, ~860M parameters) and the CLIP ViT-L/14 text encoder
#   (77 tokens x 768, ~123M parameters), read from their configs without downloading a byte;
# - the text-to-image pipeline written by hand from diffusers' parts (tokenize, encode, a classifier-free
#   guidance batch, the scheduler loop, VAE decode), checked equal to `StableDiffusionPipeline`;
# - how to swap the sampler (DDIM, PNDM, Euler, DPM-Solver++) with `from_config`, and why that works;
# - how to make SD fit a small GPU: fp16, attention slicing, VAE slicing/tiling, CPU offload.
#
# **Prerequisites:** lectures 3-6 (DDPM/DDIM, the VAE, CLIP and cross-attention, classifier-free
# guidance).
#
# **Which model runs.** On a Colab GPU this notebook downloads the real SD v1.5 (about 4 GB, 1-3 min) and
# runs it in fp16. Without a GPU or without network (and always with `FAST = True`) it falls back to a
# *tiny twin*: the same diffusers classes with random weights and small widths
# (`course_lib.sd.build_tiny_sd`). Every line of code runs unchanged on both; only the pictures differ:
# the twin's are noise textures, because its weights were never trained.
#
# **Time:** laptop CPU (tiny twin) about 1-2 minutes; Colab T4 (real model) about 5 minutes plus the
# download.

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
FAST = False          # True in CI: the tiny model, fewer steps
MODEL = "auto"        # "auto": the real SD v1.5 on a GPU, else the tiny twin; or "tiny", a hub id, a folder
REVISION = None       # None: the course's pinned commit of the hub repo (course_lib.sd.DEFAULT_REVISION)
PROMPTS = ["a watercolor painting of a red fox in the snow", "a photo of a lighthouse at sunset"]
SEED = 0
STEPS = 30            # sampler steps for the main example
GUIDANCE = 7.5        # classifier-free guidance scale w (SD's default)
HEIGHT = 512          # SD v1.5 was trained at 512 x 512
WIDTH = 512
STEP_COUNTS = (10, 25)  # steps compared across samplers

# %%
import os, sys, time, json, shutil, warnings
from pathlib import Path
ON_COLAB = "google.colab" in sys.modules
if not ON_COLAB:
    # Locally, every file this notebook writes stays under ./outputs (the datasets library would otherwise
    # cache under ~/.cache), and transformers' notice that torchvision is not installed is silenced.
    os.environ.setdefault("HF_DATASETS_CACHE", str(Path("outputs/hf_datasets_cache").resolve()))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import matplotlib.pyplot as plt
import torch

from course_lib.data import shapes_batch
from course_lib.guidance import cfg_combine
from course_lib.sd import (DEFAULT_MODEL_ID, DEFAULT_REVISION, count_parameters, generate, sd15_config,
                           sd15_empty_model)
from course_lib.sd.fallback import load_model_or_tiny
from course_lib.viz import plot_trajectory, save_image_grid, show_images

REVISION = REVISION or DEFAULT_REVISION
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    torch.set_num_threads(1)  # the tiny model's layers are too small to gain from threads; on a busy
                              # machine two threads waiting for each other are many times slower
OUT = Path("outputs/07_stable_diffusion_v15")
OUT.mkdir(parents=True, exist_ok=True)
plt.rcParams["figure.dpi"] = 80          # inline figures: readable, and small enough to keep in git
torch.manual_seed(SEED)
print(f"device: {DEVICE}" + (f" ({torch.cuda.get_device_name()})" if DEVICE == "cuda" else ""))

# %% [markdown]
# ## 1. The three networks, as facts
#
# Stable Diffusion is latent diffusion (Rombach et al. 2022) with three separately trained networks:
#
# | symbol | network | diffusers class | what it does |
# |---|---|---|---|
# | $\mathcal{E}, \mathcal{D}$ | VAE | `AutoencoderKL` | image $x$ (3 x 512 x 512) $\leftrightarrow$ latent $z$ (4 x 64 x 64) |
# | $\epsilon_\theta$ | UNet | `UNet2DConditionModel` | predicts the noise in $z_t$ given $t$ and the text |
# | $\tau_\theta$ | text encoder | `CLIPTextModel` | 77 tokens $\to$ 77 vectors of width 768 |
#
# Their `config.json` files fully determine the architectures. `course_lib.sd.sd15_config` returns them
# (written out from the hub repo), and `sd15_empty_model` builds each network on PyTorch's **meta
# device**: every parameter has its real shape but no storage, so we can count 1.07 billion parameters
# in a second without downloading or allocating anything.

# %%
configs = {name: sd15_config(name) for name in ("vae", "unet", "text_encoder")}
facts = [
    ("vae", "block_out_channels"), ("vae", "latent_channels"), ("vae", "scaling_factor"),
    ("unet", "block_out_channels"), ("unet", "layers_per_block"), ("unet", "attention_head_dim"),
    ("unet", "cross_attention_dim"), ("unet", "sample_size"),
    ("text_encoder", "hidden_size"), ("text_encoder", "num_hidden_layers"),
    ("text_encoder", "num_attention_heads"), ("text_encoder", "max_position_embeddings"),
    ("text_encoder", "vocab_size"), ("text_encoder", "hidden_act"),
]
for component, key in facts:
    print(f"{component:>13}.{key:<24} {configs[component][key]}")
f = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
print(f"\nVAE downsampling factor f = 2^(blocks - 1) = {f}: a 512 x 512 image -> a "
      f"{512 // f} x {512 // f} latent, which is the UNet's sample_size = {configs['unet']['sample_size']}")
print(f"numbers per image: 3 * 512^2 = {3 * 512 ** 2:,} pixels vs 4 * 64^2 = {4 * 64 ** 2:,} latents "
      f"({3 * 512 ** 2 // (4 * 64 ** 2)}x fewer)")

# %% [markdown]
# Two names mislead: the UNet's `attention_head_dim = 8` is, for historical reasons, the **number of
# heads** (each head is 320/8 = 40, 640/8 = 80 or 1280/8 = 160 wide), and `sample_size = 64` is in latent
# cells, not pixels.

# %%
t0 = time.perf_counter()
real = {name: sd15_empty_model(name) for name in ("unet", "vae", "text_encoder")}   # meta device
counts = {name: count_parameters(model) for name, model in real.items()}
print(f"built and counted in {time.perf_counter() - t0:.1f} s, "
      f"device of the weights: {next(real['unet'].parameters()).device}")
for name, n in counts.items():
    print(f"{name:>13}: {n:>13,} parameters  ({n / 1e6:7.2f} M)")
print(f"{'total':>13}: {sum(counts.values()):>13,}")

# where the UNet's parameters sit: one bar per top-level block
unet_parts = {name: count_parameters(child) for name, child in real["unet"].named_children()}
unet_parts = {k: v for k, v in unet_parts.items() if v > 0}
blocks = {f"down_blocks.{i}": count_parameters(b) for i, b in enumerate(real["unet"].down_blocks)}
blocks["mid_block"] = unet_parts["mid_block"]
blocks.update({f"up_blocks.{i}": count_parameters(b) for i, b in enumerate(real["unet"].up_blocks)})
blocks["conv_in/out, time emb."] = (unet_parts["conv_in"] + unet_parts["conv_out"]
                                    + unet_parts["time_embedding"] + unet_parts.get("conv_norm_out", 0))

fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [1, 1.5]})
axes[0].barh(list(counts)[::-1], [counts[k] / 1e6 for k in list(counts)[::-1]], color=["C2", "C1", "C0"])
for i, k in enumerate(list(counts)[::-1]):
    axes[0].text(counts[k] / 1e6, i, f" {counts[k] / 1e6:.1f}M", va="center")
axes[0].set_xlabel("parameters (millions)")
axes[0].set_xlim(0, 1100)
axes[0].set_title("SD v1.5: the three networks")
axes[1].barh(list(blocks)[::-1], [v / 1e6 for v in list(blocks.values())[::-1]], color="C0")
axes[1].set_xlabel("parameters (millions)")
axes[1].set_title("inside the UNet (channels 320 / 640 / 1280 / 1280)")
fig.tight_layout()
fig.savefig(OUT / "sd15_parameters.png", dpi=90)

# %% [markdown]
# The UNet holds 80% of the weights, and most of them sit at the two deepest levels (1280 channels, 16 x 16
# and 8 x 8 latents), where attention is cheap because there are few positions.
#
# ### A correction: SD v1 uses CLIP **ViT-L/14**, not ViT-B/32
#
# A claim that circulates in tutorials and course notes is that SD v1 conditions on CLIP ViT-B/32, the model of
# CLIP's own README example (`clip.load("ViT-B/32")`) and of many CLIP tutorials. It does not. The primary
# sources say ViT-L/14: the SD v1 model cards ("a fixed, pretrained text encoder (CLIP ViT-L/14)"), Rombach et
# al. 2022, and the CompVis code, whose `FrozenCLIPEmbedder` loads `openai/clip-vit-large-patch14`. SD v1 uses
# the text tower of OpenAI's CLIP **ViT-L/14** (width 768, 12 layers, 12 heads, 123M parameters);
# ViT-B/32's text tower is 512 wide (63M parameters). The configs printed here settle it: the UNet's
# cross-attention keys and values are projections *from 768 dimensions*. (SD 2.x later switched to
# OpenCLIP ViT-H/14, width 1024.)

# %%
from transformers import CLIPTextConfig, CLIPTextModel

# the text tower of CLIP ViT-B/32 (openai/clip-vit-base-patch32), for comparison
vit_b32_text = CLIPTextConfig(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                              num_attention_heads=8, max_position_embeddings=77, vocab_size=49408)
with torch.device("meta"):
    b32 = CLIPTextModel(vit_b32_text)
to_k = real["unet"].down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k
print(f"SD v1.5 text encoder (ViT-L/14 text tower): width {configs['text_encoder']['hidden_size']}, "
      f"{counts['text_encoder'] / 1e6:.1f}M parameters")
print(f"CLIP ViT-B/32 text tower:                   width {vit_b32_text.hidden_size}, "
      f"{count_parameters(b32) / 1e6:.1f}M parameters")
print(f"UNet cross-attention to_k: {to_k}  <- reads {to_k.in_features}-dimensional text vectors")
del real, b32


# %% [markdown]
# ## 2. Load the model
#
# `load_sd_components` loads the five parts (UNet, VAE, text encoder, tokenizer, scheduler) from the hub at
# a pinned commit, in fp16 on a GPU, and skips the safety checker (about 1.2 GB of weights in the hub repo). `load_model_or_tiny`
# (`course_lib.sd.fallback`, used by lectures 7-10) wraps it: `MODEL = "auto"` picks the real model only
# when a GPU is present and not in FAST mode; if the download fails (no network) the cell says so and
# continues with the tiny twin.

# %%
if FAST and MODEL == "auto":
    MODEL = "tiny"
dtype = torch.float16 if DEVICE == "cuda" else None   # fp16 halves the memory of the real model
components, SOURCE, IS_TINY = load_model_or_tiny(MODEL, REVISION, device=DEVICE, dtype=dtype)
if IS_TINY:
    # the twin was built for 8 x 8 latents; keep its native size, and fewer steps in FAST mode
    HEIGHT = WIDTH = components.vae_scale_factor * components.unet.config.sample_size
    STEPS = 10 if FAST else STEPS
    STEP_COUNTS = (4, 8) if FAST else STEP_COUNTS
    print(f"TINY TWIN ({SOURCE}): the same classes and code path as SD v1.5, random weights, "
          f"{HEIGHT} x {WIDTH} px.\nOn a Colab GPU the same cells run the real {DEFAULT_MODEL_ID}.")
else:
    print(f"REAL MODEL: {SOURCE} at revision {REVISION}, {HEIGHT} x {WIDTH} px, dtype {components.unet.dtype}")
for name in ("unet", "vae", "text_encoder"):
    model = getattr(components, name)
    print(f"  {name:>12}: {type(model).__name__:<22} {count_parameters(model) / 1e6:9.2f}M parameters")
print(f"  {'tokenizer':>12}: {type(components.tokenizer).__name__:<22} "
      f"{len(components.tokenizer)} tokens, max length {components.tokenizer.model_max_length}")
print(f"  {'scheduler':>12}: {type(components.scheduler).__name__}")

# %% [markdown]
# ### The VAE: f = 8, 4 channels, and the scaling factor
#
# The encoder maps an image to a diagonal Gaussian $q(z \mid x)$; we use its mean. Latents of the real VAE
# have a standard deviation of about 5.5, so SD multiplies them by **0.18215** $\approx 1/5.49$ before
# diffusion: the diffusion process assumes data of roughly unit variance, the same scale as the noise
# $\epsilon \sim \mathcal{N}(0, I)$. The authors measured that number once on a batch of training
# images (Rombach et al. 2022, appendix; the 5.5 is reported there, not measured here: only the config's
# 0.18215 is printed below); the cell below measures it the same way on a few shape pictures. (The twin's VAE is random, so
# its value means nothing, and its reconstruction is not the input.)

# %%
vae = components.vae
n_images = 2 if FAST else 8
x = shapes_batch(n_images, seed=1, image_size=HEIGHT)["image"].to(DEVICE, vae.dtype)   # (B, 3, H, W)
with torch.no_grad():
    z = vae.encode(x).latent_dist.mean                     # (B, 4, H/8, W/8)
    x_rec = vae.decode(z).sample.clamp(-1, 1)              # (B, 3, H, W)
print(f"image {tuple(x.shape)} -> latent {tuple(z.shape)} -> reconstruction {tuple(x_rec.shape)}")
print(f"latent std over {n_images} images: {z.float().std():.3f}  ->  1/std = {1 / z.float().std():.4f}   "
      f"(config scaling_factor: {vae.config.scaling_factor})")

fig, axes = plt.subplots(1, 6, figsize=(12, 2.3))
axes[0].imshow((x[0].float().cpu().permute(1, 2, 0) + 1) / 2)
axes[0].set_title("image x")
limit = z[0].abs().max().item()
for c in range(4):
    axes[1 + c].imshow(z[0, c].float().cpu(), cmap="RdBu_r", vmin=-limit, vmax=limit)
    axes[1 + c].set_title(f"latent channel {c}")
axes[5].imshow((x_rec[0].float().cpu().permute(1, 2, 0) + 1) / 2)
axes[5].set_title("decode(encode(x))")
for ax in axes:
    ax.set_axis_off()
fig.tight_layout()
fig.savefig(OUT / "vae_latents.png", dpi=90)

# %% [markdown]
# ## 3. The pipeline, written by hand
#
# Text-to-image sampling is five steps, each one a diffusers part:
#
# 1. **Tokenize** each prompt with CLIP's tokenizer: `<|startoftext|>`, the word pieces,
#    `<|endoftext|>`, then padding to exactly 77 tokens.
# 2. **Encode**: the text encoder turns the 77 tokens into $c = \tau_\theta(y)$, 77 vectors (one per
#    token, *not* a single pooled vector); the UNet cross-attends to all of them.
# 3. **Classifier-free guidance batch**: encode the empty prompt too and run the UNet once on the doubled
#    batch, unconditional rows first (diffusers' order). Combine
#    $$\hat\epsilon = \epsilon_\theta(z_t, t, \varnothing) + w\,\big(\epsilon_\theta(z_t, t, c) - \epsilon_\theta(z_t, t, \varnothing)\big).$$
# 4. **Scheduler loop**: start from $z_T \sim \mathcal{N}(0, I)$ (times `init_noise_sigma`),
#    and at every timestep let `scheduler.step` turn $\hat\epsilon$ into the next, less noisy latent.
# 5. **Decode**: $x = \mathcal{D}(z_0 / 0.18215)$.

# %%
tokenizer = components.tokenizer
ids = tokenizer(PROMPTS[0], padding="max_length", max_length=tokenizer.model_max_length,
                truncation=True).input_ids
length = ids.index(tokenizer.eos_token_id) + 1
print(f"{len(ids)} token ids; the first {length} carry the prompt, the rest are padding "
      f"(id {tokenizer.pad_token_id}):")
print(tokenizer.convert_ids_to_tokens(ids[:length]))


# %% [markdown]
# The real tokenizer knows 49,408 word pieces ("water", "color</w>"); the twin's knows about 700 (a few toy
# words plus single bytes), so it spells unknown words out byte by byte. Both pad to 77.

# %%
@torch.no_grad()
def encode_text(components, prompts: list[str]) -> torch.Tensor:
    """c = tau_theta(prompts): (B, 77, D), one vector per token (the last hidden state)."""
    tok, encoder = components.tokenizer, components.text_encoder
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids                                           # (B, 77)
    return encoder(ids.to(encoder.device))[0]


@torch.no_grad()
def sample_by_hand(components, scheduler, prompts, seed, num_inference_steps=30, guidance_scale=7.5,
                   height=512, width=512, on_step=None) -> torch.Tensor:
    """Text -> images (B, 3, H, W) in [-1, 1], the way StableDiffusionPipeline does it."""
    unet, vae = components.unet, components.vae
    # 1-3. text embeddings for the CFG batch: the empty prompt first, then the prompts    (2B, 77, D)
    context = torch.cat([encode_text(components, [""] * len(prompts)), encode_text(components, prompts)])
    # 4. z_T: drawn on the CPU in the UNet's dtype, so a seed gives the same picture on any device
    f = components.vae_scale_factor
    shape = (len(prompts), unet.config.in_channels, height // f, width // f)           # (B, 4, H/8, W/8)
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = torch.randn(shape, generator=generator, dtype=unet.dtype).to(unet.device)
    scheduler.set_timesteps(num_inference_steps, device=unet.device)
    latents = latents * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)   # (2B, 4, h, w)
        eps_uncond, eps_cond = unet(model_input, t, encoder_hidden_states=context).sample.chunk(2)
        out = scheduler.step(cfg_combine(eps_uncond, eps_cond, guidance_scale), t, latents)
        latents = out.prev_sample
        if on_step is not None:
            on_step(i, t, out)
    # 5. undo the scaling factor, decode
    images = vae.decode(latents / vae.config.scaling_factor).sample                     # (B, 3, H, W)
    return images.clamp(-1, 1).float().cpu()


# %% [markdown]
# Now the same prompts and seed through `StableDiffusionPipeline` (built from the very same modules by
# `components.pipeline()`), and the two results side by side. The pipeline returns images in $[0, 1]$; we
# map them to the course's $[-1, 1]$.

# %%
pipe = components.pipeline()
pipe.set_progress_bar_config(disable=IS_TINY)

t0 = time.perf_counter()
ours = sample_by_hand(components, components.scheduler, PROMPTS, SEED, STEPS, GUIDANCE, HEIGHT, WIDTH)
t_ours = time.perf_counter() - t0
t0 = time.perf_counter()
theirs = pipe(PROMPTS, generator=torch.Generator("cpu").manual_seed(SEED), num_inference_steps=STEPS,
              guidance_scale=GUIDANCE, height=HEIGHT, width=WIDTH, output_type="pt").images
theirs = theirs.float().cpu() * 2 - 1
t_theirs = time.perf_counter() - t0

diff = (ours - theirs).abs()
print(f"by hand: {t_ours:.1f} s, pipeline: {t_theirs:.1f} s, {STEPS} steps, {len(PROMPTS)} images")
print(f"max |ours - pipeline| = {diff.max():.2e} on a range of 2 "
      f"({'fp32: identical up to rounding' if components.unet.dtype == torch.float32 else 'fp16 on a GPU: tiny differences come from kernel choices'})")
assert diff.max() < (1e-4 if components.unet.dtype == torch.float32 else 5e-2)

titles = [f"by hand: {p}" for p in PROMPTS] + [f"pipeline: {p}" for p in PROMPTS]
fig = show_images(torch.cat([ours, theirs]), titles=titles, ncols=len(PROMPTS), figsize=(3.2 * len(PROMPTS), 6.8))
fig.savefig(OUT / "by_hand_vs_pipeline.png", dpi=80)

# %% [markdown]
# ### Watching the sampler work
#
# DDIM's `step` also returns $\hat x_0$ (`pred_original_sample`), the model's current guess of the clean
# latent. Decoding it every few steps shows the picture appear: layout first, details last.

# %%
from diffusers import DDIMScheduler

ddim = DDIMScheduler.from_config(components.scheduler.config)
guesses, times = [], []
every = max(1, STEPS // 5)

def keep_x0(i, t, out):
    if i % every == 0 or i == STEPS - 1:
        guesses.append(out.pred_original_sample[:1])
        times.append(int(t))

sample_by_hand(components, ddim, PROMPTS[:1], SEED, STEPS, GUIDANCE, HEIGHT, WIDTH, on_step=keep_x0)
with torch.no_grad():
    decoded = [vae.decode(g / vae.config.scaling_factor).sample.clamp(-1, 1).float().cpu() for g in guesses]
print(f"decoded x0_hat at the DDIM steps with t = {times}")
fig = plot_trajectory(decoded, times, max_images=1)
fig.savefig(OUT / "ddim_x0_trajectory.png", dpi=80, bbox_inches="tight")

# %% [markdown]
# ## 4. Swapping the sampler
#
# The UNet was trained once, for one noise schedule ($\beta$ from 0.00085 to 0.012, "scaled linear",
# $T = 1000$). A sampler is only a rule for walking from $z_T$ to $z_0$ with the UNet's predictions, so
# any sampler that reads the **same schedule** can replace the default. `SchedulerClass.from_config(
# pipe.scheduler.config)` does exactly that: it copies the betas and timestep settings and ignores
# what the new class does not use.
#
# | sampler | idea | typical steps (reported by the samplers' papers and diffusers' docs, not measured here) |
# |---|---|---|
# | PNDM (SD's default) | pseudo linear multistep: reuses the last 4 noise predictions | 50 |
# | DDIM | the deterministic sampler of lecture 4, derived from a non-Markovian forward process | 50 |
# | Euler | Euler steps on the probability-flow ODE in Karras' $\sigma$ parameterisation; starts from $\sigma_{max} \approx 14.6$ | 30-50 |
# | DPM-Solver++ (2M) | second-order multistep ODE solver in $\hat x_0$ form; good images in 20-25 steps | 20-25 |

# %%
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

config = components.scheduler.config
SCHEDULERS = {
    "PNDM": PNDMScheduler.from_config(config),
    "DDIM": DDIMScheduler.from_config(config),
    "Euler": EulerDiscreteScheduler.from_config(config),
    "DPM-Solver++": DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
}
n = STEP_COUNTS[-1]
fig, ax = plt.subplots(figsize=(7, 3.3))
for name, scheduler in SCHEDULERS.items():
    scheduler.set_timesteps(n)
    steps = scheduler.timesteps.float().tolist()
    ax.plot(range(len(steps)), steps, "o-", ms=3, label=f"{name}: {len(steps)} UNet calls, "
            f"init_noise_sigma {float(scheduler.init_noise_sigma):.3g}")
    print(f"{name:>13}: {[round(s) for s in steps]}")
ax.set_xlabel("step")
ax.set_ylabel("timestep t")
ax.set_title(f"which timesteps each sampler visits with num_inference_steps = {n}")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "scheduler_timesteps.png", dpi=90)

# %% [markdown]
# All four read the training schedule, and `from_config` also hands them SD's `timestep_spacing =
# "leading"`: PNDM, DDIM and Euler visit every (1000 / n)-th timestep, 961, 921, ..., 1 for the 25 steps printed
# above (PNDM repeats 921), while DPM-Solver++ builds its
# own grid and takes its last step to a noise-free latent. PNDM's first step needs one extra UNet call; Euler works
# with $\sigma_t = \sqrt{(1 - \bar\alpha_t)/\bar\alpha_t}$ and starts from noise of that size, hence its
# `init_noise_sigma`. (Passing `timestep_spacing="trailing"` to `from_config` starts at $t = 999$, which
# helps at very few steps; Lin et al. 2024 explain why.) Same prompt and seed, four samplers, two step
# counts:

# %%
images, labels, seconds = [], [], {}
for name, scheduler in SCHEDULERS.items():
    for steps in STEP_COUNTS:
        t0 = time.perf_counter()
        images.append(sample_by_hand(components, scheduler, PROMPTS[:1], SEED, steps, GUIDANCE, HEIGHT, WIDTH))
        seconds[name, steps] = time.perf_counter() - t0
grid = torch.cat(images)
save_image_grid(grid, OUT / "samplers.png", nrow=len(STEP_COUNTS), row_labels=list(SCHEDULERS),
                col_labels=[f"{s} steps" for s in STEP_COUNTS])
fig = show_images(grid, titles=[f"{name}, {s} steps ({seconds[name, s]:.1f} s)" for name in SCHEDULERS
                                for s in STEP_COUNTS], ncols=2 * len(STEP_COUNTS),
                  figsize=(2.6 * 2 * len(STEP_COUNTS), 5.6))


# %% [markdown]
# The twin's pictures are textures, so this grid only shows that every sampler runs on the same UNet. On the
# real model, reported elsewhere and not run here: DPM-Solver++ "with only 20 steps can generate high-quality
# samples, and it can generate quite good samples even in 10 steps" (diffusers' `DPMSolverMultistepScheduler`
# documentation; Lu et al. 2022 report the same for guided sampling with SD), while DDIM needs more steps for
# the same quality (Lu et al. 2022). On Colab, with the real model, this cell lets you check it yourself: fewer
# steps is the cheapest speed-up there is.
#
# Try it yourself: pick a sampler and a step count and press *Run Interact* (the widget does nothing until
# you press it, so the notebook also runs without a browser).

# %%
def show_sampler(sampler="DPM-Solver++", steps=20, guidance_scale=GUIDANCE, seed=SEED):
    t0 = time.perf_counter()
    image = sample_by_hand(components, SCHEDULERS[sampler], PROMPTS[:1], seed, steps, guidance_scale,
                           HEIGHT, WIDTH)
    fig = show_images(image, titles=[f"{sampler}, {steps} steps, w={guidance_scale:g}, seed {seed} "
                                     f"({time.perf_counter() - t0:.1f} s)"], figsize=(4, 4.4))
    plt.show()

try:
    import ipywidgets as widgets
    widgets.interact_manual(show_sampler, sampler=list(SCHEDULERS),
                            steps=widgets.IntSlider(value=20, min=2, max=50, step=1),
                            guidance_scale=widgets.FloatSlider(value=GUIDANCE, min=0, max=15, step=0.5),
                            seed=widgets.IntText(value=SEED))
except ImportError:
    print("ipywidgets is not installed: call show_sampler('Euler', 15) directly instead.")

# %% [markdown]
# ## 5. Fitting SD into a small GPU
#
# Memory at inference goes to the weights (1.07B parameters: 4.3 GB in fp32, 2.1 GB in fp16), to the
# attention matrices ($4096 \times 4096$ per head at the 64 x 64 level of a 512 x 512 image), and to the VAE
# decoder's full-resolution activations. Each switch below trades a little time for memory, never image
# quality (fp16 changes the last bits of the numbers, tiling a little more, see below). Published figures
# from the diffusers documentation (*"Memory and speed"*, 2023; measured by its authors, not here):
#
# | switch | code | published effect |
# |---|---|---|
# | half precision | `from_pretrained(..., torch_dtype=torch.float16)` | 512 x 512, 50 DDIM steps on a TITAN RTX: 9.50 s in fp32 -> 3.61 s in fp16; half the weight memory |
# | memory-efficient attention | PyTorch 2's SDPA (diffusers' default) or xFormers | T4, fp16: 3.5 -> 5.5 it/s |
# | attention slicing | `pipe.enable_attention_slicing()` | about 10% slower; SD in "as little as 3.2 GB of VRAM" |
# | VAE slicing | `pipe.vae.enable_slicing()` | decodes a batch one image at a time: batches of 32+ images; no cost for one image |
# | VAE tiling | `pipe.vae.enable_tiling()` | decodes overlapping tiles: 4k images in 8 GB of VRAM; off at 512 x 512 and below |
# | model CPU offload | `pipe.enable_model_cpu_offload()` | whole networks move to the GPU only while used: negligible slowdown, some saving |
# | sequential CPU offload | `pipe.enable_sequential_cpu_offload()` | streams sub-modules: below 3 GB (below 2 GB with attention slicing), but much slower |
#
# (In diffusers 0.42 VAE slicing and tiling are switched on the VAE itself, `pipe.vae.enable_slicing()`;
# older docs call `pipe.enable_vae_slicing()`.) The cell below checks the switches on whatever model is
# loaded: the picture must stay the same, and on a GPU it also measures peak memory *on this runtime*.

# %%
weights = sum(count_parameters(getattr(components, n)) for n in ("unet", "vae", "text_encoder"))
print(f"weights of the loaded model: {weights / 1e6:.2f}M parameters = {weights * 4 / 2**20:,.1f} MiB in fp32, "
      f"{weights * 2 / 2**20:,.1f} MiB in fp16")

memory_steps = 5 if (FAST or IS_TINY) else 20

def run_once():
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    image = generate(pipe, PROMPTS[0], SEED, num_inference_steps=memory_steps, guidance_scale=GUIDANCE,
                     height=HEIGHT, width=WIDTH)
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")
    return image, time.perf_counter() - t0, peak

switches = {
    "attention slicing": (pipe.enable_attention_slicing, pipe.disable_attention_slicing),
    "VAE slicing": (pipe.vae.enable_slicing, pipe.vae.disable_slicing),
}
baseline, seconds, peak = run_once()
rows = [("baseline", seconds, peak, 0.0)]
for name, (on, off) in switches.items():
    on()
    image, seconds, peak = run_once()
    off()
    rows.append((name, seconds, peak, (image - baseline).abs().max().item()))

# VAE tiling only acts above the VAE's tile size (512 px for SD), so decode a latent twice as large
big = torch.randn(1, 4, 2 * HEIGHT // 8, 2 * WIDTH // 8, generator=torch.Generator().manual_seed(0))
big = big.to(DEVICE, vae.dtype)
with torch.no_grad():
    whole = vae.decode(big).sample.float().cpu()
    vae.enable_tiling()
    tiled = vae.decode(big).sample.float().cpu()
    vae.disable_tiling()
print(f"VAE tiling on a {2 * HEIGHT} x {2 * WIDTH} decode: |tiled - whole| is {(tiled - whole).abs().mean():.3f} "
      f"on average, {(tiled - whole).abs().max():.3f} at most (on a range of 2).\n  Tiles are decoded "
      f"separately and blended: the real VAE changes pixels slightly near the seams; the random twin's "
      f"decoder has no notion of a smooth image, so its tiles disagree much more.")

if DEVICE == "cuda":
    try:
        pipe.enable_model_cpu_offload()
        image, seconds, peak = run_once()
        rows.append(("model CPU offload", seconds, peak, (image - baseline).abs().max().item()))
        pipe.remove_all_hooks()
        pipe.to(DEVICE)
    except (ImportError, RuntimeError) as err:
        print(f"model CPU offload not available here: {err}")

print(f"\n{'switch':<20}{'time (s)':>10}{'peak GPU GiB':>14}{'max |diff|':>12}   ({memory_steps} steps)")
for name, seconds, peak, diff in rows:
    print(f"{name:<20}{seconds:>10.2f}{peak:>14.2f}{diff:>12.2e}")
if DEVICE != "cuda":
    print("(peak memory is measured on a GPU only; on this CPU the check is that the pictures stay the same)")

# %% [markdown]
# ## 6. SD's checkpoint in the course's own modules
#
# Everything above ran diffusers' classes. Assignments 6-8 have you write the same three networks yourself
# (`UNet2DConditionModel`, `AutoencoderKL`, CLIP's text transformer, with diffusers' and transformers'
# parameter names), and assignment 9 has you write the **converter** that fills them from a checkpoint.
# Checkpoints come in two layouts:
#
# - the **diffusers folder** (`unet/`, `vae/`, `text_encoder/`, each with a `config.json` and its weights):
#   the names already match the modules;
# - the original **single file** (`v1-5-pruned-emaonly.safetensors` or `.ckpt`), written by the CompVis/
#   Runway training code: one flat dictionary with keys under `model.diffusion_model.` (UNet),
#   `first_stage_model.` (VAE) and `cond_stage_model.transformer.` (text encoder), other block names
#   (`input_blocks.1.0.in_layers.0` for `down_blocks.0.resnets.0.norm1`), and the VAE's attention
#   projections stored as 1x1 convolutions instead of linear layers. It carries no configs and no tokenizer.
#
# `course_lib.models.convert` holds the course's reference converter. The cell writes the tiny twin in both
# layouts (the single file with the original key names), loads each into the course's modules, samples
# with the pipeline's loop written out, and compares with `StableDiffusionPipeline` on the same seed,
# prompt and DDIM scheduler. It always uses the tiny twin, so it runs offline; on Colab, assignment 9's
# last section does the same with the real v1.5 single file.

# %%
import diffusers
from course_lib.models.convert import generate as generate_with_modules, load_sd_checkpoint, save_single_file
from course_lib.sd import build_tiny_sd

convert_dir = OUT / "convert"
tiny_folder = build_tiny_sd(convert_dir / "tiny-sd", seed=0)
layouts = {"diffusers folder": tiny_folder,
           "single .safetensors": save_single_file(tiny_folder, convert_dir / "tiny-sd.safetensors"),
           "single .ckpt": save_single_file(tiny_folder, convert_dir / "tiny-sd.ckpt")}
convert_prompt, convert_steps = "a red circle", 4 if FAST else 10

reference_pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_folder, safety_checker=None,
                                                                   local_files_only=True)
reference_pipe.scheduler = diffusers.DDIMScheduler.from_config(reference_pipe.scheduler.config)
reference_pipe.set_progress_bar_config(disable=True)
reference = reference_pipe(convert_prompt, num_inference_steps=convert_steps, guidance_scale=GUIDANCE,
                           generator=torch.Generator().manual_seed(SEED), output_type="pt").images  # (1, 3, H, W)

images = {"diffusers pipeline": reference}
for name, path in layouts.items():
    modules = load_sd_checkpoint(path, config=tiny_folder)   # the single file takes configs + tokenizer here
    images[name] = generate_with_modules(modules, convert_prompt, torch.Generator().manual_seed(SEED),
                                         num_inference_steps=convert_steps, guidance_scale=GUIDANCE)
    print(f"{name:<22} -> course modules: max |image - pipeline| = "
          f"{(images[name] - reference).abs().max().item():.1e}"
          + (f"   (not weights, left out: {len(modules.ignored)} keys)" if modules.ignored else ""))
show_images(torch.cat(list(images.values())), titles=list(images), value_range=(0.0, 1.0));

# %% [markdown]
# ## Check your understanding
#
# Try to answer before you open the answers.
#
# 1. An image 768 pixels high and 512 wide goes into SD v1.5's VAE. What is the shape of its latent, and how many latent numbers is that compared to pixels?
#    <details><summary>Answer</summary>
#
#    (4, 96, 64): f = 8 in both directions, 4 channels. 4 * 96 * 64 = 24,576 numbers against 3 * 768 * 512 = 1,179,648, 48x fewer.
#
#    </details>
#
# 2. Why does SD multiply latents by 0.18215 before diffusion and divide by it before decoding?
#    <details><summary>Answer</summary>
#
#    The forward process mixes the data with unit-variance noise, sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps; the schedule was designed for data of about unit variance. The raw VAE latents have a standard deviation of about 5.5, and 0.18215 is about 1/5.49, measured once on training images.
#
#    </details>
#
# 3. Someone replaces SD v1.5's text encoder by CLIP ViT-B/32's text tower. Which layer fails first, and why?
#    <details><summary>Answer</summary>
#
#    The UNet's cross-attention projections to_k and to_v are Linear(768, d): they expect 768-dimensional token vectors (CLIP ViT-L/14's width), and ViT-B/32's text tower outputs 512-dimensional ones. Even with a projection the UNet was trained on ViT-L/14's embedding space, so it would need retraining.
#
#    </details>
#
# 4. In the classifier-free guidance batch, what would go wrong if you put the conditional rows first but kept `eps_uncond, eps_cond = out.chunk(2)`?
#    <details><summary>Answer</summary>
#
#    The two halves would be swapped, so the update becomes eps_c + w (eps_u - eps_c): guidance would push *away* from the prompt. The batch order and the unpacking must agree (diffusers: unconditional first).
#
#    </details>
#
# 5. Why can you swap PNDM for DPM-Solver++ without retraining, and what must the two agree on?
#    <details><summary>Answer</summary>
#
#    The UNet only predicts the noise at a given timestep of the training schedule; a sampler is a rule for stepping with those predictions. They must agree on the training noise schedule (betas, num_train_timesteps, prediction_type), which from_config copies.
#
#    </details>
#
# 6. Attention slicing costs about 10% in time. When is it worth it, and when not any more?
#    <details><summary>Answer</summary>
#
#    When the attention matrices dominate memory on a small GPU (e.g. 4 GB cards). With PyTorch 2's fused scaled_dot_product_attention (diffusers' default) the full attention matrix is never stored, so slicing rarely helps on current setups.
#
#    </details>
#

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
# # Lecture 8 - Fine-tuning Stable Diffusion: full fine-tuning vs LoRA
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/2026-fall/lectures/08_fine_tuning_and_lora.ipynb)
#
# You have a model of 1.07 billion parameters (lecture 7 counts them) and 20 pictures of your dog.
# Fine-tuning all 860M UNet weights needs a big GPU and produces a 1.7 GB file per concept (fp16). LoRA
# (Hu et al. 2021) trains less than 0.1% of that and produces a 3 MB file that can be switched on, off,
# scaled and mixed with others (section 1 prints all three figures).
#
# **What you will learn**
# - how many numbers full fine-tuning and LoRA train: $r(d + k)$ per layer instead of $dk$; 797,184 in
#   total for SD's UNet at rank 4, against 859.5M;
# - why $B$ starts at zero (the model is unchanged at step 0, and only $B$ moves in the first step);
# - where LoRA goes in SD (the attention projections `to_q`, `to_k`, `to_v`, `to_out.0`);
# - merging and unmerging (same outputs, no extra cost at inference), the scaling $\alpha / r$ and the
#   LoRA scale at inference time, composing two LoRAs;
# - a short LoRA training run with `course_lib.sd.train_lora`, then the hand-over to the workshop
#   (lecture 10), where you train one on the real SD v1.5.
#
# **Prerequisites:** lecture 7 (the components of SD v1.5), lecture 5 (cross-attention).
#
# **Which model runs.** Everything here runs on a CPU: SD's sizes are counted on PyTorch's meta device (no
# weights), and the mechanics run on the tiny random-weight twin of SD v1.5 (`build_tiny_sd`: the same
# diffusers classes, layer names and LoRA file format). Its pictures are textures, not photos: what we
# check is that the numbers behave as the math says. The real model is the workshop's job.
#
# **Time:** laptop CPU about 2-3 minutes (about 1 minute with `FAST = True`); Colab about the same.

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
FAST = False               # True in CI: fewer training steps and images
RANK = 4                   # r, the rank of every LoRA update
ALPHA = None               # lora_alpha; None means alpha equals r: the scaling alpha / r is 1
TRAIN_STEPS = 400          # LoRA updates on the tiny model (each one image)
LEARNING_RATE = 1e-3       # the tiny random model needs a larger step than SD's usual 1e-4
NUM_IMAGES = 32            # pictures of the new concept
CONCEPT = "a photo of a sks toy"   # "sks": a rare token that the new concept takes over
SECOND_CONCEPT = "a drawing in dark style"
SEEDS = (0, 1, 2)

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
import numpy as np
import torch
from torch import nn

from course_lib.data import shapes_batch, write_image_folder
from course_lib.lora import (LoRAConfig, count_trainable_parameters, inject_lora, load_lora, lora_layers,
                             lora_parameter_count, merge_lora, remove_lora, set_lora_scale, unmerge_lora)
from course_lib.sd import (LORA_WEIGHT_NAME, LoRATrainingConfig, build_tiny_sd, count_parameters,
                           encode_images, encode_prompts, generate, load_pipeline, load_sd_components,
                           noise_prediction_loss, sd15_empty_model, train_lora)
from course_lib.viz import plot_losses, show_images

if FAST:
    TRAIN_STEPS, NUM_IMAGES = 30, 8
torch.set_num_threads(1)  # tiny layers: one thread is faster than two waiting for each other
torch.manual_seed(0)
OUT = Path("outputs/08_fine_tuning_and_lora")
OUT.mkdir(parents=True, exist_ok=True)
plt.rcParams["figure.dpi"] = 80          # inline figures: readable, and small enough to keep in git
TINY = Path("outputs/tiny-sd")
if not (TINY / "model_index.json").is_file():
    build_tiny_sd(TINY, seed=0)   # the tiny twin of SD v1.5, random weights, a few seconds
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")

# %% [markdown]
# ## 1. Full fine-tuning vs LoRA: what gets trained
#
# Full fine-tuning updates every weight matrix $W \in \mathbb{R}^{d \times k}$ of the UNet. LoRA freezes
# $W_0$ and learns a low-rank change (Hu et al. 2021, eq. 3):
# $$h = W_0 x + \Delta W x, \qquad \Delta W = \frac{\alpha}{r} B A, \qquad
#   B \in \mathbb{R}^{d \times r},\; A \in \mathbb{R}^{r \times k}.$$
# A layer then trains $r(d + k)$ numbers instead of $dk$. For a $1280 \times 1280$ projection at $r = 4$:
# 10,240 instead of 1,638,400 (0.6%). The bet behind LoRA is that the change a fine-tune needs has low
# *intrinsic rank*, which worked for GPT-3 (Hu et al.) and, as reported for SD by diffusers' LoRA guide and
# Cuenca & Paul's Hugging Face blog post (Jan. 2023), works well for SD too; section 6 only shows the
# mechanics, on the tiny twin.
#
# Below: every attention projection of SD v1.5's UNet (on the meta device), grouped by shape.

# %%
unet_meta = sd15_empty_model("unet")
targets = {name: m for name, m in unet_meta.named_modules()
           if isinstance(m, nn.Linear) and name.endswith(ATTENTION)}
groups = {}
for name, layer in targets.items():
    kind = "attn1 (self)" if ".attn1." in name else "attn2 (cross)"
    key = (kind, name.rsplit(".", 1)[-1] if not name.endswith("to_out.0") else "to_out.0",
           layer.in_features, layer.out_features)
    groups[key] = groups.get(key, 0) + 1

print(f"{'attention':<14}{'layer':<10}{'k -> d':>14}{'count':>7}{'full: dk':>12}{'LoRA: r(d+k)':>14}")
total_full = total_lora = 0
for (kind, layer, k, d), count in sorted(groups.items(), key=lambda item: (item[0][2], item[0][0])):
    full, lora = count * k * d, count * lora_parameter_count(k, d, RANK)
    total_full, total_lora = total_full + full, total_lora + lora
    print(f"{kind:<14}{layer:<10}{f'{k} -> {d}':>14}{count:>7}{full:>12,}{lora:>14,}")
unet_total = count_parameters(unet_meta)
print(f"\n{len(targets)} attention projections hold {total_full:,} of the UNet's {unet_total:,} parameters.")
print(f"LoRA at rank {RANK} on all of them: {total_lora:,} trainable parameters "
      f"= {100 * total_lora / unet_total:.3f}% of the UNet")


# %% [markdown]
# The same number, two more ways: from the closed form, and by actually wrapping the meta-device UNet's
# layers with `course_lib.lora.inject_lora` and counting what is left trainable.

# %%
def closed_form(r, ctx=768):
    # per transformer block of width d: self-attention q,k,v,out are d -> d; cross-attention q,out are
    # d -> d and k,v read the 768-wide text (ctx -> d). SD has 5 blocks at 320, 5 at 640, 6 at 1280.
    block = lambda d: r * (4 * 2 * d + 2 * 2 * d + 2 * (ctx + d))
    return 5 * block(320) + 5 * block(640) + 6 * block(1280)

wrapped = inject_lora(unet_meta, LoRAConfig(r=RANK, lora_alpha=ALPHA))
counted = count_trainable_parameters(unet_meta)
print(f"closed form: {closed_form(RANK):,}   inject_lora + count: {counted:,}   table: {total_lora:,}")
assert closed_form(RANK) == counted == total_lora
if RANK == 4:
    assert counted == 797_184
del unet_meta

ranks = [1, 2, 4, 8, 16, 32, 64, 128]
fig, ax = plt.subplots(figsize=(6.5, 3.6))
ax.loglog(ranks, [closed_form(r) for r in ranks], "o-", label="LoRA on to_q/k/v/out (trainable)")
ax.axhline(unet_total, color="C3", ls="--", label=f"full fine-tuning: {unet_total / 1e6:.1f}M")
ax.axhline(total_full, color="C1", ls=":", label=f"the attention projections themselves: {total_full / 1e6:.1f}M")
for r, offset in ((4, (-10, 12)), (128, (-75, 12))):
    ax.annotate(f"r={r}: {closed_form(r):,}\n({100 * closed_form(r) / unet_total:.2f}%)",
                (r, closed_form(r)), textcoords="offset points", xytext=offset, fontsize=8)
ax.set_xlabel("rank r")
ax.set_ylabel("trainable parameters")
ax.set_title("SD v1.5 UNet: what fine-tuning trains")
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
fig.savefig(OUT / "trainable_parameters.png", dpi=90)

# %% [markdown]
# Parameters are only half the story; **training memory** is where LoRA really pays. AdamW in fp32 keeps,
# for every *trained* number, the weight, its gradient and two moment estimates: 16 bytes. Frozen weights
# need only themselves, in fp16 on a GPU (2 bytes), and no gradient or optimizer state.

# %%
GiB = 2 ** 30
full = unet_total * 16 / GiB
lora = (unet_total * 2 + closed_form(4) * 16) / GiB
print(f"full fine-tuning, fp32 AdamW: {full:5.2f} GiB for weights + gradients + Adam moments (before activations)")
print(f"LoRA r=4, frozen fp16 UNet:   {lora:5.2f} GiB ({closed_form(4) * 16 / 2**20:.1f} MiB of it for the LoRA)")
print(f"the LoRA file at r=4: {closed_form(4) * 4 / 1e6:.2f} MB in fp32 "
      f"(the diffusers authors' published rank-4 file: 3.29 MB) vs {unet_total * 2 / 1e9:.2f} GB for a fp16 UNet")

# %% [markdown]
# ## 2. $B = 0$: a LoRA changes nothing until it is trained
#
# $A$ starts random (like an `nn.Linear`) and $B$ starts at zero, so $\Delta W = \frac{\alpha}{r} B A = 0$:
# step 0 of fine-tuning *is* the pretrained model, and training departs from it smoothly. The gradients
# show the asymmetry: $\partial L / \partial A = \frac{\alpha}{r} B^\top \frac{\partial L}{\partial h} x^\top = 0$
# at the start, while $\partial L / \partial B = \frac{\alpha}{r} \frac{\partial L}{\partial h} (A x)^\top \neq 0$.
# (With both at zero neither would ever move; with both random the model would start damaged.)

# %%
unet = load_sd_components(TINY).unet
g = torch.Generator().manual_seed(0)
z = torch.randn(2, 4, 8, 8, generator=g)           # latents (B, 4, 8, 8)
t = torch.tensor([50, 700])
context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)   # stand-in text vectors

with torch.no_grad():
    before = unet(z, t, context).sample
names = inject_lora(unet, LoRAConfig(r=RANK, lora_alpha=ALPHA), generator=torch.Generator().manual_seed(0))
out = unet(z, t, context).sample
print(f"wrapped {len(names)} layers, e.g. {names[0]}:\n  {lora_layers(unet)[names[0]]}")
print(f"max |output with fresh LoRA - output without| = {(out - before).abs().max().item()}")
assert torch.equal(out.detach(), before)

out.square().mean().backward()
grad_a = sum(layer.lora_A.weight.grad.abs().sum().item() for layer in lora_layers(unet).values())
grad_b = sum(layer.lora_B.weight.grad.abs().sum().item() for layer in lora_layers(unet).values())
print(f"sum |dL/dA| = {grad_a:.3g}    sum |dL/dB| = {grad_b:.3g}    "
      f"trainable: {count_trainable_parameters(unet):,} of {count_parameters(unet):,}")
unet.zero_grad(set_to_none=True)

# %% [markdown]
# ## 3. Where LoRA goes in SD
#
# Each transformer block of the UNet has two attention layers, and LoRA wraps their four projections:
#
# - `attn1`, **self-attention**: queries, keys and values all come from the image tokens (which part of
#   the picture looks at which);
# - `attn2`, **cross-attention**: queries from the image, keys and values from the 77 text vectors. Its
#   `to_k` and `to_v` map 768 text dimensions to the block's width; they decide what a word *means* to
#   the picture, which is why LoRAs that teach a new word work so well there.
#
# The convolutions and feed-forward layers stay frozen (LoRA variants such as LoCon also adapt those).
# The names are diffusers' (`down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k`), which is also
# how LoRA files name their tensors.

# %%
unet_meta = sd15_empty_model("unet")
per_block = {}
for name, m in unet_meta.named_modules():
    if isinstance(m, nn.Linear) and name.endswith(ATTENTION):
        block = ".".join(name.split(".")[:2]) if not name.startswith("mid_block") else "mid_block"
        kind = "attn1" if ".attn1." in name else "attn2"
        per_block.setdefault(block, {"attn1": 0, "attn2": 0})[kind] += lora_parameter_count(
            m.in_features, m.out_features, RANK)
del unet_meta
order = [b for b in per_block if b.startswith("down")] + ["mid_block"] + [b for b in per_block if b.startswith("up")]
fig, ax = plt.subplots(figsize=(7, 3.4))
left = np.zeros(len(order))
for kind, colour in (("attn1", "C0"), ("attn2", "C1")):
    values = np.array([per_block[b][kind] for b in order])
    ax.barh(order[::-1], values[::-1] / 1e3, left=left[::-1] / 1e3, color=colour,
            label={"attn1": "attn1: self-attention", "attn2": "attn2: cross-attention (k, v read text)"}[kind])
    left = left + values
ax.set_xlabel(f"LoRA parameters at rank {RANK} (thousands)")
ax.set_title("where SD's LoRA parameters sit (blocks without attention get none)")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "lora_per_block.png", dpi=90)

# %% [markdown]
# `down_blocks.3` and `up_blocks.0` have no attention (they work at 8 x 8 with plain ResNet blocks), so
# they get no LoRA.
#
# ## 4. Merging and unmerging
#
# After training, $\Delta W$ can be added into the frozen weight once: $W_0 \leftarrow W_0 + \frac{\alpha}{r} B A$.
# The layer is then an ordinary `nn.Linear` again (no extra matmul at inference), and subtracting the same
# matrix restores $W_0$. To test this we give the adapters of the tiny UNet some "trained" values
# (random $B$), and compare the three ways of computing the output.

# %%
with torch.no_grad():
    for layer in lora_layers(unet).values():
        layer.lora_B.weight.normal_(0.0, 0.05, generator=g)    # pretend training happened
base_weights = {n: layer.base_layer.weight.detach().clone() for n, layer in lora_layers(unet).items()}

with torch.no_grad():
    unmerged = unet(z, t, context).sample
    merge_lora(unet)                          # W0 <- W0 + delta W, in place
    merged = unet(z, t, context).sample
    unmerge_lora(unet)                        # W0 <- W0 - delta W
    restored = unet(z, t, context).sample
moved = max((layer.base_layer.weight - base_weights[n]).abs().max().item() for n, layer in lora_layers(unet).items())
print(f"LoRA changes the output by up to {(unmerged - before).abs().max():.3f}")
print(f"max |merged - unmerged| = {(merged - unmerged).abs().max():.2e}   (float rounding)")
print(f"after unmerge: max |W - W0| = {moved:.2e}, max |output - unmerged output| = {(restored - unmerged).abs().max():.2e}")
torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)

# %% [markdown]
# ## 5. The scaling $\alpha / r$, and the LoRA scale at inference
#
# Two numbers multiply the update, and they play different roles:
# $$h = W_0 x + s \cdot \frac{\alpha}{r} \, B A x .$$
#
# - $\alpha / r$ is fixed at training time. Hu et al. (2021, section 4.1) introduced it as a heuristic: they
#   set $\alpha$ to the first $r$ they tried, never tuned it, and divided by $r$ so that changing the rank
#   would need less retuning of the learning rate. It is a convention, not a law: Kalajdzievski (2023,
#   *rank-stabilized LoRA*, rsLoRA) shows that $\alpha / r$ shrinks the update too much at large ranks (the
#   learning slows as $r$ grows) and that $\alpha / \sqrt r$ keeps it stable across ranks (peft:
#   `LoraConfig(use_rslora=True)`). diffusers' SD scripts use $\alpha = r$ (scaling 1). If you raise `alpha`
#   you raise the effective learning rate.
# - $s$, the **LoRA scale**, is an inference-time knob: 0 is the base model, 1 the LoRA as trained, 0.5 a
#   gentler version, above 1 an exaggerated one. In diffusers: `pipe(..., cross_attention_kwargs={"scale": s})`
#   or `pipe.set_adapters(names, adapter_weights=...)`; in the course: `generate(pipe, ..., lora_scale=s)`.
#
# To see the scale act on something learned, we now train a LoRA.
#
# ## 6. Training a LoRA on the tiny twin
#
# The concept: pictures of green triangles (sizes and places vary), all captioned with the same new phrase.
# The tiny tokenizer knows "sks" as one token, like the real one (DreamBooth's favourite rare word).
# `course_lib.data.write_image_folder` writes them in the layout `datasets` reads: `00000.png, ...` plus
# `metadata.jsonl` with one `{"file_name", "text"}` line per image. The workshop uses the same layout for
# your own pictures.

# %%
concept = shapes_batch(NUM_IMAGES, seed=0, image_size=64, pairs=[("green", "triangle")])
data_dir = write_image_folder(OUT / "data_sks", concept["image"], [CONCEPT] * NUM_IMAGES, overwrite=True)
print(f"{data_dir}: {NUM_IMAGES} images, caption {CONCEPT!r}")
print((data_dir / "metadata.jsonl").read_text().splitlines()[0])
fig = show_images(concept["image"][:8], titles=[CONCEPT] * min(8, NUM_IMAGES), figsize=(12, 1.9))


# %% [markdown]
# `train_lora` does what diffusers' `train_text_to_image_lora.py` does, in a loop you can read in
# `course_lib/sd/lora_training.py`: freeze the VAE, text encoder and UNet; wrap the UNet's attention
# projections; then for every step encode an image to $z_0$, draw $t$ and $\epsilon$, and minimise
# $\lVert \epsilon - \epsilon_\theta(z_t, t, c) \rVert^2$ over $A$ and $B$ only. It checkpoints and
# can resume (the workshop uses that).

# %%
def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)   # a new run each time (the workshop shows resuming)
    return path

config = LoRATrainingConfig(dataset=str(data_dir), output_dir=str(fresh_dir(OUT / "lora_sks")),
                            pretrained_model_name_or_path=str(TINY), resolution=64, rank=RANK, alpha=ALPHA,
                            learning_rate=LEARNING_RATE, max_train_steps=TRAIN_STEPS,
                            checkpoint_every=TRAIN_STEPS, seed=0, resume=None)
components = load_sd_components(TINY)
t0 = time.perf_counter()
result = train_lora(config, components)       # injects the LoRA into components.unet, in place
print(f"{TRAIN_STEPS} steps in {time.perf_counter() - t0:.1f} s; weights: {result.lora_path} "
      f"({result.lora_path.stat().st_size / 1e3:.1f} kB)")
fig = plot_losses(result.losses, smooth=0.95, title="LoRA training loss (one image per step)")
fig.savefig(OUT / "lora_loss.png", dpi=90)

# %% [markdown]
# One image and one random $t$ per step make the curve noisy: for noise prediction the loss at $t$ near 0 is
# large and at $t$ near 1000 tiny, whatever the model (lecture 3's per-timestep plot shows the same fall of
# more than two orders of magnitude), so each step's value says more about its $t$ than about the LoRA. A fairer test fixes the noise and the timesteps, and compares the
# same UNet with the LoRA switched off ($s = 0$) and on ($s = 1$), on the concept's images and, as a
# control, on pictures the LoRA never saw (blue circles with their own caption).

# %%
from diffusers import DDPMScheduler

noise_scheduler = DDPMScheduler.from_config(components.scheduler.config)

@torch.no_grad()
def denoising_loss(images, caption, scale, repeats=8, seed=123):
    g = torch.Generator().manual_seed(seed)       # the same noise and timesteps for every call
    set_lora_scale(components.unet, scale)
    losses = []
    for _ in range(repeats):
        z0 = encode_images(components, images, g)
        c = encode_prompts(components, [caption] * len(images))
        eps = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, 1000, (len(images),), generator=g)
        losses.append(noise_prediction_loss(components.unet, noise_scheduler, z0, c, eps, t).item())
    set_lora_scale(components.unet, 1.0)
    return float(np.mean(losses))

components.unet.eval()
other = shapes_batch(8, seed=5, image_size=64, pairs=[("blue", "circle")])["image"]
table = {"concept images, concept caption": (concept["image"][:8], CONCEPT),
         "unseen images, their caption": (other, "a blue circle")}
scores = {name: (denoising_loss(x, c, 0.0), denoising_loss(x, c, 1.0)) for name, (x, c) in table.items()}
for name, (off, on) in scores.items():
    print(f"{name:<34} LoRA off: {off:.4f}   LoRA on: {on:.4f}   change: {100 * (on - off) / off:+.1f}%")

fig, ax = plt.subplots(figsize=(6, 3))
x = np.arange(len(scores))
ax.bar(x - 0.2, [v[0] for v in scores.values()], 0.4, label="LoRA off (s = 0): the base model")
ax.bar(x + 0.2, [v[1] for v in scores.values()], 0.4, label="LoRA on (s = 1)")
ax.set_xticks(x, list(scores))
ax.set_ylabel("denoising loss, fixed noise")
ax.set_ylim(0, 1.35 * max(max(v) for v in scores.values()))
ax.legend(fontsize=8, loc="upper center", ncol=2)
fig.tight_layout()
fig.savefig(OUT / "lora_effect.png", dpi=90)

# %% [markdown]
# On the twin, both losses fall by about the same amount: most of what this LoRA learned is *generic*.
# The random UNet predicts noise of the wrong size and structure for **any** image, so correcting that
# helps everywhere, seen or unseen. A pretrained SD already predicts noise well, so there a LoRA's change
# concentrates on what its images have in common, and a control like this one tells you how much leaked
# into everything else (the workshop's before/after grid does the same with a prompt that does not name
# the concept).
#
# ### The LoRA scale as a slider
#
# Same prompt, same seeds, different $s$. The tiny model's pictures are textures, so look at *how much*
# they change rather than at what they show; with the real model (the workshop, lecture 10) you can watch
# the concept fade in as $s$ goes from 0 to 1. The slider below redraws the images for any $s$ (it needs a live notebook; the static
# figure is drawn once so the notebook also reads well without one).

# %%
pipe = components.pipeline()
pipe.set_progress_bar_config(disable=True)
STEPS = 10 if FAST else 25

def images_at(scale, seeds=SEEDS):
    return generate(pipe, [CONCEPT] * len(seeds), list(seeds), lora_scale=scale, num_inference_steps=STEPS,
                    height=64, width=64)

def show_scale(scale=1.0):
    fig = show_images(images_at(scale), titles=[f"s = {scale:g}, seed {s}" for s in SEEDS],
                      figsize=(2.2 * len(SEEDS), 2.5))
    plt.show()

scales = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
strip = torch.cat([images_at(s, seeds=SEEDS[:1]) for s in scales])
distance = [(img - strip[0]).abs().mean().item() for img in strip]
fig, axes = plt.subplots(1, 2, figsize=(11, 2.6), gridspec_kw={"width_ratios": [3, 1]})
from course_lib.viz import image_grid
axes[0].imshow(image_grid(strip, nrow=len(scales)))
axes[0].set_xticks([2 + 66 * i + 32 for i in range(len(scales))], [f"s = {s:g}" for s in scales])
axes[0].set_yticks([])
axes[0].set_title(f"{CONCEPT!r}, seed {SEEDS[0]}")
axes[1].plot(scales, distance, "o-")
axes[1].set_xlabel("LoRA scale s")
axes[1].set_ylabel("mean |image(s) - image(0)|")
fig.tight_layout()
fig.savefig(OUT / "lora_scale_strip.png", dpi=90)
plt.show()

try:
    import ipywidgets as widgets
    widgets.interact(show_scale, scale=widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.1,
                                                           continuous_update=False))
except ImportError:
    print("ipywidgets is not installed: call show_scale(0.5) directly instead.")

# %% [markdown]
# ## 7. Composing two LoRAs
#
# Two LoRAs trained separately on the same base model are two weight changes, and using both is adding
# both: $W = W_0 + s_1 \Delta W_1 + s_2 \Delta W_2$. That is cheap (no retraining) and is how people mix
# a style LoRA with a character LoRA. It can also clash: both edit the same projections, and nothing
# trained them to agree, so in practice one often lowers the scales (e.g. 0.7 each).
#
# We train a second LoRA (a different concept and caption), then compose them two ways: with diffusers
# (`load_lora_weights` twice with two adapter names, then `set_adapters`), and by hand (merge the first
# into the weights, then add the second). Equal outputs show that diffusers reads the course's LoRA
# files and that composition really is addition.

# %%
second = shapes_batch(NUM_IMAGES, seed=1, image_size=64, pairs=[("red", "square")])
data_dir2 = write_image_folder(OUT / "data_dark", second["image"], [SECOND_CONCEPT] * NUM_IMAGES, overwrite=True)
config2 = LoRATrainingConfig(dataset=str(data_dir2), output_dir=str(fresh_dir(OUT / "lora_dark")),
                             pretrained_model_name_or_path=str(TINY), resolution=64, rank=RANK, alpha=ALPHA,
                             learning_rate=LEARNING_RATE, max_train_steps=max(TRAIN_STEPS // 2, 1),
                             checkpoint_every=TRAIN_STEPS, seed=1, resume=None)
result2 = train_lora(config2, load_sd_components(TINY))
print(f"second LoRA: {len(result2.losses)} steps -> {result2.lora_path}")

# diffusers: two named adapters on a fresh pipeline (it warns that each file lacks the other
# adapter's keys and has no text-encoder part: expected, so those messages are silenced here)
from diffusers.utils import logging as diffusers_logging
diffusers_logging.set_verbosity_error()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    theirs = load_pipeline(TINY)
    theirs.load_lora_weights(config.output_dir, weight_name=LORA_WEIGHT_NAME, adapter_name="sks")
    theirs.load_lora_weights(config2.output_dir, weight_name=LORA_WEIGHT_NAME, adapter_name="dark")
diffusers_logging.set_verbosity_warning()
theirs.set_progress_bar_config(disable=True)

# by hand: W0 + delta W1 merged into the weights, then the second LoRA on top
ours = load_sd_components(TINY)
lora_config = LoRAConfig(r=RANK, lora_alpha=ALPHA)
inject_lora(ours.unet, lora_config)
load_lora(ours.unet, result.lora_path)
remove_lora(ours.unet, merge=True)           # bake LoRA 1 in: plain nn.Linear layers again
inject_lora(ours.unet, lora_config)
load_lora(ours.unet, result2.lora_path)

for s1, s2 in [(1.0, 1.0), (0.7, 0.5)]:
    theirs.set_adapters(["sks", "dark"], adapter_weights=[s1, s2])
    with torch.no_grad():
        if s1 != 1.0:  # re-bake LoRA 1 at scale s1
            ours = load_sd_components(TINY)
            inject_lora(ours.unet, lora_config); load_lora(ours.unet, result.lora_path)
            set_lora_scale(ours.unet, s1); remove_lora(ours.unet, merge=True)
            inject_lora(ours.unet, lora_config); load_lora(ours.unet, result2.lora_path)
        set_lora_scale(ours.unet, s2)
        a, b = theirs.unet(z, t, context).sample, ours.unet(z, t, context).sample
    print(f"s1 = {s1}, s2 = {s2}: max |diffusers - ours| = {(a - b).abs().max():.2e}")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

grid, labels = [], []
prompt = "a photo of a sks toy, a drawing in dark style"
for s1 in (0.0, 1.0):
    for s2 in (0.0, 1.0):
        theirs.set_adapters(["sks", "dark"], adapter_weights=[s1, s2])
        grid.append(theirs(prompt, generator=torch.Generator().manual_seed(SEEDS[0]), num_inference_steps=STEPS,
                           height=64, width=64, output_type="pt").images * 2 - 1)
        labels.append(f"sks x {s1:g}, dark x {s2:g}")
fig = show_images(torch.cat(grid), titles=labels, ncols=4, figsize=(9, 2.6))
fig.savefig(OUT / "two_loras.png", dpi=90)

# %% [markdown]
# ## 8. On to the workshop
#
# Everything above ran on a model with random weights, so the loss and the equalities were the evidence,
# not the pictures. Lecture 10, the **LoRA workshop**, runs the same `train_lora` on the real SD v1.5 on a
# Colab T4: your own pictures (or a captioned dataset from the Hub) at 512 x 512, fp16 with a gradient
# scaler, checkpoints copied to Google Drive so that a disconnected runtime resumes where it stopped, and
# a before/after grid with fixed seeds. Things to carry over:
#
# - rank 4 to 16 and learning rate 1e-4 are good starting points; LoRA tolerates a 10x larger learning
#   rate than full fine-tuning (1e-5 or less) (reported elsewhere, not measured here: the defaults of
#   diffusers' `train_text_to_image_lora.py` and `train_text_to_image.py` examples);
# - use a rare token ("sks") for a new subject, so you do not overwrite a word the model already uses;
# - judge with fixed seeds and several prompts, including prompts *without* your token, to see what else
#   the LoRA changed.

# %% [markdown]
# ## Check your understanding
#
# Try to answer before you open the answers.
#
# 1. A linear layer maps 640 to 640 dimensions. How many numbers does full fine-tuning train, and how many does LoRA at rank 8?
#    <details><summary>Answer</summary>
#
#    Full: 640 * 640 = 409,600 (plus 640 bias). LoRA: 8 * (640 + 640) = 10,240, 2.5% of it.
#
#    </details>
#
# 2. Why is the rank-4 total for SD's UNet exactly 797,184? Which layers contribute the 768?
#    <details><summary>Answer</summary>
#
#    Sum r(d + k) over the 128 attention projections. Each of the 16 transformer blocks has 8 projections; all are d -> d except the cross-attention to_k and to_v, which read the 768-wide CLIP tokens: r (768 + d) each. 5 blocks at 320, 5 at 640 and 6 at 1280 give 797,184.
#
#    </details>
#
# 3. What would happen at step 0 if both A and B were initialised at zero? And if both were random?
#    <details><summary>Answer</summary>
#
#    Both zero: dL/dA and dL/dB are both 0 (each is multiplied by the other), so training never starts. Both random: delta W != 0, so the fine-tune starts from a damaged model, not from the pretrained one.
#
#    </details>
#
# 4. You merge a LoRA at scale 0.8 into the UNet's weights. Can you later use it at scale 1.2? What does course_lib do?
#    <details><summary>Answer</summary>
#
#    Only by unmerging first (subtracting exactly what was added, 0.8 delta W) and merging again at 1.2. LoRALinear.set_scale does exactly that: unmerge with the stored merged scale, change the scale, merge.
#
#    </details>
#
# 5. You retrain a LoRA at rank 16 instead of 4 and keep alpha = 4. What happens to the scaling, and what would you expect if instead alpha = r = 16?
#    <details><summary>Answer</summary>
#
#    alpha / r drops from 1 to 0.25: the update is scaled down 4x, which is Hu et al.'s heuristic for keeping one learning rate across ranks. It over-corrects at large ranks: rsLoRA (Kalajdzievski 2023) shows that alpha / sqrt(r) is the rank-stable scaling; here that is 4 / sqrt(16) = 1 instead of 0.25, so alpha / r slows the rank-16 LoRA down. With alpha = r = 16 the scaling stays 1, and the update of a rank-16 BA is larger than at rank 4 for the same learning rate.
#
#    </details>
#
# 6. Two LoRAs both look fine alone but together produce a mess. Why can that happen, and what are two things to try?
#    <details><summary>Answer</summary>
#
#    Composition adds two weight changes that were trained independently on the same layers; their sum can push activations into regions neither saw. Lower the scales (e.g. 0.6-0.8 each), or train them jointly / train the second on top of the first merged in.
#
#    </details>
#

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
# # Lecture 10 - Workshop: train your own LoRA for Stable Diffusion v1.5
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/2026-fall/lectures/10_lora_workshop.ipynb)
#
# In this workshop you fine-tune SD v1.5 with LoRA on a captioned image set (a dataset from the Hugging
# Face Hub, or a folder of your own pictures), watch validation images appear during training, compare
# before and after with the same seeds, and load the result in plain diffusers. The run survives a Colab
# disconnect: checkpoints are copied to Google Drive, and re-running the notebook resumes where it
# stopped.
#
# **What you need (read before you start)**
#
# | | Colab GPU (the real workshop) | laptop CPU / offline / `FAST = True` |
# |---|---|---|
# | hardware | a **T4 with 16 GB** (Colab's free GPU) or better; *Runtime > Change runtime type > T4 GPU* | any CPU |
# | model | SD v1.5 (`stable-diffusion-v1-5/stable-diffusion-v1-5`), 4 GB download, fp16 on the GPU | the tiny random-weight twin (`build_tiny_sd`), same code path |
# | data | default: `lambdalabs/naruto-blip-captions` (1,221 captioned images, 700 MB, per its dataset card), or your own folder | 32 shape pictures with a new caption, written on the spot |
# | resolution | 512 x 512 | 64 x 64 |
# | GPU memory | **published:** the diffusers LoRA script at 512 px, batch 1, fp16 "can run in as low as 11 GB of GPU RAM" (Cuenca & Paul, Hugging Face blog, Jan. 2023) | - |
# | time | **published:** 15,000 steps x 4 accumulated images (60,000 images) "took about 5 hours" on an RTX 2080 Ti (same blog), about 0.3 s per image. Our default, 1,000 steps of 1 image, is then about 5 minutes on that GPU; a T4 is slower, so **budget 10-20 minutes** (our extrapolation, not a measurement), plus 2-3 minutes of downloads and about 1 minute of validation images | about 2-3 minutes (about 1 minute with `FAST = True`) |
#
# These published figures were measured by their authors on their hardware, not here: the notebook
# prints the time and peak memory it actually measures on your runtime.
#
# **What you will learn**
# - preparing a captioned dataset (a Hub dataset, or your own pictures with `metadata.jsonl`);
# - the LoRA settings that matter (rank, learning rate, steps) and the precision the GPU allows
#   (`pick_precision`: fp16 with a gradient scaler on a T4);
# - checkpointing to Google Drive and resuming after a disconnect, exactly;
# - judging a LoRA with fixed seeds, and sharing it as a 3 MB file that plain diffusers loads.
#
# **Prerequisites:** lecture 8 (LoRA), lecture 7 (the SD pipeline).
#
# **Time:** Colab T4 about 15-25 minutes in all (downloads, training, images; from the published
# figures above); laptop CPU with the tiny twin about 3 minutes (1 minute with `FAST = True`).

# %% tags=["setup"]
# Colab: install the course library of this term (Colab's own torch stays); elsewhere nothing happens.
import sys
if "google.colab" in sys.modules:
    from importlib.metadata import version
    torch_pin = "torch==" + version("torch")  # keeps Colab's torch: the course never reinstalls it
    # pip's magic shows pip's output, and Colab's restart prompt should an upgraded package need one
    get_ipython().run_line_magic("pip", f'install "course_lib[sd] @ git+https://github.com/sd-course/latent-diffusion-course@2026-fall" "{torch_pin}"')
    if int(version("ipywidgets").split(".")[0]) >= 8:  # Colab shows ipywidgets 8 through this manager
        from google.colab import output
        output.enable_custom_widget_manager()

# %% tags=["parameters"]
FAST = False                    # True in CI: the tiny model at 64 px, a few steps
MODEL = "auto"                  # "auto": SD v1.5 on a GPU, the tiny twin otherwise; or "tiny", a hub id, a folder
REVISION = None                 # None: the course's pinned commit of the model repo
DATASET = "auto"                # "auto": HUB_DATASET with the real model, the shapes folder with the twin;
                                # or a Hub dataset id, or a folder of images with metadata.jsonl
HUB_DATASET = "lambdalabs/naruto-blip-captions"
IMAGE_COLUMN, CAPTION_COLUMN = "image", "text"
RUN_NAME = "my-first-lora"      # a new name starts a new run; the same name resumes it
RESOLUTION = 512
RANK = 4
LEARNING_RATE = 1e-4
MAX_TRAIN_STEPS = 1000
TRAIN_BATCH_SIZE = 1
GRADIENT_ACCUMULATION_STEPS = 1
GRADIENT_CHECKPOINTING = False  # True: about 30% slower, much less activation memory (for small GPUs)
CHECKPOINT_EVERY = 100          # a disconnect loses at most this many steps
VALIDATION_EVERY = 250          # validation images every this many steps (None: never)
VALIDATION_PROMPTS = None       # None: chosen to suit the dataset below
SEEDS = (0, 1)                  # the same seeds before and after
USE_DRIVE = True                # on Colab: copy checkpoints to Google Drive
DRIVE_FOLDER = "/content/drive/MyDrive/sd-course/lora-workshop"

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

from course_lib._io import load_safetensors
from course_lib.data import load_image_dataset, shapes_batch, write_image_folder
from course_lib.lora import lora_layers, remove_lora
from course_lib.sd import (DEFAULT_MODEL_ID, DEFAULT_REVISION, LORA_WEIGHT_NAME, LoRATrainingConfig,
                           before_after_grid, generate, load_sd_components, pick_precision, train_lora)
from course_lib.sd.fallback import load_model_or_tiny, tiny_model_folder
from course_lib.viz import plot_losses, save_image_grid, show_images

REVISION = REVISION or DEFAULT_REVISION
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    torch.set_num_threads(1)  # the tiny model's layers are too small to gain from threads
OUT = Path("outputs/10_lora_workshop")
OUT.mkdir(parents=True, exist_ok=True)
plt.rcParams["figure.dpi"] = 80          # inline figures: readable, and small enough to keep in git

# %% [markdown]
# ## 1. Check the runtime
#
# Which GPU did Colab give you, how much memory is free, and which precision will training use?
# `pick_precision` applies the rule from lecture 8's library: bf16 on GPUs of compute capability 8.0 or
# newer (A100, L4), fp16 with a gradient scaler on older ones (the T4 is 7.5), fp32 on a CPU. In every
# case the LoRA matrices themselves stay in fp32.

# %%
precision = pick_precision(DEVICE)
if DEVICE == "cuda":
    free, total = torch.cuda.mem_get_info()
    major, minor = torch.cuda.get_device_capability()
    print(f"GPU:                {torch.cuda.get_device_name()} (compute capability {major}.{minor})")
    print(f"GPU memory:         {total / 2**30:.1f} GiB total, {free / 2**30:.1f} GiB free")
    if total < 14 * 2**30:
        print("  less than the T4's 16 GB: set GRADIENT_CHECKPOINTING = True (and keep TRAIN_BATCH_SIZE = 1)")
else:
    print("GPU:                none. This run uses the tiny offline twin of SD v1.5 (same code, random weights).")
    print("                    On Colab: Runtime > Change runtime type > T4 GPU, then run all cells again.")
print(f"mixed precision:    {precision.mixed_precision!r}: frozen weights in {precision.weight_dtype}, "
      f"LoRA weights in {precision.lora_dtype}, gradient scaler {'on' if precision.use_grad_scaler else 'off'}")


# %% [markdown]
# ## 2. Load the model
#
# On a GPU this loads SD v1.5 at the course's pinned revision, directly in the precision chosen above (fp16
# on a T4: half the download memory). Anywhere else, or if the download fails, it loads the tiny twin, and
# the settings shrink to match it: 64 x 64 pixels and a larger learning rate (a random model needs bigger
# steps to show any change in a few hundred updates).

# %%
if FAST and MODEL == "auto":
    MODEL = "tiny"
components, SOURCE, IS_TINY = load_model_or_tiny(MODEL, REVISION, device=DEVICE, dtype=precision.weight_dtype)
VALIDATION_STEPS = 25                       # sampler steps for validation and before/after images
if IS_TINY:
    RESOLUTION = components.vae_scale_factor * components.unet.config.sample_size    # 64
    LEARNING_RATE = 1e-3
    if FAST:
        MAX_TRAIN_STEPS, CHECKPOINT_EVERY, VALIDATION_EVERY, VALIDATION_STEPS = 30, 10, 15, 5
    print(f"TINY TWIN ({SOURCE}) at {RESOLUTION} x {RESOLUTION} px: the workshop's code path with random "
          f"weights.\nOn a Colab T4 the same cells train a LoRA for the real {DEFAULT_MODEL_ID}.")
else:
    print(f"REAL MODEL: {SOURCE} (revision {REVISION}) in {components.unet.dtype} on {DEVICE}")
print(f"training: {MAX_TRAIN_STEPS} steps at {RESOLUTION} px, rank {RANK}, learning rate {LEARNING_RATE:g}")

# %% [markdown]
# ## 3. The data
#
# Training needs pairs of an image and its caption. Three ways to provide them:
#
# 1. **A Hub dataset** with an image column and a text column, e.g. `lambdalabs/naruto-blip-captions`
#    (`image`, `text`; captions written by the BLIP captioning model). Set `DATASET` to its id.
# 2. **Your own pictures**: put 10-50 images in a folder (on Colab, in your Drive, e.g.
#    `/content/drive/MyDrive/my-lora-images`), set `DATASET` to that folder and run the cell. If the
#    folder has no `metadata.jsonl`, the cell writes one that gives every image the caption
#    `OWN_CAPTION` below. Choose a rare token for a new subject (`"a photo of sks dog"`), or describe a
#    style (`"a painting in sks style"`); better still, edit the file and describe each image.
# 3. **Offline / FAST**: 32 pictures of the shapes world (yellow squares, varied size and place) with a
#    caption the model has never seen, `"a photo of a sks toy"`, written by
#    `course_lib.data.write_image_folder`.
#
# A folder in this layout (`00000.png`, ..., plus `metadata.jsonl` with one `{"file_name": ..., "text": ...}`
# line per image) is what the `datasets` library calls an *imagefolder*.

# %%
OWN_CAPTION = "a photo of sks dog"
CONCEPT = "a photo of a sks toy"             # the offline concept's caption


def write_metadata(folder: Path, caption: str) -> None:
    """Give every image in ``folder`` the same caption, in the imagefolder format."""
    images = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not images:
        raise ValueError(f"no .png/.jpg/.jpeg/.webp images in {folder}")
    lines = [json.dumps({"file_name": name, "text": caption}) for name in images]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {folder / 'metadata.jsonl'}: {len(images)} images captioned {caption!r}")


if DATASET == "auto":
    DATASET = "shapes" if IS_TINY else HUB_DATASET
if DATASET == "shapes":
    concept = shapes_batch(32, seed=0, image_size=RESOLUTION, pairs=[("yellow", "square")])
    DATASET = str(write_image_folder(OUT / "data_sks_toy", concept["image"], [CONCEPT] * 32, overwrite=True))
    default_prompts = [CONCEPT, "a sks toy at the top left"]
    control_prompt = "a red circle"
elif Path(DATASET).expanduser().is_dir():
    folder = Path(DATASET).expanduser()
    if not (folder / "metadata.jsonl").is_file():
        write_metadata(folder, OWN_CAPTION)
    default_prompts = [OWN_CAPTION, OWN_CAPTION + " on the beach"]
    control_prompt = "a photo of a lighthouse at sunset"
else:  # a Hub dataset id: prompts in the spirit of the Naruto dataset card
    default_prompts = ["Bill Gates with a hoodie", "a cat wearing a red scarf"]
    control_prompt = "a photo of a lighthouse at sunset"
VALIDATION_PROMPTS = list(VALIDATION_PROMPTS or default_prompts)

dataset = load_image_dataset(DATASET, image_size=RESOLUTION, image_column=IMAGE_COLUMN,
                             caption_column=CAPTION_COLUMN)
print(f"{DATASET}: {len(dataset)} images; validation prompts {VALIDATION_PROMPTS}")
preview = [dataset[i] for i in range(min(6, len(dataset)))]
fig = show_images(torch.stack([item["image"] for item in preview]),
                  titles=[item["caption"][:60] for item in preview], ncols=6, figsize=(12, 2.6))
fig.savefig(OUT / "dataset_preview.png", dpi=80)

# %% [markdown]
# ## 4. Where the checkpoints go: Google Drive
#
# A Colab runtime is disposable: when it disconnects, its disk (`/content`) is gone. `train_lora` writes a
# checkpoint every `CHECKPOINT_EVERY` steps to its output folder and, with `copy_checkpoints_to`, copies
# each one to a second folder: on Colab, your Google Drive. When you re-run the notebook after a
# disconnect, `resume="latest"` searches both folders and continues from the newest complete checkpoint,
# with the same data order and random numbers, as if nothing had happened.
#
# Offline, a local folder stands in for Drive, so the same mechanism runs (and is tested) everywhere.

# %%
if ON_COLAB and USE_DRIVE and not IS_TINY:
    from google.colab import drive
    drive.mount("/content/drive")           # asks for permission the first time
    drive_root = Path(DRIVE_FOLDER)
else:
    drive_root = OUT / "drive_stand_in"
OUTPUT_DIR = OUT / RUN_NAME
COPY_TO = drive_root / RUN_NAME / "checkpoints"

config = LoRATrainingConfig(
    dataset=DATASET, image_column=IMAGE_COLUMN, caption_column=CAPTION_COLUMN,
    output_dir=str(OUTPUT_DIR), pretrained_model_name_or_path=SOURCE, revision=REVISION,
    resolution=RESOLUTION, rank=RANK, learning_rate=LEARNING_RATE, max_train_steps=MAX_TRAIN_STEPS,
    train_batch_size=TRAIN_BATCH_SIZE, gradient_accumulation_steps=GRADIENT_ACCUMULATION_STEPS,
    gradient_checkpointing=GRADIENT_CHECKPOINTING, validation_prompts=tuple(VALIDATION_PROMPTS),
    validation_every=VALIDATION_EVERY, num_inference_steps=VALIDATION_STEPS,
    checkpoint_every=CHECKPOINT_EVERY, copy_checkpoints_to=str(COPY_TO), keep_last=2,
    resume="latest", seed=0, device=DEVICE)
print(json.dumps(config.to_dict(), indent=1))

# %% [markdown]
# ## 5. Train
#
# `train_lora` freezes the three networks, wraps the UNet's attention projections with rank-`RANK`
# adapters, and minimises $\lVert \epsilon - \epsilon_\theta(z_t, t, c) \rVert^2$ over the adapters only.
# If this cell finds a checkpoint of the same `RUN_NAME` (here or on Drive), it resumes; if the run is
# already complete, it only writes the LoRA file again. Run it again after a disconnect: that is all
# there is to resuming.

# %%
if lora_layers(components.unet):     # running this cell a second time: start from the clean UNet,
    remove_lora(components.unet)     # the checkpoint brings the trained adapters back
if DEVICE == "cuda":
    torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
result = train_lora(config, components)
elapsed = time.perf_counter() - t0

if result.resumed_from is not None:
    print(f"resumed from the checkpoint at step {result.resumed_from} (found {result.checkpoint.parent})")
done = len(result.losses) - (result.resumed_from or 0)
print(f"{done} steps in this session, {elapsed / 60:.1f} min "
      f"({elapsed / max(done, 1):.2f} s per step including validation images), measured on this runtime")
if DEVICE == "cuda":
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (measured on this runtime)")
print(f"LoRA weights: {result.lora_path} ({result.lora_path.stat().st_size / 1e6:.2f} MB)")
drive_copy = COPY_TO.parent / LORA_WEIGHT_NAME
drive_copy.parent.mkdir(parents=True, exist_ok=True)
shutil.copy2(result.lora_path, drive_copy)     # the final file survives a disconnect too
print(f"copied to {drive_copy}; checkpoints there: {sorted(p.name for p in COPY_TO.glob('checkpoint-*'))}")

# %%
fig = plot_losses(result.losses, smooth=0.95, title="training loss (one batch per step)")
fig.savefig(OUT / "loss.png", dpi=80)
if result.validation_images:
    steps = sorted(result.validation_images)
    grid = torch.cat([result.validation_images[s] for s in steps])
    path = save_image_grid(grid, OUT / "validation.png", nrow=len(VALIDATION_PROMPTS),
                           row_labels=[f"step {s}" for s in steps], col_labels=VALIDATION_PROMPTS)
    fig = show_images(grid, titles=[f"step {s}: {p}"[:50] for s in steps for p in VALIDATION_PROMPTS],
                      ncols=len(VALIDATION_PROMPTS) * min(2, len(steps)), figsize=(10, 1.6 * len(steps) + 1))
else:
    print("no validation images in this session (the run was already complete, or VALIDATION_EVERY is None)")

# %% [markdown]
# The loss is noisy because every step sees one image at one random timestep; what matters is the
# smoothed curve, and the images. Validation images use the same prompts and seeds every time, so a
# change between rows is the LoRA's doing.
#
# ## 6. Before and after, same seeds
#
# `before_after_grid` draws each (prompt, seed) twice: with the LoRA scale at 0 (the base model) and at 1.
# The last prompt does not mention the concept: it shows what else the LoRA changed (ideally little).

# %%
pipe = components.pipeline()
pipe.set_progress_bar_config(disable=IS_TINY)
prompts = VALIDATION_PROMPTS + [control_prompt]
pairs = [(p, s) for p in prompts for s in SEEDS]
grid = before_after_grid(pipe, [p for p, _ in pairs], [s for _, s in pairs], lora_scale=1.0,
                         path=OUT / "before_after.png", num_inference_steps=VALIDATION_STEPS,
                         guidance_scale=7.5, height=RESOLUTION, width=RESOLUTION)
titles = [f"{kind}: {p[:30]} (seed {s})" for kind in ("before", "after") for p, s in pairs]
fig = show_images(grid, titles=titles, ncols=len(pairs), figsize=(2.2 * len(pairs), 5.2))
after = grid[len(pairs):]
print(f"mean |after - before| per image: {[round(v, 3) for v in (after - grid[:len(pairs)]).abs().mean((1, 2, 3)).tolist()]}")

# %% [markdown]
# ## 7. Load it the way others will: plain diffusers
#
# The LoRA file uses diffusers' key names and records rank and alpha, so anyone can load it on top of the
# same base model with `pipe.load_lora_weights(folder)` and set its strength with
# `cross_attention_kwargs={"scale": s}`. With the same seed, the picture matches the one above.

# %%
fresh = load_sd_components(SOURCE, REVISION, torch_dtype=None if IS_TINY else precision.weight_dtype,
                           device=DEVICE).pipeline()
fresh.set_progress_bar_config(disable=IS_TINY)
from diffusers.utils import logging as diffusers_logging
diffusers_logging.set_verbosity_error()   # silence "no LoRA keys for the text encoder": ours has none
fresh.load_lora_weights(str(OUTPUT_DIR), weight_name=LORA_WEIGHT_NAME)
diffusers_logging.set_verbosity_warning()
again = generate(fresh, pairs[0][0], pairs[0][1], lora_scale=1.0, num_inference_steps=VALIDATION_STEPS,
                 guidance_scale=7.5, height=RESOLUTION, width=RESOLUTION)
print(f"plain diffusers vs the training pipeline, {pairs[0]}: max |difference| = {(again[0] - after[0]).abs().max():.2e}")
del fresh
if DEVICE == "cuda":
    torch.cuda.empty_cache()

# %% [markdown]
# To share it: log in with `huggingface_hub.login()`, then `HfApi().create_repo("you/my-first-lora")` and
# `HfApi().upload_folder(folder_path=OUTPUT_DIR, repo_id="you/my-first-lora")`, and write the base model
# and the trigger words in the model card. It is about 3 MB at rank 4.
#
# ## 8. What a disconnect looks like (on the tiny twin, so it takes seconds)
#
# To see resuming work without waiting for a real disconnect, we simulate one on the tiny twin (whatever
# model the rest of the notebook used): a run is stopped half-way by an exception, its local folder is
# deleted (a dead runtime loses its disk), and the same call is made again. It finds the copy in the
# "Drive" folder and finishes. Its final LoRA is compared with a run that was never interrupted.

# %%
demo = OUT / "disconnect_demo"
shutil.rmtree(demo, ignore_errors=True)
demo_steps = 20
demo_data = write_image_folder(demo / "data", shapes_batch(8, seed=0, image_size=64, pairs=[("yellow", "square")])["image"],
                               [CONCEPT] * 8)

def demo_config(name: str) -> LoRATrainingConfig:
    return LoRATrainingConfig(dataset=str(demo_data), output_dir=str(demo / name), resolution=64,
                              pretrained_model_name_or_path=str(tiny_model_folder()), rank=4,
                              learning_rate=1e-3, max_train_steps=demo_steps, checkpoint_every=5,
                              copy_checkpoints_to=str(demo / "drive" / name), resume="latest", seed=0,
                              device="cpu")


class Disconnected(Exception):
    pass


def pull_the_plug(step, loss):
    if step + 1 == 12:          # two steps after the checkpoint at step 10
        raise Disconnected(f"runtime disconnected after step {step + 1}")

threads = torch.get_num_threads()
torch.set_num_threads(1)                                     # tiny CPU work: one thread is fastest
try:
    train_lora(demo_config("run"), callback=pull_the_plug)
except Disconnected as err:
    print(err)
print("on 'Drive':", sorted(p.name for p in (demo / "drive" / "run").iterdir()))
shutil.rmtree(demo / "run")                                  # the runtime's disk is gone

resumed = train_lora(demo_config("run"))                     # re-running the notebook does this
straight = train_lora(demo_config("straight"))               # a run that was never interrupted
torch.set_num_threads(threads)
print(f"resumed from step {resumed.resumed_from}; losses recorded: {len(resumed.losses)}")
a, b = load_safetensors(resumed.lora_path), load_safetensors(straight.lora_path)
largest = max((a[k] - b[k]).abs().max().item() for k in a)
print(f"interrupted + resumed vs uninterrupted: {len(a)} LoRA tensors, max |difference| = {largest}")

fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(straight.losses, "o-", ms=3, label="never interrupted")
ax.plot(range(resumed.resumed_from, demo_steps), resumed.losses[resumed.resumed_from:], "x", ms=7,
        label=f"resumed at step {resumed.resumed_from}")
ax.axvline(12, color="C3", ls=":", label="disconnect")
ax.set_xlabel("step")
ax.set_ylabel("loss")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "disconnect_demo.png", dpi=80)

# %% [markdown]
# Steps 11 and 12 were computed twice (once before the "disconnect", once after resuming from step 10),
# and gave the same numbers both times: each step's data and noise are a function of the seed and the
# step number, and the checkpoint stores the random generators. That is what makes resuming exact.
#
# ## 9. Where to go from here
#
# - **More steps or a higher rank** if the concept does not show yet (try 2,000 steps, or rank 8-16);
#   fewer steps or a lower LoRA scale if everything starts to look like your dataset (overfitting).
# - **Min-SNR weighting** (`snr_gamma=5.0` in the config) often converges faster (Hang et al. 2023 report 3.4x
#   faster convergence on ImageNet; lecture 6 explains the weighting; not measured for LoRA here).
# - **8-bit Adam** (`use_8bit_adam=True`, needs `bitsandbytes`) and **gradient checkpointing** save memory
#   on smaller GPUs.
# - Captions matter: a consistent trigger phrase and honest descriptions of everything *else* in each
#   picture teach the model what belongs to the concept.
# - **More than one GPU** (a lab machine, not Colab): `accelerate launch --multi_gpu --num_processes N
#   -m course_lib.sd.launch --config training_config.json --output_dir outputs/lora
#   --copy_checkpoints_to none` reruns this workshop's settings (the options replace its Colab paths).
#   Each GPU takes `train_batch_size` images, so an update sees N times as many; see the README section
#   "Fine-tuning SD v1.5 on more than one GPU".

# %% [markdown]
# ## Check your understanding
#
# Try to answer before you open the answers.
#
# 1. Your Colab T4 run stops at step 640 with CHECKPOINT_EVERY = 100. After reconnecting and running all cells, from which step does training continue, and which files make that possible?
#    <details><summary>Answer</summary>
#
#    From step 600: the newest complete checkpoint copied to Drive (checkpoint-00000600 with the LoRA weights, optimizer state, RNG states and loss history). The local copy is lost with the runtime; resume='latest' also searches copy_checkpoints_to.
#
#    </details>
#
# 2. Why does the workshop train in fp16 with a gradient scaler on a T4 but in bf16 on an A100?
#    <details><summary>Answer</summary>
#
#    The T4 (compute capability 7.5) has no fast bf16; fp16's small range lets tiny gradients underflow, so the loss is scaled up before backward and the gradients scaled down before the step. bf16 has fp32's exponent range and needs no scaler; GPUs from capability 8.0 run it fast.
#
#    </details>
#
# 3. Why do before/after comparisons use fixed seeds, and why include a prompt that does not mention your concept?
#    <details><summary>Answer</summary>
#
#    With the same seed the starting noise is identical, so any difference is due to the LoRA, not chance. The unrelated prompt shows whether the LoRA changed the model beyond the concept (over-fitting / language drift).
#
#    </details>
#
# 4. The published figure says about 11 GB for LoRA training at 512 px. Name two settings in the config that reduce memory further, and what each costs.
#    <details><summary>Answer</summary>
#
#    gradient_checkpointing=True (recomputes activations in the backward pass: ~30% slower); use_8bit_adam=True (8-bit optimizer states: needs bitsandbytes, slightly noisier updates); also a smaller resolution or batch size with gradient_accumulation_steps to keep the effective batch.
#
#    </details>
#
# 5. The loss curve barely moves, but the validation images change a lot. Is the LoRA learning?
#    <details><summary>Answer</summary>
#
#    Probably yes: the noise-prediction loss is dominated by the random timestep (for eps-prediction it is large at small t and tiny near t = 1000, as lecture 3's per-timestep plot shows), so per-step values are noisy and the average falls only a little. Judge by fixed-seed images and, if needed, a fixed-noise evaluation loss as in lecture 8.
#
#    </details>
#

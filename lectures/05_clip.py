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
# # Lecture 5 — Text conditioning with CLIP
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/2026-fall/lectures/05_clip.ipynb)
#
# Stable Diffusion does not read your prompt; a **text encoder** does, and the UNet only sees the vectors it
# produces. That encoder comes from CLIP (Radford et al. 2021), a model trained to tell which caption belongs
# to which image. This lecture takes CLIP apart and trains a tiny one on the course's world of coloured shapes.
#
# **What you will learn**
# - what Stable Diffusion v1.x really feeds its UNet: CLIP ViT-L/14's text encoder, **77 tokens × 768
#   numbers**, *all 77 token vectors* (the last hidden state), not one pooled sentence vector;
# - tokenisation: `<bos> … <eos>`, padding to a fixed length, truncation, and the attention mask;
# - contrastive pre-training: the logits matrix and CLIP's **symmetric cross-entropy** loss;
# - cosine similarity in a shared embedding space and **zero-shot classification** with prompts;
# - how a causal text encoder makes each token's vector depend on the words before it.
#
# **Prerequisites**: lecture 2 (attention, transformers), PyTorch basics. Lecture 4 is not needed.
#
# **Time**: `FAST=True` under a minute. The full lesson (training a tiny CLIP for 800 steps) takes about 3 minutes
# on a 2-core CPU (measured: 2¾ minutes on our 2-core test machine; twice that when the machine was shared),
# about a minute on a Colab GPU.

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
FAST = False            # True: tiny sizes that only check the plumbing (CI)
SEED = 0
THREADS = 1             # torch CPU threads; tiny models gain little from more, and lose a lot on a busy CPU
NUM_TRAIN_IMAGES = 10000
TRAIN_STEPS = 800
BATCH_SIZE = 128
IMAGE_SIZE = 32
NUM_VAL_IMAGES = 1200

# %%
if FAST:  # derived sizes: every section still runs, the numbers are not meant to be good
    NUM_TRAIN_IMAGES, TRAIN_STEPS, BATCH_SIZE, IMAGE_SIZE, NUM_VAL_IMAGES = 512, 40, 32, 16, 120

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.offsetbox import AnnotationBbox, OffsetImage
from tqdm.auto import tqdm

from course_lib.data import COLOURS, POSITIONS, SHAPES, all_pairs, caption_for, shapes_batch
from course_lib.minisd import HELD_OUT_PAIRS, training_captions
from course_lib.sd import count_parameters, sd15_config, sd15_empty_model
from course_lib.text import (CaptionTokenizer, CLIPConfig, TinyCLIP, contrastive_loss, cosine_similarity,
                             zero_shot_classify)
from course_lib.train import cosine_schedule_with_warmup
from course_lib.viz import attach_widget, plot_losses, show_images, to_uint8

torch.set_num_threads(THREADS)
torch.manual_seed(SEED)
plt.rcParams["figure.dpi"] = 80   # inline figures: readable, and small enough to keep in git


# %% [markdown]
# ## 1. What Stable Diffusion's UNet actually reads
#
# Stable Diffusion v1.x conditions on text with the **text tower of OpenAI's CLIP ViT-L/14** (frozen, never
# trained by SD). The facts, and two errors that circulate widely:
#
# | | SD v1.x text encoder (CLIP ViT-L/14) | CLIP ViT-B/32 text encoder |
# |---|---|---|
# | tokens per prompt | 77 (`<|startoftext|>`, ≤ 75 BPE tokens, `<|endoftext|>`, padding) | 77 |
# | width per token | **768** | 512 |
# | layers / heads | 12 / 12 | 12 / 8 |
# | parameters | 123 M | 63 M |
#
# - **Error 1: "SD's text embedding is 512-dimensional."** 512 is ViT-B/32's width, the model in many CLIP
#   tutorials. SD v1's UNet has `cross_attention_dim = 768` because ViT-L/14's text encoder is 768 wide.
#   (SD 2.x switched to OpenCLIP ViT-H/14: 1024.)
# - **Error 2: "the UNet is conditioned on the CLIP sentence embedding."** CLIP's *training* compares one pooled
#   vector per caption (the `<eos>` token's features, projected). SD v1 does not use it: the UNet's
#   cross-attention reads the encoder's **last hidden state, all 77 token vectors**, shape $(B, 77, 768)$, as keys
#   and values. Every pixel can look at every word. (SDXL adds a pooled vector as an *extra* signal next to the
#   per-token ones; it never replaces them.)
#
# We can check both without downloading a byte: `course_lib.sd` builds the real architectures on PyTorch's
# **meta device** (real shapes, no storage) from the real config files.

# %%
from transformers import CLIPTextConfig, CLIPTextModel

sd_text_encoder = sd15_empty_model("text_encoder")                # CLIP ViT-L/14 text tower, on "meta"
with torch.device("meta"):
    b32_text_encoder = CLIPTextModel(CLIPTextConfig())            # transformers' defaults = ViT-B/32's text tower

prompt_ids = torch.zeros(1, 77, dtype=torch.long, device="meta")  # one prompt, padded to 77 tokens
for name, encoder in (("SD v1.x = CLIP ViT-L/14", sd_text_encoder), ("CLIP ViT-B/32", b32_text_encoder)):
    out = encoder(input_ids=prompt_ids)
    print(f"{name:<24} {count_parameters(encoder) / 1e6:6.1f} M parameters   "
          f"last_hidden_state {tuple(out.last_hidden_state.shape)}   pooler_output {tuple(out.pooler_output.shape)}")
print(f"SD v1.5 UNet cross_attention_dim = {sd15_config('unet')['cross_attention_dim']}, "
      f"tokenizer model_max_length = {sd15_config('tokenizer')['model_max_length']}")

# %% [markdown]
# In diffusers' `StableDiffusionPipeline` the prompt goes through exactly these lines (simplified):
#
# ```python
# ids = tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
# prompt_embeds = text_encoder(ids)[0]          # last_hidden_state: (B, 77, 768), NOT pooler_output
# noise_pred = unet(latents, t, encoder_hidden_states=prompt_embeds).sample
# ```
#
# Two details worth knowing: SD v1's tokenizer pads with `<|endoftext|>` itself (it has no separate pad token),
# and SD v1 passes **no** attention mask, neither to the text encoder nor to the UNet, so cross-attention also
# reads the vectors at the padding positions. Because CLIP's text encoder is causal, those vectors come *after*
# the prompt and summarise it. Our miniature pipeline (lecture 6) masks padding instead; both work as long as
# training and sampling agree.
#
# ## 2. Tokenisation, padding, truncation, attention mask
#
# CLIP uses byte-pair encoding with 49,408 tokens. Our captions come from a tiny grammar (`a [size] colour shape
# [at the position]`), so a word-level tokenizer with CLIP's conventions is enough (`course_lib.text.CaptionTokenizer`):
# `<bos>` first, `<eos>` after the last word, `<pad>` up to a fixed length $L$ (CLIP: 77; ours: 16), and an
# **attention mask** that is 1 on real tokens and 0 on padding. Truncation cuts words, never `<eos>`.

# %%
tokenizer = CaptionTokenizer.from_texts(training_captions(), max_length=16)
print(tokenizer, "\nvocabulary:", tokenizer.vocab)

examples = ["a red circle", "a small blue square at the top left", "a purple circle",
            "a large yellow triangle in the center"]
batch = tokenizer(examples)                                        # padding="max_length" (CLIP's way)
for text, ids, mask in zip(examples, batch["input_ids"], batch["attention_mask"]):
    print(f"{text!r:42} ids {ids.tolist()}\n{'':42} mask {mask.tolist()}")
print("\npadding='longest' -> shape", tuple(tokenizer(examples, padding="longest")["input_ids"].shape),
      "| truncation to max_length=5:", tokenizer.batch_decode(tokenizer(examples, max_length=5)["input_ids"],
                                                              skip_special_tokens=False)[1])

# %%
tokens = [[tokenizer.vocab[i] for i in row] for row in batch["input_ids"].tolist()]
fig, ax = plt.subplots(figsize=(11, 2.6))
ax.imshow(batch["attention_mask"], cmap="Greens", vmin=0, vmax=2.5, aspect="auto")
for r, row in enumerate(tokens):
    for c, token in enumerate(row):
        ax.text(c, r, token, ha="center", va="center", fontsize=7,
                color="black" if batch["attention_mask"][r, c] else "grey")
ax.set_yticks(range(len(examples)), examples, fontsize=8)
ax.set_xticks(range(tokenizer.max_length))
ax.set_xlabel("position (green: attention_mask = 1, white: padding)")
ax.set_title("tokens padded to max_length = 16 ('purple' is not in the vocabulary: <unk>)");

# %% [markdown]
# CLIP's text transformer is **causal**: token $i$ attends only to tokens $0..i$ (and, with the mask, never to
# padding). Two consequences you can verify: the features of real tokens do not depend on how much padding
# follows, and the `<eos>` token, the last real one, is the only position that has seen the whole caption, so
# CLIP reads its sentence vector there (`pooled`).

# %% [markdown]
# ## 3. The captioned shapes world
#
# One coloured shape on black, with a caption that names colour and shape and, half of the time, size and position.
# Two colour-shape pairs (green triangle, yellow circle) are **held out**: no training image shows them, so we can
# later test whether the model *composes* "green" and "triangle" on its own.

# %%
print("held out:", HELD_OUT_PAIRS)
train = shapes_batch(NUM_TRAIN_IMAGES, seed=SEED, image_size=IMAGE_SIZE, exclude_pairs=HELD_OUT_PAIRS,
                     caption_style="mixed")
val = shapes_batch(NUM_VAL_IMAGES, seed=SEED + 10_000, image_size=IMAGE_SIZE, caption_style="full")  # every pair
fig = show_images(train["image"][:16], titles=train["caption"][:16], ncols=8, figsize=(13, 4.4))

# %% [markdown]
# ## 4. Contrastive pre-training
#
# A batch holds $B$ images and their $B$ captions. Two encoders map them into one space of dimension $D$, and both
# embeddings are L2-normalised, so a dot product is a **cosine similarity** in $[-1, 1]$:
#
# $$I_e = \frac{W_i f_{\text{img}}(x)}{\|W_i f_{\text{img}}(x)\|},\quad T_e = \frac{W_t f_{\text{txt}}(y)}{\|W_t f_{\text{txt}}(y)\|},\qquad
# \text{logits} = e^{\tau}\, I_e T_e^{\top} \in \mathbb R^{B \times B}.$$
#
# Row $i$ of the logits matrix scores image $i$ against every caption; the right one is on the diagonal. The loss
# is a cross-entropy in both directions: each image must pick its caption among $B$, and each caption its image:
#
# $$\mathcal L = \tfrac12\Big[\underbrace{\mathrm{CE}(\text{logits}, [0..B{-}1])}_{\text{images} \to \text{texts (rows)}} +
# \underbrace{\mathrm{CE}(\text{logits}^{\top}, [0..B{-}1])}_{\text{texts} \to \text{images (columns)}}\Big].$$
#
# $\tau$ is a learned log-temperature (initialised so that $e^{\tau} = 1/0.07 \approx 14.3$, capped at 100). At
# initialisation the embeddings carry no information about which caption goes with which image, so the loss
# starts near $\log B$ (chance: the right partner is one of $B$), a little above it when the random
# similarities happen to be spread out.
#
# Our TinyCLIP: a causal transformer over tokens (2 layers, width 64) and a small CNN over pixels.

# %%
config = (CLIPConfig.tiny(vocab_size=tokenizer.vocab_size, image_size=IMAGE_SIZE) if FAST else
          CLIPConfig.small(vocab_size=tokenizer.vocab_size, image_size=IMAGE_SIZE, width=64, layers=2,
                           embed_dim=64, image_widths=(16, 32, 64)))
torch.manual_seed(SEED)
clip = TinyCLIP(config)
print(f"text encoder {count_parameters(clip.text_encoder):,} + image encoder "
      f"{count_parameters(clip.image_encoder):,} + projections = {count_parameters(clip):,} parameters")

train_tokens = tokenizer(train["caption"], max_length=config.max_length)

# one batch, the loss written out by hand, checked against course_lib's contrastive_loss
idx = torch.arange(8)
with torch.no_grad():
    I_e = clip.encode_image(train["image"][idx])                                   # (B, D), unit length
    T_e = clip.encode_text(train_tokens["input_ids"][idx], train_tokens["attention_mask"][idx])
    logits = clip.logit_scale.exp() * I_e @ T_e.T                                  # (B images, B texts)
    labels = torch.arange(len(idx))
    by_hand = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    library = contrastive_loss(I_e, T_e, clip.logit_scale)
print(f"loss by hand {by_hand:.4f}, contrastive_loss {library:.4f}, log(B) = {np.log(len(idx)):.4f}")
logits_before = logits

# %%
optimizer = torch.optim.AdamW(clip.parameters(), lr=2e-3, weight_decay=0.01)
lr_schedule = cosine_schedule_with_warmup(optimizer, warmup_steps=max(1, TRAIN_STEPS // 20),
                                          total_steps=TRAIN_STEPS)
generator = torch.Generator().manual_seed(SEED)
losses, temperatures = [], []
clip.train()
for step in tqdm(range(TRAIN_STEPS), desc="CLIP"):
    idx = torch.randint(0, NUM_TRAIN_IMAGES, (BATCH_SIZE,), generator=generator)
    image_embeds = clip.encode_image(train["image"][idx])                                      # (B, D)
    text_embeds = clip.encode_text(train_tokens["input_ids"][idx], train_tokens["attention_mask"][idx])
    loss = contrastive_loss(image_embeds, text_embeds, clip.logit_scale)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    lr_schedule.step()
    losses.append(loss.item())
    temperatures.append(clip.logit_scale.exp().item())
clip.eval()

fig, axes = plt.subplots(1, 2, figsize=(11, 3.3))
plot_losses(losses, ax=axes[0], log_y=False, title="symmetric contrastive loss")
axes[0].axhline(np.log(BATCH_SIZE), color="grey", linestyle=":", label="log B (chance)")
axes[0].legend()
axes[1].plot(temperatures)
axes[1].set_title("learned logit scale exp(tau)")
axes[1].set_xlabel("step")
fig.tight_layout()


# %% [markdown]
# The loss does not go to zero, and should not: a batch of 128 captions from a small grammar contains
# duplicates ("a red circle" may describe five different images). Those pairs are **false negatives**: the loss
# asks the model to tell apart images that their captions do not distinguish. Real CLIP has the same problem at a
# smaller rate (its 400 M web captions, as Radford et al. 2021 report, are rarely identical).
#
# ## 5. The logits matrix, before and after
#
# Eight images with eight different captions. Rows are captions, columns are images; a trained CLIP puts its
# mass on the diagonal. Before training, each row is nearly constant: the score depends on the caption, hardly on
# the image. The right-hand panel is the cosine-similarity matrix between the same captions and images: the logits
# before the temperature $e^{\tau}$ multiplies them. Off the diagonal, look at which mismatches score high: those
# that share a colour, a shape or a position with the caption.

# %%
def plot_similarity(ax, matrix, images, captions, title, fmt="{:.2f}", show_captions=True):
    """Heat map: rows = captions, columns = images (drawn as thumbnails under the columns)."""
    matrix = matrix.detach().numpy()
    im = ax.imshow(matrix, cmap="viridis")
    ax.set_yticks(range(len(captions)), captions if show_captions else [""] * len(captions), fontsize=8)
    ax.set_xticks(range(len(images)), [""] * len(images))
    zoom = 20 / images.shape[-1]
    for j, pixels in enumerate(to_uint8(images)):
        ax.add_artist(AnnotationBbox(OffsetImage(pixels, zoom=zoom), (j, len(captions) - 0.5),
                                     xybox=(0, -14), boxcoords="offset points", frameon=False,
                                     annotation_clip=False))
    for (r, c), v in np.ndenumerate(matrix):
        ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=6,
                color="white" if v < matrix.mean() else "black")
    ax.set_title(title, fontsize=10)
    plt.colorbar(im, ax=ax, fraction=0.046)


# eight validation images with eight distinct captions
chosen, seen = [], set()
for i, caption in enumerate(val["caption"]):
    key = (int(val["colour"][i]), int(val["shape"][i]))
    if key not in seen:
        seen.add(key)
        chosen.append(i)
    if len(chosen) == 8:
        break
chosen = torch.tensor(chosen)
images, captions = val["image"][chosen], [val["caption"][i] for i in chosen]
ids = tokenizer(captions, max_length=config.max_length)
with torch.no_grad():
    out = clip(ids["input_ids"], images, ids["attention_mask"])
    similarity = cosine_similarity(out.text_embeds, out.image_embeds)     # (texts, images)

fig, axes = plt.subplots(1, 3, figsize=(20, 5.2), gridspec_kw={"width_ratios": [1, 1, 0.8]},
                         layout="constrained")
plot_similarity(axes[0], logits_before.T[:8, :8], train["image"][:8], train["caption"][:8],
                "logits before training (a training batch)", "{:.1f}")
plot_similarity(axes[1], out.logits_per_text, images, captions, "logits after training", "{:.0f}")
plot_similarity(axes[2], similarity, images, captions, "cosine similarity after training (same rows)",
                show_captions=False)

# %% [markdown]
# ## 6. Zero-shot classification
#
# CLIP was never trained as a classifier, yet it is one: write one prompt per class, embed the prompts, and give
# each image the class whose prompt embedding is most similar (`zero_shot_classify`). No labels, no training:
# the "classifier weights" are text embeddings. We use the 12 prompts "a {colour} {shape}" on validation images
# that include the two **held-out** pairs, whose captions the model never saw with a matching image.

# %%
pairs = all_pairs()
class_prompts = [caption_for(c, s) for c, s in pairs]
predicted, probs = zero_shot_classify(clip, tokenizer, val["image"], class_prompts)
truth = torch.tensor([pairs.index((COLOURS[c], SHAPES[s])) for c, s in zip(val["colour"], val["shape"])])
held = torch.tensor([pairs[k] in HELD_OUT_PAIRS for k in truth.tolist()])
correct = predicted == truth
print(f"zero-shot accuracy over 12 prompts: all {correct.float().mean():.3f}   "
      f"seen pairs {correct[~held].float().mean():.3f}   held-out pairs {correct[held].float().mean():.3f}"
      f"   (chance {1 / 12:.3f})")

confusion = torch.zeros(12, 12)
for t, p in zip(truth, predicted):
    confusion[t, p] += 1
confusion = confusion / confusion.sum(dim=1, keepdim=True).clamp(min=1)
fig, ax = plt.subplots(figsize=(6.5, 5.5))
im = ax.imshow(confusion, cmap="Blues", vmin=0, vmax=1)
labels = [f"{c} {s}" + (" *" if (c, s) in HELD_OUT_PAIRS else "") for c, s in pairs]
ax.set_xticks(range(12), labels, rotation=60, ha="right", fontsize=8)
ax.set_yticks(range(12), labels, fontsize=8)
ax.set_xlabel("predicted prompt")
ax.set_ylabel("true pair (* = held out in training)")
ax.set_title("zero-shot confusion matrix (rows sum to 1)")
plt.colorbar(im, ax=ax, fraction=0.046);

# %% [markdown]
# **Marginalising.** The zero-shot classifier gives a probability to each of the 12 pairs. Summing over the colours
# gives a shape classifier, summing over the shapes a colour classifier. The same trick reads off **position**,
# which only half of the training captions mention: 60 prompts "a {colour} {shape} at the {position}", summed
# over the 12 pairs. (CLIP's paper also *averages* the text embeddings of several phrasings of one class, "a photo
# of a {}", "a drawing of a {}": prompt ensembling, for classes with many ways to say them.)

# %%
joint = probs.reshape(-1, len(COLOURS), len(SHAPES))            # all_pairs() is colour-major
shape_pred, colour_pred = joint.sum(dim=1).argmax(dim=1), joint.sum(dim=2).argmax(dim=1)
placed = [(c, s, p) for c, s in pairs for p in POSITIONS]
_, probs60 = zero_shot_classify(clip, tokenizer, val["image"], [caption_for(c, s, None, p) for c, s, p in placed])
position_pred = probs60.reshape(-1, len(pairs), len(POSITIONS)).sum(dim=1).argmax(dim=1)
print(f"shape    accuracy {(shape_pred == val['shape']).float().mean():.3f}  (chance {1 / 3:.2f})")
print(f"colour   accuracy {(colour_pred == val['colour']).float().mean():.3f}  (chance {1 / 4:.2f})")
print(f"position accuracy {(position_pred == val['position']).float().mean():.3f}  (chance {1 / 5:.2f})")

# %% [markdown]
# Type your own caption: the text box below ranks the validation images by cosine similarity to it
# (a tiny text-to-image *search engine*, which is what CLIP was first used for).

# %%
val_embeds = clip.encode_image(val["image"]).detach()


def search(query):
    t = tokenizer([query], max_length=config.max_length)
    with torch.no_grad():
        q = clip.encode_text(t["input_ids"], t["attention_mask"])
    scores = (val_embeds @ q.T).squeeze(1)
    best = scores.topk(8).indices
    fig = show_images(val["image"][best], titles=[f"{scores[i]:.2f}" for i in best], ncols=8,
                      figsize=(10, 1.8))
    fig.suptitle(f"best matches for {query!r} (cosine similarity)", y=1.1)
    return fig


search("a large green triangle at the bottom right")   # green triangles were never in training
plt.show()
attach_widget(search, widgets.Text(value="a large green triangle at the bottom right",
                                   description="caption", continuous_update=False,
                                   layout=widgets.Layout(width="60%")))

# %% [markdown]
# ## 7. What the UNet will get: one vector per token
#
# For Stable Diffusion we keep only the **text encoder** and take its `last_hidden_state`: $(B, L, \text{width})$.
# Because the encoder is causal, the vector at position $i$ depends on tokens $0..i$ only. Compare two captions
# that differ in one word: positions before the difference have *identical* vectors; from the difference on they
# diverge, and "circle" in "a red circle" is not the same vector as "circle" in "a blue circle": each token
# vector carries its context. Padding after `<eos>` is masked out here; it could not change anything before it.

# %%
pair_texts = ["a small red circle at the top left", "a small blue circle at the top left"]
t = tokenizer(pair_texts, max_length=config.max_length)
with torch.no_grad():
    hidden = clip.text_encoder(t["input_ids"], t["attention_mask"]).last_hidden_state   # (2, L, width)
    longest = tokenizer(pair_texts, padding="longest")
    hidden_short = clip.text_encoder(longest["input_ids"], longest["attention_mask"]).last_hidden_state
n_real = int(t["attention_mask"][0].sum())
# distance between the two captions' vectors at each position, relative to the vectors' size
per_position = (hidden[0, :n_real] - hidden[1, :n_real]).norm(dim=-1) / hidden[0, :n_real].norm(dim=-1)
print("last_hidden_state shape:", tuple(hidden.shape), "-> the UNet's encoder_hidden_states")
print(f"real-token features identical whether padded to {t['input_ids'].shape[1]} or to "
      f"{longest['input_ids'].shape[1]} positions:", torch.allclose(hidden[:, :n_real], hidden_short[:, :n_real], atol=1e-5))

fig, ax = plt.subplots(figsize=(8, 2.8))
words = [tokenizer.vocab[i] for i in t["input_ids"][0, :n_real].tolist()]
ax.bar(range(n_real), per_position.numpy(), color=["C0" if v < 1e-5 else "C1" for v in per_position])
ax.set_xticks(range(n_real), [f"{w}\n{tokenizer.vocab[j]}" if w != tokenizer.vocab[j] else w
                              for w, j in zip(words, t["input_ids"][1, :n_real].tolist())])
ax.set_ylabel("||h_1 - h_2|| / ||h_1||")
ax.set_title("per-token vectors of the two captions: identical (0) before 'red'/'blue', different from there on");

# %% [markdown]
# ## Summary
#
# - SD v1.x: prompt → CLIP BPE tokenizer (77 tokens, padded with `<|endoftext|>`, truncated) → CLIP ViT-L/14 text
#   encoder → `last_hidden_state` $(B, 77, 768)$ → keys and values of every cross-attention layer in the UNet. The
#   pooled/projected vector CLIP trains with is not used by SD v1.
# - CLIP learns a shared space with a symmetric cross-entropy over the $B \times B$ logits matrix
#   $e^{\tau} I_e T_e^{\top}$; the diagonal holds the true pairs.
# - Zero-shot classification = nearest class prompt in that space; summing its probabilities over the other
#   attributes reads off one attribute at a time (shape, colour, position).
# - A causal text encoder makes each token's vector depend on the words before it, and makes padding harmless.
#
# ## Check your understanding
#
# 1. A blog post says "Stable Diffusion v1 conditions on the 512-dimensional CLIP embedding of the prompt."
#    Name the two mistakes, and give the correct shape of what the UNet receives.
# 2. Why is the contrastive loss about $\log B$ at initialisation? What does a loss of $\log 2$ with $B = 128$
#    tell you?
# 3. The loss is the mean of two cross-entropies. What would the model be free to do if you kept only the
#    image-to-text term?
# 4. Two captions in a batch are both "a red circle". What does the loss ask of the model for that pair of rows,
#    and why is that a problem? Suggest a fix.
# 5. Why is a *causal* text encoder's pooled vector read at `<eos>` and not at `<bos>`? What changes in the
#    per-token vectors of "a red circle" if you append "at the top left"?
# 6. Your prompt for SD has 90 BPE tokens. What happens to the last words, and why?
# 7. How did zero-shot accuracy on the held-out pairs compare with the seen pairs? What does that say about
#    what the embedding space has learned?
#
# <details><summary>Answers (try first)</summary>
#
# 1. 512 is CLIP ViT-B/32's width; SD v1 uses ViT-L/14's text encoder, 768 wide. And the UNet does not get one
#    pooled sentence embedding but the last hidden state, one vector per token: $(B, 77, 768)$, as printed in
#    section 1.
# 2. At initialisation the two encoders are unrelated, so all logits in a row are about equal and each row's
#    softmax is nearly uniform: cross-entropy $\approx \log B$ (section 4 printed 2.2755 against
#    $\log 8 = 2.0794$). A loss of $\log 2$ at $B = 128$ means the model gives the true pair about half of the
#    probability on average, as if torn between it and one other candidate: typically a duplicate caption.
# 3. Only each image's softmax over the captions would be normalised. A caption could then score high with
#    many images (a "hub" text embedding), as long as every image scores its own caption a little higher, and
#    text-to-image retrieval, which is what a text-to-image model needs, would not be trained.
# 4. For each of the two rows, to score its own caption above the other one, which is impossible: identical
#    captions have identical embeddings, so the two logits are equal and the loss of those rows cannot fall
#    below $\log 2$; the gradient pushes against a tie. Fix: count every image whose caption is identical as a
#    positive (multi-positive or soft targets), or avoid duplicate captions in a batch.
# 5. With a causal mask, position $i$ sees tokens $0..i$: `<bos>` has seen only itself (the same vector for
#    every caption), `<eos>` is the only position that has seen the whole caption. Appending "at the top left"
#    leaves the vectors of `<bos> a red circle` unchanged (section 7: identical before the first difference);
#    only `<eos>` moves to the end and new positions appear.
# 6. The tokenizer truncates to 77 tokens (`<|startoftext|>`, 75 word pieces, `<|endoftext|>`), so the last 15
#    are dropped silently: the text encoder has only 77 position embeddings, and the UNet was trained on 77
#    vectors.
# 7. Essentially the same: 0.991 on the held-out pairs against 0.993 on the seen ones (section 6). The embedding
#    space encodes colour and shape as separate attributes that combine, rather than one point per memorised
#    pair, so a pair it never saw together still lands in the right place.
# </details>

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
# # Lecture 2 — Attention: how pixels look at pixels, and at words
#
# Every transformer block in Stable Diffusion's UNet runs two attentions: **self-attention**, where the
# positions of the latent image exchange information with each other, and **cross-attention**, where they
# read the prompt. This lecture takes attention apart and puts it back together.
#
# **What you will learn**
# - single-head scaled dot-product attention, written out in five lines, and checked live against
#   `torch.nn.functional.scaled_dot_product_attention`;
# - why the scores are divided by $\sqrt d$: what the softmax does without it (saturation) and why that
#   stops learning;
# - multi-head attention, and the efficient implementation: project once with one matrix, then *reshape*
#   into heads;
# - self- vs cross-attention, and where each sits in Stable Diffusion;
# - masks (causal, padding) and what happens when a query may look at nothing;
# - how to read attention maps as heat maps over an image.
#
# **Prerequisites:** PyTorch tensors, matrix products and broadcasting, `softmax`. Lecture 1 is not needed.
#
# **Time:** about 1 minute on a laptop CPU (nothing is trained); under a minute on a Colab GPU.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/2026-fall/lectures/02_attention.ipynb)

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
FAST = False          # True in CI: smaller sizes, fewer timing repeats
SEED = 0
DIM = 128             # model width of the multi-head demos
NUM_HEADS = 8         # heads of DIM // NUM_HEADS channels each
NUM_TOKENS = 1024     # sequence length for the timing comparison (a 32 x 32 latent)
TIMING_REPEATS = 10   # timing runs per implementation (we report the median)
IMAGE_SIZE = 32       # shapes-world images for the heat maps

# %%
if FAST:  # same lesson, less waiting
    NUM_TOKENS, TIMING_REPEATS = 256, 3

# %%
# %matplotlib inline
import math
import time

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from course_lib.attention import MultiHeadAttention, scaled_dot_product_attention
from course_lib.data import render_shape
from course_lib.viz import plot_attention_maps

torch.manual_seed(SEED)
if FAST:
    torch.set_num_threads(1)  # CI shares a busy machine: threads waiting on each other cost more than they save
print("torch", torch.__version__)

# %% [markdown]
# ## 1. Attention in one sentence
#
# Every token (a position of a feature map, a word of a prompt) sends out a **query** $q$ ("what am I
# looking for?"), shows a **key** $k$ ("what do I contain?") and carries a **value** $v$ ("what I hand
# over"). A token's output is the average of all values, weighted by how well its query matches each key:
#
# $$\mathrm{Attention}(Q, K, V) = \underbrace{\mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt d}\right)}_{A}\, V,
# \qquad Q \in \mathbb{R}^{L_q \times d},\; K \in \mathbb{R}^{L_k \times d},\; V \in \mathbb{R}^{L_k \times d_v}.$$
#
# $A$ is an $L_q \times L_k$ matrix; row $i$ is a probability distribution over the keys (it sums to 1):
# *where query $i$ looks*. $Q$, $K$, $V$ are linear projections of the tokens: $Q = X W_q$, $K = X W_k$,
# $V = X W_v$.
#
# ## 2. One head, written out

# %%
B, L, D_MODEL, d = 2, 6, 16, 8              # batch, tokens, model width, head width
x = torch.randn(B, L, D_MODEL)              # the tokens
W_q, W_k, W_v = (torch.randn(D_MODEL, d) / math.sqrt(D_MODEL) for _ in range(3))

Q, K, V = x @ W_q, x @ W_k, x @ W_v                 # (B, L, d) each
scores = Q @ K.transpose(-2, -1) / math.sqrt(d)     # (B, L, L): query i . key j, scaled
A = scores.softmax(dim=-1)                          # each row: a distribution over the keys
out = A @ V                                         # (B, L, d): weighted average of the values

print("scores", tuple(scores.shape), "-> out", tuple(out.shape))
print("every row of A sums to 1:", torch.allclose(A.sum(dim=-1), torch.ones(B, L)))

# %% [markdown]
# The same five steps live in `course_lib.attention.scaled_dot_product_attention` (with masks added).
# PyTorch ships a fused kernel for them, `F.scaled_dot_product_attention`, which never stores $A$ in
# memory on a GPU (FlashAttention). The numbers must agree up to float rounding:

# %%
ours = scaled_dot_product_attention(Q, K, V)           # course_lib: the steps above
fused = F.scaled_dot_product_attention(Q, K, V)        # PyTorch's fused kernel
print(f"max |hand-written - torch fused| = {(out - fused).abs().max().item():.2e}")
print(f"max |course_lib   - torch fused| = {(ours - fused).abs().max().item():.2e}")

fig, ax = plt.subplots(figsize=(3.6, 3))
im = ax.imshow(A[0].detach(), cmap="viridis", vmin=0)
ax.set_xlabel("key j"); ax.set_ylabel("query i"); ax.set_title("attention weights A (one example)")
fig.colorbar(im, ax=ax, fraction=0.046)
plt.show()


# %% [markdown]
# ## 3. Why divide by $\sqrt d$?
#
# Take $q$ and $k$ with independent entries of mean 0 and variance 1. Their dot product
# $q \cdot k = \sum_{i=1}^{d} q_i k_i$ is a sum of $d$ terms of variance 1, so it has variance $d$: the
# scores spread out like $\sqrt d$. For a head of width $d = 64$ the scores are typically $\pm 8$, and
# $e^{8} / e^{-8} \approx 9 \times 10^{6}$: the softmax puts nearly all its weight on one key.
#
# A saturated softmax is bad for learning, not just for mixing. Its Jacobian is
# $\partial a / \partial s = \mathrm{diag}(a) - a a^\top$, which is **zero** when $a$ is one-hot: no
# gradient reaches the queries and keys, so they stop learning. Dividing by $\sqrt d$ brings the score
# variance back to 1 for every head width. Below: one query against 64 random keys, for growing $d$.

# %%
def softmax_stats(d, scaled, num_keys=64, trials=256, generator=None):
    """For a typical query (the median over trials): its largest weight and ||diag(a) - a a^T||_F."""
    q = torch.randn(trials, 1, d, generator=generator)
    k = torch.randn(trials, num_keys, d, generator=generator)
    s = (q @ k.transpose(-2, -1)).squeeze(1)               # (trials, num_keys), variance d
    if scaled:
        s = s / math.sqrt(d)                               # variance 1
    a = s.softmax(dim=-1)
    jacobian = torch.diag_embed(a) - a[:, :, None] * a[:, None, :]   # (trials, keys, keys)
    return a.max(dim=-1).values.median().item(), jacobian.flatten(1).norm(dim=1).median().item()

g = torch.Generator().manual_seed(SEED)
dims = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
stats = {scaled: [softmax_stats(d, scaled, generator=g) for d in dims] for scaled in (False, True)}

fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
q, k = torch.randn(1, 256, generator=g), torch.randn(64, 256, generator=g)
for scaled, colour in ((False, "C3"), (True, "C0")):
    s = (q @ k.T).squeeze(0) / (math.sqrt(256) if scaled else 1)
    axes[0].bar(torch.arange(64) + (0.4 if scaled else 0), s.softmax(-1), width=0.4, color=colour,
                label="softmax(QK$^T$/$\\sqrt{d}$)" if scaled else "softmax(QK$^T$)")
axes[0].set(title="one query, 64 keys, d = 256", xlabel="key", ylabel="weight")
axes[0].legend()
for scaled, colour, label in ((False, "C3", "without 1/sqrt(d)"), (True, "C0", "with 1/sqrt(d)")):
    largest, jac = zip(*stats[scaled])
    axes[1].plot(dims, largest, "o-", color=colour, label=label)
    axes[2].plot(dims, jac, "o-", color=colour, label=label)
axes[1].axhline(1 / 64, color="grey", ls=":", label="uniform (1/64)")
axes[1].set(xscale="log", title="largest weight, typical query (1 = one-hot)", xlabel="head width d")
axes[2].set(xscale="log", yscale="log", title="softmax Jacobian norm, typical query",
            xlabel="head width d")
for ax in axes[1:]:
    ax.grid(alpha=0.3); ax.legend()
fig.tight_layout()
plt.show()
for d, (big, jac), (big_s, jac_s) in zip(dims, stats[False], stats[True]):
    if d in (8, 64, 512):
        print(f"d={d:4d}: largest weight {big:.2f} unscaled vs {big_s:.2f} scaled; "
              f"Jacobian norm {jac:.1e} vs {jac_s:.1e}")


# %% [markdown]
# Without the scale (red), the typical query's largest weight climbs towards 1 as $d$ grows, and the
# Jacobian, the gradient signal for $W_q$ and $W_k$, collapses by orders of magnitude (log scale). With it (blue) both stay put
# whatever the width. Stable Diffusion 1.x uses heads of width 40 to 160 (320, 640 and 1280 channels split
# into 8 heads; lecture 7 reads them from its config): the middle of these plots, between $d = 32$ and
# $d = 256$. Without the scale a typical query there would already be close to one-hot (largest weight 0.86
# at $d = 64$ in the printout above, against 0.10 with the scale).
#
# ## 4. Many heads
#
# One head gives each query **one** distribution over the keys. But a position may want to look at
# pixels of the same colour *and*, separately, at its neighbours, *and* at the word that describes it.
# Multi-head attention runs $h$ heads of width $d = D/h$ side by side, each with its own
# $W_q^{(i)}, W_k^{(i)}, W_v^{(i)}$, concatenates their outputs and mixes them with $W_o$:
#
# $$\mathrm{MultiHead}(X, C) = \mathrm{Concat}(\mathrm{head}_1, \dots, \mathrm{head}_h)\, W_o, \qquad
# \mathrm{head}_i = \mathrm{Attention}(X W_q^{(i)}, C W_k^{(i)}, C W_v^{(i)}).$$
#
# $C$ is the *context*: $C = X$ for self-attention. Same parameter count and cost as one head of width
# $D$. First the literal version, one head at a time:

# %%
def multi_head_loop(x, context, W_q, W_k, W_v, W_o, num_heads):
    """One head at a time. W_q: (D, D); head i owns columns i*d .. (i+1)*d - 1 of W_q, W_k, W_v."""
    d = W_q.shape[1] // num_heads
    heads = []
    for i in range(num_heads):
        cols = slice(i * d, (i + 1) * d)
        q, k, v = x @ W_q[:, cols], context @ W_k[:, cols], context @ W_v[:, cols]  # (B, N, d), (B, M, d)
        a = (q @ k.transpose(-2, -1) / math.sqrt(d)).softmax(dim=-1)               # (B, N, M)
        heads.append(a @ v)                                                         # (B, N, d)
    return torch.cat(heads, dim=-1) @ W_o                                           # (B, N, D)


# %% [markdown]
# The loop is slow: $3h$ small matrix products, $h$ small attentions. The efficient form notices that the
# $h$ projections of head $i$ are just column blocks of one big matrix. So: **one** product
# $X\,[W_q \,|\, W_k \,|\, W_v]$ with a $(D, 3D)$ matrix, then a *reshape* (free, no arithmetic) that
# splits the channels into (q/k/v, head, channel) and moves the heads next to the batch dimension, one
# batched attention for all heads, and a reshape back, which *is* the concatenation.

# %%
def multi_head_fused(x, W_qkv, W_o, num_heads):
    """Self-attention with ONE projection W_qkv = [W_q | W_k | W_v] of shape (D, 3D), then reshapes."""
    qkv = x @ W_qkv                                                        # (B, N, 3D): one matmul
    q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=num_heads)  # (B, h, N, d)
    out = F.scaled_dot_product_attention(q, k, v)                         # all heads in one call
    return rearrange(out, "b h n d -> b n (h d)") @ W_o                    # concat heads = reshape


# %% [markdown]
# PyTorch's own `nn.MultiheadAttention` stores exactly this `(3D, D)` matrix (`in_proj_weight`). We take
# its weights, run all three implementations, plus `course_lib.attention.MultiHeadAttention` (diffusers'
# layout: separate `to_q`, `to_k`, `to_v`, `to_out`) with the same weights copied in:

# %%
torch_mha = nn.MultiheadAttention(DIM, NUM_HEADS, bias=False, batch_first=True)
W_qkv = torch_mha.in_proj_weight.detach().T        # (D, 3D) = [W_q | W_k | W_v]
W_o = torch_mha.out_proj.weight.detach().T         # (D, D)
W_q, W_k, W_v = W_qkv.split(DIM, dim=1)

ours = MultiHeadAttention(DIM, NUM_HEADS)          # to_q/to_k/to_v: x @ W.T, as nn.Linear
with torch.no_grad():
    ours.to_q.weight.copy_(W_q.T); ours.to_k.weight.copy_(W_k.T); ours.to_v.weight.copy_(W_v.T)
    ours.to_out[0].weight.copy_(W_o.T); ours.to_out[0].bias.zero_()

x = torch.randn(2, 50, DIM)
with torch.no_grad():
    reference, _ = torch_mha(x, x, x, need_weights=False)
    results = {"loop over heads": multi_head_loop(x, x, W_q, W_k, W_v, W_o, NUM_HEADS),
               "one matrix + reshape": multi_head_fused(x, W_qkv, W_o, NUM_HEADS),
               "course_lib MultiHeadAttention": ours(x)}
for label, result in results.items():
    print(f"{label:30s} max |diff| to nn.MultiheadAttention = {(result - reference).abs().max().item():.2e}")


# %% [markdown]
# Same numbers. Now the speed, on a sequence of `NUM_TOKENS` tokens (1024 = a 32 x 32 latent; SD at
# 512 px has 4096 at its top level). The middle bar does the reshape trick but computes the softmax by
# hand, materialising the $(B, h, N, N)$ weights; the last one hands it to the fused kernel.

# %%
def multi_head_fused_explicit(x, W_qkv, W_o, num_heads):
    qkv = x @ W_qkv
    q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=num_heads)
    out = scaled_dot_product_attention(q, k, v)           # explicit softmax, (B, h, N, N) in memory
    return rearrange(out, "b h n d -> b n (h d)") @ W_o

def median_seconds(fn, repeats=TIMING_REPEATS):
    fn()                                                  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]

x_long = torch.randn(1, NUM_TOKENS, DIM)
with torch.no_grad():
    timings = {
        "loop over heads": median_seconds(lambda: multi_head_loop(x_long, x_long, W_q, W_k, W_v, W_o, NUM_HEADS)),
        "one matrix,\nexplicit softmax": median_seconds(lambda: multi_head_fused_explicit(x_long, W_qkv, W_o, NUM_HEADS)),
        "one matrix,\nfused SDPA": median_seconds(lambda: multi_head_fused(x_long, W_qkv, W_o, NUM_HEADS)),
    }
fig, ax = plt.subplots(figsize=(6, 2.8))
ax.barh(list(timings), [1000 * s for s in timings.values()], color=["C3", "C1", "C0"])
ax.set(xlabel="milliseconds (median)", title=f"self-attention, {NUM_TOKENS} tokens, D={DIM}, {NUM_HEADS} heads")
ax.invert_yaxis()
fig.tight_layout()
plt.show()

# %% [markdown]
# The fused kernel wins. The middle bar may surprise you: depending on the CPU it can be *slower* than the
# loop. Computing all heads' weights at once stores $h \times N \times N$ numbers (8 x 1024 x 1024 floats
# = 32 MB here), which no cache holds, while the loop's one-head matrix (4 MB) may fit. The fused kernel
# never stores the matrix: it walks over the keys in tiles and keeps a running softmax (the FlashAttention
# idea), so the memory traffic disappears. On a GPU the gap is far larger, and the saved memory is what
# makes 4096-token attention affordable at all. (Timings on a shared machine are noisy: rerun the cell.)
#
# ## 5. Self-attention vs cross-attention
#
# The only difference is where keys and values come from:
#
# | | queries from | keys and values from | $A$ has shape | in Stable Diffusion |
# |---|---|---|---|---|
# | self-attention | image tokens $X$ | image tokens $X$ | $(N, N)$ | positions of the latent talk to each other |
# | cross-attention | image tokens $X$ | text tokens $C$ | $(N, M)$ | each position reads the prompt |
#
# An image feature map `(B, C, H, W)` becomes `N = H*W` tokens by a reshape. The text tokens come from
# the text encoder (CLIP in SD: `M = 77` tokens of width 768). The output always has one row per *image*
# token: words never receive anything, they only hand over their values.

# %%
feature_map = torch.randn(2, 64, 16, 16)                           # (B, C, H, W) inside the UNet
image_tokens = rearrange(feature_map, "b c h w -> b (h w) c")      # (B, N=256, C=64)
text_tokens = torch.randn(2, 7, 32)                                # (B, M=7, 32) from a text encoder

self_attn = MultiHeadAttention(dim=64, num_heads=4)
cross_attn = MultiHeadAttention(dim=64, num_heads=4, context_dim=32)  # to_k, to_v: 32 -> 64
with torch.no_grad():
    out_self, A_self = self_attn(image_tokens, return_attention=True)
    out_cross, A_cross = cross_attn(image_tokens, context=text_tokens, return_attention=True)
print("self-attention : out", tuple(out_self.shape), " weights (B, heads, N, N) =", tuple(A_self.shape))
print("cross-attention: out", tuple(out_cross.shape), " weights (B, heads, N, M) =", tuple(A_cross.shape))

for label, side in (("SD 1.5, 512 px image -> 64x64 latent", 64), ("pixel space, 512 x 512", 512)):
    n = side * side
    print(f"{label:38s}: self-attention matrix {n:>7,} x {n:>7,} = {n * n:.1e} weights per head; "
          f"cross-attention {n:,} x 77 = {n * 77:.1e}")

# %% [markdown]
# At full pixel resolution one self-attention matrix would hold $7 \times 10^{10}$ numbers per head: one
# more reason (after lecture 1's) why Stable Diffusion works on latents, and even there puts attention
# only where the latent is at most 64 x 64.
#
# ## 6. Masks
#
# A mask says which keys each query may look at. We use `torch`'s convention: a **bool** mask with
# `True` = may attend (internally the score is set to $-\infty$ where `False`, so its weight is exactly 0),
# or a **float** mask that is added to the scores.
#
# - **Causal mask**: token $i$ sees tokens $\le i$. CLIP's text encoder uses it, so a word's embedding
#   depends only on the words before it.
# - **Padding mask**: prompts are padded to a fixed length (77 in SD); a key mask hides the padding
#   tokens. (SD 1.x, for the record, lets the UNet attend to CLIP's padding tokens: diffusers'
#   `StableDiffusionPipeline` passes no text mask to the UNet, and after the causal text encoder those tokens
#   carry summary information.)

# %%
L = 8
q, k, v = torch.randn(3, 1, L, 16).unbind(0)                      # (1, L, 16) each
causal = torch.ones(L, L, dtype=torch.bool).tril()                 # (L, L): True on and below the diagonal
padding = torch.arange(L) < 5                                      # last 3 tokens are padding
padding_mask = padding[None, :].expand(L, L)                       # (L, L): hide padded keys for every query
masks = {"no mask": None, "causal": causal, "padding (3 pad tokens)": padding_mask,
         "causal + padding": causal & padding_mask}

fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
for ax, (label, mask) in zip(axes, masks.items()):
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    ax.imshow(weights[0], cmap="viridis", vmin=0, vmax=1)
    ax.set(title=f"{label}\nmax |diff| to torch {(out - reference).abs().max():.0e}", xlabel="key j", ylabel="query i")
fig.tight_layout()
plt.show()
is_causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
print(f"causal mask vs torch's is_causal=True: max |diff| = "
      f"{(scaled_dot_product_attention(q, k, v, mask=causal) - is_causal).abs().max():.1e}")

# %% [markdown]
# What if a query may look at **nothing** (a row of the mask is all `False`)? The softmax of a row of
# $-\infty$ is $0/0$: undefined. Check what each implementation returns, then guard against it in your
# own code (e.g. make sure every row keeps at least one key, as `course_lib.unet` does for prompts).

# %%
empty_row = causal.clone()
empty_row[2] = False                                           # query 2 may attend to nothing
ours_out = scaled_dot_product_attention(q, k, v, mask=empty_row)
torch_out = F.scaled_dot_product_attention(q, k, v, attn_mask=empty_row)
print("course_lib, row 2:", ours_out[0, 2, :4])
print("torch,      row 2:", torch_out[0, 2, :4])
print("other rows unaffected:", torch.allclose(ours_out[0, 3:], torch_out[0, 3:], atol=1e-6))

# %% [markdown]
# `course_lib`'s explicit softmax computes $0/0$ and returns NaN. This version of PyTorch's fused kernel
# returns zeros for such a row instead (older versions gave NaN too). Neither is a meaningful answer: the
# NaN at least tells you something is wrong, the zeros hide it.

# %% [markdown]
# ## 7. Attention maps as heat maps
#
# In a trained Stable Diffusion, the cross-attention weights of the word "cat" over the $64 \times 64$
# positions form a heat map that outlines the cat (reported by Hertz et al. 2022, *Prompt-to-Prompt*, for
# Imagen and latent diffusion; not run here): that is how prompt-to-prompt editing and attention
# visualisations work. We will record real ones from our own UNet in a later lecture. Here we build a
# cross-attention layer **by hand**, with weights we choose, so you can predict every map before you see it.
#
# - image tokens: each pixel becomes a 5-number feature $(r, g, b, x, y)$ with colours and coordinates in
#   $[-1, 1]$ ($y$ grows downwards);
# - word keys: "red" and "blue" point along those colours, "background" along black, "left" and
#   "top" along $-x$ and $-y$;
# - $W_q$ = identity times a *sharpness* $\tau$ (the role $1/\sqrt d$ plays: it sets the temperature).

# %%
image = torch.maximum(render_shape("circle", "red", 12, (9, 10), IMAGE_SIZE),     # (3, S, S) in [-1, 1];
                      render_shape("square", "blue", 11, (22, 22), IMAGE_SIZE))   # black background = -1

def pixel_features(image):
    """(3, S, S) -> (S*S, 5) tokens: colour (r, g, b) and position (x, y), all in [-1, 1]."""
    S = image.shape[-1]
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
    return rearrange(torch.cat([image, xs[None], ys[None]]), "c h w -> (h w) c")

red, blue = image[:, 10, 9], image[:, 22, 22]            # the two colours as the renderer drew them
words = ["red", "blue", "left", "top", "background"]
word_keys = torch.stack([
    torch.cat([red, torch.zeros(2)]),                         # "red"
    torch.cat([blue, torch.zeros(2)]),                        # "blue"
    torch.tensor([0., 0., 0., -1.5, 0.]),                     # "left":  x = -1
    torch.tensor([0., 0., 0., 0., -1.5]),                     # "top":   y = -1
    torch.tensor([-1., -1., -1., 0., 0.]),                    # "background": black
])                                                            # (M=5, 5)

def cross_attention_maps(image, sharpness=3.0):
    q = pixel_features(image) * sharpness                     # (N, 5): W_q = sharpness * identity
    _, A = scaled_dot_product_attention(q[None], word_keys[None], word_keys[None], return_weights=True)
    S = image.shape[-1]
    return rearrange(A[0], "(h w) m -> m h w", h=S)           # (M, S, S): one map per word

maps = cross_attention_maps(image)
fig = plot_attention_maps(image, maps, words)


# %% [markdown]
# Each pixel's weights sum to 1 *across the words*, so the words compete: on the red disc "red" wins,
# on the black background "background" wins, and the position words take what is left on the side they
# point to. (`plot_attention_maps` rescales every map to [0, 1] on its own, so compare *where*, not
# *how much*.)
#
# **Self-attention** has one map per *query pixel*: where does this pixel look? With the same features,
# a pixel attends to pixels of a similar colour (and, through $x, y$, nearby ones). Turn the knobs: the
# query position and the sharpness (try a very large one to see saturation again).

# %%
def show_self_attention(row=10, col=9, sharpness=3.0):
    tokens = pixel_features(image)                                   # (N, 5)
    S = image.shape[-1]
    _, A = scaled_dot_product_attention((tokens * sharpness)[None], tokens[None], tokens[None],
                                        return_weights=True)         # (1, N, N)
    heat = A[0, row * S + col].reshape(S, S)                         # where pixel (row, col) looks
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.3))
    axes[0].imshow(((image.permute(1, 2, 0) + 1) / 2).clamp(0, 1))
    axes[0].plot(col, row, "w+", ms=14, mew=2)
    axes[0].set_title(f"query pixel (row {row}, col {col})")
    im = axes[1].imshow(heat, cmap="magma")
    axes[1].set_title(f"its attention weights (sharpness {sharpness:g})\nlargest weight {heat.max():.3f}")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    plt.show()

show_self_attention()   # the static figure; the sliders below redraw it in a live notebook
widgets.interact(show_self_attention, row=(0, IMAGE_SIZE - 1), col=(0, IMAGE_SIZE - 1),
                 sharpness=widgets.FloatLogSlider(value=3.0, base=10, min=-1, max=2, step=0.1));

# %% [markdown]
# ## Summary
#
# - Attention = a softmax-weighted average of values; the weights compare queries with keys:
#   $\mathrm{softmax}(QK^\top/\sqrt d)\,V$.
# - $1/\sqrt d$ keeps the score variance at 1. Without it the softmax saturates and its gradient vanishes.
# - Multi-head attention in practice: one projection matrix, a reshape into `(batch, heads, tokens, d)`,
#   one batched (fused) attention call, a reshape back. Same numbers as the loop, much faster.
# - Self-attention: image looks at image, $(N \times N)$. Cross-attention: image looks at words,
#   $(N \times M)$; that is where the prompt enters Stable Diffusion.
# - Masks remove keys by setting their scores to $-\infty$; a query with no key left has no defined output.
#
# ## Check your understanding
#
# 1. You double the head width $d$ but forget the $1/\sqrt d$. By what factor does the standard
#    deviation of the scores change, and what happens to the gradients reaching $W_q$ and $W_k$?
# 2. `multi_head_fused` splits the channels with the pattern `"b n (three h d) -> three b h n d"`. What
#    goes wrong (and would any check catch it?) if you wrote `"b n (h three d) -> ..."` instead with
#    weights loaded from `nn.MultiheadAttention`?
# 3. In Stable Diffusion's cross-attention, which of $Q$, $K$, $V$ come from the prompt? For a 64 x 64
#    latent and a 77-token prompt, what is the shape of $A$ per head, and do the words' embeddings
#    change after the layer?
# 4. Why does CLIP's text encoder need a causal mask while the UNet's cross-attention needs none? What
#    does a query whose mask row is all `False` produce, and how would you prevent it?
#
# <details><summary>Answers (try first)</summary>
#
# 1. Scores scale like $\sqrt d$, so by $\sqrt 2$. The softmax gets sharper, its Jacobian
#    $\mathrm{diag}(a) - aa^\top$ shrinks, and so do the gradients for $W_q$, $W_k$ (section 3's plot).
# 2. The heads would get interleaved channels from q, k and v: the result is silently wrong (no shape
#    error). Only an equality check against a reference, as in section 4, catches it.
# 3. $K$ and $V$ come from the text, $Q$ from the image. $A$ is $4096 \times 77$. The words are not
#    updated: the output has one row per image position.
# 4. The text encoder was trained to read left to right (causal). The UNet reads the whole, finished
#    prompt, so every position may see every word. An all-`False` row gives NaN (0/0 in the softmax),
#    or whatever a fused kernel chooses to return; keep at least one key per row (e.g. never mask the
#    start token).
# </details>

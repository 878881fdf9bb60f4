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
# # Assignment 5 — LoRA: fine-tune a diffusion UNet with low-rank adapters
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/2026-fall/assignments/a5_lora/a5_lora.ipynb)
#
# **50 points**, all autograded. Time: about 1.5–3 hours of work; running the whole notebook takes 1–2
# minutes on a laptop CPU (no GPU needed; on a Colab GPU it is no faster, the model is tiny).
#
# ### What you will learn
# - why fine-tuning a 860 M-parameter UNet can train well under 1 % of its numbers: $W_0 + \frac{\alpha}{r} BA$
# - to write peft's `LoRALinear` yourself: a frozen `base_layer`, `lora_A`, `lora_B` (zero at the start),
#   `scaling = lora_alpha / r`, `merge` / `unmerge`
# - to inject adapters into the attention projections `to_q`, `to_k`, `to_v`, `to_out.0` of a diffusers
#   `UNet2DConditionModel`, and to count what trains: $r(d + k)$ per layer
# - to teach a (tiny, offline) Stable Diffusion a new concept, `"a photo of sks toy"`, with the noise-prediction loss
# - to export the adapters in the file format that diffusers' `load_lora_weights` reads, scaling included
#
# **Prerequisites:** lecture 08 (fine-tuning and LoRA), assignment 3 (DDPM's loss), PyTorch `nn.Module`s.
#
# ### Points
# | Part | What you write | Test cell | Points |
# |---|---|---|---|
# | 1 | `LoRALinear.__init__`: frozen base, A random, B = 0, scaling | `test_lora_init` | 5 |
# | 1 | `LoRALinear.delta_weight`, `forward` (checked against peft) | `test_lora_forward` | 7 |
# | 1 | `LoRALinear.merge`, `unmerge` | `test_merge_unmerge` | 8 |
# | 2 | `inject_lora` into a diffusers UNet (checked against peft) | `test_inject` | 6 |
# | 2 | `lora_parameter_count`, `count_trainable_parameters` | `test_counts` | 4 |
# | 2 | SD v1.5: how many numbers does LoRA train? | `test_sd15_count` | 3 |
# | 3 | `save_lora_weights` (diffusers must load it with the same effect) | `test_export` | 8 |
# | 4 | `train_lora_steps`: the training loop | `test_training_step` | 5 |
# | 4 | your trained adapter file lowers the loss on the new concept | `test_trained_lora` | 4 |
# | | | **total** | **50** |
#
# Each test cell shows some checks; more (hidden) checks run when the notebook is graded, comparing your code with
# peft and diffusers on random cases. Write your code where it says `# YOUR CODE HERE` (in place of the
# `raise NotImplementedError(...)` line); do not rename the functions or their arguments.
#
# **Hand in** this notebook **and** the file `a5_lora_weights.safetensors` that Part 4 writes next to it. When
# grading, training cells are skipped (`COURSE_AUTOGRADE=1`) and your weight file is graded instead.

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
# Parameters (papermill tag "parameters"). FAST = True shrinks the training run for CI; the defaults are the lesson.
FAST = False
RANK = 4                 # r: the rank of every adapter
ALPHA = 4.0              # lora_alpha: the update is scaled by ALPHA / RANK
LEARNING_RATE = 3e-3     # LoRA trains far fewer numbers than the UNet has, and takes a larger step size
BATCH_SIZE = 4
TRAIN_STEPS = 300
NUM_TRAIN_IMAGES = 16    # pictures of the new concept

# %%
if FAST:
    TRAIN_STEPS = 40     # enough for the loss to start falling

# %% nbgrader={"grade": false, "grade_id": "imports", "locked": true, "schema_version": 3, "solution": false}
import contextlib
import copy
import json
import math
import os
import warnings
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

with warnings.catch_warnings():  # keep the import messages of diffusers/transformers/peft in this cell
    warnings.simplefilter("ignore")
    import diffusers
    import peft
    import transformers
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model

from course_lib.data import shapes_batch
from course_lib.sd import build_tiny_sd, encode_images, encode_prompts, load_sd_components, sd15_empty_model
from course_lib.sd.tiny import TINY_UNET
from course_lib.viz import plot_losses, show_images

diffusers.utils.logging.disable_progress_bar()     # loading tiny models: no progress bars
transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(1)   # tiny tensors: one thread is as fast, and kinder to a shared grading machine

# While grading, COURSE_AUTOGRADE=1: the training cell is skipped and your submitted weights are graded.
AUTOGRADING = os.environ.get("COURSE_AUTOGRADE") == "1"
ATTN_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")   # the attention projections LoRA adapts in SD
LORA_PATH = Path("a5_lora_weights.safetensors")      # next to this notebook: hand it in with the notebook
OUTPUTS = Path("outputs")
OUTPUTS.mkdir(exist_ok=True)
print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, peft {peft.__version__}; "
      f"autograding: {AUTOGRADING}")


# %% nbgrader={"grade": false, "grade_id": "test_helpers", "locked": true, "schema_version": 3, "solution": false}
# Helpers for the tests (read-only). tiny_unet() is the UNet of the tiny Stable Diffusion of Part 4:
# diffusers' UNet2DConditionModel with random weights, 32/64 channels, 8x8 latents, text width 32.
def tiny_unet(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**TINY_UNET).eval()


def unet_inputs(batch=2, seed=1):
    """(z_t, t, c): noisy latents (B, 4, 8, 8), timesteps (B,), text embeddings (B, 7, 32)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, 8, 8, generator=g), torch.randint(0, 1000, (batch,), generator=g),
            torch.randn(batch, 7, 32, generator=g))


@torch.no_grad()
def run_unet(unet, inputs, **kwargs):
    z, t, c = inputs
    return unet(z, t, c, **kwargs).sample


@torch.no_grad()
def randomize_lora(model, seed=2, std=0.3):
    """Random A and B in every LoRALinear of model (B = 0 would hide most mistakes)."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.lora_A.weight.copy_(torch.randn(module.lora_A.weight.shape, generator=g) * std)
            module.lora_B.weight.copy_(torch.randn(module.lora_B.weight.shape, generator=g) * std)


@contextlib.contextmanager
def diffusers_quiet():
    """Hide diffusers' info messages, e.g. that our files hold no text-encoder LoRA (they adapt the UNet only)."""
    previous = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(previous)


def peft_reference(base_layer, r, lora_alpha, lora_A, lora_B):
    """peft's own LoRA on a copy of base_layer, holding the given A (r, k) and B (d, r): (model, lora layer)."""
    model = get_peft_model(nn.Sequential(copy.deepcopy(base_layer)),
                           LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=["0"], lora_dropout=0.0))
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(lora_A)
        layer.lora_B["default"].weight.copy_(lora_B)
    return model, layer


# %% [markdown]
# ## Part 1 — `LoRALinear` (20 points)
#
# Fine-tuning changes a pretrained weight $W_0 \in \mathbb{R}^{d \times k}$ (d outputs, k inputs) into
# $W_0 + \Delta W$. Hu et al. (2021) observed that the useful $\Delta W$ has a low *intrinsic rank*, and
# train it as a product of two thin matrices:
#
# $$ h = W_0 x + \Delta W x = W_0 x + \frac{\alpha}{r}\, B A x, \qquad
# B \in \mathbb{R}^{d \times r},\; A \in \mathbb{R}^{r \times k},\; r \ll \min(d, k). \tag{LoRA, eq. 3}$$
#
# | paper | peft / this notebook | shape | at the start |
# |---|---|---|---|
# | $W_0$, bias | `base_layer.weight`, `base_layer.bias` | (d, k), (d,) | pretrained, **frozen** |
# | $A$ | `lora_A.weight` (an `nn.Linear(k, r, bias=False)`) | (r, k) | random, like `nn.Linear`'s own init |
# | $B$ | `lora_B.weight` (an `nn.Linear(r, d, bias=False)`) | (d, r) | **zero** |
# | $\alpha / r$ | `scaling = lora_alpha / r` | scalar | |
# | $\Delta W$ | `delta_weight()` $= BA \cdot$ `scaling` | (d, k) | 0 |
#
# Three details matter:
# 1. **B = 0 at the start**, so $\Delta W = 0$: the model begins exactly at the pretrained one. A must *not* be
#    zero too: the gradient of B is $\propto A x$, and the gradient of A is $\propto B^\top(\cdot)$; with both
#    zero, nothing would ever move.
# 2. **`scaling = lora_alpha / r`**: with it, doubling r does not double the size of the update, so the same
#    learning rate keeps working. Files from other people only mean what they say if everybody scales alike.
# 3. **The adapter wraps the layer, it does not copy it**: `self.base_layer` is the very `nn.Linear` you were given.
#    Computing $B(Ax)$ through the r-dimensional bottleneck is cheap; **merging** $W_0 \leftarrow W_0 + \Delta W$
#    removes even that cost at inference time, and **unmerging** subtracts it again.
#
# Implement the class below (the attribute names are peft's, and the tests read them). Initialise A the way
# `nn.Linear` initialises its weight and peft initialises `lora_A`:
# `nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)`.

# %% nbgrader={"grade": false, "grade_id": "lora_linear", "locked": false, "schema_version": 3, "solution": true}
class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update (peft's names):

        h = base_layer(x) + lora_B(lora_A(x)) * scaling,        scaling = lora_alpha / r

    Attributes the tests read: base_layer (the nn.Linear you were given, frozen), lora_A (nn.Linear k -> r,
    no bias), lora_B (nn.Linear r -> d, no bias), r, lora_alpha, scaling, merged (bool). lora_A and lora_B
    are the only trainable parameters; they live on the base layer's device, in its dtype.
    """

    def __init__(self, base_layer: nn.Linear, r: int, lora_alpha: float,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise ValueError(f"base_layer must be an nn.Linear, got {type(base_layer).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be a positive int, got {r!r}")
        if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float)) or not lora_alpha > 0:
            raise ValueError(f"lora_alpha must be a positive number, got {lora_alpha!r}")
        d, k = base_layer.out_features, base_layer.in_features
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        ### BEGIN SOLUTION
        self.base_layer = base_layer.requires_grad_(False)    # W0 and its bias: frozen, not copied
        self.r, self.lora_alpha = r, lora_alpha
        self.scaling = lora_alpha / r
        self.lora_A = nn.Linear(k, r, bias=False, **factory)  # A: (r, k)
        self.lora_B = nn.Linear(r, d, bias=False, **factory)  # B: (d, r)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_B.weight)                    # B = 0: the adapter starts as a no-op
        self.merged = False
        ### END SOLUTION

    def delta_weight(self) -> torch.Tensor:
        """Delta W = B @ A * scaling, shape (d, k): what LoRA adds to W0."""
        ### BEGIN SOLUTION
        return self.lora_B.weight @ self.lora_A.weight * self.scaling
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., k) -> (..., d). Unmerged: base_layer(x) + B(A x) * scaling, computed through the r-dimensional
        bottleneck (never build the d x k matrix here). Merged: the update is already inside W0."""
        ### BEGIN SOLUTION
        result = self.base_layer(x)
        if self.merged:
            return result
        return result + self.lora_B(self.lora_A(x)) * self.scaling  # (..., k) -> (..., r) -> (..., d)
        ### END SOLUTION

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- W0 + delta W, in place; afterwards forward costs one matmul, like the original layer."""
        if self.merged:
            raise ValueError("merge called on a LoRALinear that is already merged (merged=True)")
        ### BEGIN SOLUTION
        self.base_layer.weight += self.delta_weight()
        self.merged = True
        ### END SOLUTION

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 <- W0 - delta W, in place: the pretrained weight again (up to rounding)."""
        if not self.merged:
            raise ValueError("unmerge called on a LoRALinear that is not merged (merged=False)")
        ### BEGIN SOLUTION
        self.base_layer.weight -= self.delta_weight()
        self.merged = False
        ### END SOLUTION

    def extra_repr(self) -> str:
        return f"r={getattr(self, 'r', '?')}, lora_alpha={getattr(self, 'lora_alpha', '?')}"


# %% nbgrader={"grade": true, "grade_id": "test_lora_init", "locked": true, "points": 5, "schema_version": 3, "solution": false}
torch.manual_seed(0)
base = nn.Linear(16, 8)                      # k = 16 inputs, d = 8 outputs
layer = LoRALinear(base, r=4, lora_alpha=8)
assert layer.base_layer is base, "wrap the layer you were given (self.base_layer = base_layer); do not copy it"
assert tuple(layer.lora_A.weight.shape) == (4, 16), \
    f"lora_A.weight must be (r, k) = (4, 16), got {tuple(layer.lora_A.weight.shape)}"
assert tuple(layer.lora_B.weight.shape) == (8, 4), \
    f"lora_B.weight must be (d, r) = (8, 4), got {tuple(layer.lora_B.weight.shape)}"
assert layer.lora_A.bias is None and layer.lora_B.bias is None, "lora_A and lora_B have no bias (bias=False)"
assert layer.scaling == 2.0, f"scaling = lora_alpha / r = 8 / 4 = 2, got {layer.scaling}"
assert torch.count_nonzero(layer.lora_B.weight) == 0, "B must start at zero: a fresh adapter changes nothing"
assert torch.count_nonzero(layer.lora_A.weight) > 0, \
    "A must start random: with A = B = 0 no gradient would ever reach them"
assert not base.weight.requires_grad and not base.bias.requires_grad, "freeze the base layer (requires_grad_(False))"
assert layer.lora_A.weight.requires_grad and layer.lora_B.weight.requires_grad, "A and B must be trainable"
assert layer.merged is False, "a new LoRALinear is not merged (self.merged = False)"
x = torch.randn(3, 16)
assert torch.equal(layer(x), base(x)), "with B = 0 the output must equal the base layer's, exactly"
print("LoRALinear starts as the base layer: OK")
### BEGIN HIDDEN TESTS
for d, k, r, alpha, bias in [(5, 7, 1, 1.0, True), (12, 3, 3, 7.5, False), (6, 6, 6, 2, True)]:
    base = nn.Linear(k, d, bias=bias)
    layer = LoRALinear(base, r=r, lora_alpha=alpha)
    assert layer.r == r and layer.lora_alpha == alpha and math.isclose(layer.scaling, alpha / r)
    assert layer.base_layer is base and not any(p.requires_grad for p in base.parameters())
    assert tuple(layer.lora_A.weight.shape) == (r, k) and tuple(layer.lora_B.weight.shape) == (d, r)
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    bound = 1 / math.sqrt(k)  # kaiming_uniform_(a=sqrt(5)) on fan_in k: U(-1/sqrt(k), 1/sqrt(k)), as nn.Linear
    assert 0 < layer.lora_A.weight.abs().max() <= bound + 1e-6
    trainable = {name for name, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A.weight", "lora_B.weight"}, trainable
    x = torch.randn(2, 4, k)
    assert torch.equal(layer(x), base(x))
a1 = LoRALinear(nn.Linear(9, 4), r=2, lora_alpha=2, generator=torch.Generator().manual_seed(5)).lora_A.weight
a2 = LoRALinear(nn.Linear(9, 4), r=2, lora_alpha=2, generator=torch.Generator().manual_seed(5)).lora_A.weight
assert torch.equal(a1, a2), "generator must make A reproducible"
layer64 = LoRALinear(nn.Linear(4, 3).double(), r=2, lora_alpha=4)
assert layer64.lora_A.weight.dtype == layer64.lora_B.weight.dtype == torch.float64
assert layer64(torch.randn(2, 4, dtype=torch.float64)).dtype == torch.float64
### END HIDDEN TESTS

# %% nbgrader={"grade": true, "grade_id": "test_lora_forward", "locked": true, "points": 7, "schema_version": 3, "solution": false}
# A case small enough to do by hand: W0 = I, b = 0, r = 1, alpha = 2 (scaling 2)
base = nn.Linear(2, 2)
with torch.no_grad():
    base.weight.copy_(torch.eye(2))
    base.bias.zero_()
layer = LoRALinear(base, r=1, lora_alpha=2)
with torch.no_grad():
    layer.lora_A.weight.copy_(torch.tensor([[1.0, 0.0]]))    # A: (1, 2)
    layer.lora_B.weight.copy_(torch.tensor([[1.0], [2.0]]))  # B: (2, 1)
out = layer(torch.tensor([[1.0, 3.0]]))
# W0 x = (1, 3);  A x = 1;  B A x = (1, 2);  times scaling 2 -> (2, 4);  h = (3, 7)
assert tuple(out.shape) == (1, 2), f"expected shape (1, 2), got {tuple(out.shape)}"
if torch.allclose(out, torch.tensor([[2.0, 5.0]])):
    raise AssertionError("got (2, 5) = W0 x + B A x: the update is missing its scaling lora_alpha / r")
assert torch.allclose(out, torch.tensor([[3.0, 7.0]])), f"expected (3, 7), got {out.tolist()}"
torch.testing.assert_close(layer.delta_weight(), torch.tensor([[2.0, 0.0], [4.0, 0.0]]),
                           msg="delta_weight() = B @ A * scaling, shape (d, k)")
print("forward and delta_weight on the hand-made case: OK")
### BEGIN HIDDEN TESTS
for d, k, r, alpha, shape in [(5, 7, 2, 3.0, (4, 7)), (8, 8, 4, 16, (2, 3, 8)), (3, 10, 1, 0.5, (10,)),
                              (64, 32, 4, 4, (2, 5, 32))]:
    torch.manual_seed(d * 100 + k)
    base = nn.Linear(k, d)
    ours = LoRALinear(base, r=r, lora_alpha=alpha)
    with torch.no_grad():
        ours.lora_A.weight.normal_()
        ours.lora_B.weight.normal_()
    reference, reference_layer = peft_reference(base, r, alpha, ours.lora_A.weight, ours.lora_B.weight)
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.delta_weight(), reference_layer.get_delta_weight("default"),
                               atol=1e-5, rtol=1e-5)
    ours(x).square().sum().backward()  # gradients reach A and B, never W0
    assert ours.lora_A.weight.grad is not None and ours.lora_A.weight.grad.abs().sum() > 0
    assert ours.lora_B.weight.grad is not None and ours.lora_B.weight.grad.abs().sum() > 0
    assert base.weight.grad is None and base.bias.grad is None
### END HIDDEN TESTS

# %% [markdown]
# **Merge and unmerge.** After training, $W_0 + \Delta W$ can be written into the base weight once:
# the merged layer is an ordinary linear layer again, as fast as before fine-tuning. Unmerging subtracts
# $\Delta W$, recovering $W_0$ up to float rounding (so you can switch adapters or go back to the base model).
# `merge` must not change what the layer computes: **merged == unmerged**.

# %% nbgrader={"grade": true, "grade_id": "test_merge_unmerge", "locked": true, "points": 8, "schema_version": 3, "solution": false}
torch.manual_seed(0)
base = nn.Linear(6, 4)
w0 = base.weight.detach().clone()
layer = LoRALinear(base, r=2, lora_alpha=6)      # scaling 3
with torch.no_grad():
    layer.lora_B.weight.normal_()               # a trained-looking adapter
x = torch.randn(5, 6)
unmerged = layer(x)
expected_weight = w0 + 3 * layer.lora_B.weight.detach() @ layer.lora_A.weight.detach()
layer.merge()
assert layer.merged, "merge() must set self.merged = True"
torch.testing.assert_close(base.weight.detach(), expected_weight, atol=1e-6, rtol=1e-6,
                           msg="after merge, base_layer.weight must be W0 + (lora_alpha / r) * B @ A")
torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=1e-5,
                           msg="merged output differs: is the update added twice (once in W0, once in forward)?")
layer.unmerge()
assert not layer.merged, "unmerge() must set self.merged = False"
torch.testing.assert_close(base.weight.detach(), w0, atol=1e-6, rtol=1e-6, msg="unmerge must give W0 back")
torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=1e-5)
print("merge / unmerge: OK")
### BEGIN HIDDEN TESTS
for d, k, r, alpha in [(7, 3, 2, 5.0), (3, 9, 3, 1), (16, 16, 4, 32)]:
    torch.manual_seed(d + 10 * k)
    base = nn.Linear(k, d)
    w0 = base.weight.detach().clone()
    ours = LoRALinear(base, r=r, lora_alpha=alpha)
    with torch.no_grad():
        ours.lora_A.weight.normal_()
        ours.lora_B.weight.normal_()
    reference, _ = peft_reference(base, r, alpha, ours.lora_A.weight, ours.lora_B.weight)
    merged_reference = reference.merge_and_unload()[0]  # peft's merge: an nn.Linear with W0 + delta W
    x = torch.randn(4, k)
    unmerged = ours(x)
    ours.merge()
    torch.testing.assert_close(base.weight.detach(), merged_reference.weight.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x), unmerged, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x), merged_reference(x), atol=1e-5, rtol=1e-5)
    ours.unmerge()
    torch.testing.assert_close(base.weight.detach(), w0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x), unmerged, atol=1e-5, rtol=1e-5)
    assert not base.weight.requires_grad
### END HIDDEN TESTS

# %% [markdown]
# ## Part 2 — Adapters in a diffusers UNet (13 points)
#
# In Stable Diffusion, LoRA usually adapts the four projections of every attention layer of the UNet
# (self-attention `attn1` and cross-attention `attn2` to the text): `to_q`, `to_k`, `to_v` and the output
# projection `to_out.0` (item 0 of the `nn.ModuleList` `to_out`; item 1 is a dropout). Their full names are long:

# %%
unet = tiny_unet()
linear_names = [name for name, module in unet.named_modules() if isinstance(module, nn.Linear)]
print(len(linear_names), "nn.Linear layers in the tiny UNet, among them:")
for name in linear_names[:8]:
    print("   ", name, tuple(unet.get_submodule(name).weight.shape))


# %% [markdown]
# peft's rule for `target_modules` (which diffusers uses too): a module **matches a target if its full name equals
# the target or ends with `"." + target`**. So `"to_out.0"` matches `...attn1.to_out.0`, but `"to_q"` does not
# match `...to_qkv`.
#
# Write `inject_lora`: freeze the whole model first (`model.requires_grad_(False)`), then replace every matching
# `nn.Linear` by a `LoRALinear` wrapping it. To replace a submodule, `setattr` it on its parent:
# `parent = model.get_submodule("a.b")` and `setattr(parent, "c", new_module)` replaces `a.b.c`; this works for
# list items too (`setattr(to_out, "0", new)`). Collect the names first, then replace (changing a model while
# iterating over `named_modules()` is asking for trouble). `merge_lora` / `unmerge_lora` are given.

# %% nbgrader={"grade": false, "grade_id": "inject_lora", "locked": false, "schema_version": 3, "solution": true}
def inject_lora(model: nn.Module, r: int, lora_alpha: float, target_modules=ATTN_TARGETS,
                generator: torch.Generator | None = None) -> list[str]:
    """Wrap every nn.Linear of model whose name matches target_modules in a LoRALinear(r, lora_alpha), in place.

    A name matches a target if it equals it or ends with "." + target (peft's rule). Every other parameter of
    model is frozen, so only lora_A / lora_B train. generator is passed on to each LoRALinear (A's init).
    Returns the names of the wrapped modules, in model.named_modules() order.
    """
    ### BEGIN SOLUTION
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in target_modules)]
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(model.get_submodule(name), r, lora_alpha, generator=generator))
    return names
    ### END SOLUTION


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """{module name: LoRALinear} of every adapter in model."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def merge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        if not layer.merged:
            layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        if layer.merged:
            layer.unmerge()


# %% nbgrader={"grade": true, "grade_id": "test_inject", "locked": true, "points": 6, "schema_version": 3, "solution": false}
unet = tiny_unet()
inputs = unet_inputs()
expected = run_unet(unet, inputs)
q_layer = unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
names = inject_lora(unet, r=4, lora_alpha=4)
assert isinstance(names, list), f"inject_lora must return the list of wrapped module names, got {type(names)}"
assert len(names) == 32, \
    f"the tiny UNet has 8 attention layers x 4 projections = 32 targets, got {len(names)}: {names[:5]}..."
assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0" in names, \
    "'to_out.0' is item 0 of the ModuleList to_out: match full names by their ending '.to_out.0'"
assert all(isinstance(unet.get_submodule(name), LoRALinear) for name in names), "every target becomes a LoRALinear"
assert unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q").base_layer is q_layer, \
    "LoRALinear must wrap the UNet's own layer, not a copy"
trainable = [name for name, p in unet.named_parameters() if p.requires_grad]
assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable), \
    f"only lora_A / lora_B may be trainable, found e.g. {[n for n in trainable if '.lora_' not in n][:3]}"
assert torch.equal(run_unet(unet, inputs), expected), "B = 0: injecting LoRA must not change the UNet's output"
print("32 adapters in the tiny UNet, output unchanged: OK")
### BEGIN HIDDEN TESTS
from peft.tuners.lora import LoraLayer

# alpha = r here: the scaling is graded by test_lora_forward, this test grades where the adapters go
for r, alpha, targets in [(4, 4, ATTN_TARGETS), (2, 2, ("to_k", "to_v")), (3, 3, ("to_out.0", "to_q"))]:
    ours = tiny_unet(seed=3)
    inputs = unet_inputs(seed=4)
    base_out = run_unet(ours, inputs)
    names = inject_lora(ours, r=r, lora_alpha=alpha, target_modules=targets)
    fresh = tiny_unet(seed=3)
    expected_names = [n for n, m in fresh.named_modules()
                      if isinstance(m, nn.Linear) and any(n == t or n.endswith("." + t) for t in targets)]
    assert names == expected_names, (names[:3], expected_names[:3])
    assert torch.equal(run_unet(ours, inputs), base_out)
    # peft (through diffusers' add_adapter) wraps the same modules; with the same A and B it computes the same
    reference = tiny_unet(seed=3)
    reference.add_adapter(LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0))
    peft_names = [n for n, m in reference.named_modules() if isinstance(m, LoraLayer)]
    assert names == peft_names, (names[:3], peft_names[:3])
    randomize_lora(ours, seed=r)
    with torch.no_grad():
        for name in names:
            ref_layer, our_layer = reference.get_submodule(name), ours.get_submodule(name)
            ref_layer.lora_A["default"].weight.copy_(our_layer.lora_A.weight)
            ref_layer.lora_B["default"].weight.copy_(our_layer.lora_B.weight)
    torch.testing.assert_close(run_unet(ours, inputs), run_unet(reference, inputs), atol=1e-5, rtol=1e-5)
    assert (run_unet(ours, inputs) - base_out).abs().max() > 1e-3
    for name, p in ours.named_parameters():
        assert p.requires_grad == (".lora_A." in name or ".lora_B." in name), name
### END HIDDEN TESTS

# %% [markdown]
# **What trains?** A full fine-tune of one $d \times k$ weight trains $dk$ numbers; its adapter trains
# $A$ ($r \times k$) and $B$ ($d \times r$):
#
# $$ \#\text{LoRA} = r\,(d + k) \qquad\text{versus}\qquad dk. $$
#
# For a $320 \times 320$ projection of SD with $r = 4$: $2\,560$ instead of $102\,400$ (2.5 %).

# %% nbgrader={"grade": false, "grade_id": "counts", "locked": false, "schema_version": 3, "solution": true}
def lora_parameter_count(d: int, k: int, r: int) -> int:
    """Trainable numbers of one adapter of rank r on a d x k weight (d = out_features, k = in_features)."""
    ### BEGIN SOLUTION
    return r * (d + k)
    ### END SOLUTION


def count_trainable_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of model with requires_grad=True."""
    ### BEGIN SOLUTION
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_counts", "locked": true, "points": 4, "schema_version": 3, "solution": false}
assert lora_parameter_count(320, 320, 4) == 2560, f"r (d + k) = 4 * 640 = 2560, got {lora_parameter_count(320, 320, 4)}"
assert lora_parameter_count(d=640, k=768, r=8) == 8 * (640 + 768)
frozen_first = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
frozen_first[0].requires_grad_(False)
assert count_trainable_parameters(frozen_first) == 4 * 2 + 2, "count only parameters with requires_grad=True"
unet = tiny_unet()
inject_lora(unet, r=4, lora_alpha=4)
expected = sum(lora_parameter_count(m.base_layer.out_features, m.base_layer.in_features, 4)
               for m in lora_layers(unet).values())
assert count_trainable_parameters(unet) == expected, (count_trainable_parameters(unet), expected)
print(f"tiny UNet: {count_trainable_parameters(unet):,} trainable numbers out of "
      f"{sum(p.numel() for p in unet.parameters()):,}: OK")
### BEGIN HIDDEN TESTS
g = torch.Generator().manual_seed(0)
for _ in range(5):
    d, k, r = (int(v) for v in torch.randint(1, 2000, (3,), generator=g))
    assert lora_parameter_count(d, k, r) == r * (d + k)
    assert lora_parameter_count(d=d, k=k, r=r) == r * (d + k)
ours = tiny_unet()
inject_lora(ours, r=3, lora_alpha=6)
reference = tiny_unet()
reference.add_adapter(LoraConfig(r=3, lora_alpha=6, target_modules=list(ATTN_TARGETS), lora_dropout=0.0))
peft_count = sum(p.numel() for name, p in reference.named_parameters() if "lora_" in name)
assert count_trainable_parameters(ours) == peft_count == 3 * 9984 // 4, (count_trainable_parameters(ours), peft_count)
plain = nn.Linear(5, 5)
assert count_trainable_parameters(plain) == 30
### END HIDDEN TESTS

# %% [markdown]
# **Stable Diffusion v1.5.** `sd15_empty_model("unet")` builds SD v1.5's UNet with the real shapes on PyTorch's
# `meta` device: parameters have shapes but no storage, so it costs no memory and no download. Use your functions
# to fill in two numbers: `SD15_UNET_PARAMS`, all parameters of the UNet (before injecting), and
# `SD15_LORA_PARAMS`, the trainable numbers after `inject_lora(..., r=4, lora_alpha=4)` on the four attention
# projections. (Your `LoRALinear` creates A and B on the base layer's device, so they are on `meta` too.)

# %% nbgrader={"grade": false, "grade_id": "sd15_build", "locked": true, "schema_version": 3, "solution": false}
sd15_unet = sd15_empty_model("unet")   # SD v1.5's UNet, real shapes, no storage

# %% nbgrader={"grade": false, "grade_id": "sd15_answer", "locked": false, "schema_version": 3, "solution": true}
# SD15_UNET_PARAMS: every parameter of sd15_unet, counted before you inject anything
# SD15_LORA_PARAMS: what trains after inject_lora(sd15_unet, r=4, lora_alpha=4)
### BEGIN SOLUTION
SD15_UNET_PARAMS = count_trainable_parameters(sd15_unet)  # everything trains before injection
inject_lora(sd15_unet, r=4, lora_alpha=4)
SD15_LORA_PARAMS = count_trainable_parameters(sd15_unet)
### END SOLUTION
print(f"SD v1.5 UNet: {SD15_UNET_PARAMS:,} parameters; LoRA r=4 trains {SD15_LORA_PARAMS:,} "
      f"({100 * SD15_LORA_PARAMS / SD15_UNET_PARAMS:.3f} %), {4 * SD15_LORA_PARAMS / 2**20:.1f} MB in float32")

# %% nbgrader={"grade": true, "grade_id": "test_sd15_count", "locked": true, "points": 3, "schema_version": 3, "solution": false}
assert isinstance(SD15_UNET_PARAMS, int) and isinstance(SD15_LORA_PARAMS, int)
assert 800e6 < SD15_UNET_PARAMS < 900e6, "the SD v1.5 UNet has about 860 M parameters"
assert 0 < SD15_LORA_PARAMS < 0.01 * SD15_UNET_PARAMS, "r = 4 adapters train well under 1 % of the UNet"
print("SD v1.5 numbers in a plausible range: OK")
### BEGIN HIDDEN TESTS
fresh = sd15_empty_model("unet")
assert SD15_UNET_PARAMS == sum(p.numel() for p in fresh.parameters())
expected = sum(4 * (m.in_features + m.out_features) for n, m in fresh.named_modules()
               if isinstance(m, nn.Linear) and any(n.endswith("." + t) for t in ATTN_TARGETS))
assert SD15_LORA_PARAMS == expected, (SD15_LORA_PARAMS, expected)
### END HIDDEN TESTS

# %%
# Full fine-tuning versus LoRA (r = 4), tiny model and SD v1.5, on a log scale
tiny = tiny_unet()
tiny_full = count_trainable_parameters(tiny)
inject_lora(tiny, r=4, lora_alpha=4)
bars = {"tiny UNet\nfull": tiny_full, "tiny UNet\nLoRA r=4": count_trainable_parameters(tiny),
        "SD v1.5 UNet\nfull": SD15_UNET_PARAMS, "SD v1.5 UNet\nLoRA r=4": SD15_LORA_PARAMS}
figure, ax = plt.subplots(figsize=(7, 3))
ax.bar(list(bars), list(bars.values()), color=["C0", "C1", "C0", "C1"])
ax.set_yscale("log")
ax.set_ylabel("trainable numbers")
for i, value in enumerate(bars.values()):
    ax.text(i, value, f"{value:,}", ha="center", va="bottom", fontsize=8)
ax.set_title("What a fine-tune has to train and store")
figure.tight_layout()


# %% [markdown]
# ## Part 3 — A file diffusers can load (8 points)
#
# An adapter is only useful if others can load it. diffusers' LoRA loaders
# (`pipe.load_lora_weights(folder, weight_name=...)`, `unet.load_lora_adapter(path, prefix="unet")`) read a
# safetensors file with peft's key names, prefixed by the component:
#
# ```
# unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight    (r, k)
# unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight    (d, r)
# ...
# ```
#
# The tensors alone do not say what $\alpha$ was: **without more information diffusers assumes
# `lora_alpha = r`** (scaling 1), and an adapter trained with another $\alpha$ would load with the wrong strength.
# Recent diffusers read the peft `LoraConfig` arguments from the file's header: the safetensors metadata
# (a `dict[str, str]`) key `"lora_adapter_metadata"` holds a JSON string of
# `{"unet.r": r, "unet.lora_alpha": alpha, "unet.target_modules": [...]}` (each `LoraConfig` argument,
# prefixed). `course_lib/lora.py` (`save_lora`) writes exactly this format, have a look. Write the file with
# `save_file(tensors, path, metadata=...)` from `safetensors.torch`, and hand it `.detach().contiguous()`
# tensors. All adapters made by one `inject_lora` call share r and lora_alpha.

# %% nbgrader={"grade": false, "grade_id": "save_lora_weights", "locked": false, "schema_version": 3, "solution": true}
def save_lora_weights(model: nn.Module, path, prefix: str = "unet") -> Path:
    """Write the adapters of model (its LoRALinear layers) to a safetensors file diffusers' LoRA loaders read.

    Keys: f"{prefix}.{module name}.lora_A.weight" and ".lora_B.weight"; metadata: {"format": "pt",
    "lora_adapter_metadata": JSON of {f"{prefix}.r": r, f"{prefix}.lora_alpha": lora_alpha,
    f"{prefix}.target_modules": [module names]}}. Saves A and B themselves (not merged). Returns Path(path).
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"model ({type(model).__name__}) has no LoRALinear layers; call inject_lora first")
    if len({(layer.r, layer.lora_alpha) for layer in layers.values()}) > 1:
        raise ValueError("model's adapters must share r and lora_alpha (one inject_lora call)")
    ### BEGIN SOLUTION
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{prefix}.{name}.lora_A.weight"] = layer.lora_A.weight.detach().contiguous()
        tensors[f"{prefix}.{name}.lora_B.weight"] = layer.lora_B.weight.detach().contiguous()
    first = next(iter(layers.values()))
    config = {f"{prefix}.r": first.r, f"{prefix}.lora_alpha": first.lora_alpha,
              f"{prefix}.target_modules": sorted(layers)}
    save_file(tensors, str(path), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(config)})
    return Path(path)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_export", "locked": true, "points": 8, "schema_version": 3, "solution": false}
ours = tiny_unet()
inject_lora(ours, r=4, lora_alpha=8)          # alpha != r: the file must carry the scaling
randomize_lora(ours)
path = save_lora_weights(ours, OUTPUTS / "test_export.safetensors")
state = load_file(path)
key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"
assert key in state, f"expected keys such as {key!r}, got e.g. {sorted(state)[:2]}"
assert len(state) == 64, f"32 adapters x (A, B) = 64 tensors, got {len(state)}"
with safe_open(str(path), framework="pt") as f:
    header = f.metadata() or {}
assert "lora_adapter_metadata" in header, "the safetensors metadata needs the key 'lora_adapter_metadata'"
config = json.loads(header["lora_adapter_metadata"])
assert config.get("unet.r") == 4 and config.get("unet.lora_alpha") == 8, config
# diffusers loads the file into a fresh UNet and computes what your adapters compute
theirs = tiny_unet()
theirs.load_lora_adapter(str(path), prefix="unet", use_safetensors=True)
inputs = unet_inputs()
torch.testing.assert_close(run_unet(theirs, inputs), run_unet(ours, inputs), atol=1e-5, rtol=1e-5,
                           msg="diffusers' output with your file differs from your model's: key names? alpha?")
print("diffusers loads your file and computes the same: OK")
### BEGIN HIDDEN TESTS
from course_lib import lora as course_lora
from diffusers.loaders import StableDiffusionLoraLoaderMixin

for r, alpha, targets, seed in [(4, 8, ATTN_TARGETS, 5), (2, 5.0, ("to_k", "to_v", "to_out.0"), 6),
                                (3, 3, ("to_q",), 7)]:
    ours = tiny_unet()
    inputs = unet_inputs(seed=seed)
    base_out = run_unet(ours, inputs)
    inject_lora(ours, r=r, lora_alpha=alpha, target_modules=targets)
    randomize_lora(ours, seed=seed)
    before = {name: p.detach().clone() for name, p in ours.named_parameters()}
    path = save_lora_weights(ours, OUTPUTS / f"hidden_export_{seed}.safetensors")
    assert all(torch.equal(p, before[name]) for name, p in ours.named_parameters()), "saving must not change model"
    unmerged = run_unet(ours, inputs)
    merge_lora(ours)                                   # merged == unmerged for the whole UNet
    merged = run_unet(ours, inputs)
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)
    # 1. the UNet loader
    theirs = tiny_unet()
    theirs.load_lora_adapter(str(path), prefix="unet", use_safetensors=True)
    loaded = run_unet(theirs, inputs)
    assert (loaded - base_out).abs().max() > 1e-3
    torch.testing.assert_close(loaded, merged, atol=1e-4, rtol=1e-4)
    # 2. the pipeline loader (what pipe.load_lora_weights does for the UNet)
    state_dict, network_alphas, metadata = StableDiffusionLoraLoaderMixin.lora_state_dict(
        str(path.parent), weight_name=path.name, return_lora_metadata=True)
    theirs = tiny_unet()
    StableDiffusionLoraLoaderMixin.load_lora_into_unet(state_dict, network_alphas, theirs, metadata=metadata)
    torch.testing.assert_close(run_unet(theirs, inputs), merged, atol=1e-4, rtol=1e-4)
    # 3. course_lib's loader (same format) on course_lib's own adapters
    reference = tiny_unet()
    course_lora.inject_lora(reference, course_lora.LoRAConfig(r=r, lora_alpha=alpha, target_modules=targets))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        course_lora.load_lora(reference, path, prefix="unet")
    torch.testing.assert_close(run_unet(reference, inputs), merged, atol=1e-4, rtol=1e-4)
    unmerge_lora(ours)
    torch.testing.assert_close(run_unet(ours, inputs), unmerged, atol=1e-4, rtol=1e-4)
### END HIDDEN TESTS

# %% [markdown]
# ## Part 4 — Teach the tiny Stable Diffusion a new concept (9 points)
#
# `build_tiny_sd` writes a Stable Diffusion with the real classes and folder layout of SD v1.5 (UNet, VAE, CLIP
# text encoder, tokenizer, scheduler), but tiny and with **random weights**, so it runs offline on a CPU in
# seconds. Its pictures are noise, so here we judge training by its loss, not by images (the workshop does the
# same with the real SD v1.5 and real pictures).
#
# The new concept: `"a photo of sks toy"`, a purple ring (the rare token `sks` is the DreamBooth habit: a word the
# model has no strong meaning for yet). Training is the LDM objective with only A and B trainable:
#
# $$ z_0 = \mathcal{E}(x),\quad \epsilon \sim \mathcal{N}(0, I),\quad t \sim \mathcal{U}\{0, \dots, T-1\},\quad
# z_t = \sqrt{\bar\alpha_t}\, z_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon, \qquad
# L = \big\lVert \epsilon - \epsilon_\theta(z_t, t, c) \big\rVert^2 . $$
#
# The cell below (read-only) builds the tiny SD in `outputs/tiny_sd`, draws the concept images, encodes them
# once to latents $z_0$ (16, 4, 8, 8) and the prompt to $c$ (16, 77, 32), and defines the fixed evaluation
# that `test_trained_lora` uses.

# %% nbgrader={"grade": false, "grade_id": "concept_data", "locked": true, "schema_version": 3, "solution": false}
CONCEPT_PROMPT = "a photo of sks toy"


def purple_rings(n: int, seed: int = 0, size: int = 64) -> torch.Tensor:
    """n pictures of the new concept: a purple ring of random size and place on black, (n, 3, size, size) in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    centre = size / 2 + (torch.rand(n, 2, generator=g) - 0.5) * 0.2 * size         # (n, 2) pixels
    radius = size * (0.22 + 0.08 * torch.rand(n, generator=g))                      # (n,)
    xs = torch.arange(size) + 0.5
    distance = torch.sqrt((xs.view(1, 1, -1) - centre[:, 0].view(-1, 1, 1)) ** 2
                          + (xs.view(1, -1, 1) - centre[:, 1].view(-1, 1, 1)) ** 2)  # (n, size, size)
    coverage = (0.03 * size + 0.5 - (distance - radius.view(-1, 1, 1)).abs()).clamp(0, 1)  # ring, anti-aliased
    purple = torch.tensor([0.6, 0.2, 0.8]).view(1, 3, 1, 1)
    return coverage.unsqueeze(1) * purple * 2 - 1


TINY_SD = OUTPUTS / "tiny_sd"
if not (TINY_SD / "model_index.json").exists():
    build_tiny_sd(TINY_SD, seed=0)
components = load_sd_components(TINY_SD)          # unet, vae, text_encoder, tokenizer, scheduler
noise_scheduler = DDPMScheduler.from_config(components.scheduler.config)   # same betas as SD v1.5

train_images = purple_rings(NUM_TRAIN_IMAGES, seed=0)
train_latents = encode_images(components, train_images, generator=torch.Generator().manual_seed(0))  # (N, 4, 8, 8)
train_context = encode_prompts(components, [CONCEPT_PROMPT] * NUM_TRAIN_IMAGES)                     # (N, 77, 32)

# The fixed evaluation of test_trained_lora: 32 new pictures, fixed noise and timesteps
_g = torch.Generator().manual_seed(1)
eval_latents = encode_images(components, purple_rings(32, seed=1), generator=_g)
eval_context = encode_prompts(components, [CONCEPT_PROMPT] * 32)
eval_noise = torch.randn(eval_latents.shape, generator=_g)
eval_timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (32,), generator=_g)


@torch.no_grad()
def denoising_loss(unet, latents=None, context=None, noise=None, timesteps=None, lora_scale=None) -> float:
    """Mean ||eps - eps_theta(z_t, t, c)||^2 on the evaluation set (or the tensors given).
    lora_scale: diffusers' LoRA strength for adapters that diffusers loaded (0 = base model)."""
    latents = eval_latents if latents is None else latents
    context = eval_context if context is None else context
    noise = eval_noise if noise is None else noise
    timesteps = eval_timesteps if timesteps is None else timesteps
    kwargs = {} if lora_scale is None else {"cross_attention_kwargs": {"scale": lora_scale}}
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)                        # z_t
    return F.mse_loss(unet(noisy, timesteps, context, **kwargs).sample, noise).item()


print(f"latents {tuple(train_latents.shape)}, context {tuple(train_context.shape)}; "
      f"base model's evaluation loss {denoising_loss(components.unet):.4f}")
rings_figure = show_images(train_images[:8], titles=[CONCEPT_PROMPT] * 8)


# %% [markdown]
# Write the training loop. Each step: draw a batch of `batch_size` indices, noise $\epsilon$ and timesteps
# $t$ (all with `generator`), make $z_t$ with `noise_scheduler.add_noise(z0, noise, t)`, predict
# `unet(z_t, t, c).sample`, take the mean squared error to $\epsilon$, and step an `AdamW` optimizer over the
# **trainable** parameters only (`p.requires_grad`). Return the losses as Python floats. A progress bar
# (`tqdm`) is welcome.

# %% nbgrader={"grade": false, "grade_id": "train_lora_steps", "locked": false, "schema_version": 3, "solution": true}
def train_lora_steps(unet, latents, context, noise_scheduler, num_steps: int, learning_rate: float = 1e-3,
                     batch_size: int = 4, generator: torch.Generator | None = None) -> list[float]:
    """Fine-tune the trainable parameters (the adapters) of unet with the noise-prediction loss.

    latents: z_0 (N, 4, h, w); context: c (N, L, D), one row per latent; every random draw (batch indices,
    noise, timesteps) uses generator. Returns the loss of every step, as floats.
    """
    ### BEGIN SOLUTION
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    num_timesteps = noise_scheduler.config.num_train_timesteps
    losses = []
    unet.train()
    for _ in tqdm(range(num_steps), desc="LoRA", leave=False):
        index = torch.randint(0, len(latents), (batch_size,), generator=generator)
        z0, c = latents[index], context[index]                                   # (B, 4, h, w), (B, L, D)
        noise = torch.randn(z0.shape, generator=generator)
        t = torch.randint(0, num_timesteps, (batch_size,), generator=generator)
        z_t = noise_scheduler.add_noise(z0, noise, t)
        loss = F.mse_loss(unet(z_t, t, c).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    unet.eval()
    return losses
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_training_step", "locked": true, "points": 5, "schema_version": 3, "solution": false}
unet = tiny_unet()
inject_lora(unet, r=4, lora_alpha=4, generator=torch.Generator().manual_seed(0))
frozen = {name: p.detach().clone() for name, p in unet.named_parameters() if not p.requires_grad}
g = torch.Generator().manual_seed(0)
latents, context = torch.randn(4, 4, 8, 8, generator=g) * 0.5, torch.randn(4, 7, 32, generator=g)
losses = train_lora_steps(unet, latents, context, noise_scheduler, num_steps=3, learning_rate=1e-3, batch_size=2,
                          generator=torch.Generator().manual_seed(1))
assert isinstance(losses, list) and len(losses) == 3, f"expected a list of 3 losses, got {losses!r}"
assert all(isinstance(v, float) and math.isfinite(v) for v in losses), f"losses must be finite floats: {losses}"
changed = [name for name, p in unet.named_parameters() if name in frozen and not torch.equal(p, frozen[name])]
assert not changed, f"only lora_A / lora_B may change, but {changed[:3]} did"
assert all(torch.count_nonzero(layer.lora_B.weight) > 0 for layer in lora_layers(unet).values()), \
    "every B should have moved away from 0 after a few steps"
print(f"three steps, losses {[round(v, 4) for v in losses]}: OK")
### BEGIN HIDDEN TESTS
def _run(seed, steps, lr=1e-2):
    model = tiny_unet(seed=1)
    inject_lora(model, r=4, lora_alpha=4, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(3)
    z0, c = torch.randn(2, 4, 8, 8, generator=gen) * 0.5, torch.randn(2, 7, 32, generator=gen)
    noise, t = torch.randn(16, 4, 8, 8, generator=gen), torch.randint(0, 1000, (16,), generator=gen)
    index = torch.arange(16) % 2   # evaluate on the two training latents, with fixed noise and timesteps
    before = denoising_loss(model, z0[index], c[index], noise, t)
    out = train_lora_steps(model, z0, c, noise_scheduler, num_steps=steps, learning_rate=lr, batch_size=4,
                           generator=torch.Generator().manual_seed(seed))
    trivial = noise.square().mean().item()  # the loss of predicting eps = 0
    return out, before, denoising_loss(model, z0[index], c[index], noise, t), trivial

first = _run(seed=7, steps=3)[0]
again = _run(seed=7, steps=3)[0]
assert first == again, "the same generator must give the same run"
losses, before, after, trivial = _run(seed=8, steps=40)
assert len(losses) == 40
# a loop that learns the noise must clearly beat predicting eps = 0 (one that regresses on another target,
# e.g. z_0, only learns to output small numbers and ends near the trivial loss)
assert after < 0.95 * min(before, trivial), f"training data: {before:.4f} -> {after:.4f} (eps = 0: {trivial:.4f})"
### END HIDDEN TESTS

# %%
if AUTOGRADING:
    print(f"COURSE_AUTOGRADE=1: training skipped; the tests grade the submitted {LORA_PATH}")
else:
    unet = UNet2DConditionModel.from_pretrained(TINY_SD, subfolder="unet")   # a fresh copy of the tiny SD's UNet
    inject_lora(unet, r=RANK, lora_alpha=ALPHA, generator=torch.Generator().manual_seed(0))
    print(f"training {count_trainable_parameters(unet):,} of {sum(p.numel() for p in unet.parameters()):,} numbers")
    losses = train_lora_steps(unet, train_latents, train_context, noise_scheduler, num_steps=TRAIN_STEPS,
                              learning_rate=LEARNING_RATE, batch_size=BATCH_SIZE,
                              generator=torch.Generator().manual_seed(1))
    save_lora_weights(unet, LORA_PATH)
    print(f"saved {LORA_PATH} ({LORA_PATH.stat().st_size / 1024:.0f} kB); evaluation loss "
          f"{denoising_loss(unet):.4f} with the adapters")
    loss_figure = plot_losses(losses, title=f"LoRA on '{CONCEPT_PROMPT}' (r={RANK}, alpha={ALPHA})")

# %% nbgrader={"grade": true, "grade_id": "test_trained_lora", "locked": true, "points": 4, "schema_version": 3, "solution": false}
assert LORA_PATH.exists(), (f"{LORA_PATH} not found next to the notebook: run the training cell above "
                            "(and hand the file in with the notebook)")
pipe = StableDiffusionPipeline.from_pretrained(TINY_SD, safety_checker=None, requires_safety_checker=False)
with diffusers_quiet():
    pipe.load_lora_weights(".", weight_name=LORA_PATH.name)  # diffusers reads your file
base_loss = denoising_loss(pipe.unet, lora_scale=0.0)          # scale 0: the adapters switched off
lora_loss = denoising_loss(pipe.unet, lora_scale=1.0)
print(f"evaluation loss on '{CONCEPT_PROMPT}': base model {base_loss:.4f}, with your LoRA {lora_loss:.4f} "
      f"({100 * (1 - lora_loss / base_loss):.1f} % lower)")
assert lora_loss < 0.95 * base_loss, "the trained adapters should lower the evaluation loss by at least 5 %"
### BEGIN HIDDEN TESTS
state = load_file(LORA_PATH)
assert len(state) == 64 and all(k.startswith("unet.") for k in state)
assert all(torch.count_nonzero(v) > 0 for k, v in state.items() if k.endswith("lora_B.weight"))
with safe_open(str(LORA_PATH), framework="pt") as f:
    assert "lora_adapter_metadata" in (f.metadata() or {})
### END HIDDEN TESTS

# %% [markdown]
# ## Part 5 — What did the adapter learn? (ungraded)
#
# diffusers loads your file into a fresh UNet; its LoRA strength $s$ (`cross_attention_kwargs={"scale": s}`)
# multiplies $\Delta W$: $h = W_0 x + s\,\frac{\alpha}{r} BAx$. Left: the denoising error on the new concept
# at each timestep, for the base model ($s = 0$) and for strength $s$. Right: the same for the new concept and
# for pictures the adapter never saw (shapes from the course's shapes world, with their own captions).
# Turn the knob: how does the error depend on $s$? Does the adapter help on the other pictures too?

# %%
def error_by_timestep(unet, latents, context, scale, timesteps=range(50, 1000, 100)):
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(latents.shape, generator=g)
    return [denoising_loss(unet, latents, context, noise, torch.full((len(latents),), t), lora_scale=scale)
            for t in timesteps]


def plot_lora_effect(scale=1.0):
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    steps = list(range(50, 1000, 100))
    for s, style in [(0.0, "--"), (scale, "-")]:
        left.plot(steps, error_by_timestep(lora_unet, eval_latents, eval_context, s), style, label=f"s = {s:g}")
    left.set(xlabel="timestep t", ylabel="denoising error", title=f"'{CONCEPT_PROMPT}'")
    left.legend()
    sets = {"new concept": (eval_latents, eval_context), "other shapes": (other_latents, other_context)}
    errors = {name: [denoising_loss(lora_unet, z, c, other_noise, other_t, lora_scale=s) for s in (0.0, scale)]
              for name, (z, c) in sets.items()}
    for i, (name, (base, tuned)) in enumerate(errors.items()):
        right.bar([2 * i, 2 * i + 0.8], [base, tuned], width=0.8, color=["C0", "C1"])
        right.text(2 * i + 0.8, tuned, f"{100 * (tuned / base - 1):+.0f} %", ha="center", va="bottom")
    right.set_xticks([0.4, 2.4], list(errors))
    right.set_ylim(0, 1.15 * max(max(pair) for pair in errors.values()))
    right.set(ylabel="denoising error", title=f"base (blue) vs LoRA s = {scale:g} (orange)")
    figure.tight_layout()
    plt.show()


if AUTOGRADING or not LORA_PATH.exists():
    print("skipped (autograding, or no trained adapter yet)")
else:
    lora_unet = UNet2DConditionModel.from_pretrained(TINY_SD, subfolder="unet").eval()
    lora_unet.load_lora_adapter(str(LORA_PATH), prefix="unet", use_safetensors=True)
    others = shapes_batch(32, seed=3, image_size=64)
    _g = torch.Generator().manual_seed(4)
    other_latents = encode_images(components, others["image"], generator=_g)
    other_context = encode_prompts(components, others["caption"])
    other_noise, other_t = eval_noise, eval_timesteps
    plot_lora_effect(1.0)
    widgets.interact(plot_lora_effect, scale=widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.25))

# %% [markdown]
# **What you see, and why.** The error changes smoothly with $s$, a volume knob on $\Delta W$ (beyond $s = 1$
# the adapter overshoots). It falls about as much on the other shapes as on the concept: our base model has
# random weights, so most of what a few hundred steps teach it is what *every* denoiser has to know, and to a
# random VAE all our pictures (one shape on black) look alike. A pretrained Stable Diffusion knows all that
# already, so its adapter spends its few numbers on what is new, the concept: in the workshop, $s$ fades the
# concept in and out of real pictures.
#
# ## Before you hand in
#
# - Run the whole notebook top to bottom (*Kernel → Restart & Run All*): every visible test should print OK.
# - Hand in `a5_lora.ipynb` **and** `a5_lora_weights.safetensors` (on Colab: the file browser on the left,
#   right-click → Download).
#
# **To think about (ungraded).** (1) Why may B start at zero but A not? What would happen the other way round
# (A = 0, B random)? (2) Which costs more at inference time: a merged or an unmerged adapter? Why would anyone
# keep it unmerged? (3) The file stores A and B; its `lora_alpha` decides how strongly they act. What would a
# loader that ignores the metadata do with your adapter if you trained with `lora_alpha = 2 r`?
#
# **Going further (optional, ungraded):** lecture 10, the LoRA workshop, fine-tunes the real SD v1.5 on a Colab
# GPU with the same ideas (and `course_lib.sd.train_lora`), and shows the concept appear in the pictures.
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/2026-fall/lectures/10_lora_workshop.ipynb)

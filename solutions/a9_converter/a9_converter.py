# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Assignment 9 (capstone): load a real Stable Diffusion checkpoint into the course's modules
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-course/latent-diffusion-course/blob/2026-fall/assignments/a9_converter/a9_converter.ipynb)
#
# You have built every network of Stable Diffusion: the UNet (assignment 6), the CLIP text transformer
# (assignment 7) and the convolutional VAE (assignment 8); the course library holds reference versions of all
# three in `course_lib.models`, with diffusers' and transformers' parameter names. Weights for SD v1.x reach
# people in two layouts:
#
# - the **diffusers folder** (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`), whose names are those
#   of our modules already;
# - the **original single file** (`v1-5-pruned-emaonly.ckpt` or `.safetensors`, what most model sites share):
#   one flat dictionary of ~1,100 tensors named after the original training code, `model.diffusion_model.*`
#   (UNet), `first_stage_model.*` (VAE) and `cond_stage_model.transformer.*` (text encoder), plus some
#   tensors that are no weights at all.
#
# In this capstone you write the **converter** that reads both into the course's modules, and the **sampling
# loop**, and you reproduce diffusers' `StableDiffusionPipeline` image for a fixed prompt, seed and scheduler to
# within $10^{-4}$. Offline, everything runs on a *tiny* SD with random weights, written by the course in both
# layouts (with the original key names); on Colab, the same code loads the real v1.5 weights (see the end).
#
# **What you will learn**
# - how a state dict's names follow from a module tree, and how two module trees of the same network differ;
# - what the original LDM code called each piece (`input_blocks`, `middle_block`, `output_blocks`,
#   `in_layers`, `emb_layers`, `skip_connection`, `mid.attn_1`, `nin_shortcut`, ...);
# - that a 1x1 convolution and a linear layer hold the same numbers in different shapes;
# - every step of `StableDiffusionPipeline.__call__`: prompt and empty prompt, latents, guidance, decoding.
#
# **Prerequisites**: assignments 6-8 (or the modules of `course_lib.models`), lecture 7.
#
# **Time**: 3-5 hours of work. All tests run in under 30 seconds on a laptop CPU; no GPU is needed (the
# optional last section, the real SD v1.5 on a Colab GPU, takes a few minutes, most of them downloading).
#
# **Points** (18 in total, all autograded):
#
# | part | what | points |
# |---|---|---|
# | 1 | `unet_key_to_original`: the UNet's names | 4 |
# | 2 | `vae_key_to_original`: the VAE's names | 3 |
# | 3 | `convert_single_file`: a whole single file into three state dicts | 4 |
# | 4 | `generate`: the sampling loop of `StableDiffusionPipeline` | 4 |
# | 5 | `load_checkpoint`, both layouts -> the pipeline's image | 3 |
#
# Each test cell is all-or-nothing. The tests of parts 3 and 4 use the course's versions of the parts before them,
# so a mistake there costs points once; part 5 puts *your* pieces together and passes only if all of them are right.
# Hidden tests (run when grading) use SD v1.5's full layout, other prompts and seeds.
# Write the conversion and the loop yourself: answers that call diffusers, transformers, `course_lib.sd` or the
# course's converter (`course_lib.models.convert`, except `build_modules`) get no credit.

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
# Parameters (read-only). Nothing trains in this assignment: FAST (set by CI) changes nothing here.
import os

FAST = False
AUTOGRADE = os.environ.get("COURSE_AUTOGRADE") == "1"  # set by the graders: the optional cells are skipped
PROMPT = "a red circle on a blue background"
SEED = 7
STEPS = 4          # DDIM steps: few, the tiny model is random anyway
GUIDANCE = 7.5     # classifier-free guidance scale, SD's default

# %% nbgrader={"grade": false, "grade_id": "tiny_sd", "locked": true, "schema_version": 3, "solution": false}
# The tiny SD in both layouts, in a fresh temporary folder (read-only cell).
import json
import re
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from course_lib.models.convert import build_modules  # course modules (UNet, VAE, CLIP text) from config dicts
from course_lib.schedulers import DDIMScheduler
from course_lib.sd.tiny import build_tiny_sd

_WORK = Path(tempfile.mkdtemp(prefix="a9-"))
TINY_FOLDER = build_tiny_sd(_WORK / "tiny-sd", seed=0)                  # the diffusers layout
from course_lib.models.convert import save_single_file as _save_single_file  # the course's writer
TINY_SAFETENSORS = _save_single_file(TINY_FOLDER, _WORK / "tiny-sd.safetensors")  # the original layout
TINY_CKPT = _save_single_file(TINY_FOLDER, _WORK / "tiny-sd.ckpt")                # the same, pickled

COMPONENTS = ("unet", "vae", "text_encoder")
CONFIGS = {c: json.loads((TINY_FOLDER / c / "config.json").read_text()) for c in COMPONENTS}
EXPECTED_KEYS = {c: list(m.state_dict()) for c, m in build_modules(CONFIGS).items()}  # the names to produce
print({c: len(k) for c, k in EXPECTED_KEYS.items()}, "parameters per module")

# %% nbgrader={"grade": false, "grade_id": "test_helpers", "locked": true, "schema_version": 3, "solution": false}
# Helpers of the tests (read-only).
import diffusers
from transformers import CLIPTokenizer

from course_lib.models import convert as _course
from course_lib.sd.architecture import sd15_config as _sd15_config

TOKENIZER = CLIPTokenizer.from_pretrained(TINY_FOLDER / "tokenizer", local_files_only=True)


def new_scheduler() -> DDIMScheduler:
    """The course's DDIM sampler with the checkpoint's training schedule (scaled_linear, 1000 steps)."""
    return DDIMScheduler.from_config(json.loads((TINY_FOLDER / "scheduler" / "scheduler_config.json").read_text()))


_PIPELINE = diffusers.StableDiffusionPipeline.from_pretrained(TINY_FOLDER, safety_checker=None, local_files_only=True)
_PIPELINE.scheduler = diffusers.DDIMScheduler.from_config(_PIPELINE.scheduler.config)
_PIPELINE.set_progress_bar_config(disable=True)


def _pipeline_image(prompt, seed, steps, guidance):
    """What diffusers' StableDiffusionPipeline makes of the tiny SD with the DDIM scheduler: (1, 3, 64, 64)."""
    return _PIPELINE(prompt, num_inference_steps=steps, guidance_scale=guidance,
                generator=torch.Generator().manual_seed(seed), output_type="pt").images


def _course_modules():
    """The tiny SD's modules, loaded by the course's converter from the diffusers folder."""
    loaded = _course.load_sd_checkpoint(TINY_FOLDER)
    return loaded.unet, loaded.vae, loaded.text_encoder


def _meta_keys(config: dict, component: str) -> list:
    with torch.device("meta"):
        return list(build_modules({**CONFIGS, component: config})[component].state_dict())


def _reference_unet_name(key, config):
    layers, up_attention = _course._unet_layout(config)
    return "model.diffusion_model." + _course.unet_key_to_original(key, layers, up_attention)


def _reference_vae_name(key, config):
    return "first_stage_model." + _course.vae_key_to_original(key, len(config["block_out_channels"]))


class _using:
    """While the block runs, the notebook's names point at the course's versions (then yours come back)."""

    def __init__(self, **replacements):
        self.replacements, self.saved = replacements, {}

    def __enter__(self):
        for name, value in self.replacements.items():
            self.saved[name] = globals().get(name)
            globals()[name] = value

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            globals()[name] = value


def _check_image(image, want, what):
    assert isinstance(image, torch.Tensor) and image.shape == want.shape, (
        f"{what}: expected a tensor of shape {tuple(want.shape)}, got "
        f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    gap = (image - want).abs().max().item()
    assert gap <= 1e-4, f"{what}: differs from StableDiffusionPipeline's image by up to {gap:.3g} (allowed 1e-4)"


# %% [markdown]
# ## The two layouts side by side
#
# Run the cell below and compare: the same numbers, different names (and, for a few, different shapes).

# %%
_folder = {c: load_file(TINY_FOLDER / c / ("model.safetensors" if c == "text_encoder" else
                                         "diffusion_pytorch_model.safetensors")) for c in COMPONENTS}
_single = load_file(TINY_SAFETENSORS)
print("diffusers folder, unet:", *list(_folder["unet"])[:4], sep="\n  ")
print("single file:", *[k for k in _single if k.startswith("model.diffusion_model.")][:4], sep="\n  ")
print("not under the three prefixes:", [k for k in _single if not k.startswith(
    ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."))])
print("VAE attention query: folder", tuple(_folder["vae"]["encoder.mid_block.attentions.0.to_q.weight"].shape),
      "single file", tuple(_single["first_stage_model.encoder.mid.attn_1.q.weight"].shape))

# %% [markdown]
# ## Part 1: the UNet's names (4 points)
#
# The original UNet (`openaimodel.UNetModel` of the latent-diffusion code) keeps its blocks in three flat lists:
# `input_blocks`, `middle_block`, `output_blocks`; each entry is a small sequence whose item `.0` is a ResNet
# block and item `.1` the attention (if any). diffusers groups the same blocks by resolution level. With
# $L$ = `config["layers_per_block"]` (SD v1: 2), level $i$ and block $j$:
#
# | diffusers | original (after `model.diffusion_model.`) |
# |---|---|
# | `conv_in` | `input_blocks.0.0` |
# | `time_embedding.linear_1`, `.linear_2` | `time_embed.0`, `time_embed.2` |
# | `down_blocks.i.resnets.j` / `.attentions.j` | `input_blocks.n.0` / `input_blocks.n.1`, with $n = 1 + i(L+1) + j$ |
# | `down_blocks.i.downsamplers.0.conv` | `input_blocks.n.0.op`, with $n = (i+1)(L+1)$ |
# | `mid_block.resnets.0`, `.attentions.0`, `.resnets.1` | `middle_block.0`, `.1`, `.2` |
# | `up_blocks.i.resnets.j` / `.attentions.j` | `output_blocks.n.0` / `output_blocks.n.1`, with $n = i(L+1) + j$ |
# | `up_blocks.i.upsamplers.0` | `output_blocks.n.1` with $n = i(L+1) + L$, **or `.2`** if level $i$ has attention |
# | `conv_norm_out`, `conv_out` | `out.0`, `out.2` |
#
# (The gaps in the numbers, `time_embed.1`, `out.1`, are the activation functions, which have no weights.)
# Inside a ResNet block the names differ too: `norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`,
# `conv_shortcut` are `in_layers.0`, `in_layers.2`, `emb_layers.1`, `out_layers.0`, `out_layers.3`,
# `skip_connection`. Inside an attention block (`Transformer2DModel`) every name is the same in both layouts.
# Level $i$ of the up path has attention when `config["up_block_types"][i]` is `"CrossAttnUpBlock2D"`.
#
# **Task**: `unet_key_to_original(key, config)`: the full original name, `model.diffusion_model.` included, of
# the diffusers UNet parameter `key`, for the UNet described by the diffusers config dict `config`.
# Regular expressions (`re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)`) keep this short.

# %% course_grading={"forbidden": ["diffusers", "transformers", "course_lib.sd", "course_lib.models.convert.unet_key_to_original", "course_lib.models.convert.original_key_map", "course_lib.models.convert.from_original", "course_lib.models.convert.to_original", "course_lib.models.convert.load_sd_checkpoint", "course_lib.models.convert._unet_layout", "course_lib.models.convert._replace_start"], "tests": ["test_unet_keys", "test_capstone"]} nbgrader={"grade": false, "grade_id": "unet_keys", "locked": false, "schema_version": 3, "solution": true}
def unet_key_to_original(key: str, config: dict) -> str:
    ### BEGIN SOLUTION
    L = config["layers_per_block"]
    resnet_names = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}

    def inside_resnet(rest):
        first, _, tail = rest.partition(".")
        return f"{resnet_names[first]}.{tail}"

    if (m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key)):
        i, j = int(m[2]), int(m[4])
        n = 1 + i * (L + 1) + j if m[1] == "down" else i * (L + 1) + j
        blocks = "input_blocks" if m[1] == "down" else "output_blocks"
        rest = f"0.{inside_resnet(m[5])}" if m[3] == "resnets" else f"1.{m[5]}"
        name = f"{blocks}.{n}.{rest}"
    elif (m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key)):
        name = f"input_blocks.{(int(m[1]) + 1) * (L + 1)}.0.op.{m[2]}"
    elif (m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)$", key)):
        i = int(m[1])
        slot = 2 if config["up_block_types"][i] == "CrossAttnUpBlock2D" else 1
        name = f"output_blocks.{i * (L + 1) + L}.{slot}.{m[2]}"
    elif (m := re.match(r"mid_block\.attentions\.0\.(.+)$", key)):
        name = f"middle_block.1.{m[1]}"
    elif (m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)$", key)):
        name = f"middle_block.{2 * int(m[1])}.{inside_resnet(m[2])}"
    else:
        top = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
               "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
        module, _, tail = key.rpartition(".")
        name = f"{top[module]}.{tail}"
    return "model.diffusion_model." + name
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_unet_keys", "locked": true, "points": 4, "schema_version": 3, "solution": false}
# Visible tests: names from the released SD v1.5 checkpoint.
_SD15_UNET = _sd15_config("unet")
for _key, _original in {
    "conv_in.weight": "input_blocks.0.0.weight",
    "time_embedding.linear_1.bias": "time_embed.0.bias",
    "down_blocks.0.resnets.1.conv1.weight": "input_blocks.2.0.in_layers.2.weight",
    "down_blocks.1.attentions.0.proj_in.weight": "input_blocks.4.1.proj_in.weight",
    "down_blocks.2.downsamplers.0.conv.bias": "input_blocks.9.0.op.bias",
    "mid_block.resnets.0.time_emb_proj.weight": "middle_block.0.emb_layers.1.weight",
    "up_blocks.0.upsamplers.0.conv.weight": "output_blocks.2.1.conv.weight",
    "up_blocks.2.resnets.0.conv_shortcut.weight": "output_blocks.6.0.skip_connection.weight",
    "conv_out.weight": "out.2.weight",
}.items():
    _got = unet_key_to_original(_key, _SD15_UNET)
    assert _got == "model.diffusion_model." + _original, f"{_key}: expected model.diffusion_model.{_original}, got {_got}"
### BEGIN HIDDEN TESTS
_three_levels = {**CONFIGS["unet"], "block_out_channels": [32, 32, 64], "layers_per_block": 2,
                 "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
                 "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"]}
for _config in (_SD15_UNET, CONFIGS["unet"], _three_levels):
    for _key in _meta_keys(_config, "unet"):
        _got, _want = unet_key_to_original(_key, _config), _reference_unet_name(_key, _config)
        assert _got == _want, f"{_key}: expected {_want}, got {_got}"
### END HIDDEN TESTS

# %% [markdown]
# ## Part 2: the VAE's names (3 points)
#
# The original VAE (LDM's `AutoencoderKL`) differs from diffusers' in four ways (after `first_stage_model.`):
#
# | diffusers | original |
# |---|---|
# | `encoder.down_blocks.i.resnets.j`, `.downsamplers.0` | `encoder.down.i.block.j`, `encoder.down.i.downsample` |
# | `decoder.up_blocks.i.resnets.j`, `.upsamplers.0` | `decoder.up.k.block.j`, `decoder.up.k.upsample`, **with $k = n - 1 - i$** |
# | `{encoder,decoder}.mid_block.resnets.0`, `.resnets.1` | `{encoder,decoder}.mid.block_1`, `.mid.block_2` |
# | `{...}.mid_block.attentions.0.group_norm`, `.to_q`, `.to_k`, `.to_v`, `.to_out.0` | `{...}.mid.attn_1.norm`, `.q`, `.k`, `.v`, `.proj_out` |
# | `conv_shortcut` (in a ResNet block) | `nin_shortcut` |
# | `{encoder,decoder}.conv_norm_out` | `{encoder,decoder}.norm_out` |
#
# `conv_in`, `conv_out`, `quant_conv`, `post_quant_conv` and the ResNets' `norm1`, `conv1`, `norm2`, `conv2` keep
# their names. $n$ = `len(config["block_out_channels"])`: the original numbers the decoder's levels by
# resolution (`up.0` is the full-size level, which runs *last*), diffusers in the order they run.
#
# **Task**: `vae_key_to_original(key, config)`, the full original name (`first_stage_model.` included).

# %% course_grading={"forbidden": ["diffusers", "transformers", "course_lib.sd", "course_lib.models.convert.vae_key_to_original", "course_lib.models.convert.original_key_map", "course_lib.models.convert.from_original", "course_lib.models.convert.to_original", "course_lib.models.convert.load_sd_checkpoint", "course_lib.models.convert._replace_start"], "tests": ["test_vae_keys", "test_capstone"]} nbgrader={"grade": false, "grade_id": "vae_keys", "locked": false, "schema_version": 3, "solution": true}
def vae_key_to_original(key: str, config: dict) -> str:
    ### BEGIN SOLUTION
    n = len(config["block_out_channels"])
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    name = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    name = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", name)
    name = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", name)
    name = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.block.", name)
    name = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.upsample.",
                  name)
    name = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", name)
    if (m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(to_out\.0|\w+)\.(\w+)$", name)):
        name = f"{m[1]}.mid.attn_1.{attention[m[2]]}.{m[3]}"
    return "first_stage_model." + name
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_vae_keys", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Visible tests: names from the released SD v1.5 checkpoint.
_SD15_VAE = _sd15_config("vae")
for _key, _original in {
    "encoder.conv_in.weight": "encoder.conv_in.weight",
    "encoder.down_blocks.1.resnets.0.conv_shortcut.weight": "encoder.down.1.block.0.nin_shortcut.weight",
    "encoder.down_blocks.0.downsamplers.0.conv.weight": "encoder.down.0.downsample.conv.weight",
    "encoder.mid_block.attentions.0.to_q.weight": "encoder.mid.attn_1.q.weight",
    "decoder.mid_block.resnets.1.norm2.bias": "decoder.mid.block_2.norm2.bias",
    "decoder.up_blocks.0.resnets.2.conv1.weight": "decoder.up.3.block.2.conv1.weight",
    "decoder.up_blocks.1.upsamplers.0.conv.weight": "decoder.up.2.upsample.conv.weight",
    "decoder.conv_norm_out.weight": "decoder.norm_out.weight",
    "post_quant_conv.bias": "post_quant_conv.bias",
}.items():
    _got = vae_key_to_original(_key, _SD15_VAE)
    assert _got == "first_stage_model." + _original, f"{_key}: expected first_stage_model.{_original}, got {_got}"
### BEGIN HIDDEN TESTS
_three_levels = {**CONFIGS["vae"], "block_out_channels": [16, 32, 32], "layers_per_block": 2,
                 "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3}
for _config in (_SD15_VAE, CONFIGS["vae"], _three_levels):
    for _key in _meta_keys(_config, "vae"):
        _got, _want = vae_key_to_original(_key, _config), _reference_vae_name(_key, _config)
        assert _got == _want, f"{_key}: expected {_want}, got {_got}"
### END HIDDEN TESTS

# %% [markdown]
# ## Part 3: a whole single file (4 points)
#
# Now turn a single-file state dict `checkpoint` (original names) into three state dicts with our modules' names,
# one per component, ready for a strict `load_state_dict`. `expected_keys[c]` lists the names module `c` wants
# (the cell at the top made them: `EXPECTED_KEYS`); `configs[c]` is its config dict. For every expected name, find
# the original name and take that tensor:
#
# - unet: your `unet_key_to_original`; vae: your `vae_key_to_original`;
# - text encoder: the original name is `cond_stage_model.transformer.text_model.` + our name (our CLIP module
#   names its parameters as transformers 5 does, `embeddings.token_embedding.weight`, ...; SD's file was written
#   by transformers 4, which put them under `text_model.`);
# - the VAE's attention projections (`...mid.attn_1.q/k/v/proj_out.weight`) are 1x1 convolutions in the file,
#   shape $(C, C, 1, 1)$: reshape them to the linear layer's $(C, C)$. A 1x1 convolution computes
#   $\sum_{c'} W_{c c'} x_{c'}$ at every position, which is exactly a linear layer applied per position.
#
# Everything else in the file (`betas`, `alphas_cumprod`, ... of the training schedule, the text encoder's
# `position_ids`, an EMA copy `model_ema.*` in some files) is not a weight of our modules: leave it out.
#
# **Task**: `convert_single_file(checkpoint, expected_keys, configs)` -> `{"unet": ..., "vae": ...,
# "text_encoder": ...}`, three dicts of tensors.

# %% course_grading={"forbidden": ["diffusers", "transformers", "course_lib.sd", "course_lib.models.convert.from_original", "course_lib.models.convert.original_key_map", "course_lib.models.convert.text_encoder_key_to_original", "course_lib.models.convert.load_sd_checkpoint", "course_lib.models.convert.read_checkpoint", "course_lib.models.clip_text.strip_text_model_prefix"], "tests": ["test_convert", "test_capstone"]} nbgrader={"grade": false, "grade_id": "convert_single_file", "locked": false, "schema_version": 3, "solution": true}
def convert_single_file(checkpoint: dict, expected_keys: dict, configs: dict) -> dict:
    ### BEGIN SOLUTION
    original_name = {
        "unet": lambda key: unet_key_to_original(key, configs["unet"]),
        "vae": lambda key: vae_key_to_original(key, configs["vae"]),
        "text_encoder": lambda key: "cond_stage_model.transformer.text_model." + key,
    }
    converted = {}
    for component, keys in expected_keys.items():
        state = {}
        for key in keys:
            tensor = checkpoint[original_name[component](key)]
            if component == "vae" and tensor.ndim == 4 and ".mid.attn_1." in original_name[component](key):
                tensor = tensor[:, :, 0, 0]  # 1x1 conv (C, C, 1, 1) -> linear (C, C)
            state[key] = tensor
        converted[component] = state
    return converted
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_convert", "locked": true, "points": 4, "schema_version": 3, "solution": false}
# Visible tests: with the course's name functions inside, your conversion of the tiny single file loads strictly
# into the course's modules and gives exactly the diffusers folder's weights.
def _check_conversion(checkpoint):
    with _using(unet_key_to_original=_reference_unet_name, vae_key_to_original=_reference_vae_name):
        converted = convert_single_file(checkpoint, EXPECTED_KEYS, CONFIGS)
    assert set(converted) == set(COMPONENTS), f"expected the keys {COMPONENTS}, got {sorted(converted)}"
    modules = build_modules(CONFIGS)
    for component in COMPONENTS:
        modules[component].load_state_dict(converted[component], strict=True)
        folder = load_file(TINY_FOLDER / component / ("model.safetensors" if component == "text_encoder"
                                                       else "diffusion_pytorch_model.safetensors"))
        for key, value in modules[component].state_dict().items():
            assert torch.equal(value, folder[key]), f"{component}.{key} does not hold the folder's numbers"


_check_conversion(load_file(TINY_SAFETENSORS))
### BEGIN HIDDEN TESTS
_extended = {**load_file(TINY_SAFETENSORS), "model_ema.decay": torch.tensor(0.9999),
             "model_ema.num_updates": torch.tensor(1000), "logvar": torch.zeros(1000)}
_check_conversion(_extended)
### END HIDDEN TESTS

# %% [markdown]
# ## Part 4: the sampling loop (4 points)
#
# `StableDiffusionPipeline(prompt, generator=...)` does, in this order:
#
# 1. tokenize `["", prompt]` (the empty prompt for the unconditional half comes **first**) with
#    `tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
#    return_tensors="pt").input_ids`, and encode them: `context = text_encoder(ids).last_hidden_state`, (2, 77, D);
# 2. `scheduler.set_timesteps(num_inference_steps)`; draw the initial latents
#    `torch.randn((1, unet.config.in_channels, s, s), generator=generator) * scheduler.init_noise_sigma`, with
#    `s = unet.config.sample_size`;
# 3. for each `t` in `scheduler.timesteps`: run the UNet once on both halves,
#    `eps = unet(torch.cat([x, x]), t, context)`, split it (`eps.chunk(2)`), combine with guidance
#    $\hat\varepsilon = \varepsilon_u + w(\varepsilon_c - \varepsilon_u)$, and step:
#    `x = scheduler.step(eps_hat, t, x).prev_sample`;
# 4. decode `vae.decode(x / vae.config.scaling_factor)` and map $[-1, 1]$ to $[0, 1]$: `(image / 2 + 0.5).clamp(0, 1)`.
#
# Run it without gradients (`torch.no_grad()`). Any change of order in the random draws, of the halves, or
# of the scaling gives another image.
#
# **Task**: `generate(unet, vae, text_encoder, tokenizer, scheduler, prompt, generator, num_inference_steps,
# guidance_scale)` -> the image, shape (1, 3, H, W), values in [0, 1].

# %% course_grading={"forbidden": ["diffusers", "transformers", "course_lib.sd", "course_lib.models.convert.generate", "course_lib.models.convert.encode_prompt", "course_lib.pipeline", "course_lib.demo"], "tests": ["test_generate", "test_capstone"]} nbgrader={"grade": false, "grade_id": "generate", "locked": false, "schema_version": 3, "solution": true}
@torch.no_grad()
def generate(unet, vae, text_encoder, tokenizer, scheduler, prompt: str, generator: torch.Generator,
             num_inference_steps: int, guidance_scale: float) -> torch.Tensor:
    ### BEGIN SOLUTION
    ids = tokenizer(["", prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    context = text_encoder(ids).last_hidden_state  # (2, 77, D): unconditional first
    scheduler.set_timesteps(num_inference_steps)
    size = unet.config.sample_size
    x = torch.randn((1, unet.config.in_channels, size, size), generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps_uncond, eps_cond = unet(torch.cat([x, x]), t, context).chunk(2)
        eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        x = scheduler.step(eps, t, x).prev_sample
    image = vae.decode(x / vae.config.scaling_factor)
    return (image / 2 + 0.5).clamp(0, 1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_generate", "locked": true, "points": 4, "schema_version": 3, "solution": false}
# Visible test: the course's modules (loaded from the diffusers folder by the course's converter) in your loop
# give StableDiffusionPipeline's image.
_unet, _vae, _text_encoder = _course_modules()
_image = generate(_unet, _vae, _text_encoder, TOKENIZER, new_scheduler(), PROMPT, torch.Generator().manual_seed(SEED),
                  STEPS, GUIDANCE)
_check_image(_image, _pipeline_image(PROMPT, SEED, STEPS, GUIDANCE), f"generate({PROMPT!r}, seed {SEED})")
### BEGIN HIDDEN TESTS
for _prompt, _seed, _steps, _guidance in [("a small green star at the top", 3, 3, 5.0), ("", 11, 2, 1.0)]:
    _image = generate(_unet, _vae, _text_encoder, TOKENIZER, new_scheduler(), _prompt,
                      torch.Generator().manual_seed(_seed), _steps, _guidance)
    _check_image(_image, _pipeline_image(_prompt, _seed, _steps, _guidance), f"generate({_prompt!r}, seed {_seed})")
### END HIDDEN TESTS

# %% [markdown]
# ## Part 5: both layouts, your pieces only (3 points)
#
# `load_checkpoint(path, configs)` returns `(unet, vae, text_encoder)`, the course's modules (from
# `build_modules(configs)`, already imported) with the weights of `path` loaded strictly, in eval mode:
#
# - `path` is a **folder** (diffusers layout): load `unet/diffusion_pytorch_model.safetensors`,
#   `vae/diffusion_pytorch_model.safetensors` and `text_encoder/model.safetensors` with
#   `safetensors.torch.load_file`. Folders written by transformers 4 (the real SD v1.5 one) name the text
#   encoder's tensors `text_model.embeddings...`, `text_model.encoder...`: drop that prefix when present, and leave
#   out a `text_model.embeddings.position_ids` buffer if there is one;
# - `path` is a **`.safetensors` file**: `load_file(path)` gives the flat original-layout dict;
# - `path` is a **`.ckpt` file**: `torch.load(path, map_location="cpu", weights_only=True)` gives a dict whose
#   `"state_dict"` entry is the flat dict (`weights_only=True`: a pickle can run code; this refuses anything
#   but tensors and plain containers). Convert both with your `convert_single_file`.
#
# The test then runs **your** `generate` on **your** modules, for the folder and for both single files: all
# three must give `StableDiffusionPipeline`'s image.

# %% course_grading={"forbidden": ["diffusers", "transformers", "course_lib.sd", "course_lib.models.convert.load_sd_checkpoint", "course_lib.models.convert.read_checkpoint", "course_lib.models.convert.from_original", "course_lib.models.convert._align_text_keys", "course_lib.models.convert._folder_state_dict", "course_lib.models.clip_text.strip_text_model_prefix", "course_lib.models.clip_text.CLIPTextModel.from_pretrained"], "tests": ["test_capstone"]} nbgrader={"grade": false, "grade_id": "load_checkpoint", "locked": false, "schema_version": 3, "solution": true}
def load_checkpoint(path, configs: dict):
    ### BEGIN SOLUTION
    path = Path(path)
    modules = build_modules(configs)
    if path.is_dir():
        files = {"unet": "unet/diffusion_pytorch_model.safetensors", "vae": "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder": "text_encoder/model.safetensors"}
        states = {c: load_file(path / f) for c, f in files.items()}
        states["text_encoder"] = {k.removeprefix("text_model."): v for k, v in states["text_encoder"].items()
                                  if not k.endswith("position_ids")}
    else:
        if path.suffix == ".safetensors":
            checkpoint = load_file(path)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        expected = {c: list(m.state_dict()) for c, m in modules.items()}
        states = convert_single_file(checkpoint, expected, configs)
    for component in ("unet", "vae", "text_encoder"):
        modules[component].load_state_dict(states[component], strict=True)
        modules[component].eval()
    return modules["unet"], modules["vae"], modules["text_encoder"]
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_capstone", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Visible test: your loader and your loop, from the folder and from both single files -> the pipeline's image.
_want = _pipeline_image(PROMPT, SEED, STEPS, GUIDANCE)
for _path in (TINY_FOLDER, TINY_SAFETENSORS, TINY_CKPT):
    _image = generate(*load_checkpoint(_path, CONFIGS), TOKENIZER, new_scheduler(), PROMPT,
                      torch.Generator().manual_seed(SEED), STEPS, GUIDANCE)
    _check_image(_image, _want, f"from {_path.name}")
### BEGIN HIDDEN TESTS
import shutil as _shutil

_old_folder = _WORK / "tiny-sd-transformers4"  # a folder whose text encoder was saved by transformers 4
if not _old_folder.exists():
    _shutil.copytree(TINY_FOLDER, _old_folder)
    _state = load_file(TINY_FOLDER / "text_encoder" / "model.safetensors")
    _state = {"text_model." + k: v for k, v in _state.items()}
    _state["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    from safetensors.torch import save_file as _save_file
    _save_file(_state, _old_folder / "text_encoder" / "model.safetensors")
_image = generate(*load_checkpoint(_old_folder, CONFIGS), TOKENIZER, new_scheduler(), PROMPT,
                  torch.Generator().manual_seed(SEED), STEPS, GUIDANCE)
_check_image(_image, _want, "from a folder written by transformers 4")
_want = _pipeline_image("a big orange ring", 5, 3, 3.0)
_image = generate(*load_checkpoint(TINY_CKPT, CONFIGS), TOKENIZER, new_scheduler(), "a big orange ring",
                  torch.Generator().manual_seed(5), 3, 3.0)
_check_image(_image, _want, "from the .ckpt, another prompt and seed")
### END HIDDEN TESTS

# %% [markdown]
# ## What you built
#
# The cell below shows your image next to the pipeline's (random weights: expect coloured noise, identical twice).

# %%
if not AUTOGRADE:
    from course_lib.viz import show_images

    _mine = generate(*load_checkpoint(TINY_CKPT, CONFIGS), TOKENIZER, new_scheduler(), PROMPT,
                     torch.Generator().manual_seed(SEED), STEPS, GUIDANCE)
    _theirs = _pipeline_image(PROMPT, SEED, STEPS, GUIDANCE)
    print(f"largest difference: {(_mine - _theirs).abs().max().item():.2e}")
    fig = show_images(torch.cat([_mine, _theirs]), titles=["yours, from the .ckpt", "StableDiffusionPipeline"],
                      value_range=(0.0, 1.0))

# %% [markdown]
# ## On Colab: the real SD v1.5 (optional, not graded)
#
# The same functions load the real weights: download the single file of the SD v1.5 repository (about 4 GB) and
# pass SD v1.5's configs, which the course ships:
#
# ```python
# from huggingface_hub import hf_hub_download
# from course_lib.sd.architecture import sd15_config
# repo = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# configs = {c: sd15_config(c) for c in ("unet", "vae", "text_encoder")}
# unet, vae, text_encoder = load_checkpoint(hf_hub_download(repo, "v1-5-pruned-emaonly.safetensors"), configs)
# tokenizer = CLIPTokenizer.from_pretrained(repo, subfolder="tokenizer")
# scheduler = DDIMScheduler.from_config(sd15_config("scheduler"))
# image = generate(unet, vae, text_encoder, tokenizer, scheduler, "a photo of an astronaut riding a horse",
#                  torch.Generator().manual_seed(0), 25, 7.5)
# ```
#
# On a CPU this takes minutes per image; on a GPU, move the three modules there and let your `generate` put
# `ids` and `x` on the modules' device (draw the noise on the CPU generator first, then move it, so the image
# stays the same). Then compare with `StableDiffusionPipeline.from_pretrained(repo)` given a `DDIMScheduler`,
# the same seed and 25 steps. (This path needs the network; the course's tests cover the tiny SD only.)

# %% [markdown]
# ## Submitting
#
# 1. Run every cell from the top (*Kernel -> Restart & Run All*) and check that the visible tests pass.
# 2. Submit **`a9_converter.ipynb`** (no weights: the graders write the tiny SD themselves).
#    The graders run your notebook with `COURSE_AUTOGRADE=1` on a CPU.
# 3. Do not rename the notebook, and do not change the read-only cells: they are restored before grading.

"""Stable Diffusion v1.x checkpoints, in both layouts people meet, into the course's modules, and back.

Two layouts hold the same numbers under different names:

    diffusers folder   model_index.json and one subfolder per component: unet/ and vae/ (config.json +
                       diffusion_pytorch_model.safetensors), text_encoder/ (config.json + model.safetensors),
                       tokenizer/, scheduler/. Parameter names are diffusers' and transformers' module paths.
    single file        the original (CompVis latent-diffusion) training checkpoint: a ``.ckpt`` (a pickled dict
                       whose "state_dict" holds the tensors) or a ``.safetensors`` with the same flat keys:
                           model.diffusion_model.*           the UNet (LDM's ``openaimodel.UNetModel``)
                           first_stage_model.*               the VAE (LDM's ``AutoencoderKL``)
                           cond_stage_model.transformer.*    the CLIP text model (transformers' own names)
                       plus the training schedule (``betas``, ``alphas_cumprod``, ...) and, in some files, an
                       EMA copy (``model_ema.*``); neither is a module weight. No config, no tokenizer: those
                       come from elsewhere (SD v1.5's configs, or a diffusers folder passed as ``config``).

How the names differ (diffusers name -> original name; L = ``layers_per_block``, N = VAE levels):
    UNet   conv_in -> input_blocks.0.0;  time_embedding.linear_1/2 -> time_embed.0/2;
           conv_norm_out / conv_out -> out.0 / out.2
           down_blocks.i.resnets.j    -> input_blocks.(1 + i(L+1) + j).0   (attentions.j: same block, .1)
           down_blocks.i.downsamplers.0.conv -> input_blocks.((i+1)(L+1)).0.op
           mid_block.resnets.0 / attentions.0 / resnets.1 -> middle_block.0 / .1 / .2
           up_blocks.i.resnets.j      -> output_blocks.(i(L+1) + j).0       (attentions.j: same block, .1)
           up_blocks.i.upsamplers.0   -> output_blocks.(i(L+1) + L).1, or .2 if that level has attention
           inside a resnet: norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut ->
                            in_layers.0, in_layers.2, emb_layers.1, out_layers.0, out_layers.3, skip_connection
           inside a transformer (norm, proj_in, transformer_blocks, proj_out): the same names
    VAE    encoder.down_blocks.i.resnets.j -> encoder.down.i.block.j; downsamplers.0 -> downsample
           decoder.up_blocks.i -> decoder.up.(N-1-i) (the original counts levels by resolution, diffusers in
           the order they run); upsamplers.0 -> upsample
           mid_block.resnets.0/1 -> mid.block_1/2; mid_block.attentions.0 -> mid.attn_1, inside it group_norm,
           to_q, to_k, to_v, to_out.0 -> norm, q, k, v, proj_out, and those four weights are 1x1 convs
           (C, C, 1, 1) in the original, linear layers (C, C) in diffusers
           conv_shortcut -> nin_shortcut; conv_norm_out -> norm_out; quant_conv, post_quant_conv: the same
    text   cond_stage_model.transformer. + transformers' name (text_model.embeddings..., text_model.encoder...)

``load_sd_checkpoint(path)`` reads either layout into the course's modules (``SDModules``); ``generate`` is
``StableDiffusionPipeline``'s sampling loop written out; ``save_single_file`` writes the original layout.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from course_lib._checks import check_float, check_int
from course_lib._io import atomic_save_safetensors, load_safetensors

__all__ = ["ORIGINAL_PREFIXES", "SDModules", "unet_key_to_original", "vae_key_to_original",
           "text_encoder_key_to_original", "original_key_map", "to_original", "from_original",
           "read_checkpoint", "save_single_file", "load_sd_checkpoint", "encode_prompt", "generate"]

ORIGINAL_PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
                     "text_encoder": "cond_stage_model.transformer."}
COMPONENTS = tuple(ORIGINAL_PREFIXES)
WEIGHT_FILES = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
                "text_encoder": "model.safetensors"}

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_CONV_WEIGHTS = re.compile(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$")  # 1x1 convs in the original


# ------------------------------------------------------------------------------------------ key mapping

def _replace_start(rest: str, table: dict[str, str]) -> str:
    """Rename the first dotted component(s) of ``rest`` with ``table`` (longest match; unchanged if none)."""
    for old in sorted(table, key=len, reverse=True):
        if rest == old or rest.startswith(old + "."):
            return table[old] + rest[len(old):]
    return rest


def unet_key_to_original(key: str, layers_per_block: int, up_attention: set[int] | frozenset = frozenset()) -> str:
    """The original (LDM) name of one diffusers UNet parameter, without the ``model.diffusion_model.`` prefix.

    ``up_attention``: indices i of the up blocks that have cross-attention (their upsampler sits at .2).
    """
    L = layers_per_block
    if (m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key)):
        side, i, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        block = 1 + i * (L + 1) + j if side == "down" else i * (L + 1) + j
        where = "input_blocks" if side == "down" else "output_blocks"
        if kind == "resnets":
            return f"{where}.{block}.0.{_replace_start(rest, _UNET_RESNET)}"
        return f"{where}.{block}.1.{rest}"
    if (m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key)):
        return f"input_blocks.{(int(m[1]) + 1) * (L + 1)}.0.op.{m[2]}"
    if (m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)$", key)):
        i = int(m[1])
        return f"output_blocks.{i * (L + 1) + L}.{2 if i in up_attention else 1}.{m[2]}"
    if (m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", key)):
        if m[1] == "attentions":
            return f"middle_block.1.{m[3]}"
        return f"middle_block.{2 * int(m[2])}.{_replace_start(m[3], _UNET_RESNET)}"
    renamed = _replace_start(key, _UNET_TOP)
    if renamed == key:
        raise ValueError(f"key {key!r} is not a parameter of SD v1.x's UNet (diffusers names)")
    return renamed


def vae_key_to_original(key: str, num_levels: int) -> str:
    """The original name of one diffusers VAE parameter, without the ``first_stage_model.`` prefix."""
    def inner(rest: str) -> str:  # inside a ResNet block
        return _replace_start(rest, {"conv_shortcut": "nin_shortcut"})

    if (m := re.match(r"encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0)\.(.+)$", key)):
        part = f"block.{m[3]}" if m[3] is not None else "downsample"
        return f"encoder.down.{m[1]}.{part}.{inner(m[4])}"
    if (m := re.match(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.+)$", key)):
        part = f"block.{m[3]}" if m[3] is not None else "upsample"
        return f"decoder.up.{num_levels - 1 - int(m[1])}.{part}.{inner(m[4])}"
    if (m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$", key)):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{inner(m[3])}"
    if (m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$", key)):
        return f"{m[1]}.mid.attn_1.{_replace_start(m[2], _VAE_ATTENTION)}"
    if (m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.+)$", key)):
        return f"{m[1]}.norm_out.{m[2]}"
    if re.match(r"((encoder|decoder)\.(conv_in|conv_out)|quant_conv|post_quant_conv)\.", key):
        return key
    raise ValueError(f"key {key!r} is not a parameter of SD's AutoencoderKL (diffusers names)")


def text_encoder_key_to_original(key: str) -> str:
    """The original name of one ``CLIPTextModel`` parameter, without the prefix: ``text_model.`` + its name.

    transformers >= 5 drops the ``text_model.`` level from the module's own names; older versions (and SD
    v1.5's diffusers folder) keep it. Both give the same original name.
    """
    if not isinstance(key, str) or not key.removeprefix("text_model.").startswith(("embeddings.", "encoder.",
                                                                                   "final_layer_norm.")):
        raise ValueError(f"key {key!r} is not a parameter of a CLIP text model (embeddings, encoder, "
                         f"final_layer_norm)")
    return "text_model." + key.removeprefix("text_model.")


def _unet_layout(config: dict) -> tuple[int, frozenset]:
    up = config.get("up_block_types", ())
    return config["layers_per_block"], frozenset(i for i, kind in enumerate(up) if "CrossAttn" in kind)


def original_key_map(component: str, keys, config: dict | None = None) -> dict[str, str]:
    """{diffusers/transformers name: full original name} for every key of ``component``.

    ``config``: the component's diffusers config dict (needed for the unet and the vae, not the text encoder).
    """
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {COMPONENTS}, got {component!r}")
    if component != "text_encoder" and not isinstance(config, dict):
        raise ValueError(f"config must be the {component}'s diffusers config dict, got {type(config).__name__}")
    prefix = ORIGINAL_PREFIXES[component]
    if component == "unet":
        layers, up_attention = _unet_layout(config)
        return {k: prefix + unet_key_to_original(k, layers, up_attention) for k in keys}
    if component == "vae":
        return {k: prefix + vae_key_to_original(k, len(config["block_out_channels"])) for k in keys}
    return {k: prefix + text_encoder_key_to_original(k) for k in keys}


def to_original(state_dicts: dict[str, dict], configs: dict[str, dict]) -> dict[str, torch.Tensor]:
    """One flat single-file state dict from the components' diffusers state dicts (``state_dicts[component]``)."""
    checkpoint = {}
    for component in COMPONENTS:
        names = original_key_map(component, state_dicts[component], configs.get(component))
        for key, original in names.items():
            tensor = state_dicts[component][key]
            if component == "vae" and _VAE_CONV_WEIGHTS.search(original):
                tensor = tensor.reshape(*tensor.shape, 1, 1)  # linear (C, C) -> 1x1 conv (C, C, 1, 1)
            checkpoint[original] = tensor
    return checkpoint


def _stored_name(checkpoint: dict, original: str) -> str:
    """The name ``original`` has in ``checkpoint``: itself, or for the text encoder, in some older files, the
    same without the ``text_model.`` level (``cond_stage_model.transformer.embeddings...``)."""
    level = ORIGINAL_PREFIXES["text_encoder"] + "text_model."
    if original not in checkpoint and original.startswith(level):
        older = ORIGINAL_PREFIXES["text_encoder"] + original[len(level):]
        if older in checkpoint:
            return older
    return original


def from_original(checkpoint: dict[str, torch.Tensor], expected_keys: dict[str, list[str]],
                  configs: dict[str, dict]) -> tuple[dict[str, dict], list[str]]:
    """Split a single-file state dict into per-component state dicts with diffusers/transformers names.

    ``expected_keys[component]``: the parameter names the target module has (its ``state_dict().keys()``).
    Returns (state dicts, original keys that were not used: schedule buffers, EMA copies, position ids).
    Raises ``ValueError`` naming the keys if a module weight is missing or an unknown one is under a prefix.
    """
    state_dicts, used = {}, set()
    for component in COMPONENTS:
        names = {key: _stored_name(checkpoint, original) for key, original in
                 original_key_map(component, expected_keys[component], configs.get(component)).items()}
        missing = sorted(original for original in names.values() if original not in checkpoint)
        if missing:
            raise ValueError(f"checkpoint misses {len(missing)} {component} weight(s), e.g. {missing[:3]}")
        state = {}
        for key, original in names.items():
            tensor = checkpoint[original]
            if component == "vae" and _VAE_CONV_WEIGHTS.search(original) and tensor.ndim == 4:
                tensor = tensor.reshape(tensor.shape[:2])  # 1x1 conv (C, C, 1, 1) -> linear (C, C)
            state[key] = tensor
        state_dicts[component] = state
        used.update(names.values())
    prefixed = [k for k in checkpoint if k.startswith(tuple(ORIGINAL_PREFIXES.values()))]
    unknown = sorted(k for k in prefixed if k not in used and not k.endswith("position_ids"))
    if unknown:
        raise ValueError(f"checkpoint has {len(unknown)} weight(s) no module expects, e.g. {unknown[:3]}")
    return state_dicts, sorted(set(checkpoint) - used)


# ---------------------------------------------------------------------------------------- reading files

def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The flat state dict of a single-file checkpoint: ``.safetensors``, or ``.ckpt``/``.pt`` (a pickled
    dict, its tensors under "state_dict"; loaded with ``weights_only=True``, so no code in it runs)."""
    path = Path(path)
    if not path.is_file() or path.suffix not in (".safetensors", ".ckpt", ".pt", ".pth"):
        raise ValueError(f"path must be an existing .safetensors or .ckpt file, got {str(path)!r}")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict):
        raise ValueError(f"path {str(path)!r} holds a {type(loaded).__name__}, not a state dict")
    return loaded.get("state_dict", loaded)


def _read_config(folder: Path, component: str) -> dict:
    path = folder / component / "config.json"
    if not path.is_file():
        raise ValueError(f"config must be a diffusers folder with {component}/config.json, got {str(folder)!r}")
    return json.loads(path.read_text())


def _folder_state_dict(folder: Path, component: str) -> dict[str, torch.Tensor]:
    return load_safetensors(folder / component / WEIGHT_FILES[component])


def _align_text_keys(state: dict[str, torch.Tensor], expected: list[str]) -> dict[str, torch.Tensor]:
    """Add or drop the ``text_model.`` level so a CLIP text state dict fits a module's names (see
    ``text_encoder_key_to_original``)."""
    with_level = bool(expected) and expected[0].startswith("text_model.")
    bare = {k.removeprefix("text_model."): v for k, v in state.items()}
    return {("text_model." + k if with_level else k): v for k, v in bare.items()}


def _schedule_buffers(scheduler_config: dict) -> dict[str, torch.Tensor]:
    """betas, alphas_cumprod, alphas_cumprod_prev: the training schedule the original file carries."""
    from course_lib.schedulers import make_betas
    betas = make_betas(scheduler_config["beta_schedule"], scheduler_config["num_train_timesteps"],
                       scheduler_config["beta_start"], scheduler_config["beta_end"]).float()
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return {"betas": betas, "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": torch.cat([torch.ones(1), alphas_cumprod[:-1]])}


def save_single_file(folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the diffusers folder ``folder`` as one original-layout checkpoint at ``path``.

    ``.safetensors``: a flat file; ``.ckpt``: ``torch.save({"state_dict": ...})`` as the original training
    code did. The text encoder's ``position_ids`` (0..76) and the schedule buffers are included, as in the
    released SD v1.x files. Returns ``Path(path)``.
    """
    folder, path = Path(folder), Path(path)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"folder must be a diffusers Stable Diffusion folder (with model_index.json), "
                         f"got {str(folder)!r}")
    if path.suffix not in (".safetensors", ".ckpt"):
        raise ValueError(f"path must end in .safetensors or .ckpt, got {str(path)!r}")
    configs = {c: _read_config(folder, c) for c in COMPONENTS}
    checkpoint = to_original({c: _folder_state_dict(folder, c) for c in COMPONENTS}, configs)
    positions = configs["text_encoder"].get("max_position_embeddings", 77)
    checkpoint[ORIGINAL_PREFIXES["text_encoder"] + "text_model.embeddings.position_ids"] = \
        torch.arange(positions).unsqueeze(0)
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    checkpoint.update(_schedule_buffers(scheduler))
    if path.suffix == ".safetensors":
        return atomic_save_safetensors(path, checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {k: v.contiguous() for k, v in checkpoint.items()}}, path)
    return path


# --------------------------------------------------------------------------------- the course's modules

@dataclass
class SDModules:
    """The five pieces of SD v1.x as course modules, ready for ``generate``."""
    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object   # transformers' CLIPTokenizer (the BPE itself is not a course module)
    scheduler: object   # course_lib.schedulers.DDIMScheduler with the checkpoint's schedule
    configs: dict       # component -> diffusers config dict it was built from
    ignored: list       # single file: keys that are not module weights (schedule, EMA, position ids)

    @property
    def vae_scaling_factor(self) -> float:
        return float(self.configs["vae"].get("scaling_factor", 0.18215))


def build_modules(configs: dict[str, dict]) -> dict[str, nn.Module]:
    """The course's unet, vae and text encoder for diffusers/transformers config dicts, randomly initialised."""
    from course_lib.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
    from course_lib.models.clip_text import CLIPTextConfig, CLIPTextModel
    from course_lib.models.unet_2d_condition import UNet2DConditionConfig, UNet2DConditionModel
    return {"unet": UNet2DConditionModel(UNet2DConditionConfig.from_diffusers(configs["unet"])),
            "vae": AutoencoderKL(AutoencoderKLConfig.from_diffusers(configs["vae"])),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_transformers(configs["text_encoder"]))}


def _default_config_source() -> dict:
    """SD v1.5's configs (shipped with the course); tokenizer from the hub (Colab)."""
    from course_lib.sd.architecture import sd15_config
    return {c: sd15_config(c) for c in (*COMPONENTS, "scheduler")}


def load_sd_checkpoint(path: str | os.PathLike, config: str | os.PathLike | None = None,
                       device: str | torch.device = "cpu") -> SDModules:
    """Stable Diffusion v1.x from either layout into the course's modules (float32, eval mode).

    path     a diffusers folder (with model_index.json), or a single-file ``.safetensors``/``.ckpt`` in the
             original layout
    config   for a single file: a diffusers folder whose configs, tokenizer and scheduler to use (the file has
             none); default: SD v1.5's configs, the tokenizer downloaded from the hub. Ignored for a folder.
    """
    path = Path(path)
    is_folder = path.is_dir()
    if is_folder and not (path / "model_index.json").is_file():
        raise ValueError(f"path must be a diffusers folder (with model_index.json) or a checkpoint file, "
                         f"got {str(path)!r}")
    source = path if is_folder else (Path(config) if config is not None else None)
    if source is not None:
        configs = {c: _read_config(source, c) for c in COMPONENTS}
        configs["scheduler"] = json.loads((source / "scheduler" / "scheduler_config.json").read_text())
    else:
        configs = _default_config_source()
    modules = build_modules(configs)
    if is_folder:
        state_dicts, ignored = {c: _folder_state_dict(path, c) for c in COMPONENTS}, []
        state_dicts["text_encoder"] = _align_text_keys(state_dicts["text_encoder"],
                                                       list(modules["text_encoder"].state_dict()))
    else:
        expected = {c: list(m.state_dict()) for c, m in modules.items()}
        state_dicts, ignored = from_original(read_checkpoint(path), expected, configs)
    for component, module in modules.items():
        module.load_state_dict(state_dicts[component], strict=True)
        module.to(device).eval()
    from transformers import CLIPTokenizer
    if source is not None:
        tokenizer = CLIPTokenizer.from_pretrained(source / "tokenizer", local_files_only=True)
    else:
        from course_lib.sd.components import DEFAULT_MODEL_ID
        tokenizer = CLIPTokenizer.from_pretrained(DEFAULT_MODEL_ID, subfolder="tokenizer")
    from course_lib.schedulers import DDIMScheduler
    return SDModules(**modules, tokenizer=tokenizer, scheduler=DDIMScheduler.from_config(configs["scheduler"]),
                     configs=configs, ignored=ignored)


# ------------------------------------------------------------------------------------------- sampling

def encode_prompt(modules: SDModules, prompts: list[str]) -> torch.Tensor:
    """Token ids padded to 77 -> the text encoder's last hidden state (B, 77, width): the UNet's context."""
    ids = modules.tokenizer(prompts, padding="max_length", max_length=modules.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
    return modules.text_encoder(ids.to(next(modules.text_encoder.parameters()).device)).last_hidden_state


@torch.no_grad()
def generate(modules: SDModules, prompt: str, generator: torch.Generator, num_inference_steps: int = 25,
             guidance_scale: float = 7.5, height: int | None = None, width: int | None = None) -> torch.Tensor:
    """``StableDiffusionPipeline(prompt, generator=...)``'s image written out: (1, 3, H, W) in [0, 1].

    Same steps as diffusers: empty-prompt context first, x_T = randn(generator) * init_noise_sigma, guidance
    on both halves of one batch, decode latents / scaling_factor, map [-1, 1] to [0, 1].
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
    check_int("num_inference_steps", num_inference_steps, minimum=1)
    check_float("guidance_scale", guidance_scale, minimum=0.0)
    from course_lib.guidance import cfg_combine
    f = 2 ** (len(modules.configs["vae"]["block_out_channels"]) - 1)
    size = modules.configs["unet"]["sample_size"] * f
    height, width = height or size, width or size
    context = encode_prompt(modules, ["", prompt])  # (2, 77, width): unconditional first
    scheduler = modules.scheduler
    scheduler.set_timesteps(num_inference_steps)
    shape = (1, modules.configs["unet"]["in_channels"], height // f, width // f)
    x = torch.randn(shape, generator=generator, dtype=context.dtype) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([x, x]), t)
        eps = cfg_combine(*modules.unet(model_input, t, context).chunk(2), guidance_scale)
        x = scheduler.step(eps, t, x).prev_sample
    image = modules.vae.decode(x / modules.vae_scaling_factor)
    return (image / 2 + 0.5).clamp(0, 1)

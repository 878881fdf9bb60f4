"""Contracts for course_lib.models.convert: both checkpoint layouts -> the course's modules -> the pipeline's image.

The tiny SD (course_lib.sd.tiny) is written as a diffusers folder, then by ``save_single_file`` in the original
layout (.safetensors and .ckpt). diffusers' own single-file loader, an independent implementation of the same
key mapping, must read our file back to the folder's weights; our loader must reproduce
``StableDiffusionPipeline``'s image from every layout. Tolerance of the image: 1e-4 (the contract of the
capstone); in float32 the two computations differ only in summation order (~1e-6 observed on images in [0, 1]).
"""
from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from course_lib.models import convert  # noqa: E402
from course_lib.models.convert import (ORIGINAL_PREFIXES, from_original, generate, load_sd_checkpoint,  # noqa: E402
                                       original_key_map, read_checkpoint, save_single_file, to_original,
                                       unet_key_to_original, vae_key_to_original)
from course_lib.sd.tiny import build_tiny_sd  # noqa: E402

PROMPT, SEED, STEPS, GUIDANCE = "a red circle on a blue background", 7, 4, 7.5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    folder = build_tiny_sd(root / "tiny-sd", seed=0)
    return {"folder": folder, "safetensors": save_single_file(folder, root / "tiny-sd.safetensors"),
            "ckpt": save_single_file(folder, root / "tiny-sd.ckpt")}


@pytest.fixture(scope="module")
def pipeline_image(tiny):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny["folder"], safety_checker=None,
                                                             local_files_only=True)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                generator=torch.Generator().manual_seed(SEED), output_type="pt").images


# --------------------------------------------------------------------------------------- the key layout

SD15_UNET_NAMES = {  # diffusers name -> the name in the released v1.x checkpoints (model.diffusion_model.*)
    "conv_in.weight": "input_blocks.0.0.weight",
    "time_embedding.linear_2.bias": "time_embed.2.bias",
    "down_blocks.0.resnets.0.norm1.weight": "input_blocks.1.0.in_layers.0.weight",
    "down_blocks.0.attentions.1.proj_in.weight": "input_blocks.2.1.proj_in.weight",
    "down_blocks.0.downsamplers.0.conv.weight": "input_blocks.3.0.op.weight",
    "down_blocks.3.resnets.1.time_emb_proj.weight": "input_blocks.11.0.emb_layers.1.weight",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight":
        "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
    "mid_block.resnets.1.conv2.bias": "middle_block.2.out_layers.3.bias",
    "up_blocks.0.resnets.2.conv_shortcut.weight": "output_blocks.2.0.skip_connection.weight",
    "up_blocks.0.upsamplers.0.conv.weight": "output_blocks.2.1.conv.weight",
    "up_blocks.1.upsamplers.0.conv.weight": "output_blocks.5.2.conv.weight",
    "up_blocks.3.attentions.2.proj_out.weight": "output_blocks.11.1.proj_out.weight",
    "up_blocks.3.resnets.2.conv_shortcut.weight": "output_blocks.11.0.skip_connection.weight",
    "conv_norm_out.weight": "out.0.weight",
    "conv_out.bias": "out.2.bias",
}
SD15_VAE_NAMES = {  # first_stage_model.*
    "encoder.down_blocks.1.resnets.0.conv_shortcut.weight": "encoder.down.1.block.0.nin_shortcut.weight",
    "encoder.down_blocks.2.downsamplers.0.conv.weight": "encoder.down.2.downsample.conv.weight",
    "encoder.mid_block.resnets.1.norm2.weight": "encoder.mid.block_2.norm2.weight",
    "encoder.conv_norm_out.bias": "encoder.norm_out.bias",
    "decoder.up_blocks.0.resnets.2.conv2.weight": "decoder.up.3.block.2.conv2.weight",
    "decoder.up_blocks.2.upsamplers.0.conv.bias": "decoder.up.1.upsample.conv.bias",
    "decoder.mid_block.attentions.0.to_out.0.weight": "decoder.mid.attn_1.proj_out.weight",
    "decoder.mid_block.attentions.0.group_norm.bias": "decoder.mid.attn_1.norm.bias",
    "quant_conv.weight": "quant_conv.weight",
}


def test_sd15_names_follow_the_original_layout():
    up_attention = {1, 2, 3}  # SD v1.x: UpBlock2D first, then three CrossAttnUpBlock2D
    for key, original in SD15_UNET_NAMES.items():
        assert unet_key_to_original(key, 2, up_attention) == original, key
    for key, original in SD15_VAE_NAMES.items():
        assert vae_key_to_original(key, 4) == original, key


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder"])
def test_sd15_key_map_is_one_to_one(component):
    from course_lib.sd.architecture import sd15_config, sd15_empty_model
    keys = list(sd15_empty_model(component).state_dict())
    names = original_key_map(component, keys, sd15_config(component))
    assert len(set(names.values())) == len(keys), "two parameters must never share an original name"
    assert all(n.startswith(ORIGINAL_PREFIXES[component]) for n in names.values())


def test_to_original_and_back_is_the_identity(tiny):
    configs = {c: convert._read_config(tiny["folder"], c) for c in convert.COMPONENTS}
    states = {c: convert._folder_state_dict(tiny["folder"], c) for c in convert.COMPONENTS}
    checkpoint = to_original(states, configs)
    attention = checkpoint["first_stage_model.encoder.mid.attn_1.q.weight"]
    assert attention.shape == (32, 32, 1, 1), "the VAE's attention weights are 1x1 convs in the original layout"
    back, ignored = from_original(checkpoint, {c: list(s) for c, s in states.items()}, configs)
    assert ignored == []
    for component, state in states.items():
        assert set(back[component]) == set(state)
        assert all(torch.equal(back[component][k], v) for k, v in state.items()), component


def test_single_file_has_the_original_keys_and_extras(tiny):
    checkpoint = read_checkpoint(tiny["safetensors"])
    pickled = read_checkpoint(tiny["ckpt"])
    assert set(checkpoint) == set(pickled) and all(torch.equal(checkpoint[k], pickled[k]) for k in checkpoint)
    for key in ["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                "model.diffusion_model.output_blocks.1.1.conv.weight",  # tiny: up block 0 has no attention
                "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight",  # 32 -> 16 wide
                "cond_stage_model.transformer.text_model.final_layer_norm.weight",
                "cond_stage_model.transformer.text_model.embeddings.position_ids", "alphas_cumprod"]:
        assert key in checkpoint, key


@pytest.mark.parametrize("suffix", ["safetensors", "ckpt"])
def test_diffusers_from_single_file_reads_our_file(tiny, suffix):
    """diffusers' converter (written independently of ours) reads our file back to the folder's weights."""
    pipe = diffusers.StableDiffusionPipeline.from_single_file(str(tiny[suffix]), config=str(tiny["folder"]),
                                                              local_files_only=True, safety_checker=None)
    folder = diffusers.StableDiffusionPipeline.from_pretrained(tiny["folder"], safety_checker=None,
                                                               local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(folder, name).state_dict()
        assert set(ours) == set(theirs), name
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name


# ------------------------------------------------------------------------------- the pipeline's image

@pytest.mark.parametrize("layout", ["folder", "safetensors", "ckpt"])
def test_both_layouts_reproduce_the_pipeline_image(tiny, pipeline_image, layout):
    modules = load_sd_checkpoint(tiny[layout], config=None if layout == "folder" else tiny["folder"])
    assert all(type(m).__module__.startswith("course_lib.models.")
               for m in (modules.unet, modules.vae, modules.text_encoder)), "the course's modules, not diffusers'"
    image = generate(modules, PROMPT, torch.Generator().manual_seed(SEED), num_inference_steps=STEPS,
                     guidance_scale=GUIDANCE)
    assert image.shape == pipeline_image.shape == (1, 3, 64, 64)
    assert pipeline_image.std() > 0.05, "a flat image would make the comparison meaningless"
    assert (image - pipeline_image).abs().max() <= 1e-4
    if layout != "folder":
        assert set(modules.ignored) == {"betas", "alphas_cumprod", "alphas_cumprod_prev",
                                        "cond_stage_model.transformer.text_model.embeddings.position_ids"}


def test_older_files_without_the_text_model_level_load(tiny, tmp_path):
    """Some single files name the text encoder cond_stage_model.transformer.embeddings... (no text_model.)."""
    checkpoint = read_checkpoint(tiny["safetensors"])
    old = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
           for k, v in checkpoint.items()}
    torch.save({"state_dict": old}, tmp_path / "old.ckpt")
    a = load_sd_checkpoint(tmp_path / "old.ckpt", config=tiny["folder"]).text_encoder.state_dict()
    b = load_sd_checkpoint(tiny["folder"]).text_encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_missing_or_unknown_weights_are_named(tiny, tmp_path):
    checkpoint = read_checkpoint(tiny["safetensors"])
    missing = dict(checkpoint)
    del missing["first_stage_model.decoder.mid.attn_1.k.weight"]
    torch.save({"state_dict": missing}, tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="misses 1 vae weight.*attn_1.k.weight"):
        load_sd_checkpoint(tmp_path / "missing.ckpt", config=tiny["folder"])
    extra = {**checkpoint, "model.diffusion_model.input_blocks.1.2.weight": torch.zeros(1)}
    torch.save({"state_dict": extra}, tmp_path / "extra.ckpt")
    with pytest.raises(ValueError, match="no module expects.*input_blocks.1.2.weight"):
        load_sd_checkpoint(tmp_path / "extra.ckpt", config=tiny["folder"])


@pytest.mark.parametrize("call, argname", [
    (lambda t: read_checkpoint(t / "model.bin"), "path"),
    (lambda t: load_sd_checkpoint(t), "path"),
    (lambda t: save_single_file(t, t / "out.safetensors"), "folder"),
    (lambda t: original_key_map("clip", []), "component"),
    (lambda t: original_key_map("unet", ["conv_in.weight"]), "config"),
    (lambda t: unet_key_to_original("label_emb.0.weight", 2), "key"),
    (lambda t: vae_key_to_original("encoder.down.0.block.0.conv1.weight", 4), "key"),
    (lambda t: convert.text_encoder_key_to_original("logit_scale"), "key"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_input_names_the_argument(tmp_path, call, argname):
    with pytest.raises(ValueError, match=argname):
        call(tmp_path)


def test_generate_checks_its_arguments(tiny):
    modules = load_sd_checkpoint(tiny["folder"])
    for kwargs, argname in [({"prompt": 3}, "prompt"), ({"num_inference_steps": 0}, "num_inference_steps"),
                            ({"guidance_scale": -1.0}, "guidance_scale")]:
        with pytest.raises(ValueError, match=argname):
            generate(modules, **{"prompt": PROMPT, "generator": torch.Generator(), **kwargs})

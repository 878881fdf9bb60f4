"""The grader's own checks of a9_converter (instructor-only; format: course_lib/grading/verdicts.py).

Names: secret random layouts (levels, blocks per level, which levels have attention) plus SD v1.5's, compared
with course_lib.models.convert (itself checked against diffusers' single-file loader in tests/test_convert.py).
Weights and images: a tiny SD with secret random weights, written by the probe in both layouts; the reference
image comes from course_lib.models.convert.generate on the same weights (equal to StableDiffusionPipeline's
within ~1e-6, tests/test_convert.py). Converted weights must be exact; images within 1e-4, the capstone's contract.
"""
import json
from importlib import resources
from pathlib import Path

import torch

from course_lib.grading.verdicts import Check, tiny_sd_folder
from course_lib.models import convert

COMPONENTS = ("unet", "vae", "text_encoder")
PROMPTS = ["a red circle on a blue background", "a small green star at the top", "a big orange ring", "",
           "a photo of a purple triangle in the center"]


def sd15_config(component: str) -> dict:
    """SD v1.5's config, read from the file the course ships (course_lib.sd.architecture reads the same)."""
    return json.loads(resources.files("course_lib").joinpath("configs", f"sd15_{component}.json").read_text())


def _configs() -> dict:
    tiny = tiny_sd_folder()
    configs = {c: json.loads((tiny / c / "config.json").read_text()) for c in COMPONENTS}
    return {**configs, "scheduler": json.loads((tiny / "scheduler" / "scheduler_config.json").read_text())}


# ------------------------------------------------------------------------------------------- names

def _layout_inputs(g):
    return {"levels": torch.randint(2, 5, (), generator=g), "layers": torch.randint(1, 4, (), generator=g),
            "down": torch.rand(4, generator=g) < 0.5, "up": torch.rand(4, generator=g) < 0.5}


_UNET_CONFIG = """
_n, _L = int(inputs["levels"]), int(inputs["layers"])
_random = {**CONFIGS["unet"], "block_out_channels": [32] * _n, "layers_per_block": _L,
           "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in inputs["down"].tolist()[:_n]],
           "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in inputs["up"].tolist()[:_n]]}
"""
UNET_NAMES = _UNET_CONFIG + """
for _tag, _config in (("random", _random), ("sd15", _sd15_config("unet"))):
    for _key in _meta_keys(_config, "unet"):
        outputs[f"{_tag}:{_key}"] = unet_key_to_original(_key, _config)
"""

_VAE_CONFIG = """
_n, _L = int(inputs["levels"]), int(inputs["layers"])
_random = {**CONFIGS["vae"], "block_out_channels": [16] * _n, "layers_per_block": _L,
           "down_block_types": ["DownEncoderBlock2D"] * _n, "up_block_types": ["UpDecoderBlock2D"] * _n}
"""
VAE_NAMES = _VAE_CONFIG + """
for _tag, _config in (("random", _random), ("sd15", _sd15_config("vae"))):
    for _key in _meta_keys(_config, "vae"):
        outputs[f"{_tag}:{_key}"] = vae_key_to_original(_key, _config)
"""


def _random_config(x, component):
    n, L = int(x["levels"]), int(x["layers"])
    base = _configs()[component]
    if component == "unet":
        return {**base, "block_out_channels": [32] * n, "layers_per_block": L,
                "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in x["down"].tolist()[:n]],
                "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in x["up"].tolist()[:n]]}
    return {**base, "block_out_channels": [16] * n, "layers_per_block": L,
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n}


def _names_expected(component):
    def expected(x):
        out = {}
        for tag, config in (("random", _random_config(x, component)), ("sd15", sd15_config(component))):
            with torch.device("meta"):
                keys = list(convert.build_modules({**_configs(), component: config})[component].state_dict())
            out.update({f"{tag}:{key}": name for key, name in convert.original_key_map(component, keys, config).items()})
        return out
    return expected


# ----------------------------------------------------------------------------------- weights, images

def _secret_weights(g) -> dict:
    """The tiny SD's modules with secret weights (default initialisation + N(0, 0.05^2)), as diffusers state dicts."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31, (), generator=g)))
        modules = convert.build_modules(_configs())
    states = {}
    with torch.no_grad():
        for c, module in modules.items():
            for p in module.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
            states[c] = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return states


def _checkpoint_inputs(g):
    states = _secret_weights(g)
    checkpoint = convert.to_original(states, _configs())
    checkpoint.update({"betas": torch.rand(1000, generator=g) * 0.02, "model_ema.decay": torch.tensor(0.9999),
                       "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None]})
    return {"o." + k: v for k, v in checkpoint.items()}


CONVERT = """
_checkpoint = {k[2:]: v for k, v in inputs.items() if k.startswith("o.")}
with _using(unet_key_to_original=_reference_unet_name, vae_key_to_original=_reference_vae_name):
    _converted = convert_single_file(_checkpoint, EXPECTED_KEYS, CONFIGS)
for _c in ("unet", "vae", "text_encoder"):
    for _k, _v in _converted[_c].items():
        outputs[f"{_c}:{_k}"] = _v
"""


def _convert_expected(x):
    checkpoint = {k[2:]: v for k, v in x.items() if k.startswith("o.")}
    configs = _configs()
    expected_keys = {c: list(m.state_dict()) for c, m in convert.build_modules(configs).items()}
    states, _ = convert.from_original(checkpoint, expected_keys, configs)
    return {f"{c}:{k}": v for c in COMPONENTS for k, v in states[c].items()}


def _run_inputs(g):
    return {"prompt": torch.randint(0, len(PROMPTS), (), generator=g), "seed": torch.randint(0, 2**30, (), generator=g),
            "steps": torch.randint(2, 5, (), generator=g), "guidance": torch.rand((), generator=g) * 9}


_RUN = f"""
_prompt = {PROMPTS!r}[int(inputs["prompt"])]


def _args():  # a fresh generator for every image
    return (_prompt, torch.Generator().manual_seed(int(inputs["seed"])), int(inputs["steps"]), float(inputs["guidance"]))
"""

GENERATE = _RUN + """
outputs["image"] = generate(*_course_modules(), TOKENIZER, new_scheduler(), *_args())
"""


def _reference_image(x, states=None):
    modules = convert.load_sd_checkpoint(tiny_sd_folder())
    if states is not None:
        for c in COMPONENTS:
            getattr(modules, c).load_state_dict(states[c], strict=True)
    return convert.generate(modules, PROMPTS[int(x["prompt"])], torch.Generator().manual_seed(int(x["seed"])),
                            num_inference_steps=int(x["steps"]), guidance_scale=float(x["guidance"]))


def _generate_expected(x):
    return {"image": _reference_image(x)}


def _capstone_inputs(g):
    return {**_checkpoint_inputs(g), **_run_inputs(g)}


CAPSTONE = _RUN + """
import tempfile as _tempfile
from safetensors.torch import save_file as _save_file
_dir = Path(_tempfile.mkdtemp(prefix="a9-probe-"))
_checkpoint = {k[2:]: v.contiguous() for k, v in inputs.items() if k.startswith("o.")}
_save_file(_checkpoint, _dir / "sd.safetensors")
torch.save({"state_dict": _checkpoint, "global_step": 470000}, _dir / "sd.ckpt")
_states, _ = _course.from_original(_checkpoint, EXPECTED_KEYS, CONFIGS)  # the folder layout of the same weights
_states["text_encoder"] = {"text_model." + k: v for k, v in _states["text_encoder"].items()}  # as transformers 4
for _c, _file in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model")):
    (_dir / "folder" / _c).mkdir(parents=True)
    _save_file({k: v.contiguous() for k, v in _states[_c].items()}, _dir / "folder" / _c / f"{_file}.safetensors")
for _name in ("sd.safetensors", "sd.ckpt", "folder"):
    outputs[_name] = generate(*load_checkpoint(_dir / _name, CONFIGS), TOKENIZER, new_scheduler(), *_args())
"""


def _capstone_expected(x):
    checkpoint = {k[2:]: v for k, v in x.items() if k.startswith("o.")}
    configs = _configs()
    expected_keys = {c: list(m.state_dict()) for c, m in convert.build_modules(configs).items()}
    states, _ = convert.from_original(checkpoint, expected_keys, configs)
    image = _reference_image(x, states)
    return {name: image for name in ("sd.safetensors", "sd.ckpt", "folder")}


CHECKS = {
    "test_unet_keys": Check(probe=UNET_NAMES, inputs=_layout_inputs, expect=_names_expected("unet")),
    "test_vae_keys": Check(probe=VAE_NAMES, inputs=_layout_inputs, expect=_names_expected("vae")),
    # the same tensors, renamed (and 1x1 convs reshaped): exact
    "test_convert": Check(probe=CONVERT, inputs=_checkpoint_inputs, expect=_convert_expected, rtol=0.0, atol=0.0),
    "test_generate": Check(probe=GENERATE, inputs=_run_inputs, expect=_generate_expected, rtol=0.0, atol=1e-4),
    "test_capstone": Check(probe=CAPSTONE, inputs=_capstone_inputs, expect=_capstone_expected, rtol=0.0, atol=1e-4),
}

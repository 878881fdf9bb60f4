"""The grader's own checks of a5_lora (instructor-only; format: course_lib/grading/verdicts.py).

References: closed forms in float64 from the float32 inputs, and peft / diffusers run here on the same weights.
A LoRA layer is two or three matrix products of values ~1 over <= 64 terms: float32 error ~1.2e-7 * 64 * 3
~ 3e-5 relative to the magnitude, hence rtol 1e-5 with atol 1e-4. The tiny UNet's output compared across two
processes (the student's adapters in the kernel, peft's here) goes through ~50 layers with group norms that
rescale errors and activations up to ~30: ~1.2e-7 * 30 * 300 ~ 1e-3 (1.5e-4 was seen on a correct answer);
wrong answers are off by 0.1 or more.
"""
import json
import math
import tempfile
from pathlib import Path

import torch
from torch import nn

from course_lib.grading.verdicts import Check, tiny_sd_folder

ATTN_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_PATH = "a5_lora_weights.safetensors"
CONCEPT_PROMPT = "a photo of sks toy"
_UNET_TOLERANCE = (1e-3, 1e-3)  # rtol, atol
_LAYER_CASES = [(5, 7, 1, 1.0, True), (12, 3, 3, 7.5, False), (8, 8, 4, 16.0, True), (64, 32, 4, 4.0, True)]


def _layer_inputs(g):
    out = {"seed": torch.randint(0, 2**30, (), generator=g)}
    for i, (d, k, r, _, bias) in enumerate(_LAYER_CASES):
        out[f"{i}.weight"] = torch.randn(d, k, generator=g) / math.sqrt(k)
        out[f"{i}.bias"] = torch.randn(d, generator=g) if bias else torch.zeros(d)
        out[f"{i}.A"], out[f"{i}.B"] = torch.randn(r, k, generator=g), torch.randn(d, r, generator=g)
        out[f"{i}.x"], out[f"{i}.w"] = torch.randn(3, 2, k, generator=g), torch.randn(3, 2, d, generator=g)
    return out


_BUILD = """
def build(i):
    d, k, r, alpha, bias = [(5, 7, 1, 1.0, True), (12, 3, 3, 7.5, False), (8, 8, 4, 16.0, True),
                            (64, 32, 4, 4.0, True)][i]
    base = nn.Linear(k, d, bias=bias)
    with torch.no_grad():
        base.weight.copy_(inputs[f"{i}.weight"])
        if bias:
            base.bias.copy_(inputs[f"{i}.bias"])
    return base, r, alpha
"""

LORA_INIT = _BUILD + """
for i in range(4):
    base, r, alpha = build(i)
    layer = LoRALinear(base, r=r, lora_alpha=alpha, generator=torch.Generator().manual_seed(int(inputs["seed"])))
    outputs[f"{i}.A"], outputs[f"{i}.B"] = layer.lora_A.weight.detach(), layer.lora_B.weight.detach()
    outputs[f"{i}.out"] = layer(inputs[f"{i}.x"]).detach()
    outputs[f"{i}.scaling"], outputs[f"{i}.not merged"] = float(layer.scaling), layer.merged is False
    outputs[f"{i}.trainable"] = sorted(name for name, p in layer.named_parameters() if p.requires_grad)
    outputs[f"{i}.same base"] = layer.base_layer is base
    again = LoRALinear(build(i)[0], r=r, lora_alpha=alpha, generator=torch.Generator().manual_seed(int(inputs["seed"])))
    outputs[f"{i}.A again"] = again.lora_A.weight.detach()
layer64 = LoRALinear(nn.Linear(4, 3).double(), r=2, lora_alpha=4)
outputs["float64"] = str(layer64(torch.randn(2, 4, dtype=torch.float64)).dtype)
"""


def _base_out(x, i):
    return x[f"{i}.x"].double() @ x[f"{i}.weight"].double().T + x[f"{i}.bias"].double()


def _init_judge(trial):
    if trial.error:
        return trial.error
    x, out = trial.inputs, trial.outputs
    from course_lib.grading.verdicts import compare

    for i, (d, k, r, alpha, _) in enumerate(_LAYER_CASES):
        a, b = out.get(f"{i}.A"), out.get(f"{i}.B")
        problem = (compare("lora_B.weight", b, torch.zeros(d, r), 0, 0)
                   or compare("the output with B = 0", out.get(f"{i}.out"), _base_out(x, i).float(), 1e-5, 1e-5)
                   or compare("scaling", out.get(f"{i}.scaling"), alpha / r, 1e-12, 0)
                   or compare("a new LoRALinear is not merged", out.get(f"{i}.not merged"), True, 0, 0)
                   or compare("trainable parameters", out.get(f"{i}.trainable"), ["lora_A.weight", "lora_B.weight"],
                              0, 0)
                   or compare("base_layer is the layer given", out.get(f"{i}.same base"), True, 0, 0))
        if problem:
            return problem
        if not isinstance(a, torch.Tensor) or tuple(a.shape) != (r, k):
            return f"lora_A.weight must be (r, k) = {(r, k)}"
        if not 0 < a.abs().max().item() <= 1 / math.sqrt(k) + 1e-6:  # kaiming_uniform_(a=sqrt(5)): U(+-1/sqrt(k))
            return "A must start random, like nn.Linear's weights (kaiming_uniform_ with a = sqrt(5))"
        if not torch.equal(a, out.get(f"{i}.A again", a * 0 + 1)):
            return "generator must make A reproducible"
    return None if out.get("float64") == "torch.float64" else "a float64 base layer needs float64 adapters"


LORA_FORWARD = _BUILD + """
for i in range(4):
    base, r, alpha = build(i)
    layer = LoRALinear(base, r=r, lora_alpha=alpha)
    with torch.no_grad():
        layer.lora_A.weight.copy_(inputs[f"{i}.A"])
        layer.lora_B.weight.copy_(inputs[f"{i}.B"])
    out = layer(inputs[f"{i}.x"])
    (out * inputs[f"{i}.w"]).sum().backward()
    outputs[f"{i}.out"], outputs[f"{i}.delta"] = out.detach(), layer.delta_weight().detach()
    outputs[f"{i}.grad A"], outputs[f"{i}.grad B"] = layer.lora_A.weight.grad, layer.lora_B.weight.grad
    outputs[f"{i}.base has no grad"] = base.weight.grad is None
"""


def _forward_expected(x):
    out = {}
    for i, (d, k, r, alpha, _) in enumerate(_LAYER_CASES):
        a, b, s = x[f"{i}.A"].double(), x[f"{i}.B"].double(), alpha / r
        xs, w = x[f"{i}.x"].double(), x[f"{i}.w"].double()
        out[f"{i}.out"] = (_base_out(x, i) + s * xs @ a.T @ b.T).float()
        out[f"{i}.delta"] = (s * b @ a).float()
        # d/dA sum(w * s B A x) = s B^T w x^T, d/dB = s w (A x)^T, summed over the batch dimensions
        wf, xf = w.reshape(-1, d), xs.reshape(-1, k)
        out[f"{i}.grad A"] = (s * b.T @ wf.T @ xf).float()
        out[f"{i}.grad B"] = (s * wf.T @ (xf @ a.T)).float()
        out[f"{i}.base has no grad"] = True
    return out


MERGE = _BUILD + """
for i in range(4):
    base, r, alpha = build(i)
    layer = LoRALinear(base, r=r, lora_alpha=alpha)
    with torch.no_grad():
        layer.lora_A.weight.copy_(inputs[f"{i}.A"])
        layer.lora_B.weight.copy_(inputs[f"{i}.B"])
    with torch.no_grad():
        outputs[f"{i}.unmerged"] = layer(inputs[f"{i}.x"])
        layer.merge()
        outputs[f"{i}.merged flag"] = layer.merged is True
        outputs[f"{i}.merged weight"] = base.weight.detach().clone()
        outputs[f"{i}.merged out"] = layer(inputs[f"{i}.x"])
        layer.unmerge()
        outputs[f"{i}.unmerged flag"] = layer.merged is False
        outputs[f"{i}.weight again"] = base.weight.detach().clone()
        outputs[f"{i}.out again"] = layer(inputs[f"{i}.x"])
"""


def _merge_expected(x):
    out = {}
    for i, (d, k, r, alpha, _) in enumerate(_LAYER_CASES):
        a, b, s = x[f"{i}.A"].double(), x[f"{i}.B"].double(), alpha / r
        lora = (_base_out(x, i) + s * x[f"{i}.x"].double() @ a.T @ b.T).float()
        out.update({f"{i}.unmerged": lora, f"{i}.merged out": lora, f"{i}.out again": lora,
                    f"{i}.merged weight": (x[f"{i}.weight"].double() + s * b @ a).float(),
                    f"{i}.weight again": x[f"{i}.weight"], f"{i}.merged flag": True, f"{i}.unmerged flag": True})
    return out


def _tiny_unet(seed=0):
    from diffusers import UNet2DConditionModel

    from course_lib.sd.tiny import TINY_UNET

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**TINY_UNET).eval()


def _target_names(unet, targets=ATTN_TARGETS):
    return [n for n, m in unet.named_modules() if isinstance(m, nn.Linear)
            and any(n == t or n.endswith("." + t) for t in targets)]


def _unet_inputs(g, out):
    out["z"], out["t"] = torch.randn(2, 4, 8, 8, generator=g), torch.randint(0, 1000, (2,), generator=g)
    out["c"] = torch.randn(2, 7, 32, generator=g)


def _inject_inputs(g):
    out = {"seed": torch.randint(0, 1000, (), generator=g), "r": torch.randint(1, 5, (), generator=g)}
    unet = _tiny_unet()
    r = int(out["r"])
    for name in _target_names(unet):
        layer = unet.get_submodule(name)
        out[f"A.{name}"] = torch.randn(r, layer.in_features, generator=g) * 0.3
        out[f"B.{name}"] = torch.randn(layer.out_features, r, generator=g) * 0.3
    _unet_inputs(g, out)
    return out


INJECT = """
r = int(inputs["r"])
unet = tiny_unet(int(inputs["seed"]))
names = inject_lora(unet, r=r, lora_alpha=2 * r)
outputs["names"] = [str(n) for n in names]
outputs["trainable"] = sorted(n for n, p in unet.named_parameters() if p.requires_grad)
with torch.no_grad():
    outputs["B = 0"] = unet(inputs["z"], inputs["t"], inputs["c"]).sample
for name in names:
    outputs["wrapped " + name] = unet.get_submodule(name).base_layer.weight.detach()
"""


def _peft_unet(x, seed, r, alpha, targets=ATTN_TARGETS):
    """The tiny UNet with peft's adapters (diffusers' add_adapter) holding the given A and B."""
    from peft import LoraConfig

    unet = _tiny_unet(seed)
    unet.add_adapter(LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0))
    with torch.no_grad():
        for name in _target_names(_tiny_unet(seed), targets):
            layer = unet.get_submodule(name)
            layer.lora_A["default"].weight.copy_(x[f"A.{name}"])
            layer.lora_B["default"].weight.copy_(x[f"B.{name}"])
    return unet


def _inject_expected(x):
    seed, r = int(x["seed"]), int(x["r"])
    plain = _tiny_unet(seed)
    names = _target_names(plain)
    with torch.no_grad():
        base = plain(x["z"], x["t"], x["c"]).sample
    trainable = sorted(f"{n}.lora_{ab}.weight" for n in names for ab in "AB")
    # (what the adapters compute is LoRALinear's part, graded by test_lora_forward: here, which layers are
    # wrapped, that the wrapped layers are the UNet's own, that only A and B train, and B = 0 changes nothing)
    return {"names": names, "trainable": trainable, "B = 0": base,
            **{f"wrapped {n}": plain.get_submodule(n).weight.detach() for n in names}}


COUNTS = """
for i in range(6):
    d, k, r = (int(v) for v in inputs["dkr"][i])
    outputs[f"count{i}"] = lora_parameter_count(d, k, r)
    outputs[f"keywords{i}"] = lora_parameter_count(d=d, k=k, r=r)
sizes = [int(v) for v in inputs["sizes"]]
model = nn.Sequential(*[nn.Linear(sizes[j], sizes[j + 1], bias=bool(j % 2)) for j in range(len(sizes) - 1)])
for j in inputs["frozen"].tolist():
    model[j].requires_grad_(False)
outputs["trainable"] = count_trainable_parameters(model)
"""


def _counts_inputs(g):
    return {"dkr": torch.randint(1, 2000, (6, 3), generator=g), "sizes": torch.randint(1, 40, (6,), generator=g),
            "frozen": torch.randperm(5, generator=g)[:2]}


def _counts_expected(x):
    out = {}
    for i in range(6):
        d, k, r = (int(v) for v in x["dkr"][i])
        out[f"count{i}"] = out[f"keywords{i}"] = r * (d + k)
    sizes, frozen = [int(v) for v in x["sizes"]], set(x["frozen"].tolist())
    out["trainable"] = sum(sizes[j] * sizes[j + 1] + (sizes[j + 1] if j % 2 else 0)
                           for j in range(len(sizes) - 1) if j not in frozen)
    return out


def _sd15_expected(x):
    from course_lib.sd import sd15_empty_model

    fresh = sd15_empty_model("unet")
    return {"unet": sum(p.numel() for p in fresh.parameters()),
            "lora": sum(4 * (m.in_features + m.out_features) for n, m in fresh.named_modules()
                        if isinstance(m, nn.Linear) and any(n.endswith("." + t) for t in ATTN_TARGETS))}


def _export_inputs(g):
    out = _inject_inputs(g)
    out["alpha"] = 2 * out["r"].float() + torch.randint(1, 4, (), generator=g)  # never r: the scaling must travel
    return out


# the file is read back here: its tensors and metadata come out as plain data, diffusers loads them in this
# process into a fresh tiny UNet, whose output must be what peft computes with the grader's A and B
EXPORT = """
r, alpha = int(inputs["r"]), float(inputs["alpha"])
unet = tiny_unet(int(inputs["seed"]))
names = inject_lora(unet, r=r, lora_alpha=alpha)
with torch.no_grad():
    for name in names:
        unet.get_submodule(name).lora_A.weight.copy_(inputs["A." + name])
        unet.get_submodule(name).lora_B.weight.copy_(inputs["B." + name])
with torch.no_grad():
    outputs["yours"] = unet(inputs["z"], inputs["t"], inputs["c"]).sample
path = save_lora_weights(unet, OUTPUTS / "grader_export.safetensors")
for key, value in load_file(path).items():
    outputs["tensor " + key] = value
with safe_open(str(path), framework="pt") as f:
    outputs["metadata"] = json.dumps(f.metadata() or {})
"""


def _export_judge(trial):
    from safetensors.torch import save_file

    from course_lib.grading.verdicts import compare

    if trial.error:
        return trial.error
    x, out = trial.inputs, trial.outputs
    tensors = {k[len("tensor "):]: v for k, v in out.items() if k.startswith("tensor ") and isinstance(v, torch.Tensor)}
    try:
        metadata = json.loads(out.get("metadata", "{}"))
    except ValueError:
        return "the file's metadata could not be read"
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        return "the file's metadata must be a dict of strings"
    if len(tensors) != 64 or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        return f"32 adapters x (A, B) = 64 tensors, got {len(tensors)}"
    seed, r, alpha = int(x["seed"]), int(x["r"]), float(x["alpha"])
    with tempfile.TemporaryDirectory(prefix="grader-export-") as folder:
        path = Path(folder) / "lora.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        theirs = _tiny_unet(seed)
        try:
            theirs.load_lora_adapter(str(path), prefix="unet", use_safetensors=True)
        except Exception as err:
            return f"diffusers could not load the file ({type(err).__name__}: {str(err)[:120]})"
    with torch.no_grad():
        got = theirs(x["z"], x["t"], x["c"]).sample
        want = _peft_unet(x, seed, r, alpha)(x["z"], x["t"], x["c"]).sample
    return (compare("your UNet with its adapters", out.get("yours"), want, *_UNET_TOLERANCE)
            or compare("the UNet with diffusers loading your file", got, want, *_UNET_TOLERANCE))


TRAINING = """
unet = tiny_unet(int(inputs["seed"]))
inject_lora(unet, r=4, lora_alpha=4, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    for name, layer in lora_layers(unet).items():
        layer.lora_A.weight.copy_(inputs["A." + name])
        layer.lora_B.weight.zero_()
frozen = {n: p.detach().clone() for n, p in unet.named_parameters() if not p.requires_grad}
losses = train_lora_steps(unet, inputs["latents"], inputs["context"], noise_scheduler, num_steps=3,
                          learning_rate=1e-3, batch_size=2,
                          generator=torch.Generator().manual_seed(int(inputs["seed"])))
outputs["losses"] = [float(v) for v in losses] if isinstance(losses, list) else repr(type(losses))
outputs["types"] = [type(v).__name__ for v in losses] if isinstance(losses, list) else []
outputs["frozen changed"] = [n for n, p in unet.named_parameters() if n in frozen and not torch.equal(p, frozen[n])]
outputs["B moved"] = all(bool(torch.count_nonzero(layer.lora_B.weight) > 0) for layer in lora_layers(unet).values())
"""


def _training_inputs(g):
    out = {"seed": torch.randint(0, 1000, (), generator=g)}
    unet = _tiny_unet()
    for name in _target_names(unet):
        out[f"A.{name}"] = torch.randn(4, unet.get_submodule(name).in_features, generator=g) * 0.3
    out["latents"], out["context"] = torch.randn(4, 4, 8, 8, generator=g) * 0.5, torch.randn(4, 7, 32, generator=g)
    return out


def _training_judge(trial):
    """The first loss is recomputed here: B = 0, so the UNet is the base UNet, and the draws follow the docstring
    (batch indices, noise, timesteps, in that order, from the generator)."""
    from diffusers import DDPMScheduler

    from course_lib.sd.tiny import SD15_SCHEDULER

    if trial.error:
        return trial.error
    out, x = trial.outputs, trial.inputs
    losses = out.get("losses")
    if not isinstance(losses, list) or len(losses) != 3 or out.get("types") != ["float"] * 3:
        return f"expected a list of 3 floats, got {losses!r:.80}"
    if not all(math.isfinite(v) for v in losses):
        return f"losses must be finite: {losses}"
    if out.get("frozen changed") != []:
        return f"only lora_A / lora_B may change, but {out.get('frozen changed')!r:.80} did"
    if out.get("B moved") is not True:
        return "every B should have moved away from 0 after a few steps"
    scheduler = DDPMScheduler.from_config(SD15_SCHEDULER)  # the notebook's noise_scheduler: SD v1.5's betas
    g = torch.Generator().manual_seed(int(x["seed"]))
    index = torch.randint(0, 4, (2,), generator=g)
    z0, c = x["latents"][index], x["context"][index]
    noise = torch.randn(z0.shape, generator=g)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (2,), generator=g)
    with torch.no_grad():
        first = torch.nn.functional.mse_loss(_tiny_unet(int(x["seed"]))(scheduler.add_noise(z0, noise, t), t, c).sample,
                                             noise).item()
    if not abs(losses[0] - first) <= 1e-3 * first + 1e-5:  # a UNet's output, across processes (see the top)
        return f"the first step's loss should be {first:.5f} (noise-prediction MSE), got {losses[0]:.5f}"
    return None


CHECKS = {
    "test_lora_init": Check(probe=LORA_INIT, inputs=_layer_inputs, judge=_init_judge),
    "test_lora_forward": Check(probe=LORA_FORWARD, inputs=_layer_inputs, expect=_forward_expected, rtol=1e-5,
                               atol=1e-4),
    "test_merge_unmerge": Check(probe=MERGE, inputs=_layer_inputs, expect=_merge_expected, rtol=1e-5, atol=1e-4),
    "test_inject": Check(probe=INJECT, inputs=_inject_inputs, expect=_inject_expected, rtol=_UNET_TOLERANCE[0],
                         atol=_UNET_TOLERANCE[1]),
    "test_counts": Check(probe=COUNTS, inputs=_counts_inputs, expect=_counts_expected),
    "test_sd15_count": Check(probe="outputs['unet'], outputs['lora'] = SD15_UNET_PARAMS, SD15_LORA_PARAMS",
                             expect=_sd15_expected),
    "test_export": Check(probe=EXPORT, inputs=_export_inputs, judge=_export_judge),
    "test_training_step": Check(probe=TRAINING, inputs=_training_inputs, judge=_training_judge),
}


def _purple_rings(n, seed=0, size=64):
    """purple_rings of the notebook's read-only cell."""
    g = torch.Generator().manual_seed(seed)
    centre = size / 2 + (torch.rand(n, 2, generator=g) - 0.5) * 0.2 * size
    radius = size * (0.22 + 0.08 * torch.rand(n, generator=g))
    xs = torch.arange(size) + 0.5
    distance = torch.sqrt((xs.view(1, 1, -1) - centre[:, 0].view(-1, 1, 1)) ** 2
                          + (xs.view(1, -1, 1) - centre[:, 1].view(-1, 1, 1)) ** 2)
    coverage = (0.03 * size + 0.5 - (distance - radius.view(-1, 1, 1)).abs()).clamp(0, 1)
    purple = torch.tensor([0.6, 0.2, 0.8]).view(1, 3, 1, 1)
    return coverage.unsqueeze(1) * purple * 2 - 1


def _trained_lora_judge(trial):
    """The submitted file, loaded here by diffusers into the tiny SD, on the notebook's fixed evaluation set."""
    import contextlib
    import io
    import warnings

    from safetensors import safe_open
    from safetensors.torch import load_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import DDPMScheduler, StableDiffusionPipeline
        from diffusers.utils import logging as diffusers_logging

        from course_lib.sd import encode_images, encode_prompts, load_sd_components
    path = trial.submitted / LORA_PATH
    if not path.is_file():
        return f"{LORA_PATH} was not handed in"
    state = load_file(str(path))
    if len(state) != 64 or not all(k.startswith("unet.") for k in state):
        return f"the file must hold 64 tensors named unet.*, got {len(state)}"
    if not all(torch.count_nonzero(v) > 0 for k, v in state.items() if k.endswith("lora_B.weight")):
        return "every lora_B must have moved away from 0"
    with safe_open(str(path), framework="pt") as f:
        if "lora_adapter_metadata" not in (f.metadata() or {}):
            return "the file's metadata needs lora_adapter_metadata"
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    tiny = tiny_sd_folder()
    components = load_sd_components(tiny)
    scheduler = DDPMScheduler.from_config(components.scheduler.config)
    g = torch.Generator().manual_seed(1)
    latents = encode_images(components, _purple_rings(32, seed=1), generator=g)
    context = encode_prompts(components, [CONCEPT_PROMPT] * 32)
    noise = torch.randn(latents.shape, generator=g)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (32,), generator=g)
    pipe = StableDiffusionPipeline.from_pretrained(tiny, safety_checker=None, requires_safety_checker=False)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name)
        except Exception as err:
            return f"diffusers could not load the file ({type(err).__name__}: {str(err)[:120]})"
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with torch.no_grad():
        losses = [torch.nn.functional.mse_loss(pipe.unet(noisy, timesteps, context, cross_attention_kwargs={
            "scale": scale}).sample, noise).item() for scale in (0.0, 1.0)]
    if not losses[1] < 0.95 * losses[0]:
        return (f"evaluation loss computed by the grader: base model {losses[0]:.4f}, with the submitted LoRA "
                f"{losses[1]:.4f}; it should be at least 5 % lower")
    return None


CHECKS["test_trained_lora"] = Check(judge=_trained_lora_judge)

"""The grader's own checks of a4_latent_diffusion (instructor-only; format: course_lib/grading/verdicts.py).

References are closed forms in float64 from the float32 inputs, or the library's own pipeline run here (the
kernel runs the same pipeline with the student's generate: weights come from the same seed, and the pipeline is
a few dozen layers deep on values of magnitude ~1, so 1e-4 covers the float32 rounding, as in the test).
"""
import json
import math

import torch

from course_lib.grading.verdicts import Check, cached_folder

IMAGE_SIZE, WEIGHTS = 16, "a4_minisd.safetensors"
NUM_INFERENCE_STEPS, GUIDANCE_SCALE = 20, 3.0
MIN_COLOUR_ACCURACY, MIN_SHAPE_ACCURACY = 0.60, 0.50
_CLIP_CASES = [(1, 4), (5, 8), (32, 16), (7, 3)]


def _clip_inputs(g):
    out = {"scales": torch.empty(len(_CLIP_CASES)).uniform_(0.0, 4.5, generator=g)}
    for i, (b, d) in enumerate(_CLIP_CASES):
        out[f"{i}.images"] = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
        out[f"{i}.texts"] = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    return out


CLIP_LOSS = """
for i in range(4):
    scale = inputs["scales"][i].clone().requires_grad_(True)
    images = inputs[f"{i}.images"].clone().requires_grad_(True)
    loss = clip_loss(images, inputs[f"{i}.texts"], scale)
    loss.backward()
    outputs[f"{i}.loss"], outputs[f"{i}.grad_scale"] = loss.detach(), scale.grad
    outputs[f"{i}.grad_images"] = images.grad
"""


def _clip_loss(images, texts, scale):
    logits = scale.exp() * images @ texts.T
    return (-torch.log_softmax(logits, 1).diagonal().mean() - torch.log_softmax(logits, 0).diagonal().mean()) / 2


def _clip_expected(x):
    out = {}
    for i in range(len(_CLIP_CASES)):
        scale = x["scales"][i].double().clone().requires_grad_(True)
        images = x[f"{i}.images"].double().clone().requires_grad_(True)
        loss = _clip_loss(images, x[f"{i}.texts"].double(), scale)
        loss.backward()
        out[f"{i}.loss"], out[f"{i}.grad_scale"] = loss.detach().float(), scale.grad.float()
        out[f"{i}.grad_images"] = images.grad.float()
    return out


_ZERO_SHOT_CASES = [(5, 12, 16), (1, 3, 4), (40, 7, 8)]


def _zero_shot_inputs(g):
    out = {"scales": torch.empty(3).uniform_(0.0, 4.6, generator=g)}
    for i, (b, k, d) in enumerate(_ZERO_SHOT_CASES):
        out[f"{i}.images"], out[f"{i}.texts"] = torch.randn(b, d, generator=g) * 3, torch.randn(k, d, generator=g) * 0.2
    return out


ZERO_SHOT = """
for i in range(3):
    outputs[f"{i}.pred"], outputs[f"{i}.probs"] = zero_shot_classify(inputs[f"{i}.images"], inputs[f"{i}.texts"],
                                                                     inputs["scales"][i])
"""


def _zero_shot_expected(x):
    out = {}
    for i in range(3):
        images = torch.nn.functional.normalize(x[f"{i}.images"].double(), dim=-1)
        texts = torch.nn.functional.normalize(x[f"{i}.texts"].double(), dim=-1)
        probs = (x["scales"][i].double().exp() * images @ texts.T).softmax(-1)
        out[f"{i}.probs"], out[f"{i}.pred"] = probs.float(), probs.argmax(-1)
    return out


DROP = """
seed = int(inputs["seed"])
for i, p in enumerate(inputs["p"].tolist()):
    outputs[f"labels{i}"] = drop_condition(torch.arange(20000), torch.tensor(-1), p,
                                           generator=torch.Generator().manual_seed(seed + i))
cond, null = inputs["cond"].clone(), inputs["null"].clone()
outputs["rows"] = drop_condition(cond, null, 0.3, generator=torch.Generator().manual_seed(seed))
outputs["again"] = drop_condition(cond, null, 0.3, generator=torch.Generator().manual_seed(seed))
outputs["zero"] = drop_condition(cond, null, 0.0, generator=torch.Generator().manual_seed(seed))
outputs["one"] = drop_condition(cond, null, 1.0, generator=torch.Generator().manual_seed(seed))
outputs["untouched"] = bool(torch.equal(cond, inputs["cond"]) and torch.equal(null, inputs["null"]))
"""


def _drop_inputs(g):
    return {"seed": torch.randint(0, 2**30, (), generator=g), "p": torch.tensor([0.1, 0.3, 0.8]) + 0.1 * torch.rand(
        3, generator=g), "cond": torch.randn(400, 5, 8, generator=g), "null": torch.randn(5, 8, generator=g)}


def _drop_judge(trial):
    if trial.error:
        return trial.error
    out, x = trial.outputs, trial.inputs
    for i, p in enumerate(x["p"].tolist()):
        labels = out.get(f"labels{i}")
        if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (20000,):
            return "drop_condition must keep the shape of cond"
        dropped = labels == -1
        if not torch.equal(labels[~dropped], torch.arange(20000)[~dropped]):
            return "rows that are kept must be unchanged"
        share = dropped.double().mean().item()
        if abs(share - p) > 0.02:  # 20000 coins: the share's standard deviation is at most 0.0035
            return f"p = {p:.3f}: dropped {share:.3f} of the rows"
    cond, null, rows = x["cond"], x["null"], out.get("rows")
    if not isinstance(rows, torch.Tensor) or rows.shape != cond.shape:
        return "drop_condition must keep the shape of cond"
    is_null, is_cond = (rows == null).flatten(1).all(1), (rows == cond).flatten(1).all(1)
    if not bool((is_null | is_cond).all()):
        return "each row must be either the whole condition or the whole null condition"
    if not 0.2 < is_null.double().mean().item() < 0.4:
        return "p = 0.3 should drop about 30 % of 400 rows"
    if not torch.equal(out.get("again", rows * 0), rows):
        return "the same generator seed must drop the same rows"
    zero, one = out.get("zero", rows * 0), out.get("one", rows * 0)
    if not torch.equal(zero, cond) or not torch.equal(one, null.expand_as(cond)):
        return "p = 0 keeps every row, p = 1 drops every row"
    if out.get("untouched") is not True:
        return "the inputs must not change"
    return None


CFG = """
for i, w in enumerate(inputs["w"].tolist()):
    outputs[str(i)] = cfg_combine(inputs[f"{i}.u"], inputs[f"{i}.c"], w)
"""


def _cfg_inputs(g):
    out = {"w": torch.cat([torch.tensor([0.0, 1.0, 7.5]), torch.empty(2).uniform_(0, 12, generator=g)])}
    for i in range(5):
        out[f"{i}.u"], out[f"{i}.c"] = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    return out


def _cfg_expected(x):
    return {str(i): (x[f"{i}.u"].double() + w * (x[f"{i}.c"].double() - x[f"{i}.u"].double())).float()
            for i, w in enumerate(x["w"].tolist())}


# generate is graded on its own on a small pipeline with random weights drawn here (the kernel gets them as
# inputs), against the library's MiniSDPipeline.__call__ computed here
GENERATE = """
import dataclasses
from course_lib.minisd import training_captions

def _reference_cfg(eps_uncond, eps_cond, guidance_scale):
    return (1 - guidance_scale) * eps_uncond + guidance_scale * eps_cond

tokenizer = CaptionTokenizer.from_texts(training_captions())
text_encoder = TextEncoder(CLIPConfig.tiny(vocab_size=tokenizer.vocab_size)).eval()
unet = UNet(dataclasses.replace(UNetConfig.tiny(), in_channels=4, out_channels=4, context_dim=32)).eval()
vae = VAE(VAEConfig(block_channels=(8, 16), mid_attention=False)).eval()
for name, module in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet)):
    module.load_state_dict({k[len(name) + 1:]: v for k, v in inputs.items() if k.startswith(name + ".")})
scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
pipe = MiniSDPipeline(vae, text_encoder, tokenizer, unet, scheduler, scale_factor=0.8, image_size=16)
import inspect
names = inspect.unwrap(generate).__globals__  # (generate is wrapped by torch.no_grad)
yours = names.get("cfg_combine")
names["cfg_combine"] = _reference_cfg
try:
    for i, (w, n, prompts) in enumerate([(4.0, 3, ["a red circle", "a small blue square at the top left"]),
                                         (0.0, 2, ["a green triangle"])]):
        outputs[str(i)] = generate(pipe, prompts, guidance_scale=w, num_inference_steps=n,
                                   latents=inputs[f"{i}.latents"].clone())
    outputs["drawn"] = generate(pipe, ["a yellow square"], 2.0, 2, generator=torch.Generator().manual_seed(
        int(inputs["seed"])))
finally:
    names["cfg_combine"] = yours
"""
_GENERATE_CASES = [(4.0, 3, ["a red circle", "a small blue square at the top left"]), (0.0, 2, ["a green triangle"])]


def _random_pipeline(seed):
    import dataclasses

    from course_lib.minisd import training_captions
    from course_lib.pipeline import MiniSDPipeline
    from course_lib.schedulers import DDIMScheduler
    from course_lib.text import CaptionTokenizer, CLIPConfig, TextEncoder
    from course_lib.unet import UNet, UNetConfig
    from course_lib.vae import VAE, VAEConfig

    torch.manual_seed(seed)
    tokenizer = CaptionTokenizer.from_texts(training_captions())
    text_encoder = TextEncoder(CLIPConfig.tiny(vocab_size=tokenizer.vocab_size)).eval()
    unet = UNet(dataclasses.replace(UNetConfig.tiny(), in_channels=4, out_channels=4, context_dim=32)).eval()
    vae = VAE(VAEConfig(block_channels=(8, 16), mid_attention=False)).eval()
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return MiniSDPipeline(vae, text_encoder, tokenizer, unet, scheduler, scale_factor=0.8, image_size=16)


def _generate_inputs(g):
    seed = int(torch.randint(0, 2**30, (), generator=g))
    pipe = _random_pipeline(seed)
    out = {"seed": torch.tensor(seed)}
    for name in ("vae", "text_encoder", "unet"):
        out.update({f"{name}.{k}": v.detach().clone() for k, v in getattr(pipe, name).state_dict().items()})
    for i, (_, _, prompts) in enumerate(_GENERATE_CASES):
        out[f"{i}.latents"] = torch.randn(len(prompts), 4, 8, 8, generator=g)
    return out


def _generate_expected(x):
    pipe = _random_pipeline(int(x["seed"]))
    out = {}
    with torch.no_grad():
        for i, (w, n, prompts) in enumerate(_GENERATE_CASES):
            out[str(i)] = pipe(prompts, num_inference_steps=n, guidance_scale=w, latents=x[f"{i}.latents"].clone(),
                               progress=False).images
        latents = torch.randn(pipe.latent_shape(1), generator=torch.Generator().manual_seed(int(x["seed"])))
        out["drawn"] = pipe(["a yellow square"], num_inference_steps=2, guidance_scale=2.0, latents=latents,
                            progress=False).images
    return out


IMG2IMG = """
for i in range(12):
    outputs[str(i)] = img2img_timesteps(inputs[f"{i}.timesteps"].clone(), float(inputs["strengths"][i]))
"""


def _img2img_inputs(g):
    out = {"strengths": torch.tensor([0.0, 1.0, 0.5] * 4, dtype=torch.float64)}
    out["strengths"][3::3] = torch.rand(3, generator=g, dtype=torch.float64)
    for i in range(12):
        n = int(torch.randint(1, 60, (), generator=g))
        stride = 1000 // n
        out[f"{i}.timesteps"] = torch.arange(n - 1, -1, -1) * stride + 1  # steps_offset 1, as the DDIM of SD
    return out


def _img2img_expected(x):
    out = {}
    for i in range(12):
        ts, strength = x[f"{i}.timesteps"], float(x["strengths"][i])
        n = len(ts)
        out[str(i)] = ts[n - min(int(n * strength), n):]  # diffusers' StableDiffusionImg2ImgPipeline.get_timesteps
    return out


_EVALUATION = {}


def _evaluate(trial):
    """The submitted pipeline file, sampled here (the read-only evaluation cell of the notebook), judged here."""
    if "result" in _EVALUATION:
        return _EVALUATION["result"]
    from course_lib.data import COLOURS, SHAPES  # noqa: F401  (prompt_set's labels)
    from course_lib.metrics import prompt_accuracy
    from course_lib.minisd import prompt_set

    path = trial.submitted / WEIGHTS
    if not path.is_file():
        _EVALUATION["result"] = f"{WEIGHTS} was not handed in"
        return _EVALUATION["result"]
    try:
        pipe = _load_minisd(str(path))
    except Exception as err:
        _EVALUATION["result"] = f"{WEIGHTS} could not be loaded ({type(err).__name__}: {str(err)[:100]})"
        return _EVALUATION["result"]
    if pipe.image_size != IMAGE_SIZE:
        _EVALUATION["result"] = f"the model must draw {IMAGE_SIZE} x {IMAGE_SIZE} images, got {pipe.image_size}"
        return _EVALUATION["result"]
    prompts, seeds = prompt_set(), range(8)
    # the notebook's fixed latents (the same metric as the test, computed where the student's code cannot reach)
    latents = torch.stack([torch.randn(pipe.latent_shape(1)[1:], generator=torch.Generator().manual_seed(1000 + s))
                           for _ in prompts for s in seeds])
    with torch.no_grad():
        images = pipe([p for p, _, _ in prompts for _ in seeds], num_inference_steps=NUM_INFERENCE_STEPS,
                      guidance_scale=GUIDANCE_SCALE, latents=latents, progress=False).images
    judge = _judge_evaluator()
    _EVALUATION["result"] = prompt_accuracy(judge, images, [s for _, s, _ in prompts for _ in seeds],
                                            [c for _, _, c in prompts for _ in seeds])
    return _EVALUATION["result"]


def _judge_evaluator():
    """The judge CNN (deterministic, seed 0), trained once per machine in the grader's cache, then loaded."""
    from course_lib.metrics import EVALUATOR_VERSION, ShapeEvaluator, train_evaluator

    def build(folder):
        train_evaluator(num_train=3000, steps=300, num_test=200, image_size=IMAGE_SIZE, seed=0,
                        progress=False)[0].save_pretrained(folder)

    return ShapeEvaluator.from_pretrained(cached_folder(f"a4-judge-v{EVALUATOR_VERSION}-{IMAGE_SIZE}px-3000-300-seed0",
                                                        build))


def _load_minisd(path):
    """load_minisd of the notebook's read-only cell."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from course_lib.pipeline import MiniSDPipeline
    from course_lib.schedulers import DDIMScheduler
    from course_lib.text import CaptionTokenizer, CLIPConfig, TextEncoder
    from course_lib.unet import UNet, UNetConfig
    from course_lib.vae import VAE, VAEConfig

    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    vae = VAE(VAEConfig.from_dict(json.loads(meta["vae_config"])))
    text_encoder = TextEncoder(CLIPConfig.from_dict(json.loads(meta["text_encoder_config"])))
    unet = UNet(UNetConfig.from_dict(json.loads(meta["unet_config"])))
    for name, module in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet)):
        module.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
    if sum(p.numel() for p in unet.parameters()) >= 20_000_000:
        raise ValueError("keep the model small")
    tokenizer = CaptionTokenizer(json.loads(meta["vocab"]), max_length=int(meta["max_length"]))
    scheduler = DDIMScheduler.from_config(json.loads(meta["scheduler"]))
    return MiniSDPipeline(vae.eval(), text_encoder.eval(), tokenizer, unet.eval(), scheduler,
                          float(meta["scale_factor"]), image_size=int(meta["image_size"]))


def _accuracy_judge(key, minimum):
    def judge(trial):
        result = _evaluate(trial)
        if isinstance(result, str):
            return result
        if not result[key] >= minimum:
            return f"{key.replace('_acc', '')} accuracy of images drawn by the grader {result[key]:.3f} < {minimum}"
        return None
    return judge


CHECKS = {
    # logits up to e^4.5 ~ 90: a log-softmax of them carries ~1.2e-7 * 90 * a few ~ 5e-5
    "test_clip_loss": Check(probe=CLIP_LOSS, inputs=_clip_inputs, expect=_clip_expected, rtol=1e-4, atol=1e-4),
    "test_zero_shot_classify": Check(probe=ZERO_SHOT, inputs=_zero_shot_inputs, expect=_zero_shot_expected,
                                     rtol=1e-4, atol=1e-5),
    "test_drop_condition": Check(probe=DROP, inputs=_drop_inputs, judge=_drop_judge),
    # u + w (c - u) with |u|, |c| < ~5 and w < 12: ~1.2e-7 * 120 * 2 ~ 3e-5
    "test_cfg_combine": Check(probe=CFG, inputs=_cfg_inputs, expect=_cfg_expected, rtol=1e-5, atol=5e-5),
    # images after a few UNet + VAE passes (~40 layers, group norms), computed in two processes: ~1e-3
    "test_generate": Check(probe=GENERATE, inputs=_generate_inputs, expect=_generate_expected, rtol=1e-3, atol=1e-3),
    "test_img2img_timesteps": Check(probe=IMG2IMG, inputs=_img2img_inputs, expect=_img2img_expected),
    "test_prompt_colour": Check(judge=_accuracy_judge("colour_acc", MIN_COLOUR_ACCURACY), reads=(WEIGHTS,)),
    "test_prompt_shape": Check(judge=_accuracy_judge("shape_acc", MIN_SHAPE_ACCURACY), reads=(WEIGHTS,)),
}

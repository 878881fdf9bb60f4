"""The grader's own checks of a3_ddpm (instructor-only; format: course_lib/grading/verdicts.py).

References are closed forms computed in float64 from the float32 inputs. x0_hat = (x_t - sqrt(1 - abar) eps) /
sqrt(abar) reaches ~150 when abar ~ 4e-5 (t = T - 1), so a float32 step carries ~1.2e-7 * 150 * 5 ~ 1e-4 of
rounding error before its (small) coefficient: steps are compared with atol 1e-4, rtol 1e-4. Betas are
compared with rtol 1e-5 and atol 5e-7: the cosine schedule's 1 - f(t+1)/f(t) loses a few ulps of 1 (~1.2e-7)
when computed in float32.
"""
import math
from pathlib import Path

import torch

from course_lib.grading.verdicts import Check, cached_folder

IMAGE_SIZE, NUM_TRAIN_TIMESTEPS, BETA_SCHEDULE = 8, 1000, "linear"
WEIGHTS = "a3_ddpm_weights.safetensors"
MIN_CONFIDENCE, MIN_CLASSES, MAX_FRECHET = 0.60, 8, 3.0
SAMPLING_STEPS = 25  # DDIM steps of the graded samples, as in the notebook
SCHEDULES = ("linear", "scaled_linear", "cosine")


def _betas(schedule, T, start=1e-4, end=0.02):
    if schedule == "linear":
        return torch.linspace(start, end, T, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(start ** 0.5, end ** 0.5, T, dtype=torch.float64) ** 2
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - f((t + 1) / T) / f(t / T), 0.999) for t in range(T)], dtype=torch.float64)


def _abar(g, T):
    schedule = SCHEDULES[int(torch.randint(0, 3, (), generator=g))]
    return torch.cumprod(1 - _betas(schedule, T), dim=0).float()


def _betas_inputs(g):
    return {"T": torch.randint(2, 1200, (6,), generator=g), "start": torch.empty(6).uniform_(1e-5, 1e-3, generator=g),
            "end": torch.empty(6).uniform_(5e-3, 0.05, generator=g)}


MAKE_BETAS = """
for i in range(6):
    T, start, end = int(inputs["T"][i]), float(inputs["start"][i]), float(inputs["end"][i])
    for schedule in ("linear", "scaled_linear", "cosine"):
        outputs[f"{schedule}{i}"] = make_betas(schedule, T, start, end)
try:
    make_betas("quadratic", 10)
    outputs["bad name"] = "no error"
except ValueError as err:
    outputs["bad name"] = "ValueError naming schedule" if "schedule" in str(err) else "ValueError"
except Exception as err:
    outputs["bad name"] = type(err).__name__
"""


def _betas_expected(x):
    out = {"bad name": "ValueError naming schedule"}
    for i in range(6):
        T, start, end = int(x["T"][i]), float(x["start"][i]), float(x["end"][i])
        for schedule in SCHEDULES:
            out[f"{schedule}{i}"] = _betas(schedule, T, start, end).float()  # float32 asked for
    return out


def _q_sample_inputs(g):
    out = {}
    for i, shape in enumerate([(7, 1, 8, 8), (5, 3), (4, 2, 3, 5, 2)]):
        T = int(torch.randint(10, 1000, (), generator=g))
        out[f"{i}.abar"] = _abar(g, T)
        out[f"{i}.x0"], out[f"{i}.eps"] = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        out[f"{i}.t"] = torch.randint(0, T, (shape[0],), generator=g)
    return out


Q_SAMPLE = """
for i in range(3):
    outputs[str(i)] = q_sample(inputs[f"{i}.x0"].clone(), inputs[f"{i}.t"], inputs[f"{i}.eps"].clone(),
                               inputs[f"{i}.abar"].clone())
"""


def _q_sample(x0, t, eps, abar):
    a = abar.double()[t].reshape(-1, *[1] * (x0.ndim - 1))
    return a.sqrt() * x0.double() + (1 - a).sqrt() * eps.double()


def _q_sample_expected(x):
    return {str(i): _q_sample(x[f"{i}.x0"], x[f"{i}.t"], x[f"{i}.eps"], x[f"{i}.abar"]).float() for i in range(3)}


def _step_inputs(g, cases=8):
    out = {}
    for i in range(cases):
        T = int(torch.randint(10, 1000, (), generator=g))
        out[f"{i}.abar"] = _abar(g, T)
        t = [0, 1, T - 1, int(torch.randint(0, T, (), generator=g))][i % 4]
        out[f"{i}.t"] = torch.tensor([t, max(t - int(torch.randint(1, 60, (), generator=g)), -1)])  # t, prev_t
        out[f"{i}.options"] = torch.tensor([i % 2, [0.0, 1.0, 0.5, float(torch.rand((), generator=g))][i % 4]])
        for name in ("x", "eps", "z"):
            out[f"{i}.{name}"] = torch.randn(3, 1, 5, 5, generator=g)
    return out


DDPM_STEP = """
for i in range(8):
    t, clip = int(inputs[f"{i}.t"][0]), bool(inputs[f"{i}.options"][0])
    outputs[str(i)] = ddpm_step(inputs[f"{i}.eps"].clone(), t, inputs[f"{i}.x"].clone(), inputs[f"{i}.abar"].clone(),
                                inputs[f"{i}.z"].clone(), clip_sample=clip)
"""


def _x0_hat(x, eps, a, clip):
    x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
    return x0.clamp(-1, 1) if clip else x0


def _ddpm_expected(x):
    out = {}
    for i in range(8):
        t, clip = int(x[f"{i}.t"][0]), bool(x[f"{i}.options"][0])
        abar = x[f"{i}.abar"].double()
        a, ap = abar[t], (abar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64))
        alpha, beta = a / ap, 1 - a / ap
        x0 = _x0_hat(x[f"{i}.x"].double(), x[f"{i}.eps"].double(), a, clip)
        mean = ap.sqrt() * beta / (1 - a) * x0 + alpha.sqrt() * (1 - ap) / (1 - a) * x[f"{i}.x"].double()
        if t > 0:
            mean = mean + ((1 - ap) / (1 - a) * beta).sqrt() * x[f"{i}.z"].double()
        out[str(i)] = mean.float()
    return out


DDIM_STEP = """
for i in range(8):
    t, prev_t = (int(v) for v in inputs[f"{i}.t"])
    clip, eta = bool(inputs[f"{i}.options"][0]), float(inputs[f"{i}.options"][1])
    outputs[str(i)] = ddim_step(inputs[f"{i}.eps"].clone(), t, prev_t, inputs[f"{i}.x"].clone(),
                                inputs[f"{i}.abar"].clone(), eta=eta, noise=inputs[f"{i}.z"].clone(),
                                clip_sample=clip)
"""


def _ddim_expected(x):
    out = {}
    for i in range(8):
        t, prev_t = (int(v) for v in x[f"{i}.t"])
        clip, eta = bool(x[f"{i}.options"][0]), float(x[f"{i}.options"][1])
        abar = x[f"{i}.abar"].double()
        a = abar[t]
        ap = abar[prev_t] if prev_t >= 0 else torch.tensor(1.0, dtype=torch.float64)
        eps = x[f"{i}.eps"].double()
        x0 = _x0_hat(x[f"{i}.x"].double(), eps, a, clip)
        sigma = eta * ((1 - ap) / (1 - a) * (1 - a / ap)).sqrt()
        prev = ap.sqrt() * x0 + (1 - ap - sigma ** 2).clamp(min=0).sqrt() * eps
        out[str(i)] = (prev + sigma * x[f"{i}.z"].double() if eta > 0 else prev).float()
    return out


# ddpm_loss is graded on its own (a reference q_sample is swapped in, as in the test), with a model that predicts
# zeros and records what it is called with: the grader then recovers the noise from x_t and checks the loss
DDPM_LOSS = """
def _reference_q_sample(x0, t, noise, alphas_cumprod):
    a = alphas_cumprod[t].reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.sqrt(a) * x0 + torch.sqrt(1 - a) * noise

class _Zero(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []
    def forward(self, x_t, t):
        self.calls.append((x_t.detach().clone(), t.detach().clone()))
        return torch.zeros_like(x_t)

import inspect
names = inspect.unwrap(ddpm_loss).__globals__
yours = names.get("q_sample")
names["q_sample"] = _reference_q_sample
try:
    seed = int(inputs["seed"])
    model = _Zero()
    loss = ddpm_loss(model, inputs["x0"], inputs["abar"], generator=torch.Generator().manual_seed(seed))
    outputs["loss"], outputs["calls"] = loss.detach(), len(model.calls)
    outputs["x_t"], outputs["t"] = model.calls[0]
    again = ddpm_loss(_Zero(), inputs["x0"], inputs["abar"], generator=torch.Generator().manual_seed(seed))
    other = ddpm_loss(_Zero(), inputs["x0"], inputs["abar"], generator=torch.Generator().manual_seed(seed + 1))
    outputs["again"], outputs["other"] = again.detach(), other.detach()
finally:
    names["q_sample"] = yours
"""


def _loss_inputs(g):
    return {"x0": torch.rand(4096, 1, 2, 2, generator=g) * 2 - 1,
            "abar": torch.cumprod(1 - _betas("linear", 1000), dim=0).float(),
            "seed": torch.randint(0, 2**30, (), generator=g)}


def _loss_judge(trial):
    if trial.error:
        return trial.error
    out, x0, abar = trial.outputs, trial.inputs["x0"].double(), trial.inputs["abar"].double()
    loss, x_t, t = out.get("loss"), out.get("x_t"), out.get("t")
    if out.get("calls") != 1:
        return f"call the model once per loss, got {out.get('calls')!r} calls"
    if not (isinstance(loss, torch.Tensor) and loss.ndim == 0 and loss.is_floating_point()):
        return "the loss must be a scalar tensor"
    if not (isinstance(t, torch.Tensor) and t.dtype == torch.long and tuple(t.shape) == (len(x0),)):
        return f"t must be a (B,) long tensor, got {getattr(t, 'dtype', t)!r:.40} {tuple(getattr(t, 'shape', ()))}"
    if not (isinstance(x_t, torch.Tensor) and x_t.shape == x0.shape) or not (0 <= int(t.min()) and int(t.max()) < 1000):
        return "the model must be called on x_t (the shape of x0) at timesteps in [0, T)"
    a = abar[t].reshape(-1, 1, 1, 1)
    eps = (x_t.double() - a.sqrt() * x0) / (1 - a).sqrt()  # the noise that went into x_t
    if not torch.isfinite(eps).all():
        return "x_t is not finite"
    want = eps.pow(2).mean().item()  # the model predicts 0
    # eps reaches ~|x_t| / sqrt(1 - abar_0) ~ 100 at t = 0: rounding of x_t (1.2e-7 * ~4) / 1e-2 ~ 5e-5 each
    if not abs(loss.item() - want) <= 1e-3 * want + 1e-5:
        return f"the loss is the mean of (noise - prediction)^2 = {want:.4f}, got {loss.item():.4f}"
    if not (0.9 < want < 1.1 and abs(eps.mean().item()) < 0.05):
        return "the noise must be N(0, I)"  # 16384 draws: 6 standard deviations of the mean and variance
    if not (int(t.min()) < 20 and int(t.max()) > 980 and abs(t.double().mean().item() - 499.5) < 25):
        return "t must be uniform over 0 .. T-1"
    if not (isinstance(out.get("again"), torch.Tensor) and torch.equal(out["again"], loss)):
        return "the same generator seed must give the same loss: draw t and the noise from the generator"
    if torch.equal(out.get("other", loss), loss):
        return "a different generator seed gave the same loss: draw t and the noise from the generator"
    return None


class _Denoiser(torch.nn.Module):
    """The read-only Denoiser of the notebook (the graders build this architecture, then load the weights)."""

    def __init__(self):
        from course_lib.unet import UNet, UNetConfig

        super().__init__()
        self.config = UNetConfig(in_channels=1, out_channels=1, block_channels=(32, 64), layers_per_block=1,
                                 attention_levels=(), num_heads=4, context_dim=8, norm_groups=8)
        self.unet = UNet(self.config)

    def forward(self, x_t, t):
        return self.unet(x_t, t, x_t.new_zeros(x_t.shape[0], 1, self.config.context_dim))


def _build_digit_judge(folder: Path) -> None:
    """The notebook's classifier and PCA, fitted once per machine: their arrays, saved for the judge."""
    import warnings

    from safetensors.torch import save_file
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    from course_lib.data import load_digits

    real, labels = load_digits(IMAGE_SIZE, split="all")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classifier = LogisticRegression(C=0.1, max_iter=2000).fit(real.flatten(1).numpy(), labels.numpy())
        pca = PCA(n_components=16, random_state=0).fit(real.flatten(1).numpy())
    folder.mkdir(parents=True)
    arrays = {"coef": classifier.coef_, "intercept": classifier.intercept_, "pca_mean": pca.mean_,
              "pca_components": pca.components_}
    save_file({k: torch.from_numpy(v).double().contiguous() for k, v in arrays.items()}, str(folder / "judge.safetensors"))


def _digit_judge() -> dict:
    from safetensors.torch import load_file

    return load_file(str(cached_folder("a3-digit-judge-v1-8px", _build_digit_judge) / "judge.safetensors"))


def _samples_judge(trial):
    """The submitted weights, sampled here with diffusers' DDIM and judged as in the test."""
    import warnings

    from safetensors.torch import load_file

    from course_lib.data import load_digits
    from course_lib.metrics import frechet_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import DDIMScheduler
    path = trial.submitted / WEIGHTS
    if not path.is_file():
        return f"{WEIGHTS} was not handed in"
    model = _Denoiser()
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception as err:
        return f"{WEIGHTS} does not fit the notebook's Denoiser ({type(err).__name__})"
    model.eval()
    sampler = DDIMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule=BETA_SCHEDULE, clip_sample=True,
                            set_alpha_to_one=True)
    sampler.set_timesteps(SAMPLING_STEPS)
    # the notebook's fixed start noise: the same metric as the test (a secret start would make a model that
    # passes the test fail here by chance), computed where the student's code cannot reach it
    x = torch.randn(256, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(2024))
    with torch.no_grad():
        for t in sampler.timesteps:
            x = sampler.step(model(x, torch.full((256,), int(t))), t, x).prev_sample
    samples = x.clamp(-1, 1).flatten(1).double()                               # (256, 64)
    if not torch.isfinite(samples).all():
        return "the samples are not finite"
    # the classifier and PCA of the test, applied from their arrays: softmax(x W^T + b), (x - mean) V^T
    judge = _digit_judge()
    probs = torch.softmax(samples @ judge["coef"].T + judge["intercept"], dim=1)  # (256, 10)
    held_out = load_digits(IMAGE_SIZE, split="test")[0].flatten(1).double()
    f_samples = (samples - judge["pca_mean"]) @ judge["pca_components"].T       # (256, 16)
    f_real = (held_out - judge["pca_mean"]) @ judge["pca_components"].T         # (359, 16)
    confidence = float(probs.max(dim=1).values.mean())
    classes = int((torch.bincount(probs.argmax(dim=1), minlength=10) >= 0.02 * 256).sum())
    frechet = frechet_distance(f_samples.mean(0), torch.cov(f_samples.T), f_real.mean(0), torch.cov(f_real.T))
    if confidence < MIN_CONFIDENCE or classes < MIN_CLASSES or not frechet <= MAX_FRECHET:
        return (f"samples drawn by the grader: confidence {confidence:.3f} (>= {MIN_CONFIDENCE}), digits present "
                f"{classes} (>= {MIN_CLASSES}), Frechet distance {frechet:.2f} (<= {MAX_FRECHET})")
    return None


CHECKS = {
    "test_make_betas": Check(probe=MAKE_BETAS, inputs=_betas_inputs, expect=_betas_expected, rtol=1e-5, atol=5e-7),
    # |x_t| < ~6 from a few float32 operations: atol 1e-5
    "test_q_sample": Check(probe=Q_SAMPLE, inputs=_q_sample_inputs, expect=_q_sample_expected, rtol=1e-5,
                           atol=1e-5),
    "test_ddpm_step": Check(probe=DDPM_STEP, inputs=_step_inputs, expect=_ddpm_expected, rtol=1e-4, atol=1e-4),
    "test_ddim_step": Check(probe=DDIM_STEP, inputs=_step_inputs, expect=_ddim_expected, rtol=1e-4, atol=1e-4),
    "test_ddpm_loss": Check(probe=DDPM_LOSS, inputs=_loss_inputs, judge=_loss_judge),
    "test_samples": Check(judge=_samples_judge, reads=(WEIGHTS,)),  # deterministic: fixed start noise
}

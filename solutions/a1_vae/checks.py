"""The grader's own checks of a1_vae (instructor-only; format: course_lib/grading/verdicts.py).

Every reference is computed in float64 from the float32 inputs. Inputs stay within |x| < ~10 and exp(logvar/2) <
~20, so float32 results of a few operations carry an error below ~1.2e-7 * 200 * 4 ~ 1e-4: atol 1e-4, rtol 1e-5.
"""
import torch

from course_lib.grading.verdicts import Check

LATENT_DIM = 8
THRESHOLD = 0.08  # RECONSTRUCTION_THRESHOLD of the notebook


def _gaussian_inputs(g):
    shapes = {"a": (5, LATENT_DIM), "b": (3, 4, 2, 2), "c": (9,)}
    out = {}
    for key, shape in shapes.items():
        out[f"{key}.mean"] = torch.randn(shape, generator=g) * 2
        out[f"{key}.logvar"] = torch.randn(shape, generator=g) * 1.5
        out[f"{key}.noise"] = torch.randn(shape, generator=g)
        out[f"{key}.weight"] = torch.randn(shape, generator=g)  # for the gradients of sum(weight * z)
    return out


REPARAMETERIZE = """
for key in ("a", "b", "c"):
    mean = inputs[key + ".mean"].clone().requires_grad_(True)
    logvar = inputs[key + ".logvar"].clone().requires_grad_(True)
    z = reparameterize(mean, logvar, inputs[key + ".noise"])
    outputs[key + ".z"] = z.detach()
    (z * inputs[key + ".weight"]).sum().backward()
    outputs[key + ".grad_mean"] = mean.grad
    outputs[key + ".grad_logvar"] = logvar.grad
"""


def _reparameterize_expected(x):
    out = {}
    for key in ("a", "b", "c"):
        m, lv, n, w = (x[f"{key}.{k}"].double() for k in ("mean", "logvar", "noise", "weight"))
        sigma = torch.sqrt(torch.exp(lv))
        out[f"{key}.z"] = (m + sigma * n).float()
        out[f"{key}.grad_mean"] = w.float()
        out[f"{key}.grad_logvar"] = (0.5 * sigma * n * w).float()
    return out


def _kl_inputs(g):
    out = {}
    for key, (batch, dim) in {"a": (5, LATENT_DIM), "b": (1, 3), "c": (17, 20)}.items():
        out[f"{key}.mean"] = torch.randn(batch, dim, generator=g) * 2
        out[f"{key}.logvar"] = torch.randn(batch, dim, generator=g) * 1.5
    return out


KL = """
for key in ("a", "b", "c"):
    outputs[key] = kl_divergence(inputs[key + ".mean"], inputs[key + ".logvar"])
"""


def _kl(mean, logvar):
    m, lv = mean.double(), logvar.double()
    return 0.5 * (m.pow(2) + lv.exp() - 1.0 - lv).sum(dim=1)


def _kl_expected(x):
    return {key: _kl(x[f"{key}.mean"], x[f"{key}.logvar"]).float() for key in ("a", "b", "c")}


def _elbo_inputs(g):
    out = {"betas": torch.rand(3, generator=g) * 4}
    for i in range(3):
        out[f"{i}.x"] = torch.rand(4, 1, 16, 16, generator=g) * 2 - 1
        out[f"{i}.x_hat"] = torch.randn(4, 1, 16, 16, generator=g)
        out[f"{i}.mean"] = torch.randn(4, LATENT_DIM, generator=g)
        out[f"{i}.logvar"] = torch.randn(4, LATENT_DIM, generator=g)
    return out


# negative_elbo is graded on its own, as in the test: a reference KL is swapped in while it runs
NEGATIVE_ELBO = """
def _reference_kl(mean, logvar):
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)

import inspect
names = inspect.unwrap(negative_elbo).__globals__
yours = names.get("kl_divergence")
names["kl_divergence"] = _reference_kl
try:
    for i in range(3):
        beta = float(inputs["betas"][i])
        loss = negative_elbo(inputs[f"{i}.x_hat"], inputs[f"{i}.x"], inputs[f"{i}.mean"], inputs[f"{i}.logvar"],
                             beta=beta)
        outputs[str(i)] = loss.detach().reshape(loss.shape)
finally:
    names["kl_divergence"] = yours
"""


def _elbo_expected(x):
    out = {}
    for i in range(3):
        beta = float(x["betas"][i])
        sq = (x[f"{i}.x_hat"].double() - x[f"{i}.x"].double()).pow(2).flatten(1).sum(dim=1)
        out[str(i)] = (sq + beta * _kl(x[f"{i}.mean"], x[f"{i}.logvar"])).mean().float()
    return out


def _digits(g, count):
    from course_lib.data import load_digits

    images, _ = load_digits(16, split="test")
    return images[torch.randperm(len(images), generator=g)[:count]]


TINY_VAE = """
model = TinyVAE()
x = inputs["x"]
mean, logvar = model.encode(x)
outputs["mean"], outputs["logvar"] = mean.detach(), logvar.detach()
outputs["decoded"] = model.decode(mean).detach()
seed = int(inputs["seed"])
outputs["a"] = model(x, generator=torch.Generator().manual_seed(seed))[0].detach()
outputs["b"] = model(x, generator=torch.Generator().manual_seed(seed))[0].detach()
outputs["c"] = model(x, generator=torch.Generator().manual_seed(seed + 1))[0].detach()
outputs["parameters"] = int(sum(p.numel() for p in model.parameters()))
"""


def _tiny_vae_judge(trial):
    out, n = trial.outputs, len(trial.inputs["x"])
    if trial.error:
        return trial.error
    for name, shape in {"mean": (n, LATENT_DIM), "logvar": (n, LATENT_DIM), "decoded": (n, 1, 16, 16),
                        "a": (n, 1, 16, 16), "b": (n, 1, 16, 16), "c": (n, 1, 16, 16)}.items():
        value = out.get(name)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape or not value.is_floating_point():
            return f"{name}: expected a float tensor of shape {shape}, got {getattr(value, 'shape', value)!r:.60}"
        if not torch.isfinite(value).all():
            return f"{name}: not finite"
    if not torch.equal(out["a"], out["b"]):
        return "the same generator seed must give the same sample"
    if torch.allclose(out["a"], out["c"]):
        return "forward must sample z (different seeds gave the same x_hat)"
    if not isinstance(out.get("parameters"), int) or not 0 < out["parameters"] < 5_000_000:
        return f"keep the model small (< 5 M parameters), got {out.get('parameters')!r:.40}"
    return None


RECONSTRUCTION = """
model = TinyVAE()
model.load_state_dict(load_file(WEIGHTS))
model.eval()
with torch.no_grad():
    mean, _ = model.encode(inputs["x"])
    outputs["mean"] = mean
    outputs["decoded"] = model.decode(mean)
"""


def _reconstruction_judge(trial):
    """The error is computed here, on held-out digits in an order drawn for this submission."""
    if trial.error:
        return trial.error
    x = trial.inputs["x"]
    mean, decoded = trial.outputs.get("mean"), trial.outputs.get("decoded")
    if not isinstance(mean, torch.Tensor) or tuple(mean.shape) != (len(x), LATENT_DIM):
        return f"the latent must have LATENT_DIM = {LATENT_DIM} numbers per digit"
    if not isinstance(decoded, torch.Tensor) or tuple(decoded.shape) != tuple(x.shape):
        return f"decode must give {tuple(x.shape)} images, got {getattr(decoded, 'shape', decoded)!r:.60}"
    error = (decoded.double() - x.double()).pow(2).mean().item()
    if not error < THRESHOLD:  # (NaN fails too)
        return f"held-out reconstruction error {error:.4f} is not below {THRESHOLD}"
    return None


INTERPOLATE = """
for key, n in (("a", 7), ("b", 2), ("c", 11)):
    outputs[key] = interpolate_latents(inputs[key + ".z0"], inputs[key + ".z1"], n)
"""


def _interpolate_inputs(g):
    out = {}
    for key, shape in {"a": (3, 4), "b": (LATENT_DIM,), "c": (2, 2, 2)}.items():
        out[f"{key}.z0"] = torch.randn(shape, generator=g) * 3
        out[f"{key}.z1"] = torch.randn(shape, generator=g) * 3
    return out


def _interpolate_expected(x):
    out = {}
    for key, n in (("a", 7), ("b", 2), ("c", 11)):
        z0, z1 = x[f"{key}.z0"].double(), x[f"{key}.z1"].double()
        t = torch.linspace(0, 1, n, dtype=torch.float64).view(n, *[1] * z0.ndim)
        out[key] = ((1 - t) * z0 + t * z1).float()
    return out


CHECKS = {
    "test_reparameterize": Check(probe=REPARAMETERIZE, inputs=_gaussian_inputs, expect=_reparameterize_expected,
                                 rtol=1e-5, atol=1e-4),
    "test_kl_divergence": Check(probe=KL, inputs=_kl_inputs, expect=_kl_expected, rtol=1e-5, atol=1e-4),
    # sums of 256 squared errors of magnitude ~10: float32 error ~1.2e-7 * 2600 * ~10 ~ 3e-3 at worst
    "test_negative_elbo": Check(probe=NEGATIVE_ELBO, inputs=_elbo_inputs, expect=_elbo_expected, rtol=1e-5,
                                atol=1e-3),
    "test_tiny_vae": Check(probe=TINY_VAE, inputs=lambda g: {"x": _digits(g, 6), "seed": torch.randint(
        0, 2**30, (), generator=g)}, judge=_tiny_vae_judge),
    "test_reconstruction": Check(probe=RECONSTRUCTION, inputs=lambda g: {"x": _digits(g, 359)},
                                 judge=_reconstruction_judge),
    # (1 - t) z0 + t z1 with |z| < ~12: error ~1.2e-7 * 12 * 3 ~ 5e-6
    "test_interpolate_latents": Check(probe=INTERPOLATE, inputs=_interpolate_inputs, expect=_interpolate_expected,
                                      rtol=1e-5, atol=2e-5),
}

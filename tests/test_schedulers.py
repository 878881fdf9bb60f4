"""Contracts for course_lib.schedulers: equal to diffusers' DDPMScheduler/DDIMScheduler and to the papers' formulas.

Tolerances: schedule arrays atol 1e-6; one sampler step atol 1e-5 (we form the scalar coefficients in float64,
diffusers in float32, so the last bits differ).
"""
import json
import math

import diffusers
import numpy as np
import pytest
import torch

from course_lib.schedulers import (DDIMScheduler, DDIMSchedulerConfig, DDPMScheduler, DDPMSchedulerConfig,
                                   SchedulerOutput, make_betas)

ATOL_SCHEDULE = 1e-6
ATOL_STEP = 1e-5
SCHEDULES = ["linear", "scaled_linear", "cosine"]
KINDS = {"ddpm": (DDPMScheduler, diffusers.DDPMScheduler), "ddim": (DDIMScheduler, diffusers.DDIMScheduler)}


def _pair(kind: str, **kwargs):
    """Our scheduler and diffusers' with the same settings ("cosine" is diffusers' "squaredcos_cap_v2")."""
    ours_cls, theirs_cls = KINDS[kind]
    theirs_kwargs = dict(kwargs)
    if theirs_kwargs.get("beta_schedule") == "cosine":
        theirs_kwargs["beta_schedule"] = "squaredcos_cap_v2"
    return ours_cls(**kwargs), theirs_cls(**theirs_kwargs)


def _fake_model(x: torch.Tensor, t) -> torch.Tensor:
    """A fixed deterministic stand-in for a UNet: a smooth function of x and t."""
    s = float(t) / 1000.0
    return torch.tanh(x) * math.cos(3 * s) + 0.3 * torch.sin(2 * x + s)


def _x(shape=(2, 3, 4, 4), seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- schedules ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("betas_range", [(0.0001, 0.02), (0.00085, 0.012)])
def test_schedule_arrays_match_diffusers(kind, schedule, betas_range):
    ours, theirs = _pair(kind, beta_schedule=schedule, beta_start=betas_range[0], beta_end=betas_range[1])
    for name in ("betas", "alphas", "alphas_cumprod"):
        assert getattr(ours, name).shape == (1000,)
        assert getattr(ours, name).dtype == torch.float32
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), atol=ATOL_SCHEDULE, rtol=0)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps, atol=0, rtol=0)
    assert ours.init_noise_sigma == 1.0 and ours.num_inference_steps is None and len(ours) == 1000


def test_make_betas_closed_forms():
    T = 50
    lin = make_betas("linear", T, 0.001, 0.03).double().numpy()
    np.testing.assert_allclose(lin, 0.001 + (0.03 - 0.001) * np.arange(T) / (T - 1), atol=1e-8)
    sq = make_betas("scaled_linear", T, 0.00085, 0.012).double().numpy()
    np.testing.assert_allclose(np.sqrt(sq), np.linspace(math.sqrt(0.00085), math.sqrt(0.012), T), atol=1e-7)
    # cosine: abar_t = prod (1 - beta) must follow f((t+1)/T) / f(0), f(u) = cos^2((u + s)/(1 + s) pi/2)
    cos = make_betas("cosine", T).double().numpy()
    f = [math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2 for u in np.arange(T + 1) / T]
    expected_abar = np.array(f[1:]) / f[0]
    np.testing.assert_allclose(np.cumprod(1 - cos)[:-1], expected_abar[:-1], atol=1e-6)
    assert cos[-1] == pytest.approx(0.999)  # f(1) = 0: the last beta is capped
    torch.testing.assert_close(make_betas("squaredcos_cap_v2", T), make_betas("cosine", T), atol=0, rtol=0)


# --- forward process ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_add_noise_and_velocity_match_diffusers(kind, schedule):
    ours, theirs = _pair(kind, beta_schedule=schedule)
    x0, noise = _x(seed=1), _x(seed=2)
    timesteps = torch.tensor([0, 999])
    x0_before = x0.clone()
    torch.testing.assert_close(ours.add_noise(x0, noise, timesteps), theirs.add_noise(x0, noise, timesteps),
                               atol=ATOL_SCHEDULE, rtol=0)
    torch.testing.assert_close(ours.get_velocity(x0, noise, timesteps),
                               theirs.get_velocity(x0, noise, timesteps), atol=ATOL_SCHEDULE, rtol=0)
    torch.testing.assert_close(x0, x0_before, atol=0, rtol=0)


def test_add_noise_closed_form_per_row():
    sched = DDPMScheduler()
    x0, noise = _x((3, 5), seed=3), _x((3, 5), seed=4)
    t = torch.tensor([10, 500, 990])
    betas = np.linspace(0.0001, 0.02, 1000)
    abar = np.cumprod(1 - betas)[[10, 500, 990]][:, None]
    expected = np.sqrt(abar) * x0.double().numpy() + np.sqrt(1 - abar) * noise.double().numpy()
    np.testing.assert_allclose(sched.add_noise(x0, noise, t).double().numpy(), expected, atol=1e-5)
    # one int timestep applies to the whole batch
    torch.testing.assert_close(sched.add_noise(x0, noise, 500), sched.add_noise(x0, noise, torch.tensor([500] * 3)))


def test_velocity_recovers_x0_and_eps():
    """x_t = sqrt(abar) x0 + sqrt(1-abar) eps and v = sqrt(abar) eps - sqrt(1-abar) x0 rotate (x0, eps)."""
    sched = DDIMScheduler(beta_schedule="cosine")
    x0, eps, t = _x(seed=5, dtype=torch.float64), _x(seed=6, dtype=torch.float64), torch.tensor([100, 700])
    xt, v = sched.add_noise(x0, eps, t), sched.get_velocity(x0, eps, t)
    assert xt.dtype == torch.float64
    a = sched.alphas_cumprod[t].double().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(a.sqrt() * xt - (1 - a).sqrt() * v, x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.sqrt() * v + (1 - a).sqrt() * xt, eps, atol=1e-6, rtol=0)


# --- timesteps ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 3, 7, 10, 20, 25, 50, 100, 333, 1000])
def test_set_timesteps_matches_diffusers(kind, spacing, n):
    ours, theirs = _pair(kind, timestep_spacing=spacing)
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    assert ours.num_inference_steps == n and ours.timesteps.dtype == torch.int64
    torch.testing.assert_close(ours.timesteps, theirs.timesteps, atol=0, rtol=0)


def test_set_timesteps_known_values():
    sd = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    sd.set_timesteps(50)
    assert sd.timesteps[:3].tolist() == [981, 961, 941] and sd.timesteps[-1].item() == 1
    trailing = DDPMScheduler(timestep_spacing="trailing")
    trailing.set_timesteps(4)
    assert trailing.timesteps.tolist() == [999, 749, 499, 249]
    linspace = DDPMScheduler(timestep_spacing="linspace")
    linspace.set_timesteps(4)
    assert linspace.timesteps.tolist() == [999, 666, 333, 0]


def test_trailing_keeps_exactly_n_steps_where_diffusers_adds_a_stray_one():
    ours, theirs = _pair("ddim", timestep_spacing="trailing")
    ours.set_timesteps(61)
    theirs.set_timesteps(61)
    assert len(ours.timesteps) == 61 and ours.timesteps.min() >= 0
    torch.testing.assert_close(ours.timesteps, theirs.timesteps[:61], atol=0, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_steps_offset_and_previous_timestep_match_diffusers(kind):
    ours, theirs = _pair(kind, steps_offset=1)
    ours.set_timesteps(20)
    theirs.set_timesteps(20)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps, atol=0, rtol=0)
    for t in ours.timesteps:
        theirs_prev = int(theirs.previous_timestep(t)) if kind == "ddpm" else int(t) - 1000 // 20
        assert ours.previous_timestep(t) == theirs_prev


@pytest.mark.parametrize("strength, expected", [(1.0, [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
                                                (0.3, [200, 100, 0]), (0.55, [400, 300, 200, 100, 0]),
                                                (0.05, []), (0.0, [])])
def test_timesteps_for_strength(strength, expected):
    """img2img re-runs the last int(n * strength) steps (hand-computed for n = 10, leading spacing)."""
    sched = DDIMScheduler()
    sched.set_timesteps(10)
    assert sched.get_timesteps_for_strength(strength).tolist() == expected


def test_timesteps_for_strength_sd_values():
    sched = DDIMScheduler(steps_offset=1)
    sched.set_timesteps(50)
    tail = sched.get_timesteps_for_strength(0.75)  # int(37.5) = 37 steps, starting at index 13
    assert len(tail) == 37 and tail[0].item() == 981 - 13 * 20 and tail[-1].item() == 1


# --- full sampling loops against diffusers -----------------------------------------------------------------

def _compare_loops(ours, theirs, step_kwargs=None, seed=7, steps=None):
    """Run both schedulers on the same inputs; every step's outputs must agree. Returns the final sample."""
    step_kwargs = step_kwargs or {}
    if steps is not None:
        ours.set_timesteps(steps)
        theirs.set_timesteps(steps)
    g_ours, g_theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    x = _x(seed=seed)
    for t in ours.timesteps:
        eps = _fake_model(x, t)
        out = ours.step(eps, t, x, generator=g_ours, **step_kwargs)
        ref = theirs.step(eps, t, x, generator=g_theirs, **step_kwargs)
        assert isinstance(out, SchedulerOutput)
        torch.testing.assert_close(out.pred_original_sample, ref.pred_original_sample, atol=ATOL_STEP, rtol=0)
        torch.testing.assert_close(out.prev_sample, ref.prev_sample, atol=ATOL_STEP, rtol=0)
        x = ref.prev_sample  # both continue from the same point, so only one step's error is measured
    if int(ours.timesteps[-1]) == 0:  # then both drew noise on exactly the same steps (diffusers: t > 0)
        assert torch.equal(g_ours.get_state(), g_theirs.get_state())
    return x


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddpm_loop_matches_diffusers(prediction_type, schedule, spacing):
    ours, theirs = _pair("ddpm", prediction_type=prediction_type, beta_schedule=schedule, timestep_spacing=spacing)
    final = _compare_loops(ours, theirs, steps=12)
    assert torch.isfinite(final).all()


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip_sample", [True, False])
def test_ddpm_variance_types_and_clipping_match_diffusers(variance_type, clip_sample):
    ours, theirs = _pair("ddpm", variance_type=variance_type, clip_sample=clip_sample, clip_sample_range=1.5,
                         beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    _compare_loops(ours, theirs, steps=10)


def test_ddpm_full_chain_without_set_timesteps_matches_diffusers():
    """Before set_timesteps DDPM walks all T steps, t' = t - 1 (T = 200 to stay fast)."""
    ours, theirs = _pair("ddpm", num_train_timesteps=200)
    assert ours.previous_timestep(150) == 149
    _compare_loops(ours, theirs)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_loop_matches_diffusers(prediction_type, schedule, eta):
    ours, theirs = _pair("ddim", prediction_type=prediction_type, beta_schedule=schedule)
    _compare_loops(ours, theirs, {"eta": eta}, steps=10)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_stable_diffusion_config_matches_diffusers(spacing):
    kwargs = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1 if spacing == "leading" else 0, timestep_spacing=spacing)
    ours, theirs = _pair("ddim", **kwargs)
    torch.testing.assert_close(ours.final_alpha_cumprod, theirs.final_alpha_cumprod, atol=0, rtol=0)
    _compare_loops(ours, theirs, {"eta": 0.3}, steps=9)


def test_variance_noise_matches_diffusers_and_generator():
    ours, theirs = _pair("ddim")
    ours.set_timesteps(5)
    theirs.set_timesteps(5)
    x, z = _x(seed=8), _x(seed=9)
    t = ours.timesteps[1]
    out = ours.step(_fake_model(x, t), t, x, eta=0.7, variance_noise=z)
    ref = theirs.step(_fake_model(x, t), t, x, eta=0.7, variance_noise=z)
    torch.testing.assert_close(out.prev_sample, ref.prev_sample, atol=ATOL_STEP, rtol=0)
    # drawing z from a generator seeded like the one that made it gives the same step
    from_generator = ours.step(_fake_model(x, t), t, x, eta=0.7, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(from_generator.prev_sample, out.prev_sample, atol=0, rtol=0)


# --- the papers' equations, written independently ----------------------------------------------------------

def test_ddpm_step_equals_eq11_plus_posterior_noise():
    """Without clipping, mu = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) (eq. 11), sigma^2 = beta~_t."""
    sched = DDPMScheduler(clip_sample=False)
    x, eps, z = _x(seed=10, dtype=torch.float64), _x(seed=11, dtype=torch.float64), _x(seed=12, dtype=torch.float64)
    t = 400
    betas = np.linspace(0.0001, 0.02, 1000, dtype=np.float32).astype(np.float64)
    abar = np.cumprod(1 - betas)
    mu = (x - betas[t] / math.sqrt(1 - abar[t]) * eps) / math.sqrt(1 - betas[t])
    var = (1 - abar[t - 1]) / (1 - abar[t]) * betas[t]
    out = sched.step(eps, t, x, variance_noise=z)
    torch.testing.assert_close(out.prev_sample, mu + math.sqrt(var) * z, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pred_original_sample, (x - math.sqrt(1 - abar[t]) * eps) / math.sqrt(abar[t]),
                               atol=1e-5, rtol=0)


def test_ddpm_last_step_adds_no_noise():
    sched = DDPMScheduler(clip_sample=False)
    x = _x(seed=13)
    a = sched.step(_fake_model(x, 0), 0, x, generator=torch.Generator().manual_seed(0)).prev_sample
    b = sched.step(_fake_model(x, 0), 0, x, generator=torch.Generator().manual_seed(1)).prev_sample
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_ddim_eta0_step_equals_eq12():
    sched = DDIMScheduler(clip_sample=False)
    sched.set_timesteps(10)  # leading: 900, 800, .., 0
    x, eps = _x(seed=14, dtype=torch.float64), _x(seed=15, dtype=torch.float64)
    abar = np.cumprod(1 - np.linspace(0.0001, 0.02, 1000, dtype=np.float32).astype(np.float64))
    a_t, a_prev = abar[700], abar[600]
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    expected = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    out = sched.step(eps, 700, x)
    torch.testing.assert_close(out.prev_sample, expected, atol=1e-5, rtol=0)
    again = sched.step(eps, 700, x)  # eta = 0 draws nothing: deterministic
    torch.testing.assert_close(again.prev_sample, out.prev_sample, atol=0, rtol=0)


def test_ddim_eta1_noise_scale_equals_ddpm_posterior_std():
    """sigma_t(eta=1) of eq. (16) is the DDPM posterior std sqrt(beta~_t) for the same jump t -> t'."""
    ddim, ddpm = DDIMScheduler(clip_sample=False), DDPMScheduler(clip_sample=False)
    ddim.set_timesteps(10)
    ddpm.set_timesteps(10)
    x, eps = _x(seed=16), _x(seed=17)
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    sigma_ddim = ddim.step(eps, 500, x, eta=1.0, variance_noise=one).prev_sample - \
        ddim.step(eps, 500, x, eta=1.0, variance_noise=zero).prev_sample
    sigma_ddpm = ddpm.step(eps, 500, x, variance_noise=one).prev_sample - \
        ddpm.step(eps, 500, x, variance_noise=zero).prev_sample
    torch.testing.assert_close(sigma_ddim, sigma_ddpm, atol=1e-6, rtol=0)
    a_t, a_prev = ddim.alphas_cumprod[500].item(), ddim.alphas_cumprod[400].item()
    assert sigma_ddim[0, 0, 0, 0].item() == pytest.approx(math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)),
                                                          abs=1e-6)


def test_step_keeps_dtype_and_does_not_mutate_inputs():
    sched = DDIMScheduler()
    sched.set_timesteps(4)
    x, eps = _x(dtype=torch.float64), _x(seed=1, dtype=torch.float64)
    x_before, eps_before = x.clone(), eps.clone()
    out = sched.step(eps, sched.timesteps[0], x, eta=0.5, generator=torch.Generator().manual_seed(0))
    assert out.prev_sample.dtype == torch.float64 and out.pred_original_sample.shape == x.shape
    torch.testing.assert_close(x, x_before, atol=0, rtol=0)
    torch.testing.assert_close(eps, eps_before, atol=0, rtol=0)


def test_clip_sample_range_bounds_pred_original_sample():
    sched = DDPMScheduler(clip_sample=True, clip_sample_range=0.5)
    x = 10 * _x(seed=18)
    out = sched.step(-x, 10, x, generator=torch.Generator().manual_seed(0))
    assert out.pred_original_sample.abs().max().item() == pytest.approx(0.5)


# --- config ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config_cls", [DDPMSchedulerConfig, DDIMSchedulerConfig])
def test_config_json_round_trip(config_cls):
    config = config_cls(num_train_timesteps=500, beta_schedule="scaled_linear", prediction_type="v_prediction",
                        timestep_spacing="trailing", steps_offset=1, clip_sample=False)
    assert config_cls.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("kind", KINDS)
def test_save_pretrained_interoperates_with_diffusers(kind, tmp_path):
    ours, theirs = _pair(kind, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=False)
    ours.save_pretrained(tmp_path / "ours")
    from_ours = KINDS[kind][1].from_pretrained(tmp_path / "ours")
    for key, value in ours.config.to_dict().items():
        assert from_ours.config[key] == value, key
    theirs.save_pretrained(tmp_path / "theirs")
    from_theirs = KINDS[kind][0].from_pretrained(tmp_path / "theirs")
    assert from_theirs.config == ours.config


def test_from_config_swaps_scheduler_like_diffusers():
    ddpm = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, variance_type="fixed_large")
    ddim = DDIMScheduler.from_config(ddpm.config)
    assert isinstance(ddim, DDIMScheduler) and ddim.config.beta_schedule == "scaled_linear"
    torch.testing.assert_close(ddim.alphas_cumprod, ddpm.alphas_cumprod, atol=0, rtol=0)
    assert DDPMScheduler.from_config(diffusers.DDPMScheduler(steps_offset=1).config).config.steps_offset == 1


# --- bad input ---------------------------------------------------------------------------------------------

def _ready(cls=DDIMScheduler, n=10, **kwargs):
    sched = cls(**kwargs)
    sched.set_timesteps(n)
    return sched


_s = _x()


@pytest.mark.parametrize("call, argname", [
    (lambda: make_betas("quadratic", 1000), "beta_schedule"),
    (lambda: make_betas("linear", 0), "num_train_timesteps"),
    (lambda: make_betas("linear", 10, beta_start=0.0), "beta_start"),
    (lambda: make_betas("linear", 10, beta_start=0.02, beta_end=0.01), "beta_end"),
    (lambda: make_betas("linear", 10, beta_end=1.0), "beta_end"),
    (lambda: DDPMScheduler(beta_schedule="sigmoid"), "beta_schedule"),
    (lambda: DDIMScheduler(num_train_timesteps=10.0), "num_train_timesteps"),
    (lambda: DDIMScheduler(prediction_type="eps"), "prediction_type"),
    (lambda: DDPMScheduler(variance_type="learned"), "variance_type"),
    (lambda: DDIMScheduler(timestep_spacing="uniform"), "timestep_spacing"),
    (lambda: DDIMScheduler(clip_sample=1), "clip_sample"),
    (lambda: DDIMScheduler(clip_sample_range=0.0), "clip_sample_range"),
    (lambda: DDIMScheduler(set_alpha_to_one="yes"), "set_alpha_to_one"),
    (lambda: DDIMScheduler(steps_offset=-1), "steps_offset"),
    (lambda: DDIMScheduler().set_timesteps(1001), "num_inference_steps"),
    (lambda: DDIMScheduler().set_timesteps(0), "num_inference_steps"),
    (lambda: DDPMScheduler().set_timesteps(-5), "num_inference_steps"),
    (lambda: DDPMScheduler().set_timesteps(2.5), "num_inference_steps"),
    (lambda: DDIMScheduler(steps_offset=1).set_timesteps(1000), "steps_offset"),
    (lambda: DDIMScheduler().step(_s, 10, _s), "num_inference_steps"),
    (lambda: DDIMScheduler().previous_timestep(10), "num_inference_steps"),
    (lambda: _ready().step(_s, 900, _s, eta=-0.1), "eta"),
    (lambda: _ready().step(_s, 900, _s, eta=1.5), "eta"),
    (lambda: _ready().step(_s[:1], 900, _s), "model_output"),
    (lambda: _ready().step(_s.long(), 900, _s), "model_output"),
    (lambda: _ready().step(_s, 900, _s.numpy()), "sample"),
    (lambda: _ready().step(_s, 1000, _s), "timestep"),
    (lambda: _ready().step(_s, -1, _s), "timestep"),
    (lambda: _ready().step(_s, 900.0, _s), "timestep"),
    (lambda: _ready().step(_s, torch.tensor([900, 800]), _s), "timestep"),
    (lambda: _ready(DDPMScheduler).step(_s, 901, _s), "timestep"),
    (lambda: _ready().step(_s, 900, _s, eta=0.5, generator=0), "generator"),
    (lambda: _ready().step(_s, 900, _s, eta=0.5, variance_noise=_s[:1]), "variance_noise"),
    (lambda: _ready().step(_s, 900, _s, eta=0.5, variance_noise=_s, generator=torch.Generator()), "generator"),
    (lambda: DDPMScheduler().add_noise(_s, _s[:1], torch.tensor([1, 2])), "noise"),
    (lambda: DDPMScheduler().add_noise(_s, _s, torch.tensor([1, 2, 3])), "timesteps"),
    (lambda: DDPMScheduler().add_noise(_s, _s, torch.tensor([1.0, 2.0])), "timesteps"),
    (lambda: DDPMScheduler().add_noise(_s, _s, torch.tensor([1, 1000])), "timesteps"),
    (lambda: DDPMScheduler().add_noise(_s, _s, torch.tensor([[1, 2]])), "timesteps"),
    (lambda: DDPMScheduler().add_noise(_s.long(), _s, torch.tensor([1, 2])), "original_samples"),
    (lambda: DDPMScheduler().get_velocity(_s, _s[..., :2], torch.tensor([1, 2])), "noise"),
    (lambda: _ready().get_timesteps_for_strength(1.5), "strength"),
    (lambda: _ready().get_timesteps_for_strength(-0.1), "strength"),
    (lambda: DDIMScheduler().get_timesteps_for_strength(0.5), "num_inference_steps"),
    (lambda: DDPMSchedulerConfig.from_dict({"eta": 0.0}), "d"),
    (lambda: DDIMScheduler.from_config([("beta_schedule", "linear")]), "config"),
    (lambda: DDIMScheduler.from_config({"thresholding": True}), "thresholding"),
    (lambda: DDIMScheduler.from_pretrained("/nonexistent/folder"), "folder"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, argname):
    with pytest.raises(ValueError, match=argname):
        call()


# --- v-prediction (Salimans & Ho 2022): v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 ----------------------

SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", [0, 1, 500, 980, 999])
def test_v_prediction_step_with_exact_v_equals_epsilon_step_with_exact_eps(kind, t):
    """Fed the true v, a v-scheduler takes the step an eps-scheduler takes when fed the true eps."""
    from _numerics import assert_within_rounding
    cls = KINDS[kind][0]
    by_type = {p: cls(**SD_BETAS, prediction_type=p, clip_sample=False) for p in ("epsilon", "v_prediction")}
    for sched in by_type.values():
        sched.set_timesteps(1000)  # every timestep is a step, so t' = t - 1 for both
    x0, eps, z = _x(seed=30), _x(seed=31), _x(seed=32)
    t_batch = torch.full((x0.shape[0],), t)
    x_t = by_type["epsilon"].add_noise(x0, eps, t_batch)
    v = by_type["epsilon"].get_velocity(x0, eps, t_batch)
    kwargs = {"variance_noise": z} if kind == "ddpm" else {}
    a = by_type["epsilon"].step(eps, t, x_t, **kwargs)
    b = by_type["v_prediction"].step(v, t, x_t, **kwargs)
    # both recover x0 and eps from (x_t, output) in a few roundings of terms of size <= |x_t| + |x0| + |eps| + |v|;
    # the eps path divides by sqrt(abar_t) (0.068 at t = 999), which scales its rounding errors by 1 / sqrt(abar_t)
    sqrt_abar = float(by_type["epsilon"].alphas_cumprod[t]) ** 0.5
    magnitude = (x_t.abs() + x0.abs() + eps.abs() + v.abs() + z.abs()) / sqrt_abar
    assert_within_rounding(b.pred_original_sample, a.pred_original_sample, magnitude, depth=8)
    assert_within_rounding(b.prev_sample, a.prev_sample, magnitude, depth=12)
    assert_within_rounding(b.pred_original_sample, x0, magnitude, depth=8)


@pytest.mark.parametrize("prediction_type, gain", [
    ("epsilon", lambda abar: ((1 - abar) / abar) ** 0.5),   # x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)
    ("v_prediction", lambda abar: (1 - abar) ** 0.5),       # x0 = sqrt(abar) x_t - sqrt(1 - abar) v
    ("sample", lambda abar: 1.0),
])
def test_output_error_reaches_x0_hat_with_the_parameterisations_gain(prediction_type, gain):
    """An error delta in the model output moves x0_hat by -gain(abar_t) * delta.

    Tensors are float64, but the scheduler forms its coefficients from float32 abar_t (as diffusers does), so
    each coefficient carries a float32 rounding: the bound is a few float32 roundings of the terms' size.
    """
    sched = DDIMScheduler(**SD_BETAS, prediction_type=prediction_type, clip_sample=False)
    sched.set_timesteps(1000)
    x0, eps, delta = (_x(seed=s, dtype=torch.float64) for s in (33, 34, 35))
    for t in (10, 500, 999):
        abar = float(sched.alphas_cumprod[t])
        x_t = abar ** 0.5 * x0 + (1 - abar) ** 0.5 * eps
        exact = {"epsilon": eps, "v_prediction": abar ** 0.5 * eps - (1 - abar) ** 0.5 * x0, "sample": x0}
        shift = sched.step(exact[prediction_type] + delta, t, x_t).pred_original_sample - x0
        sign = 1.0 if prediction_type == "sample" else -1.0
        output = exact[prediction_type] + delta
        magnitude = (x_t.abs() + output.abs() + x0.abs()) / abar ** 0.5
        bound = 4 * 3 * torch.finfo(torch.float32).eps / 2 * magnitude  # 3 roundings, both sides, safety 2
        assert ((shift - sign * gain(abar) * delta).abs() <= bound).all()
        assert (shift.abs() > 100 * bound).any()  # the effect measured is far above the rounding


def test_v_prediction_ddim_loop_with_sd_settings_matches_diffusers():
    """DDIM, 25 steps, SD's betas with steps_offset=1, set_alpha_to_one=False, no clipping, prediction_type
    "v_prediction": ours and diffusers' agree on every step, within the rounding of a few products of terms."""
    from _numerics import assert_within_rounding
    settings = dict(SD_BETAS, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False,
                    steps_offset=1)
    ours, theirs = DDIMScheduler(**settings), diffusers.DDIMScheduler(**settings)
    ours.set_timesteps(25)
    theirs.set_timesteps(25)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    x = _x(seed=36)
    for t in ours.timesteps:
        v = _fake_model(x, t)
        out, ref = ours.step(v, t, x), theirs.step(v, t, x)
        magnitude = 2 * (x.abs() + v.abs())  # x0_hat = a x - b v and eps_hat = a v + b x, coefficients <= 1
        assert_within_rounding(out.pred_original_sample, ref.pred_original_sample, magnitude, depth=6)
        assert_within_rounding(out.prev_sample, ref.prev_sample, magnitude, depth=10)
        x = ref.prev_sample

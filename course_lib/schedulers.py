"""Noise schedules and samplers: DDPM (Ho et al. 2020) and DDIM (Song et al. 2021), with diffusers' API.

Glossary (DDPM paper notation; t is an integer training timestep 0 .. T-1, T = ``num_train_timesteps``,
t = 0 is the least noisy step):
    beta_t        variance of the noise added by one forward step, q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1},
                  beta_t I). Attribute ``betas``, shape (T,).
    alpha_t       1 - beta_t, the share of the signal a forward step keeps. Attribute ``alphas``.
    abar_t        alpha-bar, prod_{s <= t} alpha_s. Attribute ``alphas_cumprod``. It gives x_t from x_0 in one jump,
                  q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (DDPM eq. 4), which is ``add_noise``.
                  The DDIM paper writes this quantity as alpha_t; we always write abar_t.
    sigma_t       standard deviation of the fresh noise one *reverse* step adds. DDPM: sigma_t^2 = beta~_t, the
                  posterior variance of eq. (7) (``variance_type="fixed_small"``) or beta_t ("fixed_large").
                  DDIM: sigma_t(eta) of eq. (16); eta = 0 gives the deterministic DDIM sampler, eta = 1 the DDPM
                  posterior. (k-diffusion/Karras samplers use "sigma" for sqrt((1 - abar_t) / abar_t): not this.)
    eps           the Gaussian noise in x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.
    x0_hat        the model's guess of x_0 at the current step, ``pred_original_sample``.
    v             sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, the "velocity" target (Salimans & Ho 2022), ``get_velocity``.
    t'            the previous timestep the sampler jumps to; with fewer inference steps than T it is not t - 1.

What the model predicts (``prediction_type``): "epsilon" (eps, DDPM and Stable Diffusion 1.x), "v_prediction"
(v, Stable Diffusion 2.x 768px) or "sample" (x_0 itself). ``step`` turns any of them into x0_hat and eps_hat.

The sampling loop stays in the notebook or pipeline, as in diffusers::

    scheduler.set_timesteps(num_inference_steps)
    x = torch.randn(shape, generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=generator).prev_sample

img2img starts part-way down the chain: ``timesteps = scheduler.get_timesteps_for_strength(strength)``, noise
the encoded image to ``timesteps[:1]`` with ``add_noise`` and loop over ``timesteps`` only.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from course_lib._checks import check_choice, check_float, check_int, check_same_shape, check_tensor
from course_lib._config import JSONConfig
from course_lib._io import atomic_write_json

__all__ = ["STABLE_DIFFUSION_BETAS", "make_betas", "SchedulerOutput", "DDPMSchedulerConfig", "DDIMSchedulerConfig",
           "DDPMScheduler", "DDIMScheduler"]

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
VARIANCE_TYPES = ("fixed_small", "fixed_large")
# Stable Diffusion's noise schedule (v1.x and v2.x; Rombach et al. 2022): sqrt(beta) evenly spaced from
# sqrt(0.00085) to sqrt(0.012). The real v1.5 scheduler config (course_lib.sd.SD15_SCHEDULER) is built from it.
STABLE_DIFFUSION_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
CONFIG_NAME = "scheduler_config.json"  # diffusers' file name, so diffusers can read our folders and vice versa


# --- beta schedules ----------------------------------------------------------------------------------------

def _cosine_alpha_bar(u: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. (17) without the division by f(0): cos^2(pi/2 (u + s) / (1 + s)), u in [0, 1]."""
    return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def make_betas(schedule: str, num_train_timesteps: int, beta_start: float = 0.0001,
               beta_end: float = 0.02) -> torch.Tensor:
    """The T forward-process variances beta_0 .. beta_{T-1} as a float32 tensor of shape (T,).

    * "linear": evenly spaced from ``beta_start`` to ``beta_end`` (DDPM: 1e-4 .. 0.02).
    * "scaled_linear": evenly spaced in sqrt(beta), then squared. Stable Diffusion uses it with
      beta_start=0.00085, beta_end=0.012 (``STABLE_DIFFUSION_BETAS``; the defaults are DDPM's, as in diffusers).
    * "cosine" (alias "squaredcos_cap_v2", diffusers' name): Nichol & Dhariwal's schedule,
      beta_t = min(1 - abar((t+1)/T) / abar(t/T), 0.999). It ignores ``beta_start``/``beta_end``.
    """
    check_choice("beta_schedule", schedule, BETA_SCHEDULES)
    check_int("num_train_timesteps", num_train_timesteps, minimum=1)
    check_float("beta_start", beta_start, minimum=0.0, maximum=1.0, min_inclusive=False, max_inclusive=False)
    check_float("beta_end", beta_end, minimum=beta_start, maximum=1.0, max_inclusive=False)
    T = num_train_timesteps
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float32) ** 2
    abar = _cosine_alpha_bar(torch.arange(T + 1, dtype=torch.float64) / T)  # (T+1,) at u = 0, 1/T, .., 1
    return (1 - abar[1:] / abar[:-1]).clamp(max=0.999).to(torch.float32)


# --- configs -----------------------------------------------------------------------------------------------

def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):  # check_choice would let 1 and 0 through (1 == True)
        raise ValueError(f"{name} must be True or False, got {value!r}")


@dataclass
class _SchedulerConfig(JSONConfig):
    """Fields shared by both schedulers; names and defaults are diffusers'."""
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    timestep_spacing: str = "leading"
    steps_offset: int = 0

    def __post_init__(self):
        check_int("num_train_timesteps", self.num_train_timesteps, minimum=1)
        make_betas(self.beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end)  # validates
        check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        _check_bool("clip_sample", self.clip_sample)
        check_float("clip_sample_range", self.clip_sample_range, minimum=0.0, min_inclusive=False)
        check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        check_int("steps_offset", self.steps_offset, minimum=0, maximum=self.num_train_timesteps - 1)


@dataclass
class DDPMSchedulerConfig(_SchedulerConfig):
    variance_type: str = "fixed_small"

    def __post_init__(self):
        super().__post_init__()
        check_choice("variance_type", self.variance_type, VARIANCE_TYPES)


@dataclass
class DDIMSchedulerConfig(_SchedulerConfig):
    set_alpha_to_one: bool = True

    def __post_init__(self):
        super().__post_init__()
        _check_bool("set_alpha_to_one", self.set_alpha_to_one)


# diffusers options that change the math and that we do not implement: from_config accepts them only when
# they hold these neutral values, so a loaded config never silently means something else.
_UNSUPPORTED_DIFFUSERS_OPTIONS = {"trained_betas": None, "thresholding": False, "rescale_betas_zero_snr": False}


@dataclass
class SchedulerOutput:
    """What ``step`` returns (diffusers' DDPMSchedulerOutput/DDIMSchedulerOutput fields)."""
    prev_sample: torch.Tensor           # x_{t'}, the next input of the loop
    pred_original_sample: torch.Tensor  # x0_hat, after clipping; handy for previews


# --- shared argument checks --------------------------------------------------------------------------------

def _check_timestep(name: str, timestep, num_train_timesteps: int) -> int:
    """An int, or a one-element integer tensor (``for t in scheduler.timesteps`` yields those), in [0, T)."""
    if isinstance(timestep, np.integer):
        timestep = int(timestep)
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() != 1 or timestep.is_floating_point() or timestep.dtype == torch.bool:
            raise ValueError(f"{name} must be an int or a one-element integer tensor, "
                             f"got a {timestep.dtype} tensor of shape {tuple(timestep.shape)}")
        timestep = int(timestep.item())
    check_int(name, timestep, minimum=0, maximum=num_train_timesteps - 1)
    return timestep


def _check_timesteps_batch(timesteps, batch_size: int, num_train_timesteps: int) -> torch.Tensor:
    """``timesteps`` for add_noise/get_velocity: an int, or an integer tensor of shape () or (B,)."""
    if isinstance(timesteps, int) and not isinstance(timesteps, bool):
        timesteps = torch.tensor(timesteps)
    check_tensor("timesteps", timesteps, ndim=(0, 1))
    if timesteps.is_floating_point() or timesteps.dtype == torch.bool:
        raise ValueError(f"timesteps must hold integers (e.g. torch.long), got dtype {timesteps.dtype}")
    if timesteps.ndim == 1 and timesteps.shape[0] not in (1, batch_size):
        raise ValueError(f"timesteps must have shape () or (batch_size,) = ({batch_size},), "
                         f"got shape {tuple(timesteps.shape)}")
    if timesteps.numel() and (timesteps.min() < 0 or timesteps.max() >= num_train_timesteps):
        raise ValueError(f"timesteps must lie in [0, {num_train_timesteps - 1}], "
                         f"got values from {int(timesteps.min())} to {int(timesteps.max())}")
    return timesteps


def _check_samples(name_a: str, a, name_b: str, b) -> None:
    check_tensor(name_a, a, floating=True)
    check_tensor(name_b, b, floating=True)
    if a.ndim == 0:
        raise ValueError(f"{name_a} must have a batch dimension (B, ...), got shape ()")
    check_same_shape(name_a, a, name_b, b)


def _check_noise_source(sample: torch.Tensor, generator, variance_noise) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if variance_noise is not None:
        if generator is not None:
            raise ValueError("generator and variance_noise cannot both be given: pass one source of noise")
        check_tensor("variance_noise", variance_noise, floating=True)
        check_same_shape("variance_noise", variance_noise, "sample", sample)


def _draw_noise(sample: torch.Tensor, generator, variance_noise) -> torch.Tensor:
    """Fresh N(0, I) noise like ``sample``: either given (``variance_noise``) or drawn from ``generator``."""
    if variance_noise is not None:
        return variance_noise.to(device=sample.device, dtype=sample.dtype)
    device = generator.device if generator is not None else sample.device  # as diffusers: draw on the generator's
    noise = torch.randn(sample.shape, generator=generator, device=device, dtype=sample.dtype)
    return noise.to(sample.device)


# --- the part both samplers share --------------------------------------------------------------------------

class _Scheduler:
    """Schedule arrays, the forward process and timestep bookkeeping; subclasses add ``step``."""
    config_class = _SchedulerConfig
    order = 1                # model calls per step (diffusers pipelines read it)
    init_noise_sigma = 1.0   # x_T ~ N(0, init_noise_sigma^2 I)

    def __init__(self, config: _SchedulerConfig):
        self.config = config
        self.betas = make_betas(config.beta_schedule, config.num_train_timesteps,
                                config.beta_start, config.beta_end)                 # (T,)
        self.alphas = 1.0 - self.betas                                               # (T,)
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)                      # (T,) abar_t
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(config.num_train_timesteps - 1, -1, -1, dtype=torch.int64)  # T-1 .. 0

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    # --- config in and out (diffusers' names) ---

    @classmethod
    def from_config(cls, config):
        """Build from a config dataclass or a dict, e.g. another scheduler's ``.config`` or a diffusers config.

        As in diffusers, keys this scheduler does not use (``_class_name``, the other scheduler's options, e.g.
        PNDM's ``skip_prk_steps`` in Stable Diffusion's config) are ignored. The constructor is the strict way in.
        diffusers options that would change the math and that we do not implement (``trained_betas``,
        ``thresholding``, ``rescale_betas_zero_snr``) are accepted only at their neutral values.
        """
        if isinstance(config, _SchedulerConfig):
            config = config.to_dict()
        if not isinstance(config, dict):  # diffusers' FrozenDict is a dict
            raise ValueError(f"config must be a scheduler config or a dict, got {type(config).__name__}")
        for key, neutral in _UNSUPPORTED_DIFFUSERS_OPTIONS.items():
            if config.get(key, neutral) != neutral:
                raise ValueError(f"config sets {key}={config[key]!r}, which course_lib's schedulers do not "
                                 f"implement (allowed: {neutral!r})")
        known = {f.name for f in fields(cls.config_class)}
        return cls(**{k: v for k, v in config.items() if k in known})

    def save_pretrained(self, folder) -> Path:
        """Write ``folder/scheduler_config.json`` (diffusers' file name and layout), atomically."""
        return atomic_write_json(Path(folder) / CONFIG_NAME, {"_class_name": type(self).__name__,
                                                              **self.config.to_dict()})

    @classmethod
    def from_pretrained(cls, folder):
        """Read ``folder/scheduler_config.json``, ours or one written by diffusers' ``save_pretrained``."""
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise ValueError(f"folder must contain {CONFIG_NAME}, got {str(folder)!r}")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"folder {str(folder)!r} has an unreadable {CONFIG_NAME} ({err})") from err
        return cls.from_config(config)

    # --- forward process ---

    def _abar_at(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """abar_t for each row, shaped (B, 1, .., 1) to broadcast against ``like``; on its device and dtype."""
        abar = self.alphas_cumprod.to(like.device)[timesteps.to(like.device)].to(like.dtype)
        return abar.reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """q_sample, DDPM eq. (4): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, one t per row.

        original_samples, noise: (B, ...); timesteps: integer tensor (B,) (or () / an int for the whole batch).
        """
        _check_samples("original_samples", original_samples, "noise", noise)
        timesteps = _check_timesteps_batch(timesteps, original_samples.shape[0], self.config.num_train_timesteps)
        abar = self._abar_at(timesteps, original_samples)
        return abar ** 0.5 * original_samples + (1 - abar) ** 0.5 * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """The v-prediction target v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0; ``sample`` is the clean x_0."""
        _check_samples("sample", sample, "noise", noise)
        timesteps = _check_timesteps_batch(timesteps, sample.shape[0], self.config.num_train_timesteps)
        abar = self._abar_at(timesteps, sample)
        return abar ** 0.5 * noise - (1 - abar) ** 0.5 * sample

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """Identity for DDPM/DDIM; kept so loops written for diffusers' other schedulers run unchanged."""
        return sample

    # --- inference timesteps ---

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """Choose the ``num_inference_steps`` timesteps (descending) the sampler visits; sets ``.timesteps``.

        Spacing (Lin et al. 2023, "Common diffusion noise schedules and sample steps are flawed", Table 2):
        * "leading": 0, k, 2k, .. with k = T // n, plus ``steps_offset``. SD 1.x: k = 20 and offset 1 give
          981, 961, .., 1 for n = 50. The largest timestep is below T - 1: the loop never starts at pure noise.
        * "trailing": count down from T in strides of T / n, round, subtract 1: 999, 979, .., 19 for n = 50.
        * "linspace": n evenly spaced values from 0 to T - 1, rounded: 999, .., 0.
        Values equal diffusers' for every n, except that diffusers' "trailing" can add a stray timestep -1 for a
        few n (e.g. 61 with T = 1000): we keep exactly n.
        """
        T = self.config.num_train_timesteps
        check_int("num_inference_steps", num_inference_steps, minimum=1, maximum=T)
        n = num_inference_steps
        if self.config.timestep_spacing == "leading":
            timesteps = np.arange(n)[::-1] * (T // n) + self.config.steps_offset
            if timesteps[0] >= T:
                raise ValueError(f"steps_offset={self.config.steps_offset} pushes the first timestep to "
                                 f"{timesteps[0]}, outside [0, {T - 1}]; use fewer num_inference_steps (got {n})")
        elif self.config.timestep_spacing == "trailing":
            timesteps = np.round(np.arange(T, 0, -T / n)[:n]) - 1
        else:
            timesteps = np.round(np.linspace(0, T - 1, n))[::-1]
        self.num_inference_steps = n
        self.timesteps = torch.from_numpy(timesteps.astype(np.int64)).to(device)

    def get_timesteps_for_strength(self, strength: float) -> torch.Tensor:
        """The tail of ``.timesteps`` an img2img run visits (as diffusers' img2img pipeline picks it).

        strength in [0, 1] is the share of the chain that is re-run: 1 starts from (almost) pure noise and
        ignores the input image, 0.3 noises the image to the 30%-from-the-end timestep and keeps its layout.
        Noise the image to ``timesteps[:1]`` with ``add_noise``, then loop over the returned timesteps. An empty
        result (strength * num_inference_steps < 1) means there is nothing to do: return the image unchanged.
        """
        check_float("strength", strength, minimum=0.0, maximum=1.0)
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps(num_inference_steps) before "
                             "get_timesteps_for_strength")
        n = self.num_inference_steps
        steps_to_run = min(int(n * strength), n)
        return self.timesteps[n - steps_to_run:]

    # --- step helpers ---

    def _predict_x0_and_eps(self, model_output, sample, abar_t: torch.Tensor):
        """x0_hat and eps_hat from the model output, tied by x_t = sqrt(abar_t) x0_hat + sqrt(1 - abar_t) eps_hat."""
        a, b = abar_t ** 0.5, (1 - abar_t) ** 0.5
        if self.config.prediction_type == "epsilon":    # DDPM eq. (15)
            return (sample - b * model_output) / a, model_output
        if self.config.prediction_type == "v_prediction":
            return a * sample - b * model_output, a * model_output + b * sample
        return model_output, (sample - a * model_output) / b  # "sample": the model predicts x_0

    def _clip(self, x0: torch.Tensor) -> torch.Tensor:
        if not self.config.clip_sample:
            return x0
        r = self.config.clip_sample_range
        return x0.clamp(-r, r)

    def _check_step_inputs(self, model_output, timestep, sample, generator, variance_noise) -> int:
        _check_samples("model_output", model_output, "sample", sample)
        _check_noise_source(sample, generator, variance_noise)
        return _check_timestep("timestep", timestep, self.config.num_train_timesteps)


# --- DDPM --------------------------------------------------------------------------------------------------

class DDPMScheduler(_Scheduler):
    """Ancestral sampling of Ho et al. 2020: each step samples the posterior q(x_{t'} | x_t, x_0 = x0_hat).

    Arguments, defaults and meanings are diffusers' (see the module glossary); they are kept, validated, in
    ``.config`` (a ``DDPMSchedulerConfig``). ``variance_type`` is "fixed_small" (sigma_t^2 = beta~_t, the
    usual choice) or "fixed_large" (sigma_t^2 = beta_t).
    """
    config_class = DDPMSchedulerConfig

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", variance_type: str = "fixed_small", clip_sample: bool = True,
                 prediction_type: str = "epsilon", clip_sample_range: float = 1.0,
                 timestep_spacing: str = "leading", steps_offset: int = 0):
        super().__init__(DDPMSchedulerConfig(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=clip_sample,
            clip_sample_range=clip_sample_range, timestep_spacing=timestep_spacing, steps_offset=steps_offset,
            variance_type=variance_type))

    def previous_timestep(self, timestep) -> int:
        """t': the next entry of ``.timesteps`` (-1 after the last). Before set_timesteps the chain is T-1 .. 0."""
        t = _check_timestep("timestep", timestep, self.config.num_train_timesteps)
        if self.num_inference_steps is None:
            return t - 1
        where = (self.timesteps == t).nonzero()
        if len(where) == 0:
            raise ValueError(f"timestep must be one of scheduler.timesteps after set_timesteps, got {t}")
        i = int(where[0, 0])
        return int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, *,
             generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None) -> SchedulerOutput:
        """One reverse step x_t -> x_{t'}. Noise comes from ``generator`` or ``variance_noise`` (not both).

        Works before set_timesteps too (then the chain is all T steps, t' = t - 1), as in diffusers.
        """
        t = self._check_step_inputs(model_output, timestep, sample, generator, variance_noise)
        # 1. previous timestep t' (t - 1 for the full chain; further back with fewer inference steps)
        prev_t = self.previous_timestep(t)
        # 2. abar_t, abar_t' and the beta/alpha of the jump t -> t' (equal to betas[t], alphas[t] when t' = t-1)
        abar_t = self.alphas_cumprod[t]                                   # 0-dim float32 tensors, as diffusers
        abar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        alpha_t = abar_t / abar_prev
        beta_t = 1 - alpha_t
        # 3. x0_hat from the model output (DDPM eq. 15 for "epsilon"), 4. clipped to [-r, r] if asked
        x0, _ = self._predict_x0_and_eps(model_output, sample, abar_t)
        x0 = self._clip(x0)
        # 5. posterior mean mu~_t(x_t, x0_hat), DDPM eq. (7). Without clipping it equals eq. (11) for "epsilon".
        x0_coeff = abar_prev ** 0.5 * beta_t / (1 - abar_t)
        xt_coeff = alpha_t ** 0.5 * (1 - abar_prev) / (1 - abar_t)
        prev_sample = x0_coeff * x0 + xt_coeff * sample
        # 6. sigma_t^2: posterior variance beta~_t of eq. (7) ("fixed_small") or beta_t ("fixed_large")
        # 7. add sigma_t z, except on the last step (DDPM Algorithm 2: z = 0 when t = 1, i.e. our t' = -1)
        if prev_t >= 0:
            variance = (1 - abar_prev) / (1 - abar_t) * beta_t
            if self.config.variance_type == "fixed_large":
                variance = beta_t
            prev_sample = prev_sample + variance ** 0.5 * _draw_noise(sample, generator, variance_noise)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


# --- DDIM --------------------------------------------------------------------------------------------------

class DDIMScheduler(_Scheduler):
    """Song et al. 2021: a non-Markovian reverse process with the same marginals, deterministic at eta = 0.

    Arguments, defaults and meanings are diffusers' (see the module glossary); they are kept, validated, in
    ``.config`` (a ``DDIMSchedulerConfig``). ``set_alpha_to_one=False`` makes the last step land on abar_0
    instead of 1 (Stable Diffusion 1.x's configs ask for that, together with ``steps_offset=1``).
    """
    config_class = DDIMSchedulerConfig

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", clip_sample: bool = True, set_alpha_to_one: bool = True,
                 steps_offset: int = 0, prediction_type: str = "epsilon", clip_sample_range: float = 1.0,
                 timestep_spacing: str = "leading"):
        super().__init__(DDIMSchedulerConfig(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=clip_sample,
            clip_sample_range=clip_sample_range, timestep_spacing=timestep_spacing, steps_offset=steps_offset,
            set_alpha_to_one=set_alpha_to_one))
        # abar used after the last step (t' < 0): exactly 1 (a clean x_0), or abar_0 as SD 1.x configs ask
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

    def previous_timestep(self, timestep) -> int:
        """t' = t - T // num_inference_steps, diffusers' rule (negative after the last step).

        For "leading" spacing that is the next entry of ``.timesteps``; for "trailing"/"linspace" with T not a
        multiple of n it can differ from it slightly, as in diffusers.
        """
        t = _check_timestep("timestep", timestep, self.config.num_train_timesteps)
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps(num_inference_steps) before step")
        return t - self.config.num_train_timesteps // self.num_inference_steps

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, *, eta: float = 0.0,
             generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None) -> SchedulerOutput:
        """One DDIM step x_t -> x_{t'}, DDIM eq. (12). eta in [0, 1] scales sigma_t (eq. 16); 0 = deterministic.

        With eta > 0 the fresh noise comes from ``generator`` or ``variance_noise`` (not both).
        """
        check_float("eta", eta, minimum=0.0, maximum=1.0)
        t = self._check_step_inputs(model_output, timestep, sample, generator, variance_noise)
        # 1. previous timestep t'
        prev_t = self.previous_timestep(t)
        # 2. abar_t and abar_t' (the DDIM paper's alpha_t and alpha_{t-1})
        abar_t = self.alphas_cumprod[t]                                   # 0-dim float32 tensors, as diffusers
        abar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        # 3. "predicted x_0" of eq. (12) and the matching eps_hat, 4. clip x0_hat (eps_hat stays unclipped)
        x0, eps = self._predict_x0_and_eps(model_output, sample, abar_t)
        x0 = self._clip(x0)
        # 5. sigma_t(eta), eq. (16)
        sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)) ** 0.5
        # 6. "direction pointing to x_t" of eq. (12)
        direction = (1 - abar_prev - sigma ** 2).clamp(min=0) ** 0.5 * eps  # clamp: rounding can dip below 0
        # 7. x_{t'} = sqrt(abar_t') x0_hat + direction + sigma_t z, eq. (12)
        prev_sample = abar_prev ** 0.5 * x0 + direction
        if eta > 0:
            prev_sample = prev_sample + sigma * _draw_noise(sample, generator, variance_noise)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

"""Wrong answers to assignment 3 (DDPM and DDIM) and the test cells that must catch them (see __init__.py).

Each mutant replaces one answer cell of solutions/a3_ddpm/a3_ddpm.ipynb; the test cells of later parts swap in
reference versions of earlier parts, so each mistake costs exactly one test cell.
"""

# --- make_betas -------------------------------------------------------------------------------------------

BETAS_SCALED_LINEAR_NOT_SQUARED = '''
def make_betas(schedule, num_train_timesteps, beta_start=1e-4, beta_end=0.02):
    T = num_train_timesteps
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float32)
    if schedule == "cosine":
        f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - f((t + 1) / T) / f(t / T), 0.999) for t in range(T)], dtype=torch.float32)
    raise ValueError(f"schedule must be 'linear', 'scaled_linear' or 'cosine', got {schedule!r}")


def alphas_cumprod_from(betas):
    return torch.cumprod(1.0 - betas, dim=0)
'''

BETAS_COSINE_SHIFTED = '''
def make_betas(schedule, num_train_timesteps, beta_start=1e-4, beta_end=0.02):
    T = num_train_timesteps
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float32) ** 2
    if schedule == "cosine":  # off by one: beta_t from abar(t) / abar(t - 1) on the grid u = t / (T - 1)
        f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        u = [t / (T - 1) for t in range(T)]
        betas = [min(1 - f(u[t]) / f(u[t - 1]), 0.999) if t > 0 else 1 - f(0.0) for t in range(T)]
        return torch.tensor(betas, dtype=torch.float32)
    raise ValueError(f"schedule must be 'linear', 'scaled_linear' or 'cosine', got {schedule!r}")


def alphas_cumprod_from(betas):
    return torch.cumprod(1.0 - betas, dim=0)
'''

# --- q_sample: the square roots ---------------------------------------------------------------------------

Q_SAMPLE_NO_SQRT = '''
def q_sample(x0, t, noise, alphas_cumprod):
    abar = alphas_cumprod[t].reshape(-1, *([1] * (x0.ndim - 1)))
    return abar * x0 + (1 - abar) * noise
'''

Q_SAMPLE_SQRT_ON_NOISE_ONLY = '''
def q_sample(x0, t, noise, alphas_cumprod):
    abar = alphas_cumprod[t].reshape(-1, *([1] * (x0.ndim - 1)))
    return abar * x0 + (1 - abar).sqrt() * noise
'''

# --- ddpm_step: the variance off by one step --------------------------------------------------------------

DDPM_STEP_VARIANCE_BETA_T = '''
def ddpm_step(eps, t, x_t, alphas_cumprod, noise, clip_sample=False):
    abar_t = alphas_cumprod[t]
    abar_prev = alphas_cumprod[t - 1] if t > 0 else torch.tensor(1.0)
    alpha_t = abar_t / abar_prev
    beta_t = 1 - alpha_t
    x0 = (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    if clip_sample:
        x0 = x0.clamp(-1, 1)
    mean = (abar_prev.sqrt() * beta_t / (1 - abar_t)) * x0 + (alpha_t.sqrt() * (1 - abar_prev) / (1 - abar_t)) * x_t
    if t == 0:
        return mean
    return mean + beta_t.sqrt() * noise  # beta_t ("fixed_large") instead of the posterior variance
'''

DDPM_STEP_VARIANCE_NEXT_STEP = '''
def ddpm_step(eps, t, x_t, alphas_cumprod, noise, clip_sample=False):
    abar_t = alphas_cumprod[t]
    abar_prev = alphas_cumprod[t - 1] if t > 0 else torch.tensor(1.0)
    alpha_t = abar_t / abar_prev
    beta_t = 1 - alpha_t
    x0 = (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    if clip_sample:
        x0 = x0.clamp(-1, 1)
    mean = (abar_prev.sqrt() * beta_t / (1 - abar_t)) * x0 + (alpha_t.sqrt() * (1 - abar_prev) / (1 - abar_t)) * x_t
    if t == 0:
        return mean
    # the paper's 1-based abar_{t-1} read as alphas_cumprod[t] and abar_t as alphas_cumprod[t + 1]: one step late
    nxt = min(t + 1, alphas_cumprod.shape[0] - 1)
    variance = (1 - alphas_cumprod[t]) / (1 - alphas_cumprod[nxt]) * (1 - alphas_cumprod[nxt] / alphas_cumprod[t])
    return mean + variance.sqrt() * noise
'''

DDPM_STEP_ABAR_PREV_WRAPS = '''
def ddpm_step(eps, t, x_t, alphas_cumprod, noise, clip_sample=False):
    abar_t = alphas_cumprod[t]
    abar_prev = alphas_cumprod[t - 1]  # at t = 0 this is alphas_cumprod[-1], the LAST entry, not 1
    alpha_t = abar_t / abar_prev
    beta_t = 1 - alpha_t
    x0 = (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    if clip_sample:
        x0 = x0.clamp(-1, 1)
    mean = (abar_prev.sqrt() * beta_t / (1 - abar_t)) * x0 + (alpha_t.sqrt() * (1 - abar_prev) / (1 - abar_t)) * x_t
    if t == 0:
        return mean
    variance = (1 - abar_prev) / (1 - abar_t) * beta_t
    return mean + variance.sqrt() * noise
'''

# --- ddim_step: eta ignored -------------------------------------------------------------------------------

DDIM_STEP_ETA_IGNORED = '''
def ddim_step(eps, t, prev_t, x_t, alphas_cumprod, eta=0.0, noise=None, clip_sample=False):
    abar_t = alphas_cumprod[t]
    abar_prev = alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
    x0 = (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    if clip_sample:
        x0 = x0.clamp(-1, 1)
    return abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps  # always the deterministic step
'''

DDIM_STEP_NOISE_WITHOUT_SHRINKING_DIRECTION = '''
def ddim_step(eps, t, prev_t, x_t, alphas_cumprod, eta=0.0, noise=None, clip_sample=False):
    abar_t = alphas_cumprod[t]
    abar_prev = alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
    x0 = (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    if clip_sample:
        x0 = x0.clamp(-1, 1)
    sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
    x_prev = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps  # forgets to take sigma^2 out of the direction
    if eta > 0:
        x_prev = x_prev + sigma * noise
    return x_prev
'''

# --- ddpm_loss --------------------------------------------------------------------------------------------

LOSS_TARGET_IS_X0 = '''
def ddpm_loss(model, x0, alphas_cumprod, generator=None):
    t = torch.randint(0, alphas_cumprod.shape[0], (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    return F.mse_loss(model(q_sample(x0, t, noise, alphas_cumprod), t), x0)
'''

LOSS_ONE_T_FOR_THE_BATCH = '''
def ddpm_loss(model, x0, alphas_cumprod, generator=None):
    t = torch.randint(0, alphas_cumprod.shape[0], (1,), generator=generator).repeat(x0.shape[0])
    noise = torch.randn(x0.shape, generator=generator)
    return F.mse_loss(model(q_sample(x0, t, noise, alphas_cumprod), t), noise)
'''

MUTANTS = [
    {"name": "betas_scaled_linear_not_squared", "replace": {"make_betas": BETAS_SCALED_LINEAR_NOT_SQUARED},
     "expect_fail": ["test_make_betas"]},
    {"name": "betas_cosine_shifted", "replace": {"make_betas": BETAS_COSINE_SHIFTED},
     "expect_fail": ["test_make_betas"]},
    {"name": "q_sample_no_sqrt", "replace": {"q_sample": Q_SAMPLE_NO_SQRT},
     "expect_fail": ["test_q_sample"]},
    {"name": "q_sample_sqrt_on_noise_only", "replace": {"q_sample": Q_SAMPLE_SQRT_ON_NOISE_ONLY},
     "expect_fail": ["test_q_sample"]},
    {"name": "ddpm_variance_beta_t", "replace": {"ddpm_step": DDPM_STEP_VARIANCE_BETA_T},
     "expect_fail": ["test_ddpm_step"]},
    {"name": "ddpm_variance_next_step", "replace": {"ddpm_step": DDPM_STEP_VARIANCE_NEXT_STEP},
     "expect_fail": ["test_ddpm_step"]},
    {"name": "ddpm_abar_prev_wraps_at_t0", "replace": {"ddpm_step": DDPM_STEP_ABAR_PREV_WRAPS},
     "expect_fail": ["test_ddpm_step"]},
    {"name": "ddim_eta_ignored", "replace": {"ddim_step": DDIM_STEP_ETA_IGNORED},
     "expect_fail": ["test_ddim_step"]},
    {"name": "ddim_direction_ignores_sigma", "replace": {"ddim_step": DDIM_STEP_NOISE_WITHOUT_SHRINKING_DIRECTION},
     "expect_fail": ["test_ddim_step"]},
    {"name": "loss_target_is_x0", "replace": {"ddpm_loss": LOSS_TARGET_IS_X0},
     "expect_fail": ["test_ddpm_loss"]},
    {"name": "loss_one_t_for_the_batch", "replace": {"ddpm_loss": LOSS_ONE_T_FOR_THE_BATCH},
     "expect_fail": ["test_ddpm_loss"]},
]

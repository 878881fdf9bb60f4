"""Wrong answers to assignment 1 (VAE) and the test cells that must catch them (see __init__.py)."""

KL_SIGN_ERROR = '''
def kl_divergence(mean, logvar):
    return -0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)
'''

KL_MISSING_HALF = '''
def kl_divergence(mean, logvar):
    return (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)
'''

KL_MISSING_EXP = '''
def kl_divergence(mean, logvar):
    return 0.5 * (mean.pow(2) + logvar - 1.0 - logvar).sum(dim=1)
'''

REPARAMETERIZE_WITH_VARIANCE = '''
def reparameterize(mean, logvar, noise):
    return mean + torch.exp(logvar) * noise
'''

ELBO_BETA_ON_RECONSTRUCTION = '''
def negative_elbo(x_hat, x, mean, logvar, beta=1.0):
    reconstruction = (x_hat - x).pow(2).flatten(1).sum(dim=1)
    return (beta * reconstruction + kl_divergence(mean, logvar)).mean()
'''

MUTANTS = [
    {"name": "kl_sign_error", "replace": {"kl_divergence": KL_SIGN_ERROR},
     "expect_fail": ["test_kl_divergence"]},
    {"name": "kl_missing_half", "replace": {"kl_divergence": KL_MISSING_HALF},
     "expect_fail": ["test_kl_divergence"]},
    {"name": "kl_missing_exp", "replace": {"kl_divergence": KL_MISSING_EXP},
     "expect_fail": ["test_kl_divergence"]},
    {"name": "reparameterize_with_variance", "replace": {"reparameterize": REPARAMETERIZE_WITH_VARIANCE},
     "expect_fail": ["test_reparameterize"]},
    {"name": "elbo_beta_on_reconstruction", "replace": {"negative_elbo": ELBO_BETA_ON_RECONSTRUCTION},
     "expect_fail": ["test_negative_elbo"]},
]

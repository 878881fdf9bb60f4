"""Contracts of course_lib.vae: the posterior against the closed form and diffusers, shapes, gradients, I/O."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from course_lib.vae import (VAE, DiagonalGaussian, VAEConfig, VAELoss, VAEOutput, estimate_scale_factor,
                            kl_divergence, vae_loss)
from _numerics import TEST_THREADS  # tests/_numerics.py


def _gaussian_params(B=3, c=4, h=5, w=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(B, c, h, w, generator=g, dtype=dtype)
    logvar = torch.empty(B, c, h, w, dtype=dtype).uniform_(-4.0, 2.0, generator=g)
    return mean, logvar


def _images(B=2, C=3, H=32, W=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, C, H, W, generator=g) * 2 - 1  # course convention: [-1, 1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny tensors: on 2 shared cores, OpenMP threads waiting on each other cost far more than they gain
    before = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return VAE(VAEConfig.tiny())


# ------------------------------------------------------------------------------------------ KL divergence

def test_kl_matches_independent_closed_form_and_torch_distributions():
    mean, logvar = _gaussian_params(dtype=torch.float64)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).sum(dim=(1, 2, 3))  # (B,)
    by_hand = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))
    torch.testing.assert_close(kl_divergence(mean, logvar), expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(DiagonalGaussian(mean, logvar).kl(), by_hand, rtol=0, atol=1e-10)


def test_kl_is_zero_for_the_prior_and_positive_otherwise():
    zeros = torch.zeros(2, 4, 3, 3)
    torch.testing.assert_close(kl_divergence(zeros, zeros), torch.zeros(2), rtol=0, atol=0)
    mean, logvar = _gaussian_params()
    assert (kl_divergence(mean, logvar) > 0).all()


def test_posterior_matches_diffusers_diagonal_gaussian():
    # diffusers takes [mean, logvar] concatenated along dim 1 and sums 0.5 * (...) over dims 1, 2, 3 -> (B,)
    mean, logvar = _gaussian_params()
    ours = DiagonalGaussian(mean, logvar)
    theirs = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    assert ours.kl().shape == theirs.kl().shape == (3,)
    torch.testing.assert_close(ours.kl(), theirs.kl(), rtol=0, atol=1e-5)
    torch.testing.assert_close(kl_divergence(mean, logvar), theirs.kl(), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.std, theirs.std, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.var, theirs.var, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.mode(), theirs.mode(), rtol=0, atol=0)
    # from_parameters splits exactly like diffusers
    split = DiagonalGaussian.from_parameters(torch.cat([mean, logvar], dim=1))
    torch.testing.assert_close(split.mean, theirs.mean, rtol=0, atol=0)
    torch.testing.assert_close(split.logvar, theirs.logvar, rtol=0, atol=0)


def test_logvar_is_clamped_like_stable_diffusion():
    mean = torch.zeros(1, 1, 1, 3)
    logvar = torch.tensor([[[[-50.0, 0.5, 25.0]]]])
    ours = DiagonalGaussian(mean, logvar)
    theirs = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    torch.testing.assert_close(ours.logvar, torch.tensor([[[[-30.0, 0.5, 20.0]]]]), rtol=0, atol=0)
    torch.testing.assert_close(ours.kl(), theirs.kl(), rtol=1e-6, atol=0)
    assert torch.equal(logvar, torch.tensor([[[[-50.0, 0.5, 25.0]]]]))  # caller's tensor untouched


# ------------------------------------------------------------------------------------------------ sampling

def test_sample_is_reparameterised_and_reproducible():
    mean, logvar = _gaussian_params()
    q = DiagonalGaussian(mean, logvar)
    a = q.sample(generator=torch.Generator().manual_seed(7))
    b = q.sample(generator=torch.Generator().manual_seed(7))
    c = q.sample(generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, mean + torch.exp(0.5 * logvar) * eps, rtol=0, atol=1e-6)
    theirs = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    torch.testing.assert_close(a, theirs.sample(generator=torch.Generator().manual_seed(7)), rtol=0, atol=1e-6)


def test_sample_statistics_match_mean_and_std():
    # channel 0: N(1.5, 0.5^2); channel 1: N(-2, 2^2); 128*128 = 16384 draws each
    mean = torch.tensor([1.5, -2.0]).view(1, 2, 1, 1).expand(1, 2, 128, 128)
    logvar = torch.log(torch.tensor([0.25, 4.0])).view(1, 2, 1, 1).expand(1, 2, 128, 128)
    z = DiagonalGaussian(mean, logvar).sample(generator=torch.Generator().manual_seed(0))
    emp_mean, emp_std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))
    n = 128 * 128
    std = torch.tensor([0.5, 2.0])
    assert ((emp_mean - torch.tensor([1.5, -2.0])).abs() < 5 * std / math.sqrt(n)).all()
    assert ((emp_std / std - 1).abs() < 0.03).all()


def test_sample_follows_dtype_of_mean():
    mean, logvar = _gaussian_params(dtype=torch.float64)
    z = DiagonalGaussian(mean, logvar).sample(generator=torch.Generator().manual_seed(0))
    assert z.dtype == torch.float64 and z.device == mean.device


def test_gradient_flows_through_sample_but_mode_ignores_logvar():
    mean, logvar = _gaussian_params()
    mean.requires_grad_(True)
    logvar.requires_grad_(True)
    z = DiagonalGaussian(mean, logvar).sample(generator=torch.Generator().manual_seed(3))
    z.sum().backward()
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    # d/dlogvar (mu + exp(logvar / 2) * eps) = 0.5 * sigma * eps ; d/dmu = 1
    torch.testing.assert_close(logvar.grad, 0.5 * torch.exp(0.5 * logvar.detach()) * eps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mean.grad, torch.ones_like(mean), rtol=0, atol=0)

    mean.grad = logvar.grad = None
    DiagonalGaussian(mean, logvar).mode().sum().backward()
    assert logvar.grad is None and torch.equal(mean.grad, torch.ones_like(mean))


def test_gradients_reach_the_encoders_logvar_only_through_the_sample(tiny_vae):
    c = tiny_vae.config.latent_channels
    x = _images()
    for sample_posterior in (True, False):
        tiny_vae.zero_grad()
        out = tiny_vae(x, generator=torch.Generator().manual_seed(0), sample_posterior=sample_posterior)
        (out.sample - x).pow(2).sum().backward()  # reconstruction only: the KL cannot carry the gradient
        logvar_rows = tiny_vae.quant_conv.weight.grad[c:]  # output channels c..2c produce logvar
        assert tiny_vae.quant_conv.weight.grad[:c].abs().sum() > 0
        assert (logvar_rows.abs().sum() > 0) == sample_posterior
        assert tiny_vae.encoder.conv_in.weight.grad.abs().sum() > 0
    tiny_vae.zero_grad()


def test_every_parameter_gets_a_gradient_from_vae_loss():
    torch.manual_seed(0)
    vae = VAE(VAEConfig.tiny())
    x = _images()
    out = vae(x, generator=torch.Generator().manual_seed(0))
    vae_loss(out.sample, x, out.posterior, beta=0.1).loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------- shapes, config

@pytest.mark.parametrize("preset, image_shape, latent_shape", [
    ("tiny", (3, 32, 32), (4, 16, 16)),
    ("shapes", (3, 32, 32), (4, 8, 8)),
    ("digits", (1, 16, 16), (2, 8, 8)),
])
def test_encode_decode_shapes_for_every_preset(preset, image_shape, latent_shape):
    torch.manual_seed(0)
    vae = VAE(getattr(VAEConfig, preset)())
    x = _images(2, *image_shape)
    with torch.no_grad():
        q = vae.encode(x)
        assert isinstance(q, DiagonalGaussian)
        assert q.mean.shape == q.logvar.shape == (2, *latent_shape)
        assert vae.decode(q.sample()).shape == x.shape
        out = vae(x)
    assert isinstance(out, VAEOutput) and out.sample.shape == x.shape and out.posterior.mean.shape == (2, *latent_shape)


def test_non_square_images(tiny_vae):
    x = _images(1, 3, 16, 32)
    with torch.no_grad():
        out = tiny_vae(x, sample_posterior=False)
    assert out.posterior.mean.shape == (1, 4, 8, 16) and out.sample.shape == x.shape


@pytest.mark.parametrize("block_channels, factor", [((8,), 1), ((8, 8), 2), ((8, 16, 16), 4), ((8, 8, 8, 8), 8)])
def test_downsample_factor(block_channels, factor):
    config = VAEConfig(block_channels=block_channels, norm_groups=4, mid_attention=False)
    assert config.downsample_factor == factor
    with torch.no_grad():
        q = VAE(config).encode(_images(1, 3, 16, 16))
    assert q.mean.shape[-2:] == (16 // factor, 16 // factor)


def test_forward_without_sampling_is_decode_of_the_mean(tiny_vae):
    x = _images()
    with torch.no_grad():
        out = tiny_vae(x, sample_posterior=False)
        expected = tiny_vae.decode(tiny_vae.encode(x).mean)
    torch.testing.assert_close(out.sample, expected, rtol=0, atol=0)


def test_forward_with_same_generator_is_reproducible_and_does_not_mutate_input(tiny_vae):
    x = _images()
    x_before = x.clone()
    with torch.no_grad():
        a = tiny_vae(x, generator=torch.Generator().manual_seed(1)).sample
        b = tiny_vae(x, generator=torch.Generator().manual_seed(1)).sample
        c = tiny_vae(x, generator=torch.Generator().manual_seed(2)).sample
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, x_before)


def test_decoder_output_is_unbounded():
    torch.manual_seed(0)
    vae = VAE(VAEConfig.tiny())
    with torch.no_grad():
        vae.decoder.conv_out.bias.fill_(5.0)  # no tanh: a large bias must come straight through
        x_hat = vae.decode(torch.zeros(1, 4, 4, 4))
    assert x_hat.max() > 1.0


def test_mid_attention_equals_explicit_softmax_attention(tiny_vae):
    block = tiny_vae.encoder.mid.attention
    x = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = block.norm(x).flatten(2).transpose(1, 2)  # (B, 16 tokens, C)
        q, k, v = block.to_q(h), block.to_k(h), block.to_v(h)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(16), dim=-1)
        expected = x + block.to_out(weights @ v).transpose(1, 2).reshape(2, 16, 4, 4)
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_config_round_trips_through_json():
    config = VAEConfig(in_channels=1, latent_channels=3, block_channels=(8, 16, 24), layers_per_block=2,
                       norm_groups=4, mid_attention=False)
    again = VAEConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and isinstance(again.block_channels, tuple)
    for preset in (VAEConfig.tiny(), VAEConfig.shapes(), VAEConfig.digits()):
        assert VAEConfig.from_dict(json.loads(json.dumps(preset.to_dict()))) == preset


def test_save_and_load_give_identical_outputs(tmp_path, tiny_vae):
    tiny_vae.save_pretrained(tmp_path / "vae")
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["class"] == "VAE"
    loaded = VAE.from_pretrained(tmp_path / "vae")
    assert loaded.config == tiny_vae.config
    assert loaded.num_parameters() == tiny_vae.num_parameters() == sum(
        t.numel() for t in tiny_vae.state_dict().values())
    x = _images()
    with torch.no_grad():
        a = tiny_vae(x, generator=torch.Generator().manual_seed(0)).sample
        b = loaded(x, generator=torch.Generator().manual_seed(0)).sample
    assert torch.equal(a, b)


# -------------------------------------------------------------------------------------------------- loss

def test_vae_loss_equals_independent_computation():
    g = torch.Generator().manual_seed(0)
    x, x_hat = torch.rand(3, 3, 8, 8, generator=g), torch.rand(3, 3, 8, 8, generator=g)
    mean, logvar = _gaussian_params(B=3, c=4, h=2, w=2)
    beta = 0.25
    out = vae_loss(x_hat, x, DiagonalGaussian(mean, logvar), beta=beta)
    assert isinstance(out, VAELoss)
    sse_per_image = F.mse_loss(x_hat, x, reduction="sum") / 3
    kl_per_image = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1)).kl().mean()
    torch.testing.assert_close(out.reconstruction, sse_per_image, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(out.kl, kl_per_image, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(out.loss, sse_per_image + beta * kl_per_image, rtol=1e-6, atol=1e-5)


def test_beta_zero_is_pure_reconstruction():
    x = _images()
    mean, logvar = _gaussian_params(B=2)
    out = vae_loss(x + 0.1, x, DiagonalGaussian(mean, logvar), beta=0.0)
    torch.testing.assert_close(out.loss, torch.tensor(0.01 * 3 * 32 * 32), rtol=1e-4, atol=0)


def test_a_few_steps_overfit_a_tiny_batch():
    torch.manual_seed(0)
    vae = VAE(VAEConfig.tiny())
    g = torch.Generator().manual_seed(0)
    x = F.interpolate(torch.rand(2, 3, 2, 2, generator=g) * 2 - 1, size=(8, 8), mode="bilinear")  # smooth images
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        out = vae(x, generator=g)
        loss = vae_loss(out.sample, x, out.posterior, beta=1e-3).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------------------------------------- scale factor

def test_scale_factor_gives_unit_std_on_fresh_samples(tiny_vae):
    images = _images(32, 3, 16, 16)
    s = estimate_scale_factor(tiny_vae, images, batch_size=8, generator=torch.Generator().manual_seed(0))
    assert s == estimate_scale_factor(tiny_vae, images, batch_size=8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = tiny_vae.encode(images).sample(generator=torch.Generator().manual_seed(123))
    assert abs((s * z).std().item() - 1.0) < 0.05


def test_scale_factor_recovers_a_known_latent_spread():
    # a fake encoder whose latents are N(0, a^2) means plus posterior noise of std b: std(z) = sqrt(a^2 + b^2)
    a, b = 3.0, 4.0
    vae = VAE(VAEConfig.tiny())
    g_means = torch.Generator().manual_seed(0)

    def fake_encode(x):
        mean = a * torch.randn(x.shape[0], 4, 8, 8, generator=g_means)
        return DiagonalGaussian(mean, torch.full_like(mean, 2 * math.log(b)))

    vae.encode = fake_encode
    s = estimate_scale_factor(vae, torch.zeros(64, 3, 16, 16), batch_size=16,
                              generator=torch.Generator().manual_seed(1))
    assert abs(s - 1 / 5.0) < 0.02 * (1 / 5.0)


# ------------------------------------------------------------------------------------------------ bad input

_vae = VAE(VAEConfig.tiny())
_mean, _logvar = _gaussian_params(B=2, c=4, h=2, w=2)
_post = DiagonalGaussian(_mean, _logvar)
_x = _images(2, 3, 8, 8)


@pytest.mark.parametrize("call, argname", [
    (lambda: VAEConfig(in_channels=0), "in_channels"),
    (lambda: VAEConfig(in_channels=2.5), "in_channels"),
    (lambda: VAEConfig(latent_channels=0), "latent_channels"),
    (lambda: VAEConfig(block_channels=()), "block_channels"),
    (lambda: VAEConfig(block_channels=32), "block_channels"),
    (lambda: VAEConfig(block_channels=(32, 0)), "block_channels"),
    (lambda: VAEConfig(block_channels=(32, "64")), "block_channels"),
    (lambda: VAEConfig(layers_per_block=0), "layers_per_block"),
    (lambda: VAEConfig(norm_groups=0), "norm_groups"),
    (lambda: VAEConfig(block_channels=(32, 48), norm_groups=32), "norm_groups"),
    (lambda: VAEConfig(mid_attention="yes"), "mid_attention"),
    (lambda: VAEConfig.from_dict({"in_channels": 3, "sample_size": 32}), "sample_size"),
    (lambda: VAEConfig.from_dict([3, 4]), "d"),
    (lambda: VAE({"in_channels": 3}), "config"),
    (lambda: VAE.from_pretrained("/nonexistent/vae/folder"), "folder"),
    (lambda: _vae.encode(_images(2, 1, 8, 8)), "x"),
    (lambda: _vae.encode(_images(2, 3, 8, 9)), "downsample_factor"),
    (lambda: _vae.encode(torch.zeros(3, 8, 8)), "x"),
    (lambda: _vae.encode(torch.zeros(2, 3, 8, 8, dtype=torch.long)), "x"),
    (lambda: _vae.encode(_x.numpy()), "x"),
    (lambda: _vae.decode(torch.zeros(2, 3, 4, 4)), "z"),
    (lambda: _vae.decode(torch.zeros(4, 4, 4)), "z"),
    (lambda: _vae(_x, sample_posterior="yes"), "sample_posterior"),
    (lambda: _vae(_x, generator=0), "generator"),
    (lambda: DiagonalGaussian(_mean, _logvar[:, :2]), "logvar"),
    (lambda: DiagonalGaussian(_mean.tolist(), _logvar), "mean"),
    (lambda: DiagonalGaussian.from_parameters(torch.zeros(2, 3, 4, 4)), "parameters"),
    (lambda: _post.sample(generator=42), "generator"),
    (lambda: kl_divergence(_mean, _logvar[:1]), "logvar"),
    (lambda: kl_divergence(_mean.long(), _logvar), "mean"),
    (lambda: kl_divergence(torch.tensor(0.0), torch.tensor(0.0)), "mean"),
    (lambda: vae_loss(_x, _x, _post, beta=-0.1), "beta"),
    (lambda: vae_loss(_x, _x, _post, beta=float("nan")), "beta"),
    (lambda: vae_loss(_x, _x, _post, beta="1"), "beta"),
    (lambda: vae_loss(_x[:, :1], _x, _post), "x_hat"),
    (lambda: vae_loss(_x, _x, (_mean, _logvar)), "posterior"),
    (lambda: vae_loss(_x[:1], _x[:1], _post), "posterior"),
    (lambda: estimate_scale_factor("vae", _x), "vae"),
    (lambda: estimate_scale_factor(_vae, _x, batch_size=0), "batch_size"),
    (lambda: estimate_scale_factor(_vae, _x[:, :1]), "images"),
    (lambda: estimate_scale_factor(_vae, _x[0]), "images"),
    (lambda: estimate_scale_factor(_vae, _x[:0]), "images"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, argname):
    with pytest.raises(ValueError, match=argname):
        call()

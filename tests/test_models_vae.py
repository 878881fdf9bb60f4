"""Contracts for course_lib.models.autoencoder_kl: diffusers' AutoencoderKL, name for name and number for number.

Tolerances: the reconstruction runs ~40 convolutions and norms deep in float32 (eps 1.2e-7); with random
weights the activations reach a few units, so rounding gives ~1e-7 * 40 * |x| * a small growth factor per layer:
we allow 1e-4 relative to the largest output (the observed gap is ~4e-6 of it). The encoder's moments are
~20 layers deep: 1e-5 relative.
"""
from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from course_lib.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig  # noqa: E402
from course_lib.vae import DiagonalGaussian  # noqa: E402

CONFIGS = {
    "tiny": AutoencoderKLConfig.tiny(),
    "three_levels_no_attention": AutoencoderKLConfig(in_channels=1, out_channels=2, latent_channels=3,
                                                     block_out_channels=(8, 16, 24), layers_per_block=2,
                                                     norm_num_groups=4, mid_block_add_attention=False),
    "no_quant_convs": AutoencoderKLConfig(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                                          use_quant_conv=False, use_post_quant_conv=False),
}


def _pair(config: AutoencoderKLConfig, seed: int = 0):
    """diffusers' model with random weights (in eval mode) and ours with the same weights, strictly loaded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reference = diffusers.AutoencoderKL(**config.to_diffusers()).eval()
        for p in reference.parameters():  # GroupNorm starts at (1, 0): perturb so a swapped norm is seen
            p.data.add_(0.05 * torch.randn_like(p))
    ours = AutoencoderKL(config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def _images(config: AutoencoderKLConfig, batch: int = 2, seed: int = 1) -> torch.Tensor:
    size = 2 * config.downsample_factor
    return torch.rand(batch, config.in_channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_parameter_names_and_shapes_as_diffusers(name):
    reference, ours = _pair(CONFIGS[name])
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in reference.state_dict().items()}


def test_sd15_layout_matches_diffusers_on_the_meta_device():
    from course_lib.sd.architecture import sd15_empty_model
    with torch.device("meta"):
        ours = AutoencoderKL(AutoencoderKLConfig.sd15())
    reference = sd15_empty_model("vae")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert 83e6 < sum(p.numel() for p in ours.parameters()) < 84e6  # SD v1.x's VAE: "84M" in the LDM release


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reconstruction_and_posterior_equal_diffusers(name):
    config = CONFIGS[name]
    reference, ours = _pair(config)
    x = _images(config)
    with torch.no_grad():
        expected = reference(x).sample
        got = ours(x)
        posterior, reference_posterior = ours.encode(x), reference.encode(x).latent_dist
        z = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(3))
        decoded, reference_decoded = ours.decode(z), reference.decode(z).sample
    assert got.shape == expected.shape == x.shape[:1] + (config.out_channels,) + x.shape[2:]
    assert isinstance(posterior, DiagonalGaussian)
    assert posterior.mean.shape == (2, config.latent_channels, 2, 2)
    for a, b in [(posterior.mean, reference_posterior.mean), (posterior.logvar, reference_posterior.logvar)]:
        assert (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item())
    assert (got - expected).abs().max() <= 1e-4 * max(1.0, expected.abs().max().item())
    assert (decoded - reference_decoded).abs().max() <= 1e-4 * max(1.0, reference_decoded.abs().max().item())


def test_sampled_posterior_uses_the_generator_as_diffusers():
    reference, ours = _pair(CONFIGS["tiny"])
    x = _images(CONFIGS["tiny"])
    with torch.no_grad():
        a = ours(x, sample_posterior=True, generator=torch.Generator().manual_seed(5))
        b = reference(x, sample_posterior=True, generator=torch.Generator().manual_seed(5)).sample
        c = ours(x, sample_posterior=True, generator=torch.Generator().manual_seed(6))
    assert (a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max().item())
    assert (a - c).abs().max() > 1e-3, "a different generator seed must draw a different z"


def test_every_parameter_gets_a_gradient():
    config = CONFIGS["tiny"]
    model = AutoencoderKL(config)
    x = _images(config)
    posterior = model.encode(x)
    x_hat = model.decode(posterior.sample(generator=torch.Generator().manual_seed(0)))
    ((x_hat - x).pow(2).sum() + posterior.kl().sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"


def test_config_round_trips_through_dict_and_diffusers():
    for config in CONFIGS.values():
        assert AutoencoderKLConfig.from_dict(config.to_dict()) == config
        assert AutoencoderKLConfig.from_diffusers(dict(diffusers.AutoencoderKL(**config.to_diffusers()).config)) \
            == config


def test_save_pretrained_is_a_diffusers_folder_and_back(tmp_path):
    reference, ours = _pair(CONFIGS["tiny"])
    ours.save_pretrained(tmp_path / "ours")
    loaded = diffusers.AutoencoderKL.from_pretrained(tmp_path / "ours")
    reference.save_pretrained(tmp_path / "theirs")
    back = AutoencoderKL.from_pretrained(tmp_path / "theirs")
    assert back.config == ours.config
    for state in (loaded.state_dict(), back.state_dict()):
        assert all(torch.equal(state[k], v) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("make, argname", [
    (lambda: AutoencoderKLConfig(block_out_channels=(8, 12), norm_num_groups=8), "norm_num_groups"),
    (lambda: AutoencoderKLConfig(block_out_channels=()), "block_out_channels"),
    (lambda: AutoencoderKLConfig(latent_channels=0), "latent_channels"),
    (lambda: AutoencoderKLConfig(mid_block_add_attention=1), "mid_block_add_attention"),
    (lambda: AutoencoderKLConfig.from_dict({"heads": 2}), "heads"),
    (lambda: AutoencoderKLConfig.from_diffusers({"down_block_types": ["AttnDownEncoderBlock2D"]}),
     "down_block_types"),
    (lambda: AutoencoderKLConfig.from_diffusers({"shift_factor": 0.1159}), "shift_factor"),
    (lambda: AutoencoderKL({"block_out_channels": (8,)}), "config"),
    (lambda: AutoencoderKL(CONFIGS["tiny"]).encode(torch.zeros(1, 1, 16, 16)), "x"),
    (lambda: AutoencoderKL(CONFIGS["tiny"]).encode(torch.zeros(1, 3, 12, 12)), "x"),
    (lambda: AutoencoderKL(CONFIGS["tiny"]).decode(torch.zeros(1, 3, 2, 2)), "z"),
    (lambda: AutoencoderKL(CONFIGS["tiny"])(torch.zeros(1, 3, 8, 8), sample_posterior="yes"), "sample_posterior"),
    (lambda: AutoencoderKL.from_pretrained("/nonexistent/vae"), "folder"),
])
def test_bad_input_names_the_argument(make, argname):
    with pytest.raises(ValueError, match=argname):
        make()

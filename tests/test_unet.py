"""Contracts for course_lib.unet: shapes, equality with diffusers' UNet2DConditionModel, gradients, I/O, errors."""
import json
import math

import pytest
import torch

from course_lib.unet import UNet, UNetConfig, average_cross_attention, timestep_embedding
from _numerics import TEST_THREADS  # tests/_numerics.py

ATOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP start-up and spinning costs on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(before)


def _config(**overrides) -> UNetConfig:
    return UNetConfig(**{**UNetConfig.tiny().to_dict(), **overrides})


def _inputs(config: UNetConfig, batch=2, size=8, tokens=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, config.in_channels, size, size, generator=g)
    context = torch.randn(batch, tokens, config.context_dim, generator=g)
    return sample, torch.tensor([3, 700][:batch] + [10] * max(0, batch - 2)), context


def _model(config: UNetConfig, seed=0) -> UNet:
    torch.manual_seed(seed)
    return UNet(config).eval()


# --- shapes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, size", [
    ({}, 8),
    ({"out_channels": 8, "attention_levels": (0, 1)}, 4),
    ({"block_channels": (16, 32, 32), "layers_per_block": 2, "attention_levels": (2,)}, 8),
    ({"block_channels": (16,), "attention_levels": ()}, 5),
])
def test_output_shape(overrides, size):
    config = _config(**overrides)
    sample, t, context = _inputs(config, size=size)
    with torch.no_grad():
        out = _model(config)(sample, t, context)
    assert type(out) is torch.Tensor and out.is_contiguous()
    assert out.shape == (2, config.out_channels, size, size)


def test_coordinate_channels_tell_the_network_where_each_pixel_is():
    """CoordConv: conv_in sees x and y as two extra input channels; everything else is SD's UNet."""
    from course_lib.unet import _coordinates
    config = _config(coordinate_channels=True)
    model = _model(config)
    assert model.conv_in.in_channels == config.in_channels + 2
    grid = _coordinates(torch.zeros(3, 4, 4, 6))
    assert grid.shape == (3, 2, 4, 6)
    assert grid[0, :, 0, 0].tolist() == [-1, -1] and grid[2, :, -1, -1].tolist() == [1, 1]  # top-left, bottom-right
    assert grid[1, 0, 2].tolist() == pytest.approx([-1, -0.6, -0.2, 0.2, 0.6, 1]) and grid[1, 1, :, 4].tolist() == (
        pytest.approx([-1, -1 / 3, 1 / 3, 1]))
    # A flipped input gives the flipped output without them, not with them. One level (a stride-2 conv on an
    # even size is not flip-symmetric) and left-right symmetric kernels: then only the coordinates break it.
    one_level = dict(block_channels=(16,), attention_levels=())
    sample, t, context = _inputs(config)
    with torch.no_grad():
        for coordinates in (False, True):
            net = _model(_config(**one_level, coordinate_channels=coordinates))
            for module in net.modules():
                if isinstance(module, torch.nn.Conv2d):
                    module.weight.copy_((module.weight + module.weight.flip(-1)) / 2)
            flipped = net(sample.flip(-1), t, context).flip(-1)
            assert torch.allclose(flipped, net(sample, t, context), atol=1e-5) is not coordinates
    out = model(sample, t, context)
    out.square().mean().backward()
    assert model.conv_in.weight.grad[:, -2:].abs().sum() > 0  # the coordinate channels' weights learn


def test_non_square_input_and_batch_of_one():
    config = _config()
    sample = torch.randn(1, 4, 4, 10)
    with torch.no_grad():
        assert _model(config)(sample, 1, torch.randn(1, 3, 16)).shape == (1, 4, 4, 10)


# --- reference: diffusers -------------------------------------------------------------------------------

def _diffusers_pair(config: UNetConfig, seed=0):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    theirs = UNet2DConditionModel(**config.to_diffusers_kwargs()).eval()
    with torch.no_grad():  # diffusers zero-initialises nothing here, but perturb so no weight stays at 0/1
        for p in theirs.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return UNet.from_diffusers(theirs).eval(), theirs


@pytest.mark.parametrize("overrides", [
    {},
    {"block_channels": (16, 32, 32), "layers_per_block": 2, "attention_levels": (0, 2), "time_embed_dim": 48},
])
def test_matches_diffusers_unet2dconditionmodel(overrides):
    config = _config(**overrides)
    ours, theirs = _diffusers_pair(config)
    assert ours.config == config
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())
    sample, t, context = _inputs(config)
    with torch.no_grad():
        torch.testing.assert_close(ours(sample, t, context), theirs(sample, t, context).sample, atol=ATOL, rtol=0)


def test_matches_diffusers_with_encoder_attention_mask():
    config = _config(attention_levels=(0, 1))
    ours, theirs = _diffusers_pair(config, seed=1)
    sample, t, context = _inputs(config)
    mask = torch.tensor([[True, True, False, True, False], [True] * 5])
    with torch.no_grad():
        expected = theirs(sample, t, context, encoder_attention_mask=mask).sample
        torch.testing.assert_close(ours(sample, t, context, encoder_attention_mask=mask), expected, atol=ATOL, rtol=0)


def test_timestep_embedding_matches_diffusers():
    from diffusers.models.embeddings import get_timestep_embedding
    t = torch.tensor([0, 1, 17, 999])
    expected = get_timestep_embedding(t, 32, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(timestep_embedding(t, 32), expected, atol=1e-5, rtol=0)
    # closed form for one entry: cos(t * 10000**(-i/half)) in the first half
    assert math.isclose(timestep_embedding(t, 32)[2, 3].item(), math.cos(17 * 10000 ** (-3 / 16)), abs_tol=1e-5)


def test_from_diffusers_rejects_other_architectures():
    from diffusers import UNet2DConditionModel
    config = _config()
    theirs = UNet2DConditionModel(**{**config.to_diffusers_kwargs(), "resnet_time_scale_shift": "scale_shift"})
    with pytest.raises(ValueError, match="resnet_time_scale_shift"):
        UNet.from_diffusers(theirs)


# --- behaviour ------------------------------------------------------------------------------------------

def test_gradients_reach_every_parameter():
    config = _config(attention_levels=(0, 1), layers_per_block=2)
    model = _model(config).train()
    sample, t, context = _inputs(config)
    model(sample, t, context).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_context_changes_output_and_masked_tokens_are_ignored():
    config = _config()
    model = _model(config)
    sample, t, context = _inputs(config)
    other = context.clone()
    other[:, 3:] = torch.randn(2, 2, config.context_dim)
    mask = torch.tensor([[True, True, True, False, False]] * 2)
    with torch.no_grad():
        assert not torch.allclose(model(sample, t, context), model(sample, t, other), atol=1e-3)
        torch.testing.assert_close(model(sample, t, context, encoder_attention_mask=mask),
                                   model(sample, t, other, encoder_attention_mask=mask), atol=1e-6, rtol=0)


def test_timestep_as_int_scalar_tensor_or_batch():
    config = _config()
    model = _model(config)
    sample, _, context = _inputs(config)
    with torch.no_grad():
        ref = model(sample, torch.tensor([42, 42]), context)
        for t in (42, 42.0, torch.tensor(42), torch.tensor([42]), torch.tensor([42.0, 42.0])):
            torch.testing.assert_close(model(sample, t, context), ref, atol=1e-6, rtol=0)
        assert not torch.allclose(model(sample, torch.tensor([42, 900]), context), ref, atol=1e-3)


def test_inputs_are_not_mutated():
    config = _config()
    sample, t, context = _inputs(config)
    copies = [x.clone() for x in (sample, t, context)]
    _model(config).train()(sample, t, context).sum().backward()
    for before, after in zip(copies, (sample, t, context)):
        assert torch.equal(before, after)


def test_record_cross_attention():
    config = _config(attention_levels=(0, 1))
    model = _model(config)
    sample, t, context = _inputs(config, tokens=3)
    with torch.no_grad():
        plain = model(sample, t, context)
        with model.record_cross_attention() as maps:
            recorded = model(sample, t, context)
        torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=0)
        # level 0 (8x8): 1 down + 2 up blocks; level 1 (4x4): 1 down + 2 up; mid (4x4): 1
        assert len(maps) == 7
        assert maps["down_blocks.0.attentions.0"].shape == (2, config.num_heads, 8, 8, 3)
        assert maps["mid_block.attentions.0"].shape == (2, config.num_heads, 4, 4, 3)
        for m in maps.values():
            torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]), atol=1e-5, rtol=0)
        heat = average_cross_attention(maps)
        assert heat.shape == (2, 3, 8, 8)
        torch.testing.assert_close(heat.sum(1), torch.ones(2, 8, 8), atol=1e-5, rtol=0)
        assert average_cross_attention(maps, size=16).shape == (2, 3, 16, 16)
        model(sample, t, context)
    assert len(maps) == 7 and all(b.attention_store is None for b in model.modules() if hasattr(b, "attention_store"))


# --- config and files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [UNetConfig(), UNetConfig.tiny(), UNetConfig.small(),
                                    _config(block_channels=[16, 32, 48], attention_levels=[2, 0], dropout=0.1),
                                    _config(coordinate_channels=True)])
def test_config_json_round_trip(config):
    restored = UNetConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert isinstance(restored.block_channels, tuple) and restored.attention_levels == tuple(
        sorted(config.attention_levels))


def test_time_embed_dim_defaults_to_four_times_first_width():
    assert UNetConfig(block_channels=(32, 64), norm_groups=8).time_embed_dim == 128


def test_save_and_load_round_trip(tmp_path):
    config = _config(attention_levels=(0, 1))
    model = _model(config)
    model.save_pretrained(tmp_path / "unet")
    assert (tmp_path / "unet" / "model.safetensors").is_file()
    loaded = UNet.from_pretrained(tmp_path / "unet").eval()
    assert loaded.config == config
    sample, t, context = _inputs(config)
    with torch.no_grad():
        assert torch.equal(loaded(sample, t, context), model(sample, t, context))


def test_num_parameters():
    model = _model(_config())
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    model.conv_in.requires_grad_(False)
    assert model.num_parameters(trainable_only=True) == model.num_parameters() - model.conv_in.weight.numel() - 16


def test_presets_sizes():
    assert UNet(UNetConfig.tiny()).num_parameters() < 500_000
    assert 1_000_000 < UNet(UNetConfig.small()).num_parameters() < 10_000_000


# --- bad input -------------------------------------------------------------------------------------------

_cfg = UNetConfig.tiny()
_net = UNet(_cfg).eval()
_x, _t, _c = _inputs(_cfg)


@pytest.mark.parametrize("call, argname", [
    (lambda: UNetConfig(in_channels=0), "in_channels"),
    (lambda: UNetConfig(out_channels=2.5), "out_channels"),
    (lambda: UNetConfig(block_channels=()), "block_channels"),
    (lambda: UNetConfig(block_channels=64), "block_channels"),
    (lambda: UNetConfig(block_channels=(64, 100)), "block_channels"),
    (lambda: UNetConfig(block_channels=(64, 96), num_heads=5), "block_channels"),
    (lambda: UNetConfig(layers_per_block=0), "layers_per_block"),
    (lambda: UNetConfig(attention_levels=(2,)), "attention_levels"),
    (lambda: UNetConfig(attention_levels=(1, 1)), "attention_levels"),
    (lambda: UNetConfig(num_heads=0), "num_heads"),
    (lambda: UNetConfig(context_dim=-4), "context_dim"),
    (lambda: UNetConfig(time_embed_dim=0), "time_embed_dim"),
    (lambda: UNetConfig(dropout=1.5), "dropout"),
    (lambda: UNetConfig(norm_groups=0), "norm_groups"),
    (lambda: UNetConfig(norm_eps=0.0), "norm_eps"),
    (lambda: UNetConfig.from_dict({"widths": [1]}), "d"),
    (lambda: UNetConfig(ff_mult=2).to_diffusers_kwargs(), "ff_mult"),
    (lambda: UNetConfig(coordinate_channels=1), "coordinate_channels"),
    (lambda: UNetConfig(coordinate_channels=True).to_diffusers_kwargs(), "coordinate_channels"),
    (lambda: UNet({"in_channels": 4}), "config"),
    (lambda: _net(_x[:, :3], _t, _c), "sample"),
    (lambda: _net(_x[0], _t, _c), "sample"),
    (lambda: _net(_x.long(), _t, _c), "sample"),
    (lambda: _net(torch.randn(2, 4, 7, 8), _t, _c), "sample"),
    (lambda: _net(_x, _t, torch.randn(2, 5, 8)), "encoder_hidden_states"),
    (lambda: _net(_x, _t, torch.randn(3, 5, 16)), "encoder_hidden_states"),
    (lambda: _net(_x, _t, torch.randn(5, 16)), "encoder_hidden_states"),
    (lambda: _net(_x, torch.tensor([1, 2, 3]), _c), "timestep"),
    (lambda: _net(_x, torch.ones(2, 1), _c), "timestep"),
    (lambda: _net(_x, "5", _c), "timestep"),
    (lambda: _net(_x, True, _c), "timestep"),
    (lambda: _net(_x, _t, _c, encoder_attention_mask=torch.ones(2, 5)), "encoder_attention_mask"),
    (lambda: _net(_x, _t, _c, encoder_attention_mask=torch.ones(2, 4, dtype=torch.bool)), "encoder_attention_mask"),
    (lambda: _net(_x, _t, _c, encoder_attention_mask=torch.zeros(2, 5, dtype=torch.bool)), "encoder_attention_mask"),
    (lambda: timestep_embedding(torch.tensor([1]), 7), "dim"),
    (lambda: timestep_embedding(torch.tensor(1), 8), "timesteps"),
    (lambda: average_cross_attention({}), "maps"),
    (lambda: average_cross_attention({"a": torch.ones(1, 1, 2, 2, 3)}, size=0), "size"),
])
def test_bad_input_raises_value_error_naming_argument(call, argname):
    with pytest.raises(ValueError, match=rf"\b{argname}\b"):
        call()

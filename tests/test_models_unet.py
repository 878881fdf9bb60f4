"""Contracts of course_lib.models.unet_2d_condition: diffusers' UNet2DConditionModel on copied weights, gradients,
configs and folders (tiny configs; SD v1.5's shapes on the meta device)."""
import dataclasses
import json
import warnings

import pytest
import torch

from course_lib.models.unet_2d_condition import (UNet2DConditionConfig, UNet2DConditionModel, timestep_embedding)
from _numerics import unit_roundoff  # tests/_numerics.py

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers import UNet2DConditionModel as DiffusersUNet
    from diffusers.models.embeddings import get_timestep_embedding

# SD v1's layout at three levels, and a second config exercising the other options: attention only at the
# deepest level, heads per level, Linear projections (SD v2), two transformer layers, another sinusoid layout.
TINY = UNet2DConditionConfig.tiny()
OTHER = UNet2DConditionConfig(
    sample_size=8, in_channels=3, out_channels=5, block_out_channels=(16, 32), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=24, attention_head_dim=(2, 4), norm_num_groups=8, use_linear_projection=True,
    transformer_layers_per_block=2, flip_sin_to_cos=False, freq_shift=1)


def _pair(config, seed=0, dtype=torch.float64):
    """diffusers' UNet with random weights, and ours holding a copy of them."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = DiffusersUNet(**config.to_diffusers()).eval().to(dtype)
    ours = UNet2DConditionModel(config).eval().to(dtype)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def _rounding_bound(model, output, dtype):
    """Two orderings of the same float computation differ by at most ~ u x (sum of the fan-ins along the path) x the
    magnitude; the number of parameters bounds that sum, twice for two results (tests/_numerics.py explains)."""
    terms = sum(p.numel() for p in model.parameters())
    return 2 * unit_roundoff(dtype) * terms * max(1.0, output.abs().max().item())


def _inputs(config, batch=2, h=8, w=8, tokens=5, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, config.in_channels, h, w, generator=g, dtype=dtype)
    context = torch.randn(batch, tokens, config.cross_attention_dim, generator=g, dtype=dtype)
    return sample, context


@pytest.mark.parametrize("config", [TINY, OTHER], ids=["tiny", "other"])
def test_matches_diffusers_on_copied_weights(config):
    ours, theirs = _pair(config)
    sample, context = _inputs(config)
    t = torch.tensor([3, 871])
    with torch.no_grad():
        expected = theirs(sample, t, context).sample
        got = ours(sample, t, context)
    assert got.shape == (2, config.out_channels, 8, 8)
    assert (got - expected).abs().max().item() <= _rounding_bound(ours, expected, torch.float64)


def test_matches_diffusers_with_a_padding_mask_odd_sizes_and_float32():
    ours, theirs = _pair(TINY, seed=3, dtype=torch.float32)
    sample, context = _inputs(TINY, batch=3, h=7, w=9, tokens=6, dtype=torch.float32)  # odd: upsample to skip sizes
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        expected = theirs(sample, 500, context, encoder_attention_mask=mask).sample
        got = ours(sample, 500, context, encoder_attention_mask=mask)
        unmasked = ours(sample, 500, context)
    assert got.shape == (3, 4, 7, 9)
    assert (got - expected).abs().max().item() <= _rounding_bound(ours, expected, torch.float32)
    # the mask matters only where it drops tokens (row 1 keeps all six)
    assert torch.equal(got[1], unmasked[1]) and not torch.allclose(got[0], unmasked[0], atol=1e-3)


def test_timestep_embedding_matches_diffusers_and_the_formula():
    t = torch.tensor([0.0, 1.0, 37.0, 999.0], dtype=torch.float64)
    for flip, shift in [(True, 0), (False, 1)]:
        got = timestep_embedding(t, 32, flip_sin_to_cos=flip, freq_shift=shift)
        assert torch.equal(got, get_timestep_embedding(t, 32, flip, shift))  # the same float32 operations
    # by hand for SD's layout: [cos(t w_k), sin(t w_k)], w_k = 10000^(-k/16), k < 16
    k = torch.arange(16, dtype=torch.float64)
    angles = t[:, None] * 10000.0 ** (-k / 16)
    by_hand = torch.cat([angles.cos(), angles.sin()], dim=1)
    # float32 angles t * w_k carry a relative error of a few roundings (exp, product): absolute up to ~4 u t_max
    atol = 8 * unit_roundoff(torch.float32) * t.max().item()
    assert torch.allclose(timestep_embedding(t, 32).double(), by_hand, atol=atol, rtol=0)


def test_timestep_forms_agree():
    ours, _ = _pair(TINY)
    sample, context = _inputs(TINY)
    with torch.no_grad():
        outputs = [ours(sample, t, context) for t in (250, torch.tensor(250), torch.tensor([250]),
                                                      torch.tensor([250, 250]), 250.0)]
    assert all(torch.equal(o, outputs[0]) for o in outputs[1:])


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = UNet2DConditionModel(OTHER)
    sample, context = _inputs(OTHER, dtype=torch.float32)
    model(sample, torch.tensor([10, 600]), context).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_attention_only_at_the_levels_the_config_names():
    model = UNet2DConditionModel(TINY)
    assert [hasattr(b, "attentions") for b in model.down_blocks] == [True, True, False]
    assert [hasattr(b, "attentions") for b in model.up_blocks] == [False, True, True]
    heads = model.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    assert heads.heads == 4 and heads.to_k.weight.shape == (32, TINY.cross_attention_dim)


@pytest.mark.parametrize("config", [TINY, OTHER], ids=["tiny", "other"])
def test_config_round_trips(config, tmp_path):
    assert UNet2DConditionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = DiffusersUNet(**config.to_diffusers())
    assert UNet2DConditionConfig.from_diffusers(dict(theirs.config)) == config
    # our folder -> diffusers, diffusers' folder -> ours
    torch.manual_seed(0)
    ours = UNet2DConditionModel(config)
    ours.save_pretrained(tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = DiffusersUNet.from_pretrained(tmp_path / "ours")
        theirs.save_pretrained(tmp_path / "theirs")
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in ours.state_dict().items())
    back = UNet2DConditionModel.from_pretrained(tmp_path / "theirs")
    assert back.config == config
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in back.state_dict().items())


def test_sd15_has_the_real_parameter_names_and_shapes():
    config = UNet2DConditionConfig.sd15()
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = UNet2DConditionModel(config)
        theirs = DiffusersUNet(**json.loads(open("course_lib/configs/sd15_unet.json").read()))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 859_520_964  # SD v1.5's UNet


@pytest.mark.parametrize("change, argname", [
    (dict(block_out_channels=(32, 60)), "norm_num_groups"),
    (dict(attention_head_dim=(4, 3)), "heads"),
    (dict(down_block_types=("CrossAttnDownBlock2D",)), "down_block_types"),
    (dict(up_block_types=("UpBlock2D", "SimpleCrossAttnUpBlock2D")), "up_block_types"),
    (dict(layers_per_block=0), "layers_per_block"),
])
def test_bad_configs_name_the_argument(change, argname):
    base = dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8, attention_head_dim=4)
    with pytest.raises(ValueError, match=argname):
        UNet2DConditionConfig(**{**base, **change})


def test_from_diffusers_refuses_what_it_does_not_implement():
    d = TINY.to_diffusers()
    with pytest.raises(ValueError, match="class_embed_type"):
        UNet2DConditionConfig.from_diffusers({**d, "class_embed_type": "timestep"})
    with pytest.raises(ValueError, match="some_new_option"):
        UNet2DConditionConfig.from_diffusers({**d, "some_new_option": 1})
    assert UNet2DConditionConfig.from_diffusers({**d, "_class_name": "UNet2DConditionModel", "act_fn": "silu"}) == TINY


def test_bad_inputs_name_the_argument():
    model = UNet2DConditionModel(TINY)
    sample, context = _inputs(TINY, dtype=torch.float32)
    with pytest.raises(ValueError, match="sample"):
        model(sample[:, :3], 1, context)
    with pytest.raises(ValueError, match="timestep"):
        model(sample, torch.tensor([1, 2, 3]), context)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        model(sample, 1, context[0])
    with pytest.raises(ValueError, match="config"):
        UNet2DConditionModel(dataclasses.asdict(TINY))

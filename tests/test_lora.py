"""Contracts for course_lib.lora: peft equality, merge == unmerge, zero-init, parameter counts, gradients only
on the adapters, and files that diffusers' own LoRA loaders read with the exact same effect."""
import copy
import json

import pytest
import torch
from torch import nn

from course_lib.lora import (LoRAConfig, LoRALinear, count_trainable_parameters, inject_lora, load_lora,
                             lora_parameter_count, lora_parameters, merge_lora, remove_lora, save_lora,
                             set_lora_scale, unmerge_lora)
from _numerics import assert_within_rounding  # tests/_numerics.py

ATTN_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def tiny_unet(seed=0):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, sample_size=8,
        norm_num_groups=8, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def unet_inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 5, 32, generator=g)


def run_unet(unet, inputs):
    x, t, context = inputs
    with torch.no_grad():
        return unet(x, t, context).sample


def randomize_lora(model, seed=2, std=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(scope="module")
def unet_pair():
    """(a base tiny UNet, its output on fixed inputs); tests deep-copy the UNet before changing it."""
    unet = tiny_unet()
    inputs = unet_inputs()
    return unet, inputs, run_unet(unet, inputs)


# ---------------------------------------------------------------------------------------------- config

def test_config_round_trip_and_default_alpha():
    config = LoRAConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["to_q", "to_v"])
    restored = LoRAConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config and restored.target_modules == ("to_q", "to_v")
    assert config.scaling == 2.0
    assert LoRAConfig(r=6).lora_alpha == 6 and LoRAConfig(r=6).scaling == 1.0
    assert LoRAConfig().target_modules == ATTN_TARGETS


# --------------------------------------------------------------------------------------------- one layer

@pytest.mark.parametrize("r, alpha", [(3, 7.0), (4, 4)])
def test_lora_linear_equals_peft(r, alpha):
    from peft import LoraConfig, get_peft_model

    class Holder(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.proj = layer

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    peft_model = get_peft_model(Holder(copy.deepcopy(base)), LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"]))
    ours = LoRALinear(base, r=r, lora_alpha=alpha)
    peft_layer = peft_model.base_model.model.proj
    with torch.no_grad():  # nonzero B so the update matters; copy A and B across
        peft_layer.lora_B["default"].weight.normal_()
        ours.lora_A.weight.copy_(peft_layer.lora_A["default"].weight)
        ours.lora_B.weight.copy_(peft_layer.lora_B["default"].weight)
    x = torch.randn(2, 3, 6)
    assert ours.scaling == pytest.approx(peft_layer.scaling["default"])
    # Both sides compute W0 x + b + s B (A x), with their additions in another order: they agree up to float32
    # rounding of a sum over 6 inputs and r ranks, i.e. (6 + r + 3) roundings of terms of size |x||W| etc.
    weight_mag = base.weight.abs() + ours.scaling * ours.lora_B.weight.abs() @ ours.lora_A.weight.abs()
    magnitude = x.abs() @ weight_mag.T + base.bias.abs()
    with torch.no_grad():
        assert_within_rounding(ours(x), peft_model(x), magnitude, depth=6 + r + 3)
        # and the closed form W0 x + b + x delta_W^T
        closed = x @ (base.weight + ours.delta_weight()).T + base.bias
        assert_within_rounding(ours(x), closed, magnitude, depth=6 + r + 3)


def test_lora_linear_wraps_and_initialises_like_peft():
    base = nn.Linear(16, 8)
    layer = LoRALinear(base, r=4, lora_alpha=8, generator=torch.Generator().manual_seed(0))
    assert layer.base_layer is base and not base.weight.requires_grad
    assert layer.lora_A.weight.shape == (4, 16) and layer.lora_B.weight.shape == (8, 4)
    assert torch.count_nonzero(layer.lora_B.weight) == 0 and layer.lora_A.bias is None
    bound = 1 / 16 ** 0.5  # kaiming_uniform(a=sqrt(5)) on fan_in=16 gives U(-1/sqrt(16), 1/sqrt(16))
    assert layer.lora_A.weight.abs().max() <= bound and layer.lora_A.weight.abs().max() > 0.5 * bound
    same = LoRALinear(nn.Linear(16, 8), r=4, lora_alpha=8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(layer.lora_A.weight, same.lora_A.weight)
    x = torch.randn(5, 16)
    torch.testing.assert_close(layer(x), base(x), atol=0, rtol=0)  # B = 0: nothing changes


def test_merge_unmerge_and_scale():
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    w0 = base.weight.detach().clone()
    layer = LoRALinear(base, r=3, lora_alpha=6)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(4, 12)
    unmerged = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(base.weight, w0 + layer.delta_weight(), atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=0)
    layer.set_scale(0.5)  # re-merges with the new scale
    assert layer.merged
    half = base(x)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(base.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), half, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer(x), x @ (w0 + 0.5 * layer.delta_weight()).T + base.bias, atol=1e-5, rtol=0)
    layer.set_scale(0.0)
    torch.testing.assert_close(layer(x), base(x), atol=0, rtol=0)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 8), r=2, lora_alpha=2, lora_dropout=0.5)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(64, 8)
    layer.eval()
    torch.testing.assert_close(layer(x), x @ (layer.base_layer.weight + layer.delta_weight()).T
                               + layer.base_layer.bias, atol=1e-5, rtol=0)
    layer.train()
    assert not torch.allclose(layer(x), layer.eval()(x))


# ------------------------------------------------------------------------------------------------ model

def test_inject_on_diffusers_unet_zero_init_counts_and_grads(unet_pair):
    base, inputs, expected = unet_pair
    unet = copy.deepcopy(base)
    names = inject_lora(unet, LoRAConfig(r=4), generator=torch.Generator().manual_seed(0))
    attn_linears = [n for n, m in base.named_modules() if isinstance(m, nn.Linear)
                    and any(n == t or n.endswith("." + t) for t in ATTN_TARGETS)]
    assert names == attn_linears and len(names) == 32  # 8 attention layers x 4 projections
    # B = 0 at init: the output is unchanged, bit for bit
    torch.testing.assert_close(run_unet(unet, inputs), expected, atol=0, rtol=0)
    # r (d_in + d_out) per layer, and nothing else is trainable
    total = 0
    for name in names:
        layer = unet.get_submodule(name)
        d_out, d_in = layer.base_layer.weight.shape
        n = layer.lora_A.weight.numel() + layer.lora_B.weight.numel()
        assert n == lora_parameter_count(d_in, d_out, 4) == 4 * (d_in + d_out)
        total += n
    assert count_trainable_parameters(unet) == total == sum(p.numel() for p in lora_parameters(unet))
    # gradients reach lora_A/lora_B only (B nonzero so A gets a gradient too)
    randomize_lora(unet)
    x, t, context = inputs
    unet(x, t, context).sample.square().mean().backward()
    lora_ids = {id(p) for p in lora_parameters(unet)}
    for name, p in unet.named_parameters():
        if id(p) in lora_ids:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None and not p.requires_grad, name


def test_merge_unmerge_remove_on_unet(unet_pair):
    base, inputs, expected = unet_pair
    unet = copy.deepcopy(base)
    inject_lora(unet, LoRAConfig(r=4, lora_alpha=8))
    randomize_lora(unet)
    unmerged = run_unet(unet, inputs)
    assert (unmerged - expected).abs().max() > 1e-3  # the adapters do something
    merge_lora(unet)
    torch.testing.assert_close(run_unet(unet, inputs), unmerged, atol=1e-5, rtol=1e-5)
    unmerge_lora(unet)
    torch.testing.assert_close(run_unet(unet, inputs), unmerged, atol=1e-5, rtol=1e-5)
    set_lora_scale(unet, 0.0)
    torch.testing.assert_close(run_unet(unet, inputs), expected, atol=1e-6, rtol=0)
    set_lora_scale(unet, 1.0)
    merged_copy = copy.deepcopy(unet)
    restored = remove_lora(unet)
    assert len(restored) == 32 and not any(isinstance(m, LoRALinear) for m in unet.modules())
    torch.testing.assert_close(run_unet(unet, inputs), expected, atol=1e-6, rtol=0)
    remove_lora(merged_copy, merge=True)  # peft's merge_and_unload
    assert not any(isinstance(m, LoRALinear) for m in merged_copy.modules())
    torch.testing.assert_close(run_unet(merged_copy, inputs), unmerged, atol=1e-5, rtol=1e-5)


def test_inject_matches_by_suffix_on_course_attention():
    attention = pytest.importorskip("course_lib.attention")
    torch.manual_seed(0)
    model = nn.ModuleDict({"attn1": attention.MultiHeadAttention(16, 2),
                           "attn2": attention.MultiHeadAttention(16, 2, context_dim=8)})
    names = inject_lora(model, LoRAConfig(r=2, target_modules=("to_k", "to_out.0")))
    assert names == ["attn1.to_k", "attn1.to_out.0", "attn2.to_k", "attn2.to_out.0"]
    assert isinstance(model["attn2"].to_out[0], LoRALinear) and isinstance(model["attn2"].to_q, nn.Linear)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    assert model["attn2"](x, context).shape == (2, 5, 16)


def test_inject_on_course_unet_zero_init_merge_and_counts():
    unet_module = pytest.importorskip("course_lib.unet")
    torch.manual_seed(0)
    unet = unet_module.UNet(unet_module.UNetConfig.tiny()).eval()
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 3, 16, generator=g)
    with torch.no_grad():
        expected = unet(x, torch.tensor([3, 700]), context)
    names = inject_lora(unet, LoRAConfig(r=2, lora_alpha=4))
    assert names and all(n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or n.endswith("to_out.0") for n in names)
    with torch.no_grad():
        torch.testing.assert_close(unet(x, torch.tensor([3, 700]), context), expected, atol=0, rtol=0)
    assert count_trainable_parameters(unet) == sum(
        lora_parameter_count(m.in_features, m.out_features, 2) for m in unet.modules() if isinstance(m, LoRALinear))
    randomize_lora(unet)
    with torch.no_grad():
        unmerged = unet(x, torch.tensor([3, 700]), context)
        merge_lora(unet)
        torch.testing.assert_close(unet(x, torch.tensor([3, 700]), context), unmerged, atol=1e-5, rtol=1e-5)
    assert (unmerged - expected).abs().max() > 1e-3


def test_inject_errors_name_what_was_asked_for():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Conv2d(2, 2, 1))
    with pytest.raises(ValueError, match=r"target_modules.*'to_q'.*matched no module"):
        inject_lora(model, LoRAConfig())
    with pytest.raises(ValueError, match="Conv2d"):
        inject_lora(model, LoRAConfig(target_modules=("2",)))
    inject_lora(model, LoRAConfig(target_modules=("0",)))
    with pytest.raises(ValueError, match="already has LoRA"):
        inject_lora(model, LoRAConfig(target_modules=("0",)))


# -------------------------------------------------------------------------------------- save / load

def _injected_unet(base, configs, seed=2):
    unet = copy.deepcopy(base)
    for config in configs:
        inject_lora(unet, config)
    randomize_lora(unet, seed=seed)
    return unet


MIXED = [LoRAConfig(r=4, lora_alpha=12), LoRAConfig(r=2, lora_alpha=1, target_modules=("ff.net.2",))]


@pytest.mark.parametrize("configs", [[LoRAConfig(r=4)], [LoRAConfig(r=4, lora_alpha=12)], MIXED],
                         ids=["alpha=r", "alpha!=r", "mixed-r-and-alpha"])
def test_saved_file_loads_in_diffusers_load_lora_adapter(unet_pair, tmp_path, configs):
    base, inputs, expected = unet_pair
    ours = _injected_unet(base, configs)
    path = save_lora(ours, tmp_path / "pytorch_lora_weights.safetensors")
    theirs = copy.deepcopy(base)
    # use_safetensors=True makes diffusers read the header (r, lora_alpha); see save_lora's docstring
    theirs.load_lora_adapter(str(path), prefix="unet", use_safetensors=True)
    ours_out = run_unet(ours, inputs)
    assert (ours_out - expected).abs().max() > 1e-3
    torch.testing.assert_close(run_unet(theirs, inputs), ours_out, atol=1e-5, rtol=0)


def test_saved_file_loads_through_the_pipeline_loader(unet_pair, tmp_path):
    """StableDiffusionPipeline.load_lora_weights = lora_state_dict + load_lora_into_unet, without a pipeline."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin as Loader
    base, inputs, _ = unet_pair
    ours = _injected_unet(base, MIXED)
    save_lora(ours, tmp_path / "pytorch_lora_weights.safetensors")
    state_dict, network_alphas, metadata = Loader.lora_state_dict(
        str(tmp_path), weight_name="pytorch_lora_weights.safetensors", return_lora_metadata=True)
    assert all(key.startswith("unet.") and ".lora_" in key for key in state_dict)
    theirs = copy.deepcopy(base)
    Loader.load_lora_into_unet(state_dict, network_alphas, theirs, metadata=metadata)
    torch.testing.assert_close(run_unet(theirs, inputs), run_unet(ours, inputs), atol=1e-5, rtol=0)


def test_save_load_round_trip(unet_pair, tmp_path):
    base, inputs, _ = unet_pair
    ours = _injected_unet(base, MIXED)
    path = save_lora(ours, tmp_path / "lora.safetensors", prefix="unet")
    fresh = _injected_unet(base, MIXED, seed=99)
    assert load_lora(fresh, path) == [n for n, m in ours.named_modules() if isinstance(m, LoRALinear)]
    for a, b in zip(lora_parameters(fresh), lora_parameters(ours)):
        assert torch.equal(a, b)
    torch.testing.assert_close(run_unet(fresh, inputs), run_unet(ours, inputs), atol=0, rtol=0)
    # a model injected with a different alpha would silently change the scaling: refused
    other_alpha = _injected_unet(base, [LoRAConfig(r=4, lora_alpha=4), MIXED[1]])
    with pytest.raises(ValueError, match="lora_alpha"):
        load_lora(other_alpha, path)
    # different targets: missing/unexpected keys
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \[.*ff\.net\.2\.lora_A"):
        load_lora(_injected_unet(base, [LoRAConfig(r=4, lora_alpha=12)]), path)
    with pytest.raises(ValueError, match="path"):
        load_lora(fresh, tmp_path / "nope.safetensors")
    merge_lora(fresh)
    with pytest.raises(ValueError, match="merged"):
        load_lora(fresh, path)


# ----------------------------------------------------------------------------------------- bad input

def _linear():
    return nn.Linear(4, 3)


def _injected():
    model = nn.Sequential(nn.Linear(4, 3))
    inject_lora(model, LoRAConfig(target_modules=("0",)))
    return model


BAD_INPUTS = [
    ("r", lambda: LoRAConfig(r=0)),
    ("r", lambda: LoRAConfig(r=-2)),
    ("r", lambda: LoRAConfig(r=2.5)),
    ("lora_alpha", lambda: LoRAConfig(lora_alpha=0)),
    ("lora_alpha", lambda: LoRAConfig(lora_alpha=float("nan"))),
    ("lora_dropout", lambda: LoRAConfig(lora_dropout=1.0)),
    ("lora_dropout", lambda: LoRAConfig(lora_dropout=-0.1)),
    ("target_modules", lambda: LoRAConfig(target_modules="to_q")),
    ("target_modules", lambda: LoRAConfig(target_modules=())),
    ("target_modules", lambda: LoRAConfig(target_modules=("to_q", ""))),
    ("target_modules", lambda: LoRAConfig(target_modules=(".to_q",))),
    ("d", lambda: LoRAConfig.from_dict({"r": 4, "rank": 4})),
    ("d", lambda: LoRAConfig.from_dict([("r", 4)])),
    ("base_layer", lambda: LoRALinear(nn.Conv2d(2, 2, 1), r=2, lora_alpha=2)),
    ("r", lambda: LoRALinear(_linear(), r=0, lora_alpha=2)),
    ("lora_alpha", lambda: LoRALinear(_linear(), r=2, lora_alpha=-1)),
    ("lora_dropout", lambda: LoRALinear(_linear(), r=2, lora_alpha=2, lora_dropout=2)),
    ("generator", lambda: LoRALinear(_linear(), r=2, lora_alpha=2, generator=0)),
    ("scale", lambda: LoRALinear(_linear(), r=2, lora_alpha=2).set_scale(float("inf"))),
    ("merged", lambda: LoRALinear(_linear(), r=2, lora_alpha=2).unmerge()),
    ("model", lambda: inject_lora("unet", LoRAConfig())),
    ("config", lambda: inject_lora(nn.Linear(2, 2), {"r": 4})),
    ("target_modules", lambda: inject_lora(nn.Sequential(nn.Linear(2, 2)), LoRAConfig())),
    ("inject_lora", lambda: lora_parameters(nn.Linear(2, 2))),
    ("model", lambda: count_trainable_parameters(None)),
    ("d_in", lambda: lora_parameter_count(0, 4, 2)),
    ("d_out", lambda: lora_parameter_count(4, 4.0, 2)),
    ("r", lambda: lora_parameter_count(4, 4, 0)),
    ("inject_lora", lambda: merge_lora(nn.Linear(2, 2))),
    ("inject_lora", lambda: unmerge_lora(nn.Linear(2, 2))),
    ("scale", lambda: set_lora_scale(_injected(), "1")),
    ("merge", lambda: remove_lora(_injected(), merge="yes")),
    ("inject_lora", lambda: save_lora(nn.Linear(2, 2), "x.safetensors")),
    ("path", lambda: save_lora(_injected(), None)),
    ("prefix", lambda: save_lora(_injected(), "x.safetensors", prefix=".unet")),
    ("path", lambda: load_lora(_injected(), "/nonexistent/lora.safetensors")),
    ("prefix", lambda: load_lora(_injected(), "x.safetensors", prefix="")),
]


@pytest.mark.parametrize("argname, call", BAD_INPUTS, ids=[f"{i}-{a}" for i, (a, _) in enumerate(BAD_INPUTS)])
def test_bad_input_raises_value_error_naming_the_argument(argname, call):
    with pytest.raises(ValueError, match=argname):
        call()


def test_corrupt_lora_file_is_a_value_error(tmp_path):
    path = save_lora(_injected(), tmp_path / "lora.safetensors", prefix=None)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="path"):
        load_lora(_injected(), path, prefix=None)

"""Contracts of course_lib.models.clip_text: transformers' CLIPTextModel on copied weights (both pooling rules),
the causal mask, gradients, configs and folders (tiny configs; SD v1.5's shapes on the meta device)."""
import json
import warnings

import pytest
import torch

from course_lib.models.clip_text import (CLIPTextConfig, CLIPTextModel, pooled_positions, quick_gelu,
                                         strip_text_model_prefix)
from _numerics import unit_roundoff  # tests/_numerics.py

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import transformers
    from transformers import CLIPTextConfig as HFConfig
    from transformers import CLIPTextModel as HFModel

transformers.logging.set_verbosity_error()

OLD = CLIPTextConfig.tiny(vocab_size=120)  # eos_token_id = 2: pooled at argmax(input_ids), as SD v1
NEW = CLIPTextConfig(vocab_size=90, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
                     max_position_embeddings=20, hidden_act="gelu", bos_token_id=88, eos_token_id=85, pad_token_id=0)
# NEW: words (ids 3..79) and BOS (88) below and above EOS (85), so argmax(input_ids) would pick the wrong token


def _pair(config, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    theirs = HFModel(HFConfig(**config.to_transformers())).eval().to(dtype)
    ours = CLIPTextModel(config).eval().to(dtype)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def _rounding_bound(model, output, dtype):
    """u x (the fan-ins along the path, bounded by the parameter count) x magnitude, for two results."""
    terms = sum(p.numel() for p in model.parameters())
    return 2 * unit_roundoff(dtype) * terms * max(1.0, output.abs().max().item())


def _tokens(config, lengths, total, seed=0):
    """[BOS] words [EOS] padded to ``total``: with EOS (old configs: the largest id) or with pad_token_id (new)."""
    g = torch.Generator().manual_seed(seed)
    eos = config.vocab_size - 1 if config.eos_token_id == 2 else config.eos_token_id
    pad = eos if config.eos_token_id == 2 else config.pad_token_id
    ids = torch.full((len(lengths), total), pad)
    for row, n in enumerate(lengths):
        ids[row, 0] = config.bos_token_id
        ids[row, 1:n + 1] = torch.randint(3, 80, (n,), generator=g)
        ids[row, n + 1] = eos
    mask = (torch.arange(total)[None, :] <= torch.tensor(lengths)[:, None] + 1).long()
    return ids, mask


@pytest.mark.parametrize("config, total", [(OLD, 77), (NEW, 20)], ids=["old-eos", "new-eos"])
def test_matches_transformers_on_copied_weights(config, total):
    ours, theirs = _pair(config)
    ids, mask = _tokens(config, [3, 0, total - 2], total)
    for attention_mask in (None, mask):
        with torch.no_grad():
            expected = theirs(ids, attention_mask=attention_mask)
            got = ours(ids, attention_mask)
        assert got.last_hidden_state.shape == (3, total, config.hidden_size)
        bound = _rounding_bound(ours, expected.last_hidden_state, torch.float64)
        assert (got.last_hidden_state - expected.last_hidden_state).abs().max().item() <= bound
        assert (got.pooler_output - expected.pooler_output).abs().max().item() <= bound


def test_float32_matches_transformers():
    ours, theirs = _pair(OLD, seed=4, dtype=torch.float32)
    ids, _ = _tokens(OLD, [5, 9], 77, seed=4)
    with torch.no_grad():
        expected, got = theirs(ids), ours(ids)
    bound = _rounding_bound(ours, expected.last_hidden_state, torch.float32)
    assert (got.last_hidden_state - expected.last_hidden_state).abs().max().item() <= bound


def test_pooled_position_rules():
    # old configs (eos_token_id 2): the first position of the largest id; the EOS padding repeats it
    ids = torch.tensor([[118, 7, 9, 119, 119, 119], [118, 119, 119, 119, 119, 119]])
    assert pooled_positions(ids, 2).tolist() == [3, 1]
    # new configs: the first position holding eos_token_id, even when larger ids (added tokens) come first
    ids = torch.tensor([[88, 95, 5, 89, 0, 0], [88, 4, 6, 7, 8, 89]])
    assert pooled_positions(ids, 89).tolist() == [3, 5]
    ours, _ = _pair(NEW)
    with torch.no_grad():
        out = ours(torch.tensor([[88, 5, 5, 85, 0, 0]]))
    assert torch.equal(out.pooler_output[0], out.last_hidden_state[0, 3])


def test_causal_mask_later_tokens_do_not_change_earlier_features():
    ours, _ = _pair(OLD)
    ids, _ = _tokens(OLD, [6], 77)
    changed = ids.clone()
    changed[0, 4:] = 50
    with torch.no_grad():
        a, b = ours(ids).last_hidden_state, ours(changed).last_hidden_state
    assert torch.equal(a[0, :4], b[0, :4]) and not torch.allclose(a[0, 4:], b[0, 4:])


def test_quick_gelu_is_x_sigmoid_1702x():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    assert torch.allclose(quick_gelu(x), x / (1 + torch.exp(-1.702 * x)), rtol=0, atol=1e-15)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = CLIPTextModel(OLD)
    ids, _ = _tokens(OLD, [4, 7], 77)
    out = model(ids)
    (out.last_hidden_state.square().mean() + out.pooler_output.sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    used = ids.unique()
    token_grad = model.embeddings.token_embedding.weight.grad.abs().sum(dim=1)
    assert (token_grad[used] > 0).all() and token_grad.sum() == token_grad[used].sum()


@pytest.mark.parametrize("config", [OLD, NEW], ids=["old-eos", "new-eos"])
def test_config_round_trips(config, tmp_path):
    assert CLIPTextConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert CLIPTextConfig.from_transformers(HFConfig(**config.to_transformers()).to_dict()) == config
    torch.manual_seed(0)
    ours = CLIPTextModel(config)
    ours.save_pretrained(tmp_path / "ours")
    reloaded = HFModel.from_pretrained(tmp_path / "ours")
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in ours.state_dict().items())
    theirs = HFModel(HFConfig(**config.to_transformers()))
    theirs.save_pretrained(tmp_path / "theirs")
    back = CLIPTextModel.from_pretrained(tmp_path / "theirs")
    assert back.config == config
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in back.state_dict().items())


def test_transformers_4_names_load_after_stripping_the_prefix():
    ours, theirs = _pair(OLD)
    old_style = {f"text_model.{k}": v for k, v in theirs.state_dict().items()}
    old_style["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    fresh = CLIPTextModel(OLD)
    fresh.load_state_dict(strip_text_model_prefix(old_style), strict=True)
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_sd15_has_the_real_parameter_names_and_shapes():
    config = CLIPTextConfig.sd15()
    assert config.pools_at_argmax and config.hidden_size == 768 and config.hidden_act == "quick_gelu"
    with torch.device("meta"):
        ours = CLIPTextModel(config)
        theirs = HFModel(HFConfig(**json.loads(open("course_lib/configs/sd15_text_encoder.json").read())))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 123_060_480  # SD v1.5's text encoder


@pytest.mark.parametrize("change, argname", [
    (dict(num_attention_heads=5), "num_attention_heads"), (dict(hidden_act="relu"), "hidden_act"),
    (dict(vocab_size=0), "vocab_size"), (dict(layer_norm_eps=0.0), "layer_norm_eps")])
def test_bad_configs_name_the_argument(change, argname):
    with pytest.raises(ValueError, match=argname):
        CLIPTextConfig(**{**OLD.to_dict(), **change})


def test_bad_inputs_name_the_argument():
    model = CLIPTextModel(OLD)
    ids, mask = _tokens(OLD, [3], 77)
    with pytest.raises(ValueError, match="input_ids"):
        model(ids.float())
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.cat([ids, ids], dim=1))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, mask[:, :10])

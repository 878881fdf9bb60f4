"""Contracts of course_lib.text: caption tokenizer, TinyCLIP, contrastive loss, zero-shot classification.

References: Hugging Face's CLIPTextModel (same weights -> same hidden states, atol 1e-5), an explicit
numpy/loop computation of CLIP's symmetric cross-entropy, closed forms (log B), and a tiny training run.
"""
import json
import math

import numpy as np
import pytest
import torch

from course_lib.text import (
    SPECIAL_TOKENS, CaptionTokenizer, CLIPConfig, ImageEncoder, TextEncoder, TinyCLIP, causal_padding_mask,
    contrastive_loss, cosine_similarity, zero_shot_classify,
)

CAPTIONS = [
    "a red circle",
    "a small blue square at the top left",
    "a large yellow triangle in the center",
    "A green circle, at the bottom right.",
]
PAD, BOS, EOS, UNK = 0, 1, 2, 3


@pytest.fixture
def tokenizer():
    return CaptionTokenizer.from_texts(CAPTIONS, max_length=8)


def tiny_model(tokenizer, seed=0, **overrides):
    torch.manual_seed(seed)
    config = CLIPConfig.tiny(vocab_size=tokenizer.vocab_size, max_length=tokenizer.max_length, **overrides)
    return TinyCLIP(config)


# ---------------------------------------------------------------------------------------------- tokenizer

def test_vocab_is_specials_then_sorted_words(tokenizer):
    words = sorted({w.strip(",.").lower() for c in CAPTIONS for w in c.split()})
    assert tokenizer.vocab == list(SPECIAL_TOKENS) + words
    assert tokenizer.vocab_size == 4 + len(words)
    assert CaptionTokenizer.from_texts(CAPTIONS[::-1]).vocab == tokenizer.vocab  # order of texts is irrelevant
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == \
        (PAD, BOS, EOS, UNK)


def test_padding_to_max_length_and_attention_mask(tokenizer):
    out = tokenizer(["A RED circle!!", "a small blue square"])
    ids = tokenizer.token_to_id
    assert out["input_ids"].dtype == torch.long and out["attention_mask"].dtype == torch.long
    assert out["input_ids"].tolist() == [
        [BOS, ids["a"], ids["red"], ids["circle"], EOS, PAD, PAD, PAD],
        [BOS, ids["a"], ids["small"], ids["blue"], ids["square"], EOS, PAD, PAD],
    ]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0]]


def test_padding_longest_and_str_input(tokenizer):
    out = tokenizer(["a red circle", "a circle"], padding="longest", max_length=32)
    assert out["input_ids"].shape == (2, 5)
    assert out["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 1, 0]]
    single = tokenizer("a red circle")
    assert single["input_ids"].shape == (1, 8)
    assert torch.equal(single["input_ids"], tokenizer(["a red circle"])["input_ids"])
    assert torch.equal(tokenizer(["a red circle"], padding=True)["input_ids"], out["input_ids"][:1])


def test_truncation_keeps_eos_last(tokenizer):
    text = "a small blue square at the top left"  # 8 words -> 10 tokens with <bos>/<eos>
    out = tokenizer(text, max_length=5)
    ids = tokenizer.token_to_id
    assert out["input_ids"].tolist() == [[BOS, ids["a"], ids["small"], ids["blue"], EOS]]
    assert out["attention_mask"].tolist() == [[1] * 5]
    assert tokenizer(text, max_length=2)["input_ids"].tolist() == [[BOS, EOS]]
    with pytest.raises(ValueError, match="max_length"):
        tokenizer(text, max_length=5, truncation=False)
    assert tokenizer("a red circle", max_length=5, truncation=False)["input_ids"].shape == (1, 5)


def test_empty_caption_is_bos_eos(tokenizer):  # the unconditional prompt of classifier-free guidance
    out = tokenizer(["", "!!"])
    assert out["input_ids"][:, :3].tolist() == [[BOS, EOS, PAD]] * 2
    assert out["attention_mask"].sum(dim=1).tolist() == [2, 2]


def test_unknown_words_and_decode_round_trip(tokenizer):
    out = tokenizer(["a Purple circle", "A large yellow triangle in the center."], max_length=10)
    assert out["input_ids"][0, 2].item() == UNK
    assert tokenizer.decode(out["input_ids"][0]) == "a <unk> circle"
    assert tokenizer.batch_decode(out["input_ids"])[1] == "a large yellow triangle in the center"
    assert tokenizer.decode(out["input_ids"][0].tolist(), skip_special_tokens=False).split() == \
        ["<bos>", "a", "<unk>", "circle", "<eos>"] + ["<pad>"] * 5
    for caption in CAPTIONS:  # normalised captions survive encode -> decode
        normalised = " ".join(caption.lower().replace(",", "").replace(".", "").split())
        assert tokenizer.decode(tokenizer.encode(caption, max_length=16)) == normalised


def test_tokenizer_save_load_round_trip(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path / "tok" / "tokenizer.json")
    data = json.loads(path.read_text())
    assert data["vocab"] == tokenizer.vocab and data["max_length"] == 8
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokenizer.json"]  # no temporary files left behind
    loaded = CaptionTokenizer.load(path)
    assert loaded.vocab == tokenizer.vocab and loaded.max_length == tokenizer.max_length
    batch = ["a red circle", "a blue unknownword square"]
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(loaded(batch)[key], tokenizer(batch)[key])


@pytest.mark.parametrize("content", ["{not json", json.dumps({"vocab": ["a"]}), json.dumps([1, 2])])
def test_tokenizer_load_rejects_bad_files(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="path|vocab"):
        CaptionTokenizer.load(path)
    with pytest.raises(ValueError, match="path"):
        CaptionTokenizer.load(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------------------- masks

def test_causal_padding_mask_matches_explicit_rule():
    attention_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    mask = causal_padding_mask(attention_mask)
    assert mask.shape == (3, 1, 4, 4) and mask.dtype == torch.bool
    for b in range(3):
        for i in range(4):
            for j in range(4):
                assert mask[b, 0, i, j].item() == (j <= i and attention_mask[b, j].item() == 1)


# ---------------------------------------------------------------------------------------------- text encoder

def _hf_state_dict(encoder: TextEncoder) -> dict:
    renames = [("blocks.", "encoder.layers."), ("to_q", "q_proj"), ("to_k", "k_proj"), ("to_v", "v_proj"),
               ("to_out.0", "out_proj"), ("mlp.0", "mlp.fc1"), ("mlp.2", "mlp.fc2"),
               ("token_embedding", "embeddings.token_embedding"),
               ("position_embedding", "embeddings.position_embedding")]
    out = {}
    for key, value in encoder.state_dict().items():
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value
    return out


def test_text_encoder_matches_transformers_clip_text_model(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    model = tiny_model(tokenizer)
    encoder, config = model.text_encoder.eval(), model.config
    hf = CLIPTextModel(CLIPTextConfig(
        vocab_size=config.vocab_size, hidden_size=config.width, intermediate_size=config.mlp_ratio * config.width,
        num_hidden_layers=config.layers, num_attention_heads=config.heads, max_position_embeddings=config.max_length,
        hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
        attn_implementation="eager")).eval()
    missing, unexpected = hf.load_state_dict(_hf_state_dict(encoder), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    batch = tokenizer(["a red circle", "a small blue square at the top left", ""])
    with torch.no_grad():
        ours = encoder(batch["input_ids"], batch["attention_mask"])
        theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert ours.last_hidden_state.shape == (3, 8, config.width)
    torch.testing.assert_close(ours.last_hidden_state, theirs, atol=1e-5, rtol=1e-5)
    eos_positions = [4, 7, 1]  # first <eos> of each row, counted by hand
    torch.testing.assert_close(ours.pooled, theirs[torch.arange(3), eos_positions], atol=1e-5, rtol=1e-5)


def test_tokens_after_eos_do_not_change_pooled(tokenizer):
    encoder = tiny_model(tokenizer).text_encoder
    batch = tokenizer(["a red circle", "a large yellow triangle"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    changed = ids.clone()
    changed[0, 5:] = torch.tensor([5, 6, 7])  # garbage where the padding was
    changed[1, 6:] = torch.tensor([EOS, 9])
    with torch.no_grad():
        ref = encoder(ids, mask)
        same_mask = encoder(changed, mask)
        unmasked = encoder(changed, torch.ones_like(mask))  # causal mask alone already protects <eos>
        before_eos = ids.clone()
        before_eos[0, 2] = tokenizer.token_to_id["blue"]
        other = encoder(before_eos, mask)
    torch.testing.assert_close(same_mask.pooled, ref.pooled, atol=1e-6, rtol=0)
    torch.testing.assert_close(unmasked.pooled, ref.pooled, atol=1e-6, rtol=0)
    torch.testing.assert_close(unmasked.last_hidden_state[0, :5], ref.last_hidden_state[0, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(other.pooled[0], ref.pooled[0], atol=1e-4)  # a word before <eos> does matter
    torch.testing.assert_close(other.pooled[1], ref.pooled[1], atol=1e-6, rtol=0)  # rows are independent
    torch.testing.assert_close(other.last_hidden_state[0, :2], ref.last_hidden_state[0, :2], atol=1e-6, rtol=0)


def test_pooled_reads_first_eos(tokenizer):
    encoder = tiny_model(tokenizer).text_encoder
    ids = torch.tensor([[BOS, 4, EOS, 5, EOS, PAD, PAD, PAD]])
    out = encoder(ids)
    torch.testing.assert_close(out.pooled, out.last_hidden_state[:, 2])


# ---------------------------------------------------------------------------------------------- TinyCLIP

def test_forward_shapes_and_logits(tokenizer):
    model = tiny_model(tokenizer)
    batch = tokenizer(CAPTIONS[:3])
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    images_before = images.clone()
    out = model(batch["input_ids"], images, batch["attention_mask"])
    assert torch.equal(images, images_before)
    assert out.logits_per_image.shape == (2, 3) and out.logits_per_text.shape == (3, 2)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.T)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(3))
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    text_features = model.text_projection(model.text_encoder(batch["input_ids"], batch["attention_mask"]).pooled)
    image_features = model.visual_projection(model.image_encoder(images))
    expected = (1 / 0.07) * cosine_similarity(image_features, text_features)
    torch.testing.assert_close(out.logits_per_image, expected, atol=1e-5, rtol=1e-5)


def test_logit_scale_is_clamped_at_100(tokenizer):
    model = tiny_model(tokenizer)
    batch = tokenizer(CAPTIONS[:2])
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    out = model(batch["input_ids"], images, batch["attention_mask"])
    expected = 100.0 * out.image_embeds @ out.text_embeds.T
    torch.testing.assert_close(out.logits_per_image, expected, atol=1e-4, rtol=1e-5)


def test_gradients_reach_every_parameter(tokenizer):
    model = tiny_model(tokenizer)
    # the second caption is truncated, so its <eos> sits at the last position: every position embedding is used
    batch = tokenizer(["a red circle", "a small blue square at the top left"])
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    out = model(batch["input_ids"], images, batch["attention_mask"])
    contrastive_loss(out.image_embeds, out.text_embeds, model.logit_scale).backward()
    used = batch["input_ids"].unique()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        grad = param.grad[used] if name.endswith("token_embedding.weight") else param.grad
        assert grad.abs().sum() > 0, name
    unused = torch.tensor([i for i in range(tokenizer.vocab_size) if i not in used.tolist()])
    assert model.text_encoder.token_embedding.weight.grad[unused].abs().sum() == 0  # sanity of the test itself


# ---------------------------------------------------------------------------------------------- loss

def _reference_loss(image_embeds: np.ndarray, text_embeds: np.ndarray, scale: float) -> float:
    """CLIP's symmetric cross-entropy written with explicit loops in float64."""
    n = len(image_embeds)
    logits = [[scale * float(np.dot(image_embeds[i], text_embeds[j])) for j in range(n)] for i in range(n)]
    loss_images = sum(math.log(sum(math.exp(logits[i][j]) for j in range(n))) - logits[i][i] for i in range(n)) / n
    loss_texts = sum(math.log(sum(math.exp(logits[i][j]) for i in range(n))) - logits[j][j] for j in range(n)) / n
    return (loss_images + loss_texts) / 2


@pytest.mark.parametrize("logit_scale", [0.0, math.log(1 / 0.07), math.log(500.0)])
def test_contrastive_loss_matches_loop_reference(logit_scale):
    g = torch.Generator().manual_seed(3)
    image_embeds = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    text_embeds = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    loss = contrastive_loss(image_embeds, text_embeds, torch.tensor(logit_scale))
    expected = _reference_loss(image_embeds.double().numpy(), text_embeds.double().numpy(),
                               min(math.exp(logit_scale), 100.0))
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert contrastive_loss(image_embeds, text_embeds, logit_scale).item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_contrastive_loss_is_log_batch_for_zero_embeddings(batch):
    zeros = torch.zeros(batch, 4)
    assert contrastive_loss(zeros, zeros, math.log(1 / 0.07)).item() == pytest.approx(math.log(batch), abs=1e-6)


def test_contrastive_loss_small_for_matched_orthogonal_embeddings():
    embeds = torch.eye(4, dtype=torch.float64)  # pair i = i-th basis vector: cosine 1 with its partner, 0 else
    loss = contrastive_loss(embeds, embeds.clone(), math.log(1 / 0.07))
    assert loss.item() == pytest.approx(math.log(1 + 3 * math.exp(-1 / 0.07)), rel=1e-6)  # closed form
    assert contrastive_loss(embeds.float(), embeds.float(), math.log(1 / 0.07)).item() < 1e-5
    swapped = contrastive_loss(embeds, embeds[[1, 0, 2, 3]], math.log(1 / 0.07))
    assert swapped.item() > 1.0


def test_contrastive_loss_gradient_reaches_logit_scale():
    g = torch.Generator().manual_seed(4)
    image_embeds = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=-1).requires_grad_()
    text_embeds = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=-1).requires_grad_()
    logit_scale = torch.tensor(1.0, requires_grad=True)
    contrastive_loss(image_embeds, text_embeds, logit_scale).backward()
    for t in (image_embeds, text_embeds, logit_scale):
        assert t.grad is not None and t.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- training

COLOURS = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0), "yellow": (1.0, 1.0, -1.0)}


def _colour_batch(generator, size=8):
    """One noisy solid-colour image per colour, values in [-1, 1] + noise: (4, 3, size, size)."""
    base = torch.tensor(list(COLOURS.values()))[:, :, None, None].expand(4, 3, size, size)
    return base + 0.3 * torch.randn(4, 3, size, size, generator=generator)


def test_training_lowers_loss_and_zero_shot_beats_chance():
    prompts = [f"a {colour} square" for colour in COLOURS]
    tokenizer = CaptionTokenizer.from_texts(prompts, max_length=6)
    torch.manual_seed(0)
    config = CLIPConfig.tiny(vocab_size=tokenizer.vocab_size, max_length=6, width=16, heads=2, layers=1,
                             embed_dim=16, image_size=8, image_widths=(8, 16))
    model = TinyCLIP(config)
    batch = tokenizer(prompts)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        out = model(batch["input_ids"], _colour_batch(g), batch["attention_mask"])
        loss = contrastive_loss(out.image_embeds, out.text_embeds, model.logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    test_images = torch.cat([_colour_batch(torch.Generator().manual_seed(100 + i)) for i in range(3)])
    predicted, probs = zero_shot_classify(model, tokenizer, test_images, prompts)
    assert predicted.shape == (12,) and probs.shape == (12, 4)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(12))
    accuracy = (predicted == torch.arange(4).repeat(3)).float().mean().item()
    assert accuracy > 0.5  # chance is 0.25


def test_zero_shot_classify_is_softmax_of_scaled_cosines(tokenizer):
    model = tiny_model(tokenizer)
    prompts = ["a red circle", "a blue square", "a yellow triangle in the center"]
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    predicted, probs = zero_shot_classify(model, tokenizer, images, prompts)
    padded = tokenizer(prompts)  # padding to max_length must not matter for <eos> features
    with torch.no_grad():
        text_embeds = model.encode_text(padded["input_ids"], padded["attention_mask"])
        logits = (1 / 0.07) * cosine_similarity(model.encode_image(images), text_embeds)
    torch.testing.assert_close(probs, logits.softmax(dim=-1), atol=1e-5, rtol=1e-5)
    assert torch.equal(predicted, logits.argmax(dim=-1))
    assert not probs.requires_grad


# ---------------------------------------------------------------------------------------------- config / io

@pytest.mark.parametrize("config", [CLIPConfig(), CLIPConfig.tiny(), CLIPConfig.small(vocab_size=40)])
def test_config_json_round_trip(config):
    data = json.loads(json.dumps(config.to_dict()))
    assert CLIPConfig.from_dict(data) == config
    assert isinstance(CLIPConfig.from_dict(data).image_widths, tuple)


def test_presets_build_models():
    for config in (CLIPConfig.tiny(), CLIPConfig.small()):
        model = TinyCLIP(config)
        assert model.image_encoder.out_dim == config.image_widths[-1]
        assert len(model.text_encoder.blocks) == config.layers
    assert CLIPConfig.tiny(width=48, heads=3).width == 48


def test_save_and_load_pretrained_round_trip(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
    model.save_pretrained(tmp_path / "clip")
    assert sorted(p.name for p in (tmp_path / "clip").iterdir()) == ["config.json", "model.safetensors"]
    loaded = TinyCLIP.from_pretrained(tmp_path / "clip")
    assert loaded.config == model.config
    batch = tokenizer(CAPTIONS)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = model(batch["input_ids"], images, batch["attention_mask"])
        b = loaded(batch["input_ids"], images, batch["attention_mask"])
    assert torch.equal(a.logits_per_image, b.logits_per_image)
    assert loaded.logit_scale.item() == 2.0


# ---------------------------------------------------------------------------------------------- bad input

def _bad_calls():
    tok = CaptionTokenizer.from_texts(CAPTIONS, max_length=8)
    config = CLIPConfig.tiny(vocab_size=tok.vocab_size, max_length=8)
    model = TinyCLIP(config)
    ids = tok(["a red circle", "a blue square"])
    images = torch.zeros(2, 3, 16, 16)
    e = torch.nn.functional.normalize(torch.ones(2, 4), dim=-1)
    return [
        ("texts", lambda: CaptionTokenizer.from_texts([])),
        ("texts", lambda: CaptionTokenizer.from_texts([1, 2])),
        ("max_length", lambda: CaptionTokenizer.from_texts(["a b"], max_length=1)),
        ("vocab", lambda: CaptionTokenizer(["a", "b"])),
        ("vocab", lambda: CaptionTokenizer([*SPECIAL_TOKENS, "red", "red"])),
        ("vocab", lambda: CaptionTokenizer([*SPECIAL_TOKENS, "Red circle"])),
        ("texts", lambda: tok([])),
        ("texts", lambda: tok(None)),
        ("max_length", lambda: tok("a red circle", max_length=1)),
        ("max_length", lambda: tok("a red circle", max_length=2.5)),
        ("padding", lambda: tok("a red circle", padding="bogus")),
        ("padding", lambda: tok("a red circle", padding=False)),
        ("truncation", lambda: tok("a red circle", truncation="yes")),
        ("ids", lambda: tok.decode([1, 999])),
        ("ids", lambda: tok.decode(torch.zeros(2, 2, dtype=torch.long))),
        ("ids", lambda: tok.decode("a red")),
        ("vocab_size", lambda: CLIPConfig(vocab_size=2)),
        ("max_length", lambda: CLIPConfig(max_length=1)),
        ("width", lambda: CLIPConfig(width=30, heads=4)),
        ("heads", lambda: CLIPConfig(heads=0)),
        ("image_widths", lambda: CLIPConfig(image_widths=())),
        ("image_widths", lambda: CLIPConfig(image_widths=(8, -1))),
        ("image_size", lambda: CLIPConfig(image_size=2, image_widths=(4, 8, 16))),
        ("logit_scale_init_value", lambda: CLIPConfig(logit_scale_init_value=float("nan"))),
        ("eos_token_id", lambda: CLIPConfig(eos_token_id=0)),
        ("eos_token_id", lambda: CLIPConfig(vocab_size=10, eos_token_id=10)),
        ("bogus", lambda: CLIPConfig.from_dict({"bogus": 1})),
        ("bogus", lambda: CLIPConfig.tiny(bogus=1)),
        ("config", lambda: TinyCLIP({"width": 32})),
        ("config", lambda: TextEncoder(None)),
        ("input_ids", lambda: model.encode_text(ids["input_ids"].float())),
        ("input_ids", lambda: model.encode_text(ids["input_ids"][0])),
        ("input_ids", lambda: model.encode_text(torch.full((1, 8), 999))),
        ("input_ids", lambda: model.encode_text(torch.tensor([[BOS, 4, 5]]))),  # no <eos>
        ("input_ids", lambda: model.encode_text(tok("a red circle", max_length=12)["input_ids"])),  # L > max_length
        ("attention_mask", lambda: model.encode_text(ids["input_ids"], ids["attention_mask"][:, :4])),
        ("attention_mask", lambda: model.encode_text(ids["input_ids"], 2 * ids["attention_mask"])),
        ("attention_mask", lambda: model.encode_text(ids["input_ids"], ids["attention_mask"].flip(1))),
        ("attention_mask", lambda: causal_padding_mask(torch.ones(4))),
        ("images", lambda: model.encode_image(torch.zeros(2, 1, 16, 16))),  # wrong channels
        ("images", lambda: model.encode_image(torch.zeros(2, 3, 8, 8))),  # wrong size
        ("images", lambda: model.encode_image(torch.zeros(3, 16, 16))),
        ("images", lambda: model.encode_image(torch.zeros(2, 3, 16, 16, dtype=torch.long))),
        ("input_ids", lambda: model(images, ids["input_ids"])),  # arguments swapped
        ("image_embeds and text_embeds", lambda: contrastive_loss(e, e[:1], 1.0)),  # mismatched batch sizes
        ("image_embeds", lambda: contrastive_loss(e[0], e[0], 1.0)),
        ("image_embeds", lambda: contrastive_loss(torch.zeros(0, 4), torch.zeros(0, 4), 1.0)),
        ("text_embeds", lambda: contrastive_loss(e, "e", 1.0)),
        ("logit_scale", lambda: contrastive_loss(e, e, float("inf"))),
        ("logit_scale", lambda: contrastive_loss(e, e, torch.ones(2))),
        ("b", lambda: cosine_similarity(e, torch.ones(2, 3))),
        ("model", lambda: zero_shot_classify(None, tok, images, ["a red circle"])),
        ("tokenizer", lambda: zero_shot_classify(model, "tok", images, ["a red circle"])),
        ("tokenizer", lambda: zero_shot_classify(TinyCLIP(CLIPConfig.tiny(vocab_size=5)), tok, images, ["a"])),
        ("class_prompts", lambda: zero_shot_classify(model, tok, images, [])),
        ("images", lambda: zero_shot_classify(model, tok, torch.zeros(2, 4, 16, 16), ["a red circle"])),
        ("config", lambda: ImageEncoder("tiny")),
    ]


@pytest.mark.parametrize("argname, call", _bad_calls(), ids=lambda x: x if isinstance(x, str) else "")
def test_bad_input_raises_value_error_naming_the_argument(argname, call):
    with pytest.raises(ValueError, match=argname):
        call()

"""course_lib.clip_finetune: retrieval and zero-shot metrics on embeddings with known answers; the accumulated
update equals the mean of its micro-batches' gradients (and is not the big batch's); SD's text encoder and a
CLIPModel's text tower swap weights."""
import pytest
import torch

from _numerics import assert_within_rounding
from course_lib.clip_finetune import (clip_embeddings, make_clip_step_fn, retrieval_recall, text_transformer,
                                      tiny_clip_model, zero_shot_accuracy)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer
    from course_lib.sd import build_tiny_sd
    folder = build_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd", seed=0)
    return CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True), folder


def _pairs(tokenizer, n, seed=0):
    from course_lib.data import shapes_batch
    batch = shapes_batch(n, seed=seed, image_size=32)
    ids = tokenizer(batch["caption"], padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    return {"input_ids": ids.input_ids, "attention_mask": ids.attention_mask, "pixel_values": batch["image"]}


def test_retrieval_recall_known_rankings():
    eye = torch.eye(4)
    assert retrieval_recall(eye, eye, k=1) == {"image_to_text": 1.0, "text_to_image": 1.0}
    # image i is closest to text (i + 1) % 4, second closest to its own text i
    images = torch.nn.functional.normalize(0.5 * eye + torch.roll(eye, 1, dims=1), dim=1)
    r1, r2 = retrieval_recall(images, eye, k=1), retrieval_recall(images, eye, k=2)
    assert r1 == {"image_to_text": 0.0, "text_to_image": 0.0}
    assert r2 == {"image_to_text": 1.0, "text_to_image": 1.0}
    images[0] = eye[0]  # image 0 now finds text 0; text 0 and text 1 (no longer claimed by image 0) find theirs
    assert retrieval_recall(images, eye, k=1) == {"image_to_text": 0.25, "text_to_image": 0.5}
    # a model that scores everything alike finds nothing: ties count against it
    same = torch.ones(5, 3) / 3 ** 0.5
    assert retrieval_recall(same, same, k=1) == {"image_to_text": 0.0, "text_to_image": 0.0}


def test_zero_shot_accuracy_counts_the_closest_prompt():
    classes = torch.eye(3)
    images = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.6, 0.8, 0]])
    assert zero_shot_accuracy(images, classes, torch.tensor([0, 1, 2, 1])) == 1.0
    assert zero_shot_accuracy(images, classes, torch.tensor([0, 1, 0, 0])) == 0.5


def test_accumulated_update_is_the_mean_of_micro_batch_gradients_not_the_big_batch(tokenizer):
    tok, _ = tokenizer
    model = tiny_clip_model(tok, seed=1)
    inputs = _pairs(tok, 8)
    chunks = [{k: v[2 * i:2 * i + 2] for k, v in inputs.items()} for i in range(4)]
    params = [p for p in model.parameters()]
    per_chunk = [torch.autograd.grad(model(**c, return_loss=True).loss / 4, params) for c in chunks]
    big = torch.autograd.grad(model(**inputs, return_loss=True).loss, params)
    loss = make_clip_step_fn(model, lambda step, k: chunks[k], gradient_accumulation_steps=4)(0)
    assert loss.requires_grad and loss.grad_fn is None  # a fresh leaf: train_loop's backward adds nothing
    for p, parts, g_big in zip(params, zip(*per_chunk), big):
        expected = sum(parts)
        assert_within_rounding(p.grad, expected, sum(g.abs() for g in parts), depth=4)
    flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
    acc, full = flat([p.grad for p in params]), flat(big)
    assert (acc - full).norm() > 1e-2 * full.norm()  # 4 two-pair tasks are not one eight-pair task


def test_sd_text_encoder_and_clip_text_tower_swap_weights(tokenizer):
    tok, folder = tokenizer
    from course_lib.sd import load_sd_components
    encoder = load_sd_components(folder).text_encoder
    model = tiny_clip_model(tok, seed=3)
    text_transformer(model).load_state_dict(text_transformer(encoder).state_dict())
    ids = _pairs(tok, 3)["input_ids"]
    with torch.no_grad():
        a = encoder(ids).last_hidden_state
        b = model.text_model(ids).last_hidden_state
    assert torch.equal(a, b)  # the same module class, weights and input: the same kernels, bit for bit
    with pytest.raises(ValueError, match="model"):
        text_transformer(torch.nn.Linear(2, 2))


def test_clip_embeddings_are_unit_vectors(tokenizer):
    tok, _ = tokenizer
    model = tiny_clip_model(tok, seed=0)
    inputs = _pairs(tok, 5)
    images = clip_embeddings(model, pixel_values=inputs["pixel_values"], batch_size=2)
    texts = clip_embeddings(model, input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert images.shape == texts.shape == (5, 32)
    assert torch.allclose(images.norm(dim=1), torch.ones(5), atol=1e-6)


@pytest.mark.parametrize("call, argname", [
    (lambda: zero_shot_accuracy(torch.eye(2), torch.eye(2), torch.tensor([0, 2])), "labels"),
    (lambda: zero_shot_accuracy(torch.eye(2), torch.eye(3), torch.tensor([0, 1])), "class_embeds"),
    (lambda: retrieval_recall(torch.eye(3), torch.eye(3), k=4), "k"),
    (lambda: retrieval_recall(torch.eye(3), torch.eye(2), k=1), "image_embeds"),
    (lambda: clip_embeddings(None), "pixel_values"),
    (lambda: make_clip_step_fn(None, "not callable"), "get_batch"),
    (lambda: make_clip_step_fn(None, lambda s, k: {}, gradient_accumulation_steps=0), "gradient_accumulation_steps"),
])
def test_bad_input_names_the_argument(call, argname):
    with pytest.raises(ValueError, match=argname):
        call()

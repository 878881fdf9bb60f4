"""Fine-tuning CLIP on image-caption pairs with transformers' ``CLIPModel``: the update and how to measure it.

Glossary (Radford et al. 2021, "CLIP"):
    I_i, T_i    L2-normalised image and text embeddings of pair i of a batch of N pairs
    s           exp(logit_scale), the inverse temperature (CLIPModel clamps logit_scale at ln 100)
    logits      s * I_i . T_j, an (N, N) matrix; pair i's own caption sits on the diagonal
    L           symmetric InfoNCE: (CE over rows + CE over columns) / 2 (``CLIPModel(..., return_loss=True)``)
    R@k         retrieval recall: the share of images whose own caption is among the k captions closest to
                them (image -> text), and the same for captions (text -> image)

The recipe the course's sources give for ViT-B/32 on Flickr8k (reported there, not measured here): AdamW at
lr 1e-5, gradient clipping at norm 1.0, 32 pairs per update through gradient accumulation, fp16 on a GPU.

Gradient accumulation and a contrastive loss do not commute. A mean-squared-error loss summed over 4
micro-batches of 8 has the gradient of one batch of 32. InfoNCE does not: each micro-batch's loss contrasts
its 8 pairs with each other only (7 negatives each), so 4 x 8 accumulated is the mean of four 8-pair losses,
not a 32-pair loss with 31 negatives. Accumulation buys the averaged gradient of 32 pairs, not the harder
task of telling 32 apart (``tests/test_clip_finetune.py`` checks both statements).

The loop is ``course_lib.train.train_loop``; this module gives it the update (``make_clip_step_fn``) and gives
the notebook the measurements (``clip_embeddings``, ``zero_shot_accuracy``, ``retrieval_recall``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from course_lib._checks import check_int, check_tensor

__all__ = ["tiny_clip_model", "text_transformer", "make_clip_step_fn", "clip_embeddings", "zero_shot_accuracy", "retrieval_recall"]

TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   patch_size=8, num_channels=3, hidden_act="quick_gelu")


def tiny_clip_model(tokenizer, image_size: int = 32, seed: int = 0, text_config: dict | None = None):
    """A random-weight ``transformers.CLIPModel`` small enough for a CPU: 32-wide towers, 2 layers each.

    tokenizer: a CLIPTokenizer (e.g. the tiny SD's); text_config: the text tower's config (default: the tiny
    SD's text encoder, ``course_lib.sd.tiny.TINY_TEXT_ENCODER``, so its weights can be copied either way).
    """
    from transformers import CLIPConfig, CLIPModel
    from course_lib.sd.tiny import TINY_TEXT_ENCODER
    check_int("image_size", image_size, minimum=TINY_VISION["patch_size"])
    if image_size % TINY_VISION["patch_size"]:
        raise ValueError(f"image_size must be a multiple of the patch size {TINY_VISION['patch_size']}, "
                         f"got {image_size}")
    check_int("seed", seed, minimum=0)
    text = dict(TINY_TEXT_ENCODER if text_config is None else text_config)
    text.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = CLIPConfig(text_config=text, vision_config=dict(TINY_VISION, image_size=image_size),
                        projection_dim=text.get("projection_dim", 32))
    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's global RNG untouched
        torch.manual_seed(seed)
        return CLIPModel(config)


def text_transformer(model):
    """The text transformer (embeddings, encoder, final norm) inside a CLIPTextModel or a CLIPModel's text tower.

    Its state_dict has the same keys in both, so SD's text encoder and a CLIP's text tower swap weights with
    ``text_transformer(a).load_state_dict(text_transformer(b).state_dict())``. (transformers 4.x nests it as
    ``.text_model``; 5.x flattened CLIPTextModel and made ``CLIPModel.text_model`` a CLIPTextModel.)
    """
    inner = getattr(model, "text_model", model)
    inner = getattr(inner, "text_model", inner)
    if not hasattr(inner, "embeddings") or not hasattr(inner, "encoder"):
        raise ValueError(f"model must be a CLIPTextModel or a CLIPModel, got {type(model).__name__}")
    return inner


def make_clip_step_fn(model, get_batch: Callable[[int, int], dict], gradient_accumulation_steps: int = 1,
                      precision=None, scaler: torch.amp.GradScaler | None = None, optimizer=None):
    """step_fn(step, generator) for ``train_loop``: the gradients of one update, its mean loss returned.

    get_batch(step, micro_batch) -> the CLIPModel inputs of that micro-batch (``input_ids``,
    ``attention_mask``, ``pixel_values``), on the model's device. Each micro-batch's loss is divided by the
    number of micro-batches, so the gradients add up to their mean. precision (``course_lib.sd.pick_precision``)
    gives autocast; with fp16 pass its ``scaler`` and the ``optimizer``: gradients are unscaled here, and an
    overflowing update is dropped (as in the LoRA trainer) before train_loop clips them.
    """
    check_int("gradient_accumulation_steps", gradient_accumulation_steps, minimum=1)
    if not callable(get_batch):
        raise ValueError(f"get_batch must be callable as get_batch(step, micro_batch), got {get_batch!r}")
    scaling = scaler is not None and scaler.is_enabled()
    if scaling and optimizer is None:
        raise ValueError("optimizer must be given with an enabled GradScaler (its gradients are unscaled here)")

    def step_fn(step: int, generator: torch.Generator | None = None) -> torch.Tensor:
        total = torch.zeros(())
        for micro_batch in range(gradient_accumulation_steps):
            inputs = get_batch(step, micro_batch)
            with precision.autocast() if precision is not None else contextlib.nullcontext():
                loss = model(**inputs, return_loss=True).loss  # InfoNCE over this micro-batch's pairs
            loss = loss.float() / gradient_accumulation_steps
            (scaler.scale(loss) if scaling else loss).backward()
            total += loss.detach().cpu()
        if scaling:
            from course_lib.sd.lora_training import _unscale_or_skip
            _unscale_or_skip(scaler, optimizer, [p for g in optimizer.param_groups for p in g["params"]])
        # the gradients are complete; train_loop's backward on this fresh leaf adds nothing
        return total.requires_grad_()

    return step_fn


@torch.no_grad()
def clip_embeddings(model, *, pixel_values: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                    attention_mask: torch.Tensor | None = None, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised image embeddings (from ``pixel_values``) or text embeddings (from ``input_ids``), (N, D)."""
    if (pixel_values is None) == (input_ids is None):
        raise ValueError("give exactly one of pixel_values (images) and input_ids (texts)")
    check_int("batch_size", batch_size, minimum=1)
    was_training = model.training
    model.eval()
    parts = []
    if pixel_values is not None:
        check_tensor("pixel_values", pixel_values, ndim=4, floating=True)
        for chunk in pixel_values.split(batch_size):
            parts.append(_as_tensor(model.get_image_features(pixel_values=chunk)))
    else:
        check_tensor("input_ids", input_ids, ndim=2)
        masks = attention_mask.split(batch_size) if attention_mask is not None else [None] * len(input_ids.split(batch_size))
        for ids, mask in zip(input_ids.split(batch_size), masks):
            parts.append(_as_tensor(model.get_text_features(input_ids=ids, attention_mask=mask)))
    model.train(was_training)
    return F.normalize(torch.cat(parts).float(), dim=-1)


def _as_tensor(features) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4.x) or an output whose pooler_output is it (5.x)."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def _check_embeds(name: str, value) -> None:
    check_tensor(name, value, ndim=2, floating=True)


def zero_shot_accuracy(image_embeds: torch.Tensor, class_embeds: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose closest class prompt (largest I . T_k) is their label. Embeddings normalised.

    image_embeds (N, D), class_embeds (K, D) (one prompt per class, e.g. "a red circle"), labels (N,) in [0, K).
    """
    _check_embeds("image_embeds", image_embeds)
    _check_embeds("class_embeds", class_embeds)
    check_tensor("labels", labels, ndim=1)
    if labels.is_floating_point() or len(labels) != len(image_embeds):
        raise ValueError(f"labels must be {len(image_embeds)} integer class indices, got dtype {labels.dtype} "
                         f"shape {tuple(labels.shape)}")
    if image_embeds.shape[1] != class_embeds.shape[1]:
        raise ValueError(f"class_embeds must have the image embeddings' width {image_embeds.shape[1]}, "
                         f"got {class_embeds.shape[1]}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_embeds)):
        raise ValueError(f"labels must lie in [0, {len(class_embeds) - 1}], got {labels.min()}..{labels.max()}")
    predicted = (image_embeds @ class_embeds.T).argmax(dim=1)
    return float((predicted == labels.to(predicted.device)).float().mean())


def retrieval_recall(image_embeds: torch.Tensor, text_embeds: torch.Tensor, k: int = 1) -> dict[str, float]:
    """R@k both ways for N pairs (image i belongs with text i): {"image_to_text": .., "text_to_image": ..}.

    Ties count against the model: a pair is found only if fewer than k others score at least as high as it
    (a model that gives every pair the same score gets R@1 = 0, not 1).
    """
    _check_embeds("image_embeds", image_embeds)
    _check_embeds("text_embeds", text_embeds)
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(f"image_embeds and text_embeds must have the same shape (N, D), got "
                         f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}")
    check_int("k", k, minimum=1, maximum=len(image_embeds))
    scores = image_embeds @ text_embeds.T                          # (N images, N texts)
    own = scores.diagonal()

    def recall(s: torch.Tensor, own: torch.Tensor) -> float:
        others = s.clone().fill_diagonal_(float("-inf"))
        rank = (others >= own[:, None]).sum(dim=1)                # rivals at least as close as the right one
        return float((rank < k).float().mean())

    return {"image_to_text": recall(scores, own), "text_to_image": recall(scores.T, own)}

"""CLIP in miniature: a caption tokenizer, a text encoder, an image encoder and the contrastive loss that ties them.

Stable Diffusion reads a prompt through CLIP's text encoder: the UNet cross-attends to the encoder's per-token
features. CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision")
learns those features by pulling matching (image, caption) pairs together and pushing the other pairs of a
batch apart. This module builds the same pieces at toy scale for the course's captioned-shapes world.

Glossary (CLIP paper, Figure 3 pseudo-code):
    B            batch size: B images and their B captions; pair i is (image i, caption i)
    L            caption length in tokens, after padding/truncation (CLIP: 77; here ``max_length``, e.g. 16)
    <bos> <eos>  start / end of text; CLIP's "[SOS]" / "[EOS]". <pad> fills the rest, <unk> replaces unknown words
    I_f, T_f     image / text features from the encoders: pooled CNN features, and the text transformer's
                 features at the <eos> position (``pooled``)
    W_i, W_t     linear projections into the shared embedding space (``visual_projection``, ``text_projection``)
    I_e, T_e     L2-normalised embeddings (B, embed_dim); I_e @ T_e.T are cosine similarities
    t            learned log temperature, stored as ``logit_scale`` as in CLIP and Hugging Face; the similarities
                 are multiplied by exp(t), initialised to 1/0.07 and clamped at 100
    logits       exp(t) * I_e @ T_e.T, shape (B_images, B_texts) = ``logits_per_image``; its transpose is
                 ``logits_per_text``
    loss         (CE(logits, arange(B)) over rows + CE over columns) / 2: each image must pick its caption among
                 the B captions and each caption its image among the B images

The text encoder is causal, as CLIP's: token i only sees tokens 0..i. The <eos> features therefore summarise
the whole caption, and nothing after <eos> (padding) can change them.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from course_lib._checks import check_choice, check_float, check_int, check_shape_dim, check_tensor
from course_lib._config import JSONConfig
from course_lib._io import atomic_write_json, load_pretrained, save_pretrained
from course_lib.attention import MultiHeadAttention

__all__ = [
    "SPECIAL_TOKENS", "CaptionTokenizer", "CLIPConfig", "causal_padding_mask", "TextEncoderOutput",
    "TextEncoder", "ImageEncoder", "CLIPOutput", "TinyCLIP", "contrastive_loss", "cosine_similarity",
    "zero_shot_classify",
]

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0, 1, 2, 3
LOGIT_SCALE_MAX = 100.0  # CLIP clips exp(t) at 100 so training cannot make the softmax arbitrarily sharp


# ----------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------

def split_words(text: str) -> list[str]:
    """Lower-case and keep runs of letters/digits: ``"A red, circle!"`` -> ``["a", "red", "circle"]``."""
    return re.findall(r"[^\W_]+", text.lower())


def _as_text_list(name: str, texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{name} must be a str or a list of str, got {texts!r:.80}")
    if len(texts) == 0:
        raise ValueError(f"{name} must contain at least one text, got an empty {type(texts).__name__}")
    return list(texts)


class CaptionTokenizer:
    """Word-level tokenizer with CLIP's conventions: ``<bos> words... <eos> <pad>...``.

    vocab: every token in id order; it must start with ``SPECIAL_TOKENS`` (<pad>=0, <bos>=1, <eos>=2, <unk>=3).
    max_length: default length L of the returned tensors (CLIP uses 77; our captions are short).
    Build one from captions with ``CaptionTokenizer.from_texts(captions)``.
    """

    def __init__(self, vocab: list[str], max_length: int = 16):
        check_int("max_length", max_length, minimum=2)
        if not isinstance(vocab, (list, tuple)) or not all(isinstance(w, str) for w in vocab):
            raise ValueError(f"vocab must be a list of str, got {vocab!r:.80}")
        if tuple(vocab[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocab must start with the special tokens {SPECIAL_TOKENS}, got {list(vocab[:4])}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab must not contain duplicates, got "
                             f"{sorted({w for w in vocab if list(vocab).count(w) > 1})}")
        bad = [w for w in vocab[len(SPECIAL_TOKENS):] if split_words(w) != [w]]
        if bad:
            raise ValueError(f"vocab words must be lower-case letters/digits only, got {bad[:5]}")
        self.vocab = list(vocab)
        self.max_length = max_length
        self.token_to_id = {w: i for i, w in enumerate(self.vocab)}
        self.pad_token_id, self.bos_token_id, self.eos_token_id, self.unk_token_id = range(len(SPECIAL_TOKENS))

    @classmethod
    def from_texts(cls, texts: list[str], max_length: int = 16) -> "CaptionTokenizer":
        """Vocabulary = special tokens + every word of ``texts``, sorted (so the ids do not depend on text order)."""
        texts = _as_text_list("texts", texts)
        words = sorted({w for text in texts for w in split_words(text)} - set(SPECIAL_TOKENS))
        return cls(list(SPECIAL_TOKENS) + words, max_length=max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, max_length: int | None = None, truncation: bool = True) -> list[int]:
        """One text -> ``[<bos>, word ids..., <eos>]`` (no padding). Truncation drops words, never <eos>."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        max_length = self.max_length if max_length is None else max_length
        check_int("max_length", max_length, minimum=2)
        if not isinstance(truncation, bool):
            raise ValueError(f"truncation must be a bool, got {truncation!r}")
        ids = [self.token_to_id.get(w, self.unk_token_id) for w in split_words(text)]
        if len(ids) + 2 > max_length:
            if not truncation:
                raise ValueError(f"text {text!r} has {len(ids) + 2} tokens with <bos>/<eos>, more than "
                                 f"max_length={max_length}; pass truncation=True or a larger max_length")
            ids = ids[:max_length - 2]  # CLIP keeps <eos> as the last token of a truncated caption
        return [self.bos_token_id, *ids, self.eos_token_id]

    def __call__(self, texts, max_length: int | None = None, padding: str | bool = "max_length",
                 truncation: bool = True) -> dict[str, torch.Tensor]:
        """Tokenize a str or a list of str into ``{"input_ids", "attention_mask"}``, both (B, L) long.

        padding: "max_length" pads every row to ``max_length`` (CLIP's fixed 77); "longest" (or True, as in
        Hugging Face) pads to the longest row of this batch. attention_mask is 1 on real tokens, 0 on <pad>.
        """
        texts = _as_text_list("texts", texts)
        max_length = self.max_length if max_length is None else max_length
        check_int("max_length", max_length, minimum=2)
        check_choice("padding", padding, ("max_length", "longest", True))
        rows = [self.encode(text, max_length, truncation) for text in texts]
        length = max_length if padding == "max_length" else max(len(row) for row in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)  # (B, L)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, :len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Token ids (list or 1-D tensor) -> text. Drops <pad>/<bos>/<eos> unless told not to; keeps <unk>."""
        if isinstance(ids, torch.Tensor):
            if ids.ndim != 1 or ids.is_floating_point():
                raise ValueError(f"ids must be a 1-D integer tensor, got shape {tuple(ids.shape)}, dtype {ids.dtype}")
            ids = ids.tolist()
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                         for i in ids):
            raise ValueError(f"ids must be a list of int or a 1-D integer tensor, got {ids!r:.80}")
        out_of_range = [i for i in ids if not 0 <= i < self.vocab_size]
        if out_of_range:
            raise ValueError(f"ids must be in [0, {self.vocab_size}), got {out_of_range[:5]}")
        skipped = {self.pad_token_id, self.bos_token_id, self.eos_token_id} if skip_special_tokens else set()
        return " ".join(self.vocab[i] for i in ids if i not in skipped)

    def batch_decode(self, ids, skip_special_tokens: bool = True) -> list[str]:
        """(B, L) ids -> B texts."""
        if isinstance(ids, torch.Tensor) and ids.ndim != 2:
            raise ValueError(f"ids must be a 2-D tensor (B, L), got shape {tuple(ids.shape)}")
        return [self.decode(row, skip_special_tokens) for row in ids]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary and max_length as JSON, atomically."""
        return atomic_write_json(path, {"format": "course_lib.CaptionTokenizer", "vocab": self.vocab,
                                        "max_length": self.max_length})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CaptionTokenizer":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"path must be an existing tokenizer JSON file, got {str(path)!r} (not found)")
        try:
            data = json.loads(path.read_text())
            return cls(data["vocab"], max_length=data["max_length"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"path {str(path)!r} is not a CaptionTokenizer JSON file ({err!r})") from err

    def __repr__(self) -> str:
        return f"CaptionTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"


# ----------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------

@dataclass
class CLIPConfig(JSONConfig):
    """Sizes of TinyCLIP. ``width`` is the text encoder's hidden size: the UNet's cross-attention context_dim.

    image_widths: channels of the image CNN's stages; stage 0 keeps the resolution, each later stage halves it.
    causal: True (CLIP's choice) lets token i attend to tokens 0..i only; False lets every token see the whole
    caption (bidirectional, as BERT/T5 encoders, e.g. Imagen's), so "circle" in "a red circle" knows its colour.
    """
    vocab_size: int = 64
    max_length: int = 16
    width: int = 64
    layers: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    embed_dim: int = 64
    image_size: int = 32
    image_channels: int = 3
    image_widths: tuple[int, ...] = (16, 32, 64)
    logit_scale_init_value: float = math.log(1 / 0.07)
    pad_token_id: int = 0
    eos_token_id: int = 2
    causal: bool = True

    def __post_init__(self):
        check_int("vocab_size", self.vocab_size, minimum=len(SPECIAL_TOKENS))
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal must be a bool, got {self.causal!r}")
        check_int("max_length", self.max_length, minimum=2)
        for name in ("width", "layers", "heads", "mlp_ratio", "embed_dim", "image_size", "image_channels"):
            check_int(name, getattr(self, name), minimum=1)
        if self.width % self.heads:
            raise ValueError(f"width must be divisible by heads={self.heads}, got width={self.width}")
        if not isinstance(self.image_widths, (list, tuple)) or len(self.image_widths) == 0:
            raise ValueError(f"image_widths must be a non-empty list of positive ints, got {self.image_widths!r}")
        for w in self.image_widths:
            check_int("image_widths", w, minimum=1)
        self.image_widths = tuple(self.image_widths)  # JSON gives a list
        if self.image_size < 2 ** (len(self.image_widths) - 1):
            raise ValueError(f"image_size must be >= 2**(len(image_widths)-1) = {2 ** (len(self.image_widths) - 1)}"
                             f" so every stage keeps at least one pixel, got {self.image_size}")
        check_float("logit_scale_init_value", self.logit_scale_init_value, maximum=math.log(LOGIT_SCALE_MAX))
        check_int("pad_token_id", self.pad_token_id, minimum=0, maximum=self.vocab_size - 1)
        check_int("eos_token_id", self.eos_token_id, minimum=0, maximum=self.vocab_size - 1)
        if self.eos_token_id == self.pad_token_id:
            raise ValueError(f"eos_token_id must differ from pad_token_id={self.pad_token_id}, got {self.eos_token_id}")

    @classmethod
    def tiny(cls, **overrides) -> "CLIPConfig":
        """Seconds on a CPU: for tests and the FAST path of the notebooks."""
        preset = dict(width=32, layers=2, heads=2, embed_dim=32, image_size=16, image_widths=(8, 16, 32))
        return cls.from_dict({**preset, **overrides})

    @classmethod
    def small(cls, **overrides) -> "CLIPConfig":
        """Minutes on a CPU: the lecture's captioned-shapes CLIP."""
        preset = dict(width=128, layers=4, heads=4, embed_dim=128, image_size=32, image_widths=(32, 64, 128, 128))
        return cls.from_dict({**preset, **overrides})


def _check_config(config) -> None:
    if not isinstance(config, CLIPConfig):
        raise ValueError(f"config must be a CLIPConfig, got {type(config).__name__}")


# ----------------------------------------------------------------------------------------------------------
# Text encoder
# ----------------------------------------------------------------------------------------------------------

def causal_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) padding mask (1 = token, 0 = <pad>) -> (B, 1, L, L) bool attention mask, True = may attend.

    Query i may attend key j when j <= i (causal, as CLIP's text transformer) and j is not padding.
    """
    check_tensor("attention_mask", attention_mask, ndim=2)
    length = attention_mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()  # (L, L)
    keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
    return causal & keys  # (B, 1, L, L)


class TransformerBlock(nn.Module):
    """Pre-LN block as in CLIP/GPT-2: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(width)
        self.self_attn = MultiHeadAttention(width, heads, bias=True)
        self.layer_norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask=mask)
        return x + self.mlp(self.layer_norm2(x))


class TextEncoderOutput(NamedTuple):
    last_hidden_state: torch.Tensor  # (B, L, width): what the UNet cross-attends to
    pooled: torch.Tensor  # (B, width): features at each caption's first <eos>


class TextEncoder(nn.Module):
    """Token + learned position embeddings -> causal pre-LN transformer -> final LayerNorm.

    Parameter names follow Hugging Face's CLIPTextModel where they can (token_embedding, position_embedding,
    final_layer_norm); attention uses diffusers' to_q/to_k/to_v/to_out names from ``MultiHeadAttention``.
    """

    def __init__(self, config: CLIPConfig):
        super().__init__()
        _check_config(config)
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Embedding(config.max_length, config.width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)  # CLIP's initialisation
        nn.init.normal_(self.position_embedding.weight, std=0.01)
        self.blocks = nn.ModuleList(TransformerBlock(config.width, config.heads, config.mlp_ratio)
                                    for _ in range(config.layers))
        self.final_layer_norm = nn.LayerNorm(config.width)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TextEncoderOutput:
        """input_ids (B, L) long with one <eos> per row; attention_mask (B, L) of 0/1 (None: no padding)."""
        attention_mask = self._check_inputs(input_ids, attention_mask)
        batch = input_ids.shape[0]
        x = self.embed(input_ids)  # (B, L, width)
        if self.config.causal:
            mask = causal_padding_mask(attention_mask)  # (B, 1, L, L)
        else:  # bidirectional: every token may attend to every non-padding token
            mask = attention_mask.bool()[:, None, None, :].expand(-1, 1, attention_mask.shape[1], -1)
        for block in self.blocks:
            x = block(x, mask)
        x = self.final_layer_norm(x)
        eos_index = (input_ids == self.config.eos_token_id).int().argmax(dim=1)  # first <eos> of each row
        pooled = x[torch.arange(batch, device=x.device), eos_index]  # (B, width)
        return TextEncoderOutput(last_hidden_state=x, pooled=pooled)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Context-free token features: token + position embedding, (B, L) -> (B, L, width)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(positions)

    def _check_inputs(self, input_ids, attention_mask) -> torch.Tensor:
        check_tensor("input_ids", input_ids, ndim=2)
        if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer (long) tensor of token ids, got dtype {input_ids.dtype}")
        batch, length = input_ids.shape
        if batch == 0 or not 1 <= length <= self.config.max_length:
            raise ValueError(f"input_ids must have shape (B >= 1, L) with 1 <= L <= max_length="
                             f"{self.config.max_length}, got shape {tuple(input_ids.shape)}")
        if input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size:
            raise ValueError(f"input_ids must be in [0, vocab_size={self.config.vocab_size}), got values in "
                             f"[{input_ids.min().item()}, {input_ids.max().item()}]")
        if not (input_ids == self.config.eos_token_id).any(dim=1).all():
            raise ValueError(f"input_ids must contain eos_token_id={self.config.eos_token_id} in every row "
                             "(the pooled features are read there)")
        if attention_mask is None:
            return torch.ones_like(input_ids)
        check_tensor("attention_mask", attention_mask, ndim=2)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        if attention_mask.is_floating_point() or not ((attention_mask == 0) | (attention_mask == 1)).all():
            raise ValueError("attention_mask must hold integers or bools 0/1 (1 = token, 0 = <pad>), "
                             f"got dtype {attention_mask.dtype}")
        if not attention_mask[:, 0].bool().all():
            raise ValueError("attention_mask must be 1 at position 0 (<bos>): padding goes on the right")
        return attention_mask


# ----------------------------------------------------------------------------------------------------------
# Image encoder
# ----------------------------------------------------------------------------------------------------------

class ImageEncoder(nn.Module):
    """A small CNN: conv stages (the first keeps the size, the others halve it) -> global average pool.

    Each stage is Conv3x3 -> GroupNorm(1 group: per image, over channels and pixels) -> SiLU.
    Returns (B, image_widths[-1]): the image features I_f.
    """

    def __init__(self, config: CLIPConfig):
        super().__init__()
        _check_config(config)
        self.config = config
        layers, channels = [], config.image_channels
        for i, width in enumerate(config.image_widths):
            layers += [nn.Conv2d(channels, width, 3, stride=1 if i == 0 else 2, padding=1),
                       nn.GroupNorm(1, width), nn.SiLU()]
            channels = width
        self.blocks = nn.Sequential(*layers)
        self.out_dim = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_tensor("images", images, ndim=4, floating=True)
        check_shape_dim("images", images, 1, self.config.image_channels, what="channels (image_channels)")
        size = self.config.image_size
        if tuple(images.shape[2:]) != (size, size) or images.shape[0] == 0:
            raise ValueError(f"images must have shape (B >= 1, {self.config.image_channels}, {size}, {size}) "
                             f"(image_size={size}), got {tuple(images.shape)}")
        h = self.blocks(images)  # (B, C, H / 2**(stages-1), W / 2**(stages-1))
        return h.mean(dim=(2, 3))  # (B, C)


# ----------------------------------------------------------------------------------------------------------
# CLIP = two encoders + projections + temperature
# ----------------------------------------------------------------------------------------------------------

def _logit_multiplier(logit_scale: torch.Tensor) -> torch.Tensor:
    """exp(t), clamped at 100 as in CLIP (the gradient through t stops once the clamp is active)."""
    return logit_scale.exp().clamp(max=LOGIT_SCALE_MAX)


class CLIPOutput(NamedTuple):
    logits_per_image: torch.Tensor  # (B_images, B_texts)
    logits_per_text: torch.Tensor  # (B_texts, B_images)
    image_embeds: torch.Tensor  # (B_images, embed_dim), unit length
    text_embeds: torch.Tensor  # (B_texts, embed_dim), unit length


class TinyCLIP(nn.Module):
    """CLIP in miniature: ``TextEncoder`` and ``ImageEncoder``, projections W_t, W_i, learned temperature t."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        _check_config(config)
        self.config = config
        self.text_encoder = TextEncoder(config)
        self.image_encoder = ImageEncoder(config)
        self.text_projection = nn.Linear(config.width, config.embed_dim, bias=False)  # W_t
        self.visual_projection = nn.Linear(self.image_encoder.out_dim, config.embed_dim, bias=False)  # W_i
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))  # t

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) ids -> T_e (B, embed_dim), L2-normalised."""
        pooled = self.text_encoder(input_ids, attention_mask).pooled  # T_f (B, width)
        return F.normalize(self.text_projection(pooled), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> I_e (B, embed_dim), L2-normalised."""
        return F.normalize(self.visual_projection(self.image_encoder(images)), dim=-1)

    def forward(self, input_ids: torch.Tensor, images: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> CLIPOutput:
        """Similarity logits of every image with every text (argument order as Hugging Face's CLIPModel)."""
        if isinstance(input_ids, torch.Tensor) and input_ids.is_floating_point():
            raise ValueError(f"input_ids must be a long tensor of token ids (forward takes input_ids first, then "
                             f"images), got a {input_ids.dtype} tensor of shape {tuple(input_ids.shape)}")
        text_embeds = self.encode_text(input_ids, attention_mask)  # (B_t, D)
        image_embeds = self.encode_image(images)  # (B_i, D)
        logits_per_image = _logit_multiplier(self.logit_scale) * image_embeds @ text_embeds.T  # (B_i, B_t)
        return CLIPOutput(logits_per_image, logits_per_image.T, image_embeds, text_embeds)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """``config.json`` + ``model.safetensors`` in ``folder``, each written atomically."""
        return save_pretrained(self, folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> "TinyCLIP":
        return load_pretrained(cls, CLIPConfig, folder, device=device)


# ----------------------------------------------------------------------------------------------------------
# Loss and zero-shot classification
# ----------------------------------------------------------------------------------------------------------

def _check_embeds(name: str, embeds) -> None:
    check_tensor(name, embeds, ndim=2, floating=True)
    if embeds.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one embedding, got shape {tuple(embeds.shape)}")


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale) -> torch.Tensor:
    """CLIP's symmetric cross-entropy. Pair i (image i, text i) is the positive; the other B-1 are negatives.

    image_embeds, text_embeds: (B, D), L2-normalised (as ``encode_image``/``encode_text`` return them).
    logit_scale: the log temperature t (a float or a 0-dim tensor, e.g. ``model.logit_scale``);
    the logits are exp(t) * I_e @ T_e.T with exp(t) clamped at 100.
    """
    _check_embeds("image_embeds", image_embeds)
    _check_embeds("text_embeds", text_embeds)
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(f"image_embeds and text_embeds must have the same shape (B, D) (one caption per image), "
                         f"got {tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}")
    if isinstance(logit_scale, torch.Tensor):
        if logit_scale.numel() != 1 or not logit_scale.is_floating_point():
            raise ValueError(f"logit_scale must be a float or a one-element float tensor, got shape "
                             f"{tuple(logit_scale.shape)} dtype {logit_scale.dtype}")
        logit_scale = logit_scale.reshape(())
    else:
        check_float("logit_scale", logit_scale)
        logit_scale = torch.tensor(float(logit_scale), dtype=image_embeds.dtype, device=image_embeds.device)
    # 1. scaled pairwise cosine similarities, (B images, B texts)
    logits = _logit_multiplier(logit_scale) * image_embeds @ text_embeds.T
    # 2. the right partner of row i is column i
    labels = torch.arange(logits.shape[0], device=logits.device)
    # 3. images choose among texts (rows), texts choose among images (columns); average the two
    loss_images = F.cross_entropy(logits, labels)
    loss_texts = F.cross_entropy(logits.T, labels)
    return (loss_images + loss_texts) / 2


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarities of the rows of a (N, D) and b (M, D) -> (N, M)."""
    _check_embeds("a", a)
    _check_embeds("b", b)
    check_shape_dim("b", b, 1, a.shape[1], what="feature size D of a")
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


@torch.no_grad()
def zero_shot_classify(model: TinyCLIP, tokenizer: CaptionTokenizer, images: torch.Tensor,
                       class_prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's zero-shot classifier: the class whose prompt's text embedding is closest to the image's.

    images: (B, C, H, W); class_prompts: K texts, one per class (e.g. "a red circle", "a blue circle").
    Returns (predicted class index (B,) long, probabilities (B, K) = softmax over the K prompts' logits).
    """
    if not isinstance(model, TinyCLIP):
        raise ValueError(f"model must be a TinyCLIP, got {type(model).__name__}")
    if not isinstance(tokenizer, CaptionTokenizer):
        raise ValueError(f"tokenizer must be a CaptionTokenizer, got {type(tokenizer).__name__}")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"tokenizer must have vocab_size <= the model's {model.config.vocab_size}, "
                         f"got {tokenizer.vocab_size}")
    class_prompts = _as_text_list("class_prompts", class_prompts)
    tokens = tokenizer(class_prompts, max_length=model.config.max_length, padding="longest")
    device = model.logit_scale.device
    text_embeds = model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))  # (K, D)
    image_embeds = model.encode_image(images)  # (B, D)
    logits = _logit_multiplier(model.logit_scale) * image_embeds @ text_embeds.T  # (B, K)
    probs = logits.softmax(dim=-1)
    return probs.argmax(dim=-1), probs

"""CLIP's text transformer (``CLIPTextModel``), the text encoder of Stable Diffusion v1, named as transformers names it.

``course_lib.text`` teaches the idea on a toy vocabulary; this module is the real layout, so that the state dict
of transformers' ``CLIPTextModel`` loads with a strict ``load_state_dict``. Assignment 7 has students write it.

Constructing one (what the converter and the notebooks use):
    config = CLIPTextConfig.from_transformers(json.load(open("text_encoder/config.json")))  # or .sd15(), .tiny()
    text_encoder = CLIPTextModel(config)          # or CLIPTextModel.from_pretrained("text_encoder/")
    out = text_encoder(input_ids)                 # input_ids (B, 77): padded by the tokenizer to 77 tokens
    out.last_hidden_state                         # (B, 77, 768): tau(y), what SD's UNet cross-attends to
    out.pooler_output                             # (B, 768): the features at the end-of-text token

Glossary (Radford et al. 2021, Sec. 2.4; Vaswani et al. 2017):
    token + position embeddings   x_0 = E[input_ids] + P[0..L-1], P learned, L <= max_position_embeddings (77)
    causal mask                   token i attends to tokens j <= i only (CLIP's text model is a masked transformer)
    pre-LN block                  x = x + attn(LN1 x); x = x + fc2(QuickGELU(fc1(LN2 x)))
    QuickGELU                     x * sigmoid(1.702 x), CLIP's fast approximation of GELU ("quick_gelu")
    final_layer_norm              one more LayerNorm on every position -> last_hidden_state
    pooled (EOS) token            the row of last_hidden_state at the end-of-text token of each sequence

Which position is the EOS token: SD v1's tokenizer writes [BOS] words [EOS] and pads with EOS again to 77
tokens; EOS (49407) is the largest id, so old configs (``eos_token_id == 2``, a placeholder) take
``argmax(input_ids)``, the first EOS. Newer configs name the real id and take the first position holding it.
transformers (5.x here) applies exactly this rule; so does ``pooled_positions`` below.

Names: transformers 5 names the parameters ``embeddings.*``, ``encoder.layers.*``, ``final_layer_norm.*``; files
written by transformers 4 (SD folders on the Hub) prefix them with ``text_model.``. ``strip_text_model_prefix``
accepts both; ``from_pretrained`` uses it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from course_lib._checks import check_choice, check_float, check_int, check_tensor
from course_lib._io import atomic_save_safetensors, atomic_write_json, load_safetensors

__all__ = ["CLIPTextConfig", "CLIPTextModel", "CLIPTextOutput", "CLIPTextEmbeddings", "CLIPAttention", "CLIPMLP",
           "CLIPEncoderLayer", "CLIPEncoder", "quick_gelu", "causal_mask", "pooled_positions",
           "strip_text_model_prefix"]

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"  # transformers' file names
SD15_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sd15_text_encoder.json"
ACTIVATIONS = ("quick_gelu", "gelu")  # SD v1 (OpenAI CLIP): quick_gelu; SD v2 (OpenCLIP): gelu


# ----------------------------------------------------------------------------------------------- config

@dataclass
class CLIPTextConfig:
    """The fields of transformers' ``CLIPTextConfig`` that shape the text model (same names and meaning).

    eos_token_id   2 (the placeholder of old configs, SD v1): pool at argmax(input_ids); otherwise the first
                   position holding eos_token_id
    """
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 1

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            check_int(name, getattr(self, name), minimum=0)
        check_choice("hidden_act", self.hidden_act, ACTIVATIONS)
        check_float("layer_norm_eps", self.layer_norm_eps, minimum=0.0, min_inclusive=False)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"num_attention_heads must divide hidden_size={self.hidden_size}, "
                             f"got {self.num_attention_heads}")

    @property
    def pools_at_argmax(self) -> bool:
        """True for old configs (eos_token_id == 2): the EOS position is argmax(input_ids)."""
        return self.eos_token_id == 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPTextConfig":
        if not isinstance(d, dict):
            raise ValueError(f"d must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"d has unknown CLIPTextConfig keys {unknown}; allowed keys are {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_transformers(cls, d: dict) -> "CLIPTextConfig":
        """From a transformers ``text_encoder/config.json`` dict (or ``CLIPTextConfig.to_dict()``)."""
        if not isinstance(d, dict):
            raise ValueError(f"d must be a dict, got {type(d).__name__}")
        # the other keys describe the file or training (dropout, initializer_range, architectures, ...)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_transformers(self) -> dict:
        """The dict transformers' ``CLIPTextConfig(**d)`` accepts."""
        return self.to_dict()

    @classmethod
    def sd15(cls) -> "CLIPTextConfig":
        """SD v1.x's text encoder (OpenAI CLIP ViT-L/14's text side): 768 wide, 12 layers, 123.1M parameters."""
        return cls.from_transformers(json.loads(SD15_CONFIG.read_text()))

    @classmethod
    def tiny(cls, vocab_size: int = 1000) -> "CLIPTextConfig":
        """32 wide, 2 layers, 4 heads, 77 positions, old-style pooling (eos_token_id 2, EOS = the largest id)."""
        return cls(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, bos_token_id=vocab_size - 2, eos_token_id=2, pad_token_id=1)


# ---------------------------------------------------------------------------------------------- pieces

def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(1.702 x): CLIP's activation."""
    return x * torch.sigmoid(1.702 * x)


def causal_mask(n: int, device=None) -> torch.Tensor:
    """(n, n) bool, True where key j <= query i."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def pooled_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """(B,) index of each sequence's EOS token, by transformers' rule (see the module docstring)."""
    if eos_token_id == 2:
        return input_ids.argmax(dim=-1)
    return (input_ids == eos_token_id).int().argmax(dim=-1)  # the first position holding eos_token_id


class CLIPTextEmbeddings(nn.Module):
    """x_0 = token_embedding[input_ids] + position_embedding[0..L-1]."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(positions)[None]


class CLIPAttention(nn.Module):
    """Multi-head self-attention with biases on all four projections (q_proj, k_proj, v_proj, out_proj)."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        width = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, width), mask bool broadcastable to (B, heads, L, L), True = attend."""
        B, L, C = x.shape
        q, k, v = (proj(x).view(B, L, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B, h, L, d)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, C))


class CLIPMLP(nn.Module):
    """fc1 (width -> intermediate), QuickGELU (or GELU), fc2 (back to width)."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.activation = quick_gelu if config.hidden_act == "quick_gelu" else F.gelu
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LN block: x + self_attn(layer_norm1 x), then x + mlp(layer_norm2 x)."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x


class CLIPTextOutput(NamedTuple):
    last_hidden_state: torch.Tensor  # (B, L, width): SD's text conditioning tau(y)
    pooler_output: torch.Tensor      # (B, width): the EOS token's row


# ------------------------------------------------------------------------------------------ the model

class CLIPTextModel(nn.Module):
    """CLIP's text transformer; parameter names are transformers' (5.x), so its state dicts load strictly."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        if not isinstance(config, CLIPTextConfig):
            raise ValueError(f"config must be a CLIPTextConfig, got {type(config).__name__}")
        self.config = config
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> CLIPTextOutput:
        """input_ids (B, L) long, L <= max_position_embeddings; attention_mask (B, L) 1 = real token, 0 = padding
        (optional: SD v1 passes none and lets the causal mask keep padding out of the real tokens' features)."""
        check_tensor("input_ids", input_ids, ndim=2)
        if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        L = input_ids.shape[1]
        if not 1 <= L <= self.config.max_position_embeddings:
            raise ValueError(f"input_ids must have 1 to {self.config.max_position_embeddings} tokens per sequence, "
                             f"got shape {tuple(input_ids.shape)}")
        mask = causal_mask(L, input_ids.device)[None, None]                          # (1, 1, L, L)
        if attention_mask is not None:
            check_tensor("attention_mask", attention_mask, ndim=2)
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                                 f"got {tuple(attention_mask.shape)}")
            mask = mask & attention_mask.bool()[:, None, None, :]                    # (B, 1, L, L): padded keys out
        x = self.embeddings(input_ids)
        x = self.final_layer_norm(self.encoder(x, mask))
        pooled = x[torch.arange(x.shape[0], device=x.device), pooled_positions(input_ids, self.config.eos_token_id)]
        return CLIPTextOutput(last_hidden_state=x, pooler_output=pooled)

    # ----------------------------------------------------------------------------- transformers' folder

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """``config.json`` and ``model.safetensors``: transformers' ``CLIPTextModel.from_pretrained`` reads it too."""
        folder = Path(folder)
        atomic_save_safetensors(folder / WEIGHTS_NAME, self.state_dict())
        atomic_write_json(folder / CONFIG_NAME, {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
                                                 **self.config.to_transformers()})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> "CLIPTextModel":
        """From a transformers ``text_encoder`` folder (``config.json`` + ``model.safetensors``)."""
        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise ValueError(f"folder must hold {CONFIG_NAME} and {WEIGHTS_NAME} (a transformers text_encoder "
                             f"folder), got {str(folder)!r}")
        model = cls(CLIPTextConfig.from_transformers(json.loads((folder / CONFIG_NAME).read_text())))
        model.load_state_dict(strip_text_model_prefix(load_safetensors(folder / WEIGHTS_NAME)))
        return model.to(device)


def strip_text_model_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without transformers 4's ``text_model.`` prefix (and without the unused ``position_ids`` buffer)."""
    if not isinstance(state_dict, dict):
        raise ValueError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    out = {}
    for key, value in state_dict.items():
        key = key[len("text_model."):] if key.startswith("text_model.") else key
        if key != "embeddings.position_ids":
            out[key] = value
    return out

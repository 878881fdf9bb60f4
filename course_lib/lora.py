"""LoRA: low-rank adaptation of linear layers (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
Models", eq. 3), with peft's names so the code reads like ``peft.tuners.lora``.

Glossary:
    W0           the frozen pretrained weight of a linear layer, shape (d_out, d_in) (``base_layer.weight``)
    A            ``lora_A.weight``, shape (r, d_in): projects the input down to r dimensions
    B            ``lora_B.weight``, shape (d_out, r): projects back up; zero at init, so training starts at W0
    r            the rank of the update; a layer gets r * (d_in + d_out) trainable numbers instead of d_in * d_out
    alpha        ``lora_alpha``; the update is scaled by ``scaling = alpha / r`` so changing r keeps its size
    delta W      ``delta_weight() = B @ A * scaling``, the learned change to the weight
    scale        an extra inference-time multiplier (``set_scale``): 0 = base model, 1 = the trained adapter

    h = W0 x + (B A x) * scaling * scale                                                     (eq. 3)

LoRA *wraps* a layer, it never copies it: ``LoRALinear.base_layer`` is the very ``nn.Linear`` of the model.
Merging adds ``delta W * scale`` into ``W0`` in place (no extra cost at inference); unmerging subtracts it.

Saved files use peft's key names, ``unet.<module path>.lora_A.weight`` / ``.lora_B.weight``, plus diffusers'
``lora_adapter_metadata`` (the ``LoraConfig`` arguments r, lora_alpha, target_modules), so diffusers loads
them with its own ``UNet2DConditionModel.load_lora_adapter(path, prefix="unet")`` or a pipeline's
``load_lora_weights``, keeping ``alpha / r`` exactly. (Without that metadata diffusers would assume alpha = r.)
"""
from __future__ import annotations

import collections
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from course_lib._checks import check_float, check_int
from course_lib._config import JSONConfig
from course_lib._io import atomic_save_safetensors, load_safetensors

__all__ = ["LoRAConfig", "LoRALinear", "inject_lora", "lora_parameters", "count_trainable_parameters",
           "lora_parameter_count", "merge_lora", "unmerge_lora", "set_lora_scale", "remove_lora",
           "save_lora", "load_lora"]

# diffusers reads the LoraConfig arguments from this key of the safetensors header (diffusers.loaders.lora_base)
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"


@dataclass
class LoRAConfig(JSONConfig):
    """Which layers get an adapter and how big it is (peft's ``LoraConfig`` names).

    r: rank of the update. lora_alpha: scaling numerator, ``scaling = lora_alpha / r``; None means alpha = r
    (scaling 1, diffusers' convention). lora_dropout: dropout on the adapter's input during training.
    target_modules: module names matched by suffix: "to_q" matches "...attn1.to_q", "to_out.0" matches
    "...attn1.to_out.0". The default targets the attention projections of Stable Diffusion's UNet.
    """

    r: int = 4
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")

    def __post_init__(self):
        check_int("r", self.r, minimum=1)
        if self.lora_alpha is None:
            self.lora_alpha = self.r
        check_float("lora_alpha", self.lora_alpha, minimum=0.0, min_inclusive=False)
        check_float("lora_dropout", self.lora_dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        if isinstance(self.target_modules, str) or not isinstance(self.target_modules, (tuple, list)):
            raise ValueError(f"target_modules must be a tuple of module names such as ('to_q', 'to_v'), "
                             f"got {self.target_modules!r}")
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules or not all(isinstance(t, str) and t.strip(".") == t and t
                                              for t in self.target_modules):
            raise ValueError(f"target_modules must be a non-empty tuple of non-empty module names (no leading "
                             f"or trailing '.'), got {self.target_modules!r}")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: base(x) + B(A(dropout(x))) * scaling * scale.

    ``lora_A`` is initialised like ``nn.Linear`` (kaiming-uniform, as peft) and ``lora_B`` with zeros, so a
    fresh adapter changes nothing. ``generator`` makes that initialisation reproducible.
    """

    def __init__(self, base_layer: nn.Linear, r: int, lora_alpha: float, lora_dropout: float = 0.0, *,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise ValueError(f"base_layer must be an nn.Linear, got {type(base_layer).__name__}")
        config = LoRAConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout)  # validates the numbers
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.base_layer = base_layer.requires_grad_(False)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.r, self.lora_alpha = config.r, config.lora_alpha
        self.scaling = config.scaling
        self.scale = 1.0
        self.merged = False
        self._merged_scale = None  # the scale that was merged into W0 (unmerge must subtract the same)
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **factory)   # A: (r, d_in)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **factory)  # B: (d_out, r)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_B.weight)

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight (code that reads ``layer.weight.dtype`` keeps working after injection)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def delta_weight(self) -> torch.Tensor:
        """delta W = B @ A * scaling, shape (d_out, d_in). Not multiplied by ``scale``."""
        return self.lora_B.weight @ self.lora_A.weight * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged or self.scale == 0:
            return result  # the update is already inside W0 (or switched off)
        # x @ delta_weight().T * scale, computed through the r-dimensional bottleneck: cheaper than building
        # the (d_out, d_in) matrix, and the same numbers up to rounding (tested)
        lora_x = self.lora_dropout(x.to(self.lora_A.weight.dtype))
        update = self.lora_B(self.lora_A(lora_x))  # (..., r) -> (..., d_out)
        return result + (update * (self.scaling * self.scale)).to(result.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- W0 + delta W * scale, in place; forward then costs exactly one matmul."""
        if self.merged:
            raise ValueError("merge called on a LoRALinear that is already merged (merged=True); unmerge first")
        weight = self.base_layer.weight
        weight += (self.delta_weight() * self.scale).to(weight.dtype)
        self.merged, self._merged_scale = True, self.scale

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 <- W0 - delta W * scale (the scale used by ``merge``): the base weight again, up to rounding."""
        if not self.merged:
            raise ValueError("unmerge called on a LoRALinear that is not merged (merged=False)")
        weight = self.base_layer.weight
        weight -= (self.delta_weight() * self._merged_scale).to(weight.dtype)
        self.merged, self._merged_scale = False, None

    def set_scale(self, scale: float) -> None:
        """Multiply the update by ``scale`` (0 = base model, 1 = as trained); a merged layer is re-merged."""
        check_float("scale", scale)
        was_merged = self.merged
        if was_merged:
            self.unmerge()
        self.scale = float(scale)
        if was_merged:
            self.merge()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"lora_alpha={self.lora_alpha}, scale={self.scale}, merged={self.merged}")


# ----------------------------------------------------------------------------------------------- model level

def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")


def _matches(name: str, target: str) -> bool:
    """peft's rule: the module's full name equals the target or ends with '.' + target."""
    return name == target or name.endswith("." + target)


def inject_lora(model: nn.Module, config: LoRAConfig, *, generator: torch.Generator | None = None) -> list[str]:
    """Wrap every ``nn.Linear`` whose name matches ``config.target_modules`` in a ``LoRALinear``, in place.

    Every other parameter of ``model`` is frozen (requires_grad=False), so only lora_A/lora_B train.
    Returns the names of the wrapped modules, in ``model.named_modules()`` order.
    """
    _check_model(model)
    if not isinstance(config, LoRAConfig):
        raise ValueError(f"config must be a LoRAConfig, got {type(config).__name__}")
    names = [name for name, _ in model.named_modules()
             if any(_matches(name, target) for target in config.target_modules)]
    if not names:
        linear_names = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                               if isinstance(m, nn.Linear)})
        raise ValueError(f"config.target_modules={config.target_modules!r} matched no module of "
                         f"{type(model).__name__}; its nn.Linear layers end in names such as {linear_names[:12]}")
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, LoRALinear):
            raise ValueError(f"model already has LoRA on {name!r}; call remove_lora(model) before injecting again")
        if not isinstance(module, nn.Linear):
            raise ValueError(f"config.target_modules matched {name!r}, which is a {type(module).__name__}; "
                             f"LoRA here wraps nn.Linear layers only")
    model.requires_grad_(False)
    for name in names:
        base = model.get_submodule(name)
        _set_submodule(model, name, LoRALinear(base, config.r, config.lora_alpha, config.lora_dropout,
                                               generator=generator))
    return names


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)  # works for ModuleList too: setattr(to_out, "0", m) replaces item 0


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """{module name: LoRALinear} for every adapter in ``model``."""
    _check_model(model)
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _require_lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"model ({type(model).__name__}) has no LoRA layers; call inject_lora(model, config) first")
    return layers


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The lora_A and lora_B weights of every adapter: what the optimizer should train."""
    return [p for layer in _require_lora_layers(model).values()
            for p in (layer.lora_A.weight, layer.lora_B.weight)]


def count_trainable_parameters(model: nn.Module) -> int:
    _check_model(model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_parameter_count(d_in: int, d_out: int, r: int) -> int:
    """A is (r, d_in) and B is (d_out, r): r * (d_in + d_out) numbers, versus d_in * d_out for full fine-tuning."""
    check_int("d_in", d_in, minimum=1)
    check_int("d_out", d_out, minimum=1)
    check_int("r", r, minimum=1)
    return r * (d_in + d_out)


def merge_lora(model: nn.Module) -> None:
    for layer in _require_lora_layers(model).values():
        if not layer.merged:
            layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for layer in _require_lora_layers(model).values():
        if layer.merged:
            layer.unmerge()


def set_lora_scale(model: nn.Module, scale: float) -> None:
    check_float("scale", scale)
    for layer in _require_lora_layers(model).values():
        layer.set_scale(scale)


def remove_lora(model: nn.Module, merge: bool = False) -> list[str]:
    """Put the base layers back in place of the adapters; returns the names of the restored layers.

    merge=False restores the original weights (unmerging first if needed); merge=True bakes the adapters
    (times their scale) into the base weights, like peft's ``merge_and_unload``. Parameters stay frozen.
    """
    if not isinstance(merge, bool):
        raise ValueError(f"merge must be a bool, got {merge!r}")
    layers = _require_lora_layers(model)
    for name, layer in layers.items():
        if merge and not layer.merged:
            layer.merge()
        elif not merge and layer.merged:
            layer.unmerge()
        _set_submodule(model, name, layer.base_layer)
    return list(layers)


# ---------------------------------------------------------------------------------------------- save / load

def _check_prefix(prefix) -> str:
    if prefix is None:
        return ""
    if not isinstance(prefix, str) or not prefix or prefix.strip(".") != prefix:
        raise ValueError(f"prefix must be None or a non-empty name without leading/trailing '.', got {prefix!r}")
    return prefix + "."


def _check_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"path must be a file path (str or os.PathLike), got {path!r}")
    return Path(path)


def _adapter_metadata(layers: dict[str, LoRALinear]) -> dict:
    """peft ``LoraConfig`` arguments describing these adapters: the most common r/alpha, plus exact-name
    patterns (``^<escaped module path>``, peft's anchored form) for layers that differ."""
    r = collections.Counter(layer.r for layer in layers.values()).most_common(1)[0][0]
    alpha = collections.Counter(layer.lora_alpha for layer in layers.values()).most_common(1)[0][0]
    return {
        "r": r,
        "lora_alpha": alpha,
        "rank_pattern": {"^" + re.escape(n): layer.r for n, layer in layers.items() if layer.r != r},
        "alpha_pattern": {"^" + re.escape(n): layer.lora_alpha for n, layer in layers.items()
                          if layer.lora_alpha != alpha},
        "target_modules": sorted(layers),
        "lora_dropout": 0.0,  # inference-only information; dropout is not part of the trained weights
    }


def save_lora(model: nn.Module, path: str | os.PathLike, prefix: str | None = "unet") -> Path:
    """Write the adapters of ``model`` to a safetensors file that diffusers' LoRA loaders read.

    Keys: ``<prefix>.<module path>.lora_A.weight`` / ``.lora_B.weight`` (peft format). The header holds
    ``lora_adapter_metadata`` = JSON of ``{"<prefix>.r": r, "<prefix>.lora_alpha": alpha, ...}``, which diffusers
    turns into peft's ``LoraConfig``, so ``scaling = alpha / r`` survives even when alpha != r. Load it with
    ``unet.load_lora_adapter(path, prefix="unet")`` or ``pipe.load_lora_weights(folder, weight_name=...)``.
    The file holds the adapter weights B and A themselves, not merged or scaled by ``scale``.
    """
    layers = _require_lora_layers(model)
    path = _check_path(path)
    head = _check_prefix(prefix)
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{head}{name}.lora_A.weight"] = layer.lora_A.weight
        tensors[f"{head}{name}.lora_B.weight"] = layer.lora_B.weight
    metadata = {f"{head}{key}": value for key, value in _adapter_metadata(layers).items()}
    header = {"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(metadata, indent=2, sort_keys=True)}
    return atomic_save_safetensors(path, tensors, metadata=header)


def _read_metadata(path: Path) -> dict | None:
    with safe_open(str(path), framework="pt", device="cpu") as f:
        raw = (f.metadata() or {}).get(LORA_ADAPTER_METADATA_KEY)
    return json.loads(raw) if raw else None


def load_lora(model: nn.Module, path: str | os.PathLike, prefix: str | None = "unet") -> list[str]:
    """Load adapter weights written by ``save_lora`` into a model already prepared with ``inject_lora``.

    Every adapter of ``model`` must be in the file and vice versa, with the same shapes, and the file's
    r/lora_alpha (when recorded) must match the model's, otherwise ValueError. Returns the loaded module names.
    """
    layers = _require_lora_layers(model)
    path = _check_path(path)
    head = _check_prefix(prefix)
    state = load_safetensors(path)
    state = {k[len(head):]: v for k, v in state.items() if k.startswith(head)}
    expected = {f"{name}.{ab}.weight" for name in layers for ab in ("lora_A", "lora_B")}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"path {str(path)!r} does not match the model's adapters (prefix={prefix!r}): "
                         f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
                         f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}")
    _check_saved_scaling(path, head, layers)
    merged = [name for name, layer in layers.items() if layer.merged]
    if merged:
        raise ValueError(f"model's adapters {merged[:4]} are merged; call unmerge_lora(model) before load_lora")
    with torch.no_grad():
        for name, layer in layers.items():
            for ab in ("lora_A", "lora_B"):
                param, saved = getattr(layer, ab).weight, state[f"{name}.{ab}.weight"]
                if saved.shape != param.shape:
                    raise ValueError(f"path {str(path)!r} has {name}.{ab}.weight of shape {tuple(saved.shape)}, "
                                     f"the model expects {tuple(param.shape)} (different r?)")
                param.copy_(saved)
    return list(layers)


def _check_saved_scaling(path: Path, head: str, layers: dict[str, LoRALinear]) -> None:
    metadata = _read_metadata(path)
    if metadata is None:
        return  # a file without metadata carries no alpha: nothing to compare
    saved = {k[len(head):]: v for k, v in metadata.items() if k.startswith(head)}
    expected = _adapter_metadata(layers)
    for key in ("r", "lora_alpha", "rank_pattern", "alpha_pattern"):
        if key in saved and saved[key] != expected[key]:
            raise ValueError(f"path {str(path)!r} was saved with {key}={saved[key]!r} but the model's adapters "
                             f"have {key}={expected[key]!r}; inject_lora with the same LoRAConfig before loading")

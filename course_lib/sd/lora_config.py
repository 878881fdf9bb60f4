"""The settings of a LoRA fine-tuning run of Stable Diffusion, validated, with a JSON round-trip.

``LoRATrainingConfig`` uses the names of diffusers' ``train_text_to_image_lora.py`` where one exists
(``resolution``, ``learning_rate``, ``max_train_steps``, ``train_batch_size``, ``gradient_accumulation_steps``,
``snr_gamma``, ``validation_prompts``...). The run itself is ``course_lib.sd.lora_training.train_lora``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from course_lib._checks import check_choice, check_float, check_int
from course_lib._config import JSONConfig
from course_lib.sd.components import DEFAULT_MODEL_ID, DEFAULT_REVISION
from course_lib.sd.precision import MIXED_PRECISION

__all__ = ["LoRATrainingConfig"]


def _check_optional_path(name: str, value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ValueError(f"{name} must be a folder path or None, got {value!r}")
    return str(value)


@dataclass
class LoRATrainingConfig(JSONConfig):
    """Everything a LoRA run needs; ``to_dict``/``from_dict`` round-trip through JSON.

    dataset: a local image folder with ``metadata.jsonl`` or a Hub dataset id (``course_lib.data``).
    alpha: LoRA's lora_alpha (None = rank, so alpha / r = 1). mixed_precision: "auto" applies
    ``pick_precision``'s rule, or force one of "no", "fp16", "bf16". checkpoint_dir defaults to
    ``<output_dir>/checkpoints``. cache_dir: where the Hub model and the dataset's Arrow files are cached
    (default: Hugging Face's own cache, ~/.cache/huggingface). copy_checkpoints_to: a second folder (e.g. on
    Google Drive) that receives a copy of every checkpoint and is searched too by resume="latest".
    validation_every=None: no validation. train_batch_size is per process under ``accelerate launch``.
    """

    dataset: str
    output_dir: str
    pretrained_model_name_or_path: str = DEFAULT_MODEL_ID
    revision: str | None = DEFAULT_REVISION
    cache_dir: str | None = None
    dataset_split: str = "train"
    image_column: str = "image"
    caption_column: str = "text"
    resolution: int = 512
    rank: int = 4
    alpha: float | None = None
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_weight_decay: float = 1e-2
    max_train_steps: int = 1000
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    snr_gamma: float | None = None
    mixed_precision: str = "auto"
    validation_prompts: tuple[str, ...] = ()
    validation_every: int | None = None
    validation_seed: int = 0
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    checkpoint_every: int = 500
    checkpoint_dir: str | None = None
    keep_last: int = 2
    copy_checkpoints_to: str | None = None
    seed: int = 0
    resume: str | None = "latest"
    device: str | None = None

    def __post_init__(self):
        self._check_sources()
        self._check_optimization()
        self._check_outputs()

    def _check_sources(self) -> None:
        for name in ("dataset", "output_dir", "pretrained_model_name_or_path"):
            value = getattr(self, name)
            if not isinstance(value, (str, os.PathLike)) or not str(value):
                raise ValueError(f"{name} must be a non-empty str or path, got {value!r}")
            setattr(self, name, str(value))
        if self.revision is not None and (not isinstance(self.revision, str) or not self.revision):
            raise ValueError(f"revision must be a non-empty str or None, got {self.revision!r}")
        self.cache_dir = _check_optional_path("cache_dir", self.cache_dir)
        for name in ("dataset_split", "image_column", "caption_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty str, got {getattr(self, name)!r}")
        check_int("resolution", self.resolution, minimum=8)
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8 (the VAE's downsampling factor), "
                             f"got {self.resolution}")

    def _check_optimization(self) -> None:
        check_int("rank", self.rank, minimum=1)
        if self.alpha is not None:
            check_float("alpha", self.alpha, minimum=0.0, min_inclusive=False)
        if isinstance(self.target_modules, str) or not isinstance(self.target_modules, (list, tuple)) \
                or not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ValueError(f"target_modules must be a non-empty tuple of module names, got {self.target_modules!r}")
        self.target_modules = tuple(self.target_modules)
        check_float("learning_rate", self.learning_rate, minimum=0.0, min_inclusive=False)
        check_choice("lr_scheduler", self.lr_scheduler, ("constant", "cosine"))
        check_int("max_train_steps", self.max_train_steps, minimum=1)
        check_int("lr_warmup_steps", self.lr_warmup_steps, minimum=0, maximum=self.max_train_steps)
        check_float("adam_weight_decay", self.adam_weight_decay, minimum=0.0)
        check_int("train_batch_size", self.train_batch_size, minimum=1)
        check_int("gradient_accumulation_steps", self.gradient_accumulation_steps, minimum=1)
        if self.max_grad_norm is not None:
            check_float("max_grad_norm", self.max_grad_norm, minimum=0.0, min_inclusive=False)
        for name in ("gradient_checkpointing", "use_8bit_adam"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.use_8bit_adam and not _bitsandbytes_available():
            raise ValueError("use_8bit_adam=True needs the bitsandbytes package (pip install bitsandbytes, "
                             "CUDA only); it could not be imported")
        if self.snr_gamma is not None:
            check_float("snr_gamma", self.snr_gamma, minimum=0.0, min_inclusive=False)
        check_choice("mixed_precision", self.mixed_precision, ("auto",) + MIXED_PRECISION)

    def _check_outputs(self) -> None:
        if isinstance(self.validation_prompts, str) or not isinstance(self.validation_prompts, (list, tuple)) \
                or not all(isinstance(p, str) for p in self.validation_prompts):
            raise ValueError(f"validation_prompts must be a tuple of strings, got {self.validation_prompts!r}")
        self.validation_prompts = tuple(self.validation_prompts)
        if self.validation_every is not None:
            check_int("validation_every", self.validation_every, minimum=1)
            if not self.validation_prompts:
                raise ValueError(f"validation_every={self.validation_every} needs validation_prompts, got none")
        check_int("validation_seed", self.validation_seed, minimum=0)
        check_int("num_inference_steps", self.num_inference_steps, minimum=1)
        check_float("guidance_scale", self.guidance_scale, minimum=0.0)
        check_int("checkpoint_every", self.checkpoint_every, minimum=1)
        check_int("keep_last", self.keep_last, minimum=1)
        self.checkpoint_dir = _check_optional_path("checkpoint_dir", self.checkpoint_dir)
        self.copy_checkpoints_to = _check_optional_path("copy_checkpoints_to", self.copy_checkpoints_to)
        check_int("seed", self.seed, minimum=0)
        if self.resume not in (None, "latest"):
            raise ValueError(f"resume must be 'latest' or None, got {self.resume!r}")
        if self.device is not None:
            if not isinstance(self.device, str):
                raise ValueError(f"device must be a str such as 'cuda' or None, got {self.device!r}")
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda', "
                                 f"got {self.device!r}") from None

    @property
    def checkpoint_folder(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else Path(self.output_dir) / "checkpoints"


def _bitsandbytes_available() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # ImportError, or a CUDA setup error raised at import
        return False
    return True

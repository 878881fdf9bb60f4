"""Which floating-point precision to train LoRA in, decided from the device.

Glossary:
    fp32        float32: 8 exponent bits, 23 mantissa bits. Safe everywhere, slow and big on a GPU.
    fp16        float16: 5 exponent bits. Small gradients underflow to 0, so the loss is multiplied by a large
                factor S before backward and the gradients divided by S before the step (``GradScaler``).
    bf16        bfloat16: fp32's 8 exponent bits with 7 mantissa bits: no underflow, no scaler needed.
                Tensor cores support it from compute capability 8.0 (Ampere: A100, RTX 30xx, L4).
    autocast    runs matmuls/convolutions in the low precision while keeping reductions in fp32.

The rule (the same one diffusers' training scripts leave to the user):
    CUDA with capability >= 8.0 (A100, L4)  -> bf16 autocast, frozen weights stored in bf16
    other CUDA (Colab's T4 is 7.5)          -> fp16 autocast + GradScaler, frozen weights stored in fp16
    CPU / MPS                               -> fp32, no autocast
In every case the trainable LoRA parameters stay fp32: an optimizer update of size 1e-4 * w vanishes when
added to a half-precision w, and Adam's second moments need fp32's range.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from course_lib._checks import check_choice

__all__ = ["Precision", "MIXED_PRECISION", "precision_for", "pick_precision"]

MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass(frozen=True)
class Precision:
    device: torch.device
    mixed_precision: str            # accelerate's names: "no", "fp16", "bf16"
    weight_dtype: torch.dtype       # frozen UNet / VAE / text-encoder weights
    autocast_dtype: torch.dtype | None
    use_grad_scaler: bool
    lora_dtype: torch.dtype = torch.float32

    def autocast(self):
        """Context manager for the forward pass (a no-op in fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is active only for fp16 (a disabled one passes the loss through unchanged)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.use_grad_scaler)


def _as_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"device must be a str, a torch.device or None, got {device!r}")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None


def precision_for(device: str | torch.device | None, mixed_precision: str) -> Precision:
    """The ``Precision`` of one of accelerate's names: "no" (fp32), "fp16" (+ GradScaler) or "bf16"."""
    check_choice("mixed_precision", mixed_precision, MIXED_PRECISION)
    device = _as_device(device)
    if mixed_precision == "no":
        return Precision(device, "no", torch.float32, None, use_grad_scaler=False)
    dtype = torch.float16 if mixed_precision == "fp16" else torch.bfloat16
    return Precision(device, mixed_precision, dtype, dtype, use_grad_scaler=mixed_precision == "fp16")


def pick_precision(device: str | torch.device | None = None) -> Precision:
    """The precision rule above for ``device`` (default: CUDA if available, else CPU)."""
    device = _as_device(device)
    if device.type != "cuda":
        return precision_for(device, "no")
    capability = torch.cuda.get_device_capability(device)
    return precision_for(device, "bf16" if tuple(capability) >= (8, 0) else "fp16")

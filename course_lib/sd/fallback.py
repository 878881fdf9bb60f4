"""Which Stable Diffusion a notebook runs: the real SD v1.5 where it can be loaded, else its tiny twin.

Lectures 7-10 run every cell unchanged on both. On a GPU with network they load SD v1.5 (about 4 GB); on a
laptop, offline, or when the download fails they fall back to ``build_tiny_sd``'s random-weight twin (the same
diffusers classes, small widths), built once into a folder and reused.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch

from course_lib.sd.components import (DEFAULT_MODEL_ID, DEFAULT_REVISION, ModelNotAvailableError, SDComponents,
                                      load_sd_components)
from course_lib.sd.tiny import build_tiny_sd

__all__ = ["TINY_FOLDER", "LoadedModel", "tiny_model_folder", "load_model_or_tiny"]

TINY_FOLDER = Path("outputs/tiny-sd")  # relative to the notebook: everything a lecture writes goes under outputs/


class LoadedModel(NamedTuple):
    components: SDComponents
    source: str      # the hub id or folder the weights came from
    is_tiny: bool    # True: the random-weight twin (pictures are textures, not photos)


def tiny_model_folder(folder: str | os.PathLike = TINY_FOLDER) -> Path:
    """The tiny twin of SD v1.5 in ``folder``: built on first use (atomically), reused afterwards."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        build_tiny_sd(folder, seed=0)
    return folder


def load_model_or_tiny(model: str = "auto", revision: str | None = None, *, device: str | torch.device = "cpu",
                       dtype: torch.dtype | None = None, tiny_folder: str | os.PathLike = TINY_FOLDER) -> LoadedModel:
    """Load ``model`` (a hub id or a diffusers folder) on ``device``, or the tiny twin if it cannot be loaded here.

    model     "auto": SD v1.5 (``DEFAULT_MODEL_ID``) on a CUDA device, the tiny twin elsewhere; "tiny": the twin
    revision  the hub commit to try first (None: the course's pinned ``DEFAULT_REVISION``), then "main"
    dtype     for the real model (fp16 halves its memory on a GPU); the twin always loads in float32
    """
    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be 'auto', 'tiny', a hub id or a folder, got {model!r}")
    if model == "auto":
        model = DEFAULT_MODEL_ID if torch.device(device).type == "cuda" else "tiny"
    if model != "tiny":
        reason = ""
        for rev in dict.fromkeys([revision or DEFAULT_REVISION, "main"]):
            try:
                return LoadedModel(load_sd_components(model, rev, torch_dtype=dtype, device=device), model, False)
            except ModelNotAvailableError as err:
                reason = str(err).split(". Without network")[0][-300:]
        print(f"Could not load {model!r} here, so this run uses the tiny offline model instead.\n"
              f"  reason: ...{reason}")
    folder = tiny_model_folder(tiny_folder)
    return LoadedModel(load_sd_components(folder, device=device), str(folder), True)

"""Stable Diffusion v1.5 in the course: load it, know its architecture, build a tiny twin, fine-tune with LoRA.

    architecture  the real v1.5's configs and sizes as facts (``sd15_config``, ``sd15_empty_model``)
    components    ``load_sd_components`` / ``load_pipeline``: hub id at a pinned revision, or a local folder
    tiny          ``build_tiny_sd``: the same classes with random weights, small enough for a CPU
    precision     ``pick_precision``: fp32 / fp16 + GradScaler / bf16 from the device
"""
from course_lib.sd.architecture import (SD15_COMPONENTS, SD15_SCHEDULER, SD15_TOKENIZER, count_parameters,
                                        sd15_config, sd15_empty_model)
from course_lib.sd.components import (DEFAULT_MODEL_ID, DEFAULT_REVISION, ModelNotAvailableError, SDComponents,
                                      load_pipeline, load_sd_components)
from course_lib.sd.precision import Precision, pick_precision
from course_lib.sd.tiny import build_tiny_sd, tiny_tokenizer_files

__all__ = ["SD15_COMPONENTS", "SD15_SCHEDULER", "SD15_TOKENIZER", "count_parameters", "sd15_config",
           "sd15_empty_model", "DEFAULT_MODEL_ID", "DEFAULT_REVISION", "ModelNotAvailableError", "SDComponents",
           "load_pipeline", "load_sd_components", "Precision", "pick_precision", "build_tiny_sd",
           "tiny_tokenizer_files"]

"""Stable Diffusion v1.5 in the course: load it, know its architecture, build a tiny twin, fine-tune with LoRA.

    architecture  the real v1.5's configs and sizes as facts (``sd15_config``, ``sd15_empty_model``)
    components    ``load_sd_components`` / ``load_pipeline``: hub id at a pinned revision, or a local folder
    tiny          ``build_tiny_sd``: the same classes with random weights, small enough for a CPU
    precision     ``pick_precision``: fp32 / fp16 + GradScaler / bf16 from the device
    lora_config   ``LoRATrainingConfig``: the settings of a LoRA run
    lora_training ``train_lora``: LoRA fine-tuning with checkpoints, exact resume, validation images
    lora_accelerate ``train_lora_accelerate``: the same run on N GPUs with ``accelerate`` (data parallel)
    launch        ``python -m course_lib.sd.launch`` / ``accelerate launch -m course_lib.sd.launch``: its CLI
    generation    ``generate`` / ``before_after_grid``: fixed seeds, LoRA scale 0 vs 1
"""
from course_lib.sd.architecture import (SD15_COMPONENTS, SD15_SCHEDULER, SD15_TOKENIZER, count_parameters,
                                        sd15_config, sd15_empty_model)
from course_lib.sd.components import (DEFAULT_MODEL_ID, DEFAULT_REVISION, ModelNotAvailableError, SDComponents,
                                      load_pipeline, load_sd_components)
from course_lib.sd.generation import before_after_grid, generate
from course_lib.sd.lora_accelerate import train_lora_accelerate
from course_lib.sd.lora_config import LoRATrainingConfig
from course_lib.sd.lora_training import (LORA_WEIGHT_NAME, LoRATrainingResult, encode_images, encode_prompts,
                                         min_snr_weights, noise_prediction_loss, train_lora)
from course_lib.sd.precision import Precision, pick_precision, precision_for
from course_lib.sd.tiny import build_tiny_sd, tiny_tokenizer_files

__all__ = ["SD15_COMPONENTS", "SD15_SCHEDULER", "SD15_TOKENIZER", "count_parameters", "sd15_config",
           "sd15_empty_model", "DEFAULT_MODEL_ID", "DEFAULT_REVISION", "ModelNotAvailableError", "SDComponents",
           "load_pipeline", "load_sd_components", "Precision", "pick_precision", "precision_for", "build_tiny_sd",
           "tiny_tokenizer_files", "LoRATrainingConfig", "LoRATrainingResult", "LORA_WEIGHT_NAME", "train_lora",
           "train_lora_accelerate",
           "encode_images", "encode_prompts", "min_snr_weights", "noise_prediction_loss", "generate",
           "before_after_grid"]

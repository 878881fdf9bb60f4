"""Command line for LoRA fine-tuning of Stable Diffusion v1.5, on one GPU or on several with ``accelerate``.

    # one process: the GPU if there is one, else the CPU
    python -m course_lib.sd.launch --dataset data/my_images --output_dir outputs/lora --max_train_steps 2000

    # all 4 GPUs of this machine: 4 processes, each with train_batch_size images per micro-batch
    accelerate launch --multi_gpu --num_processes 4 -m course_lib.sd.launch --config lora.json

    # the same program in one CPU process (what the tests run)
    accelerate launch --num_processes 1 --cpu -m course_lib.sd.launch --config lora.json

Every option is a field of ``LoRATrainingConfig``, with the same name and meaning. ``--config file.json``
reads the fields from a JSON file (a previous run's ``training_config.json`` works); options given on the
command line override it. Write ``none`` for None, ``true``/``false`` for booleans, and list several words
after ``--validation_prompts`` or ``--target_modules``. Precision comes from ``--mixed_precision`` (default
"auto": bf16 on Ampere or newer, fp16 on older GPUs, fp32 on CPU), not from accelerate's flag of that name.
Run it again with the same options to resume from the newest checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from course_lib.sd.lora_config import LoRATrainingConfig

__all__ = ["build_parser", "parse_config", "main"]


def _optional(parse):
    def parse_or_none(text: str):
        return None if text.lower() == "none" else parse(text)
    parse_or_none.__name__ = parse.__name__  # argparse names the type in its error messages
    return parse_or_none


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# the annotations of LoRATrainingConfig's fields (strings, as written in lora_config.py) -> how to parse them
_PARSERS = {"str": str, "str | None": _optional(str), "int": int, "int | None": _optional(int), "float": float,
            "float | None": _optional(float), "bool": _boolean}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_lib.sd.launch", description=__doc__.split("\n\n")[0],
                                     epilog="Multi-GPU: accelerate launch --multi_gpu --num_processes N "
                                            "-m course_lib.sd.launch [options]")
    parser.add_argument("--config", help="JSON file of LoRATrainingConfig fields; options below override it")
    for field in fields(LoRATrainingConfig):
        default = "required" if field.default is MISSING else f"default {field.default!r}"
        if field.type == "tuple[str, ...]":
            parser.add_argument(f"--{field.name}", nargs="*", default=argparse.SUPPRESS, help=default)
        else:
            parser.add_argument(f"--{field.name}", type=_PARSERS[field.type], default=argparse.SUPPRESS,
                                help=default)
    return parser


def parse_config(argv: list[str] | None = None) -> LoRATrainingConfig:
    """The ``LoRATrainingConfig`` of a command line: ``--config`` file first, then the options given."""
    args = vars(build_parser().parse_args(argv))
    settings = {}
    config_file = args.pop("config", None)
    if config_file is not None:
        try:
            settings = json.loads(Path(config_file).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"--config must name a readable JSON file, got {config_file!r} ({err})") from None
        if not isinstance(settings, dict):
            raise ValueError(f"--config must hold a JSON object of LoRATrainingConfig fields, got {config_file!r}")
    missing = [name for name in ("dataset", "output_dir") if name not in {**settings, **args}]
    if missing:
        raise ValueError(f"{' and '.join('--' + name for name in missing)} must be given (or set in --config)")
    return LoRATrainingConfig.from_dict({**settings, **args})


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_config(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    from course_lib.sd.lora_accelerate import train_lora_accelerate
    result = train_lora_accelerate(config)
    if PartialState().is_main_process:
        resumed = "" if result.resumed_from is None else f", resumed from step {result.resumed_from}"
        print(f"wrote {result.lora_path} after {len(result.losses)} updates{resumed}; "
              f"last loss {result.losses[-1]:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

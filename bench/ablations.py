"""Benchmark: what each design choice of the miniature Stable Diffusion buys (the UNet stage, re-trained per variant).

    .venv/bin/python bench/ablations.py [--base outputs/demo] [--unet-steps 2500] [--only NAME ...]

Every variant re-trains only the UNet, on the VAE, CLIP and evaluator of one finished demo run (``--base``,
default the folder `make demo` wrote), with one design choice changed against the default recipe, then samples
and judges it exactly as the demo does. Prints seen and held-out prompt accuracy, the FID-like distance and
the UNet's training time for each. Variants are written to ``<base>/ablations/<name>/`` and resume if
interrupted (a finished variant is not re-trained).
"""
import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch

from course_lib.demo import run_demo
from course_lib.minisd import MiniSDConfig

# name -> (what changes, overrides of MiniSDConfig)
VARIANTS = {
    "default": ("the default recipe", {}),
    "no-ema": ("sample the raw weights (EMA decay 0)", {"ema_decay": 0.0}),
    "plain-mse": ("no min-SNR-5 weighting", {"snr_gamma": None}),
    "hidden-states-only": ("condition on the text encoder's last hidden states only (as SD v1.5)",
                           {"text_features": "last_hidden_state"}),
    "no-cond-dropout": ("no condition dropout (guidance has no unconditional model to push away from)",
                        {"cond_dropout": 0.0, "guidance_scale": 1.0}),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="outputs/demo", help="a finished demo folder (vae/, clip/, evaluator/)")
    parser.add_argument("--unet-steps", type=int, default=None, help="UNet steps per variant (default: the recipe's)")
    parser.add_argument("--seeds-per-prompt", type=int, default=8)
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="run these variants only")
    args = parser.parse_args()
    base = Path(args.base)
    missing = [name for name in ("vae", "clip", "evaluator", "config.json") if not (base / name).exists()]
    if missing:
        print(f"error: --base {base} is not a finished demo folder (missing {missing}); run `make demo` first",
              file=sys.stderr)
        return 2
    if args.unet_steps is not None and args.unet_steps < 1:
        parser.error(f"--unet-steps must be >= 1, got {args.unet_steps}")
    recipe = MiniSDConfig.from_dict(json.loads((base / "config.json").read_text()))
    rows = []
    for name in args.only or list(VARIANTS):
        what, overrides = VARIANTS[name]
        if args.unet_steps is not None:
            overrides = {**overrides, "unet_steps": args.unet_steps}
        config = dataclasses.replace(recipe, **overrides)
        folder = base / "ablations" / name
        folder.mkdir(parents=True, exist_ok=True)
        for stage in ("vae", "clip", "evaluator"):  # shared, frozen: only the UNet differs
            if not (folder / stage).exists():
                shutil.copytree(base / stage, folder / stage)
        print(f"== {name}: {what}", flush=True)
        report = run_demo(config, folder, seeds_per_prompt=args.seeds_per_prompt)
        q = report["prompt_accuracy"]
        rows.append((name, q["seen"]["joint_acc"], q["held_out"]["joint_acc"] if q["held_out"] else float("nan"),
                     q["fid_like"], report["unet"]["seconds"], what))
    print(f"\n{'variant':20s} {'seen acc':>9s} {'held-out':>9s} {'FID-like':>9s} {'UNet s':>7s}  change")
    for name, seen, held, fid, seconds, what in rows:
        print(f"{name:20s} {seen:9.3f} {held:9.3f} {fid:9.2f} {seconds:7.0f}  {what}")
    print(f"(torch threads: {torch.get_num_threads()}, {args.seeds_per_prompt} seeds per prompt, "
          f"UNet steps {args.unet_steps or recipe.unet_steps})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

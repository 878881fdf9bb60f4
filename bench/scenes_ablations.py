"""Benchmark: what each choice of the scenes recipe buys (conditioning, text encoder, guidance scale, sampler).

    .venv/bin/python bench/scenes_ablations.py [--base outputs/demo] [--unet-steps N] [--only NAME ...]
                                               [--guidance-scales 1 3 5] [--layout-scales 0 1 2] [--samplers]

Training variants re-train what the choice touches on top of one finished scenes demo (``--base``): the UNet
alone for the conditioning, CLIP and the UNet for the text encoder; the VAE and the judge are shared. Sampling
variants (``--guidance-scales``, ``--layout-scales``, ``--samplers``) re-sample the base pipeline only. Every
row is judged like the demo: binding, relation and count on seen and held-out prompts, KID against real scenes.
"""
import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch

from course_lib.minisd import MiniSDConfig
from course_lib.pipeline import MiniSDPipeline
from course_lib.metrics import ShapeEvaluator
from course_lib.scenes_demo import evaluate_scenes, run_scenes_demo
from course_lib.schedulers import DDIMScheduler, DDPMScheduler

# name -> (what changes, overrides of the base config, stages re-trained)
VARIANTS = {
    "default": ("the recipe", {}, ("unet",)),
    "sd-v15-conditioning": ("SD v1.5's conditioning: a frozen text encoder's last hidden states only",
                            {"text_features": "last_hidden_state", "train_text_encoder": False}, ("unet",)),
    "hidden-states-only": ("the text encoder's last hidden states only (trained with the UNet if the base's is)",
                           {"text_features": "last_hidden_state"}, ("unet",)),
    "bidirectional": ("a bidirectional text encoder (every token sees the whole caption)",
                      {"clip": {"causal": False}}, ("clip", "unet")),
    "train-text-encoder": ("the text encoder trained with the UNet's loss (SD keeps CLIP frozen)",
                           {"train_text_encoder": True}, ("unet",)),
    "bidirectional-train-text-encoder": ("a bidirectional text encoder, trained with the UNet's loss too",
                                         {"clip": {"causal": False}, "train_text_encoder": True}, ("clip", "unet")),
    "coordinates": ("two coordinate channels (x, y) appended to the UNet's input (CoordConv)",
                    {"unet": {"coordinate_channels": True}}, ("unet",)),
    "train-text-encoder-coordinates": ("the text encoder trained with the UNet, and coordinate channels",
                                       {"train_text_encoder": True, "unet": {"coordinate_channels": True}},
                                       ("unet",)),
    "attention-8x8": ("cross-attention at the 8x8 level too (like SD, whose finest level attends), FF width 2x",
                      {"unet": {"attention_levels": (0, 1), "ff_mult": 2}}, ("unet",)),
    "unet-lr-2e-3": ("twice the UNet's learning rate (2e-3)", {"unet_lr": 2e-3}, ("unet",)),
    "unet-batch-64-2200": ("the UNet's batch of 64 for 2200 steps (the previous recipe; about the same time)",
                           {"unet_batch_size": 64, "unet_steps": 2200}, ("unet",)),
    "unet-batch-16": ("the UNet's batch of 16 for 5000 steps (a step of 16 timed at 0.66 of one of 32)",
                      {"unet_batch_size": 16, "unet_steps": 5000}, ("unet",)),
    "bidirectional-hidden-only": ("bidirectional text encoder, hidden states only",
                                  {"clip": {"causal": False}, "text_features": "last_hidden_state"},
                                  ("clip", "unet")),
}


def _row(name, q, what):
    return (name, q["binding"]["seen"], q["binding"]["held_out"], q["relation"]["seen"], q["relation"]["held_out"],
            q["count"]["seen"], q["kid"]["generated_vs_real"], q["kid"]["standard_error"], what)


def _print(rows, kid_real):
    print(f"\n{'variant':26s} {'bind seen':>9s} {'bind held':>9s} {'rel seen':>8s} {'rel held':>8s} {'count':>6s}"
          f" {'KID +- SE':>18s}  change")
    for name, bs, bh, rs, rh, c, kid, se, what in rows:
        print(f"{name:26s} {bs:9.3f} {bh:9.3f} {rs:8.3f} {rh:8.3f} {c:6.3f} {kid:9.4f} +-{se:7.4f}  {what}")
    print(f"(real vs real KID {kid_real:.4f}; torch threads {torch.get_num_threads()})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="outputs/demo", help="a finished scenes demo folder")
    parser.add_argument("--unet-steps", type=int, help="UNet steps per training variant (default: the recipe's)")
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="training variants to run (none: [])")
    parser.add_argument("--guidance-scales", type=float, nargs="*", default=[])
    parser.add_argument("--layout-scales", type=float, nargs="*", default=[],
                        help="layout guidance step lengths to compare (0: none)")
    parser.add_argument("--samplers", action="store_true", help="DDIM 10/25/50 and DDPM 1000 on the base model")
    args = parser.parse_args()
    base = Path(args.base)
    if not (base / "report.json").is_file() or json.loads((base / "config.json").read_text()).get("world") != "scenes":
        print(f"error: --base {base} is not a finished scenes demo; run `make demo` first", file=sys.stderr)
        return 2
    recipe = MiniSDConfig.from_dict(json.loads((base / "config.json").read_text()))
    kid_real = json.loads((base / "report.json").read_text())["kid"]["real_vs_real"]
    rows = []
    for name in args.only if args.only is not None else list(VARIANTS):
        what, overrides, retrained = VARIANTS[name]
        overrides = dict(overrides)
        for part in ("clip", "unet"):
            if part in overrides:
                overrides[part] = dataclasses.replace(getattr(recipe, part), **overrides[part])
        if args.unet_steps is not None:
            overrides["unet_steps"] = args.unet_steps
        config = dataclasses.replace(recipe, **overrides)
        folder = base / "ablations" / name
        folder.mkdir(parents=True, exist_ok=True)
        for stage in ("vae", "clip", "evaluator"):
            if stage not in retrained and not (folder / stage).exists():
                shutil.copytree(base / stage, folder / stage)
        print(f"== {name}: {what}", flush=True)
        report = run_scenes_demo(config, folder, num_images=args.num_images)
        rows.append(_row(name, report, what))
    pipe = MiniSDPipeline.from_pretrained(base / "pipeline")
    judge = ShapeEvaluator.from_pretrained(base / "evaluator")
    for scale in args.guidance_scales:
        q, _ = evaluate_scenes(pipe, judge, recipe, args.num_images, args.num_images * 2 // 5, guidance_scale=scale)
        rows.append(_row(f"guidance {scale:g}", q, "DDIM 25, the base model"))
    for scale in args.layout_scales:
        q, _ = evaluate_scenes(pipe, judge, recipe, args.num_images, args.num_images * 2 // 5,
                               layout_guidance_scale=scale)
        rows.append(_row(f"layout guidance {scale:g}", q, f"first {recipe.layout_guidance_steps} steps, base model"))
    if args.samplers:
        common = dict(num_train_timesteps=recipe.num_train_timesteps, beta_schedule=recipe.beta_schedule,
                      beta_start=0.00085, beta_end=0.012, clip_sample=False)
        for label, steps, scheduler in [("DDIM 10", 10, None), ("DDIM 25", 25, None), ("DDIM 50", 50, None),
                                        ("DDPM 1000", 1000, DDPMScheduler(**common))]:
            pipe.scheduler = scheduler or DDIMScheduler(**common, set_alpha_to_one=False, steps_offset=1)
            q, _ = evaluate_scenes(pipe, judge, recipe, args.num_images, args.num_images * 2 // 5,
                                   num_inference_steps=steps)
            rows.append(_row(label, q, f"{q['sampling_seconds']:.0f} s sampling"))
    _print(rows, kid_real)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: DDIM with 10/25/50 steps vs DDPM with 1000 steps on the trained miniature Stable Diffusion.

    .venv/bin/python bench/samplers.py [--pipeline outputs/demo/pipeline] [--seeds-per-prompt 8]

Loads the pipeline `make demo` saved (run `make demo` first), samples every prompt with each sampler (same
seeds, same guidance scale), and prints the sampling wall time (text encoding, denoising loop and VAE decode;
the judging afterwards is not timed), the speed-up over DDPM-1000 and prompt accuracy judged by the demo's
evaluator. Target: 25-step DDIM >= 35x faster than 1000-step DDPM, losing <= 3 points of accuracy.
``--guidance-scales 1 3 5`` adds a sweep of DDIM-25 over the guidance scale.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

from course_lib.demo import evaluate_pipeline
from course_lib.metrics import ShapeEvaluator
from course_lib.minisd import MiniSDConfig
from course_lib.pipeline import MiniSDPipeline
from course_lib.schedulers import DDIMScheduler, DDPMScheduler


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default="outputs/demo/pipeline")
    parser.add_argument("--seeds-per-prompt", type=int, default=8)
    parser.add_argument("--guidance-scales", type=float, nargs="*", default=[],
                        help="also sweep DDIM-25 over these guidance scales")
    args = parser.parse_args()
    if args.seeds_per_prompt < 1:
        parser.error(f"--seeds-per-prompt must be >= 1, got {args.seeds_per_prompt}")
    if any(w < 0 for w in args.guidance_scales):
        parser.error(f"--guidance-scales must be >= 0, got {args.guidance_scales}")
    folder = Path(args.pipeline)
    if not (folder / "pipeline.json").is_file():
        print(f"error: no trained pipeline in {folder}; run `make demo` first", file=sys.stderr)
        return 2
    demo_dir = folder.parent
    config = MiniSDConfig.from_dict(json.loads((demo_dir / "config.json").read_text()))
    pipe = MiniSDPipeline.from_pretrained(folder)
    evaluator = ShapeEvaluator.from_pretrained(demo_dir / "evaluator")
    common = dict(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                  beta_start=0.00085, beta_end=0.012, clip_sample=False)
    samplers = [("DDPM", 1000, DDPMScheduler(**common))]
    samplers += [("DDIM", n, DDIMScheduler(**common, set_alpha_to_one=False, steps_offset=1)) for n in (10, 25, 50)]
    results = []
    for name, steps, scheduler in samplers:
        pipe.scheduler = scheduler
        quality, _ = evaluate_pipeline(pipe, evaluator, config, args.seeds_per_prompt, num_inference_steps=steps)
        seconds = quality["sampling_seconds"]
        results.append((name, steps, seconds, quality["seen"]["joint_acc"], quality["held_out"]["joint_acc"],
                        quality["fid_like"]))
        print(f"{name}-{steps}: {seconds:.1f} s", flush=True)
    base_seconds, base_acc = results[0][2], results[0][3]
    print(f"\n{'sampler':10s} {'seconds':>8s} {'speed-up':>9s} {'seen acc':>9s} {'held-out':>9s} {'FID-like':>9s}"
          f" {'acc - DDPM':>10s}")
    for name, steps, seconds, seen, held, fid in results:
        print(f"{name + '-' + str(steps):10s} {seconds:8.1f} {base_seconds / seconds:8.1f}x {seen:9.3f} {held:9.3f}"
              f" {fid:9.2f} {100 * (seen - base_acc):+9.1f}pt")
    print(f"(torch threads: {torch.get_num_threads()}, {len(config.held_out_pairs)} held-out pairs, "
          f"{args.seeds_per_prompt} seeds per prompt, guidance {config.guidance_scale})")
    if args.guidance_scales:
        pipe.scheduler = next(scheduler for name, steps, scheduler in samplers if (name, steps) == ("DDIM", 25))
        print(f"\n{'guidance':>8s} {'seen acc':>9s} {'colour':>7s} {'shape':>7s} {'held-out':>9s} {'FID-like':>9s}")
        for scale in args.guidance_scales:
            quality, _ = evaluate_pipeline(pipe, evaluator, config, args.seeds_per_prompt, num_inference_steps=25,
                                           guidance_scale=scale)
            seen, held = quality["seen"], quality["held_out"]
            print(f"{scale:8.1f} {seen['joint_acc']:9.3f} {seen['colour_acc']:7.3f} {seen['shape_acc']:7.3f} "
                  f"{held['joint_acc'] if held else float('nan'):9.3f} {quality['fid_like']:9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

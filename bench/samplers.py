"""Benchmark: DDIM with 10/25/50 steps vs DDPM with 1000 steps on the trained miniature Stable Diffusion.

    .venv/bin/python bench/samplers.py [--pipeline outputs/demo/pipeline] [--seeds-per-prompt 8]

Loads the pipeline `make demo` saved (run `make demo` first), samples every prompt with each sampler (same
seeds, same guidance scale), and prints wall time, the speed-up over DDPM-1000 and prompt accuracy judged by
the demo's evaluator. Target: 25-step DDIM >= 35x faster than 1000-step DDPM, losing <= 3 points of accuracy.
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
    args = parser.parse_args()
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
        start = time.perf_counter()
        quality, _ = evaluate_pipeline(pipe, evaluator, config, args.seeds_per_prompt, num_inference_steps=steps)
        seconds = time.perf_counter() - start
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
    return 0


if __name__ == "__main__":
    sys.exit(main())

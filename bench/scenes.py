"""Benchmark: the default scenes demo (`make demo`) from scratch, and its figures next to the targets.

    .venv/bin/python bench/scenes.py [--out outputs/bench-scenes] [--keep] [--threads N] [--seed S]

Trains every stage from scratch (the folder is emptied first unless --keep, which resumes), then prints the
training time, the judge's accuracy on held-out real scenes, the VAE's reconstruction at f = 8, binding,
relation and count accuracy (DDIM 25 steps, guidance 3) on seen and held-out combinations, and KID with its
standard error next to the real-vs-real reference.
"""
import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

from course_lib.minisd import MiniSDConfig
from course_lib.scenes_demo import run_scenes_demo, scenes_summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/bench-scenes")
    parser.add_argument("--keep", action="store_true", help="resume instead of starting from scratch")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="the recipe's seed: data, initialisations, sampling "
                        "(default 0, the demo's)")
    parser.add_argument("--num-images", type=int, default=500, help="generated images on seen prompts (>= 20)")
    args = parser.parse_args()
    if args.num_images < 20:
        parser.error(f"--num-images must be >= 20, got {args.num_images}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    start = time.perf_counter()
    report = run_scenes_demo(MiniSDConfig.scenes(seed=args.seed), out, num_images=args.num_images)
    wall = time.perf_counter() - start
    print(scenes_summary(report, out))
    kid = report["kid"]
    within = abs(kid["generated_vs_real"] - kid["real_vs_real"]) <= 2 * kid["standard_error"]
    rows = [
        ("total training time (min)", report["total_train_seconds"] / 60, "<= 10"),
        ("whole run incl. evaluation (min)", wall / 60, ""),
        ("judge colour / shape (held-out real)", "{colour_acc:.3f} / {shape_acc:.3f}".format(
            **report["evaluator"]["held_out_pairs"]), ">= 0.99"),
        ("VAE PSNR at f = 8 (dB)", report["vae"]["reconstruction"]["psnr_db"], ""),
        ("binding, seen", report["binding"]["seen"], ">= 0.90"),
        ("binding, held-out", report["binding"]["held_out"], ">= 0.80"),
        ("relation, seen", report["relation"]["seen"], ">= 0.90"),
        ("count, seen", report["count"]["seen"], ">= 0.95"),
        ("KID within 2 SE of real-vs-real", str(within), "True (N >= 500)"),
    ]
    print(f"\n{'figure':38s} {'measured':>14s}  target   (torch threads: {torch.get_num_threads()})")
    for name, value, target in rows:
        shown = f"{value:.3f}" if isinstance(value, float) else value
        print(f"{name:38s} {shown:>14s}  {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the full default `make demo` from scratch, and the figures it reports.

    .venv/bin/python bench/demo.py [--out outputs/bench-demo] [--keep]

Trains every stage from scratch (the output folder is emptied first unless --keep), then prints training time
per stage, the evaluator's accuracy on real images, prompt accuracy on seen and held-out pairs, and the
FID-like distance, next to the targets of the course's design (<= 10 min training, >= 0.95 / >= 0.80).
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from course_lib.demo import run_demo, summary
from course_lib.minisd import MiniSDConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/bench-demo")
    parser.add_argument("--keep", action="store_true", help="resume instead of starting from scratch")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    start = time.perf_counter()
    report = run_demo(MiniSDConfig(), out)
    wall = time.perf_counter() - start
    print(summary(report, out))
    q = report["prompt_accuracy"]
    rows = [
        ("total training time (min)", report["total_training_seconds"] / 60, "<= 10"),
        ("whole run incl. evaluation (min)", wall / 60, ""),
        ("evaluator shape acc (real)", report["evaluator"]["shape_acc"], ">= 0.99"),
        ("evaluator colour acc (real)", report["evaluator"]["colour_acc"], ">= 0.99"),
        ("prompt accuracy, seen pairs", q["seen"]["joint_acc"], ">= 0.95"),
        ("prompt accuracy, held-out pairs", q["held_out"]["joint_acc"], ">= 0.80"),
        ("FID-like (real vs real)", f"{q['fid_like']:.2f} ({q['fid_like_real_vs_real']:.2f})", "lower is better"),
    ]
    print(f"\n{'figure':36s} {'measured':>16s}  target   (torch threads: {torch.get_num_threads()})")
    for name, value, target in rows:
        shown = f"{value:.3f}" if isinstance(value, float) else value
        print(f"{name:36s} {shown:>16s}  {target}")
    print(json.dumps(report["training_seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

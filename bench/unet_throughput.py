"""Training throughput of course_lib's UNet vs diffusers' UNet2DConditionModel with the same architecture.

Both networks are built from one ``UNetConfig`` (same widths, layers per block, attention placement, heads,
cross_attention_dim, time embedding, norms) and start from the *same weights* (ours is copied from diffusers'),
so they compute the same function; only the implementation differs. One training step = forward + MSE loss +
backward + ``torch.optim.AdamW`` step on the same batch. The two models are timed alternately, in rounds whose
order flips every round, after a warm-up, in one process with the same ``torch.set_num_threads``; we report the
median steps/second of each and their ratio.

    .venv/bin/python bench/unet_throughput.py                 # defaults: small preset, batch 64 of 4x8x8, 8 tokens
    .venv/bin/python bench/unet_throughput.py --size 16 --batch 32 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from course_lib.unet import UNet, UNetConfig


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=["tiny", "small"], default="small")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=8, help="latent height = width")
    p.add_argument("--tokens", type=int, default=8, help="number of text tokens in the context")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=5, help="timed training steps per model per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for both (default: unchanged)")
    return p.parse_args()


def build_models(config: UNetConfig):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    theirs = UNet2DConditionModel(**config.to_diffusers_kwargs())
    ours = UNet.from_diffusers(theirs)
    return ours, theirs


def make_step(model, batch, call):
    sample, t, context, target = batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = F.mse_loss(call(model, sample, t, context), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(step, n: int) -> tuple[float, float]:
    """Steps per second of wall-clock time and per second of this process's CPU time."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def main():
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = getattr(UNetConfig, args.preset)()
    ours, theirs = build_models(config)
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, config.in_channels, args.size, args.size)
    batch = (torch.randn(shape, generator=g), torch.randint(0, 1000, (args.batch,), generator=g),
             torch.randn(args.batch, args.tokens, config.context_dim, generator=g), torch.randn(shape, generator=g))
    with torch.no_grad():  # same weights -> same function (sanity check of the comparison itself)
        diff = (ours(*batch[:3]) - theirs(*batch[:3]).sample).abs().max().item()
    steps = {"course_lib": make_step(ours, batch, lambda m, x, t, c: m(x, t, c)),
             "diffusers": make_step(theirs, batch, lambda m, x, t, c: m(x, t, c).sample)}
    print(f"config: {config.to_dict()}")
    print(f"batch {args.batch} x {config.in_channels}x{args.size}x{args.size}, {args.tokens} tokens, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"parameters: course_lib {ours.num_parameters():,}  diffusers {theirs.num_parameters():,}  "
          f"max |output difference| {diff:.2e}")

    for step in steps.values():
        timed(step, args.warmup)
    rates = {name: [] for name in steps}
    for r in range(args.rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for name in order:
            rates[name].append(timed(steps[name], args.steps))
        print(f"round {r}: " + "  ".join(f"{n} {rates[n][-1][0]:.2f}/s" for n in steps))

    # Medians per model; the CPU-time rate is less sensitive to other processes sharing the machine.
    for i, clock in enumerate(("wall-clock", "CPU-time")):
        ours_rate, theirs_rate = (statistics.median(rate[i] for rate in rates[n]) for n in ("course_lib", "diffusers"))
        print(f"{clock:>10}: course_lib {ours_rate:.2f} steps/s   diffusers {theirs_rate:.2f} steps/s   "
              f"ratio {ours_rate / theirs_rate:.2f}x (median over {args.rounds} rounds)")


if __name__ == "__main__":
    main()

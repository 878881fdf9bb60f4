"""The course's main job: train a miniature Stable Diffusion from scratch on a CPU, sample it, judge it.

    python -m course_lib.demo                  # the real run on two-object scenes (minutes on 2 CPU cores)
    python -m course_lib.demo --world shapes   # the one-object world of the first lessons (32x32)
    python -m course_lib.demo --fast           # checks the plumbing in well under two minutes (CI)
    python -m course_lib.demo --help     # budgets, sizes, seeds

Interrupted? Run the same command again: finished stages are skipped and the running one resumes from its
newest checkpoint. ``--fresh`` starts over.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from course_lib._io import atomic_write_json
from course_lib.data import COLOURS, SHAPES, shapes_batch
from course_lib.metrics import (ShapeEvaluator, feature_frechet_distance, per_prompt_accuracy, prompt_accuracy,
                                train_evaluator)
from course_lib.minisd import (MiniSDConfig, _train_data, build_pipeline, prompt_set, train_clip, train_unet,
                               train_vae)
from course_lib.pipeline import TEXT_FEATURES, MiniSDPipeline
from course_lib.viz import plot_losses, save_image_grid

__all__ = ["run_demo", "evaluate_pipeline", "main"]


def load_or_train_judge(folder: Path, train) -> tuple[ShapeEvaluator, dict]:
    """A demo's judge kept in ``folder`` (config, weights, report.json): loaded if it is there, else
    ``train()`` -> (evaluator, report) runs once and both are saved. Shared by both worlds' demos."""
    if (folder / "report.json").is_file():
        return ShapeEvaluator.from_pretrained(folder), json.loads((folder / "report.json").read_text())
    evaluator, report = train()
    evaluator.save_pretrained(folder)
    atomic_write_json(folder / "report.json", report)
    return evaluator, report


def get_demo_evaluator(out_dir: Path, fast: bool, seed: int = 0) -> tuple[ShapeEvaluator, dict]:
    """The judge: trained on freshly rendered real images of every pair (held-out pairs included)."""
    return load_or_train_judge(out_dir / "evaluator", lambda: (
        train_evaluator(num_train=1000, steps=60, num_test=200, seed=seed) if fast else train_evaluator(seed=seed)))


@torch.no_grad()
def generate_for_prompts(pipe: MiniSDPipeline, prompts: list[str], seeds: list[int], num_inference_steps: int,
                         guidance_scale: float, batch_size: int = 64) -> torch.Tensor:
    """Images (len(prompts) * len(seeds), 3, H, W), prompt-major, each seed its own generator."""
    return generate_images(pipe, [(p, s) for p in prompts for s in seeds], num_inference_steps, guidance_scale,
                           batch_size)


@torch.no_grad()
def generate_images(pipe: MiniSDPipeline, jobs: list[tuple[str, int]], num_inference_steps: int,
                    guidance_scale: float, batch_size: int = 64, layouts: list | None = None,
                    layout_guidance_scale: float = 1.0, layout_guidance_steps: int = 10) -> torch.Tensor:
    """One image per (prompt, seed) job, in order: (len(jobs), 3, H, W); the seed fixes the start noise.
    ``layouts``: one RelationLayout or None per job, for layout guidance (``MiniSDPipeline.denoise``)."""
    if layouts is not None and len(layouts) != len(jobs):
        raise ValueError(f"layouts must have one entry per job ({len(jobs)}), got {len(layouts)}")
    images = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        latents = torch.stack([torch.randn(pipe.latent_shape(1)[1:], generator=torch.Generator().manual_seed(s))
                               for _, s in chunk])
        out = pipe([p for p, _ in chunk], num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   latents=latents, generator=torch.Generator().manual_seed(start), progress=False,
                   layouts=None if layouts is None else layouts[start:start + batch_size],
                   layout_guidance_scale=layout_guidance_scale, layout_guidance_steps=layout_guidance_steps)
        images.append(out.images)
    return torch.cat(images)


def evaluate_pipeline(pipe: MiniSDPipeline, evaluator: ShapeEvaluator, config: MiniSDConfig,
                      seeds_per_prompt: int = 8, num_inference_steps: int | None = None,
                      guidance_scale: float | None = None) -> tuple[dict, torch.Tensor]:
    """Prompt accuracy on seen and held-out pairs, per prompt, and the FID-like distance to real images."""
    steps = num_inference_steps or config.num_inference_steps
    scale = config.guidance_scale if guidance_scale is None else guidance_scale
    prompts = prompt_set()
    seeds = list(range(1000, 1000 + seeds_per_prompt))
    start = time.perf_counter()
    images = generate_for_prompts(pipe, [p for p, _, _ in prompts], seeds, steps, scale)
    seconds = time.perf_counter() - start
    target_shapes = torch.tensor([s for _, s, _ in prompts]).repeat_interleave(len(seeds))
    target_colours = torch.tensor([c for _, _, c in prompts]).repeat_interleave(len(seeds))
    held = torch.tensor([(COLOURS[c], SHAPES[s]) in config.held_out_pairs for _, s, c in prompts]
                        ).repeat_interleave(len(seeds))
    real = shapes_batch(len(images), seed=config.seed + 20_000, image_size=config.image_size)["image"]
    report = {
        "seen": prompt_accuracy(evaluator, images[~held], target_shapes[~held], target_colours[~held]),
        "held_out": (prompt_accuracy(evaluator, images[held], target_shapes[held], target_colours[held])
                     if held.any() else None),
        "per_prompt": per_prompt_accuracy(evaluator, images, target_shapes, target_colours),
        "fid_like": feature_frechet_distance(evaluator, images, real),
        "fid_like_real_vs_real": feature_frechet_distance(
            evaluator, real, shapes_batch(len(images), seed=config.seed + 30_000, image_size=config.image_size)["image"]),
        "seeds_per_prompt": seeds_per_prompt, "num_inference_steps": steps, "guidance_scale": scale,
        "sampling_seconds": seconds, "num_images": len(images),
    }
    return report, images


def _figures(pipe: MiniSDPipeline, images: torch.Tensor, config: MiniSDConfig, out_dir: Path,
             seeds_per_prompt: int, losses: dict) -> None:
    prompts = [p for p, _, _ in prompt_set()]
    shown = min(seeds_per_prompt, 8)
    grid = images.reshape(len(prompts), seeds_per_prompt, *images.shape[1:])[:, :shown].flatten(0, 1)
    held = {f"a {c} {s}" for c, s in config.held_out_pairs}
    save_image_grid(grid, out_dir / "samples.png", nrow=shown,
                    row_labels=[p + ("  (held out)" if p in held else "") for p in prompts],
                    col_labels=[f"seed {s}" for s in range(1000, 1000 + shown)],
                    title=f"DDIM {config.num_inference_steps} steps, guidance {config.guidance_scale}")

    # img2img: the same red circles re-imagined as blue squares at growing strength
    source = shapes_batch(4, seed=config.seed + 40_000, image_size=config.image_size, pairs=[("red", "circle")])
    strengths = [0.0, 0.15, 0.3, 0.5, 0.8]
    rows = [pipe.img2img(source["image"], ["a blue square"] * 4, strength=s, generator=torch.Generator().manual_seed(0),
                         num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                         progress=False).images for s in strengths]
    save_image_grid(torch.cat([source["image"], *rows]), out_dir / "img2img.png", nrow=4,
                    row_labels=["input"] + [f"strength {s}" for s in strengths],
                    title='img2img: "a red circle" images, prompt "a blue square"')

    # inpainting: replace an object. The mask (1 = generate) is each yellow square's region grown by 4 pixels; the
    # black background kept everywhere else tells the model where the new object must go.
    source = shapes_batch(4, seed=config.seed + 50_000, image_size=config.image_size, pairs=[("yellow", "square")])
    is_object = (source["image"].amax(dim=1, keepdim=True) > -0.9).float()  # (4, 1, H, W): non-black pixels
    mask = torch.nn.functional.max_pool2d(is_object, kernel_size=9, stride=1, padding=4)
    results = [pipe.inpaint(source["image"], mask, [prompt] * 4, generator=torch.Generator().manual_seed(0),
                            num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                            progress=False).images for prompt in ("a red triangle", "a blue circle")]
    shown_mask = source["image"] * (1 - mask) + mask * torch.tensor([0.6, 0.6, 0.6]).view(1, 3, 1, 1)
    save_image_grid(torch.cat([source["image"], shown_mask, *results]), out_dir / "inpaint.png", nrow=4,
                    row_labels=["input", "mask (grey = generate)", '"a red triangle"', '"a blue circle"'],
                    title="inpainting: replace the yellow square, keep the rest")

    fig = Figure(figsize=(4.5 * len(losses), 3.5))  # off-screen: not pyplot's, whatever its backend
    for ax, (name, history) in zip(fig.subplots(1, len(losses)), losses.items()):
        plot_losses(history, ax=ax, title=name)
    fig.tight_layout()
    tmp = out_dir / ".losses.tmp.png"
    fig.savefig(tmp, dpi=100)
    tmp.replace(out_dir / "losses.png")


def run_demo(config: MiniSDConfig, out_dir: str | Path = "outputs/demo", fast: bool = False,
             seeds_per_prompt: int = 8) -> dict:
    """All stages, evaluation, figures and ``report.json`` in ``out_dir``; returns the report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "config.json", config.to_dict())
    begin = time.perf_counter()
    evaluator, evaluator_report = get_demo_evaluator(out_dir, fast, seed=config.seed)
    data = _train_data(config)
    vae, vae_report = train_vae(config, out_dir, data)
    clip, tokenizer, clip_report = train_clip(config, out_dir, data)
    unet, unet_report = train_unet(config, out_dir, vae, clip.text_encoder, tokenizer, vae_report["scale_factor"], data)
    pipe = build_pipeline(config, vae, clip.text_encoder, tokenizer, unet, vae_report["scale_factor"])
    pipe.save_pretrained(out_dir / "pipeline")
    quality, images = evaluate_pipeline(pipe, evaluator, config, seeds_per_prompt)
    _figures(pipe, images, config, out_dir, seeds_per_prompt,
             {"VAE (negative ELBO)": vae_report["losses"], "CLIP (contrastive)": clip_report["losses"],
              "UNet (weighted eps MSE)": unet_report["losses"]})
    strip = lambda r: {k: v for k, v in r.items() if k != "losses"}  # noqa: E731
    stage_seconds = {"evaluator": evaluator_report["train_seconds"], "vae": vae_report["seconds"],
                     "clip": clip_report["seconds"], "unet": unet_report["seconds"]}
    report = {
        "fast": fast,
        "training_seconds": stage_seconds,
        "total_training_seconds": sum(stage_seconds.values()),
        "total_wall_seconds_this_run": time.perf_counter() - begin,
        "evaluator": evaluator_report,
        "vae": strip(vae_report), "clip": strip(clip_report), "unet": strip(unet_report),
        "prompt_accuracy": quality,
        "held_out_pairs": [list(p) for p in config.held_out_pairs],
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write_json(out_dir / "report.json", report)
    return report


def summary(report: dict, out_dir: Path) -> str:
    q = report["prompt_accuracy"]
    seen, held = q["seen"], q["held_out"]
    lines = [
        f"miniature Stable Diffusion -> {out_dir}/",
        f"  training time   {report['total_training_seconds'] / 60:.1f} min  "
        + "  ".join(f"{k} {v:.0f}s" for k, v in report["training_seconds"].items()),
        f"  evaluator       shape {report['evaluator']['shape_acc']:.3f}  colour {report['evaluator']['colour_acc']:.3f}"
        " on held-out real images",
        f"  VAE             val MSE {report['vae']['val_mse']:.4f} ({report['vae']['val_psnr_db']:.1f} dB), "
        f"latents {report['vae']['latent_shape']}, scale factor {report['vae']['scale_factor']:.4f}",
        f"  CLIP            zero-shot accuracy {report['clip']['zero_shot_accuracy']:.3f} over "
        f"{report['clip']['num_classes']} prompts",
        f"  prompt accuracy seen pairs: joint {seen['joint_acc']:.3f} (shape {seen['shape_acc']:.3f}, "
        f"colour {seen['colour_acc']:.3f})",
    ]
    if held is not None:
        lines.append(f"                  held-out pairs: joint {held['joint_acc']:.3f} (shape {held['shape_acc']:.3f}, "
                     f"colour {held['colour_acc']:.3f})")
    lines.append(f"  FID-like        {q['fid_like']:.2f} (real vs real: {q['fid_like_real_vs_real']:.2f})")
    lines.append("  files           samples.png img2img.png inpaint.png losses.png report.json pipeline/")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    shapes, scenes = MiniSDConfig(), MiniSDConfig.scenes()

    def default(name: str) -> str:  # the recipes' defaults differ by world
        a, b = getattr(scenes, name), getattr(shapes, name)
        return f"(default {a})" if a == b else f"(default: scenes {a}, shapes {b})"

    p = argparse.ArgumentParser(prog="python -m course_lib.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--world", choices=("scenes", "shapes"), default="scenes",
                   help="scenes: one or two objects at 64x64, captions with relations (course_lib.scenes); "
                        "shapes: one object at 32x32 (course_lib.data) (default: scenes)")
    p.add_argument("--fast", action="store_true", help="tiny budgets: checks the plumbing (CI), poor pictures")
    p.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.add_argument("--fresh", action="store_true", help="delete the output folder first instead of resuming")
    p.add_argument("--seed", type=int, default=shapes.seed, help=f"(default {shapes.seed})")
    p.add_argument("--vae-steps", type=int, help=f"VAE optimizer steps {default('vae_steps')}")
    p.add_argument("--clip-steps", type=int, help=f"CLIP optimizer steps {default('clip_steps')}")
    p.add_argument("--unet-steps", type=int, help=f"UNet optimizer steps {default('unet_steps')}")
    p.add_argument("--unet-batch-size", type=int, help=default("unet_batch_size"))
    p.add_argument("--unet-channels", type=int, nargs="+", help=f"UNet widths per level "
                   f"(default {' '.join(map(str, shapes.unet.block_channels))})")
    p.add_argument("--train-images", type=int, help=f"size of the rendered training set "
                   f"{default('num_train_images')}")
    p.add_argument("--guidance-scale", type=float, help=default("guidance_scale"))
    p.add_argument("--layout-guidance-scale", type=float, help=f"steer relation captions' layouts, 0: off "
                   f"{default('layout_guidance_scale')}")
    p.add_argument("--text-features", choices=TEXT_FEATURES,
                   help=f"what the UNet cross-attends to {default('text_features')}")
    p.add_argument("--steps", type=int, help=f"DDIM sampling steps {default('num_inference_steps')}")
    p.add_argument("--seeds-per-prompt", type=int, default=8,
                   help="shapes: images per prompt for the accuracy figures (default 8)")
    p.add_argument("--num-images", type=int, help="scenes: generated images judged on seen prompts (default 500, "
                   "--fast 40); 2/5 as many again on held-out prompts")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    return p


def config_from_args(args) -> MiniSDConfig:
    overrides = {name: value for name, value in (
        ("seed", args.seed), ("vae_steps", args.vae_steps), ("clip_steps", args.clip_steps),
        ("unet_steps", args.unet_steps), ("unet_batch_size", args.unet_batch_size),
        ("num_train_images", args.train_images), ("guidance_scale", args.guidance_scale),
        ("num_inference_steps", args.steps), ("text_features", args.text_features),
        ("layout_guidance_scale", args.layout_guidance_scale)) if value is not None}
    if args.world == "scenes":
        config = MiniSDConfig.fast(world="scenes", **overrides) if args.fast else MiniSDConfig.scenes(**overrides)
    else:
        config = MiniSDConfig.fast(**overrides) if args.fast else MiniSDConfig(**overrides)
    if args.unet_channels:
        config.unet = dataclasses.replace(config.unet, block_channels=tuple(args.unet_channels))
    return config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        if args.seeds_per_prompt < 2:
            raise ValueError(f"--seeds-per-prompt must be >= 2, got {args.seeds_per_prompt}")
        if args.num_images is not None and args.num_images < 20:
            raise ValueError(f"--num-images must be >= 20 (KID needs 10 blocks of 2), got {args.num_images}")
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    if args.fresh and out_dir.exists():
        shutil.rmtree(out_dir)
    saved = out_dir / "config.json"
    if saved.is_file() and json.loads(saved.read_text()) != json.loads(json.dumps(config.to_dict())):
        print(f"error: {out_dir} holds a run with other settings; use --fresh to start over or --out elsewhere",
              file=sys.stderr)
        return 2
    if config.world == "scenes":
        from course_lib.scenes_demo import run_scenes_demo, scenes_summary
        num_images = args.num_images or (40 if args.fast else 500)
        print(scenes_summary(run_scenes_demo(config, out_dir, fast=args.fast, num_images=num_images), out_dir))
        return 0
    report = run_demo(config, out_dir, fast=args.fast, seeds_per_prompt=args.seeds_per_prompt)
    print(summary(report, out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())

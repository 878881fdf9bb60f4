"""The scenes world's demo: train the miniature Stable Diffusion on two-object scenes, then measure binding.

``python -m course_lib.demo`` (``--world scenes``, the default) runs ``run_scenes_demo``. The stages are the
shapes world's (``course_lib.minisd``: VAE, CLIP, UNet; each resumes after an interruption); what differs is
the judge (``course_lib.scenes_eval``) and what it measures:

    binding    every object of the caption drawn with the right colour AND shape, nothing extra
    relation   the named relation (left of / right of / above / below) holds between the two objects
    count      as many objects as the caption names
    KID        kernel distance between generated and real pictures (unbiased, with its standard error),
               next to the same figure for two sets of real pictures; and the FID-like figure

Prompts: the captions of real scenes, so generated and real pictures follow one caption distribution (the
KID compares like with like). "seen" prompts come from the training sampler (new scenes, seen combinations);
"held-out" prompts hold a never-seen colour-shape pair or a never-seen pairing of two seen objects.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from course_lib._checks import check_float
from course_lib._io import atomic_write_json
from course_lib.layout_guidance import RelationLayout
from course_lib.metrics import ShapeEvaluator
from course_lib.minisd import MiniSDConfig, _train_data, build_pipeline, train_clip, train_unet, train_vae
from course_lib.pipeline import MiniSDPipeline
from course_lib.scenes import HELD_OUT_PAIRINGS, parse_scene_caption, scene_caption, scenes_batch
from course_lib.scenes_eval import scene_fid_like, scene_kid, scene_scores, train_scene_evaluator
from course_lib.viz import plot_losses, save_image_grid

__all__ = ["get_scene_judge", "relation_layouts", "layout_kwargs", "evaluate_scenes", "vae_reconstruction",
           "run_scenes_demo", "scenes_summary"]


def get_scene_judge(out_dir: Path, fast: bool, seed: int = 0) -> tuple[ShapeEvaluator, dict]:
    """The judge's crop classifier, trained on real renders once and kept in ``out_dir / "evaluator"``."""
    from course_lib.demo import load_or_train_judge
    return load_or_train_judge(out_dir / "evaluator", lambda: (
        train_scene_evaluator(num_train=1000, steps=60, num_test=40, seed=seed) if fast
        else train_scene_evaluator(seed=seed)))


def _real(config: MiniSDConfig, n: int, seed_offset: int, split: str = "train") -> dict:
    return scenes_batch(n, seed=config.seed + seed_offset, image_size=config.image_size, split=split,
                        held_out_pairs=config.held_out_pairs, held_out_pairings=config.held_out_pairings)


@torch.no_grad()
def vae_reconstruction(vae, classifier: ShapeEvaluator, config: MiniSDConfig, n: int = 256) -> dict:
    """PSNR of the VAE on n held-out real scenes, and whether the judge still reads them right."""
    real = _real(config, n, 10_000)
    recon = torch.cat([vae(x, sample_posterior=False).sample.clamp(-1, 1) for x in real["image"].split(64)])
    mse = F.mse_loss(recon, real["image"]).item()
    scores = scene_scores(classifier, recon, real["caption"])
    return {"psnr_db": 10 * math.log10(4.0 / mse), "mse": mse, "judge_on_reconstructions":
            {k: scores[k] for k in ("binding", "relation", "count")}, "num_images": n}


def relation_layouts(pipe: MiniSDPipeline, captions: list[str]) -> list[RelationLayout | None]:
    """A RelationLayout for every relation caption ("a C1 S1 <relation> a C2 S2"), None for the other kinds.

    The tokenizer is word-level with <bos> first, so word i of the caption is context position i + 1; the
    first object's words are its colour and shape (words 1, 2), the second's the last two words. With
    ``text_features="last_hidden_state+token_embeddings"`` each word also sits at position + L."""
    L = pipe.text_encoder.config.max_length
    doubled = pipe.text_features == "last_hidden_state+token_embeddings"
    layouts = []
    for caption in captions:
        spec = parse_scene_caption(caption)
        if spec["relation"] is None:
            layouts.append(None)
            continue
        n = len(caption.split())
        first, second = (2, 3), (n - 1, n)  # token positions of (colour, shape) of each object
        ids = pipe.tokenizer.encode(caption)
        for position, word in zip(first + second, (*spec["objects"][0], *spec["objects"][1])):
            assert pipe.tokenizer.vocab[ids[position]] == word, (caption, position, word)  # the grammar's layout
        if doubled:
            first, second = first + tuple(p + L for p in first), second + tuple(p + L for p in second)
        layouts.append(RelationLayout(first, second, spec["relation"]))
    return layouts


def layout_kwargs(pipe: MiniSDPipeline, config: MiniSDConfig, captions: list[str],
                  layout_guidance_scale: float | None = None) -> dict:
    """generate_images' layout-guidance arguments for these captions: none when ``layout_guidance_scale``
    (default: the config's) is 0."""
    scale = config.layout_guidance_scale if layout_guidance_scale is None else layout_guidance_scale
    check_float("layout_guidance_scale", scale, minimum=0.0)
    if scale == 0:
        return {}
    return dict(layouts=relation_layouts(pipe, captions), layout_guidance_scale=scale,
                layout_guidance_steps=config.layout_guidance_steps)


def evaluate_scenes(pipe: MiniSDPipeline, classifier: ShapeEvaluator, config: MiniSDConfig, num_images: int = 500,
                    num_held_out: int = 200, num_inference_steps: int | None = None,
                    guidance_scale: float | None = None,
                    layout_guidance_scale: float | None = None) -> tuple[dict, dict]:
    """Binding, relation and count on seen and held-out prompts; KID and FID-like against real scenes.
    ``None`` settings are the config's.

    Returns (report, pictures: dict(seen=(images, captions), held_out=(images, captions))).
    """
    from course_lib.demo import generate_images
    steps = num_inference_steps or config.num_inference_steps
    scale = config.guidance_scale if guidance_scale is None else guidance_scale
    layout_scale = config.layout_guidance_scale if layout_guidance_scale is None else layout_guidance_scale
    seen = _real(config, num_images, 20_000)
    held = {split: _real(config, num_held_out // 2, 21_000 + i, split)
            for i, split in enumerate(("held_out_pairs", "held_out_pairings"))}

    def generate(captions, first_seed):
        return generate_images(pipe, [(c, first_seed + i) for i, c in enumerate(captions)], steps, scale,
                               **layout_kwargs(pipe, config, captions, layout_scale))

    start = time.perf_counter()
    generated = {"seen": generate(seen["caption"], 1000)}
    for split, real in held.items():
        generated[split] = generate(real["caption"], 5000)
    seconds = time.perf_counter() - start
    held_images = torch.cat([generated[s] for s in held])
    held_captions = [c for s in held for c in held[s]["caption"]]
    scores = {"seen": scene_scores(classifier, generated["seen"], seen["caption"]),
              "held_out": scene_scores(classifier, held_images, held_captions),
              **{split: scene_scores(classifier, generated[split], held[split]["caption"]) for split in held}}
    # Both distances are taken against an independent real set: the generated pictures share their captions
    # (in order) with `seen`, and pairs that share a caption inside one KID block bias the unbiased MMD^2 down.
    reference = _real(config, num_images, 30_000)["image"]
    blocks = min(10, num_images // 4)
    kid, kid_se = scene_kid(classifier, generated["seen"], reference, blocks)
    kid_real, kid_real_se = scene_kid(classifier, seen["image"], reference, blocks)
    report = {
        "binding": {name: scores[name]["binding"] for name in scores},
        "relation": {name: scores[name]["relation"] for name in ("seen", "held_out")},
        "count": {name: scores[name]["count"] for name in ("seen", "held_out")},
        "kid": {"generated_vs_real": kid, "standard_error": kid_se, "real_vs_real": kid_real,
                "real_vs_real_standard_error": kid_real_se, "num_images": num_images, "num_blocks": blocks},
        "fid_like": {"generated_vs_real": scene_fid_like(classifier, generated["seen"], reference),
                     "real_vs_real": scene_fid_like(classifier, seen["image"], reference)},
        "scores": scores, "num_inference_steps": steps, "guidance_scale": scale, "sampling_seconds": seconds,
        "layout_guidance": {"scale": layout_scale, "steps": config.layout_guidance_steps if layout_scale else 0},
    }
    return report, {"seen": (generated["seen"], seen["caption"]), "held_out": (held_images, held_captions)}


FIGURE_PROMPTS = [  # (caption, held out?) rows of samples.png
    (scene_caption("one", ("red", "circle")), False),
    (scene_caption("and", ("red", "circle"), ("blue", "square")), False),
    (scene_caption("and", ("red", "square"), ("blue", "circle")), True),
    (scene_caption("relation", ("yellow", "triangle"), ("green", "circle"), "above"), False),
    (scene_caption("two", ("blue", "triangle")), False),
    (scene_caption("one", ("green", "triangle")), True),
    (scene_caption("relation", ("yellow", "circle"), ("red", "square"), "left of"), True),
]


def _layout_note(config: MiniSDConfig) -> str:
    if not config.layout_guidance_scale:
        return ""
    return f", layout guidance {config.layout_guidance_scale:g} (first {config.layout_guidance_steps} steps)"


def _figures(pipe: MiniSDPipeline, config: MiniSDConfig, out_dir: Path, losses: dict, seeds: int = 6) -> None:
    from course_lib.demo import generate_images
    columns = [f"seed {s}" for s in range(seeds)]
    rows = [c for c, _ in FIGURE_PROMPTS]
    jobs = [(c, s) for c in rows for s in range(seeds)]
    images = generate_images(pipe, jobs, config.num_inference_steps, config.guidance_scale,
                             **layout_kwargs(pipe, config, [c for c, _ in jobs]))
    save_image_grid(images, out_dir / "samples.png", nrow=seeds, col_labels=columns,
                    row_labels=[c + ("  (held out)" if held else "") for c, held in FIGURE_PROMPTS],
                    title=f"DDIM {config.num_inference_steps} steps, guidance {config.guidance_scale}"
                          + _layout_note(config))
    pairs = [(("red", "circle"), ("blue", "square")), tuple(HELD_OUT_PAIRINGS[0])]
    rows = [scene_caption("relation", a, b, r) for a, b in pairs for r in ("left of", "right of", "above", "below")]
    jobs = [(c, s) for c in rows for s in range(seeds)]
    images = generate_images(pipe, jobs, config.num_inference_steps, config.guidance_scale,
                             **layout_kwargs(pipe, config, [c for c, _ in jobs]))
    held = {scene_caption("relation", *HELD_OUT_PAIRINGS[0], r) for r in ("left of", "right of", "above", "below")}
    save_image_grid(images, out_dir / "relations.png", nrow=seeds, col_labels=columns,
                    row_labels=[c + ("  (held-out pairing)" if c in held else "") for c in rows],
                    title="relations: seen pairing, then its colour swap (never seen together)" + _layout_note(config))
    fig = Figure(figsize=(4.5 * len(losses), 3.5))
    for ax, (name, history) in zip(fig.subplots(1, len(losses)), losses.items()):
        plot_losses(history, ax=ax, title=name)
    fig.tight_layout()
    tmp = out_dir / ".losses.tmp.png"
    fig.savefig(tmp, dpi=100)
    tmp.replace(out_dir / "losses.png")


def run_scenes_demo(config: MiniSDConfig, out_dir: str | Path = "outputs/demo", fast: bool = False,
                    num_images: int = 500) -> dict:
    """All stages, the judge, evaluation, figures and ``report.json`` in ``out_dir``; returns the report."""
    if config.world != "scenes":
        raise ValueError(f"config.world must be 'scenes' for run_scenes_demo, got {config.world!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "config.json", config.to_dict())
    begin = time.perf_counter()
    classifier, judge_report = get_scene_judge(out_dir, fast, seed=config.seed)
    data = _train_data(config)
    vae, vae_report = train_vae(config, out_dir, data)
    clip, tokenizer, clip_report = train_clip(config, out_dir, data)
    unet, unet_report = train_unet(config, out_dir, vae, clip.text_encoder, tokenizer, vae_report["scale_factor"], data)
    del data
    pipe = build_pipeline(config, vae, clip.text_encoder, tokenizer, unet, vae_report["scale_factor"])
    pipe.save_pretrained(out_dir / "pipeline")
    quality, _ = evaluate_scenes(pipe, classifier, config, num_images, max(20, num_images * 2 // 5))
    _figures(pipe, config, out_dir, {"VAE (negative ELBO)": vae_report["losses"],
                                     "CLIP (contrastive)": clip_report["losses"],
                                     "UNet (weighted eps MSE)": unet_report["losses"]}, seeds=4 if fast else 6)
    strip = lambda r: {k: v for k, v in r.items() if k != "losses"}  # noqa: E731
    stage_seconds = {"evaluator": judge_report["train_seconds"], "vae": vae_report["seconds"],
                     "clip": clip_report["seconds"], "unet": unet_report["seconds"]}
    report = {
        "world": "scenes", "fast": fast,
        "binding": quality["binding"], "relation": quality["relation"], "count": quality["count"],
        "kid": quality["kid"], "fid_like": quality["fid_like"],
        "total_train_seconds": sum(stage_seconds.values()), "training_seconds": stage_seconds,
        "latent_shape": vae_report["latent_shape"],
        "total_wall_seconds_this_run": time.perf_counter() - begin,
        "evaluator": judge_report,
        "vae": {**strip(vae_report), "reconstruction": vae_reconstruction(vae, classifier, config,
                                                                          64 if fast else 256)},
        "clip": strip(clip_report), "unet": strip(unet_report),
        "evaluation": {k: v for k, v in quality.items() if k not in ("binding", "relation", "count", "kid",
                                                                     "fid_like")},
        "held_out_pairs": [list(p) for p in config.held_out_pairs],
        "held_out_pairings": [[list(p) for p in pairing] for pairing in config.held_out_pairings],
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write_json(out_dir / "report.json", report)
    return report


def _layout_summary(report: dict) -> str:
    layout = report.get("evaluation", {}).get("layout_guidance") or {}
    return f"  (layout guidance {layout['scale']:g}, {layout['steps']} steps)" if layout.get("scale") else ""


def scenes_summary(report: dict, out_dir: Path) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    judge = report["evaluator"]["held_out_pairings"]
    kid, fid = report["kid"], report["fid_like"]
    recon = report["vae"]["reconstruction"]
    return "\n".join([
        f"miniature Stable Diffusion, scenes world -> {out_dir}/",
        f"  training time   {report['total_train_seconds'] / 60:.1f} min  "
        + "  ".join(f"{k} {v:.0f}s" for k, v in report["training_seconds"].items()),
        f"  judge           colour {judge['colour_acc']:.3f}  shape {judge['shape_acc']:.3f}  position "
        f"{judge['position_acc']:.3f}  count {judge['count_acc']:.3f} on held-out real scenes",
        f"  VAE             latents {report['latent_shape']}, {recon['psnr_db']:.1f} dB, judge on reconstructions: "
        f"binding {fmt(recon['judge_on_reconstructions']['binding'])}",
        f"  binding         seen {fmt(report['binding']['seen'])}  held-out {fmt(report['binding']['held_out'])}"
        f"  (pairs {fmt(report['binding']['held_out_pairs'])}, pairings {fmt(report['binding']['held_out_pairings'])})",
        f"  relation        seen {fmt(report['relation']['seen'])}  held-out {fmt(report['relation']['held_out'])}"
        + _layout_summary(report),
        f"  count           seen {fmt(report['count']['seen'])}  held-out {fmt(report['count']['held_out'])}",
        f"  KID             {kid['generated_vs_real']:.4f} +- {kid['standard_error']:.4f} (real vs real "
        f"{kid['real_vs_real']:.4f} +- {kid['real_vs_real_standard_error']:.4f}, N = {kid['num_images']})",
        f"  FID-like        {fid['generated_vs_real']:.2f} (real vs real {fid['real_vs_real']:.2f})",
        "  files           samples.png relations.png losses.png report.json pipeline/",
    ])

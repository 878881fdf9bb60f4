"""Judging pictures of the scenes world: find each object, read its colour, shape and place; score captions.

A text-to-image model gets "a red circle to the left of a blue square" right only if the picture holds exactly
two objects, one red circle and one blue square (binding), and the circle is on the left (relation). The judge
works like a tiny object detector, in two steps:

    1. segmentation   foreground = pixels brighter than ``THRESHOLD`` on the black background; connected
                      components (8-neighbours) by label propagation: every foreground pixel starts with its own
                      label and repeatedly takes the largest label of its 3x3 neighbourhood until nothing
                      changes. Components smaller than ``MIN_AREA`` pixels are specks, not objects.
    2. classification each component is cut out (other objects blanked) in a 32x32 window centred on its
                      bounding box and read by ``course_lib.metrics.ShapeEvaluator`` (a small CNN with a shape
                      head and a colour head), trained on real renders only, with the same augmentations
                      the shapes world's evaluator uses for what generators get slightly wrong.

Scores of a picture against its caption (``score_scene``):
    count      number of objects found == number the caption names
    binding    the multiset of (colour, shape) found == the caption's (every object right, nothing extra)
    relation   (relation captions) a found object matching A and one matching B stand in the named relation

Distribution distance. The FID-like figure of ``course_lib.metrics`` (Frechet distance of Gaussian fits) is
biased upwards at small N. KID (Binkowski et al. 2018) is the squared maximum mean discrepancy with the cubic
polynomial kernel k(x, y) = (x . y / d + 1)^3, estimated without bias:

    MMD^2_u = 1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j) - 2/(mn) sum_{i,j} k(x_i, y_j)

Its expectation is the population MMD^2 for any N (it can come out negative when the two are equal). We split
both sets into B disjoint blocks, estimate in each and report the mean and its standard error std / sqrt(B).
Features for both distances: the classifier's features (``ShapeEvaluator.features``) of the whole picture
shrunk to 32x32 (2x2 average pooling), a fixed map that sees shapes, colours and where they are.
"""
from __future__ import annotations

import time
from collections import Counter
from itertools import permutations

import torch
import torch.nn.functional as F

from course_lib._checks import check_int, check_tensor
from course_lib.data import COLOURS, SHAPES, render_shapes
from course_lib.metrics import (EvaluatorConfig, ShapeEvaluator, _augment, _torch_threads,
                                feature_frechet_distance)
from course_lib.scenes import SPLITS, parse_scene_caption, relation_holds, scenes_batch
from course_lib.train import cosine_schedule_with_warmup

__all__ = ["THRESHOLD", "MIN_AREA", "CROP", "connected_components", "find_objects", "read_scenes",
           "score_scene", "scene_scores", "train_scene_evaluator", "mmd2_unbiased", "kernel_distance",
           "scene_features", "scene_kid", "scene_fid_like"]

THRESHOLD = -0.5  # brightest channel above 0.25 of full scale ([-1, 1] images): an object's pixel
MIN_AREA = 16  # pixels; the smallest object of the world (s = 12.8 px, a triangle) covers ~80
CROP = 32  # side of the window each object is read in


# ----------------------------------------------------------------------------------------------------------
# 1. Segmentation
# ----------------------------------------------------------------------------------------------------------

def connected_components(foreground: torch.Tensor, max_iterations: int = 512) -> torch.Tensor:
    """8-connected components of a (B, H, W) bool mask: (B, H, W) long labels, 0 = background.

    Each foreground pixel starts with a unique label (its flat index + 1) and takes the maximum over its 3x3
    neighbourhood until no label changes; pixels of one component end with the same label.
    """
    check_tensor("foreground", foreground, ndim=3)
    b, h, w = foreground.shape
    fg = foreground.bool()
    labels = (torch.arange(1, h * w + 1, dtype=torch.float64).view(1, h, w) * fg).unsqueeze(1)  # (B, 1, H, W)
    mask = fg.unsqueeze(1)
    for _ in range(max_iterations):
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * mask
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels.squeeze(1).long()


def find_objects(images: torch.Tensor) -> list[list[dict]]:
    """Segment (B, 3, S, S) images in [-1, 1]: per image a list of dict(center_xy, size_px, area, crop).

    center_xy: the component's bounding-box centre in pixels (x right, y down); size_px: the longer side of the
    bounding box; crop: (3, CROP, CROP) window centred on the object, other objects blanked. Largest first.
    """
    check_tensor("images", images, ndim=4, floating=True)
    x = images.detach().float().cpu().clamp(-1, 1)
    labels = connected_components(x.amax(dim=1) > THRESHOLD)  # (B, S, S)
    found = []
    for b in range(len(x)):
        ids, areas = labels[b].unique(return_counts=True)
        objects = []
        for label, area in sorted(zip(ids.tolist(), areas.tolist()), key=lambda t: -t[1]):
            if label == 0 or area < MIN_AREA:
                continue
            mask = labels[b] == label
            rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
            cx, cy = (cols[0] + cols[-1] + 1).item() / 2, (rows[0] + rows[-1] + 1).item() / 2
            # keep the faint anti-aliased rim (one pixel around the component), blank everything else
            rim = F.max_pool2d(mask[None, None].float(), 3, stride=1, padding=1)[0, 0].bool()
            keep = rim & ((labels[b] == 0) | mask)
            shown = F.pad(torch.where(keep, x[b], torch.tensor(-1.0)), (CROP // 2,) * 4, value=-1.0)
            left, top = round(cx), round(cy)  # window [c - CROP/2, c + CROP/2) in image pixels
            objects.append({"center_xy": (cx, cy), "size_px": float(max(cols[-1] - cols[0], rows[-1] - rows[0]) + 1),
                            "area": int(area), "crop": shown[:, top:top + CROP, left:left + CROP]})
        found.append(objects)
    return found


@torch.no_grad()
def read_scenes(classifier: ShapeEvaluator, images: torch.Tensor) -> list[list[dict]]:
    """Find and read every object: per image a list of dict(colour, shape, center_xy, size_px), largest first."""
    if not isinstance(classifier, ShapeEvaluator) or classifier.config.image_size != CROP:
        raise ValueError(f"classifier must be a ShapeEvaluator for {CROP}x{CROP} crops (train_scene_evaluator), "
                         f"got {classifier!r:.80}")
    found = find_objects(images)
    crops = [o["crop"] for objects in found for o in objects]
    if crops:
        was_training = classifier.training
        classifier.eval()
        shape_logits, colour_logits = classifier(torch.stack(crops))
        classifier.train(was_training)
        shapes, colours = shape_logits.argmax(-1).tolist(), colour_logits.argmax(-1).tolist()
    read, k = [], 0
    for objects in found:
        read.append([{"colour": COLOURS[colours[k + i]], "shape": SHAPES[shapes[k + i]],
                      "center_xy": o["center_xy"], "size_px": o["size_px"]} for i, o in enumerate(objects)])
        k += len(objects)
    return read


# ----------------------------------------------------------------------------------------------------------
# 2. Scoring a picture against its caption
# ----------------------------------------------------------------------------------------------------------

def score_scene(caption: str, objects: list[dict]) -> dict:
    """count, binding (bools) and relation (bool, or None if the caption names no relation) of one picture.

    objects: what ``read_scenes`` found (dicts with colour, shape, center_xy).
    """
    spec = parse_scene_caption(caption)
    wanted = Counter(spec["objects"])
    got = Counter((o["colour"], o["shape"]) for o in objects)
    relation = None
    if spec["relation"] is not None:
        first, second = spec["objects"]
        relation = any((a["colour"], a["shape"]) == first and (b["colour"], b["shape"]) == second
                       and relation_holds(a["center_xy"], b["center_xy"], spec["relation"])
                       for a, b in permutations(objects, 2))
    return {"count": len(objects) == len(spec["objects"]), "binding": got == wanted, "relation": relation}


def scene_scores(classifier: ShapeEvaluator, images: torch.Tensor, captions: list[str]) -> dict:
    """Fractions over a set of pictures: dict(binding, relation (None if no relation caption), count, n,
    n_relation)."""
    if len(captions) != len(images):
        raise ValueError(f"captions must have one entry per image ({len(images)}), got {len(captions)}")
    scores = [score_scene(c, o) for c, o in zip(captions, read_scenes(classifier, images))]
    relations = [s["relation"] for s in scores if s["relation"] is not None]
    mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
    return {"binding": mean([s["binding"] for s in scores]), "relation": mean(relations),
            "count": mean([s["count"] for s in scores]), "n": len(scores), "n_relation": len(relations)}


# ----------------------------------------------------------------------------------------------------------
# 3. Training the classifier on real renders, and its accuracy on held-out real scenes
# ----------------------------------------------------------------------------------------------------------

CROP_SIZE_RANGE = (0.3, 0.8)  # s / CROP: the world's objects are 0.40-0.68 of the window; wider for generators


def _render_crops(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n single objects as the segmentation cuts them out: centred within a pixel, any pair, slight tilt."""
    uniform = lambda low, high, *shape: low + (high - low) * torch.rand(*shape, generator=generator)  # noqa: E731
    shapes = torch.randint(len(SHAPES), (n,), generator=generator)
    colours = torch.randint(len(COLOURS), (n,), generator=generator)
    sizes = uniform(*CROP_SIZE_RANGE, n) * CROP
    centers = CROP / 2 + uniform(-1.0, 1.0, n, 2)
    images = render_shapes(shapes, colours, sizes, centers, CROP, rotations=uniform(-8.0, 8.0, n))
    return images, shapes, colours


def train_scene_evaluator(num_train: int = 4000, steps: int = 300, seed: int = 0, num_test: int = 300,
                          batch_size: int = 64, progress: bool = False, num_threads: int | None = 1
                          ) -> tuple[ShapeEvaluator, dict]:
    """Train the crop classifier, then test the whole judge on ``num_test`` held-out real scenes per split.

    Returns (classifier frozen in eval mode, report). report[split] for each of ``scenes.SPLITS``: colour_acc,
    shape_acc, position_acc (centre read within 1.5 px), count_acc over objects/scenes, and the scene scores
    of the real pictures against their own captions (binding, relation, count: the judge's ceiling).
    """
    for name, value in (("num_train", num_train), ("steps", steps), ("num_test", num_test),
                        ("batch_size", batch_size)):
        check_int(name, value, minimum=1)
    check_int("seed", seed, minimum=0)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    with _torch_threads(num_threads):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            classifier = ShapeEvaluator(EvaluatorConfig(image_size=CROP))
        images, shapes, colours = _render_crops(num_train, generator)
        optimizer = torch.optim.AdamW(classifier.parameters(), lr=3e-3, weight_decay=1e-4)
        lr_scheduler = cosine_schedule_with_warmup(optimizer, min(50, steps // 10 + 1), steps)
        classifier.train()
        for _ in range(steps):
            idx = torch.randint(num_train, (batch_size,), generator=generator)
            shape_logits, colour_logits = classifier(_augment(images[idx], generator))
            loss = F.cross_entropy(shape_logits, shapes[idx]) + F.cross_entropy(colour_logits, colours[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr_scheduler.step()
        classifier.eval().requires_grad_(False)
        report = {split: judge_accuracy(classifier, num_test, seed + 1 + i, split) for i, split in enumerate(SPLITS)}
    report.update(train_seconds=round(time.perf_counter() - start, 2), final_loss=loss.item(), num_train=num_train,
                  steps=steps, seed=seed)
    return classifier, report


def judge_accuracy(classifier: ShapeEvaluator, n: int, seed: int, split: str) -> dict:
    """Per-attribute accuracy of the judge on n real scenes of ``split`` (objects matched by nearest centre)."""
    real = scenes_batch(n, seed=seed, split=split)
    read = read_scenes(classifier, real["image"])
    right = Counter()
    num_objects = 0
    for scene, found in zip(real["scene"], read):
        truth = scene["objects"]
        num_objects += len(truth)
        right["count"] += len(found) == len(truth)
        if len(found) != len(truth):
            continue
        distance = lambda a, b: sum((p - q) ** 2 for p, q in zip(a["center_xy"], b["center_xy"])) ** 0.5  # noqa
        match = min(permutations(found), key=lambda order: sum(distance(t, f) for t, f in zip(truth, order)))
        for t, f in zip(truth, match):
            right["colour"] += t["colour"] == f["colour"]
            right["shape"] += t["shape"] == f["shape"]
            right["position"] += distance(t, f) <= 1.5
    own = scene_scores(classifier, real["image"], real["caption"])
    return {"colour_acc": right["colour"] / num_objects, "shape_acc": right["shape"] / num_objects,
            "position_acc": right["position"] / num_objects, "count_acc": right["count"] / n,
            "num_scenes": n, "num_objects": num_objects,
            "own_caption": {k: own[k] for k in ("binding", "relation", "count")}}


# ----------------------------------------------------------------------------------------------------------
# 4. Distribution distances: KID (unbiased) next to the FID-like figure
# ----------------------------------------------------------------------------------------------------------

def _cubic_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b.T / a.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 between samples x (m, d) and y (n, d) with KID's cubic kernel, in float64 (m, n >= 2)."""
    check_tensor("x", x, ndim=2, floating=True)
    check_tensor("y", y, ndim=2, floating=True)
    if x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(f"x and y must be (m, d) and (n, d) with m, n >= 2 and one d, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    x, y = x.double(), y.double()
    m, n = len(x), len(y)
    k_xx, k_yy, k_xy = _cubic_kernel(x, x), _cubic_kernel(y, y), _cubic_kernel(x, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))  # i != j only: no self-similarity bias
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return (within_x + within_y - 2 * k_xy.mean()).item()


def kernel_distance(x: torch.Tensor, y: torch.Tensor, num_blocks: int = 10) -> tuple[float, float]:
    """KID as (mean, standard error) over ``num_blocks`` disjoint blocks of x and y (each >= 2 rows)."""
    check_int("num_blocks", num_blocks, minimum=2)
    if min(len(x), len(y)) < 2 * num_blocks:
        raise ValueError(f"x and y must hold at least 2 * num_blocks = {2 * num_blocks} rows each, "
                         f"got {len(x)} and {len(y)}")
    values = torch.tensor([mmd2_unbiased(a, b) for a, b in zip(x.tensor_split(num_blocks),
                                                                y.tensor_split(num_blocks))], dtype=torch.float64)
    return values.mean().item(), (values.std() / num_blocks ** 0.5).item()


def _shrink(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, 3, CROP, CROP) by average pooling (S a multiple of CROP)."""
    check_tensor("images", images, ndim=4, floating=True)
    if images.shape[-1] % CROP:
        raise ValueError(f"images must be a multiple of {CROP} pixels wide, got shape {tuple(images.shape)}")
    return F.avg_pool2d(images.detach().float().cpu().clamp(-1, 1), images.shape[-1] // CROP)


@torch.no_grad()
def scene_features(classifier: ShapeEvaluator, images: torch.Tensor) -> torch.Tensor:
    """The classifier's features of whole pictures shrunk to CROP x CROP: (B, feature_dim) float64."""
    classifier.eval()
    return torch.cat([classifier.features(chunk) for chunk in _shrink(images).split(256)]).double()


def scene_kid(classifier: ShapeEvaluator, images_a: torch.Tensor, images_b: torch.Tensor,
              num_blocks: int = 10) -> tuple[float, float]:
    """KID (mean, standard error) between two sets of scene pictures in the classifier's feature space."""
    return kernel_distance(scene_features(classifier, images_a), scene_features(classifier, images_b), num_blocks)


def scene_fid_like(classifier: ShapeEvaluator, images_a: torch.Tensor, images_b: torch.Tensor) -> float:
    """``course_lib.metrics.feature_frechet_distance`` on the same features as ``scene_kid``."""
    return feature_frechet_distance(classifier, _shrink(images_a), _shrink(images_b))

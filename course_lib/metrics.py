"""Judging generated images of the shapes world: a small classifier, prompt accuracy and an FID-like distance.

A text-to-image model is good when its pictures (a) show what the prompt asked for and (b) look like real
pictures. Real Stable Diffusion is judged with CLIP score for (a) and FID (Heusel et al. 2017) for (b), both
built on large networks trained on millions of photos. Our toy world needs neither: a small CNN trained on
freshly rendered shapes reads off a picture's shape and colour almost perfectly, and its penultimate layer
gives the features for a Frechet distance.

Glossary:
    evaluator        ``ShapeEvaluator``: a CNN with two heads, shape logits and colour logits
    f(x)             the evaluator's features of image x (penultimate layer, ``features``), a vector of size d
    mu, Sigma        mean (d,) and covariance (d, d) of f(x) over a set of images, fitted as a Gaussian
    FD               Frechet distance between N(mu1, Sigma1) and N(mu2, Sigma2) (Dowson & Landau 1982):
                         FD = ||mu1 - mu2||^2 + Tr(Sigma1 + Sigma2 - 2 (Sigma1 Sigma2)^(1/2))
                     It is 0 for identical Gaussians and grows as means or spreads move apart.
    joint accuracy   the fraction of images whose shape AND colour both match the prompt

"FID-like", not FID: ``feature_frechet_distance`` applies FID's formula to OUR evaluator's features, so its
numbers are only comparable with each other (same evaluator, same number of images), never with FID values
published for real models (those use Inception-v3 features of 299 x 299 photos). Like FID it is biased
upwards for small sets: compare models at an equal number of images, a few hundred at least.

The evaluator is trained only on real images of the toy world (every colour-shape pair, including pairs a
generator may be denied during training), with augmentations for what generators get slightly wrong (noise,
blur, brightness, slight tilt), so it judges shape and colour rather than pixel-perfection.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from course_lib._checks import check_int, check_shape_dim, check_tensor
from course_lib._config import JSONConfig
from course_lib._io import atomic_write_json, load_pretrained, save_pretrained
from course_lib.data import COLOURS, SHAPES, render_shapes, shapes_batch
from course_lib.train import cosine_schedule_with_warmup

__all__ = [
    "EvaluatorConfig", "ShapeEvaluator", "train_evaluator", "get_evaluator", "Classification", "classify",
    "score_predictions", "score_predictions_per_prompt", "prompt_accuracy", "per_prompt_accuracy",
    "frechet_distance", "feature_statistics", "feature_frechet_distance",
]

# Bump when the training recipe changes, so that get_evaluator does not reuse an evaluator trained the old way.
EVALUATOR_VERSION = 2


# ----------------------------------------------------------------------------------------------------------
# 1. The evaluator network
# ----------------------------------------------------------------------------------------------------------

def _check_names(name: str, value) -> tuple[str, ...]:
    if not isinstance(value, (tuple, list)) or len(value) < 2 or len(set(value)) != len(value) \
            or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{name} must be a tuple of at least 2 distinct non-empty names, got {value!r}")
    return tuple(value)


@dataclass
class EvaluatorConfig(JSONConfig):
    """Shape of the evaluator CNN.

    image_size     S: the evaluator judges (B, 3, S, S) images; must be divisible by 2 ** len(channels)
    channels       width of each conv block; every block halves H and W
    feature_dim    d: size of the penultimate layer, the features of the Frechet distance
    shapes         class names of the shape head, in logit order (default: ``course_lib.data.SHAPES``)
    colours        class names of the colour head, in logit order (default: ``course_lib.data.COLOURS``)
    """
    image_size: int = 32
    channels: tuple[int, ...] = (16, 32, 64)
    feature_dim: int = 128
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = COLOURS

    def __post_init__(self):
        if not isinstance(self.channels, (tuple, list)) or len(self.channels) == 0:
            raise ValueError(f"channels must be a non-empty tuple of positive integers, got {self.channels!r}")
        self.channels = tuple(self.channels)  # JSON gives a list back
        for i, width in enumerate(self.channels):
            check_int(f"channels[{i}]", width, minimum=1)
        check_int("image_size", self.image_size, minimum=2 ** len(self.channels))
        if self.image_size % 2 ** len(self.channels):
            raise ValueError(f"image_size must be divisible by 2 ** len(channels) = {2 ** len(self.channels)}, "
                             f"got {self.image_size}")
        check_int("feature_dim", self.feature_dim, minimum=1)
        self.shapes = _check_names("shapes", self.shapes)
        self.colours = _check_names("colours", self.colours)


class ShapeEvaluator(nn.Module):
    """Conv blocks (conv 3x3, BatchNorm, ReLU, max-pool 2) -> flatten -> features f(x) -> two linear heads.

    BatchNorm makes training converge in a few hundred steps; the metric functions below always run the
    evaluator in eval mode, so a prediction never depends on which other images share its batch. The
    features keep the flattened spatial map's information, so the Frechet distance also notices where and
    how large shapes are, not only which shape and colour they have.
    """

    def __init__(self, config: EvaluatorConfig | None = None):
        super().__init__()
        config = EvaluatorConfig() if config is None else config
        if not isinstance(config, EvaluatorConfig):
            raise ValueError(f"config must be an EvaluatorConfig, got {type(config).__name__}")
        self.config = config
        blocks, width = [], 3
        for out_width in config.channels:
            blocks += [nn.Conv2d(width, out_width, 3, padding=1), nn.BatchNorm2d(out_width), nn.ReLU(),
                       nn.MaxPool2d(2)]
            width = out_width
        self.body = nn.Sequential(*blocks)
        side = config.image_size // 2 ** len(config.channels)
        self.to_features = nn.Sequential(nn.Flatten(), nn.Linear(width * side * side, config.feature_dim), nn.ReLU())
        self.shape_head = nn.Linear(config.feature_dim, len(config.shapes))
        self.colour_head = nn.Linear(config.feature_dim, len(config.colours))

    def check_images(self, images, name: str = "images") -> None:
        """Raise a ValueError unless ``images`` is a float (B, 3, S, S) tensor with S = config.image_size."""
        check_tensor(name, images, ndim=4, floating=True)
        check_shape_dim(name, images, 1, 3, what="3 channels (RGB)")
        size = self.config.image_size
        if tuple(images.shape[2:]) != (size, size):
            raise ValueError(f"{name} must be {size} x {size} (the evaluator's image_size), "
                             f"got shape {tuple(images.shape)}")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """f(x): (B, 3, S, S) images in [-1, 1] -> (B, feature_dim) features (the penultimate layer)."""
        self.check_images(images)
        h = self.body(images)  # (B, channels[-1], S / 2^n, S / 2^n)
        return self.to_features(h)  # (B, feature_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) images in [-1, 1] -> (shape_logits (B, len(shapes)), colour_logits (B, len(colours)))."""
        h = self.features(images)
        return self.shape_head(h), self.colour_head(h)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``folder``."""
        return save_pretrained(self, folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> "ShapeEvaluator":
        """Load an evaluator written by ``save_pretrained``; it comes back frozen, in eval mode."""
        return load_pretrained(cls, EvaluatorConfig, folder, device=device).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------------
# 2. Training on freshly rendered real images
# ----------------------------------------------------------------------------------------------------------

# Training images are drawn a little wider than course_lib.data's (s / S in [0.22, 0.52], centres within
# [0.29, 0.71] * S, upright), so that a generator's slightly-off sizes, places and angles are still judged.
TRAIN_SIZE_RANGE = (0.18, 0.56)  # s / S
TRAIN_CENTER_RANGE = (0.28, 0.72)  # cx / S and cy / S
TRAIN_MAX_TILT = 10.0  # degrees either way


def _render_training_images(n: int, image_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """n random shapes, every (colour, shape) pair equally likely: (images (n, 3, S, S), shapes, colours)."""
    uniform = lambda low, high, *shape: low + (high - low) * torch.rand(*shape, generator=generator)  # noqa: E731
    shapes = torch.randint(len(SHAPES), (n,), generator=generator)
    colours = torch.randint(len(COLOURS), (n,), generator=generator)
    sizes = uniform(*TRAIN_SIZE_RANGE, n) * image_size
    centers = uniform(*TRAIN_CENTER_RANGE, n, 2) * image_size
    tilts = uniform(-TRAIN_MAX_TILT, TRAIN_MAX_TILT, n)
    images = render_shapes(shapes, colours, sizes, centers, image_size, rotations=tilts)  # (n, 3, S, S)
    return images, shapes, colours


def _gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Blur image b with a 5-tap separable Gaussian of std sigmas[b] pixels (sigma 0 leaves it unchanged)."""
    b, c, h, w = images.shape
    taps = torch.arange(-2, 3, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-taps ** 2 / (2 * sigmas.clamp(min=1e-3).view(-1, 1) ** 2))  # (B, 5)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B * C, 5)
    x = images.reshape(1, b * c, h, w)  # one group per (image, channel)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), kernel.view(b * c, 1, 1, 5), groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), kernel.view(b * c, 1, 5, 1), groups=b * c)
    return x.view(b, c, h, w)


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """What generators get slightly wrong: blur, brightness/colour shifts, noise. Also mirror left-right."""
    b = images.shape[0]
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731 (uniform in [0, 1))
    flip = rand(b, 1, 1, 1) < 0.5
    x = torch.where(flip, images.flip(-1), images)
    blurred = rand(b) < 0.5
    x = _gaussian_blur(x, torch.where(blurred, 0.3 + 0.7 * rand(b), torch.zeros(b)))
    x = x + 0.2 * rand(b, 1, 1, 1) - 0.1 + 0.1 * rand(b, 3, 1, 1) - 0.05  # brightness, then per-channel tint
    x = x + 0.1 * rand(b, 1, 1, 1) * torch.randn(x.shape, generator=generator)  # noise std in [0, 0.1)
    return x.clamp(-1, 1)  # like a generated image after clamping to the valid range


def _check_device(device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from None


def train_evaluator(num_train: int = 4000, steps: int = 300, seed: int = 0, image_size: int = 32,
                    device: str | torch.device = "cpu", progress: bool = True, batch_size: int = 64,
                    num_test: int = 1000, config: EvaluatorConfig | None = None, num_threads: int | None = 1
                    ) -> tuple[ShapeEvaluator, dict]:
    """Train a ShapeEvaluator on ``num_train`` freshly rendered images; test it on ``num_test`` others.

    The training images cover every (colour, shape) pair; each step draws ``batch_size`` of them and
    augments them anew. The test images are ``course_lib.data.shapes_batch(num_test, seed=seed + 1)``, the
    same distribution a generator learns from. Deterministic given ``seed`` (on one machine and torch build).

    num_threads: torch's intra-op threads while training, restored afterwards (None: leave torch's setting).
    The default 1 is on purpose: this CNN's convolutions are too small to gain much from a second thread, and
    on a busy 2-core machine two threads fighting other processes for the cores made training 5-10x slower.

    Returns ``(evaluator, report)``; the evaluator is frozen and in eval mode. report: shape_acc, colour_acc,
    joint_acc, min_pair_joint_acc (the worst colour-shape pair), num_test, train_seconds (wall clock for
    rendering, training and testing), final_loss and the arguments that matter (num_train, steps, seed,
    batch_size).
    """
    check_int("num_train", num_train, minimum=1)
    check_int("steps", steps, minimum=1)
    check_int("seed", seed, minimum=0)
    check_int("batch_size", batch_size, minimum=1)
    check_int("num_test", num_test, minimum=1)
    device = _check_device(device)
    if num_threads is not None:
        check_int("num_threads", num_threads, minimum=1)
    config = EvaluatorConfig(image_size=image_size) if config is None else config
    if not isinstance(config, EvaluatorConfig) or config.image_size != image_size \
            or (config.shapes, config.colours) != (SHAPES, COLOURS):
        raise ValueError(f"config must be an EvaluatorConfig with image_size={image_size} and the shapes world's "
                         f"classes {SHAPES} / {COLOURS}, got {config!r}")
    start = time.perf_counter()
    with _torch_threads(num_threads):
        evaluator, final_loss = _fit(config, num_train, steps, seed, batch_size, device, progress)
        report = _test_report(evaluator, num_test, seed + 1, image_size)
    report.update(train_seconds=round(time.perf_counter() - start, 2), final_loss=final_loss,
                  num_train=num_train, steps=steps, seed=seed, batch_size=batch_size)
    return evaluator, report


@contextmanager
def _torch_threads(num_threads: int | None):
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fit(config: EvaluatorConfig, num_train: int, steps: int, seed: int, batch_size: int, device: torch.device,
         progress: bool) -> tuple[ShapeEvaluator, float]:
    """The training loop: cross-entropy of both heads on augmented batches. Returns (frozen evaluator, last loss)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, without touching the global RNG
        torch.manual_seed(seed)
        evaluator = ShapeEvaluator(config)
    evaluator.to(device).train()
    images, shapes, colours = _render_training_images(num_train, config.image_size, generator)
    optimizer = torch.optim.AdamW(evaluator.parameters(), lr=3e-3, weight_decay=1e-4)
    lr_scheduler = cosine_schedule_with_warmup(optimizer, min(50, steps // 10 + 1), steps)  # the course's warm-up
    bar = tqdm(range(steps), desc="training the shape evaluator", disable=not progress)
    for step in bar:
        idx = torch.randint(num_train, (batch_size,), generator=generator)
        x = _augment(images[idx], generator).to(device)
        shape_logits, colour_logits = evaluator(x)
        loss = F.cross_entropy(shape_logits, shapes[idx].to(device)) \
            + F.cross_entropy(colour_logits, colours[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return evaluator.eval().requires_grad_(False), loss.item()


def _test_report(evaluator: ShapeEvaluator, num_test: int, seed: int, image_size: int) -> dict:
    real = shapes_batch(num_test, seed=seed, image_size=image_size)
    predicted = classify(evaluator, real["image"])
    report = score_predictions(predicted.shape_idx, predicted.colour_idx, real["shape"], real["colour"])
    per_pair = score_predictions_per_prompt(predicted.shape_idx, predicted.colour_idx, real["shape"],
                                            real["colour"])
    report["num_test"] = report.pop("n")
    report["min_pair_joint_acc"] = min(scores["joint_acc"] for scores in per_pair.values())
    return report


def _default_cache_dir() -> Path:
    return Path(os.environ.get("COURSE_LIB_CACHE", Path.home() / ".cache" / "course_lib"))


def get_evaluator(cache_dir: str | os.PathLike | None = None, seed: int = 0, device: str | torch.device = "cpu",
                  progress: bool = True) -> ShapeEvaluator:
    """The standard evaluator: trained once with ``train_evaluator``'s defaults, then loaded from disk.

    It lives in ``cache_dir / f"shape_evaluator-v{EVALUATOR_VERSION}-seed{seed}"`` (cache_dir defaults to
    $COURSE_LIB_CACHE or ~/.cache/course_lib), with the training report in ``report.json``. A missing or
    unreadable folder is (re)trained; training is deterministic given ``seed``.
    """
    check_int("seed", seed, minimum=0)
    device = _check_device(device)
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise ValueError(f"cache_dir must be a folder path or None, got {cache_dir!r}")
    folder = Path(cache_dir if cache_dir is not None else _default_cache_dir())
    folder = folder / f"shape_evaluator-v{EVALUATOR_VERSION}-seed{seed}"
    if (folder / "config.json").is_file():
        try:
            return ShapeEvaluator.from_pretrained(folder, device=device)
        except (ValueError, RuntimeError) as err:  # corrupt or from an incompatible version: train anew
            tqdm.write(f"could not load the cached evaluator in {folder} ({err}); training a new one")
    evaluator, report = train_evaluator(seed=seed, device=device, progress=progress)
    evaluator.save_pretrained(folder)
    atomic_write_json(folder / "report.json", report)
    return evaluator


# ----------------------------------------------------------------------------------------------------------
# 3. Does the picture show what the prompt asked for?
# ----------------------------------------------------------------------------------------------------------

class Classification(NamedTuple):
    """``classify``'s answer for B images: predicted indices (B,) and class probabilities (B, classes)."""
    shape_idx: torch.Tensor
    colour_idx: torch.Tensor
    shape_probs: torch.Tensor
    colour_probs: torch.Tensor


def _check_evaluator(evaluator) -> None:
    if not isinstance(evaluator, ShapeEvaluator):
        raise ValueError(f"evaluator must be a ShapeEvaluator (see get_evaluator), got {type(evaluator).__name__}")


def _prepare_images(evaluator: ShapeEvaluator, images, name: str = "images") -> torch.Tensor:
    """Check images, clamp them to [-1, 1] (generators overshoot a little) and move them to the evaluator."""
    evaluator.check_images(images, name)
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} must be finite, got NaN or inf values")
    weight = evaluator.shape_head.weight
    return images.detach().clamp(-1, 1).to(device=weight.device, dtype=weight.dtype)


@contextmanager
def _eval_mode(evaluator: ShapeEvaluator):
    """Run the evaluator in eval mode (BatchNorm's running statistics) and put its mode back afterwards."""
    was_training = evaluator.training
    evaluator.eval()
    try:
        with torch.no_grad():
            yield evaluator
    finally:
        evaluator.train(was_training)


def classify(evaluator: ShapeEvaluator, images: torch.Tensor, batch_size: int = 256) -> Classification:
    """Shape and colour of each image: (B, 3, S, S) in [-1, 1] -> Classification on the images' device.

    Values outside [-1, 1] are clamped first, as they would be when saving the image.
    """
    _check_evaluator(evaluator)
    check_int("batch_size", batch_size, minimum=1)
    x = _prepare_images(evaluator, images)
    with _eval_mode(evaluator):
        logits = [evaluator(chunk) for chunk in x.split(batch_size)]
    shape_probs = torch.cat([s for s, _ in logits]).softmax(dim=-1).to(images.device)  # (B, len(shapes))
    colour_probs = torch.cat([c for _, c in logits]).softmax(dim=-1).to(images.device)  # (B, len(colours))
    return Classification(shape_probs.argmax(dim=-1), colour_probs.argmax(dim=-1), shape_probs, colour_probs)


def _as_indices(name: str, labels, classes: tuple[str, ...]) -> torch.Tensor:
    """Class indices from a 1-D integer tensor or a list of class names or indices; returns (B,) long, CPU."""
    if isinstance(labels, torch.Tensor):
        if labels.ndim != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"{name} must be a 1-D integer tensor or a list of names from {classes}, "
                             f"got a {labels.dtype} tensor of shape {tuple(labels.shape)}")
        values = labels.tolist()
    elif isinstance(labels, (list, tuple)):
        values = [classes.index(v) if isinstance(v, str) and v in classes else v for v in labels]
    else:
        raise ValueError(f"{name} must be a 1-D integer tensor or a list of names from {classes}, "
                         f"got {type(labels).__name__}")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < len(classes)]
    if bad:
        raise ValueError(f"{name} must hold names from {classes} or indices 0..{len(classes) - 1}, got {bad[:5]!r}")
    return torch.tensor(values, dtype=torch.long)


def _labels(pred_shapes, pred_colours, target_shapes, target_colours, shapes, colours) -> list[torch.Tensor]:
    """The four label lists as (B,) long tensors, checked to be non-empty and of one length B."""
    shapes, colours = _check_names("shapes", shapes), _check_names("colours", colours)
    labels = {"pred_shapes": _as_indices("pred_shapes", pred_shapes, shapes),
              "pred_colours": _as_indices("pred_colours", pred_colours, colours),
              "target_shapes": _as_indices("target_shapes", target_shapes, shapes),
              "target_colours": _as_indices("target_colours", target_colours, colours)}
    n = len(labels["pred_shapes"])
    if n == 0:
        raise ValueError("pred_shapes must not be empty, got 0 predictions")
    for name, values in labels.items():
        if len(values) != n:
            raise ValueError(f"{name} must have one entry per prediction ({n}, like pred_shapes), got {len(values)}")
    return list(labels.values())


def _accuracies(pred_s, pred_c, target_s, target_c) -> dict:
    shape_ok, colour_ok = pred_s == target_s, pred_c == target_c
    return {"shape_acc": shape_ok.float().mean().item(), "colour_acc": colour_ok.float().mean().item(),
            "joint_acc": (shape_ok & colour_ok).float().mean().item(), "n": len(pred_s)}


def score_predictions(pred_shapes, pred_colours, target_shapes, target_colours,
                      shapes: tuple[str, ...] = SHAPES, colours: tuple[str, ...] = COLOURS) -> dict:
    """Accuracy of predicted against target labels: dict(shape_acc, colour_acc, joint_acc, n).

    Each argument is a (B,) integer tensor or a list of names/indices (names looked up in ``shapes`` and
    ``colours``). joint_acc counts an image as right only if its shape AND its colour are right.
    """
    return _accuracies(*_labels(pred_shapes, pred_colours, target_shapes, target_colours, shapes, colours))


def score_predictions_per_prompt(pred_shapes, pred_colours, target_shapes, target_colours,
                                 shapes: tuple[str, ...] = SHAPES,
                                 colours: tuple[str, ...] = COLOURS) -> dict[str, dict]:
    """``score_predictions`` for each prompt separately: {"red circle": dict(shape_acc, ...), ...}.

    Only the (colour, shape) pairs that occur among the targets appear, colour-major as in ``all_pairs``.
    """
    pred_s, pred_c, target_s, target_c = _labels(pred_shapes, pred_colours, target_shapes, target_colours,
                                                 shapes, colours)
    breakdown = {}
    for c, colour in enumerate(colours):
        for s, shape in enumerate(shapes):
            chosen = (target_c == c) & (target_s == s)  # (B,) the images prompted with this pair
            if chosen.any():
                breakdown[f"{colour} {shape}"] = _accuracies(pred_s[chosen], pred_c[chosen], target_s[chosen],
                                                             target_c[chosen])
    return breakdown


def prompt_accuracy(evaluator: ShapeEvaluator, images: torch.Tensor, target_shapes, target_colours) -> dict:
    """How often the images show the prompted shape and colour: dict(shape_acc, colour_acc, joint_acc, n).

    target_shapes / target_colours: the prompt's labels, a (B,) integer tensor or a list of names such as
    ["circle", "square", ...] / ["red", ...].
    """
    predicted = classify(evaluator, images)
    return score_predictions(predicted.shape_idx, predicted.colour_idx, target_shapes, target_colours,
                             evaluator.config.shapes, evaluator.config.colours)


def per_prompt_accuracy(evaluator: ShapeEvaluator, images: torch.Tensor, target_shapes,
                        target_colours) -> dict[str, dict]:
    """``prompt_accuracy`` for each (colour, shape) prompt separately, keyed "red circle", "blue square", ..."""
    predicted = classify(evaluator, images)
    return score_predictions_per_prompt(predicted.shape_idx, predicted.colour_idx, target_shapes, target_colours,
                                        evaluator.config.shapes, evaluator.config.colours)


# ----------------------------------------------------------------------------------------------------------
# 4. Do the pictures look like real ones? The Frechet distance ("FID-like")
# ----------------------------------------------------------------------------------------------------------

def _check_gaussian(mean_name: str, mu, cov_name: str, sigma) -> None:
    check_tensor(mean_name, mu, ndim=1, floating=True)
    check_tensor(cov_name, sigma, ndim=2, floating=True)
    d = mu.shape[0]
    if tuple(sigma.shape) != (d, d):
        raise ValueError(f"{cov_name} must be a ({d}, {d}) covariance matching {mean_name}, "
                         f"got shape {tuple(sigma.shape)}")
    if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
        raise ValueError(f"{mean_name} and {cov_name} must be finite, got NaN or inf values")
    sigma = sigma.double()
    if not torch.allclose(sigma, sigma.T, rtol=1e-5, atol=1e-8 * max(1.0, sigma.abs().max().item())):
        raise ValueError(f"{cov_name} must be a symmetric covariance matrix, got max |S - S^T| = "
                         f"{(sigma - sigma.T).abs().max().item():.3g}")


def _sqrtm_psd(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix via its eigendecomposition."""
    eigenvalues, eigenvectors = torch.linalg.eigh(sigma)
    root = eigenvalues.clamp(min=0).sqrt()  # tiny negative eigenvalues are rounding errors of a PSD matrix
    return (eigenvectors * root) @ eigenvectors.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """FD = ||mu1 - mu2||^2 + Tr(Sigma1 + Sigma2 - 2 (Sigma1 Sigma2)^(1/2)), computed in float64.

    mu: (d,) means; sigma: (d, d) symmetric positive semi-definite covariances.

    The trace of the matrix square root is computed without ever forming a non-symmetric matrix:
    Sigma1 Sigma2 has the same eigenvalues as M = Sigma1^(1/2) Sigma2 Sigma1^(1/2), which is symmetric PSD, so
    Tr((Sigma1 Sigma2)^(1/2)) = sum_i sqrt(lambda_i(M)). Everything stays real, and rank-deficient
    covariances (fewer images than feature dimensions) need no epsilon on the diagonal.
    """
    _check_gaussian("mu1", mu1, "sigma1", sigma1)
    _check_gaussian("mu2", mu2, "sigma2", sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 must have the same size d, got {tuple(mu1.shape)} and {tuple(mu2.shape)}")
    mu1, mu2 = mu1.double(), mu2.double().to(mu1.device)
    sigma1, sigma2 = sigma1.double(), sigma2.double().to(mu1.device)
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2  # exact symmetry for eigh
    # 1. squared distance between the means
    mean_term = (mu1 - mu2).square().sum()
    # 2. Tr((Sigma1 Sigma2)^(1/2)) from the eigenvalues of the symmetric M = Sigma1^(1/2) Sigma2 Sigma1^(1/2)
    root1 = _sqrtm_psd(sigma1)
    m = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    # 3. put the terms together; a distance below 0 can only be rounding error
    distance = mean_term + torch.trace(sigma1) + torch.trace(sigma2) - 2 * trace_sqrt
    return max(distance.item(), 0.0)


def _features(evaluator: ShapeEvaluator, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with _eval_mode(evaluator):
        return torch.cat([evaluator.features(chunk) for chunk in x.split(batch_size)]).double()  # (B, d)


def feature_statistics(evaluator: ShapeEvaluator, images: torch.Tensor,
                       batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu (d,), Sigma (d, d)) of the evaluator's features over ``images`` (B >= 2), in float64.

    Sigma is the unbiased sample covariance (divides by B - 1), as in FID.
    """
    _check_evaluator(evaluator)
    check_int("batch_size", batch_size, minimum=1)
    return _statistics(evaluator, images, "images", batch_size)


def _statistics(evaluator: ShapeEvaluator, images, name: str, batch_size: int = 256):
    x = _prepare_images(evaluator, images, name)
    if x.shape[0] < 2:
        raise ValueError(f"{name} must hold at least 2 images to estimate a covariance, got shape {tuple(x.shape)}")
    feats = _features(evaluator, x, batch_size)  # (B, d)
    return feats.mean(dim=0), torch.cov(feats.T)


def feature_frechet_distance(evaluator: ShapeEvaluator, images_a: torch.Tensor, images_b: torch.Tensor) -> float:
    """FID-like distance between two sets of images (B >= 2 each), in the evaluator's feature space.

    Only comparable with other values from the same evaluator and equal set sizes; not with real FID.
    """
    _check_evaluator(evaluator)
    mu_a, sigma_a = _statistics(evaluator, images_a, "images_a")
    mu_b, sigma_b = _statistics(evaluator, images_b, "images_b")
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)

"""Contracts of course_lib.metrics: the Frechet distance against closed forms and scipy, the evaluator's
accuracy on fresh real images, prompt accuracy against hand-computed values, save/load and the cache."""
import json

import numpy as np
import pytest
import scipy.linalg
import torch

from course_lib import metrics
from course_lib.data import COLOURS, POSITION_CENTERS, POSITION_JITTER, SHAPES, SIZE_RANGES, shapes_batch
from course_lib.metrics import (
    EvaluatorConfig, ShapeEvaluator, classify, feature_frechet_distance, feature_statistics, frechet_distance,
    get_evaluator, per_prompt_accuracy, prompt_accuracy, score_predictions, score_predictions_per_prompt,
    train_evaluator,
)


@pytest.fixture(scope="module")
def quick():
    """A quickly trained evaluator (a few seconds of CPU; the full one trains longer) and its report."""
    return train_evaluator(num_train=800, steps=120, num_test=300, seed=0, progress=False)


@pytest.fixture(scope="module")
def real():
    return shapes_batch(200, seed=123)  # fresh: neither the training nor the report's test images


def _random_covariance(d: int, generator: torch.Generator, rank: int | None = None) -> torch.Tensor:
    a = torch.randn(d, rank or d, generator=generator, dtype=torch.float64)
    return a @ a.T / (rank or d)


def _constant_evaluator(shape: int, colour: int) -> ShapeEvaluator:
    """An untrained evaluator whose heads ignore the image: it always answers (shape, colour)."""
    evaluator = ShapeEvaluator()
    with torch.no_grad():
        for head, answer in ((evaluator.shape_head, shape), (evaluator.colour_head, colour)):
            head.weight.zero_()
            head.bias.zero_()
            head.bias[answer] = 5.0
    return evaluator.eval()


# ---------------------------------------------------------------------------------------------------------
# Frechet distance
# ---------------------------------------------------------------------------------------------------------

def test_frechet_distance_of_identical_gaussians_is_zero():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(16, generator=g, dtype=torch.float64)
    for sigma in (_random_covariance(16, g), _random_covariance(16, g, rank=5)):  # full and rank-deficient
        assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    # For diagonal covariances (Sigma1 Sigma2)^(1/2) = diag(sqrt(v1 * v2)), so FD splits per dimension into
    # (m1 - m2)^2 + (sqrt(v1) - sqrt(v2))^2.
    m1, m2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
    expected = float(np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2))
    assert expected == pytest.approx(1 + 0 + 4 + 1 + 4 + 1 + 0 + 0.5, rel=1e-12)
    got = frechet_distance(torch.tensor(m1), torch.diag(torch.tensor(v1)), torch.tensor(m2),
                           torch.diag(torch.tensor(v2)))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_for_full_covariances():
    g = torch.Generator().manual_seed(1)
    mu1, mu2 = torch.randn(12, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)
    s1, s2 = _random_covariance(12, g), _random_covariance(12, g)
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1.numpy() + s2.numpy() - 2 * covmean))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_is_symmetric_and_nonnegative():
    g = torch.Generator().manual_seed(2)
    mu1, mu2 = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    s1, s2 = _random_covariance(8, g), _random_covariance(8, g, rank=3)
    forward, backward = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert isinstance(forward, float) and forward > 0
    # The two directions take square roots of different matrices. Sigma2 has rank 3, so 5 eigenvalues of
    # Sigma1 Sigma2 are zero; rounding makes them about +-d u |Sigma1| |Sigma2| instead, and their square roots,
    # about sqrt(d u |Sigma1| |Sigma2|) each, enter the trace (times 2 in FD) in one direction only. That
    # sqrt(u) term, not u itself, bounds how far the directions can agree.
    d, u = 8, torch.finfo(torch.float64).eps / 2
    norms = torch.linalg.matrix_norm(s1, ord=2) * torch.linalg.matrix_norm(s2, ord=2)
    sqrt_rounding = 2 * d * (d * u * norms).sqrt().item()
    assert abs(forward - backward) <= 2 * sqrt_rounding + 1e3 * u * forward
    # on full-rank covariances nothing is amplified: the directions agree to a few hundred roundings
    s3 = _random_covariance(8, g)
    forward, backward = frechet_distance(mu1, s1, mu2, s3), frechet_distance(mu2, s3, mu1, s1)
    assert forward == pytest.approx(backward, rel=1e3 * u * d)


def test_frechet_distance_accepts_float32():
    # float32 rounding makes a covariance slightly indefinite and the square root amplifies that near zero
    # eigenvalues, hence the loose tolerance (feature_statistics avoids it by working in float64).
    g = torch.Generator().manual_seed(4)
    mu1, mu2 = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    s1, s2 = _random_covariance(8, g), _random_covariance(8, g)
    exact = frechet_distance(mu1, s1, mu2, s2)
    assert frechet_distance(mu1.float(), s1.float(), mu2.float(), s2.float()) == pytest.approx(exact, rel=1e-5)


def test_frechet_distance_grows_with_mean_shift_as_its_square():
    g = torch.Generator().manual_seed(3)
    mu, sigma = torch.randn(6, generator=g, dtype=torch.float64), _random_covariance(6, g)
    direction = torch.tensor([3.0, 4.0, 0, 0, 0, 0], dtype=torch.float64)  # |direction| = 5
    distances = [frechet_distance(mu, sigma, mu + t * direction, sigma) for t in (0.0, 0.5, 1.0, 2.0)]
    assert distances == pytest.approx([0.0, 6.25, 25.0, 100.0], abs=1e-8)


# ---------------------------------------------------------------------------------------------------------
# The evaluator
# ---------------------------------------------------------------------------------------------------------

def test_training_ranges_cover_the_data_distribution():
    size_low, size_high = metrics.TRAIN_SIZE_RANGE
    assert size_low <= min(r[0] for r in SIZE_RANGES.values()) and size_high >= max(r[1] for r in SIZE_RANGES.values())
    centers = [c for xy in POSITION_CENTERS.values() for c in xy]
    low, high = metrics.TRAIN_CENTER_RANGE
    assert low <= min(centers) - POSITION_JITTER and high >= max(centers) + POSITION_JITTER


def test_config_round_trips_through_json():
    config = EvaluatorConfig(image_size=16, channels=(4, 8), feature_dim=10)
    back = EvaluatorConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config and back.channels == (4, 8) and back.shapes == SHAPES and back.colours == COLOURS


def test_every_parameter_gets_a_gradient():
    evaluator = ShapeEvaluator(EvaluatorConfig(image_size=16, channels=(4, 8), feature_dim=10))
    shape_logits, colour_logits = evaluator(torch.randn(5, 3, 16, 16))
    assert shape_logits.shape == (5, 3) and colour_logits.shape == (5, 4)
    assert evaluator.features(torch.randn(5, 3, 16, 16)).shape == (5, 10)
    (shape_logits.logsumexp(-1) + colour_logits.logsumexp(-1)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in evaluator.parameters())


def test_quick_evaluator_is_accurate_on_fresh_real_images(quick, real):
    _, report = quick
    assert report["shape_acc"] >= 0.95 and report["colour_acc"] >= 0.95 and report["num_test"] == 300
    assert report["joint_acc"] <= min(report["shape_acc"], report["colour_acc"])
    scores = prompt_accuracy(quick[0], real["image"], real["shape"], real["colour"])
    assert scores["shape_acc"] >= 0.95 and scores["colour_acc"] >= 0.95 and scores["n"] == 200


def test_classify_outputs(quick, real):
    evaluator, _ = quick
    images = real["image"][:10].clone()
    images[0] = images[0] * 1.5  # out of range: clamped for the evaluator, not changed for the caller
    kept = images.clone()
    out = classify(evaluator, images)
    assert torch.equal(images, kept)
    assert out.shape_idx.shape == (10,) and out.colour_idx.shape == (10,)
    assert out.shape_probs.shape == (10, 3) and out.colour_probs.shape == (10, 4)
    assert out.shape_idx.dtype == torch.long and out.colour_idx.dtype == torch.long
    for probs, idx in ((out.shape_probs, out.shape_idx), (out.colour_probs, out.colour_idx)):
        assert ((probs >= 0) & (probs <= 1)).all()
        torch.testing.assert_close(probs.sum(-1), torch.ones(10))
        assert torch.equal(idx, probs.argmax(-1))
    assert torch.equal(classify(evaluator, images.clamp(-1, 1)).shape_probs, out.shape_probs)
    shape_idx, colour_idx, _, _ = classify(evaluator, images, batch_size=3)  # unpacks like a tuple
    assert torch.equal(shape_idx, out.shape_idx) and torch.equal(colour_idx, out.colour_idx)


def test_classify_uses_eval_mode_and_restores_the_mode(quick, real):
    evaluator, _ = quick
    expected = classify(evaluator, real["image"][:8]).shape_probs
    evaluator.train()
    try:
        got = classify(evaluator, real["image"][:8]).shape_probs  # not BatchNorm's batch statistics
        assert evaluator.training
    finally:
        evaluator.eval()
    torch.testing.assert_close(got, expected)


def test_training_is_deterministic_and_leaves_global_state_alone():
    def tiny(seed):
        return train_evaluator(num_train=64, steps=3, num_test=12, seed=seed, progress=False,
                               config=EvaluatorConfig(channels=(4, 8, 8), feature_dim=8))[0].state_dict()

    state, threads = torch.get_rng_state(), torch.get_num_threads()
    first, second, other = tiny(0), tiny(0), tiny(1)
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["shape_head.weight"], other["shape_head.weight"])


def test_save_load_round_trip_gives_identical_predictions(quick, real, tmp_path):
    evaluator, _ = quick
    evaluator.save_pretrained(tmp_path / "evaluator")
    loaded = ShapeEvaluator.from_pretrained(tmp_path / "evaluator")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.config == evaluator.config
    assert json.loads((tmp_path / "evaluator" / "config.json").read_text())["class"] == "ShapeEvaluator"
    a, b = classify(evaluator, real["image"]), classify(loaded, real["image"])
    assert torch.equal(a.shape_probs, b.shape_probs) and torch.equal(a.colour_probs, b.colour_probs)


def test_get_evaluator_trains_once_then_reuses_the_saved_one(tmp_path, monkeypatch, real):
    calls = []

    def tiny_training(seed, device, progress):
        calls.append(seed)
        return train_evaluator(num_train=64, steps=3, num_test=12, seed=seed, device=device, progress=progress,
                               config=EvaluatorConfig(channels=(4, 8, 8), feature_dim=8))

    monkeypatch.setattr(metrics, "train_evaluator", tiny_training)
    first = get_evaluator(cache_dir=tmp_path, progress=False)
    folder = tmp_path / f"shape_evaluator-v{metrics.EVALUATOR_VERSION}-seed0"
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "report.json"}
    assert json.loads((folder / "report.json").read_text())["seed"] == 0
    second = get_evaluator(cache_dir=tmp_path, progress=False)
    assert calls == [0] and second is not first
    assert torch.equal(classify(first, real["image"]).shape_probs, classify(second, real["image"]).shape_probs)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    get_evaluator(cache_dir=tmp_path, progress=False)  # unreadable: trained again and saved again
    assert calls == [0, 0]
    assert isinstance(ShapeEvaluator.from_pretrained(folder), ShapeEvaluator)


# ---------------------------------------------------------------------------------------------------------
# Prompt accuracy
# ---------------------------------------------------------------------------------------------------------

# Five images; pair by pair: red circle (right), red circle (colour wrong), blue square (shape wrong),
# green triangle (both wrong), yellow circle (right).
PRED_SHAPES, PRED_COLOURS = [0, 0, 2, 0, 0], [0, 3, 2, 0, 3]
TARGET_SHAPES, TARGET_COLOURS = [0, 0, 1, 2, 0], [0, 0, 2, 1, 3]


def test_score_predictions_equals_hand_computed_values():
    expected = {"shape_acc": 3 / 5, "colour_acc": 3 / 5, "joint_acc": 2 / 5, "n": 5}
    assert score_predictions(PRED_SHAPES, PRED_COLOURS, TARGET_SHAPES, TARGET_COLOURS) == pytest.approx(expected)
    by_name = score_predictions(torch.tensor(PRED_SHAPES), torch.tensor(PRED_COLOURS),
                                [SHAPES[i] for i in TARGET_SHAPES], [COLOURS[i] for i in TARGET_COLOURS])
    assert by_name == pytest.approx(expected)


def test_score_predictions_per_prompt_equals_hand_computed_values():
    breakdown = score_predictions_per_prompt(PRED_SHAPES, PRED_COLOURS, TARGET_SHAPES, TARGET_COLOURS)
    assert list(breakdown) == ["red circle", "green triangle", "blue square", "yellow circle"]  # colour-major
    assert breakdown == {  # 0, 1/2 and 1 are exact in floating point
        "red circle": {"shape_acc": 1.0, "colour_acc": 0.5, "joint_acc": 0.5, "n": 2},
        "green triangle": {"shape_acc": 0.0, "colour_acc": 0.0, "joint_acc": 0.0, "n": 1},
        "blue square": {"shape_acc": 0.0, "colour_acc": 1.0, "joint_acc": 0.0, "n": 1},
        "yellow circle": {"shape_acc": 1.0, "colour_acc": 1.0, "joint_acc": 1.0, "n": 1}}


def test_prompt_accuracy_with_an_evaluator_that_always_says_green_triangle(real):
    evaluator = _constant_evaluator(shape=SHAPES.index("triangle"), colour=COLOURS.index("green"))
    images = real["image"][:4]
    shapes, colours = ["triangle", "triangle", "circle", "square"], ["green", "red", "green", "blue"]
    assert prompt_accuracy(evaluator, images, shapes, colours) == pytest.approx(
        {"shape_acc": 0.5, "colour_acc": 0.5, "joint_acc": 0.25, "n": 4})
    breakdown = per_prompt_accuracy(evaluator, images, shapes, colours)
    assert breakdown == ({  # one image per prompt: every accuracy is exactly 0 or 1
        "red triangle": {"shape_acc": 1, "colour_acc": 0, "joint_acc": 0, "n": 1},
        "green circle": {"shape_acc": 0, "colour_acc": 1, "joint_acc": 0, "n": 1},
        "green triangle": {"shape_acc": 1, "colour_acc": 1, "joint_acc": 1, "n": 1},
        "blue square": {"shape_acc": 0, "colour_acc": 0, "joint_acc": 0, "n": 1}})
    assert list(breakdown) == ["red triangle", "green circle", "green triangle", "blue square"]


# ---------------------------------------------------------------------------------------------------------
# FID-like distance on the evaluator's features
# ---------------------------------------------------------------------------------------------------------

def test_feature_statistics_are_the_mean_and_covariance_of_the_features(quick, real):
    evaluator, _ = quick
    mu, sigma = feature_statistics(evaluator, real["image"], batch_size=64)
    with torch.no_grad():
        feats = evaluator.features(real["image"]).double().numpy()
    np.testing.assert_allclose(mu.numpy(), feats.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma.numpy(), np.cov(feats, rowvar=False), rtol=1e-5, atol=1e-6)


def test_feature_frechet_distance(quick, real):
    evaluator, _ = quick
    images = real["image"]
    assert feature_frechet_distance(evaluator, images, images.clone()) == pytest.approx(0.0, abs=1e-6)
    other_real = shapes_batch(200, seed=321)["image"]
    g = torch.Generator().manual_seed(0)
    noisy = (images + 0.5 * torch.randn(images.shape, generator=g)).clamp(-1, 1)
    real_vs_real = feature_frechet_distance(evaluator, images, other_real)
    assert real_vs_real < feature_frechet_distance(evaluator, images, noisy)
    assert real_vs_real == pytest.approx(frechet_distance(*feature_statistics(evaluator, images),
                                                          *feature_statistics(evaluator, other_real)))


# ---------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------

_EV = ShapeEvaluator(EvaluatorConfig(image_size=16, channels=(4, 8), feature_dim=8)).eval()
_IMG = torch.zeros(4, 3, 16, 16)
_MU, _SIGMA = torch.zeros(3), torch.eye(3)

BAD_INPUTS = [
    ("image_size", lambda: EvaluatorConfig(image_size=20)),
    ("channels", lambda: EvaluatorConfig(channels=())),
    ("channels", lambda: EvaluatorConfig(channels=(8, 0))),
    ("feature_dim", lambda: EvaluatorConfig(feature_dim=0)),
    ("shapes", lambda: EvaluatorConfig(shapes=("circle", "circle"))),
    ("colours", lambda: EvaluatorConfig(colours="red")),
    ("unknown", lambda: EvaluatorConfig.from_dict({"image_size": 32, "depth": 3})),
    ("config", lambda: ShapeEvaluator({"image_size": 32})),
    ("images", lambda: _EV.features(torch.zeros(4, 1, 16, 16))),
    ("images", lambda: _EV(torch.zeros(4, 3, 32, 32))),
    ("images", lambda: _EV(torch.zeros(4, 3, 16, 16, dtype=torch.long))),
    ("num_train", lambda: train_evaluator(num_train=0)),
    ("steps", lambda: train_evaluator(steps=1.5)),
    ("seed", lambda: train_evaluator(seed=-1)),
    ("batch_size", lambda: train_evaluator(batch_size=0)),
    ("num_test", lambda: train_evaluator(num_test=0)),
    ("device", lambda: train_evaluator(device="gpu7")),
    ("num_threads", lambda: train_evaluator(num_threads=0)),
    ("config", lambda: train_evaluator(image_size=32, config=EvaluatorConfig(image_size=16))),
    ("seed", lambda: get_evaluator(seed="0")),
    ("cache_dir", lambda: get_evaluator(cache_dir=3)),
    ("evaluator", lambda: classify(torch.nn.Linear(3, 3), _IMG)),
    ("images", lambda: classify(_EV, _IMG.numpy())),
    ("images", lambda: classify(_EV, torch.full((4, 3, 16, 16), float("nan")))),
    ("batch_size", lambda: classify(_EV, _IMG, batch_size=0)),
    ("pred_shapes", lambda: score_predictions([], [], [], [])),
    ("pred_shapes", lambda: score_predictions([0, 3], [0, 0], [0, 0], [0, 0])),
    ("pred_colours", lambda: score_predictions([0, 0], torch.tensor([0.0, 1.0]), [0, 0], [0, 0])),
    ("target_shapes", lambda: score_predictions([0, 0], [0, 0], ["hexagon", "circle"], [0, 0])),
    ("target_colours", lambda: score_predictions([0, 0], [0, 0], [0, 0], [0])),
    ("target_colours", lambda: score_predictions([0, 0], [0, 0], [0, 0], "red")),
    ("shapes", lambda: score_predictions([0], [0], [0], [0], shapes=("circle",))),
    ("target_shapes", lambda: score_predictions_per_prompt([0], [0], [True], [0])),
    ("target_shapes", lambda: prompt_accuracy(_EV, _IMG, ["circle"] * 3, ["red"] * 4)),
    ("target_colours", lambda: per_prompt_accuracy(_EV, _IMG, ["circle"] * 4, ["purple"] * 4)),
    ("mu1", lambda: frechet_distance(torch.zeros(3, 1), _SIGMA, _MU, _SIGMA)),
    ("sigma1", lambda: frechet_distance(_MU, torch.eye(4), _MU, _SIGMA)),
    ("sigma2", lambda: frechet_distance(_MU, _SIGMA, _MU, torch.tensor([[1.0, 2, 0], [0, 1, 0], [0, 0, 1]]))),
    ("mu2", lambda: frechet_distance(_MU, _SIGMA, torch.tensor([0.0, float("inf"), 0]), _SIGMA)),
    ("mu1 and mu2", lambda: frechet_distance(_MU, _SIGMA, torch.zeros(2), torch.eye(2))),
    ("mu1", lambda: frechet_distance(torch.zeros(3, dtype=torch.long), _SIGMA, _MU, _SIGMA)),
    ("images", lambda: feature_statistics(_EV, _IMG[:1])),
    ("batch_size", lambda: feature_statistics(_EV, _IMG, batch_size=-1)),
    ("images_a", lambda: feature_frechet_distance(_EV, torch.zeros(4, 3, 8, 8), _IMG)),
    ("images_b", lambda: feature_frechet_distance(_EV, _IMG, _IMG[:1])),
    ("evaluator", lambda: feature_frechet_distance(None, _IMG, _IMG)),
]


@pytest.mark.parametrize("argname, call", BAD_INPUTS, ids=[f"{i}-{a}" for i, (a, _) in enumerate(BAD_INPUTS)])
def test_bad_input_raises_value_error_naming_the_argument(argname, call):
    with pytest.raises(ValueError, match=argname):
        call()

"""The scenes world: seeded items, non-overlapping objects, captions that read back to the scene, held-out sets."""
from collections import Counter

import pytest
import torch

from course_lib.data import render_shapes
from course_lib.scenes import (HELD_OUT_PAIRINGS, HELD_OUT_PAIRS, RELATIONS, SceneDataset, boxes_overlap,
                               parse_scene_caption, relation_holds, render_scenes, scene_caption, scenes_batch)


def test_items_are_seeded_per_item():
    a = scenes_batch(6, seed=3)
    b = SceneDataset(10, seed=3)
    assert [b[i]["caption"] for i in range(6)] == a["caption"]
    assert torch.equal(torch.stack([b[i]["image"] for i in range(6)]), a["image"])
    shifted = scenes_batch(3, seed=3, start=3)  # item 4 is item 4, whatever else is drawn with it
    assert torch.equal(shifted["image"], a["image"][3:]) and shifted["caption"] == a["caption"][3:]
    assert scenes_batch(6, seed=4)["caption"] != a["caption"]


def _box_gap(a, b) -> float:
    """Pixels between two objects' boxes along the axis where they are farthest apart (< 0: they overlap)."""
    reach = (a["size_px"] + b["size_px"]) / 2
    return max(abs(a["center_xy"][i] - b["center_xy"][i]) - reach for i in (0, 1))


@pytest.mark.parametrize("size", [40, 48, 128])
def test_every_image_size_allowed_can_place_two_objects_one_latent_pixel_apart(size):
    """The gap is a fraction of the image (8 px at 64); at every allowed size two objects of the largest size
    still fit in a relation, so placement never gives up."""
    pairs = [s["objects"] for s in scenes_batch(300, seed=4, image_size=size)["scene"] if len(s["objects"]) == 2]
    assert len(pairs) > 100
    assert min(_box_gap(a, b) for a, b in pairs) >= size / 8


def test_objects_never_overlap_and_stay_inside():
    batch = scenes_batch(64, seed=1)
    for scene in batch["scene"]:
        objects = scene["objects"]
        for o in objects:
            half = o["size_px"] / 2 + 3  # BORDER: 3 px between a box and the edge
            assert half <= o["center_xy"][0] <= 64 - half and half <= o["center_xy"][1] <= 64 - half
        if len(objects) == 2:
            a, b = objects
            assert not boxes_overlap(a["center_xy"], a["size_px"], b["center_xy"], b["size_px"], gap=8.0)
            assert _box_gap(a, b) >= 8.0  # one latent pixel of an f = 8 VAE, along x or along y
    # drawn one at a time, no pixel is touched by both objects (the coverage of one is 0 where the other's is not)
    two = [s["objects"] for s in batch["scene"] if len(s["objects"]) == 2][:8]
    for objects in two:
        alphas = [(render_scenes([[o]], 64, supersample=4) + 1).sum(1) for o in objects]
        assert (alphas[0] * alphas[1]).abs().max() == 0


def test_render_is_the_sum_of_single_objects_and_matches_the_supersampled_reference():
    scene = scenes_batch(16, seed=2)["scene"]
    objects = [s["objects"] for s in scene]
    fast = render_scenes(objects)
    # an independent composition: each object drawn alone by the shapes renderer, then added on the background
    for i, objs in enumerate(objects):
        expected = torch.full((3, 64, 64), -1.0)
        for o in objs:
            single = render_shapes(torch.tensor([("circle", "square", "triangle").index(o["shape"])]),
                                   torch.tensor([("red", "green", "blue", "yellow").index(o["colour"])]),
                                   torch.tensor([o["size_px"]]), torch.tensor([o["center_xy"]]), 64)[0]
            expected = expected + (single + 1)
        torch.testing.assert_close(fast[i], expected, rtol=0, atol=4e-7)
    reference = render_scenes(objects, supersample=8)
    # the one-pixel ramp approximates coverage: close on average, never far on a single pixel
    assert (fast - reference).abs().mean() < 0.01 and (fast - reference).abs().max() < 0.6


@pytest.mark.parametrize("split", ["train", "held_out_pairs", "held_out_pairings"])
def test_captions_parse_back_to_the_scene(split):
    for scene in scenes_batch(200, seed=5, split=split)["scene"]:
        parsed = parse_scene_caption(scene["caption"])
        assert parsed["kind"] == scene["kind"] and parsed["relation"] == scene["relation"]
        assert parsed["objects"] == [(o["colour"], o["shape"]) for o in scene["objects"]]
        if scene["relation"] is not None:
            a, b = scene["objects"]
            assert relation_holds(a["center_xy"], b["center_xy"], scene["relation"])
            assert not relation_holds(b["center_xy"], a["center_xy"], scene["relation"])


def test_grammar_examples_and_bad_captions():
    assert scene_caption("one", ("red", "circle")) == "a red circle"
    assert scene_caption("and", ("red", "circle"), ("blue", "square")) == "a red circle and a blue square"
    assert (scene_caption("relation", ("red", "circle"), ("blue", "square"), "left of")
            == "a red circle to the left of a blue square")
    below = scene_caption("relation", ("red", "circle"), ("blue", "square"), "below")
    assert below == "a red circle below a blue square"
    assert scene_caption("two", ("green", "triangle")) == "two green triangles"
    assert parse_scene_caption("two green triangles")["objects"] == [("green", "triangle")] * 2
    for bad in ("a purple circle", "a red circle left of a blue square", "two green triangle", "", None):
        with pytest.raises(ValueError, match="caption"):
            parse_scene_caption(bad)
    with pytest.raises(ValueError, match="relation"):
        scene_caption("relation", ("red", "circle"), ("blue", "square"), "near")


def test_relation_needs_the_dominant_axis():
    assert relation_holds((10, 30), (40, 35), "left of") and relation_holds((40, 35), (10, 30), "right of")
    assert relation_holds((30, 10), (32, 50), "above") and relation_holds((32, 50), (30, 10), "below")
    assert not relation_holds((10, 10), (20, 40), "left of")  # mostly below, not to the right
    assert {r for r in RELATIONS if relation_holds((0, 0), (10, 3), r)} == {"left of"}


def test_held_out_sets_never_come_from_the_training_sampler():
    held_pairs = {tuple(p) for p in HELD_OUT_PAIRS}
    held_pairings = {frozenset(map(tuple, p)) for p in HELD_OUT_PAIRINGS}
    kinds, seen_pairings = Counter(), set()
    dataset = SceneDataset(3000, seed=0)
    for i in range(len(dataset)):
        scene = dataset.describe(i)
        pairs = [(o["colour"], o["shape"]) for o in scene["objects"]]
        kinds[scene["kind"]] += 1
        assert not held_pairs & set(pairs), scene["caption"]
        if len(set(pairs)) == 2:
            assert frozenset(pairs) not in held_pairings, scene["caption"]
            seen_pairings.add(frozenset(pairs))
    assert set(kinds) == {"one", "and", "relation", "two"}
    # every object of a held-out pairing is seen, and so is the colour swap that makes it a binding test
    seen_objects = {p for pairing in seen_pairings for p in pairing}
    for pairing in held_pairings:
        assert pairing <= seen_objects
        (c1, s1), (c2, s2) = sorted(pairing)
        assert frozenset({(c1, s2), (c2, s1)}) in seen_pairings
    for split, test in (("held_out_pairs", lambda pairs: held_pairs & set(pairs)),
                        ("held_out_pairings", lambda pairs: frozenset(pairs) in held_pairings)):
        for scene in scenes_batch(100, seed=7, split=split)["scene"]:
            assert test([(o["colour"], o["shape"]) for o in scene["objects"]]), scene["caption"]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="colour"):
        render_scenes([[{"colour": "purple", "shape": "circle", "size_px": 10.0, "center_xy": (20, 20)}]])
    with pytest.raises(ValueError, match="split"):
        SceneDataset(4, split="test")
    with pytest.raises(ValueError, match="held_out_pairings"):
        SceneDataset(4, held_out_pairings=[(("green", "triangle"), ("red", "circle"))])  # an unseen pair
    with pytest.raises(ValueError, match="index"):
        SceneDataset(4).describe(4)


# ---------------------------------------------------------------------------------------------------------
# The judge (course_lib.scenes_eval)
# ---------------------------------------------------------------------------------------------------------
from course_lib.scenes_eval import (connected_components, find_objects, kernel_distance, mmd2_unbiased,  # noqa: E402
                                    read_scenes, scene_kid, score_scene, train_scene_evaluator)


def test_connected_components_by_hand():
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 1, 1] = True  # diagonal neighbours: one 8-connected component
    mask[0, 3:5, 3:6] = True  # a separate block
    mask[0, 0, 4] = True  # a lone pixel
    labels = connected_components(mask)[0]
    assert (labels == 0).equal(~mask[0])
    assert labels[0, 0] == labels[1, 1] and len(labels[mask[0]].unique()) == 3
    assert len(labels[3:5, 3:6].unique()) == 1


def test_objects_are_found_where_they_were_drawn():
    for split in ("train", "held_out_pairings"):
        real = scenes_batch(40, seed=11, split=split)
        for scene, found in zip(real["scene"], find_objects(real["image"])):
            assert len(found) == len(scene["objects"]), scene["caption"]
            for truth in scene["objects"]:  # each drawn object has a found centre within a pixel of its own
                assert min(max(abs(a - b) for a, b in zip(truth["center_xy"], f["center_xy"])) for f in found) <= 1.0


def _obj(colour, shape, x, y):
    return {"colour": colour, "shape": shape, "center_xy": (x, y)}


def test_score_scene_by_hand():
    caption = "a red circle to the left of a blue square"
    right = [_obj("blue", "square", 50, 30), _obj("red", "circle", 10, 32)]
    assert score_scene(caption, right) == {"count": True, "binding": True, "relation": True}
    mirrored = [_obj("blue", "square", 10, 30), _obj("red", "circle", 50, 32)]
    assert score_scene(caption, mirrored) == {"count": True, "binding": True, "relation": False}
    swapped = [_obj("red", "square", 50, 30), _obj("blue", "circle", 10, 32)]  # colours bound to the wrong shapes
    assert score_scene(caption, swapped) == {"count": True, "binding": False, "relation": False}
    extra = right + [_obj("red", "circle", 30, 55)]
    assert score_scene(caption, extra)["binding"] is False and score_scene(caption, extra)["count"] is False
    assert score_scene("two green triangles", [_obj("green", "triangle", 10, 10)] * 2)["binding"]
    assert score_scene("two green triangles", [_obj("green", "triangle", 10, 10)]) == {
        "count": False, "binding": False, "relation": None}


@pytest.fixture(scope="module")
def quick_judge():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    judged = train_scene_evaluator(num_train=1000, steps=120, num_test=60, seed=0)
    torch.set_num_threads(previous)
    return judged


def test_the_judge_reads_held_out_real_scenes(quick_judge):
    classifier, report = quick_judge
    for split in ("train", "held_out_pairs", "held_out_pairings"):
        for key in ("colour_acc", "shape_acc", "position_acc", "count_acc"):
            assert report[split][key] >= 0.97, (split, key, report[split][key])
    real = scenes_batch(8, seed=21, split="held_out_pairs")
    read = read_scenes(classifier, real["image"])
    assert [sorted((o["colour"], o["shape"]) for o in r) for r in read] == \
           [sorted((o["colour"], o["shape"]) for o in s["objects"]) for s in real["scene"]]


def _brute_force_mmd2(x, y):
    k = lambda a, b: (sum(p * q for p, q in zip(a, b)) / len(a) + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64) + 1
    expected = _brute_force_mmd2(x.tolist(), y.tolist())
    # float64 sums of ~50 terms of magnitude <= ~100: rounding far below 1e-10
    assert mmd2_unbiased(x, y) == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_kid_is_unbiased_on_known_distributions():
    """Two discrete distributions on 3 points in 2-D: the population MMD^2 is a finite sum, computed here
    directly; the mean of many small-sample estimates must agree with it within its standard error."""
    points_x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    points_y = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    k = lambda a, b: (a @ b.T / 2 + 1) ** 3  # noqa: E731
    population = k(points_x, points_x).mean() + k(points_y, points_y).mean() - 2 * k(points_x, points_y).mean()
    g = torch.Generator().manual_seed(1)
    for other, truth in ((points_y, population.item()), (points_x, 0.0)):
        estimates = torch.tensor([mmd2_unbiased(points_x[torch.randint(3, (4,), generator=g)],
                                                other[torch.randint(3, (4,), generator=g)]) for _ in range(3000)])
        standard_error = estimates.std() / len(estimates) ** 0.5
        assert abs(estimates.mean() - truth) < 4 * standard_error, (estimates.mean(), truth, standard_error)
    # the block estimate and its standard error: the truth lies within a few standard errors
    x, y = points_x[torch.randint(3, (400,), generator=g)], points_y[torch.randint(3, (400,), generator=g)]
    mean, se = kernel_distance(x, y, num_blocks=10)
    assert 0 < se and abs(mean - population.item()) < 4 * se


def test_kid_of_real_scenes_against_real_scenes_is_near_zero(quick_judge):
    classifier, _ = quick_judge
    a, b = scenes_batch(80, seed=31)["image"], scenes_batch(80, seed=32)["image"]
    mean, se = scene_kid(classifier, a, b, num_blocks=4)
    shifted_mean, _ = scene_kid(classifier, a, scenes_batch(80, seed=33, split="held_out_pairs")["image"] * 0.5,
                                num_blocks=4)
    assert abs(mean) < 4 * se + 1e-9 and shifted_mean > mean + 4 * se


def test_evaluate_scenes_takes_kid_against_an_independent_real_set(quick_judge, monkeypatch):
    """Regression: KID once compared the generated pictures with the real set their captions came from, in the
    same order, which biased the unbiased MMD^2 far below zero. A generator that hands back exactly those real
    pictures must score what two independent real sets score, to the last digit."""
    import course_lib.demo
    from course_lib import scenes_demo
    from course_lib.minisd import MiniSDConfig

    classifier, _ = quick_judge
    config = MiniSDConfig.fast(world="scenes", layout_guidance_scale=0.0)
    num_images = 40
    seen = scenes_batch(num_images, seed=config.seed + 20_000)  # evaluate_scenes' seen prompts (their pictures)

    def real_pictures(pipe, jobs, *args, **kwargs):  # a "perfect" generator for the seen prompts, noise otherwise
        captions = [c for c, _ in jobs]
        if captions == seen["caption"]:
            return seen["image"].clone()
        return torch.rand(len(jobs), 3, 64, 64) * 2 - 1

    compared = []  # (first set, second set) of every distance evaluate_scenes takes

    def recording(distance):
        def wrapped(judge, a, b, *args):
            compared.append((a, b))
            return distance(judge, a, b, *args)
        return wrapped

    monkeypatch.setattr(course_lib.demo, "generate_images", real_pictures)
    monkeypatch.setattr(scenes_demo, "scene_kid", recording(scenes_demo.scene_kid))
    monkeypatch.setattr(scenes_demo, "scene_fid_like", recording(scenes_demo.scene_fid_like))
    report, _ = scenes_demo.evaluate_scenes(None, classifier, config, num_images=num_images, num_held_out=8)
    assert len(compared) == 4  # KID and FID-like, each for generated vs real and real vs real
    for first, reference in compared:
        assert torch.equal(first, seen["image"])  # the perfect generator's pictures, or the real ones: the same
        shared = (reference.flatten(1)[:, None] == seen["image"].flatten(1)[None]).all(-1)
        assert not shared.any(), "the reference set must not contain the prompts' own pictures"
    kid = report["kid"]
    assert kid["generated_vs_real"] == kid["real_vs_real"], kid
    assert report["fid_like"]["generated_vs_real"] == report["fid_like"]["real_vs_real"]


def test_bidirectional_text_encoder_lets_earlier_tokens_see_later_ones():
    """The recipe's text-encoder choice (CLIPConfig.causal): with causal=False the state of "red" in
    "a red circle" depends on "circle"; with CLIP's causal mask it cannot."""
    from course_lib.text import CLIPConfig, TextEncoder
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 5, 6, 8, 2]])  # two captions that differ only in the 4th token
    for causal in (True, False):
        torch.manual_seed(0)
        encoder = TextEncoder(CLIPConfig.tiny(vocab_size=10, causal=causal)).eval()
        with torch.no_grad():
            hidden = encoder(ids, torch.ones_like(ids)).last_hidden_state  # (2, 5, width)
        earlier_equal = torch.equal(hidden[0, :3], hidden[1, :3])
        assert earlier_equal is causal, causal

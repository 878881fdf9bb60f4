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


def test_objects_never_overlap_and_stay_inside():
    batch = scenes_batch(64, seed=1)
    for scene in batch["scene"]:
        objects = scene["objects"]
        for o in objects:
            half = o["size_px"] / 2
            assert half <= o["center_xy"][0] <= 64 - half and half <= o["center_xy"][1] <= 64 - half
        if len(objects) == 2:
            a, b = objects
            assert not boxes_overlap(a["center_xy"], a["size_px"], b["center_xy"], b["size_px"])
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
    assert scene_caption("relation", ("red", "circle"), ("blue", "square"), "below") == "a red circle below a blue square"
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
    with pytest.raises(ValueError, match="split"):
        SceneDataset(4, split="test")
    with pytest.raises(ValueError, match="held_out_pairings"):
        SceneDataset(4, held_out_pairings=[(("green", "triangle"), ("red", "circle"))])  # an unseen pair
    with pytest.raises(ValueError, match="index"):
        SceneDataset(4).describe(4)

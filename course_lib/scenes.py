"""The scenes world: one or two coloured shapes on a 64x64 canvas, with captions that name how they relate.

The shapes world (``course_lib.data``) has one object per picture, so a model can never confuse which colour
goes with which shape. Stable Diffusion's best-known failure is exactly that confusion (attribute binding) and
ignoring where things are (layout). This world makes both measurable:

    "a red circle"                              one object
    "a red circle and a blue square"            two objects, anywhere
    "a red circle to the left of a blue square" two objects in a relation (left of / right of / above / below)
    "two green triangles"                       two copies of one object

Glossary (lengths in pixels of the S x S image; x grows to the right, y downwards):
    object       (colour, shape, s, (cx, cy)): an upright shape of size s centred at (cx, cy), drawn by
                 ``course_lib.data.render_shapes`` (same anti-aliasing, same supersampled reference)
    pair         an object's (colour, shape), e.g. ("red", "circle")
    pairing      the unordered set of the two pairs of a two-object scene, e.g. {red circle, blue square}
    box          the s x s square an upright shape fits in; two objects never overlap because their boxes are
                 at least ``GAP * S`` pixels apart along x or along y (8 at S = 64: one latent pixel of an
                 f = 8 VAE; with less, a generator that is off by a fraction of a latent pixel joins the two
                 into one blob), and every box is at least ``BORDER`` pixels inside the image
    relation     "A left of B" holds when B is to the right of A along x and x is the dominant axis:
                 cx_B - cx_A > |cy_B - cy_A| (likewise "right of", "above" (A higher: smaller y), "below")

Held-out combinations (never drawn by the ``"train"`` split, in any caption):
    ``HELD_OUT_PAIRS``      colour-shape pairs never seen at all (the shapes world's test of composition)
    ``HELD_OUT_PAIRINGS``   two *seen* objects never seen together: e.g. red squares and blue circles both occur,
                            but never in one picture. Each is the colour swap of a pairing that does occur (red
                            circle + blue square), so a model that binds colours loosely draws the seen one.

Item i comes from its own generator ``numpy.random.default_rng((seed, i))``: the same whether you index the
dataset, iterate over it or read it through DataLoader workers; the whole batch is rendered in one pass.
"""
from __future__ import annotations

import re
from collections import Counter
from itertools import combinations

import numpy as np
import torch

from course_lib._checks import check_choice, check_int
from course_lib.data import COLOURS, SHAPES, _check_index, _index, all_pairs, render_shapes

__all__ = [
    "KINDS", "RELATIONS", "HELD_OUT_PAIRS", "HELD_OUT_PAIRINGS", "SPLITS", "SIZE_RANGE", "GAP", "BORDER",
    "scene_caption", "parse_scene_caption", "relation_holds", "boxes_overlap", "scene_vocabulary",
    "render_scenes", "SceneDataset", "scenes_batch", "pair_counts",
]

KINDS = ("one", "and", "relation", "two")
KIND_PROBABILITIES = (0.2, 0.25, 0.4, 0.15)  # relations are the hardest lesson, so the most frequent
RELATIONS = ("left of", "right of", "above", "below")
_RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
HELD_OUT_PAIRS = (("green", "triangle"), ("yellow", "circle"))
HELD_OUT_PAIRINGS = ((("red", "square"), ("blue", "circle")), (("yellow", "triangle"), ("blue", "square")),
                     (("green", "square"), ("red", "circle")), (("yellow", "square"), ("red", "triangle")))
SPLITS = ("train", "held_out_pairs", "held_out_pairings")
SIZE_RANGE = (0.2, 0.34)  # s / S, uniform
GAP = 1 / 8  # of S, between the two boxes: 8 px at S = 64, one latent pixel at f = 8 (scales like SIZE_RANGE)
BORDER = 3.0  # pixels between a box and the image's edge (the anti-aliased edge reaches half a pixel beyond)
MIN_OFFSET = 8.0  # pixels: in a relation scene the dominant offset is at least this, and twice the other one


# ----------------------------------------------------------------------------------------------------------
# 1. Captions: the grammar and its parser
# ----------------------------------------------------------------------------------------------------------

def _pair(name: str, value) -> tuple[str, str]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and value[0] in COLOURS and value[1] in SHAPES):
        raise ValueError(f"{name} must be a (colour, shape) pair with colour in {COLOURS} and shape in {SHAPES}, "
                         f"got {value!r}")
    return tuple(value)


def scene_caption(kind: str, first, second=None, relation: str | None = None) -> str:
    """The caption grammar. first/second: (colour, shape) pairs; relation only for kind "relation".

    one: "a red circle"; and: "a red circle and a blue square"; relation: "a red circle to the left of a blue
    square"; two: "two red circles" (second must be None or equal to first).
    """
    check_choice("kind", kind, KINDS)
    (c1, s1) = _pair("first", first)
    if kind == "one" and second is not None:
        raise ValueError(f"second must be None for kind 'one', got {second!r}")
    if kind == "two" and second is not None and tuple(second) != (c1, s1):
        raise ValueError(f"second must be None or equal to first for kind 'two', got {second!r}")
    if kind in ("one", "two"):
        return f"a {c1} {s1}" if kind == "one" else f"two {c1} {s1}s"
    (c2, s2) = _pair("second", second)
    if kind == "and":
        return f"a {c1} {s1} and a {c2} {s2}"
    check_choice("relation", relation, RELATIONS)
    return f"a {c1} {s1} {_RELATION_PHRASES[relation]} a {c2} {s2}"


_OBJECT = rf"a (?P<{{c}}>{'|'.join(COLOURS)}) (?P<{{s}}>{'|'.join(SHAPES)})"
_CAPTION_RES = {
    "one": re.compile(_OBJECT.format(c="c1", s="s1")),
    "and": re.compile(_OBJECT.format(c="c1", s="s1") + " and " + _OBJECT.format(c="c2", s="s2")),
    "relation": re.compile(_OBJECT.format(c="c1", s="s1")
                           + rf" (?P<rel>{'|'.join(_RELATION_PHRASES.values())}) " + _OBJECT.format(c="c2", s="s2")),
    "two": re.compile(rf"two (?P<c1>{'|'.join(COLOURS)}) (?P<s1>{'|'.join(SHAPES)})s"),
}


def parse_scene_caption(caption: str) -> dict:
    """Read a caption of the grammar back: dict(kind, objects=[(colour, shape), ...] in caption order, relation).

    "two red circles" gives objects [("red", "circle"), ("red", "circle")]; relation is None unless kind is
    "relation".
    """
    for kind, pattern in _CAPTION_RES.items():
        match = pattern.fullmatch(caption) if isinstance(caption, str) else None
        if match is None:
            continue
        first = (match["c1"], match["s1"])
        second = {"one": None, "two": first}[kind] if kind in ("one", "two") else (match["c2"], match["s2"])
        relation = None
        if kind == "relation":
            relation = next(r for r, phrase in _RELATION_PHRASES.items() if phrase == match["rel"])
        return {"kind": kind, "objects": [first] if second is None else [first, second], "relation": relation}
    raise ValueError(f"caption must follow the scenes grammar ('a red circle', 'a red circle and a blue square', "
                     f"'a red circle to the left of a blue square', 'two red circles'), got {caption!r}")


def scene_vocabulary() -> list[str]:
    """Every caption shape the grammar has, one per kind and relation (enough to build a tokenizer's vocabulary)."""
    pairs = all_pairs()
    texts = [scene_caption("one", p) for p in pairs] + [scene_caption("two", p) for p in pairs]
    texts += [scene_caption("relation", pairs[0], pairs[-1], r) for r in RELATIONS]
    return texts + [scene_caption("and", pairs[0], pairs[-1])]


# ----------------------------------------------------------------------------------------------------------
# 2. Geometry: non-overlap and relations
# ----------------------------------------------------------------------------------------------------------

def boxes_overlap(center_a, size_a: float, center_b, size_b: float, gap: float) -> bool:
    """True unless the two s x s boxes are at least ``gap`` pixels apart along x or along y."""
    reach = (size_a + size_b) / 2 + gap
    return abs(center_a[0] - center_b[0]) < reach and abs(center_a[1] - center_b[1]) < reach


def relation_holds(center_a, center_b, relation: str) -> bool:
    """Does "A <relation> B" hold for objects centred at center_a, center_b (x right, y down)?

    The named direction must be the dominant one: "left of" needs cx_b - cx_a > |cy_b - cy_a|.
    """
    check_choice("relation", relation, RELATIONS)
    dx, dy = center_b[0] - center_a[0], center_b[1] - center_a[1]
    along = {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[relation]
    across = abs(dy) if relation in ("left of", "right of") else abs(dx)
    return bool(along > across)


# ----------------------------------------------------------------------------------------------------------
# 3. Rendering
# ----------------------------------------------------------------------------------------------------------

def render_scenes(scenes: list[list[dict]], image_size: int = 64, supersample: int | None = None) -> torch.Tensor:
    """Draw a batch of scenes at once: returns (B, 3, S, S) float32 in [-1, 1] on the black background.

    scenes: for each image a list of objects dict(colour, shape (names or indices), size_px, center_xy).
    Every object of the batch is drawn in one ``render_shapes`` call; objects do not overlap, so the picture
    is the background plus each object's own contribution. supersample: as in ``render_shapes``.
    """
    check_int("image_size", image_size, minimum=8, maximum=512)
    if not isinstance(scenes, (list, tuple)) or not all(isinstance(s, (list, tuple)) for s in scenes):
        raise ValueError(f"scenes must be a list of lists of object dicts, got {type(scenes).__name__}")
    flat = [(i, obj) for i, scene in enumerate(scenes) for obj in scene]
    canvas = torch.full((len(scenes), 3, image_size, image_size), -1.0)
    if not flat:
        return canvas
    drawn = render_shapes(torch.tensor([_index("shape", o["shape"], SHAPES) for _, o in flat]),
                          torch.tensor([_index("colour", o["colour"], COLOURS) for _, o in flat]),
                          torch.tensor([float(o["size_px"]) for _, o in flat]),
                          torch.tensor([list(map(float, o["center_xy"])) for _, o in flat]),
                          image_size, supersample=supersample)  # (objects, 3, S, S)
    owner = torch.tensor([i for i, _ in flat])
    return canvas.index_add(0, owner, drawn + 1)  # background -1 plus each object's (image - background)


# ----------------------------------------------------------------------------------------------------------
# 4. The dataset: seeded per item, split into training and held-out combinations
# ----------------------------------------------------------------------------------------------------------

def _pairings(pairs: list[tuple[str, str]]) -> list[frozenset]:
    return [frozenset(p) for p in combinations(pairs, 2)]


class SceneDataset(torch.utils.data.Dataset):
    """Captioned scenes: item i = dict(image (3, S, S) in [-1, 1], caption str).

    split "train": only seen pairs, never a held-out pairing. "held_out_pairs": every scene holds at least one
    held-out pair. "held_out_pairings": two-object scenes ("and" or "relation") of a held-out pairing only.
    ``describe(i)`` gives the choices behind item i without drawing it.
    """

    def __init__(self, num_samples: int, image_size: int = 64, seed: int = 0, split: str = "train",
                 held_out_pairs=HELD_OUT_PAIRS, held_out_pairings=HELD_OUT_PAIRINGS):
        check_int("num_samples", num_samples, minimum=1)
        check_int("image_size", image_size, minimum=40, maximum=512)  # below 40 two large objects cannot keep GAP
        check_int("seed", seed, minimum=0)
        check_choice("split", split, SPLITS)
        self.held_out_pairs = [_pair("held_out_pairs[i]", p) for p in held_out_pairs]
        self.held_out_pairings = [frozenset(_pair("held_out_pairings[i][j]", p) for p in pairing)
                                  for pairing in held_out_pairings]
        self.seen_pairs = [p for p in all_pairs() if p not in self.held_out_pairs]
        for pairing in self.held_out_pairings:
            if len(pairing) != 2 or not pairing <= set(self.seen_pairs):
                raise ValueError(f"held_out_pairings must pair two different seen (colour, shape) pairs, "
                                 f"got {sorted(pairing)}")
        self._train_pairings = [p for p in _pairings(self.seen_pairs) if p not in self.held_out_pairings]
        self.num_samples, self.image_size, self.seed, self.split = num_samples, image_size, seed, split

    def __len__(self) -> int:
        return self.num_samples

    def _objects(self, rng: np.random.Generator) -> tuple[str, list[tuple[str, str]]]:
        """The caption kind and the pairs of its objects, for this dataset's split."""
        if self.split == "held_out_pairings":
            pairing = sorted(self.held_out_pairings[rng.integers(len(self.held_out_pairings))])
            return ("and", "relation")[rng.integers(2)], [pairing[i] for i in rng.permutation(2)]
        kind = KINDS[rng.choice(len(KINDS), p=KIND_PROBABILITIES)]
        if self.split == "held_out_pairs":
            new = self.held_out_pairs[rng.integers(len(self.held_out_pairs))]
            if kind in ("one", "two"):
                return kind, [new] * (1 if kind == "one" else 2)
            other = [p for p in all_pairs() if p != new]
            pair = [new, other[rng.integers(len(other))]]
            return kind, [pair[i] for i in rng.permutation(2)]
        if kind in ("one", "two"):
            pair = self.seen_pairs[rng.integers(len(self.seen_pairs))]
            return kind, [pair] * (1 if kind == "one" else 2)
        pairing = sorted(self._train_pairings[rng.integers(len(self._train_pairings))])
        return kind, [pairing[i] for i in rng.permutation(2)]

    def _place(self, rng: np.random.Generator, count: int, relation: str | None) -> tuple[list, list]:
        """Sizes and centres of ``count`` non-overlapping objects (inside the image), satisfying ``relation``."""
        low, high, S = *SIZE_RANGE, self.image_size
        sizes = [float((low + (high - low) * rng.random()) * S) for _ in range(count)]
        for _ in range(1000):  # rejection sampling: a few tries on average
            centers = [tuple(float(v) for v in rng.uniform(s / 2 + BORDER, S - s / 2 - BORDER, size=2)) for s in sizes]
            if count == 1:
                return sizes, centers
            if boxes_overlap(centers[0], sizes[0], centers[1], sizes[1], gap=GAP * S):
                continue
            if relation is None or _clear_relation(centers[0], centers[1], relation):
                return sizes, centers
        raise AssertionError("could not place the objects")  # unreachable for the image sizes allowed

    def describe(self, index: int) -> dict:
        """The choices behind item ``index``: dict(caption, kind, relation, objects=[dict(colour, shape,
        size_px, center_xy)]) with names, sizes and centres in pixels, objects in caption order."""
        index = _check_index(index, self.num_samples)
        rng = np.random.default_rng((self.seed, index))
        kind, pairs = self._objects(rng)
        relation = RELATIONS[rng.integers(len(RELATIONS))] if kind == "relation" else None
        sizes, centers = self._place(rng, len(pairs), relation)
        objects = [{"colour": c, "shape": s, "size_px": size, "center_xy": center}
                   for (c, s), size, center in zip(pairs, sizes, centers)]
        caption = scene_caption(kind, pairs[0], pairs[1] if len(pairs) == 2 else None, relation)
        return {"caption": caption, "kind": kind, "relation": relation, "objects": objects}

    def batch(self, indices) -> dict:
        """Items ``indices`` in one vectorised pass: dict(image (n, 3, S, S), caption [n], scene [n described])."""
        described = [self.describe(i) for i in indices]
        if not described:
            raise ValueError(f"indices must not be empty, got {indices!r}")
        images = render_scenes([d["objects"] for d in described], self.image_size)
        return {"image": images, "caption": [d["caption"] for d in described], "scene": described}

    def __getitems__(self, indices) -> list[dict]:
        batch = self.batch(indices)
        return [{"image": image, "caption": caption} for image, caption in zip(batch["image"], batch["caption"])]

    def __getitem__(self, index) -> dict:
        return self.__getitems__([index])[0]


def _clear_relation(center_a, center_b, relation: str) -> bool:
    """The relation holds with a margin a reader (and a judge) cannot miss: see MIN_OFFSET."""
    dx, dy = abs(center_b[0] - center_a[0]), abs(center_b[1] - center_a[1])
    along, across = (dx, dy) if relation in ("left of", "right of") else (dy, dx)
    return relation_holds(center_a, center_b, relation) and along >= MIN_OFFSET and along >= 2 * across


def scenes_batch(n: int, seed: int = 0, image_size: int = 64, split: str = "train", start: int = 0,
                 held_out_pairs=HELD_OUT_PAIRS, held_out_pairings=HELD_OUT_PAIRINGS) -> dict:
    """Items ``start .. start + n - 1`` of ``SceneDataset(..., seed=seed, split=split)`` in one pass."""
    check_int("n", n, minimum=1)
    check_int("start", start, minimum=0)
    dataset = SceneDataset(start + n, image_size, seed, split, held_out_pairs, held_out_pairings)
    return dataset.batch(range(start, start + n))


def pair_counts(scene: dict) -> Counter:
    """The multiset of (colour, shape) pairs of a described scene."""
    return Counter((o["colour"], o["shape"]) for o in scene["objects"])

"""Contracts of course_lib.data: the shapes world, the digits, image folders."""
import json
import math
import socket
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from course_lib.data import (BACKGROUND_RGB, COLOUR_RGB, COLOURS, POSITIONS, SHAPES, SIZES, VOCABULARY,
                             ShapesDataset, all_pairs, caption_for, load_digits, load_image_dataset, parse_caption,
                             prepare_image, render_shape, render_shapes, shapes_batch, write_image_folder)

QUANTUM = 2 / 255  # one grey level of a uint8 image, in [-1, 1] units


def alpha_of(image: torch.Tensor, colour: str) -> torch.Tensor:
    """Coverage (H, W) recovered from a [-1, 1] image, from the channel where colour and background differ most."""
    colour_rgb, background = torch.tensor(COLOUR_RGB[colour]) / 255, torch.tensor(BACKGROUND_RGB) / 255
    c = int((colour_rgb - background).abs().argmax())
    return ((image[c] + 1) / 2 - background[c]) / (colour_rgb[c] - background[c])


def as_01(rgb) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32) / 255 * 2 - 1


# ---------------------------------------------------------------------------------------------- the grammar

def test_captions_follow_the_grammar():
    assert caption_for("red", "circle") == "a red circle"
    assert caption_for("blue", "square", "small", "top left") == "a small blue square at the top left"
    assert caption_for(3, 2, 1, 4) == "a large yellow triangle in the center"
    assert caption_for("green", "circle", position="bottom right") == "a green circle at the bottom right"


def test_every_caption_parses_back_and_uses_only_the_vocabulary():
    count = 0
    for colour in COLOURS:
        for shape in SHAPES:
            for size in (None, *SIZES):
                for position in (None, *POSITIONS):
                    caption = caption_for(colour, shape, size, position)
                    assert set(caption.split()) <= set(VOCABULARY)
                    assert parse_caption(caption) == {
                        "colour": COLOURS.index(colour), "shape": SHAPES.index(shape),
                        "size": None if size is None else SIZES.index(size),
                        "position": None if position is None else POSITIONS.index(position)}
                    count += 1
    assert count == len(COLOURS) * len(SHAPES) * 3 * 6
    assert len(all_pairs()) == len(set(all_pairs())) == len(COLOURS) * len(SHAPES)


def test_vocabulary_is_exactly_the_words_the_grammar_uses():
    words = {"a", "at", "in", "the", "top", "bottom", "left", "right", "center", *COLOURS, *SHAPES, *SIZES}
    assert set(VOCABULARY) == words and len(VOCABULARY) == len(words)


def test_colours_are_clearly_distinct_from_each_other_and_the_background():
    rgbs = [np.array(COLOUR_RGB[c], dtype=float) for c in COLOURS] + [np.array(BACKGROUND_RGB, dtype=float)]
    for i in range(len(rgbs)):
        for j in range(i):
            assert np.linalg.norm(rgbs[i] - rgbs[j]) > 100


# ---------------------------------------------------------------------------------------------- rendering

def test_red_circle_is_red_in_its_centre_and_background_elsewhere():
    image = render_shape("circle", "red", 16, (16, 16))
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    torch.testing.assert_close(image[:, 14:18, 14:18], as_01(COLOUR_RGB["red"]).view(3, 1, 1).expand(3, 4, 4))
    background = as_01(BACKGROUND_RGB).view(3, 1, 1)
    for corner in (image[:, :6, :6], image[:, -6:, -6:], image[:, :6, -6:], image[:, -6:, :6]):
        torch.testing.assert_close(corner, background.expand_as(corner))


def test_grid_aligned_square_is_exact():
    # s = 10 centred at (16, 16): edges on the pixel boundaries 11 and 21, so alpha is exactly 0 or 1 ...
    alpha = alpha_of(render_shape("square", "green", 10, (16, 16)), "green")
    expected = torch.zeros(32, 32)
    expected[11:21, 11:21] = 1
    torch.testing.assert_close(alpha, expected, atol=1e-6, rtol=0)
    # ... shifted by half a pixel to the right, the left and right edge columns are half covered.
    alpha = alpha_of(render_shape("square", "green", 10, (16.5, 16)), "green")
    expected = torch.zeros(32, 32)
    expected[11:21, 12:21] = 1
    expected[11:21, 11] = expected[11:21, 21] = 0.5
    torch.testing.assert_close(alpha, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape, area_over_s2", [("circle", math.pi / 4), ("square", 1.0), ("triangle", 0.5)])
def test_shape_areas_match_geometry(shape, area_over_s2):
    s = 18.0
    alpha = alpha_of(render_shape(shape, "blue", s, (16.3, 15.8)), "blue")
    assert alpha.min() >= 0 and alpha.max() <= 1 + 1e-6
    assert alpha.sum().item() == pytest.approx(area_over_s2 * s * s, rel=0.02)


def test_circle_and_square_of_the_same_size_differ_in_area():
    circle = alpha_of(render_shape("circle", "red", 14, (16, 16)), "red").sum()
    square = alpha_of(render_shape("square", "red", 14, (16, 16)), "red").sum()
    assert (square / circle).item() == pytest.approx(4 / math.pi, rel=0.03)


def test_triangle_points_up_and_rotation_turns_it_counter_clockwise():
    upright = alpha_of(render_shape("triangle", "yellow", 16, (16, 16)), "yellow")
    row_widths = upright.sum(dim=1)[8:24]  # rows crossing the triangle, top to bottom
    assert (row_widths[1:] >= row_widths[:-1] - 1e-6).all() and row_widths[-1] > 3 * row_widths[1]
    upside_down = alpha_of(render_shape("triangle", "yellow", 16, (16, 16), rotation=180), "yellow")
    torch.testing.assert_close(upside_down, upright.flip(0), atol=1e-4, rtol=0)
    pointing_left = alpha_of(render_shape("triangle", "yellow", 16, (16, 16), rotation=90), "yellow")
    column_widths = pointing_left.sum(dim=0)[8:24]  # apex on the left: columns widen to the right
    assert (column_widths[1:] >= column_widths[:-1] - 1e-6).all() and column_widths[-1] > 3 * column_widths[1]
    torch.testing.assert_close(pointing_left, torch.rot90(upright, 1), atol=1e-4, rtol=0)  # rot90: counter-clockwise
    square = render_shape("square", "red", 12, (16, 16))
    torch.testing.assert_close(render_shape("square", "red", 12, (16, 16), rotation=90), square, atol=1e-4, rtol=0)


def test_fast_coverage_matches_supersampled_reference():
    g = torch.Generator().manual_seed(0)
    n = 64
    shapes, colours = torch.randint(0, 3, (n,), generator=g), torch.randint(0, 4, (n,), generator=g)
    sizes, centers = 7 + 10 * torch.rand(n, generator=g), 8 + 16 * torch.rand(n, 2, generator=g)
    rotations = 360 * torch.rand(n, generator=g)
    fast = render_shapes(shapes, colours, sizes, centers, rotations=rotations)
    reference = render_shapes(shapes, colours, sizes, centers, rotations=rotations, supersample=8)
    alpha_fast = torch.stack([alpha_of(x, COLOURS[c]) for x, c in zip(fast, colours)])
    alpha_ref = torch.stack([alpha_of(x, COLOURS[c]) for x, c in zip(reference, colours)])
    # Tolerances: corner pixels are where the edge-product estimate is furthest from the true coverage.
    assert (alpha_fast - alpha_ref).abs().mean() < 0.003
    assert (alpha_fast - alpha_ref).abs().max() < 0.15
    torch.testing.assert_close(alpha_fast.sum((1, 2)), alpha_ref.sum((1, 2)), rtol=0.03, atol=0)


# ---------------------------------------------------------------------------------------------- the dataset

def test_items_have_the_documented_types_shapes_and_range():
    item = ShapesDataset(5, image_size=24, seed=1)[3]
    assert set(item) == {"image", "caption", "shape", "colour", "size", "position"}
    assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert all(isinstance(item[k], int) for k in ("shape", "colour", "size", "position"))
    assert isinstance(item["caption"], str)


def test_determinism_by_seed_and_random_access():
    a, b = ShapesDataset(40, seed=7), ShapesDataset(40, seed=7)
    order = [13, 2, 39, 2, 0, -1]
    for i in order:
        torch.testing.assert_close(a[i]["image"], b[i]["image"], atol=0, rtol=0)
        assert a[i]["caption"] == b[i]["caption"]
    batch = shapes_batch(40, seed=7)
    for i in order:  # random access == the i-th item of a sequential, vectorised pass
        torch.testing.assert_close(a[i]["image"], batch["image"][i], atol=0, rtol=0)
        assert a[i]["caption"] == batch["caption"][i] and a[i]["shape"] == batch["shape"][i]
    middle = shapes_batch(10, seed=7, start=25)
    torch.testing.assert_close(middle["image"], batch["image"][25:35], atol=0, rtol=0)
    assert middle["caption"] == batch["caption"][25:35]
    other = shapes_batch(40, seed=8)
    assert not torch.equal(other["image"], batch["image"]) and other["caption"] != batch["caption"]


def test_dataloader_workers_give_identical_data():
    dataset = ShapesDataset(12, seed=3, caption_style="mixed")
    reference = shapes_batch(12, seed=3, caption_style="mixed")
    items = dataset.__getitems__([5, 0, 11])  # the batched fetch DataLoader uses == single items
    for item, i in zip(items, [5, 0, 11]):
        torch.testing.assert_close(item["image"], dataset[i]["image"], atol=0, rtol=0)
        assert item == {**dataset[i], "image": item["image"]}
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2)
    batches = list(loader)
    torch.testing.assert_close(torch.cat([b["image"] for b in batches]), reference["image"], atol=0, rtol=0)
    assert sum((b["caption"] for b in batches), []) == reference["caption"]
    torch.testing.assert_close(torch.cat([b["colour"] for b in batches]), reference["colour"])


def test_caption_styles_change_captions_only():
    full, short, mixed = (shapes_batch(200, seed=5, caption_style=s) for s in ("full", "short", "mixed"))
    torch.testing.assert_close(full["image"], short["image"], atol=0, rtol=0)
    torch.testing.assert_close(full["image"], mixed["image"], atol=0, rtol=0)
    said = Counter()
    for i in range(200):
        labels = {k: int(full[k][i]) for k in ("colour", "shape", "size", "position")}
        assert parse_caption(full["caption"][i]) == labels
        assert parse_caption(short["caption"][i]) == {**labels, "size": None, "position": None}
        parsed = parse_caption(mixed["caption"][i])
        for key in ("colour", "shape", "size", "position"):
            assert parsed[key] in (labels[key], None) and (parsed[key] is not None or key in ("size", "position"))
        said[(parsed["size"] is not None, parsed["position"] is not None)] += 1
        assert set(mixed["caption"][i].split()) <= set(VOCABULARY)
    assert len(said) == 4 and min(said.values()) > 20  # each of the four combinations shows up


def test_labels_describe_the_pixels():
    batch = shapes_batch(150, seed=11, image_size=32)
    areas = {}
    for image, shape, colour, size, position in zip(batch["image"], batch["shape"], batch["colour"],
                                                    batch["size"], batch["position"]):
        alpha = alpha_of(image, COLOURS[colour])
        assert alpha.max() > 0.99  # the shape is drawn in the labelled colour
        outside = alpha < 1e-6
        assert outside.float().mean() > 0.5  # mostly background, and exactly the background colour
        torch.testing.assert_close(image[:, outside], as_01(BACKGROUND_RGB).view(3, 1).expand(3, int(outside.sum())))
        ys, xs = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
        cx, cy = (alpha * xs).sum() / alpha.sum(), (alpha * ys).sum() / alpha.sum()
        name = POSITIONS[position]
        if name == "center":
            assert abs(cx - 16) < 2 and abs(cy - 16) < 4  # a triangle's centroid sits below its box centre
        else:
            assert (cx < 16) == ("left" in name) and (cy < 16) == ("top" in name)
        areas.setdefault((int(shape), int(size)), []).append(alpha.sum().item())
    for shape in range(len(SHAPES)):
        assert max(areas[(shape, 0)]) < min(areas[(shape, 1)])  # small is smaller than large, shape by shape


def test_exclude_pairs_and_pairs_are_honoured():
    held_out = [("red", "triangle"), ("blue", "circle")]
    batch = shapes_batch(400, seed=2, exclude_pairs=held_out)
    seen = {(COLOURS[c], SHAPES[s]) for c, s in zip(batch["colour"].tolist(), batch["shape"].tolist())}
    assert seen == set(all_pairs()) - set(held_out)
    assert not any(("red triangle" in c or "blue circle" in c) for c in batch["caption"])
    only = [("green", "square"), ("yellow", "circle")]
    batch = shapes_batch(60, seed=2, pairs=only, caption_style="short")
    assert set(batch["caption"]) == {"a green square", "a yellow circle"}


# ---------------------------------------------------------------------------------------------- digits

def test_digits_at_native_size_are_the_sklearn_values():
    from sklearn.datasets import load_digits as sklearn_digits

    reference = sklearn_digits()
    images, labels = load_digits(image_size=8, split="all")
    expected = torch.tensor(reference.images, dtype=torch.float32).unsqueeze(1) / 8 - 1  # 0..16 -> -1..1
    torch.testing.assert_close(images, expected)
    assert torch.equal(labels, torch.tensor(reference.target, dtype=torch.long))



def test_digits_without_the_csv_shortcut_are_the_same(monkeypatch):
    """Where scikit-learn's data file is not found (another package layout), its own loader gives the table."""
    import importlib.util

    fast, fast_labels = load_digits(image_size=8, split="all")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    slow, slow_labels = load_digits(image_size=8, split="all")
    assert torch.equal(fast, slow) and torch.equal(fast_labels, slow_labels)


def test_loading_digits_does_not_import_sklearn():
    """load_digits is called in graded kernels: the csv shortcut spares them scikit-learn's ~1 s import."""
    code = ("import sys; from course_lib.data import load_digits; load_digits(8); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy', 'pandas')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out

def test_digits_resized_shapes_range_and_split():
    train, train_labels = load_digits(image_size=16, split="train")
    test, test_labels = load_digits(image_size=16, split="test")
    every, every_labels = load_digits(image_size=16, split="all")
    assert train.shape == (1797 - 359, 1, 16, 16) and test.shape == (359, 1, 16, 16)  # round(1797 * 0.2) = 359
    assert train.dtype == torch.float32 and train_labels.dtype == torch.long
    assert every.min() >= -1 and every.max() <= 1 and set(every_labels.tolist()) == set(range(10))
    # train and test partition the whole set (as multisets of (image, label))
    key = lambda x, y: (x.numpy().tobytes(), int(y))  # noqa: E731
    assert Counter(map(key, train, train_labels)) + Counter(map(key, test, test_labels)) == \
        Counter(map(key, every, every_labels))
    # Bilinear x2 with pixel centres at (i + 1/2) / 2: every new pixel mixes its two nearest old ones with
    # weights 3/4 and 1/4 (the outermost ones copy the edge). Written as a matrix M (16, 8): x16 = M x8 M^T.
    m = torch.zeros(16, 8)
    for i in range(8):
        m[2 * i, i] = m[2 * i + 1, i] = 0.75
        m[2 * i, max(i - 1, 0)] += 0.25
        m[2 * i + 1, min(i + 1, 7)] += 0.25
    native, _ = load_digits(image_size=8, split="all")
    torch.testing.assert_close(every, m @ native @ m.T, atol=1e-5, rtol=0)
    again, _ = load_digits(image_size=16, split="test")
    other, _ = load_digits(image_size=16, split="test", seed=1)
    assert torch.equal(again, test) and not torch.equal(other, test)


# ---------------------------------------------------------------------------------------------- image folders

@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("load_image_dataset tried to open a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_image_folder_round_trip_offline(tmp_path, no_network):
    batch = shapes_batch(5, seed=4)
    folder = write_image_folder(tmp_path / "shapes", batch["image"], batch["caption"])
    lines = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert [line["text"] for line in lines] == batch["caption"]
    assert all((folder / line["file_name"]).is_file() for line in lines)
    dataset = load_image_dataset(str(folder), image_size=32, cache_dir=tmp_path / "cache")
    assert len(dataset) == 5
    items = sorted((dataset[i] for i in range(5)), key=lambda item: batch["caption"].index(item["caption"]))
    for item, image in zip(items, batch["image"]):
        assert item["image"].shape == (3, 32, 32)
        assert (item["image"] - image).abs().max() <= QUANTUM / 2 + 1e-6  # PNG stores uint8: half a level off
    unconditional = load_image_dataset(folder, image_size=16, caption_column=None, cache_dir=tmp_path / "cache")
    assert unconditional[0]["caption"] == "" and unconditional[0]["image"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="caption_column"):
        load_image_dataset(folder, caption_column="prompt", cache_dir=tmp_path / "cache")
    with pytest.raises(IndexError):
        dataset[5]


def test_missing_relative_folder_is_an_error_not_a_hub_lookup(tmp_path, monkeypatch, no_network):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="source 'data/shapes'"):
        load_image_dataset("data/shapes")


def test_overwrite_replaces_a_written_folder(tmp_path):
    first, second = shapes_batch(4, seed=0), shapes_batch(2, seed=1)
    folder = write_image_folder(tmp_path / "d", first["image"], first["caption"])
    with pytest.raises(ValueError, match="folder"):
        write_image_folder(folder, second["image"], second["caption"])
    write_image_folder(folder, second["image"], second["caption"], overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png", "metadata.jsonl"]
    grey = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)
    write_image_folder(tmp_path / "grey", grey, ["ramp"])
    assert Image.open(tmp_path / "grey" / "00000.png").mode == "L"


def test_prepare_image_resizes_the_short_side_and_centre_crops():
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # wide image: red | green | green | blue quarters
    pixels[:, :10] = (255, 0, 0)
    pixels[:, 10:30] = (0, 255, 0)
    pixels[:, 30:] = (0, 0, 255)
    image = prepare_image(Image.fromarray(pixels), 10)
    assert image.shape == (3, 10, 10)
    torch.testing.assert_close(image[:, :, 1:-1], as_01((0, 255, 0)).view(3, 1, 1).expand(3, 10, 8), atol=0.02,
                               rtol=0)


# ---------------------------------------------------------------------------------------------- bad input

GOOD = shapes_batch(2, seed=0)

BAD_INPUT = [
    (lambda tmp: caption_for("purple", "circle"), "colour"),
    (lambda tmp: caption_for("red", "hexagon"), "shape"),
    (lambda tmp: caption_for("red", "circle", size="medium"), "size"),
    (lambda tmp: caption_for("red", "circle", position=5), "position"),
    (lambda tmp: parse_caption("a purple circle"), "caption"),
    (lambda tmp: parse_caption("a red circle at the center"), "caption"),
    (lambda tmp: parse_caption(3), "caption"),
    (lambda tmp: render_shape("circle", "red", -1.0, (16, 16)), "size_px"),
    (lambda tmp: render_shape("circle", "red", 8.0, (16,)), "center_xy"),
    (lambda tmp: render_shape("circle", "red", 8.0, (16, 16), image_size=2), "image_size"),
    (lambda tmp: render_shape("circle", "red", 8.0, (16, 16), rotation=float("nan")), "rotation"),
    (lambda tmp: render_shape("circle", "red", 8.0, (16, 16), supersample=0), "supersample"),
    (lambda tmp: render_shapes(torch.tensor([5]), torch.tensor([0]), torch.tensor([8.]), torch.tensor([[8., 8.]])),
     "shapes"),
    (lambda tmp: render_shapes(torch.tensor([0.]), torch.tensor([0]), torch.tensor([8.]), torch.tensor([[8., 8.]])),
     "shapes"),
    (lambda tmp: render_shapes(torch.tensor([0]), torch.tensor([0, 1]), torch.tensor([8.]), torch.tensor([[8., 8.]])),
     "colours"),
    (lambda tmp: render_shapes(torch.tensor([0]), torch.tensor([0]), torch.tensor([8., 8.]), torch.tensor([[8., 8.]])),
     "sizes_px"),
    (lambda tmp: render_shapes(torch.tensor([0]), torch.tensor([0]), torch.tensor([8.]), torch.tensor([8., 8.])),
     "centers_xy"),
    (lambda tmp: ShapesDataset(0), "num_samples"),
    (lambda tmp: ShapesDataset(10, image_size=4), "image_size"),
    (lambda tmp: ShapesDataset(10, seed=-1), "seed"),
    (lambda tmp: ShapesDataset(10, caption_style="long"), "caption_style"),
    (lambda tmp: ShapesDataset(10, pairs=[("red", "hexagon")]), "pairs"),
    (lambda tmp: ShapesDataset(10, pairs="red circle"), "pairs"),
    (lambda tmp: ShapesDataset(10, exclude_pairs=all_pairs()), "exclude_pairs"),
    (lambda tmp: ShapesDataset(10)[10], "index"),
    (lambda tmp: ShapesDataset(10)[1.5], "index"),
    (lambda tmp: shapes_batch(0), "n"),
    (lambda tmp: shapes_batch(2, start=-1), "start"),
    (lambda tmp: load_digits(image_size=2), "image_size"),
    (lambda tmp: load_digits(split="validation"), "split"),
    (lambda tmp: load_digits(test_fraction=1.0), "test_fraction"),
    (lambda tmp: load_digits(seed=-3), "seed"),
    (lambda tmp: load_image_dataset("./no/such/folder"), "source"),
    (lambda tmp: load_image_dataset(tmp / "missing"), "source"),
    (lambda tmp: load_image_dataset(str(tmp / "missing")), "source"),
    (lambda tmp: load_image_dataset(42), "source"),
    (lambda tmp: load_image_dataset(tmp, image_size=0), "image_size"),
    (lambda tmp: load_image_dataset(tmp, split=""), "split"),
    (lambda tmp: write_image_folder(tmp / "w", GOOD["image"][0], GOOD["caption"]), "images"),
    (lambda tmp: write_image_folder(tmp / "w", GOOD["image"][:, :2], GOOD["caption"]), "images"),
    (lambda tmp: write_image_folder(tmp / "w", GOOD["image"], GOOD["caption"][:1]), "captions"),
    (lambda tmp: write_image_folder(tmp / "w", GOOD["image"], "a red circle"), "captions"),
    (lambda tmp: write_image_folder(tmp / "w", GOOD["image"], GOOD["caption"], value_range=(1, -1)), "value_range"),
    (lambda tmp: prepare_image(np.zeros((4, 4, 3)), 4), "image"),
    (lambda tmp: prepare_image(Image.new("RGB", (4, 4)), 0), "image_size"),
]


@pytest.mark.parametrize("call, argname", BAD_INPUT, ids=[f"{i}-{a}" for i, (_, a) in enumerate(BAD_INPUT)])
def test_bad_input_raises_value_error_naming_the_argument(call, argname, tmp_path):
    with pytest.raises(ValueError, match=argname):
        call(tmp_path)


def test_out_of_range_index_also_ends_iteration():
    dataset = ShapesDataset(3, seed=0)
    with pytest.raises(IndexError):
        dataset[3]
    assert len([item["caption"] for item in dataset]) == 3

"""Contracts of course_lib.viz: exact grids and uint8 conversion, headless figures with the expected axes."""
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from course_lib.viz import (image_grid, plot_attention_maps, plot_losses, plot_schedule,  # noqa: E402
                            plot_trajectory, save_image_grid, show_images, to_uint8)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def random_images(b=5, c=3, h=4, w=6, seed=0):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------- uint8 and grids

def test_to_uint8_on_a_known_tiny_input():
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0, 2.0, -3.0]).view(1, 1, 1, 6)
    # (x + 1) / 2 * 255 = 0, 63.75, 127.5, 255, clipped 255, clipped 0; round half to even: 127.5 -> 128
    expected = np.array([0, 64, 128, 255, 255, 0], dtype=np.uint8)
    out = to_uint8(x)
    assert out.shape == (1, 1, 6, 3) and out.dtype == np.uint8
    for channel in range(3):  # grey repeated to RGB
        np.testing.assert_array_equal(out[0, 0, :, channel], expected)
    unit = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 1, 1, 4)
    np.testing.assert_array_equal(to_uint8(unit, value_range=(0, 1))[0, 0, :, 0], [0, 64, 128, 255])
    rgb = torch.tensor([1.0, -1.0, 0.0]).view(3, 1, 1)  # a single (C, H, W) image
    np.testing.assert_array_equal(to_uint8(rgb)[0, 0, 0], [255, 0, 128])


def test_grid_shape_and_padding_math():
    images = random_images(b=5, h=4, w=6)
    grid = image_grid(images, nrow=3, padding=2)
    rows, cols = 2, 3
    assert grid.shape == (rows * (4 + 2) + 2, cols * (6 + 2) + 2, 3) and grid.dtype == np.uint8
    tiles = to_uint8(images)
    for i in range(5):
        top, left = 2 + (i // 3) * 6, 2 + (i % 3) * 8
        np.testing.assert_array_equal(grid[top:top + 4, left:left + 6], tiles[i])
    mask = np.ones(grid.shape[:2], dtype=bool)  # everything that is not a tile is padding
    for i in range(5):
        top, left = 2 + (i // 3) * 6, 2 + (i % 3) * 8
        mask[top:top + 4, left:left + 6] = False
    assert (grid[mask] == 255).all()


def test_grid_defaults_and_edge_cases():
    assert image_grid(random_images(b=5)).shape == (2 * 6 + 2, 3 * 8 + 2, 3)  # nrow = ceil(sqrt(5)) = 3
    assert image_grid(random_images(b=2), nrow=8).shape == (1 * 6 + 2, 2 * 8 + 2, 3)  # never more columns than images
    assert image_grid(random_images(b=4), padding=0).shape == (8, 12, 3)
    grey = image_grid(random_images(b=3, c=1), nrow=3, padding=1, pad_value=0)
    assert grey.shape == (6, 3 * 7 + 1, 3) and (grey[0] == 0).all()
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 0] == grey[..., 2]).all()


def test_saved_grid_reloads_with_exact_pixels(tmp_path):
    images = random_images(b=6, h=8, w=8)
    path = save_image_grid(images, tmp_path / "sub" / "grid.png", nrow=3)
    assert path.is_file() and sorted(p.name for p in path.parent.iterdir()) == ["grid.png"]  # no temp file left
    reloaded = np.asarray(Image.open(path).convert("RGB"))
    assert reloaded.shape == (2 * 10 + 2, 3 * 10 + 2, 3)
    np.testing.assert_array_equal(reloaded, image_grid(images, nrow=3))


def test_labelled_grid_saves_without_touching_pyplot(tmp_path):
    images = random_images(b=6, h=8, w=8)
    before = plt.get_fignums()
    path = save_image_grid(images, tmp_path / "labelled.png", nrow=3, row_labels=["a red circle", "a blue square"],
                           col_labels=["seed 0", "seed 1", "seed 2"], title="prompts x seeds")
    assert plt.get_fignums() == before
    picture = Image.open(path)
    picture.load()
    assert picture.width > 3 * 10 + 2 and picture.height > 2 * 10 + 2  # labels and zoom make it larger
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labelled.png"]


# ---------------------------------------------------------------------------------------------- figures

def test_show_images_has_one_axes_per_image_and_stays_open():
    figure = show_images(random_images(b=5), titles=list("abcde"), ncols=3)
    assert isinstance(figure, Figure) and len(figure.axes) == 5
    assert [ax.get_title() for ax in figure.axes] == list("abcde")
    assert plt.fignum_exists(figure.number)
    assert len(show_images(random_images(b=1, c=1), value_range=(-1, 1)).axes) == 1
    long = show_images(random_images(b=1), titles=["a small yellow triangle at the top right"])
    assert "\n" in long.axes[0].get_title()  # long captions wrap instead of running into the next panel


def test_plot_losses_smooths_with_bias_corrected_ema():
    figure = plot_losses([1.0, 2.0, 4.0], smooth=0.5)
    assert isinstance(figure, Figure) and len(figure.axes) == 1
    ax = figure.axes[0]
    raw, smoothed = ax.lines
    np.testing.assert_allclose(raw.get_ydata(), [1, 2, 4])
    # EMA with weight 1/2, divided by 1 - (1/2)^k: 1, (0.25 + 1) / 0.75, (0.625 + 2) / 0.875
    np.testing.assert_allclose(smoothed.get_ydata(), [1, 1.25 / 0.75, 2.625 / 0.875])
    assert ax.get_yscale() == "log"
    constant = plot_losses([3.0] * 50, smooth=0.99).axes[0].lines[1].get_ydata()
    np.testing.assert_allclose(constant, 3.0)  # bias correction: no ramp up from zero


def test_plot_losses_dict_into_given_axes_and_nan_tolerance():
    figure, (left, right) = plt.subplots(1, 2)
    out = plot_losses({"train": torch.linspace(1, 0.1, 20), "val": [0.9, float("nan"), 0.5]}, ax=right,
                      log_y=False)
    assert out is figure and len(figure.axes) == 2 and len(right.lines) == 4 and len(left.lines) == 0
    assert right.get_legend() is not None and right.get_yscale() == "linear"
    val_smoothed = right.lines[3].get_ydata()
    assert np.isfinite(val_smoothed[[0, 2]]).all()  # a NaN loss does not poison the rest of the curve


def test_plot_trajectory_rows_are_images_columns_are_steps():
    samples = [torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    figure = plot_trajectory(samples, timesteps=[999, 500, 0], max_images=4)
    assert len(figure.axes) == 4 * 3
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == ["t=999", "t=500", "t=0"]
    assert len(plot_trajectory(samples[:2], torch.tensor([10, 0]), max_images=10).axes) == 6 * 2


def test_plot_attention_maps_one_panel_per_token_plus_the_image():
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    figure = plot_attention_maps(random_images(b=1, h=16, w=16)[0], maps, ["a", "red", "circle"])
    assert len(figure.axes) == 4
    assert [ax.get_title() for ax in figure.axes] == ["image", "a", "red", "circle"]
    heat = figure.axes[1].images[1].get_array()
    assert heat.shape == (16, 16) and heat.min() == pytest.approx(0) and heat.max() == pytest.approx(1)
    constant = plot_attention_maps(random_images(b=1, c=1, h=8, w=8), torch.ones(1, 2, 2), ["x"])
    assert np.isfinite(constant.axes[1].images[1].get_array()).all()


def test_plot_schedule_one_curve_per_schedule():
    t = torch.arange(1000)
    linear = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    cosine = torch.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    figure = plot_schedule({"linear": linear, "cosine": cosine.clamp(0, 1)})
    assert len(figure.axes) == 1 and len(figure.axes[0].lines) == 2
    np.testing.assert_allclose(figure.axes[0].lines[0].get_ydata(), linear.double().numpy())
    both = plot_schedule({"linear": linear}, log_snr=True)
    assert len(both.axes) == 2
    abar = linear.double().numpy()
    np.testing.assert_allclose(both.axes[1].lines[0].get_ydata(), np.log(abar / (1 - abar)), rtol=1e-9)


# ---------------------------------------------------------------------------------------------- bad input

IMAGES = random_images(b=2)
NAN_IMAGES = IMAGES.clone()
NAN_IMAGES[0, 0, 0, 0] = float("nan")

BAD_INPUT = [
    (lambda tmp: to_uint8(np.zeros((1, 3, 4, 4))), "images"),
    (lambda tmp: to_uint8(torch.zeros(4, 4)), "images"),
    (lambda tmp: to_uint8(torch.zeros(1, 2, 4, 4)), "images"),
    (lambda tmp: to_uint8(torch.zeros(0, 3, 4, 4)), "images"),
    (lambda tmp: to_uint8(NAN_IMAGES), "images"),
    (lambda tmp: to_uint8(IMAGES, value_range=(1, 0)), "value_range"),
    (lambda tmp: to_uint8(IMAGES, value_range=(0, 1, 2)), "value_range"),
    (lambda tmp: image_grid(IMAGES, nrow=0), "nrow"),
    (lambda tmp: image_grid(IMAGES, padding=-1), "padding"),
    (lambda tmp: image_grid(IMAGES, pad_value=300), "pad_value"),
    (lambda tmp: save_image_grid(IMAGES, tmp / "grid.gif"), "path"),
    (lambda tmp: save_image_grid(IMAGES, tmp / "g.png", nrow=1, row_labels=["only one"]), "row_labels"),
    (lambda tmp: save_image_grid(IMAGES, tmp / "g.png", nrow=2, col_labels="ab"), "col_labels"),
    (lambda tmp: save_image_grid(IMAGES, tmp / "g.png", title=3), "title"),
    (lambda tmp: show_images(IMAGES, titles=["one"]), "titles"),
    (lambda tmp: show_images(IMAGES, ncols=0), "ncols"),
    (lambda tmp: plot_losses([]), "history"),
    (lambda tmp: plot_losses({}), "history"),
    (lambda tmp: plot_losses({"train": [[1, 2]]}), "history"),
    (lambda tmp: plot_losses("loss"), "history"),
    (lambda tmp: plot_losses([1.0, 0.5], smooth=1.0), "smooth"),
    (lambda tmp: plot_losses([1.0, -0.5]), "log_y"),
    (lambda tmp: plot_losses([1.0], log_y="yes"), "log_y"),
    (lambda tmp: plot_losses([1.0], ax="left"), "ax"),
    (lambda tmp: plot_trajectory([], [1]), "samples"),
    (lambda tmp: plot_trajectory(IMAGES, [1]), "samples"),
    (lambda tmp: plot_trajectory([IMAGES, IMAGES[:1]], [1, 0]), "samples"),
    (lambda tmp: plot_trajectory([IMAGES], [1, 0]), "timesteps"),
    (lambda tmp: plot_trajectory([IMAGES], [1], max_images=0), "max_images"),
    (lambda tmp: plot_attention_maps(IMAGES, torch.rand(1, 2, 2), ["a"]), "image"),
    (lambda tmp: plot_attention_maps(IMAGES[0], torch.rand(2, 2), ["a"]), "maps"),
    (lambda tmp: plot_attention_maps(IMAGES[0], torch.rand(2, 2, 2), ["a"]), "tokens"),
    (lambda tmp: plot_attention_maps(IMAGES[0], torch.full((1, 2, 2), float("nan")), ["a"]), "maps"),
    (lambda tmp: plot_attention_maps(IMAGES[0], torch.rand(1, 2, 2), ["a"], alpha=2.0), "alpha"),
    (lambda tmp: plot_schedule(torch.rand(10)), "alphas_cumprod"),
    (lambda tmp: plot_schedule({}), "alphas_cumprod"),
    (lambda tmp: plot_schedule({"bad": [0.5, 1.5]}), "alphas_cumprod"),
    (lambda tmp: plot_schedule({"ok": [0.5]}, log_snr=1), "log_snr"),
]


@pytest.mark.parametrize("call, argname", BAD_INPUT, ids=[f"{i}-{a}" for i, (_, a) in enumerate(BAD_INPUT)])
def test_bad_input_raises_value_error_naming_the_argument(call, argname, tmp_path):
    with pytest.raises(ValueError, match=argname):
        call(tmp_path)

"""Figures instead of walls of numbers: image grids, loss curves, denoising trajectories, attention maps, schedules.

Conventions:
    images       torch tensors (B, C, H, W) with C = 1 (grey) or 3 (RGB), values in [-1, 1] as the models see
                 them; pass ``value_range=(0, 1)`` for images in [0, 1]. Values outside the range are clipped.
    to uint8     u = round(255 * (x - low) / (high - low)) after clipping, so -1 -> 0, 0 -> 128, 1 -> 255
                 (for the default range (-1, 1); round half to even as torch.round does).
    nrow         images per row of a grid (torchvision's ``make_grid`` name): 8 images with nrow=4 make 2 rows.

Every plotting function returns its matplotlib ``Figure`` and closes nothing. The figures are made with
pyplot, so in a notebook they appear at the end of the cell (assign the result, ``fig = plot_losses(...)``, to
avoid a second copy); in a script call ``fig.savefig(...)`` and then ``plt.close(fig)``. Nothing here picks a
backend: headless machines use Agg. ``save_image_grid`` draws off-screen and writes its file atomically.
"""
from __future__ import annotations

import math
import os
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from PIL import Image

from course_lib._checks import check_float, check_int, check_tensor

__all__ = ["to_uint8", "image_grid", "save_image_grid", "show_images", "plot_losses", "plot_trajectory",
           "plot_attention_maps", "plot_schedule", "attach_widget"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _check_value_range(value_range) -> tuple[float, float]:
    if not (isinstance(value_range, Sequence) and len(value_range) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value_range)
            and value_range[0] < value_range[1]):
        raise ValueError(f"value_range must be a pair (low, high) with low < high, e.g. (-1, 1) or (0, 1), "
                         f"got {value_range!r}")
    return float(value_range[0]), float(value_range[1])


def _as_batch(name: str, images) -> torch.Tensor:
    """A (B, C, H, W) tensor (a single (C, H, W) image becomes B = 1), C in {1, 3}, all values finite."""
    check_tensor(name, images, ndim=(3, 4))
    images = images.unsqueeze(0) if images.ndim == 3 else images
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels (B, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"{name} must hold at least one non-empty image, got shape {tuple(images.shape)}")
    if images.dtype == torch.bool or (images.is_floating_point() and not torch.isfinite(images).all()):
        raise ValueError(f"{name} must be a finite numeric tensor (a diverged model gives NaN/inf), "
                         f"got dtype {images.dtype} with non-finite or boolean values")
    return images


def to_uint8(images: torch.Tensor, value_range=(-1.0, 1.0)) -> np.ndarray:
    """(B, C, H, W) or (C, H, W) images -> uint8 numpy (B, H, W, 3); grey images are repeated to RGB."""
    images = _as_batch("images", images)
    low, high = _check_value_range(value_range)
    unit = ((images.detach().cpu().double() - low) / (high - low)).clamp(0, 1)
    pixels = (unit * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)  # (B, 3, H, W)
    return pixels.permute(0, 2, 3, 1).contiguous().numpy()


def _grid_layout(num_images: int, nrow, name: str = "nrow") -> tuple[int, int]:
    """(rows, cols) for ``num_images`` with ``nrow`` images per row (default: a near-square grid)."""
    if nrow is None:
        nrow = math.ceil(math.sqrt(num_images))
    check_int(name, nrow, minimum=1)
    cols = min(nrow, num_images)
    return math.ceil(num_images / cols), cols


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2, value_range=(-1.0, 1.0),
               pad_value: int = 255) -> np.ndarray:
    """Tile images into one uint8 picture (H_grid, W_grid, 3), ``nrow`` images per row.

    Every tile is separated and surrounded by ``padding`` pixels of grey level ``pad_value`` (white by default,
    so black-background images stay apart): H_grid = rows * (H + padding) + padding, likewise for W.
    """
    pixels = to_uint8(images, value_range)  # (B, H, W, 3)
    check_int("padding", padding, minimum=0)
    check_int("pad_value", pad_value, minimum=0, maximum=255)
    rows, cols = _grid_layout(len(pixels), nrow)
    height, width = pixels.shape[1] + padding, pixels.shape[2] + padding
    grid = np.full((rows * height + padding, cols * width + padding, 3), pad_value, dtype=np.uint8)
    for i, tile in enumerate(pixels):
        top, left = padding + (i // cols) * height, padding + (i % cols) * width
        grid[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
    return grid


def _check_labels(name: str, labels, count: int, what: str) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, str) or not isinstance(labels, Sequence) or len(labels) != count:
        raise ValueError(f"{name} must be a list of {count} labels (one per {what}), got {labels!r}")
    return [str(label) for label in labels]


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, row_labels=None,
                    col_labels=None, title: str | None = None, padding: int = 2, value_range=(-1.0, 1.0)) -> Path:
    """Save ``image_grid(images, nrow, padding)`` to ``path`` (.png, .jpg), atomically; returns the path.

    Without labels or title the file holds exactly the grid's pixels. With them, the grid is drawn with
    matplotlib, e.g. prompts as ``row_labels`` (one per row) and seeds as ``col_labels`` (one per column).
    """
    grid = image_grid(images, nrow, padding, value_range)
    path = Path(path)
    if path.suffix.lower() not in _IMAGE_SUFFIXES:
        raise ValueError(f"path must end with one of {_IMAGE_SUFFIXES}, got {str(path)!r}")
    rows, cols = _grid_layout(_as_batch("images", images).shape[0], nrow)
    row_labels = _check_labels("row_labels", row_labels, rows, "row")
    col_labels = _check_labels("col_labels", col_labels, cols, "column")
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title must be a string or None, got {title!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        if row_labels is None and col_labels is None and title is None:
            Image.fromarray(grid).save(tmp)
        else:
            _labelled_grid_figure(grid, rows, cols, padding, row_labels, col_labels, title).savefig(
                tmp, bbox_inches="tight", pad_inches=0.05)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _labelled_grid_figure(grid: np.ndarray, rows: int, cols: int, padding: int, row_labels, col_labels, title):
    """An off-screen Figure (not registered with pyplot) showing ``grid`` with labels at the tiles' centres."""
    dpi, zoom = 100, max(1, math.ceil(96 / ((grid.shape[0] - padding) / rows)))  # tiles at least ~96 px tall
    figure = Figure(figsize=(grid.shape[1] * zoom / dpi, grid.shape[0] * zoom / dpi), dpi=dpi)
    ax = figure.add_axes((0, 0, 1, 1))
    ax.imshow(grid, interpolation="nearest")
    tile_h, tile_w = (grid.shape[0] - padding) / rows, (grid.shape[1] - padding) / cols
    ax.set_yticks([padding / 2 + (r + 0.5) * tile_h for r in range(rows)], row_labels or [""] * rows)
    ax.set_xticks([padding / 2 + (c + 0.5) * tile_w for c in range(cols)], col_labels or [""] * cols)
    ax.xaxis.tick_top()
    ax.tick_params(length=0, labelsize=9)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title is not None:
        ax.set_title(title, pad=18 if col_labels else 6)
    return figure


def show_images(images: torch.Tensor, titles=None, ncols: int | None = None, figsize=None,
                value_range=(-1.0, 1.0)) -> Figure:
    """One small panel per image (grey images in grey), optional titles (wrapped); one Axes per image."""
    pixels = to_uint8(images, value_range)  # (B, H, W, 3)
    titles = _check_labels("titles", titles, len(pixels), "image")
    rows, cols = _grid_layout(len(pixels), min(len(pixels), 8) if ncols is None else ncols, name="ncols")
    figure, axes = plt.subplots(rows, cols, squeeze=False, figsize=figsize or (1.6 * cols, 1.7 * rows))
    for i, ax in enumerate(axes.flat):
        if i >= len(pixels):
            ax.remove()
            continue
        ax.imshow(pixels[i], interpolation="nearest")
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(textwrap.fill(titles[i], 22), fontsize=8)  # long captions wrap onto more lines
    figure.tight_layout()
    return figure


def _as_curve(name: str, values) -> np.ndarray:
    try:
        curve = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    except (TypeError, ValueError):
        curve = None
    if curve is None or curve.ndim != 1 or len(curve) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got {values!r:.80}")
    return curve


def _ema(curve: np.ndarray, smooth: float) -> np.ndarray:
    """Exponential moving average with bias correction (TensorBoard's "smoothing"); NaN/inf are skipped."""
    smoothed, average, weight = np.full_like(curve, np.nan), 0.0, 0.0
    for i, value in enumerate(curve):
        if np.isfinite(value):
            average, weight = smooth * average + (1 - smooth) * value, smooth * weight + (1 - smooth)
        if weight > 0:
            smoothed[i] = average / weight
    return smoothed


def plot_losses(history, smooth: float = 0.9, log_y: bool = True, ax=None, xlabel: str = "step",
                title: str | None = None) -> Figure:
    """Loss curves: each raw curve faint, its smoothed version (EMA, weight ``smooth`` in [0, 1)) on top.

    history: a list of losses, or a dict {name: list of losses} for several curves. x is the index (the step).
    ax: draw into this Axes instead of a new figure. Returns the Figure that holds the plot.
    """
    curves = history if isinstance(history, Mapping) else {"loss": history}
    if not curves:
        raise ValueError("history must hold at least one curve, got an empty dict")
    curves = {str(name): _as_curve(f"history[{name!r}]" if isinstance(history, Mapping) else "history", values)
              for name, values in curves.items()}
    check_float("smooth", smooth, minimum=0.0, maximum=1.0, max_inclusive=False)
    if not isinstance(log_y, bool):
        raise ValueError(f"log_y must be True or False, got {log_y!r}")
    lowest = min(np.nanmin(np.where(np.isfinite(c), c, np.nan)) if np.isfinite(c).any() else np.inf
                 for c in curves.values())
    if log_y and lowest <= 0:
        raise ValueError(f"log_y=True needs positive losses, got a minimum of {lowest}; pass log_y=False")
    if ax is not None and not hasattr(ax, "plot"):
        raise ValueError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    figure, ax = plt.subplots(figsize=(6, 3.5)) if ax is None else (ax.figure, ax)
    for i, (name, curve) in enumerate(curves.items()):
        colour = f"C{i}"
        ax.plot(curve, color=colour, alpha=0.3, linewidth=0.8)
        ax.plot(_ema(curve, smooth) if smooth > 0 else curve, color=colour, linewidth=1.8, label=name)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    if title is not None:
        ax.set_title(title)
    return figure


def plot_trajectory(samples, timesteps, max_images: int = 4, value_range=(-1.0, 1.0)) -> Figure:
    """A denoising trajectory: rows are images, columns the steps, each column titled by its timestep t.

    samples: a list of (B, C, H, W) tensors, one per step (e.g. x_t saved during sampling); timesteps: one t per
    entry of ``samples``. Only the first ``max_images`` images are shown. Noisy x_t is clipped to the range.
    """
    if isinstance(samples, torch.Tensor) or not isinstance(samples, Sequence) or len(samples) == 0:
        raise ValueError(f"samples must be a non-empty list of (B, C, H, W) tensors, got {type(samples).__name__}")
    batches = [_as_batch(f"samples[{i}]", s) for i, s in enumerate(samples)]
    for i, batch in enumerate(batches):
        if batch.shape != batches[0].shape:
            raise ValueError(f"samples must all have the same shape, got {tuple(batches[0].shape)} and "
                             f"{tuple(batch.shape)} at samples[{i}]")
    steps = [float(t) for t in _as_curve("timesteps", timesteps)]
    if len(steps) != len(batches):
        raise ValueError(f"timesteps must have one entry per sample ({len(batches)}), got {len(steps)}")
    check_int("max_images", max_images, minimum=1)
    rows, cols = min(max_images, batches[0].shape[0]), len(batches)
    pixels = [to_uint8(batch[:rows], value_range) for batch in batches]  # cols x (rows, H, W, 3)
    figure, axes = plt.subplots(rows, cols, squeeze=False, figsize=(1.3 * cols, 1.3 * rows + 0.3))
    for c in range(cols):
        axes[0, c].set_title(f"t={steps[c]:g}", fontsize=9)
        for r in range(rows):
            axes[r, c].imshow(pixels[c][r], interpolation="nearest")
            axes[r, c].set_axis_off()
    figure.tight_layout()
    return figure


def plot_attention_maps(image: torch.Tensor, maps: torch.Tensor, tokens: Sequence[str], value_range=(-1.0, 1.0),
                        alpha: float = 0.6) -> Figure:
    """Where does each word look? The image, then one panel per token with its attention map overlaid.

    image: (C, H, W) or (1, C, H, W); maps: (tokens, h, w) attention of the image's pixels to each token,
    e.g. averaged over heads and layers; it is upsampled (bilinear) to H x W and each map is rescaled to [0, 1]
    on its own (min-max), so the panels show where each token looks, not how strongly compared to the others.
    """
    pixels = to_uint8(image, value_range)
    if len(pixels) != 1:
        raise ValueError(f"image must be a single image (C, H, W) or (1, C, H, W), got shape {tuple(image.shape)}")
    check_tensor("maps", maps, ndim=3, floating=True)
    if isinstance(tokens, str) or not isinstance(tokens, Sequence) or len(tokens) != maps.shape[0]:
        raise ValueError(f"tokens must be a list of {maps.shape[0]} strings (one per map), got {tokens!r}")
    if not torch.isfinite(maps).all():
        raise ValueError("maps must be finite, got NaN or inf values")
    check_float("alpha", alpha, minimum=0.0, maximum=1.0)
    heat = F.interpolate(maps.detach().float().cpu().unsqueeze(1), size=pixels.shape[1:3], mode="bilinear",
                         align_corners=False).squeeze(1)  # (tokens, H, W)
    low, high = heat.amin(dim=(1, 2), keepdim=True), heat.amax(dim=(1, 2), keepdim=True)
    heat = (heat - low) / (high - low).clamp(min=1e-12)
    figure, axes = plt.subplots(1, 1 + len(tokens), squeeze=False, figsize=(1.8 * (1 + len(tokens)), 2.1))
    axes[0, 0].imshow(pixels[0], interpolation="nearest")
    axes[0, 0].set_title("image", fontsize=9)
    grey = pixels[0].mean(axis=-1)
    for ax, token, token_heat in zip(axes[0, 1:], tokens, heat):
        ax.imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.imshow(token_heat.numpy(), cmap="jet", alpha=alpha, vmin=0, vmax=1, interpolation="bilinear")
        ax.set_title(str(token), fontsize=9)
    for ax in axes.flat:
        ax.set_axis_off()
    figure.tight_layout()
    return figure


def plot_schedule(alphas_cumprod: Mapping, log_snr: bool = False) -> Figure:
    """Noise schedules side by side: abar_t against t for each {name: alphas_cumprod} entry.

    abar_t (``alphas_cumprod``) is the share of signal left in x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.
    log_snr=True adds a second panel with log SNR(t) = log(abar_t / (1 - abar_t)), where schedules differ most.
    """
    if not isinstance(alphas_cumprod, Mapping) or not alphas_cumprod:
        raise ValueError(f"alphas_cumprod must be a non-empty dict {{name: 1-D alphas_cumprod}}, "
                         f"got {type(alphas_cumprod).__name__}")
    curves = {str(name): _as_curve(f"alphas_cumprod[{name!r}]", values) for name, values in alphas_cumprod.items()}
    for name, curve in curves.items():
        if not (np.isfinite(curve).all() and (curve >= 0).all() and (curve <= 1).all()):
            raise ValueError(f"alphas_cumprod[{name!r}] must hold values in [0, 1], got min {curve.min()}, "
                             f"max {curve.max()}")
    if not isinstance(log_snr, bool):
        raise ValueError(f"log_snr must be True or False, got {log_snr!r}")
    figure, axes = plt.subplots(1, 2 if log_snr else 1, squeeze=False, figsize=(5.5 * (1 + log_snr), 3.5))
    for name, curve in curves.items():
        axes[0, 0].plot(curve, label=name)
        if log_snr:
            with np.errstate(divide="ignore"):
                axes[0, 1].plot(np.log(curve) - np.log1p(-curve), label=name)
    axes[0, 0].set_ylabel(r"$\bar\alpha_t$")
    if log_snr:
        axes[0, 1].set_ylabel(r"$\log \mathrm{SNR}(t)$")
    for ax in axes.flat:
        ax.set_xlabel("t")
        ax.grid(True, alpha=0.3)
        ax.legend()
    figure.tight_layout()
    return figure


def attach_widget(draw, control) -> None:
    """Redraw ``draw(value)`` below ``control`` (an ipywidgets slider, text box, ...) whenever its value changes.

    Nothing runs until it does: the notebook draws the figure for the default value with a plain call above, so
    the figure is there without a live kernel too (papermill, a notebook viewer).
    """
    import ipywidgets as widgets
    from IPython.display import display

    if not callable(draw):
        raise ValueError(f"draw must be a function of the control's value, got {draw!r}")
    if not isinstance(control, widgets.ValueWidget):
        raise ValueError(f"control must be an ipywidgets control with a value (a slider, a text box), got {control!r}")
    out = widgets.Output()

    def redraw(change):
        with out:
            out.clear_output(wait=True)
            draw(change["new"])
            plt.show()

    control.observe(redraw, names="value")
    display(widgets.VBox([control, out]))

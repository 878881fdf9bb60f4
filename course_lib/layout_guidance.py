"""Layout guidance: steer sampling so that two objects named in the prompt stand in a named relation.

A UNet trained on "A left of B" captions may still ignore the direction word (lecture 13). Its cross-attention
maps show where each word is being drawn, long before the picture does: the "circle" pixels attend to the token
"circle". Layout guidance (backward guidance in Chen et al. 2024, "Training-free layout control with
cross-attention guidance", WACV; the same idea as Attend-and-Excite, Chefer et al. 2023) turns that into a
loss on the noisy latent and takes a gradient step on z_t before the ordinary denoising step, during the first
denoising steps only (the layout is decided early; later steps refine details).

Glossary:
    maps         cross-attention per context token, (B, L', H, W), each pixel's weights summing to 1 over L'
                 (``unet.average_cross_attention`` of ``UNet.record_cross_attention(keep_graph=True)``)
    first/second the context positions of each object's words (its colour and shape); with
                 ``text_features="last_hidden_state+token_embeddings"`` every word has two positions, p and p + L
    centroid     the attention-weighted mean position of an object's words: (x, y) in [-1, 1], x to the right,
                 y downwards (image convention)
    d            separation along the relation's axis: "A left of B" -> x_B - x_A, "A above B" -> y_B - y_A
    E            relu(margin - d): zero once the centroids are at least ``margin`` apart in the named direction

The step: z_t <- z_t - scale * grad E / ||grad E|| per picture (a fixed step length in latent space: the raw
gradient's size varies by orders of magnitude across timesteps). Pictures without a layout are left alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from course_lib._checks import check_choice, check_float, check_tensor
from course_lib.unet import average_cross_attention

__all__ = ["RELATION_AXES", "RelationLayout", "attention_centroids", "layout_energy", "steer_latents"]

# relation -> (axis: 0 = x, 1 = y; sign of (second - first) along that axis when the relation holds)
RELATION_AXES = {"left of": (0, 1.0), "right of": (0, -1.0), "above": (1, 1.0), "below": (1, -1.0)}


@dataclass(frozen=True)
class RelationLayout:
    """"<first> <relation> <second>": the context positions of each object's words, and the relation."""

    first: tuple[int, ...]
    second: tuple[int, ...]
    relation: str

    def __post_init__(self):
        check_choice("relation", self.relation, tuple(RELATION_AXES))
        for name in ("first", "second"):
            positions = getattr(self, name)
            if not positions or any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in positions):
                raise ValueError(f"{name} must be a non-empty tuple of token positions (ints >= 0), got {positions!r}")


def attention_centroids(maps: torch.Tensor, positions: list[tuple[int, ...]]) -> torch.Tensor:
    """Row b's centroid of the summed maps of ``positions[b]``: (B, H, W) weights -> (B, 2) as (x, y) in [-1, 1]."""
    check_tensor("maps", maps, ndim=4, floating=True)
    if len(positions) != maps.shape[0]:
        raise ValueError(f"positions must have one entry per row of maps ({maps.shape[0]}), got {len(positions)}")
    _, L, H, W = maps.shape
    for row in positions:
        if any(p >= L for p in row):
            raise ValueError(f"positions must be < the number of context tokens {L}, got {row}")
    mass = torch.stack([maps[b, list(row)].sum(dim=0) for b, row in enumerate(positions)])  # (B, H, W)
    mass = mass / mass.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    ys = torch.linspace(-1, 1, H, dtype=maps.dtype, device=maps.device)
    xs = torch.linspace(-1, 1, W, dtype=maps.dtype, device=maps.device)
    return torch.stack([(mass.sum(dim=1) * xs).sum(dim=1), (mass.sum(dim=2) * ys).sum(dim=1)], dim=1)  # (B, 2)


def layout_energy(maps: torch.Tensor, layouts: list[RelationLayout | None], margin: float = 0.5) -> torch.Tensor:
    """E per picture, (B,): relu(margin - d) for rows with a layout, 0 for rows without one."""
    check_tensor("maps", maps, ndim=4, floating=True)
    check_float("margin", margin, minimum=0.0, maximum=2.0)
    if len(layouts) != maps.shape[0]:
        raise ValueError(f"layouts must have one entry per row of maps ({maps.shape[0]}), got {len(layouts)}")
    energy = maps.new_zeros(maps.shape[0])
    rows = [b for b, layout in enumerate(layouts) if layout is not None]
    if not rows:
        return energy
    first = attention_centroids(maps[rows], [layouts[b].first for b in rows])    # (R, 2)
    second = attention_centroids(maps[rows], [layouts[b].second for b in rows])  # (R, 2)
    axis = torch.tensor([RELATION_AXES[layouts[b].relation][0] for b in rows], device=maps.device)
    sign = torch.tensor([RELATION_AXES[layouts[b].relation][1] for b in rows], dtype=maps.dtype, device=maps.device)
    separation = sign * (second - first).gather(1, axis[:, None]).squeeze(1)     # d, (R,)
    return energy.index_put((torch.tensor(rows, device=maps.device),), torch.relu(margin - separation))


def steer_latents(unet, latents: torch.Tensor, timestep, context: torch.Tensor, context_mask: torch.Tensor | None,
                  layouts: list[RelationLayout | None], scale: float = 1.0, margin: float = 0.5) -> torch.Tensor:
    """One layout-guidance step on z_t (B, C, h, w): the conditional UNet pass with its cross-attention recorded,
    E, and z_t - scale * grad E / ||grad E|| for every picture whose E > 0. Returns a new tensor (no graph)."""
    check_tensor("latents", latents, ndim=4, floating=True)
    check_float("scale", scale, minimum=0.0)
    if len(layouts) != latents.shape[0]:
        raise ValueError(f"layouts must have one entry per picture ({latents.shape[0]}), got {len(layouts)}")
    if scale == 0 or all(layout is None for layout in layouts):
        return latents
    with torch.enable_grad():
        z = latents.detach().requires_grad_(True)
        with unet.record_cross_attention(keep_graph=True) as store:
            unet(z, timestep, context, context_mask)
        energy = layout_energy(average_cross_attention(store), layouts, margin)  # (B,)
        if not energy.any():
            return latents
        (grad,) = torch.autograd.grad(energy.sum(), z)
    norm = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)                        # (B, 1, 1, 1)
    return (latents - scale * grad / norm.clamp_min(1e-12)).detach()  # rows without energy: zero gradient

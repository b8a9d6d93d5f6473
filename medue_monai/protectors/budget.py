"""Budget, mask and projection helpers shared by the protectors (vectorized over the batch, 2-D and 3-D).

Tensors are ``(B, C, *spatial)`` with two or three spatial axes; a "position" is a pixel (2-D) or a voxel
(3-D), and tiles are squares or cubes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _avg_pool(tensor: torch.Tensor, block: int) -> torch.Tensor:
    pool = F.avg_pool3d if tensor.dim() == 5 else F.avg_pool2d
    return pool(tensor, block, stride=block, ceil_mode=True)


def _expand_tiles(tensor: torch.Tensor, block: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """Repeat every tile value ``block`` times along each spatial axis and crop to ``spatial``."""
    for axis in range(2, tensor.dim()):
        tensor = tensor.repeat_interleave(block, dim=axis)
    return tensor[(..., *(slice(0, size) for size in spatial))]


def _integer_root(value: int, dims: int) -> int:
    """The largest ``r`` with ``r ** dims <= value``."""
    root = max(1, int(round(value ** (1.0 / dims))))
    while root**dims > value:
        root -= 1
    while (root + 1) ** dims <= value:
        root += 1
    return max(1, root)


__all__ = [
    "positions_to_keep",
    "tile_side",
    "block_average",
    "TILE_PATTERNS",
    "tile_pattern_field",
    "topk_position_mask",
    "project_linf",
    "project_l0",
]


def positions_to_keep(num_positions: int, k_percent: float) -> int:
    """Number of pixel positions allowed to change: ``floor(k% * positions)``, at least 1."""
    return max(1, int(math.floor(num_positions * k_percent / 100.0 + 1e-9)))


def tile_side(num_positions: int, k_percent: float, block: int, dims: int = 2) -> int:
    """Side of the tiles a K% budget is spent on: ``block``, or less where one such tile would exceed it.

    A tile of ``block ** dims`` positions must fit into ``positions_to_keep(num_positions, k)``; where it does
    not (small images, small K), the side shrinks to the largest square (cube) that fits, so the budget holds.

    Args:
        num_positions: positions per image (``H * W``, or ``D * H * W``).
        k_percent: share of positions allowed to change, in (0, 100].
        block: the requested tile side, >= 1.
        dims: spatial dimensions (2 or 3).

    Returns:
        The tile side to use, between 1 and ``block``.
    """
    return max(1, min(int(block), _integer_root(positions_to_keep(num_positions, k_percent), dims)))


def block_average(tensor: torch.Tensor, block: int) -> torch.Tensor:
    """Replace every position by the mean of its tile of side ``block`` (tiles aligned to the first corner).

    Tiles cut by the far borders average the positions they hold. ``block=1`` returns the input.

    Args:
        tensor: ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        block: tile side in positions, >= 1.

    Returns:
        A tensor of the same shape, constant on every tile.
    """
    if block <= 1:
        return tensor
    return _expand_tiles(_avg_pool(tensor, block), block, tuple(tensor.shape[2:]))


TILE_PATTERNS = ("flat", "checker")


def tile_pattern_field(*spatial: int, pattern: str = "flat", device: torch.device | str = "cpu") -> torch.Tensor:
    """The +-1 sign field a tile's single value is multiplied by, over a whole ``(1, 1, *spatial)`` image.

    ``"flat"``: all ones (a tile is one constant offset). ``"checker"``: ``(-1) ** (sum of the coordinates)``,
    so every aligned tile of even side holds a checkerboard (for any side, one fixed alternating pattern per
    tile): the highest spatial frequency the grid holds, where natural images carry the least energy.

    Args:
        spatial: the image's spatial sizes (``H, W`` or ``D, H, W``).
        pattern: one of :data:`TILE_PATTERNS`.
        device: device of the returned field.

    Returns:
        ``(1, 1, *spatial)`` float tensor of +-1.

    Raises:
        ValueError: for an unknown pattern.
    """
    if pattern not in TILE_PATTERNS:
        raise ValueError(f"pattern must be one of {TILE_PATTERNS}, got {pattern!r}")
    if pattern == "flat":
        return torch.ones(1, 1, *spatial, device=device)
    grids = torch.meshgrid(*(torch.arange(size, device=device) for size in spatial), indexing="ij")
    return (1.0 - 2.0 * (sum(grids) % 2).float()).reshape(1, 1, *spatial)


def topk_position_mask(score: torch.Tensor, k_percent: float, block: int = 1) -> torch.Tensor:
    """Binary mask of the top-K% pixel positions per sample, selected by index (ties never grow it).

    With ``block > 1`` the mask is made of whole ``block x block`` tiles (aligned to the top-left corner):
    tiles are ranked by their mean score and ``positions_to_keep(H*W, k) // block**2`` of them are kept
    (at least one; where one tile would exceed the budget the side shrinks, see :func:`tile_side`), so the
    mask covers at most K% of the positions (a tile cut by the border covers fewer).

    Args:
        score: ``(B, C, H, W)`` or ``(B, C, D, H, W)`` importance (the highest sums are kept; signed scores
            allowed); channels are summed per position.
        k_percent: share of positions to keep, in (0, 100].
        block: tile side in positions, >= 1.

    Returns:
        ``(B, 1, *spatial)`` float mask; with ``block=1`` exactly ``positions_to_keep(positions, k)`` ones per
        sample.
    """
    batch, spatial = score.shape[0], tuple(score.shape[2:])
    positions = math.prod(spatial)
    count = positions_to_keep(positions, k_percent)
    if count >= positions:
        return torch.ones(batch, 1, *spatial, dtype=score.dtype, device=score.device)
    summed = score.sum(dim=1, keepdim=True)
    block = tile_side(positions, k_percent, block, len(spatial))
    if block > 1:
        summed = _avg_pool(summed, block)
        count = max(1, count // block ** len(spatial))
    flat = summed.reshape(batch, -1)
    indices = torch.topk(flat, min(count, flat.shape[1]), dim=1, sorted=False).indices
    mask = torch.zeros_like(flat).scatter_(1, indices, 1.0).reshape(summed.shape)
    if block > 1:
        mask = _expand_tiles(mask, block, spatial)
    return mask


def project_linf(delta: torch.Tensor, images: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """Clip ``delta`` to ``[-eps, eps]`` and so that ``images + delta`` stays in [0, 1]."""
    delta = torch.maximum(torch.minimum(delta, torch.as_tensor(eps, device=delta.device)), -torch.as_tensor(eps))
    return (images + delta).clamp(0.0, 1.0) - images


def project_l0(
    delta: torch.Tensor, k_percent: float, tie_break: torch.Tensor | None = None, block: int = 1
) -> torch.Tensor:
    """Keep only the top-K% positions of ``delta`` by magnitude (summed over channels); zero the rest.

    This is the Euclidean projection onto ``||delta||_0 <= m`` (positions), applied after the L-inf
    clip. Sign-PGD leaves many entries exactly at ``+-eps``; positions are chosen by index with
    ``torch.topk`` so ties never let more than ``m`` positions through. ``tie_break`` (e.g. the
    gradient magnitude) orders positions of equal magnitude.

    Args:
        delta: ``(B, C, H, W)`` perturbation.
        k_percent: share of positions allowed, in (0, 100].
        tie_break: optional ``(B, C, H, W)`` non-negative score added with a tiny weight.
        block: keep whole ``block x block`` tiles, ranked by their mean magnitude (see
            :func:`topk_position_mask`).

    Returns:
        The sparse perturbation.
    """
    if k_percent >= 100.0:
        return delta
    score = delta.abs()
    if tie_break is not None:
        scale = tie_break.abs().amax(dim=tuple(range(1, tie_break.dim())), keepdim=True).clamp_min(1e-12)
        score = score + 1e-6 * tie_break.abs() / scale
    return delta * topk_position_mask(score, k_percent, block)

"""Region masks for segmentation protectors: binary dilation / erosion, contour band and ROI interior.

Binary morphology with a square ``(2r+1) x (2r+1)`` (2-D) or cubic ``(2r+1)^3`` (3-D) structuring element,
written with ``torch.nn.functional.max_pool2d`` / ``max_pool3d`` so it runs batched on any device (MONAI has no
batched binary morphology for tensors). The contour band of a mask ``y`` is ``dilate(y, r) - erode(y, r)``; the
ROI interior is ``y * (1 - band)``. The default radius is 3 px at 224x224, scaled with image size
(the UMed paper's setting): ``r = max(1, round(3 * min(H, W) / 224))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "REGIONS",
    "contour_radius",
    "dilate_mask",
    "erode_mask",
    "contour_band",
    "roi_interior",
    "region_mask",
]

REGIONS = ("full", "roi", "contour", "interior", "background", "dilated")


def contour_radius(*sizes: int, base_radius: float = 3.0, reference: int = 224) -> int:
    """Band radius in pixels (voxels) for an image size: ``max(1, round(base_radius * min(sizes) / reference))``.

    Args:
        sizes: the image's spatial sizes (``H, W`` or ``D, H, W``).
        base_radius: radius at the reference size (3 px at 224 in the UMed paper).
        reference: the reference side length.

    Returns:
        The radius, at least 1.
    """
    return max(1, int(round(base_radius * min(sizes) / reference)))


def _binary(mask: torch.Tensor) -> torch.Tensor:
    if mask.dim() not in (4, 5):
        raise ValueError(f"masks must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(mask.shape)}")
    mask = mask.as_tensor() if hasattr(mask, "as_tensor") else mask
    return (mask > 0.5).float()


def _max_pool(mask: torch.Tensor, radius: int) -> torch.Tensor:
    pool = F.max_pool3d if mask.dim() == 5 else F.max_pool2d
    return pool(mask, kernel_size=2 * radius + 1, stride=1, padding=radius)


def dilate_mask(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation with a ``(2r+1)^2`` square, batched: max-pool with stride 1 and same padding.

    Args:
        mask: ``(B, C, H, W)`` mask (values > 0.5 count as foreground).
        radius: structuring-element radius in pixels (0 returns the binarized mask).

    Returns:
        Float ``{0, 1}`` mask with the input's shape.
    """
    mask = _binary(mask)
    if radius <= 0:
        return mask
    return _max_pool(mask, radius)


def erode_mask(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary erosion with a ``(2r+1)^2`` square, the dual of :func:`dilate_mask`.

    Pixels outside the image count as foreground, so a mask touching the border keeps its edge there.

    Args:
        mask: ``(B, C, H, W)`` mask.
        radius: structuring-element radius in pixels.

    Returns:
        Float ``{0, 1}`` mask with the input's shape.
    """
    mask = _binary(mask)
    if radius <= 0:
        return mask
    return 1.0 - _max_pool(1.0 - mask, radius)


def contour_band(mask: torch.Tensor, radius: int | None = None) -> torch.Tensor:
    """The contour band ``dilate(y, r) - erode(y, r)``.

    Args:
        mask: ``(B, C, H, W)`` binary mask.
        radius: band radius; ``None`` uses :func:`contour_radius` for the mask's size.

    Returns:
        Float ``{0, 1}`` band with the mask's shape (empty for an empty or full mask).
    """
    if radius is None:
        radius = contour_radius(*(int(s) for s in mask.shape[2:]))
    return dilate_mask(mask, radius) - erode_mask(mask, radius)


def roi_interior(mask: torch.Tensor, radius: int | None = None) -> torch.Tensor:
    """The ROI without its contour band: ``y * (1 - band)``.

    Args:
        mask: ``(B, C, H, W)`` binary mask.
        radius: band radius; ``None`` scales 3 px at 224 with the image size.

    Returns:
        Float ``{0, 1}`` mask.
    """
    return _binary(mask) * (1.0 - contour_band(mask, radius))


def region_mask(mask: torch.Tensor, region: str, radius: int | None = None) -> torch.Tensor:
    """The pixels a segmentation protector may change, as a ``(B, 1, H, W)`` float mask.

    Args:
        mask: ``(B, 1, H, W)`` label mask (foreground > 0.5).
        region: ``"full"`` (every pixel), ``"roi"`` (the foreground), ``"contour"`` (the band),
            ``"interior"`` (ROI minus band), ``"background"`` (outside the ROI) or ``"dilated"`` (the ROI and its
            contour band: ``dilate(y, r)``).
        radius: band radius for ``"contour"`` / ``"interior"`` / ``"dilated"``; ``None`` scales with image size.

    Returns:
        Float ``{0, 1}`` mask.

    Raises:
        ValueError: for an unknown region.
    """
    if region == "full":
        return torch.ones_like(_binary(mask))
    if region == "roi":
        return _binary(mask)
    if region == "contour":
        return contour_band(mask, radius)
    if region == "interior":
        return roi_interior(mask, radius)
    if region == "background":
        return 1.0 - _binary(mask)
    if region == "dilated":
        return dilate_mask(mask, contour_radius(*(int(s) for s in mask.shape[2:])) if radius is None else radius)
    raise ValueError(f"region must be one of {REGIONS}, got {region!r}")

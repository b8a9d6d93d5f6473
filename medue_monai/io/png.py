"""Lossless PNG writers for protected segmentation images, at the original size and channel count.

Protectors work at a resized working size. The writer resizes the perturbation (not the image) back
to the original size, adds it to the ORIGINAL pixels, and clips the result to ``original +-
floor(255 * eps)`` so the L-inf budget holds on the written file. Output is always PNG: JPEG's lossy
compression would erase most of the perturbation, so a JPEG source is noted in the manifest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..utils import MedueError

__all__ = ["apply_delta_uint8", "copy_mask", "write_png"]


def apply_delta_uint8(original: np.ndarray, delta: torch.Tensor, eps: float | None) -> np.ndarray:
    """Add a working-size perturbation to an original uint8 image and quantize, keeping the budget.

    Args:
        original: ``(H, W)`` or ``(H, W, C)`` uint8 original pixels.
        delta: ``(C', h, w)`` float perturbation in [0, 1] units at the working size; ``C'`` may be 3
            for a grey original (the channel mean is used) or 1 for a colour one (broadcast).
        eps: L-inf budget in [0, 1] units; ``None`` skips the budget clip.

    Returns:
        uint8 array with ``original``'s shape.
    """
    height, width = original.shape[:2]
    delta = torch.as_tensor(delta).detach().float().cpu()
    if delta.ndim == 2:
        delta = delta[None]
    if tuple(delta.shape[-2:]) != (height, width):
        delta = F.interpolate(delta[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    channels = 1 if original.ndim == 2 else original.shape[2]
    if delta.shape[0] != channels:
        delta = delta.mean(0, keepdim=True) if channels == 1 else delta.expand(channels, -1, -1)
    delta = delta[0] if original.ndim == 2 else delta.permute(1, 2, 0)
    base = torch.from_numpy(np.ascontiguousarray(original)).float()
    values = torch.round(base + delta * 255.0)  # float32 is exact for these integer grey levels
    if eps is not None:
        limit = float(np.floor(255.0 * eps + 1e-6))
        values = torch.minimum(torch.maximum(values, base - limit), base + limit)
    return values.clamp_(0, 255).to(torch.uint8).numpy()


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 ``(H, W)`` or ``(H, W, 3)`` array as a lossless PNG.

    Raises:
        MedueError: for a non-uint8 array or an unsupported channel count.
    """
    path = Path(path)
    if array.dtype != np.uint8:
        raise MedueError(f"{path}: PNG writer expects uint8 pixels, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise MedueError(f"{path}: cannot write an array of shape {array.shape} as PNG")
    Image.fromarray(array).save(path, format="PNG", optimize=False, compress_level=1)
    return path


def copy_mask(source: str | Path, folder: str | Path) -> Path:
    """Copy a mask file byte for byte into ``folder`` (masks are released unchanged)."""
    source = Path(source)
    target = Path(folder) / source.name
    shutil.copyfile(source, target)
    return target

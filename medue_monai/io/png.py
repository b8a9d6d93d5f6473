"""Lossless PNG writers for protected segmentation images, at the original size, channel count and bit depth.

Protectors work at a resized working size. The writer brings the perturbation (not the image) back
to the original size, confines it to the method's region there (region-confined methods), adds it to
the ORIGINAL pixels and quantizes in the file's own levels (``original +- floor(top * eps)``, top = 255
for 8-bit and 65535 for 16-bit images), so the budget holds on the written file. Output is always PNG:
JPEG's lossy compression would erase most of the perturbation, so a JPEG source is noted in the manifest.

Bringing the perturbation back to the original size (:func:`upsample_delta`) loses part of it:
whoever trains on the release shrinks the images again, and shrinking with antialiasing after a
bilinear enlargement is a low-pass filter. On Kvasir-SEG (UMed at 128x128, originals about 600x500,
100 training images) 43 % of the perturbation's L2 norm comes back through the default bilinear
enlargement (cosine 0.83 to the working-size perturbation), 74 % (cosine 0.97) with
``resample="inverse"``: the full-size perturbation that, shrunk by the reader's own resize
(:func:`medue_monai.data.segmentation.resample_image`), best reproduces the working-size one within
the budget. The inverse costs invisibility (PSNR 47.57
against 54.91 dB on those images) and bought little protection in our one measurement (UNet exploiter
Dice 7.36 % against 8.16 % with the same fitted UMed), so bilinear stays the default
(``benchmarks/README.md``).
"""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.segmentation import resample_image
from ..utils import MedueError
from .paths import inside
from .quantize import quantize_change

__all__ = ["RESAMPLE_MODES", "apply_delta", "copy_mask", "upsample_delta", "write_png"]

RESAMPLE_MODES = ("bilinear", "inverse")


def _shrink_adjoint(vector: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``R^T v`` for ``R`` = :func:`resample_image` from ``size`` to ``vector``'s size (R is linear: autograd)."""
    with torch.enable_grad():
        upsampled = torch.zeros((*vector.shape[:2], *size), dtype=vector.dtype, requires_grad=True)
        (resample_image(upsampled, vector.shape[-2:]) * vector).sum().backward()
    return upsampled.grad


@lru_cache(maxsize=64)
def _shrink_lipschitz(working_shape: tuple[int, ...], size: tuple[int, int]) -> float:
    """Largest eigenvalue of ``R R^T`` for ``R`` = :func:`resample_image` from ``size`` to ``working_shape``.

    Power iteration from a constant image (close to the top eigenvector). It depends on the shapes only,
    so it is computed once per original size (datasets repeat a few sizes).
    """
    vector, lipschitz = torch.ones(working_shape), 1.0
    for _ in range(5):
        image = resample_image(_shrink_adjoint(vector, size), working_shape[-2:])
        lipschitz = float(image.norm() / vector.norm())
        vector = image / image.norm()
    return lipschitz


def upsample_delta(
    delta: torch.Tensor, size: tuple[int, int], resample: str = "bilinear", bound: float | None = None, steps: int = 10
) -> torch.Tensor:
    """Bring a working-size perturbation ``(C, h, w)`` to the original size ``(C, H, W)``.

    ``"bilinear"``: plain bilinear interpolation. ``"inverse"``: a full-size ``u`` with ``|u| <= bound``
    that a reader shrinking the release to the working size (:func:`resample_image`, as
    :class:`~medue_monai.data.segmentation.SegmentationDataset` does) sees as ``delta``: ``steps`` of
    projected gradient descent on ``||R u - delta||^2`` (``R`` = that resize, step ``1 / ||R||^2`` from
    a power iteration) started at ``u = 0``. From zero, gradient descent stays in the span of ``R``'s
    smooth kernels, which keeps ``u`` close to the least-norm solution: the perturbation is spread, not
    sharpened. On Kvasir-SEG (128 -> about 600x500) 10 steps recover 74 % of the norm with a cosine of
    0.97 to ``delta`` (bilinear: 43 %, 0.83).

    Args:
        delta: ``(C, h, w)`` perturbation in [0, 1] units.
        size: ``(H, W)`` original size.
        resample: ``"inverse"`` or ``"bilinear"``.
        bound: L-inf bound of the result in [0, 1] units (an L-inf method's ``eps``). ``None`` (L2 methods):
            ``max |delta|``, and the ``"inverse"`` result is scaled down where needed so that its L2 norm
            rescaled to the working size, ``||u|| sqrt(h w / (H W))``, does not exceed ``||delta||``: the
            written file keeps the method's L2 budget as the bilinear enlargement does.
        steps: gradient steps for ``"inverse"``.

    Returns:
        ``(C, H, W)`` float perturbation (``|u| <= bound`` for ``"inverse"``).

    Raises:
        MedueError: for an unknown ``resample`` mode.
    """
    if resample not in RESAMPLE_MODES:
        raise MedueError(f"resample must be one of {RESAMPLE_MODES}, got {resample!r}")
    delta = delta.detach().float()
    size = (int(size[0]), int(size[1]))
    if tuple(delta.shape[-2:]) == size:
        return delta
    if resample == "bilinear":
        return F.interpolate(delta[None], size=size, mode="bilinear", align_corners=False)[0]
    l2_cap = bound is None
    bound = float(delta.abs().max()) if bound is None else float(bound)
    target = delta[None]
    upsampled = torch.zeros((1, delta.shape[0], *size), dtype=delta.dtype)
    if bound <= 0.0 or not bool(delta.any()):  # nothing to bring (e.g. UMed on an empty mask)
        return upsampled[0]

    lipschitz = _shrink_lipschitz(tuple(target.shape), size)
    for _ in range(int(steps)):
        residual = resample_image(upsampled, target.shape[-2:]) - target
        upsampled = (upsampled - _shrink_adjoint(residual, size) / lipschitz).clamp_(-bound, bound)
    if l2_cap:
        # an L2 budget holds at the working size: the rescaled norm ||u|| sqrt(h w / (H W)) stays <= ||delta||
        rescaled = float(upsampled.norm()) * (target.shape[-2] * target.shape[-1] / (size[0] * size[1])) ** 0.5
        if rescaled > float(target.norm()):
            upsampled = upsampled * (float(target.norm()) / rescaled)
    return upsampled[0]


def apply_delta(
    original: np.ndarray,
    delta: torch.Tensor,
    eps: float | None,
    resample: str = "bilinear",
    steps: int = 10,
    region: np.ndarray | None = None,
    l2: float | None = None,
) -> np.ndarray:
    """Add a working-size perturbation to an original integer image and quantize, keeping the budget.

    The perturbation is brought to the original size (:func:`upsample_delta`), set to zero outside
    ``region`` (a region-confined method's allowed pixels at the ORIGINAL size: resizing spreads a
    working-size perturbation by about one working pixel, and the working-size mask is itself a resized
    copy), and quantized in the file's own levels (:func:`~medue_monai.io.quantize.quantize_change`).

    Args:
        original: ``(H, W)`` or ``(H, W, C)`` uint8 or uint16 original pixels.
        delta: ``(C', h, w)`` float perturbation in [0, 1] units at the working size; ``C'`` may be 3
            for a grey original (the channel mean is used) or 1 for a colour one (broadcast).
        eps: L-inf budget in [0, 1] units (``max |written - original| <= floor(top * eps)`` levels, top = 255
            or 65535); ``None`` for methods with an L2 budget (the ``"inverse"`` enlargement is then bounded by
            ``max |delta|``).
        resample: how the perturbation reaches the original size (:func:`upsample_delta`).
        steps: gradient steps of ``resample="inverse"``.
        region: ``(H, W)`` mask of the pixels that may change (non-zero = allowed), or ``None`` for all.
        l2: L2 budget in [0, 1] units at the working size (L2 methods): the written change, rescaled to the
            working size (``||change|| sqrt(C' h w / (C H W))``), stays within it.

    Returns:
        The written array, with ``original``'s shape and dtype.

    Raises:
        MedueError: for an unknown ``resample`` mode, or a region of another size.
    """
    height, width = original.shape[:2]
    delta = torch.as_tensor(delta).detach().float().cpu()
    if delta.ndim == 2:
        delta = delta[None]
    working_values = delta.numel()
    channels = 1 if original.ndim == 2 else original.shape[2]
    if delta.shape[0] != channels and channels == 1:
        delta = delta.mean(0, keepdim=True)
    delta = upsample_delta(delta, (height, width), resample, bound=eps, steps=steps)
    if delta.shape[0] != channels:
        delta = delta.expand(channels, -1, -1)
    delta = delta[0] if original.ndim == 2 else delta.permute(1, 2, 0)
    change = delta.double().numpy()
    if region is not None:
        if tuple(region.shape) != (height, width):
            raise MedueError(f"region mask of shape {tuple(region.shape)} for an image of {height}x{width}")
        allowed = np.asarray(region) > 0
        change = change * (allowed if original.ndim == 2 else allowed[..., None])
    scale = float(np.sqrt(working_values / original.size))
    return quantize_change(original[None], change[None], eps=eps, l2=l2, l2_scale=scale)[0]


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 ``(H, W)`` / ``(H, W, 3|4)`` or a uint16 ``(H, W)`` array as a lossless PNG.

    Raises:
        MedueError: for another dtype or an unsupported channel count (Pillow writes 16-bit grey only).
    """
    path = Path(path)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.dtype == np.uint16:
        if array.ndim != 2:
            raise MedueError(f"{path}: 16-bit PNGs are written for grey images only, got shape {array.shape}")
        Image.fromarray(array).save(path, format="PNG", optimize=False, compress_level=1)
        return path
    if array.dtype != np.uint8:
        raise MedueError(f"{path}: PNG writer expects uint8 or uint16 pixels, got {array.dtype}")
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise MedueError(f"{path}: cannot write an array of shape {array.shape} as PNG")
    Image.fromarray(array).save(path, format="PNG", optimize=False, compress_level=1)
    return path


def copy_mask(source: str | Path, folder: str | Path, item_id: str) -> Path:
    """Copy a mask file byte for byte into ``folder`` as ``<item_id><its suffix>`` (masks are released unchanged).

    Naming the copy by the item's id keeps masks that share a file name in different source folders apart.

    Raises:
        MedueError: when the name would leave ``folder`` (ids are checked by the sources already).
    """
    source = Path(source)
    target = inside(folder, f"{item_id}{source.suffix.lower()}", "mask path")
    shutil.copyfile(source, target)
    return target

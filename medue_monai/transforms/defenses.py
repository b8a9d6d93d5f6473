"""Exploiter-side counter-measures (PROTOCOL.md): what an unauthorized trainer may do to the released images.

Each defense maps 8-bit images to 8-bit images of the same shape, as someone preprocessing the downloaded
files would: 3x3 low-pass filters (mean, median, Gaussian with sigma 1), JPEG re-encoding at quality 60
, 30 or 10, a reduction to 2 bits per channel (values 0, 85, 170, 255), a center crop that removes 20 % of
each side resized back to the full size, and image shortcut squeezing (grayscale for RGB images, then JPEG
at quality 10). The evaluation applies the named defense to
the training images of BOTH exploiter runs (protected and clean), so the two numbers keep one recipe,
and tests on the untouched clean test split. The crop also crops segmentation masks (nearest neighbour).

The training-time counter-measures of PROTOCOL.md (random crop + flip augmentation, adversarial training)
change the exploiter's training loop instead: see :mod:`medue_monai.evaluation.hardening`.

:func:`apply_defense` is the batch form (vectorized with torch, JPEG through Pillow one image at a time);
:class:`Defense` / :class:`Defensed` are the MONAI array and dictionary transforms over it.
"""

from __future__ import annotations

import io
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from ..utils import MedueError

__all__ = [
    "DEFENSES",
    "Defense",
    "DefenseD",
    "DefenseDict",
    "Defensed",
    "apply_defense",
    "apply_defense_to_pair",
    "check_defense",
]

#: name -> (kind, parameter); ``none`` leaves the images as they are.
DEFENSES: dict[str, tuple[str, float | None]] = {
    "none": ("none", None),
    "mean3": ("mean", 3),
    "median3": ("median", 3),
    "gaussian3": ("gaussian", 1.0),
    "jpeg60": ("jpeg", 60),
    "jpeg30": ("jpeg", 30),
    "jpeg10": ("jpeg", 10),
    "bits2": ("bits", 2),
    "center-crop20": ("crop", 0.2),
    "iss": ("squeeze", 10),
}


def check_defense(name: str | None) -> str:
    """The defense's name (``None`` is ``"none"``).

    Raises:
        MedueError: for an unknown name.
    """
    name = name or "none"
    if name not in DEFENSES:
        raise MedueError(f"unknown defense {name!r}; choose from {', '.join(DEFENSES)}")
    return name


def _as_nchw(images: np.ndarray) -> tuple[torch.Tensor, bool]:
    """uint8 ``(N, H, W)`` or ``(N, H, W, C)`` -> float ``(N, C, H, W)`` in [0, 255], and whether it had no C axis."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).float()
    if tensor.ndim == 3:
        return tensor[:, None], True
    return tensor.permute(0, 3, 1, 2).contiguous(), False


def _to_uint8(tensor: torch.Tensor, squeeze: bool) -> np.ndarray:
    array = tensor.round().clamp(0, 255).to(torch.uint8)
    array = array[:, 0] if squeeze else array.permute(0, 2, 3, 1)
    return np.ascontiguousarray(array.numpy())


def _low_pass(images: torch.Tensor, kind: str, parameter: float) -> torch.Tensor:
    """3x3 mean / median / Gaussian filter per channel, reflect-padded so the size stays."""
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect") if min(images.shape[-2:]) > 1 else images
    if kind == "mean":
        return F.avg_pool2d(padded, 3, stride=1)
    if kind == "median":
        patches = F.unfold(padded.flatten(0, 1)[:, None], 3)  # (N*C, 9, H*W)
        return patches.median(dim=1).values.reshape(images.shape)
    offsets = torch.arange(-1, 2, dtype=torch.float32)
    weights = torch.exp(-(offsets**2) / (2 * float(parameter) ** 2))
    kernel = torch.outer(weights, weights) / weights.sum() ** 2
    channels = images.shape[1]
    return F.conv2d(padded, kernel.expand(channels, 1, 3, 3).contiguous(), groups=channels)


def _jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """Re-encode every uint8 image as JPEG at ``quality`` and decode it again (Pillow)."""
    from PIL import Image

    out = np.empty_like(images)
    for index, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        decoded = np.asarray(Image.open(buffer))
        out[index] = decoded.reshape(image.shape)
    return out


def _grayscale(images: np.ndarray) -> np.ndarray:
    """RGB ``(N, H, W, 3)`` -> luma (ITU-R 601) repeated on the three channels; grey images unchanged."""
    if images.ndim != 4 or images.shape[-1] != 3:
        return images
    luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def _reduce_bits(images: np.ndarray, bits: int) -> np.ndarray:
    """Keep ``bits`` bits per channel: round to the nearest of ``2**bits`` evenly spaced levels in [0, 255]."""
    levels = 2**bits - 1
    return (np.round(images.astype(np.float32) * (levels / 255.0)) * (255.0 / levels)).round().astype(np.uint8)


def _crop_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    top, left = int(round(height * fraction)), int(round(width * fraction))
    return top, height - top, left, width - left


def _center_crop(images: torch.Tensor, fraction: float, mode: str) -> torch.Tensor:
    """Remove ``fraction`` of each side, then resize back to the full size."""
    height, width = images.shape[-2:]
    top, bottom, left, right = _crop_box(height, width, fraction)
    cropped = images[..., top:bottom, left:right]
    if mode == "nearest":
        return F.interpolate(cropped, size=(height, width), mode="nearest")
    return F.interpolate(cropped, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def apply_defense(images: np.ndarray, name: str) -> np.ndarray:
    """Apply a named defense to a batch of 8-bit images.

    Args:
        images: uint8 ``(N, H, W)`` or ``(N, H, W, C)``.
        name: a key of :data:`DEFENSES`.

    Returns:
        uint8 images of the same shape (a copy; the input is not modified).

    Raises:
        MedueError: for an unknown defense, or images that are not uint8 ``(N, H, W[, C])``.
    """
    kind, parameter = DEFENSES[check_defense(name)]
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise MedueError(f"defense {name!r} needs uint8 images (N, H, W[, C]), got {images.dtype} {images.shape}")
    if kind == "none" or len(images) == 0:
        return images.copy()
    if kind == "jpeg":
        return _jpeg(images, int(parameter))
    if kind == "squeeze":
        return _jpeg(_grayscale(images), int(parameter))
    if kind == "bits":
        return _reduce_bits(images, int(parameter))
    tensor, squeeze = _as_nchw(images)
    if kind == "crop":
        return _to_uint8(_center_crop(tensor, float(parameter), "bilinear"), squeeze)
    return _to_uint8(_low_pass(tensor, kind, parameter), squeeze)


def _defend_mask(mask: np.ndarray, name: str) -> np.ndarray:
    """A ``(..., H, W)`` mask after a defense: center-cropped (nearest neighbour) by the crop, else as it is."""
    kind, parameter = DEFENSES[check_defense(name)]
    if kind != "crop":
        return mask
    tensor = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    leading = tensor.shape[:-2]
    cropped = _center_crop(tensor.reshape(1, -1, *tensor.shape[-2:]), float(parameter), "nearest")
    return cropped.reshape(*leading, *tensor.shape[-2:]).numpy().astype(mask.dtype)


def apply_defense_to_pair(image: np.ndarray, mask: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Apply a named defense to one segmentation pair: the image as :func:`apply_defense`, the mask only
    where the geometry changes (the center crop, nearest neighbour).

    Args:
        image: uint8 ``(H, W)`` or ``(H, W, C)``.
        mask: ``(H, W)`` mask (any dtype).
        name: a key of :data:`DEFENSES`.

    Returns:
        The defended image and mask, with the input shapes and dtypes.
    """
    return apply_defense(image[None], name)[0], _defend_mask(mask, name)


class Defense(Transform):
    """MONAI array transform: a named exploiter-side defense on one channel-first image.

    The image is taken as 8-bit: uint8 values as they are, floating values in [0, 1] scaled by 255 and
    rounded (the defense sees what a file would hold). The output has the input's type and dtype.

    Args:
        name: a key of :data:`DEFENSES` (``mean3``, ``median3``, ``gaussian3``, ``jpeg60``, ``jpeg30``,
            ``jpeg10``, ``bits2``, ``center-crop20``, ``iss`` or ``none``).

    Raises:
        MedueError: for an unknown defense.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, name: str) -> None:
        self.name = check_defense(name)

    def __call__(self, img: Any) -> Any:
        """Defend ``img``, a ``(C, H, W)`` array or tensor (C = 1 or 3)."""
        array = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        if array.ndim != 3:
            raise MedueError(f"Defense expects a channel-first (C, H, W) image, got shape {array.shape}")
        is_float = np.issubdtype(array.dtype, np.floating)
        as_uint8 = np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8) if is_float else array.astype(np.uint8)
        channels_last = np.moveaxis(as_uint8, 0, -1)
        batch = channels_last[None, ..., 0] if channels_last.shape[-1] == 1 else channels_last[None]
        defended = apply_defense(batch, self.name)[0]
        defended = defended[None] if defended.ndim == 2 else np.moveaxis(defended, -1, 0)
        result = defended.astype(np.float32) / 255.0 if is_float else defended
        out, *_ = convert_to_dst_type(np.ascontiguousarray(result), img, dtype=getattr(img, "dtype", None))
        return out


class Defensed(MapTransform):
    """MONAI dictionary transform of :class:`Defense`; with ``center-crop20`` the ``label_keys`` masks are
    cropped the same way (nearest neighbour), other defenses leave them alone.

    Args:
        keys: image keys to defend.
        name: a key of :data:`DEFENSES`.
        label_keys: mask keys that follow a geometric defense.
        allow_missing_keys: don't raise for missing keys.
    """

    backend = Defense.backend

    def __init__(
        self,
        keys: KeysCollection,
        name: str,
        label_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.defense = Defense(name)
        if label_keys is None:
            self.label_keys: tuple[Hashable, ...] = ()
        else:
            self.label_keys = (label_keys,) if isinstance(label_keys, str) else tuple(label_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.defense(d[key])
        if DEFENSES[self.defense.name][0] == "crop":
            for key in self.label_keys:
                if key not in d:
                    if self.allow_missing_keys:
                        continue
                    raise KeyError(f"key {key!r} is not in the data")
                mask = d[key]
                array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
                cropped = _defend_mask(array, self.defense.name)
                d[key], *_ = convert_to_dst_type(cropped, mask, dtype=getattr(mask, "dtype", None))
        return d


DefenseD = DefenseDict = Defensed

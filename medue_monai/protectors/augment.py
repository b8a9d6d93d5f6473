"""Differentiable random transforms sampled during noise crafting (SALM's J transforms, EOT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..evaluation.hardening import random_crop_flip
from ..utils import MedueError

__all__ = ["AVAILABLE_TRANSFORMS", "TRANSFORM_NAMES", "parse_transform_names", "sample_transform"]

# the default draw of SALM's J transforms
TRANSFORM_NAMES = ("identity", "flip", "crop", "blur", "lowpass")


def _flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.flip(x, dims=(-1,))


def _crop(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    # random crop after zero padding = a shift of up to `pad` pixels (one shift for the whole batch)
    shift = torch.randint(-pad, pad + 1, (2,), generator=generator).tolist()
    padded = F.pad(x, (pad, pad, pad, pad))
    height, width = x.shape[-2:]
    return padded[..., pad + shift[0] : pad + shift[0] + height, pad + shift[1] : pad + shift[1] + width]


def _blur(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    sigma = 0.5 + 0.5 * torch.rand(1, generator=generator).item()
    coords = torch.arange(3, dtype=x.dtype, device=x.device) - 1
    kernel_1d = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel_1d = kernel_1d / kernel_1d.sum()
    kernel = (kernel_1d[:, None] * kernel_1d[None, :]).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])


def _lowpass(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # JPEG-like loss of fine detail: 2x average-pool then bilinear upsampling back
    small = F.avg_pool2d(x, 2, ceil_mode=True)
    return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # per sample: random crop after 4-pixel zero padding, then a random left-right flip (the counter-measure's own code)
    return random_crop_flip(x, generator=generator)[0]


_TRANSFORMS = {
    "identity": lambda x, g: x,
    "flip": _flip,
    "crop": _crop,
    "blur": _blur,
    "lowpass": _lowpass,
    "crop-flip": _crop_flip,
}
# every transform that can be drawn; ``crop-flip`` is the exploiter-side standard augmentation
AVAILABLE_TRANSFORMS = tuple(_TRANSFORMS)


def parse_transform_names(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Transform names from a comma-separated string or a sequence, checked against :data:`AVAILABLE_TRANSFORMS`.

    Args:
        value: e.g. ``"crop-flip"``, ``"identity,flip,crop,blur,lowpass"`` or ``("blur", "crop-flip")``.

    Returns:
        The names as a tuple, in the given order.

    Raises:
        MedueError: when no name is given or a name is unknown.
    """
    names = tuple(name.strip() for name in (value.split(",") if isinstance(value, str) else value) if name.strip())
    if not names:
        raise MedueError(f"transforms: give at least one of {', '.join(AVAILABLE_TRANSFORMS)}")
    unknown = [name for name in names if name not in AVAILABLE_TRANSFORMS]
    if unknown:
        raise MedueError(f"transforms: unknown {', '.join(unknown)} (choose from {', '.join(AVAILABLE_TRANSFORMS)})")
    return names


def sample_transform(x: torch.Tensor, generator: torch.Generator, names: tuple[str, ...] = TRANSFORM_NAMES):
    """Apply one transform drawn uniformly from ``names`` to the whole batch (differentiably).

    Args:
        x: ``(B, C, H, W)`` batch.
        generator: CPU generator for the draw.
        names: transforms to draw from.

    Returns:
        The transformed batch.
    """
    name = names[int(torch.randint(len(names), (1,), generator=generator))]
    return _TRANSFORMS[name](x, generator)

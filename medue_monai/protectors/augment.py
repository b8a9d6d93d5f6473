"""Differentiable random transforms sampled during noise crafting (SALM's J transforms, EOT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["TRANSFORM_NAMES", "sample_transform"]

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


_TRANSFORMS = {"identity": lambda x, g: x, "flip": _flip, "crop": _crop, "blur": _blur, "lowpass": _lowpass}


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

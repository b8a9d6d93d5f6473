"""Helpers shared by the L2-budget, model-free protectors (LSP, AR): budgets, seeds, scaling, quantization.

L2 budgets are per image and scale with the image's size ``d = C * H * W``:

- LSP: ``||delta||_2 <= sqrt(d) * 6/255`` (a root-mean-square of 6/255 grey levels per value);
- AR: ``||delta||_2 <= 1.0 * sqrt(d / 3072)`` (1.0 at 32x32x3, the AR paper's CIFAR budget).

A released file is quantized to uint8, and rounding can add up to ``0.5/255`` per value, i.e. up to
``sqrt(d) * 0.5/255`` of L2. :func:`snap_to_grid` therefore snaps ``delta`` to multiples of 1/255
itself (nearest level, or toward zero when rounding would exceed the budget), so that for images
on the 1/255 grid the written file holds exactly the L2 norm that ``perturb`` reports.
"""

from __future__ import annotations

import math

import torch

__all__ = ["content_seeds", "l2_budget", "scale_to_l2", "seeded_normal", "snap_to_grid", "finish_l2_delta"]

_PRIME = 2_147_483_647


def l2_budget(
    shape: tuple[int, ...] | torch.Size, per_value: float | None = None, reference: float | None = None
) -> float:
    """The L2 budget for one ``(C, H, W)`` image.

    Args:
        shape: ``(C, H, W)``.
        per_value: if given, the budget is ``sqrt(d) * per_value`` (LSP).
        reference: if given, the budget is ``reference * sqrt(d / 3072)`` (AR).

    Returns:
        The budget in [0, 1] image units.
    """
    d = math.prod(int(s) for s in shape)
    if per_value is not None:
        return math.sqrt(d) * float(per_value)
    return float(reference) * math.sqrt(d / 3072.0)


def content_seeds(images: torch.Tensor, seed: int) -> list[int]:
    """Deterministic per-image seeds from the 8-bit content of each image and ``seed`` (vectorized hash).

    Used for images that were not in the fitted set, so the same image always gets the same draw.
    """
    flat = (images.detach().float().reshape(len(images), -1).clamp(0, 1) * 255).round().long().cpu()
    weights = torch.arange(flat.shape[1], dtype=torch.long) % 65_521 + 1
    digest = ((flat * weights).sum(dim=1) + 31 * flat.sum(dim=1)) % _PRIME
    return [int((seed * 1_000_003 + int(h)) % _PRIME) for h in digest]


def seeded_normal(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """``(len(seeds), *shape)`` standard normal draws, one independent generator per seed (CPU)."""
    out = torch.empty((len(seeds),) + tuple(shape))
    generator = torch.Generator()
    for row, value in enumerate(seeds):
        generator.manual_seed(int(value))
        out[row] = torch.randn(tuple(shape), generator=generator)
    return out


def scale_to_l2(pattern: torch.Tensor, norm: float) -> torch.Tensor:
    """Rescale each sample of ``pattern`` to L2 norm ``norm`` (zero patterns stay zero)."""
    current = pattern.reshape(len(pattern), -1).norm(dim=1).clamp_min(1e-12)
    return pattern * (norm / current).reshape(-1, *([1] * (pattern.dim() - 1)))


def snap_to_grid(delta: torch.Tensor, images: torch.Tensor, norm: float) -> torch.Tensor:
    """Snap ``delta`` to multiples of 1/255 within the L2 budget, keeping ``images + delta`` in [0, 1].

    Nearest level per value; samples whose rounded norm exceeds ``norm`` are truncated toward zero
    instead (never larger than the float delta in any value).
    """
    nearest = torch.round(delta * 255.0) / 255.0
    toward_zero = torch.trunc(delta * 255.0) / 255.0
    over = nearest.reshape(len(delta), -1).norm(dim=1) > norm
    snapped = torch.where(over.reshape(-1, *([1] * (delta.dim() - 1))), toward_zero, nearest)
    return (images + snapped).clamp(0.0, 1.0) - images


def finish_l2_delta(pattern: torch.Tensor, images: torch.Tensor, norm: float, quantize: bool) -> torch.Tensor:
    """Scale patterns to the L2 budget, clip so ``images + delta`` stays in [0, 1], optionally snap to 1/255.

    Clipping only shrinks values, so the result's L2 norm is at most ``norm``.
    """
    delta = (images + scale_to_l2(pattern, norm)).clamp(0.0, 1.0) - images
    return snap_to_grid(delta, images, norm) if quantize else delta

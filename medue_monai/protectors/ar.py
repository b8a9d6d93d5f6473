"""AR: autoregressive perturbations (Sandoval-Segura et al., "Autoregressive Perturbations for Data
Poisoning", NeurIPS 2022).

Class-wise, model-free noise. Each class owns one causal 3x3 autoregressive filter per channel
``b`` (8 coefficients: the two rows above and the two pixels to the left; the current pixel has
no weight). Every image gets a fresh process: its first two rows and columns are Gaussian noise and
every other value is ``x[i, j] = sum_{a, c} b[a, c] * x[i - 2 + a, j - 2 + c]``, generated left to
right, top to bottom on a ``(H + 2, W + 2)`` canvas whose seeded border is then cropped away. The
perturbation is the process scaled to the L2 budget ``l2_norm * sqrt(C * H * W / 3072)`` (1.0 at
32x32x3, the paper's CIFAR budget).

Vectorized over rows: the two rows above contribute to a whole row at once (shifted sums), and the
within-row recursion ``x[j] = b21 x[j-1] + b20 x[j-2] + r[j]`` is a banded lower-triangular linear
system whose inverse is precomputed per class and channel, so each row costs one batched matmul
(``H`` iterations per batch, never a loop over pixels).

Filters: coefficients are drawn N(0, 1) and normalized to sum to 1; a filter is rejected when its
process on a fixed Gaussian seed at the fitted size is not finite, has an RMS above ``max_growth``
(diverging) or below ``1e-3`` (collapsed).

The segmentation version ("ar-seg") uses "outside ROI" and "inside ROI" as the two classes: each
image gets one process from each filter, composited by the mask, then scaled to the budget.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..utils import MedueError
from .base import Protector, register_protector
from .l2noise import content_seeds, finish_l2_delta, l2_budget, seeded_normal
from .surrogate import batch_tensors

__all__ = ["ARProtector", "ARSegProtector", "ar_generate", "ar_row_inverse"]

_BORDER = 2


def ar_row_inverse(filters: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of the within-row recursion matrix of each filter.

    Args:
        filters: ``(..., 3, 3)`` causal AR filters (``[..., 2, 2]`` is ignored).
        width: row length including the two seeded columns.

    Returns:
        ``(..., width, width)`` lower-triangular matrices ``M`` with ``row = M @ rhs``, where
        ``rhs`` holds the two seeded values followed by the contributions of the rows above.
    """
    lead = filters.shape[:-2]
    eye = torch.eye(width, dtype=filters.dtype, device=filters.device)
    shift1 = torch.diag(torch.ones(width - 1, dtype=filters.dtype, device=filters.device), -1)
    shift2 = torch.diag(torch.ones(width - 2, dtype=filters.dtype, device=filters.device), -2)
    shift1[:_BORDER] = 0
    shift2[:_BORDER] = 0
    b21 = filters[..., 2, 1].reshape(*lead, 1, 1)
    b20 = filters[..., 2, 0].reshape(*lead, 1, 1)
    system = eye - b21 * shift1 - b20 * shift2
    return torch.linalg.solve_triangular(system, eye.expand_as(system), upper=False)


def ar_generate(seeds: torch.Tensor, filters: torch.Tensor, row_inverse: torch.Tensor) -> torch.Tensor:
    """Run the AR processes row by row, vectorized over batch, channels and columns.

    Args:
        seeds: ``(B, C, H, W)`` Gaussian noise; its first two rows and columns seed the process.
        filters: ``(B, C, 3, 3)`` filter of each image and channel.
        row_inverse: ``(B, C, W, W)`` from :func:`ar_row_inverse` for the same filters.

    Returns:
        ``(B, C, H, W)`` processes (the seeded border included).
    """
    height, width = seeds.shape[-2:]
    rows = [seeds[:, :, 0], seeds[:, :, 1]]
    weights = filters.unsqueeze(-1)  # (B, C, 3, 3, 1)
    for i in range(_BORDER, height):
        above2, above1 = rows[i - 2], rows[i - 1]
        contribution = sum(
            weights[:, :, 0, c] * above2[..., c : width - 2 + c] + weights[:, :, 1, c] * above1[..., c : width - 2 + c]
            for c in range(3)
        )
        rhs = torch.cat([seeds[:, :, i, :_BORDER], contribution], dim=-1)
        rows.append((row_inverse @ rhs.unsqueeze(-1)).squeeze(-1))
    return torch.stack(rows, dim=2)


@register_protector("ar")
class ARProtector(Protector):
    """Autoregressive perturbations, class-wise filters, a fresh process per image, with an L2 budget.

    Defaults from the AR paper: 3x3 causal filters per channel, L2 norm 1.0 at 32x32x3, Gaussian
    start. Defaults chosen by us: coefficients N(0, 1) normalized to sum to 1, rejection of
    processes with RMS above ``max_growth=20`` (the start noise has RMS 1), a cropped 2-pixel seed
    border, snapping to the 1/255 grid (``quantize=True``) so the budget holds on uint8 files.

    Args:
        l2_norm: L2 budget at 32x32x3; the budget for a ``C x H x W`` image is
            ``l2_norm * sqrt(C*H*W / 3072)``.
        max_growth: reject a filter whose test process has an RMS above this (diverging).
        max_tries: candidate filters drawn per accepted filter before giving up.
        quantize: snap ``delta`` to multiples of 1/255 without exceeding the L2 budget.
        progress: accepted for a uniform interface; generation takes seconds and shows no bar.
        seed: random seed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.

    Raises:
        MedueError: for options outside their ranges.
    """

    def __init__(
        self,
        l2_norm: float = 1.0,
        max_growth: float = 20.0,
        max_tries: int = 1000,
        quantize: bool = True,
        progress: bool = False,
        seed: int = 0,
        device: str | torch.device = "auto",
    ) -> None:
        super().__init__(eps=1.0, seed=seed, device=device)
        if float(l2_norm) <= 0:
            raise MedueError(f"l2_norm must be > 0, got {l2_norm}")
        if float(max_growth) <= 1.0 or int(max_tries) < 1:
            raise MedueError(f"max_growth must be > 1 and max_tries >= 1, got {max_growth}, {max_tries}")
        self.l2_norm = float(l2_norm)
        self.max_growth = float(max_growth)
        self.max_tries = int(max_tries)
        self.quantize = bool(quantize)
        self.filters: torch.Tensor | None = None
        self.rejected = 0
        self.num_classes = 0
        self.image_shape: tuple[int, int, int] | None = None
        self._inverse: torch.Tensor | None = None

    # ------------------------------------------------------------------ config / state
    def config(self) -> dict[str, Any]:
        return {
            "l2_norm": self.l2_norm,
            "max_growth": self.max_growth,
            "max_tries": self.max_tries,
            "quantize": self.quantize,
            "seed": self.seed,
        }

    def budget_info(self) -> dict[str, Any]:
        """Norm and budget: L2, ``l2_norm * sqrt(C*H*W / 3072)`` for the fitted image size."""
        budget = l2_budget(self.image_shape, reference=self.l2_norm) if self.image_shape else None
        return {"norm": "l2", "budget": budget}

    def state_dict(self) -> dict[str, Any]:
        self._require_fitted()
        return {
            "filters": self.filters.cpu(),
            "rejected": self.rejected,
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.filters = state["filters"].float()
        self.rejected = int(state.get("rejected", 0))
        self.num_classes = int(state["num_classes"])
        self.image_shape = tuple(int(s) for s in state["image_shape"])
        self._inverse = ar_row_inverse(self.filters, self.image_shape[2] + _BORDER)
        self.fitted = True

    # ------------------------------------------------------------------ filters
    def _canvas(self) -> tuple[int, int]:
        return self.image_shape[1] + _BORDER, self.image_shape[2] + _BORDER

    def _stable(self, candidates: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Boolean ``(N,)``: which candidate filters give a finite, non-diverging, non-collapsed process."""
        height, width = self._canvas()
        seeds = torch.randn(1, 1, height, width, generator=generator).expand(len(candidates), 1, height, width)
        filters = candidates.unsqueeze(1)
        with torch.no_grad():
            process = ar_generate(seeds, filters, ar_row_inverse(filters, width))[:, 0, _BORDER:, _BORDER:]
        rms = process.reshape(len(candidates), -1).pow(2).mean(dim=1).sqrt()
        return torch.isfinite(rms) & (rms <= self.max_growth) & (rms >= 1e-3)

    def draw_filters(self, count: int) -> torch.Tensor:
        """Draw ``count`` accepted 3x3 causal filters (rejection sampling, vectorized over candidates).

        Raises:
            MedueError: when fewer than ``count`` filters are accepted within ``max_tries * count`` draws.
        """
        generator = torch.Generator().manual_seed(self.seed)
        accepted: list[torch.Tensor] = []
        drawn, self.rejected, chunk = 0, 0, 64
        while sum(len(a) for a in accepted) < count:
            if drawn >= self.max_tries * count:
                raise MedueError(f"{self.name}: only {sum(len(a) for a in accepted)} of {count} AR filters were stable")
            candidates = torch.randn(chunk, 3, 3, generator=generator)
            candidates[:, 2, 2] = 0.0
            candidates = candidates / candidates.sum(dim=(1, 2), keepdim=True)
            candidates[:, 2, 2] = 0.0
            stable = self._stable(candidates, generator)
            accepted.append(candidates[stable])
            self.rejected += int((~stable).sum())
            drawn += chunk
        return torch.cat(accepted)[:count]

    def _prepare(self, loader: Iterable[dict], num_classes: int) -> None:
        batch = next(iter(loader), None)
        if batch is None:
            raise MedueError(f"{self.name}: the training loader is empty")
        images, _, _ = batch_tensors(batch, torch.device("cpu"), self.task)
        self.image_shape = tuple(int(s) for s in images.shape[1:])
        self.num_classes = int(num_classes)
        channels = self.image_shape[0]
        self.filters = self.draw_filters(self.num_classes * channels).reshape(self.num_classes, channels, 3, 3)
        self._inverse = ar_row_inverse(self.filters, self.image_shape[2] + _BORDER)
        self.fitted = True

    # ------------------------------------------------------------------ fit / perturb
    def fit(self, loader: Iterable[dict], num_classes: int, num_samples: int) -> ARProtector:
        """Draw one accepted filter per class and channel (no pass over the data beyond its first batch).

        Args:
            loader: batches with ``image``, ``label`` and ``index`` (the first gives the image shape).
            num_classes: number of classes.
            num_samples: training set size (unused: each item's process is seeded by its index).

        Returns:
            ``self``, fitted.
        """
        self._prepare(loader, num_classes)
        return self

    def _check(self, images: torch.Tensor) -> torch.Tensor:
        self._require_fitted()
        images = (images.as_tensor() if hasattr(images, "as_tensor") else images).float()
        if tuple(images.shape[1:]) != self.image_shape:
            raise MedueError(f"{self.name}: images of shape {tuple(images.shape[1:])}, fitted on {self.image_shape}")
        return images

    def _seeds(self, images: torch.Tensor, indices: torch.Tensor | None) -> list[int]:
        if indices is None:
            return content_seeds(images, self.seed)
        return [self.seed * 1_000_003 + 1 + int(i) for i in torch.as_tensor(indices).reshape(-1)]

    def processes(self, seeds: list[int], classes: torch.Tensor) -> torch.Tensor:
        """Cropped ``(B, C, H, W)`` AR processes of the given classes, one fresh process per seed."""
        height, width = self._canvas()
        noise = seeded_normal(seeds, (self.image_shape[0], height, width))
        classes = classes.reshape(-1).long().cpu()
        process = ar_generate(noise, self.filters[classes], self._inverse[classes])
        return process[:, :, _BORDER:, _BORDER:]

    def perturb(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Return a fresh AR process of the image's class, scaled to the L2 budget, clipped, snapped to 1/255.

        Args:
            images: ``(B, C, H, W)`` in [0, 1].
            labels: ``(B,)`` class indices.
            indices: training-set indices (seed each item's process), or ``None`` (seeded by content).

        Returns:
            ``delta`` with ``||delta_i||_2 <= l2_norm * sqrt(d / 3072)`` and ``images + delta`` in [0, 1].
        """
        x = self._check(images)
        pattern = self.processes(self._seeds(x, indices), torch.as_tensor(labels))
        budget = l2_budget(self.image_shape, reference=self.l2_norm)
        delta = finish_l2_delta(pattern.to(x.device), x, budget, self.quantize)
        return delta.to(device=images.device, dtype=images.dtype)


@register_protector("ar-seg")
class ARSegProtector(ARProtector):
    """AR for binary segmentation: "outside ROI" (0) and "inside ROI" (1) are the two classes.

    Each image gets one fresh process per class, composited by the mask, scaled to
    ``l2_norm * sqrt(C*H*W / 3072)``. Defaults as :class:`ARProtector`.

    Args:
        l2_norm: L2 budget at 32x32x3, scaled by ``sqrt(C*H*W / 3072)``.
        max_growth: reject a filter whose test process has an RMS above this (diverging).
        max_tries: candidate filters drawn per accepted filter before giving up.
        quantize: snap ``delta`` to multiples of 1/255 without exceeding the L2 budget.
        progress: accepted for a uniform interface; generation takes seconds and shows no bar.
        seed: random seed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
    """

    task = "segmentation"

    def fit(self, loader: Iterable[dict], num_classes: int, num_samples: int) -> ARSegProtector:
        """Draw the outside-ROI and inside-ROI filters.

        Args:
            loader: batches with ``image``, ``label`` (masks) and ``index``.
            num_classes: must be 2.
            num_samples: training set size (unused).

        Returns:
            ``self``, fitted.

        Raises:
            MedueError: when ``num_classes`` is not 2.
        """
        if int(num_classes) != 2:
            raise MedueError(f"{self.name}: binary segmentation only (num_classes=2), got {num_classes}")
        self._prepare(loader, 2)
        return self

    def perturb(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Return the mask-composited outside/inside AR processes, inside the L2 budget.

        Args:
            images: ``(B, C, H, W)`` in [0, 1].
            labels: ``(B, 1, H, W)`` binary masks.
            indices: training-set indices, or ``None`` (seeded by content).

        Returns:
            ``delta`` with ``||delta_i||_2 <= l2_norm * sqrt(d / 3072)`` and ``images + delta`` in [0, 1].
        """
        x = self._check(images)
        batch = {"image": x, "label": labels, "index": torch.zeros(len(x))}
        _, masks, _ = batch_tensors(batch, torch.device("cpu"), self.task)
        seeds = self._seeds(x, indices)
        outside = self.processes([2 * s for s in seeds], torch.zeros(len(x)))
        inside = self.processes([2 * s + 1 for s in seeds], torch.ones(len(x)))
        pattern = masks * inside + (1.0 - masks) * outside
        budget = l2_budget(self.image_shape, reference=self.l2_norm)
        delta = finish_l2_delta(pattern.to(x.device), x, budget, self.quantize)
        return delta.to(device=images.device, dtype=images.dtype)

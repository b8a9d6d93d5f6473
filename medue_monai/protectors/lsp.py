"""LSP: linearly separable synthetic perturbations.

Yu et al., "Availability Attacks Create Shortcuts", KDD 2022.

Class-wise, model-free noise. Every class gets a centre in a low-dimensional code space of
``D = C * ceil(H / p) * ceil(W / p)`` values (``p = patch_size``): distinct random vertices of the
hypercube ``{-class_sep, +class_sep}^D``, so the clusters are well separated. Each image gets its
own code, its class centre plus ``noise_std`` Gaussian noise; the code is upsampled into
``p x p`` constant blocks (cropped to the image size) and scaled to the L2 budget
``sqrt(C * H * W) * l2_per_value`` (``l2_per_value = 6/255``).

Class counts: medical sets are imbalanced, so codes are drawn per class in proportion to its
count: ``fit`` draws exactly ``n_c`` codes for a class with ``n_c`` training items (one per item,
assigned in index order), so a majority class is not represented by a few re-used draws.
Images not seen at fit time (``indices=None``) get a fresh draw from their class cluster seeded by
their 8-bit content, so the same image always gets the same pattern.

The segmentation version ("lsp-seg") treats "outside ROI" (0) and "inside ROI" (1) as the two
classes: each image gets one code from each cluster, and its delta is the inside pattern on the
mask and the outside pattern elsewhere, scaled to the same L2 budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from ..utils import MedueError
from .base import Protector, register_protector
from .l2noise import content_seeds, finish_l2_delta, l2_budget, seeded_normal
from .surrogate import batch_tensors

__all__ = ["LSPProtector", "LSPSegProtector"]


@register_protector("lsp")
class LSPProtector(Protector):
    """Linearly separable synthetic perturbations, class-wise, with an L2 budget.

    Defaults from the LSP paper: ``patch_size=8`` (8x8 constant blocks), L2 budget
    ``sqrt(d) * 6/255`` (``d = C*H*W``), cluster centres from a hypercube (as scikit-learn's
    ``make_classification`` that the paper uses) with ``class_sep=1.0``. Defaults chosen by us:
    ``noise_std=0.25`` (the per-image spread around the class centre), codes drawn in proportion
    to class counts, snapping to the 1/255 grid (``quantize=True``) so the budget holds on uint8 files.

    Args:
        l2_per_value: per-value RMS of the budget; the L2 budget is ``sqrt(C*H*W) * l2_per_value``.
        patch_size: side of the constant blocks the low-dimensional code is upsampled into.
        class_sep: half the side of the hypercube whose vertices are the class centres.
        noise_std: standard deviation of each image's draw around its class centre.
        quantize: snap ``delta`` to multiples of 1/255 without exceeding the L2 budget.
        progress: accepted for a uniform interface; generation takes seconds and shows no bar.
        seed: random seed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.

    Raises:
        MedueError: for options outside their ranges.
    """

    def __init__(
        self,
        l2_per_value: float = 6 / 255,
        patch_size: int = 8,
        class_sep: float = 1.0,
        noise_std: float = 0.25,
        quantize: bool = True,
        progress: bool = False,
        seed: int = 0,
        device: str | torch.device = "auto",
    ) -> None:
        super().__init__(eps=1.0, seed=seed, device=device)
        if not 0.0 < float(l2_per_value) <= 1.0:
            raise MedueError(f"l2_per_value must be in (0, 1], got {l2_per_value}")
        if int(patch_size) < 1:
            raise MedueError(f"patch_size must be >= 1, got {patch_size}")
        if float(class_sep) <= 0 or float(noise_std) < 0:
            raise MedueError(f"class_sep must be > 0 and noise_std >= 0, got {class_sep}, {noise_std}")
        self.l2_per_value = float(l2_per_value)
        self.patch_size = int(patch_size)
        self.class_sep = float(class_sep)
        self.noise_std = float(noise_std)
        self.quantize = bool(quantize)
        self.centres: torch.Tensor | None = None
        self.codes: torch.Tensor | None = None
        self.class_counts: list[int] = []
        self.num_classes = 0
        self.image_shape: tuple[int, int, int] | None = None

    # ------------------------------------------------------------------ config / state
    def config(self) -> dict[str, Any]:
        return {
            "l2_per_value": self.l2_per_value,
            "patch_size": self.patch_size,
            "class_sep": self.class_sep,
            "noise_std": self.noise_std,
            "quantize": self.quantize,
            "seed": self.seed,
        }

    def budget_info(self) -> dict[str, Any]:
        """Norm and budget: L2, ``sqrt(C*H*W) * l2_per_value`` for the fitted image size."""
        budget = l2_budget(self.image_shape, per_value=self.l2_per_value) if self.image_shape else None
        return {"norm": "l2", "budget": budget}

    def state_dict(self) -> dict[str, Any]:
        self._require_fitted()
        return {
            "centres": self.centres.cpu(),
            "codes": self.codes.cpu(),
            "class_counts": list(self.class_counts),
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.centres = state["centres"].float()
        self.codes = state["codes"].float()
        self.class_counts = [int(c) for c in state["class_counts"]]
        self.num_classes = int(state["num_classes"])
        self.image_shape = tuple(int(s) for s in state["image_shape"])
        self.fitted = True

    # ------------------------------------------------------------------ building blocks
    def code_shape(self) -> tuple[int, int, int]:
        """``(C, ceil(H/p), ceil(W/p))``: the low-dimensional code of one pattern."""
        channels, height, width = self.image_shape
        return channels, math.ceil(height / self.patch_size), math.ceil(width / self.patch_size)

    def _draw_centres(self, num_classes: int) -> torch.Tensor:
        dim = math.prod(self.code_shape())
        generator = torch.Generator().manual_seed(self.seed)
        if dim < 63 and num_classes > 2**dim:
            raise MedueError(f"{self.name}: {num_classes} classes need more than {dim} code values (lower patch_size)")
        for _ in range(1000):
            signs = torch.randint(0, 2, (num_classes, dim), generator=generator).float() * 2 - 1
            if len(torch.unique(signs, dim=0)) == num_classes:
                return signs * self.class_sep
        raise MedueError(f"{self.name}: could not draw {num_classes} distinct class centres in {dim} dimensions")

    def _codes_for(self, labels: torch.Tensor, images: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        """Codes ``(B, D)``: the stored draw of fitted items, else a content-seeded draw."""
        labels = labels.cpu()
        if indices is not None:
            indices = torch.as_tensor(indices).reshape(-1).long().cpu()
            if int(indices.max()) >= len(self.codes) or int(indices.min()) < 0:
                raise MedueError(f"{self.name}: index out of the fitted range 0..{len(self.codes) - 1}")
            return self.codes[indices]
        noise = seeded_normal(content_seeds(images, self.seed), (self.centres.shape[1],))
        return self.centres[labels] + self.noise_std * noise

    def patterns(self, codes: torch.Tensor) -> torch.Tensor:
        """Upsample ``(B, D)`` codes into ``(B, C, H, W)`` block patterns (nearest, cropped)."""
        channels, height, width = self.image_shape
        blocks = codes.reshape(len(codes), *self.code_shape())
        grid = F.interpolate(blocks, scale_factor=self.patch_size, mode="nearest")
        return grid[:, :, :height, :width].reshape(len(codes), channels, height, width)

    def _prepare(self, loader: Iterable[dict], num_classes: int) -> list[torch.Tensor]:
        labels_all, indices_all = [], []
        for batch in loader:
            images, labels, indices = batch_tensors(batch, torch.device("cpu"), self.task)
            if self.image_shape is None:
                self.image_shape = tuple(int(s) for s in images.shape[1:])
            labels_all.append(labels)
            indices_all.append(indices)
        if self.image_shape is None:
            raise MedueError(f"{self.name}: the training loader is empty")
        self.num_classes = int(num_classes)
        self.centres = self._draw_centres(self.num_classes)
        return [torch.cat(labels_all), torch.cat(indices_all)]

    # ------------------------------------------------------------------ fit / perturb
    def fit(self, loader: Iterable[dict], num_classes: int, num_samples: int) -> LSPProtector:
        """Draw class centres and one code per training item, in proportion to class counts.

        Args:
            loader: batches with ``image``, ``label`` and ``index`` (one pass, labels only).
            num_classes: number of classes.
            num_samples: training set size.

        Returns:
            ``self``, fitted.

        Raises:
            MedueError: for labels or indices outside their ranges.
        """
        self.image_shape = None
        labels, indices = self._prepare(loader, num_classes)
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise MedueError(f"{self.name}: labels outside 0..{self.num_classes - 1}")
        if int(indices.max()) >= num_samples:
            raise MedueError(f"{self.name}: index {int(indices.max())} >= num_samples {num_samples}")
        item_labels = torch.zeros(num_samples, dtype=torch.long)
        item_labels[indices] = labels
        dim = self.centres.shape[1]
        self.codes = torch.zeros(num_samples, dim)
        self.class_counts = []
        for label in range(self.num_classes):  # loop over classes: n_c draws per class, vectorized
            members = torch.nonzero(item_labels == label).reshape(-1)
            self.class_counts.append(len(members))
            generator = torch.Generator().manual_seed(self.seed * 7919 + label + 1)
            draws = torch.randn(len(members), dim, generator=generator)
            self.codes[members] = self.centres[label] + self.noise_std * draws
        self.fitted = True
        return self

    def _check(self, images: torch.Tensor) -> torch.Tensor:
        self._require_fitted()
        images = (images.as_tensor() if hasattr(images, "as_tensor") else images).float()
        if tuple(images.shape[1:]) != self.image_shape:
            raise MedueError(f"{self.name}: images of shape {tuple(images.shape[1:])}, fitted on {self.image_shape}")
        return images

    def perturb(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Return each image's class pattern, scaled to the L2 budget, clipped and snapped to 1/255.

        Args:
            images: ``(B, C, H, W)`` in [0, 1].
            labels: ``(B,)`` class indices.
            indices: training-set indices of fitted items (their stored draw), or ``None``.

        Returns:
            ``delta`` with ``||delta_i||_2 <= sqrt(d) * l2_per_value`` and ``images + delta`` in [0, 1].
        """
        x = self._check(images)
        labels = torch.as_tensor(labels).reshape(-1).long()
        pattern = self.patterns(self._codes_for(labels, x, indices))
        budget = l2_budget(self.image_shape, per_value=self.l2_per_value)
        delta = finish_l2_delta(pattern.to(x.device), x, budget, self.quantize)
        return delta.to(device=images.device, dtype=images.dtype)


@register_protector("lsp-seg")
class LSPSegProtector(LSPProtector):
    """LSP for binary segmentation: "outside ROI" and "inside ROI" are the two classes.

    Each image gets one code from each of the two clusters (stored per training item; content-seeded
    for new images); its delta is the inside pattern on the mask and the outside pattern elsewhere,
    scaled to the L2 budget ``sqrt(C*H*W) * l2_per_value``. Defaults as :class:`LSPProtector`.

    Args:
        l2_per_value: per-value RMS of the budget; the L2 budget is ``sqrt(C*H*W) * l2_per_value``.
        patch_size: side of the constant blocks the low-dimensional code is upsampled into.
        class_sep: half the side of the hypercube whose vertices are the two class centres.
        noise_std: standard deviation of each image's draw around a class centre.
        quantize: snap ``delta`` to multiples of 1/255 without exceeding the L2 budget.
        progress: accepted for a uniform interface; generation takes seconds and shows no bar.
        seed: random seed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
    """

    task = "segmentation"

    def fit(self, loader: Iterable[dict], num_classes: int, num_samples: int) -> LSPSegProtector:
        """Draw the two centres and two codes per training item.

        Args:
            loader: batches with ``image``, ``label`` (masks) and ``index``.
            num_classes: must be 2 (outside / inside the ROI).
            num_samples: training set size.

        Returns:
            ``self``, fitted.

        Raises:
            MedueError: when ``num_classes`` is not 2.
        """
        if int(num_classes) != 2:
            raise MedueError(f"{self.name}: binary segmentation only (num_classes=2), got {num_classes}")
        self.image_shape = None
        self._prepare(loader, 2)
        dim = self.centres.shape[1]
        generator = torch.Generator().manual_seed(self.seed * 7919 + 1)
        draws = torch.randn(num_samples, 2, dim, generator=generator)
        self.codes = self.centres.unsqueeze(0) + self.noise_std * draws
        self.class_counts = [int(num_samples), int(num_samples)]
        self.fitted = True
        return self

    def perturb(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Return the mask-composited pattern of each image, inside the L2 budget.

        Args:
            images: ``(B, C, H, W)`` in [0, 1].
            labels: ``(B, 1, H, W)`` binary masks.
            indices: training-set indices of fitted items, or ``None``.

        Returns:
            ``delta`` with ``||delta_i||_2 <= sqrt(d) * l2_per_value`` and ``images + delta`` in [0, 1].
        """
        x = self._check(images)
        _, masks, _ = batch_tensors({"image": x, "label": labels, "index": torch.zeros(len(x))}, x.device, self.task)
        if indices is not None:
            indices = torch.as_tensor(indices).reshape(-1).long().cpu()
            codes = self.codes[indices]
        else:
            noise = seeded_normal(content_seeds(x, self.seed), (2, self.centres.shape[1]))
            codes = self.centres.unsqueeze(0) + self.noise_std * noise
        outside = self.patterns(codes[:, 0]).to(x.device)
        inside = self.patterns(codes[:, 1]).to(x.device)
        pattern = masks * inside + (1.0 - masks) * outside
        budget = l2_budget(self.image_shape, per_value=self.l2_per_value)
        delta = finish_l2_delta(pattern, x, budget, self.quantize)
        return delta.to(device=images.device, dtype=images.dtype)

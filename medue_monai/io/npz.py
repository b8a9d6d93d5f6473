"""Write a protected MedMNIST-style npz: the released splits protected, every array's dtype and shape kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .quantize import dtype_top, quantize_change

__all__ = ["quantize_protected", "write_npz"]


def quantize_protected(
    clean: np.ndarray, protected: torch.Tensor, eps: float | None, l2: float | None = None
) -> np.ndarray:
    """Map protected float images in [0, 1] back to the clean images' integer dtype, keeping the budget.

    The change ``protected - clean`` goes through :func:`~medue_monai.io.quantize.quantize_change`: with an
    L-inf ``eps`` the written file satisfies ``max |written - clean| / top <= eps`` exactly (``top`` = 255 for
    uint8, 65535 for uint16); with a per-image ``l2`` budget ``||written - clean|| / top <= l2``.

    Args:
        clean: ``(N, H, W[, D])`` or ``(N, H, W, C)`` uint8 / uint16 originals (a last axis of 1 or 3 is channels
            only when the tensor has one more axis than the spatial ones, see ``protected``).
        protected: ``(N, C, ...)`` float tensor in [0, 1].
        eps: the L-inf budget in [0, 1] units, or ``None``.
        l2: the per-image L2 budget in [0, 1] units (methods with an L2 norm), or ``None``.

    Returns:
        The written array, with ``clean``'s shape and dtype.
    """
    top = dtype_top(clean.dtype)
    array = protected.detach().cpu().double().numpy()
    spatial = array.ndim - 2
    array = array[:, 0] if clean.ndim == spatial + 1 else np.moveaxis(array, 1, -1)
    array = array.reshape(clean.shape)
    return quantize_change(clean, array - clean.astype(np.float64) / top, eps=eps, l2=l2)


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays to a compressed npz at ``path`` (the caller writes into an atomic folder)."""
    path = Path(path)
    np.savez_compressed(path, **arrays)
    return path

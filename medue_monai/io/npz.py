"""Write a protected MedMNIST-style npz: train split replaced, other keys untouched, dtype kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["quantize_protected", "write_npz"]


def quantize_protected(clean: np.ndarray, protected: torch.Tensor, eps: float | None) -> np.ndarray:
    """Map protected float images in [0, 1] back to uint8, keeping the L-inf budget on the written values.

    ``round(255 * x_protected)`` is clipped to ``clean +- floor(255 * eps + 1e-6)`` so the released
    file satisfies ``max |written - clean| / 255 <= eps`` exactly, whatever rounding did.

    Args:
        clean: ``(N, H, W)`` or ``(N, H, W, C)`` uint8 originals.
        protected: ``(N, C, H, W)`` float tensor in [0, 1].
        eps: the L-inf budget in [0, 1] units, or ``None`` for methods with an L2 budget (no clip).

    Returns:
        uint8 array with ``clean``'s shape.
    """
    array = protected.detach().cpu().float().numpy()
    array = array[:, 0] if clean.ndim == 3 else np.moveaxis(array, 1, -1)
    values = np.rint(np.clip(array, 0.0, 1.0) * 255.0)
    if eps is not None:
        limit = np.floor(255.0 * eps + 1e-6)
        base = clean.astype(np.float64)
        values = np.clip(values, base - limit, base + limit)
    return np.clip(values, 0, 255).astype(np.uint8)


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays to a compressed npz at ``path`` (the caller writes into an atomic folder)."""
    path = Path(path)
    np.savez_compressed(path, **arrays)
    return path

"""Quantize a float perturbation onto an integer image so the budget holds on the WRITTEN values.

One mechanism for every writer (npz, PNG): the change is computed in the file's own grey levels
(``top`` = 255 for uint8, 65535 for uint16), kept inside the dtype's range, and then

- L-inf (``eps``): rounded and clipped to ``+-floor(top * eps)`` levels, so ``max |written - clean| / top
  <= eps`` whatever rounding did;
- L2 (``l2``, per image): scaled down where the float change exceeds the budget (a resize can add a
  little), rounded, and truncated towards zero instead where rounding would push the norm over it,
  so ``||written - clean|| / top * l2_scale <= l2`` for every image.

``l2_scale`` converts the written image's norm to the size at which the budget is defined (a
segmentation protector's working size: ``sqrt(working values / written values)``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["dtype_top", "linf_levels", "quantize_change"]

_TOPS = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}


def dtype_top(dtype: np.dtype | type) -> int:
    """The largest value of a supported integer image dtype (uint8: 255, uint16: 65535).

    Raises:
        ValueError: for another dtype.
    """
    dtype = np.dtype(dtype)
    if dtype not in _TOPS:
        raise ValueError(f"images must be uint8 or uint16, got {dtype}")
    return _TOPS[dtype]


def linf_levels(eps: float, top: int) -> int:
    """The largest change in grey levels an L-inf budget ``eps`` (in [0, 1] units) allows: ``floor(top * eps)``."""
    return int(np.floor(top * float(eps) + 1e-6))


def quantize_change(
    clean: np.ndarray,
    delta: np.ndarray,
    eps: float | None = None,
    l2: float | None = None,
    l2_scale: float = 1.0,
) -> np.ndarray:
    """Integer images ``clean + change`` for float perturbations ``delta`` in [0, 1] units.

    Args:
        clean: ``(N, ...)`` uint8 or uint16 originals (the first axis counts images).
        delta: float perturbation with ``clean``'s shape, in [0, 1] units (``1`` = the dtype's top).
        eps: L-inf budget in [0, 1] units, or ``None``.
        l2: per-image L2 budget in [0, 1] units, or ``None``.
        l2_scale: factor from a written image's L2 norm to the size where ``l2`` is defined.

    Returns:
        The written images, with ``clean``'s shape and dtype.

    Raises:
        ValueError: for mismatched shapes or an unsupported dtype.
    """
    top = dtype_top(clean.dtype)
    if tuple(delta.shape) != tuple(clean.shape):
        raise ValueError(f"perturbation shape {tuple(delta.shape)} differs from the images' {tuple(clean.shape)}")
    base = clean.astype(np.float64)
    change = np.clip(base + np.asarray(delta, dtype=np.float64) * top, 0.0, top) - base
    if eps is not None:
        limit = linf_levels(eps, top)
        change = np.clip(np.rint(change), -limit, limit)
    elif l2 is not None:
        flat = change.reshape(len(change), -1)
        norms = np.linalg.norm(flat, axis=1) / top * l2_scale
        scale = np.minimum(1.0, float(l2) / np.maximum(norms, 1e-30))
        flat = flat * scale[:, None]
        rounded = np.rint(flat)
        over = np.linalg.norm(rounded, axis=1) / top * l2_scale > float(l2) * (1.0 + 1e-9)
        rounded[over] = np.trunc(flat[over])
        change = rounded.reshape(change.shape)
    else:
        change = np.rint(change)
    return (base + change).astype(clean.dtype)

"""Write a protected MedMNIST-style npz: the released splits protected, every array's dtype and shape kept."""

from __future__ import annotations

import zipfile
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
    """Write arrays to a compressed npz at ``path`` that ``np.load`` reads (the caller writes into an atomic folder).

    Unlike ``np.savez_compressed`` the zip entries carry a fixed date (1980-01-01), so the same arrays always give
    the same bytes: a release can be checked against another by its checksum. (NumPy has no such option; the
    entries are written with ``numpy.lib.format.write_array``, as ``savez`` does.)
    """
    path = Path(path)
    with zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with archive.open(info, mode="w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asanyarray(value), allow_pickle=False)
    return path

"""Write a protected MedMNIST-style npz: the released splits protected, every array's dtype and shape kept."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .quantize import dtype_top, quantize_change

__all__ = ["ChunkedArray", "quantize_protected", "write_npz"]


@dataclass
class ChunkedArray:
    """An array written to an npz chunk by chunk along its first axis, never held whole in memory.

    Attributes:
        shape: the full shape.
        dtype: the dtype.
        chunks: an iterable of arrays of ``shape[1:]`` rows each, whose lengths sum to ``shape[0]``.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: Iterable[np.ndarray]


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


def _write_chunks(handle, array: ChunkedArray) -> None:
    dtype = np.dtype(array.dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(array.shape)}
    np.lib.format.write_array_header_1_0(handle, header)
    rows = 0
    for chunk in array.chunks:
        chunk = np.ascontiguousarray(chunk, dtype=dtype)
        if tuple(chunk.shape[1:]) != tuple(array.shape[1:]):
            raise ValueError(f"chunk of shape {chunk.shape} for an array of {array.shape}")
        handle.write(chunk.tobytes())
        rows += len(chunk)
    if rows != array.shape[0]:
        raise ValueError(f"chunks gave {rows} rows for an array of {array.shape[0]}")


def write_npz(path: str | Path, arrays: dict[str, np.ndarray | ChunkedArray]) -> Path:
    """Write arrays to a compressed npz at ``path`` that ``np.load`` reads (the caller writes into an atomic folder).

    Unlike ``np.savez_compressed`` the zip entries carry a fixed date (1980-01-01), so the same arrays always give
    the same bytes: a release can be checked against another by its checksum. A :class:`ChunkedArray` is streamed
    into its entry chunk by chunk. (NumPy has neither option; entries are written in NumPy's ``.npy`` format with
    ``numpy.lib.format``, as ``savez`` does.)
    """
    path = Path(path)
    with zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with archive.open(info, mode="w", force_zip64=True) as handle:
                if isinstance(value, ChunkedArray):
                    _write_chunks(handle, value)
                else:
                    np.lib.format.write_array(handle, np.asanyarray(value), allow_pickle=False)
    return path

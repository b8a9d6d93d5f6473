"""NIfTI in and out with the source header kept byte for byte: only the voxel values change.

Reading uses nibabel. Writing copies the source file's bytes up to the start of the voxel data (the
348-byte header and any extensions) unchanged and appends the new voxels in the header's dtype and byte
order, gzip-compressed again for ``.nii.gz`` (with a zero timestamp, so equal data give equal bytes).
nibabel cannot write an image with its header left exactly as it was (it recomputes scaling, offsets and
form codes on save), so this small writer is ours. A written change is in the file's stored ("raw") units:
with ``scl_slope`` / ``scl_inter`` set, native values are ``raw * slope + inter`` and the budget is converted.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..utils import MedueError

__all__ = ["NiftiVolume", "read_nifti", "write_nifti_like"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class NiftiVolume:
    """A NIfTI volume as stored.

    Attributes:
        path: the file.
        raw: the stored voxel values (before ``scl_slope`` / ``scl_inter``), in the stored dtype, ``(X, Y, Z)``.
        slope: ``scl_slope`` (1 when unset).
        inter: ``scl_inter`` (0 when unset).
        affine: the voxel-to-world affine nibabel reads (qform / sform).
        spacing: voxel sizes in mm.
        offset: byte offset of the voxel data in the (decompressed) file.
    """

    path: Path
    raw: np.ndarray
    slope: float
    inter: float
    affine: np.ndarray
    spacing: tuple[float, ...]
    offset: int

    @property
    def native(self) -> np.ndarray:
        """The voxel values in native units (float64): ``raw * slope + inter``."""
        return self.raw.astype(np.float64) * self.slope + self.inter


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | Path, label: bool = False) -> NiftiVolume:
    """Read a 3-D NIfTI-1/2 file (``.nii`` or ``.nii.gz``).

    Args:
        path: the file.
        label: a label map: its values must be whole numbers (after scaling).

    Returns:
        The volume.

    Raises:
        MedueError: an unreadable or truncated file, not 3-D (a 4-D time series or a 2-D image), NaN or infinite
            values, or non-integer label values; the message names the file.
    """
    import nibabel as nib

    path = Path(path)
    if not _is_nifti(path):
        raise MedueError(f"{path}: not a NIfTI file (.nii or .nii.gz)")
    try:
        image = nib.load(path)
        raw = np.asanyarray(image.dataobj.get_unscaled())
    except Exception as err:  # nibabel raises many kinds for damaged files
        raise MedueError(f"{path}: cannot read NIfTI ({type(err).__name__}: {err})") from err
    if raw.ndim == 4 and raw.shape[3] == 1:
        raw = raw[..., 0]
    if raw.ndim != 3:
        raise MedueError(f"{path}: expected a 3-D volume, got shape {tuple(raw.shape)}")
    slope, inter = image.dataobj.slope, image.dataobj.inter
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
        raise MedueError(f"{path}: contains NaN or infinite voxels")
    volume = NiftiVolume(
        path=path,
        raw=raw,
        slope=slope,
        inter=inter,
        affine=np.asarray(image.affine, dtype=np.float64),
        spacing=tuple(float(v) for v in image.header.get_zooms()[:3]),
        offset=int(image.dataobj.offset),
    )
    if label:
        values = volume.native
        if not np.array_equal(values, np.round(values)):
            raise MedueError(f"{path}: label map holds non-integer values")
        if values.min() < 0:
            raise MedueError(f"{path}: label map holds negative values")
    return volume


def _decompressed(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def write_nifti_like(source: NiftiVolume, raw: np.ndarray, path: str | Path) -> Path:
    """Write ``raw`` (the new stored values) with ``source``'s header and extensions byte for byte.

    Args:
        source: the volume read by :func:`read_nifti` (its file is read again for the header bytes).
        raw: new stored values, with the source's shape; cast to the stored dtype (the caller rounds and clamps).
        path: the output file; ``.nii.gz`` is gzip-compressed.

    Returns:
        The path.

    Raises:
        MedueError: for a shape that differs from the source's.
    """
    path = Path(path)
    original = _decompressed(source.path)
    if tuple(raw.shape) != tuple(source.raw.shape):
        raise MedueError(f"{path}: data of shape {tuple(raw.shape)} for a header of {tuple(source.raw.shape)}")
    stored = source.raw.dtype  # nibabel gives the stored byte order
    values = np.asarray(raw).astype(stored, copy=False).tobytes(order="F")
    expected = source.raw.size * stored.itemsize
    if len(original) < source.offset + expected:
        raise MedueError(f"{source.path}: the file is shorter than its header says (truncated?)")
    # a 4-D source with a single time point stores its voxels the same way
    content = original[: source.offset] + values + original[source.offset + expected :]
    if path.name.lower().endswith(".gz"):
        path.write_bytes(gzip.compress(content, compresslevel=6, mtime=0))
    else:
        path.write_bytes(content)
    return path

"""DICOM series in and out with pydicom: a series folder is one volume; a protected series copies every source
dataset and replaces only the pixel data and the tags a derived image must change.

Reading checks what makes a folder one volume: every file a DICOM dataset with pixel data in an uncompressed
transfer syntax, one SeriesInstanceUID, the same rows, columns, orientation and rescale, no two slices at one
position and an even spacing along the slice normal (a missing slice shows as a gap). Slices are ordered by
their position along that normal, not by file name.

Writing (:func:`write_series_like`): each output file is a copy of its source dataset with the new pixel values
in the source's BitsAllocated / BitsStored / PixelRepresentation, ImageType set to DERIVED, a DerivationDescription
naming the method, and new SOP Instance and Series Instance UIDs (derived deterministically from the source UIDs
and a salt, so the same run writes the same files); patient, study and geometry tags are kept. Compressed
transfer syntaxes (JPEG, JPEG 2000, RLE, ...) are refused when read: decoding them needs codecs this package does
not install, and writing them back would either change the transfer syntax or recompress (and so alter) the
perturbation. pydicom reads and writes the files; the series logic is ours.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..utils import MedueError

__all__ = [
    "DicomSeries",
    "is_dicom_series",
    "read_series",
    "same_grid",
    "save_dataset",
    "stored_range",
    "write_series_like",
]


def save_dataset(dataset, path: str | Path, file_format: bool = False) -> None:
    """Write a pydicom dataset as it is (``file_format=True``: with a standard file meta header), with pydicom 3 or 2
    (MONAI Label's dependencies still need pydicom 2)."""
    try:
        dataset.save_as(path, enforce_file_format=file_format)
    except TypeError:  # pydicom 2
        dataset.save_as(path, write_like_original=not file_format)


_UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def is_dicom_series(folder: str | Path) -> bool:
    """Whether a folder holds DICOM files (judged by the first file's ``DICM`` preamble marker)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    files = _dicom_files(folder)
    if not files:
        return False
    with open(files[0], "rb") as handle:
        head = handle.read(132)
    return head[128:132] == b"DICM" or files[0].suffix.lower() == ".dcm"


@dataclass
class DicomSeries:
    """A DICOM series as one volume.

    Attributes:
        path: the series folder.
        files: the files, in slice order.
        datasets: their pydicom datasets (with pixel data), in slice order.
        raw: stored values ``(rows, columns, slices)`` in the stored dtype.
        slope: RescaleSlope (1 when absent).
        inter: RescaleIntercept (0 when absent).
        affine: voxel-to-patient affine (mm) from ImageOrientation / ImagePosition / PixelSpacing.
        positions: each slice's position along the slice normal (mm).
    """

    path: Path
    files: list[Path]
    datasets: list = field(repr=False)
    raw: np.ndarray = field(repr=False)
    slope: float
    inter: float
    affine: np.ndarray
    positions: np.ndarray

    @property
    def native(self) -> np.ndarray:
        """Values in native units (float64): ``raw * slope + inter``."""
        return self.raw.astype(np.float64) * self.slope + self.inter


def _stored_dtype(dataset, path: Path) -> np.dtype:
    bits = int(dataset.BitsAllocated)
    if bits not in (8, 16):
        raise MedueError(f"{path}: BitsAllocated {bits} is not supported (8 or 16)")
    signed = int(dataset.PixelRepresentation) == 1
    return np.dtype(f"{'i' if signed else 'u'}{bits // 8}")


def read_series(folder: str | Path, label: bool = False) -> DicomSeries:
    """Read a folder of DICOM slices as one volume (see the module docstring for the checks).

    Args:
        folder: the series folder.
        label: a mask series: its values must be whole numbers >= 0.

    Returns:
        The series.

    Raises:
        MedueError: naming the file and the problem.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    files = _dicom_files(folder) if folder.is_dir() else []
    if not files:
        raise MedueError(f"{folder}: no DICOM files")
    datasets = []
    for path in files:
        try:
            dataset = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as err:
            raise MedueError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from err
        if "PixelData" not in dataset:
            raise MedueError(f"{path}: DICOM file without PixelData (not an image)")
        syntax = str(getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "1.2.840.10008.1.2"))
        if syntax not in _UNCOMPRESSED:
            raise MedueError(
                f"{path}: compressed transfer syntax {syntax} is not supported (decompress the series first, "
                "e.g. with dcmdjpeg or gdcmconv --raw)"
            )
        if int(getattr(dataset, "SamplesPerPixel", 1)) != 1 or int(getattr(dataset, "NumberOfFrames", 1)) != 1:
            raise MedueError(f"{path}: only single-frame grey images are supported")
        datasets.append(dataset)
    first = datasets[0]
    for path, dataset in zip(files, datasets, strict=True):
        if dataset.SeriesInstanceUID != first.SeriesInstanceUID:
            raise MedueError(f"{path}: belongs to another series than {files[0]} (one series per folder)")
        for key in ("Rows", "Columns", "BitsAllocated", "PixelRepresentation"):
            if dataset.get(key) != first.get(key):
                raise MedueError(f"{path}: {key} differs from the rest of the series")
        if not np.allclose(
            np.asarray(dataset.ImageOrientationPatient, float), first.ImageOrientationPatient, atol=1e-3
        ):
            raise MedueError(f"{path}: ImageOrientationPatient differs from the rest of the series")
    orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    row, column = orientation[:3], orientation[3:]
    normal = np.cross(row, column)
    positions = np.asarray([np.dot(normal, np.asarray(d.ImagePositionPatient, float)) for d in datasets])
    order = np.argsort(positions)
    files = [files[i] for i in order]
    datasets = [datasets[i] for i in order]
    positions = positions[order]
    if len(positions) > 1:
        steps = np.diff(positions)
        if np.any(steps < 1e-3):
            duplicate = files[int(np.argmin(steps)) + 1]
            raise MedueError(f"{duplicate}: two slices at the same position (duplicated slice)")
        if np.abs(steps - np.median(steps)).max() > 0.01 * np.median(steps) + 1e-3:
            raise MedueError(f"{folder}: uneven slice spacing {np.round(steps, 3).tolist()} (missing slices?)")
    slopes = {float(d.get("RescaleSlope", 1.0) or 1.0) for d in datasets}
    inters = {float(d.get("RescaleIntercept", 0.0) or 0.0) for d in datasets}
    if len(slopes) > 1 or len(inters) > 1:
        raise MedueError(f"{folder}: the slices use different RescaleSlope / RescaleIntercept")
    dtype = _stored_dtype(first, files[0])
    try:
        raw = np.stack([np.asarray(d.pixel_array).astype(dtype, copy=False) for d in datasets], axis=-1)
    except Exception as err:  # a truncated pixel data element, or a decoder error
        raise MedueError(f"{folder}: cannot decode the pixel data ({type(err).__name__}: {err})") from err
    spacing = [float(v) for v in first.PixelSpacing]
    step = float(np.median(np.diff(positions))) if len(positions) > 1 else float(first.get("SliceThickness", 1.0))
    affine = np.eye(4)
    affine[:3, 0] = column * spacing[0]  # array axis 0 runs down the rows
    affine[:3, 1] = row * spacing[1]
    affine[:3, 2] = normal * step
    affine[:3, 3] = np.asarray(datasets[0].ImagePositionPatient, float)
    series = DicomSeries(folder, files, datasets, raw, slopes.pop(), inters.pop(), affine, positions)
    if label:
        values = series.native
        if not np.array_equal(values, np.round(values)) or values.min() < 0:
            raise MedueError(f"{folder}: mask series holds non-integer or negative values")
    return series


def same_grid(image: DicomSeries, mask: DicomSeries) -> None:
    """Check that a mask series lies voxel for voxel on an image series' grid.

    Raises:
        MedueError: for another number of slices, another size, or slices at other positions.
    """
    if mask.raw.shape != image.raw.shape:
        raise MedueError(f"{mask.path}: mask series of shape {mask.raw.shape} for an image series of {image.raw.shape}")
    if not np.allclose(mask.positions, image.positions, atol=0.01) or not np.allclose(
        mask.affine[:3, :3], image.affine[:3, :3], atol=1e-3
    ):
        raise MedueError(f"{mask.path}: mask series is not on the grid of {image.path} (slice positions differ)")


def stored_range(series: DicomSeries) -> tuple[int, int]:
    """The stored values BitsStored allows: ``[0, 2^b - 1]`` unsigned, ``[-2^(b-1), 2^(b-1) - 1]`` signed."""
    first = series.datasets[0]
    bits = int(first.get("BitsStored", first.BitsAllocated))
    if int(first.PixelRepresentation) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _derived_uid(source: str, salt: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[source, salt]))


def write_series_like(series: DicomSeries, raw: np.ndarray, folder: str | Path, method: str, salt: str) -> Path:
    """Write a protected copy of a series: every dataset copied, only the pixel data and derivation tags changed.

    Args:
        series: the source series.
        raw: new stored values ``(rows, columns, slices)`` (the caller rounds and clamps to BitsStored).
        folder: the output folder (created); files keep their source names.
        method: the protection method, named in DerivationDescription.
        salt: mixed into the new UIDs (e.g. the method, options and seed), so the same run gives the same UIDs.

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = _derived_uid(str(series.datasets[0].SeriesInstanceUID), salt)
    for index, (path, source) in enumerate(zip(series.files, series.datasets, strict=True)):
        dataset = copy.deepcopy(source)
        pixels = np.ascontiguousarray(raw[..., index].astype(series.raw.dtype, copy=False))
        syntax = str(getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", ""))
        dataset.PixelData = (pixels.byteswap() if syntax == "1.2.840.10008.1.2.2" else pixels).tobytes()
        image_type = list(dataset.get("ImageType", ["ORIGINAL", "PRIMARY"]))
        dataset.ImageType = ["DERIVED", *image_type[1:]] if image_type else ["DERIVED"]
        dataset.DerivationDescription = f"unlearnable-example protection ({method}, medue-monai)"
        dataset.SOPInstanceUID = _derived_uid(str(source.SOPInstanceUID), salt)
        dataset.SeriesInstanceUID = series_uid
        if getattr(dataset, "file_meta", None) is not None:
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        save_dataset(dataset, folder / path.name)
    return folder

"""3-D segmentation sources (NIfTI volumes or DICOM series with label maps) and a dataset over them at a working size.

Sources: an MSD task folder (``dataset.json`` with its ``training`` list, e.g. Task04_Hippocampus), a folder with
``images/`` (or ``imagesTr/``) and ``labels/`` / ``masks/`` (or ``labelsTr/``) holding ``.nii`` / ``.nii.gz``
files with matching names or DICOM series folders (one per case, the mask series under the same folder name,
on the same grid), or a MONAI datalist ``.json`` whose images are NIfTI. Every pair is checked up front
(readable, 3-D, finite, the label map on the image's grid: same shape and affine, integer values).

Intensities: a protector works in [0, 1]; each volume is mapped there by an explicit, recorded
:class:`IntensityMap` (per-volume percentiles for MR, a fixed window such as -1000..1000 HU for CT, or the
integer dtype's range). Multi-class label maps (e.g. hippocampus 0 / 1 / 2) give the region of interest as the
union of the foreground classes, or of the classes named in ``roi_classes``.

Geometry: volumes are zero-padded at the far end of every axis to the working size (never resampled), so a
perturbation made at the working size maps back to the original grid exactly by cropping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from torch.utils.data import Dataset

from ..io.nifti import read_nifti
from ..io.paths import check_item_id, check_unique_ids
from ..utils import MedueError

__all__ = [
    "IntensityMap",
    "VolumeDataset",
    "VolumeRecord",
    "VolumeSource",
    "is_volume_spec",
    "load_volume_source",
    "parse_intensity",
    "working_size_for",
]

NIFTI = (".nii", ".nii.gz")
IMAGE_FOLDERS = ("images", "imagesTr")
LABEL_FOLDERS = ("labels", "masks", "labelsTr")


def _is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI)


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]


def _datalist_entries(path: Path) -> list[dict[str, Any]] | None:
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    entries = content.get("training") if isinstance(content, dict) else None
    return entries if isinstance(entries, list) else None


def _series_folders(folder: Path) -> list[Path]:
    from ..io.dicom import is_dicom_series

    return [p for p in sorted(folder.iterdir()) if p.is_dir() and is_dicom_series(p)]


def is_volume_spec(spec: str | Path) -> bool:
    """Whether a data spec names a volume segmentation source: an MSD folder, an images/labels folder of NIfTI files
    or of DICOM series folders, or a NIfTI datalist."""
    path = Path(spec)
    if path.is_dir():
        if (path / "dataset.json").is_file():
            return True
        folder = next((path / name for name in IMAGE_FOLDERS if (path / name).is_dir()), None)
        return folder is not None and (any(_is_nifti(p) for p in folder.iterdir()) or bool(_series_folders(folder)))
    if path.is_file() and path.suffix.lower() == ".json":
        entries = _datalist_entries(path)
        first = entries[0] if entries else None
        return isinstance(first, dict) and _is_nifti(str(first.get("image", "")))
    return False


@dataclass
class VolumeRecord:
    """One (volume, label map) pair.

    Attributes:
        id: stable id (the file name without ``.nii`` / ``.nii.gz``, or the datalist's ``id``).
        image: the image file.
        label: the label-map file.
        shape: ``(X, Y, Z)`` of both.
        dtype: the image's stored dtype.
    """

    id: str
    image: Path
    label: Path
    shape: tuple[int, int, int]
    dtype: str
    channels: int = 1
    format: str = "NIfTI"


@dataclass
class VolumeSource:
    """A checked list of volume records (the interface of :class:`~medue_monai.data.segmentation.SegmentationSource`).

    Attributes:
        name: short name (folder or datalist name).
        path: the folder or datalist file.
        kind: ``"msd"``, ``"folder"`` or ``"datalist"``.
        records: records sorted by id.
    """

    name: str
    path: Path
    kind: str
    records: list[VolumeRecord] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        """Sorted ids."""
        return [record.id for record in self.records]

    @property
    def in_channels(self) -> int:
        """Image channels (1: single-modality volumes)."""
        return 1

    @property
    def max_shape(self) -> tuple[int, int, int]:
        """The largest extent of the volumes along each axis."""
        return tuple(int(max(record.shape[axis] for record in self.records)) for axis in range(3))

    def subset(self, ids: list[str]) -> list[VolumeRecord]:
        """Records of ``ids``, in that order."""
        by_id = {record.id: record for record in self.records}
        return [by_id[i] for i in ids]


def read_volume(path: Path, label: bool = False) -> Any:
    """A NIfTI file (:func:`~medue_monai.io.nifti.read_nifti`) or a DICOM series folder
    (:func:`~medue_monai.io.dicom.read_series`)."""
    if path.is_dir():
        from ..io.dicom import read_series

        return read_series(path, label=label)
    return read_nifti(path, label=label)


def _check_pair(item_id: str, image: Path, label: Path, classes: set[int] | None = None) -> VolumeRecord:
    for path, what in ((image, "image"), (label, "label map")):
        if not path.exists():
            raise MedueError(f"{path}: {what} does not exist")
    volume = read_volume(image)
    labels = read_volume(label, label=True)
    if image.is_dir():
        from ..io.dicom import same_grid

        same_grid(volume, labels)
    if labels.raw.shape != volume.raw.shape:
        raise MedueError(f"{label}: label map of shape {labels.raw.shape} for an image of {volume.raw.shape} ({image})")
    if not np.allclose(labels.affine, volume.affine, atol=1e-3):
        raise MedueError(f"{label}: label map is on another grid than {image} (affines differ)")
    values = set(np.unique(labels.native).astype(int).tolist())
    if values <= {0}:
        raise MedueError(f"{label}: empty label map (no region of interest: the volume could not be protected)")
    if classes is not None and not values <= classes:
        raise MedueError(
            f"{label}: label values {sorted(values - classes)} are not among the declared classes {sorted(classes)}"
        )
    return VolumeRecord(
        item_id,
        image,
        label,
        tuple(int(s) for s in volume.raw.shape),
        str(volume.raw.dtype),
        format="DICOM" if image.is_dir() else "NIfTI",
    )


def _load_pairs(
    origin: Path, pairs: list[tuple[str, Path, Path]], name: str, kind: str, classes: set[int] | None = None
) -> VolumeSource:
    if not pairs:
        raise MedueError(f"{origin}: no NIfTI image / label pairs")
    for item_id, image, _ in pairs:
        check_item_id(item_id, image)
    check_unique_ids([item_id for item_id, _, _ in pairs], origin)
    records = sorted((_check_pair(*pair, classes) for pair in pairs), key=lambda r: r.id)
    return VolumeSource(name, origin, kind, records)


def _from_entries(origin: Path, entries: list[Any], base: Path) -> list[tuple[str, Path, Path]]:
    pairs = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise MedueError(f"{origin}: training entry {number} needs an 'image' and a 'label'")
        image, label = (base / str(entry["image"])).resolve(), (base / str(entry["label"])).resolve()
        pairs.append((entry.get("id", _stem(image)), image, label))
    return pairs


def load_volume_source(data: str | Path, data_root: str | Path | None = None) -> VolumeSource:
    """Load and check a NIfTI segmentation source.

    Args:
        data: an MSD folder (``dataset.json``), a folder with ``images/`` + ``labels/`` (or ``masks/``, or
            ``imagesTr/`` + ``labelsTr/``), or a datalist ``.json`` of NIfTI pairs.
        data_root: base of a datalist's relative paths (default: the JSON's folder).

    Returns:
        The checked source.

    Raises:
        MedueError: naming the file and the problem (missing pair, unreadable or 4-D volume, NaN, labels on
            another grid, non-integer labels, bad or duplicate ids).
    """
    path = Path(data)
    if path.is_dir() and (path / "dataset.json").is_file():
        entries = _datalist_entries(path / "dataset.json")
        if entries is None:
            raise MedueError(f"{path / 'dataset.json'}: needs a 'training' list of {{'image', 'label'}} entries")
        declared = json.loads((path / "dataset.json").read_text()).get("labels")
        try:
            classes = {int(key) for key in declared} if isinstance(declared, dict) else None
        except ValueError as err:
            raise MedueError(f"{path / 'dataset.json'}: 'labels' keys must be class values") from err
        return _load_pairs(path, _from_entries(path / "dataset.json", entries, path), path.name, "msd", classes)
    if path.is_dir():
        images = next((path / name for name in IMAGE_FOLDERS if (path / name).is_dir()), None)
        labels = next((path / name for name in LABEL_FOLDERS if (path / name).is_dir()), None)
        if images is None or labels is None:
            raise MedueError(f"{path}: a volume folder needs images/ and labels/ (or masks/) subfolders")
        series = _series_folders(images)
        if series:  # one DICOM series folder per case, its mask series under the same name
            pairs = []
            for image in series:
                if not (labels / image.name).is_dir():
                    raise MedueError(f"{image}: image series has no mask series in {labels}")
                pairs.append((image.name, image, labels / image.name))
            return _load_pairs(path, pairs, path.name, "dicom")
        by_stem = {_stem(p): p for p in labels.iterdir() if _is_nifti(p)}
        pairs = []
        for image in sorted(p for p in images.iterdir() if _is_nifti(p)):
            if _stem(image) not in by_stem:
                raise MedueError(f"{image}: image has no label map in {labels}")
            pairs.append((_stem(image), image, by_stem[_stem(image)]))
        return _load_pairs(path, pairs, path.name, "folder")
    entries = _datalist_entries(path) if path.is_file() else None
    if entries is None:
        raise MedueError(f"{data}: not a NIfTI source (MSD folder, images/ + labels/ folder, or datalist .json)")
    base = Path(data_root) if data_root else path.parent
    return _load_pairs(path, _from_entries(path, entries, base), path.stem, "datalist")


@dataclass(frozen=True)
class IntensityMap:
    """How a volume's native values map to [0, 1] for the protector (and its perturbation back).

    Attributes:
        mode: ``"percentile"`` (per volume: ``low``-th to ``high``-th percentile, MR), ``"window"`` (fixed native
            values ``low`` to ``high``, e.g. -1000..1000 HU for CT) or ``"dtype"`` (the integer dtype's range).
        low: lower percentile or window value.
        high: upper percentile or window value.
    """

    mode: str = "percentile"
    low: float = 0.5
    high: float = 99.5

    def bounds(self, native: np.ndarray, dtype: np.dtype | str) -> tuple[float, float]:
        """The native values mapped to 0 and 1 for this volume (``high > low`` always).

        Raises:
            MedueError: ``dtype`` mode on a float volume.
        """
        if self.mode == "window":
            low, high = float(self.low), float(self.high)
        elif self.mode == "dtype":
            dtype = np.dtype(dtype)
            if not np.issubdtype(dtype, np.integer):
                raise MedueError(f"intensity 'dtype' needs integer volumes, got {dtype}; use percentiles or a window")
            info = np.iinfo(dtype)
            low, high = float(info.min), float(info.max)
        else:
            low, high = (float(v) for v in np.percentile(native, [self.low, self.high]))
        return low, (high if high > low else low + 1.0)

    def describe(self) -> str:
        """``percentile:0.5,99.5``, ``window:-1000,1000`` or ``dtype``."""
        return "dtype" if self.mode == "dtype" else f"{self.mode}:{self.low:g},{self.high:g}"


def parse_intensity(text: str | IntensityMap | None) -> IntensityMap:
    """Parse ``percentile:LO,HI``, ``window:LO,HI`` or ``dtype`` (``None``: percentiles 0.5, 99.5).

    Raises:
        MedueError: for anything else.
    """
    if isinstance(text, IntensityMap):
        return text
    if text is None or text == "":
        return IntensityMap()
    mode, _, values = str(text).partition(":")
    if mode == "dtype" and not values:
        return IntensityMap("dtype", 0.0, 0.0)
    try:
        low, high = (float(v) for v in values.split(","))
    except ValueError as err:
        raise MedueError(f"intensity must be percentile:LO,HI, window:LO,HI or dtype, got {text!r}") from err
    if mode not in ("percentile", "window") or not high > low:
        raise MedueError(f"intensity must be percentile:LO,HI, window:LO,HI or dtype with LO < HI, got {text!r}")
    if mode == "percentile" and not 0.0 <= low < high <= 100.0:
        raise MedueError(f"percentiles must lie in [0, 100], got {text!r}")
    return IntensityMap(mode, low, high)


def working_size_for(shape: tuple[int, ...], multiple: int = 16) -> tuple[int, ...]:
    """The default working size of a set of volumes: each axis of their largest extent rounded up to ``multiple``."""
    return tuple(int(size + (-size) % multiple) for size in shape)


def _pad_to(array: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    pads = [(0, target - current) for current, target in zip(array.shape, size, strict=True)]
    return np.pad(array, pads)


class VolumeDataset(Dataset):
    """Lazy dataset of MONAI dict items ``image``, ``label``, ``index``, ``id`` for volumes at a working size.

    ``image`` is a float32 MetaTensor ``(1, X, Y, Z)`` in [0, 1] (the volume mapped by ``intensity``, zero-padded
    at the far end to ``spatial_size``); ``label`` the ``(1, X, Y, Z)`` binary region of interest. Their meta
    hold ``filename_or_obj``, ``affine``, ``original_shape``, ``intensity_bounds`` and ``id``.

    Args:
        records: the records to serve (``index`` is the position in this list).
        spatial_size: working size ``(X, Y, Z)``; every volume must fit into it.
        intensity: the intensity map (default: per-volume percentiles 0.5, 99.5).
        roi_classes: label values that form the region of interest (default: every value above 0).
        cache: keep decoded items in memory after their first read.

    Raises:
        MedueError: for a volume larger than ``spatial_size``.
    """

    spatial_dims = 3

    def __init__(
        self,
        records: list[VolumeRecord],
        spatial_size: tuple[int, int, int],
        intensity: IntensityMap | str | None = None,
        roi_classes: tuple[int, ...] | None = None,
        cache: bool = False,
        defense: str = "none",
    ) -> None:
        self.records = list(records)
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.intensity = parse_intensity(intensity)
        self.roi_classes = tuple(int(c) for c in roi_classes) if roi_classes else None
        self.channels = 1
        self.cache = bool(cache)
        if defense not in (None, "none"):
            raise MedueError("the image defenses are 2-D; they are not available for volumes")
        self._cache: dict[int, dict[str, Any]] = {}
        for record in self.records:
            if any(s > t for s, t in zip(record.shape, self.spatial_size, strict=True)):
                raise MedueError(
                    f"{record.image}: volume of shape {record.shape} exceeds the working size {self.spatial_size}"
                )

    def preload(self, num_threads: int = 4) -> VolumeDataset:
        """Decode every item now (see :meth:`SegmentationDataset.preload`)."""
        if self.cache:
            for index in range(len(self)):
                self[index]
        return self

    def __len__(self) -> int:
        return len(self.records)

    def roi(self, labels: np.ndarray) -> np.ndarray:
        """The binary region of interest of a label map (``roi_classes``, else every value above 0)."""
        if self.roi_classes is None:
            return (labels > 0).astype(np.float32)
        return np.isin(labels, self.roi_classes).astype(np.float32)

    def load(self, record: VolumeRecord) -> tuple[Any, np.ndarray, tuple[float, float]]:
        """``(volume, ROI at the original size, intensity bounds)`` of one record."""
        volume = read_volume(record.image)
        labels = read_volume(record.label, label=True).native
        return volume, self.roi(labels), self.intensity.bounds(volume.native, volume.raw.dtype)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.cache and index in self._cache:
            return self._cache[index]
        record = self.records[index]
        volume, roi, (low, high) = self.load(record)
        unit = np.clip((volume.native - low) / (high - low), 0.0, 1.0).astype(np.float32)
        meta = {
            "filename_or_obj": str(record.image),
            "affine": torch.as_tensor(volume.affine),
            "original_shape": list(record.shape),
            "intensity_bounds": [low, high],
            "id": record.id,
        }
        item = {
            "image": MetaTensor(torch.from_numpy(_pad_to(unit, self.spatial_size))[None], meta=dict(meta)),
            "label": MetaTensor(torch.from_numpy(_pad_to(roi, self.spatial_size))[None], meta=dict(meta)),
            "index": index,
            "id": record.id,
        }
        if self.cache:
            self._cache[index] = item
        return item

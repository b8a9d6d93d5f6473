"""Classification sources (MedMNIST-style npz arrays) and the torch dataset over them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.data import MetaTensor
from torch.utils.data import Dataset

from ..utils import MedueError

__all__ = ["ClassificationSource", "ClassificationDataset", "image_layout", "load_classification_source", "SPLITS"]

SPLITS = ("train", "val", "test")


def image_layout(images: np.ndarray) -> tuple[int, int]:
    """``(spatial_dims, channels)`` of an image array: ``(N, H, W)`` grey 2-D, ``(N, H, W, 1|3)`` 2-D with channels,
    ``(N, D, H, W)`` grey volumes (MedMNIST 3-D: a last axis of 1 or 3 means channels, anything else depth)."""
    if images.ndim == 3:
        return 2, 1
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        return 2, int(images.shape[-1])
    if images.ndim == 4:
        return 3, 1
    raise MedueError(f"images of shape {images.shape}: expected (N,H,W), (N,H,W,1|3) or (N,D,H,W)")


@dataclass
class ClassificationSource:
    """A classification dataset held as MedMNIST-style arrays.

    Attributes:
        name: short name (e.g. ``breastmnist``) used in manifests and reports.
        arrays: the npz keys (``train_images``, ``train_labels``, ``val_images``, ...) exactly as stored: their
            dtype and shape are what a release writes back. Images are ``(N, H, W)``, ``(N, H, W, 1)`` or
            ``(N, H, W, 3)`` integer arrays, labels ``(N,)`` or ``(N, 1)``.
        path: the file the arrays came from, or ``None`` for in-process data.
        extra_keys: npz keys other than the six split arrays, carried through unchanged on write.
    """

    name: str
    arrays: dict[str, np.ndarray]
    path: str | None = None
    extra_keys: list[str] = field(default_factory=list)

    def images(self, split: str) -> np.ndarray:
        """Return the image array of a split as ``(N, H, W)`` (grey, a trailing channel axis of 1 dropped) or
        ``(N, H, W, 3)``: a view of the stored array."""
        return self.images_of(self.arrays[f"{split}_images"])

    @staticmethod
    def images_of(stored: np.ndarray) -> np.ndarray:
        """An image array in the stored layout (e.g. read back from a release) laid out as :meth:`images`."""
        return stored[..., 0] if stored.ndim == 4 and stored.shape[-1] == 1 else stored

    def labels(self, split: str) -> np.ndarray:
        """Return the labels of a split as an ``(N, 1)`` int64 array (the stored array keeps its own dtype)."""
        return np.asarray(self.arrays[f"{split}_labels"]).reshape(-1, 1).astype(np.int64, copy=False)

    def as_stored(self, key: str, values: np.ndarray) -> np.ndarray:
        """``values`` (laid out as :meth:`images` / :meth:`labels` return them) in the stored shape and dtype of
        ``key``, ready to be written back."""
        stored = self.arrays[key]
        return np.asarray(values).reshape((len(values), *stored.shape[1:])).astype(stored.dtype, copy=False)

    @property
    def num_classes(self) -> int:
        """Number of classes, taken over all splits (labels are 0..C-1)."""
        return int(max(int(self.labels(s).max()) for s in SPLITS if f"{s}_labels" in self.arrays)) + 1

    @property
    def in_channels(self) -> int:
        """1 for grey images and volumes, 3 for RGB."""
        return image_layout(self.images("train"))[1]

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes (MedMNIST 3-D)."""
        return image_layout(self.images("train"))[0]

    @property
    def spatial_size(self) -> tuple[int, ...]:
        """``(H, W)`` of the images, or ``(D, H, W)`` of the volumes."""
        return tuple(int(s) for s in self.images("train").shape[1 : 1 + self.spatial_dims])

    @property
    def dtype(self) -> np.dtype:
        """The images' on-disk dtype."""
        return self.images("train").dtype

    def dataset(self, split: str) -> ClassificationDataset:
        """Return a :class:`ClassificationDataset` over one split."""
        return ClassificationDataset(self.images(split), self.labels(split), split=split, source=self.path or self.name)

    def limited(self, limit: int | None) -> ClassificationSource:
        """Return a copy whose training split holds only its first ``limit`` items (val/test unchanged)."""
        if limit is None:
            return self
        if limit <= 0:
            raise MedueError(f"--limit must be positive, got {limit}")
        arrays = dict(self.arrays)
        arrays["train_images"] = arrays["train_images"][:limit]
        arrays["train_labels"] = arrays["train_labels"][:limit]
        return ClassificationSource(self.name, arrays, self.path, list(self.extra_keys))


def validate_classification_arrays(arrays: Mapping[str, np.ndarray], origin: str) -> None:
    """Check split keys, shapes, label layout and finiteness.

    Args:
        arrays: the npz content.
        origin: the file name (or description) used in error messages.

    Raises:
        MedueError: naming ``origin`` and the first problem found.
    """
    missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in arrays]
    if missing:
        raise MedueError(f"{origin}: missing keys {missing} (expected MedMNIST keys train/val/test _images/_labels)")
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim not in (3, 4):
            raise MedueError(
                f"{origin}: {split}_images has shape {images.shape}; expected (N,H,W), (N,H,W,1|3) or (N,D,H,W)"
            )
        if labels.ndim == 1:
            labels = labels[:, None]
        if labels.ndim != 2 or labels.shape[0] != images.shape[0]:
            raise MedueError(f"{origin}: {split}_labels has shape {labels.shape} for {images.shape[0]} images")
        if labels.shape[1] != 1:
            raise MedueError(
                f"{origin}: {split}_labels has {labels.shape[1]} columns: multi-label sets (e.g. ChestMNIST) "
                "are not supported yet; use a single-label MedMNIST set"
            )
        if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
            raise MedueError(f"{origin}: {split}_images contains NaN or infinite pixels")
        if labels.size and labels.min() < 0:
            raise MedueError(f"{origin}: {split}_labels has negative class indices")


def load_classification_source(
    arrays: Mapping[str, np.ndarray], name: str, path: str | None = None
) -> ClassificationSource:
    """Validate MedMNIST-style arrays and wrap them in a :class:`ClassificationSource`.

    Args:
        arrays: mapping with ``{train,val,test}_{images,labels}`` (e.g. an opened npz).
        name: dataset name.
        path: source file, recorded for messages and manifests.

    Returns:
        The source, every array kept as stored (dtype and shape).

    Raises:
        MedueError: on missing keys, bad shapes, multi-label data or non-finite pixels.
    """
    origin = path or name
    validate_classification_arrays(arrays, origin)
    data: dict[str, np.ndarray] = {}
    for split in SPLITS:
        images = np.asarray(arrays[f"{split}_images"])
        if images.dtype != np.uint8:
            raise MedueError(f"{origin}: {split}_images has dtype {images.dtype}; MedMNIST npz must be uint8")
        labels = np.asarray(arrays[f"{split}_labels"])
        if not np.issubdtype(labels.dtype, np.integer):
            raise MedueError(f"{origin}: {split}_labels has dtype {labels.dtype}; class labels must be integers")
        data[f"{split}_images"] = images
        data[f"{split}_labels"] = labels
    extra = [k for k in arrays.keys() if k not in data]
    for key in extra:
        data[key] = np.asarray(arrays[key])
    return ClassificationSource(name=name, arrays=data, path=path, extra_keys=extra)


class ClassificationDataset(Dataset):
    """Torch dataset of MONAI-style dict items over uint8 image arrays.

    Each item is ``{"image": MetaTensor (C,H,W) float32 in [0,1], "label": int64 scalar,
    "id": "<split>/<index>", "index": int}``. The image's meta records the source, split,
    index and original dtype so that writers can map it back.

    Args:
        images: ``(N,H,W)``, ``(N,H,W,C)`` or ``(N,D,H,W)`` uint8 array (kept by reference, not copied).
        labels: ``(N,1)`` integer labels.
        split: split name used in ids.
        source: file or dataset name recorded in meta.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, split: str = "train", source: str = "") -> None:
        self.images = images
        self.labels = labels.reshape(-1)
        self.split = split
        self.source = source
        self.spatial_dims = image_layout(images)[0]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict:
        array = np.asarray(self.images[index])
        array = array[None] if self.spatial_dims == 3 or array.ndim == 2 else np.moveaxis(array, -1, 0)
        image = torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)
        meta = {
            "source": self.source,
            "split": self.split,
            "index": int(index),
            "original_dtype": str(self.images.dtype),
            "intensity_scale": 255.0,
        }
        return {
            "image": MetaTensor(image, meta=meta),
            "label": torch.as_tensor(int(self.labels[index]), dtype=torch.long),
            "id": f"{self.split}/{index}",
            "index": int(index),
        }

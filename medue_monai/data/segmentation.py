"""Segmentation sources (image + mask folders, MONAI datalist JSON) and a lazy torch dataset over them.

A source is a list of ``(id, image path, mask path)`` records, checked up front (pairing, readability,
matching sizes) so that a bad file stops the run before any output is written. Pixels are read lazily
by :class:`SegmentationDataset`, resized to a working size, and the original size, channel count and
file format travel in each item's MetaTensor meta so the writers can restore them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..io.paths import check_item_id, check_unique_ids
from ..transforms.defenses import apply_defense_to_pair, check_defense
from ..utils import MedueError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SegmentationRecord",
    "SegmentationSource",
    "SegmentationDataset",
    "load_segmentation_source",
    "make_synthetic_segmentation",
    "read_image_array",
    "read_mask_array",
    "resample_image",
    "resize_image",
    "resize_mask",
    "split_ids",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_FOLDERS = ("masks", "labels")


@dataclass
class SegmentationRecord:
    """One (image, mask) pair of a segmentation source.

    Attributes:
        id: stable string id (the file stem for folder sources).
        image: path of the image file.
        label: path of the mask file.
        size: ``(H, W)`` of the image (read from the file header).
        channels: 1 for grey images, 3 for colour ones.
        format: the image's file format as PIL names it (``JPEG``, ``PNG``, ...).
        dtype: the dtype its pixels are read and released with (``uint8`` or ``uint16``).
    """

    id: str
    image: Path
    label: Path
    size: tuple[int, int]
    channels: int
    format: str
    dtype: str = "uint8"


@dataclass
class SegmentationSource:
    """A checked list of segmentation records.

    Attributes:
        name: short name (the folder or JSON file name).
        path: the folder or datalist file the records came from.
        kind: ``"folder"`` or ``"datalist"``.
        records: records sorted by id.
    """

    name: str
    path: Path
    kind: str
    records: list[SegmentationRecord] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        """Sorted ids."""
        return [record.id for record in self.records]

    @property
    def in_channels(self) -> int:
        """Channel count used inside protectors (3 when any image is colour)."""
        return max((record.channels for record in self.records), default=1)

    def subset(self, ids: list[str]) -> list[SegmentationRecord]:
        """Records of ``ids``, in that order."""
        by_id = {record.id: record for record in self.records}
        return [by_id[i] for i in ids]


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


def _channels_of(mode: str) -> int:
    return 1 if mode in ("1", "L", "F", *_SIXTEEN_BIT_MODES) else 3


def _png_colour_depth(path: Path) -> tuple[int, int] | None:
    """``(bit depth, colour type)`` from a PNG's IHDR chunk, or ``None`` for another format."""
    with open(path, "rb") as handle:
        head = handle.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _probe(path: Path) -> tuple[tuple[int, int], str, str]:
    """Return ``((H, W), mode, format)`` from the header, raising MedueError when unreadable or unsupported."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            mode, fmt = image.mode, str(image.format)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise MedueError(f"{path}: cannot read image ({err})") from err
    if mode == "F":
        raise MedueError(f"{path}: 32-bit float images are not supported; store 8- or 16-bit integer images")
    if fmt == "PNG" and mode in ("RGB", "RGBA"):
        depth = _png_colour_depth(path)
        if depth is not None and depth[0] == 16:
            raise MedueError(
                f"{path}: 16-bit colour PNGs are not supported (they cannot be read without losing 8 bits); "
                "store 16-bit grey or 8-bit colour images"
            )
    return (int(height), int(width)), mode, fmt


def image_dtype(mode: str) -> str:
    """The dtype an image of this PIL mode is read with: ``uint16`` for 16-bit grey, else ``uint8``."""
    return "uint16" if mode in _SIXTEEN_BIT_MODES else "uint8"


def read_image_array(path: str | Path) -> np.ndarray:
    """Read an image file at its own bit depth: ``uint8`` ``(H, W)`` / ``(H, W, 3)``, or ``uint16`` ``(H, W)``.

    16-bit grey images stay 16-bit (a 32-bit integer image must hold values in 0..65535); palette / RGBA /
    CMYK images become RGB; bilevel images become 8-bit grey.

    Raises:
        MedueError: when the file cannot be decoded or holds values a 16-bit image cannot.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in _SIXTEEN_BIT_MODES:
                array = np.asarray(image)
                if array.size and (array.min() < 0 or array.max() > 65535):
                    raise MedueError(f"{path}: integer image with values outside 0..65535")
                return array.astype(np.uint16)
            if _channels_of(image.mode) == 1:
                return np.array(image.convert("L"), dtype=np.uint8)
            return np.array(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise MedueError(f"{path}: cannot read image ({err})") from err


def read_mask_array(path: str | Path) -> np.ndarray:
    """Read a mask file as a binary ``uint8`` ``(H, W)`` array: grey conversion, then ``> 127``.

    Raises:
        MedueError: when the file cannot be decoded.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            grey = np.array(image.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise MedueError(f"{path}: cannot read mask ({err})") from err
    return (grey > 127).astype(np.uint8)


def _files_by_stem(folder: Path, check_ids: bool = False) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            if path.stem in files:
                raise MedueError(f"{path}: two files share the stem {path.stem!r} in {folder}")
            if check_ids:
                check_item_id(path.stem, path)
            files[path.stem] = path
    if check_ids:
        check_unique_ids(files, folder)
    return files


def _record(item_id: str, image: Path, label: Path) -> SegmentationRecord:
    size, mode, fmt = _probe(image)
    mask_size, _, _ = _probe(label)
    if mask_size != size:
        raise MedueError(
            f"{label}: mask size {mask_size[1]}x{mask_size[0]} differs from its image {image} ({size[1]}x{size[0]})"
        )
    return SegmentationRecord(item_id, image, label, size, _channels_of(mode), fmt, image_dtype(mode))


def _load_folder(root: Path) -> SegmentationSource:
    image_dir = root / "images"
    mask_dir = next((root / name for name in MASK_FOLDERS if (root / name).is_dir()), None)
    if not image_dir.is_dir() or mask_dir is None:
        raise MedueError(f"{root}: a segmentation folder needs images/ and masks/ (or labels/) subfolders")
    images, masks = _files_by_stem(image_dir, check_ids=True), _files_by_stem(mask_dir)
    for stem, path in images.items():
        if stem not in masks:
            raise MedueError(f"{path}: image has no mask in {mask_dir}")
    for stem, path in masks.items():
        if stem not in images:
            raise MedueError(f"{path}: mask has no image in {image_dir}")
    if not images:
        raise MedueError(f"{image_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    records = [_record(stem, images[stem], masks[stem]) for stem in sorted(images)]
    return SegmentationSource(root.name, root, "folder", records)


def _load_datalist(path: Path, data_root: str | Path | None) -> SegmentationSource:
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MedueError(f"{path}: cannot read datalist JSON ({err})") from err
    entries = content.get("training") if isinstance(content, dict) else None
    if not isinstance(entries, list) or not entries:
        raise MedueError(f"{path}: a datalist needs a non-empty 'training' list of {{'image', 'label'}} entries")
    base = Path(data_root) if data_root else path.parent
    records, seen = [], set()
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry:
            raise MedueError(f"{path}: training entry {number} has no 'image'")
        image = base / entry["image"]
        if "label" not in entry:
            raise MedueError(f"{image}: image has no mask ('label') in {path}")
        label = base / entry["label"]
        for file, what in ((image, "image"), (label, "mask")):
            if not file.is_file():
                raise MedueError(f"{file}: {what} listed in {path} does not exist")
        item_id = check_item_id(entry.get("id", Path(str(entry["image"])).stem), f"{path} (training entry {number})")
        if item_id.lower() in seen:
            raise MedueError(f"{path}: duplicate id {item_id!r} (training entry {number}); ids must be unique")
        seen.add(item_id.lower())
        records.append(_record(item_id, image, label))
    records.sort(key=lambda r: r.id)
    return SegmentationSource(path.stem, path, "datalist", records)


def load_segmentation_source(
    data: str | Path, data_root: str | Path | None = None, limit: int | None = None
) -> SegmentationSource:
    """Load and check a segmentation source.

    Args:
        data: a folder with ``images/`` and ``masks/`` (or ``labels/``) holding files with matching
            stems (PNG/JPG/BMP/TIFF), or a MONAI datalist JSON ``{"training": [{"image", "label"}]}``.
            A relative folder that does not exist is also looked up under ``data_root``.
        data_root: base folder for relative paths in a datalist (default: the JSON's folder), and a
            fallback root for ``data``.
        limit: keep only the first ``limit`` ids (sorted), for quick runs.

    Returns:
        The checked source.

    Raises:
        MedueError: for a missing source, an image without mask or mask without image, a mask whose
            size differs from its image, or an unreadable file (the message names the file).
    """
    path = Path(data)
    if not path.exists() and data_root is not None and (Path(data_root) / path).exists():
        path = Path(data_root) / path
    if path.is_dir():
        source = _load_folder(path)
    elif path.is_file() and path.suffix.lower() == ".json":
        source = _load_datalist(path, data_root)
    else:
        raise MedueError(f"{data}: not a segmentation folder (images/ + masks/) or a datalist .json")
    if limit is not None:
        if int(limit) < 2:
            raise MedueError(f"limit must be >= 2 for a train/test split, got {limit}")
        source.records = source.records[: int(limit)]
    return source


def split_ids(ids: list[str], seed: int = 0, test_fraction: float = 0.2) -> dict[str, list[str]]:
    """Seeded train/test split: shuffle the sorted ids with ``seed``, the last ``test_fraction`` is test.

    Args:
        ids: item ids (sorted here first, so the input order does not matter).
        seed: shuffle seed.
        test_fraction: share of ids in the test split (at least one each side).

    Returns:
        ``{"train": [...], "test": [...]}``, each sorted.
    """
    ordered = sorted(ids)
    if len(ordered) < 2:
        raise MedueError(f"need at least 2 items for a train/test split, got {len(ordered)}")
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    n_test = min(len(ordered) - 1, max(1, int(round(test_fraction * len(ordered)))))
    test = sorted(ordered[i] for i in permutation[len(ordered) - n_test :])
    test_set = set(test)
    return {"train": [i for i in ordered if i not in test_set], "test": test}


def resample_image(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a float ``(B, C, H, W)`` batch the way images are read at a working size.

    Bilinear with antialiasing (a triangle filter as wide as the scale factor when shrinking). It is
    linear and differentiable, so the release writer can invert it (:func:`medue_monai.io.png.upsample_delta`).
    """
    return F.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def resize_image(array: np.ndarray, spatial_size: int | tuple[int, int], channels: int) -> torch.Tensor:
    """uint8 / uint16 ``(H, W[, C])`` -> float ``(channels, h, w)`` in [0, 1] (the dtype's top maps to 1),
    with :func:`resample_image`."""
    size = (spatial_size, spatial_size) if isinstance(spatial_size, int) else tuple(spatial_size)
    top = 65535.0 if array.dtype == np.uint16 else 255.0
    tensor = torch.from_numpy(np.ascontiguousarray(array).astype(np.float32)).div_(top)
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    if tensor.shape[0] != channels:
        tensor = tensor.expand(channels, -1, -1) if tensor.shape[0] == 1 else tensor.mean(0, keepdim=True)
    if tuple(tensor.shape[-2:]) != size:
        tensor = resample_image(tensor[None], size)[0]
    return tensor.clamp_(0.0, 1.0).contiguous()


def resize_mask(mask: np.ndarray, spatial_size: int | tuple[int, int]) -> torch.Tensor:
    """Binary ``(H, W)`` -> float ``(1, h, w)`` in {0, 1}, nearest neighbour."""
    size = (spatial_size, spatial_size) if isinstance(spatial_size, int) else tuple(spatial_size)
    tensor = torch.from_numpy(np.ascontiguousarray(mask)).float()[None, None]
    if tuple(tensor.shape[-2:]) != size:
        tensor = F.interpolate(tensor, size=size, mode="nearest")
    return tensor[0]


class SegmentationDataset(Dataset):
    """Lazy dataset of MONAI dict items ``image``, ``label``, ``index``, ``id`` at a working size.

    ``image`` is a float32 MetaTensor ``(C, h, w)`` in [0, 1]; ``label`` a ``(1, h, w)`` binary mask.
    Their meta holds ``filename_or_obj``, ``original_size`` ``[H, W]``, ``original_channels``,
    ``source_format`` and ``id``, which the PNG writer uses to restore the original geometry.

    Args:
        records: the records to serve (``index`` is the position in this list).
        spatial_size: working side length (images are resized to ``spatial_size`` squared).
        channels: channel count served (default: the records' maximum; grey images are repeated).
        cache: keep decoded, resized items in memory after their first read.
        defense: an exploiter-side counter-measure
            (:data:`medue_monai.transforms.defenses.DEFENSES`) applied to each decoded pair at its
            original size, before resizing, as someone preprocessing the files would (``none``: as read).
    """

    def __init__(
        self,
        records: list[SegmentationRecord],
        spatial_size: int = 224,
        channels: int | None = None,
        cache: bool = False,
        defense: str = "none",
    ) -> None:
        self.records = list(records)
        self.spatial_size = int(spatial_size)
        self.channels = int(channels or max((r.channels for r in self.records), default=1))
        self.cache = bool(cache)
        self.defense = check_defense(defense)
        self._cache: dict[int, dict[str, Any]] = {}

    def preload(self, num_threads: int = 4) -> SegmentationDataset:
        """Decode and resize every item now (threads), so DataLoader workers share the cache.

        Without this, each worker process fills its own cache and loses it when the epoch ends.

        Args:
            num_threads: decoding threads (PIL releases the GIL while decoding).

        Returns:
            ``self``.
        """
        if not self.cache:
            return self
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
            list(pool.map(self.__getitem__, range(len(self))))
        return self

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.cache and index in self._cache:
            return self._cache[index]
        record = self.records[index]
        image = read_image_array(record.image)
        mask = read_mask_array(record.label)
        if mask.shape != image.shape[:2]:
            raise MedueError(f"{record.label}: mask size differs from its image {record.image}")
        if self.defense != "none":
            if image.dtype == np.uint16:  # the defenses work on 8-bit images, as a trainer's JPEG or filter would
                image = np.rint(image / 257.0).astype(np.uint8)
            image, mask = apply_defense_to_pair(image, mask, self.defense)
        meta = {
            "filename_or_obj": str(record.image),
            "original_size": list(image.shape[:2]),
            "original_channels": 1 if image.ndim == 2 else int(image.shape[2]),
            "source_format": record.format,
            "id": record.id,
        }
        item = {
            "image": MetaTensor(resize_image(image, self.spatial_size, self.channels), meta=dict(meta)),
            "label": MetaTensor(
                resize_mask(mask, self.spatial_size), meta=dict(meta, filename_or_obj=str(record.label))
            ),
            "index": index,
            "id": record.id,
        }
        if self.cache:
            self._cache[index] = item
        return item


def make_synthetic_segmentation(
    folder: str | Path,
    num_items: int = 40,
    size: int = 64,
    seed: int = 0,
    num_objects: int = 4,
    contrast: float = 1.0,
    noise: float = 0.2,
) -> Path:
    """Write a small synthetic segmentation folder (``images/`` + ``masks/`` PNGs) for demos and tests.

    Images come from MONAI's :func:`monai.data.synthetic.create_test_image_2d` (bright discs on a noisy
    background), masks are the discs' union (0 / 255).

    Args:
        folder: output folder (created; must not already hold ``images/``).
        num_items: number of image/mask pairs.
        size: side length in pixels.
        seed: random seed.
        num_objects: discs per image.
        contrast: disc intensity scale; 1 gives MONAI's bright discs (0.5-1 over a dark background),
            smaller values give faint discs as in low-contrast medical images (the demo uses 0.1).
        noise: maximum of the uniform background noise added after scaling.

    Returns:
        The folder.

    Raises:
        MedueError: when ``folder/images`` already exists.
    """
    from monai.data.synthetic import create_test_image_2d

    folder = Path(folder)
    if (folder / "images").exists():
        raise MedueError(f"{folder / 'images'}: already exists; choose an empty folder")
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    state = np.random.RandomState(seed)
    for index in range(num_items):
        image, mask = create_test_image_2d(
            size,
            size,
            num_objs=num_objects,
            rad_max=max(3, size // 6),
            rad_min=max(2, size // 20),
            noise_max=0.0,
            num_seg_classes=1,
            random_state=state,
        )
        image = contrast * image + state.uniform(0.0, noise, size=image.shape)
        image = (image - image.min()) / max(float(image.max() - image.min()), 1e-8)
        Image.fromarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)).save(
            folder / "images" / f"syn{index:04d}.png"
        )
        Image.fromarray((mask > 0).astype(np.uint8) * 255).save(folder / "masks" / f"syn{index:04d}.png")
    return folder

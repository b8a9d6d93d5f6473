"""Segmentation pipeline: protect an image + mask dataset into PNGs, and evaluate it with an exploiter.

``protect_segmentation`` fits a segmentation protector (UMed) on the seeded 80/20 train split at a
working size, then writes every RELEASED image as a lossless PNG at its original size, channel count and
bit depth (the training images; the held-out test images only when asked to include them, protected as
unseen images), copies each mask byte for byte under its item's id and writes ``manifest.json``, all into
a temporary folder renamed at the end; the fitted protector, with the private record of the source and
the held-out ids, goes beside that folder. ``evaluate_segmentation`` reads the protected training split
BACK FROM DISK, trains an exploiter on it and on the clean originals, and tests both on the clean
held-out images (foreground Dice and Jaccard in percent).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, MeanIoU
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.segmentation import (
    SegmentationDataset,
    SegmentationRecord,
    load_segmentation_source,
    read_image_array,
    read_mask_array,
    resize_image,
    resize_mask,
)
from ..evaluation.hardening import harden_batch, training_counter_measures
from ..evaluation.invisibility import invisibility_metrics
from ..evaluation.pixels import PixelScores
from ..evaluation.recipes import check_clean_run, counter_measures, get_recipe
from ..io.manifest import build_manifest, protector_record, write_manifest
from ..io.paths import inside
from ..io.png import apply_delta, copy_mask, write_png
from ..io.quantize import dtype_top
from ..nets import SEGMENTER_NAMES, get_segmenter
from ..protectors import get_protector_class
from ..protectors import umed as _umed  # noqa: F401  (registers "umed")
from ..protectors.masks import region_mask
from ..utils import MedueError, resolve_device, set_seed
from .release import open_release, resolve_clean_source

__all__ = [
    "EXPLOITERS",
    "evaluate_segmentation",
    "original_region",
    "protect_segmentation",
    "write_protected_images",
]

EXPLOITERS = SEGMENTER_NAMES


def _pair_stats(clean: np.ndarray, written: np.ndarray) -> tuple[float, int, int, int, float]:
    """Statistics of one (clean, written) pair of the same integer dtype, in [0, 1] units (the dtype's top
    maps to 1): sum of squared differences, number of values, changed pixel positions, positions, and the
    largest absolute difference."""
    top = float(dtype_top(clean.dtype))
    diff = written.astype(np.int64) - clean.astype(np.int64)
    changed = diff != 0 if diff.ndim == 2 else np.any(diff != 0, axis=-1)
    flat = diff.reshape(-1)
    largest = float(np.abs(flat).max()) / top if flat.size else 0.0
    return float(np.dot(flat, flat)) / top**2, int(diff.size), int(changed.sum()), int(changed.size), largest


class _BudgetAccumulator:
    """Budget and invisibility over images of varying sizes and bit depths, one pair at a time (nothing kept).

    PSNR comes from the pooled MSE over all pixels in [0, 1] units (for 8-bit images the usual
    ``10 log10(255^2 / MSE)``), SSIM is the per-image mean, ``l0_share`` the share of pixel positions where any
    channel changed, ``linf_max`` the largest change in [0, 1] units. Pairs are summarized by
    :func:`_pair_stats` (cheap, in the writer threads) and then added here.

    L2 norms (in [0, 1] units, added with :meth:`add_l2`): an L2 budget is defined at the protector's
    working size (``C x S x S`` values), where the protector projects its delta. ``l2_max`` /
    ``l2_mean`` are the per-image ``||delta||_2`` there; ``l2_written_max`` / ``l2_written_mean`` measure
    the written file at its original size (``C x H x W``) and rescale to the working size,
    ``||x_written - x||_2 * sqrt(C S^2 / (C H W))``, so they compare with the same budget (the writer keeps
    them within it).
    """

    def __init__(self, ssim: bool) -> None:
        self.ssim = ssim
        self.squared, self.count, self.changed, self.positions, self.largest = 0.0, 0, 0, 0, 0.0
        self.ssims: list[float] = []
        self.l2_images, self.l2_sum, self.l2_max, self.written_l2_sum, self.written_l2_max = 0, 0.0, 0.0, 0.0, 0.0

    def add_l2(self, working_l2: float, written_l2: float) -> None:
        """Add one image's working-size delta norm and its written-file norm rescaled to the working size."""
        self.l2_images += 1
        self.l2_sum += working_l2
        self.l2_max = max(self.l2_max, working_l2)
        self.written_l2_sum += written_l2
        self.written_l2_max = max(self.written_l2_max, written_l2)

    def add(self, clean: np.ndarray, written: np.ndarray) -> None:
        """Add one pair (computes its statistics, and SSIM when enabled)."""
        self.add_stats(_pair_stats(clean, written))
        if self.ssim:
            top = float(dtype_top(clean.dtype))
            self.ssims.append(invisibility_metrics(clean[None], written[None], max_value=top, hashes=False)["ssim"])

    def add_stats(self, stats: tuple[float, int, int, int, float]) -> None:
        """Add the :func:`_pair_stats` of one pair."""
        squared, count, changed, positions, largest = stats
        self.squared += squared
        self.count += count
        self.changed += changed
        self.positions += positions
        self.largest = max(self.largest, largest)

    def result(self) -> dict[str, float]:
        mse = self.squared / max(self.count, 1)
        result = {
            "psnr": float(10.0 * np.log10(1.0 / mse)) if mse > 0 else float("inf"),
            "linf_max": self.largest,
            "l0_share": self.changed / max(self.positions, 1),
        }
        if self.l2_images:
            result["l2_max"] = self.l2_max
            result["l2_mean"] = self.l2_sum / self.l2_images
            result["l2_written_max"] = self.written_l2_max
            result["l2_written_mean"] = self.written_l2_sum / self.l2_images
        if self.ssim:
            result["ssim"] = float(np.mean(self.ssims)) if self.ssims else 1.0
        return result


def original_region(mask: np.ndarray, region: str, radius: int, working: tuple[int, int]) -> np.ndarray | None:
    """A region-confined method's allowed pixels at an image's ORIGINAL size, or ``None`` for ``"full"``.

    Args:
        mask: ``(H, W)`` binary mask at the original size.
        region: the protector's :meth:`~medue_monai.protectors.base.Protector.release_region`.
        radius: its band radius in working pixels; at the original size it becomes ``ceil(radius * scale)``
            with ``scale = max(H / h, W / w)``.
        working: ``(h, w)`` working size.

    Returns:
        ``(H, W)`` uint8 mask (1 = may change).
    """
    if region == "full":
        return None
    scale = max(mask.shape[0] / working[0], mask.shape[1] / working[1])
    tensor = torch.from_numpy(np.ascontiguousarray(mask)).float()[None, None]
    return region_mask(tensor, region, int(math.ceil(radius * scale)))[0, 0].numpy().astype(np.uint8)


def write_protected_images(
    protector: Any,
    released: dict[str, list[SegmentationRecord]],
    folder: Path,
    *,
    spatial_size: int,
    channels: int,
    batch_size: int = 16,
    resample: str = "bilinear",
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[dict[str, dict[str, Any]], dict[str, float], dict[str, int]]:
    """Write the protected images and their masks of a segmentation release into ``folder``.

    ``images/<id>.png`` at each image's original size, channel count and bit depth, and ``masks/<id><suffix>``
    (the mask file copied byte for byte). The ``train`` records get the perturbations the protector learned
    for them (their position in the list is the ``index`` they were fitted with); records of any other split
    are unseen images. A region-confined protector's region (:meth:`~medue_monai.protectors.base.Protector.
    release_region`) is re-applied at the original size, and the budget holds on the written values
    (:func:`~medue_monai.io.png.apply_delta`).

    Args:
        protector: the fitted segmentation protector.
        released: split name -> records, in the order the training split was fitted with.
        folder: the release folder being written (``images/`` and ``masks/`` are created or reused).
        spatial_size: the working side length the protector was fitted at.
        channels: channel count served to the protector.
        batch_size: images per ``perturb`` call.
        resample: how the perturbation reaches the original size.
        num_workers: sets the writer threads (``max(2, 2 * num_workers)``).
        progress: show progress bars.

    Returns:
        ``(items, realized, empty)``: the manifest entry of every written item, the realized budget and
        invisibility (:class:`_BudgetAccumulator`), and the number of empty masks per split.
    """
    budget = protector.budget_info()
    eps = budget["budget"] if budget["norm"] == "linf" else None
    l2 = budget["budget"] if budget["norm"] == "l2" else None
    region, radius = protector.release_region(spatial_size, spatial_size)
    images_dir, masks_dir = Path(folder) / "images", Path(folder) / "masks"
    images_dir.mkdir(exist_ok=True)
    masks_dir.mkdir(exist_ok=True)
    items: dict[str, dict[str, Any]] = {}
    empty = dict.fromkeys(released, 0)
    budget_sum = _BudgetAccumulator(ssim=False)

    def load_one(item: SegmentationRecord) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
        original, mask = read_image_array(item.image), read_mask_array(item.label)
        return original, mask, resize_image(original, spatial_size, channels), resize_mask(mask, spatial_size)

    def write_one(args: tuple[SegmentationRecord, np.ndarray, np.ndarray, torch.Tensor]) -> tuple:
        item, original, mask, delta_row = args
        allowed = original_region(mask, region, radius, (spatial_size, spatial_size))
        written = apply_delta(original, delta_row, eps, resample=resample, region=allowed, l2=l2)
        write_png(inside(images_dir, f"{item.id}.png", "image path"), written)
        copy_mask(item.label, masks_dir, item.id)
        return _pair_stats(original, written), float(delta_row.float().norm()), int(mask.max() == 0)

    # decoding, resizing, quantizing and PNG encoding run in threads (PIL, zlib and torch release the GIL)
    with ThreadPoolExecutor(max_workers=max(2, 2 * num_workers)) as pool:
        for split_name, records in released.items():
            chunks = [(i, records[i : i + batch_size]) for i in range(0, len(records), batch_size)]
            for offset, chunk in tqdm(chunks, desc=f"write {split_name}", disable=not progress, leave=False):
                originals, masks, images, labels = zip(*pool.map(load_one, chunk), strict=True)
                # the training items get the perturbations learned for them; other items are unseen images
                indices = torch.arange(offset, offset + len(chunk)) if split_name == "train" else None
                delta = protector.perturb(torch.stack(images), torch.stack(labels), indices).cpu()
                rows = zip(chunk, originals, masks, delta, strict=True)
                for (stats, working_l2, is_empty), item in zip(pool.map(write_one, rows), chunk, strict=True):
                    budget_sum.add_stats(stats)
                    written_l2 = np.sqrt(stats[0]) * np.sqrt(delta[0].numel() / max(stats[1], 1))
                    budget_sum.add_l2(working_l2, float(written_l2))
                    empty[split_name] += is_empty
                    items[item.id] = {
                        "image": f"images/{item.id}.png",
                        "mask": f"masks/{item.id}{item.label.suffix.lower()}",
                        "original_size": list(item.size),
                        "channels": item.channels,
                        "dtype": item.dtype,
                        "working_size": [spatial_size, spatial_size],
                        "source_format": item.format,
                    }
    return items, budget_sum.result(), empty


def protect_segmentation(
    data: str,
    out: str,
    method: str,
    options: dict,
    *,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    limit: int | None = None,
    spatial_size: int = 224,
    batch_size: int | None = None,
    num_workers: int = 0,
    progress: bool = True,
    data_root: str | None = None,
    protector_out: str | Path | None = None,
    resume: bool = False,
    resample: str = "bilinear",
    include_test: bool = False,
) -> dict:
    """Fit a segmentation protector on the train split and write the protected dataset.

    The source is split 80/20 by a seeded shuffle of its sorted ids (:func:`split_ids`); the protector is
    fitted on the training part, and the release holds only protected images: ``images/<id>.png`` for every
    training item (original size, channel count and bit depth), ``masks/<id><mask suffix>`` (the mask file
    copied byte for byte) and ``manifest.json`` (paths relative to the release). The held-out test images stay
    out of it (``include_test`` protects them as unseen images and writes them too); their ids are in the
    private record inside the fitted protector file, which goes OUTSIDE the release, to ``protector_out``
    (default ``<out>.protector.pt``): it is the key that removes the protection, so keep it private.

    Args:
        data: folder with ``images/`` + ``masks/`` (or ``labels/``), or a MONAI datalist JSON.
        out: output folder (must not exist unless ``overwrite``; never inside the input).
        method: registered segmentation protector name (``umed``).
        options: extra constructor options of the protector.
        seed: seed of the split, the loaders and the protector (recorded).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        overwrite: replace an existing output folder and protector file (and discard an interrupted fit).
        limit: protect only the first ``limit`` training items (sorted ids of the training split), for quick
            runs; the held-out test split is the same as without it. ``None``: all.
        spatial_size: working side length inside the protector.
        batch_size: loader batch size (default: the protector's ``batch_size`` option, else 16).
        num_workers: DataLoader workers.
        progress: show progress bars.
        data_root: base folder for a datalist's relative paths.
        protector_out: path of the fitted protector (default ``<out>.protector.pt``; never inside ``out``).
        resume: continue an interrupted fit from ``<protector file>.resume`` (resumable methods save it
            after every epoch and delete it when the output is written).
        resample: how the working-size perturbation reaches the original size
            (:func:`medue_monai.io.png.upsample_delta`): ``"bilinear"``, or ``"inverse"`` (so that whoever
            shrinks the release to the working size sees the perturbation the protector made, at a lower PSNR).
        include_test: also protect the held-out test images (as unseen images) and write them into the release
            (default ``False``: they stay out).

    Returns:
        The manifest written.

    Raises:
        MedueError: bad data, options or output folder (nothing is written then).
    """
    if get_protector_class(method).task != "segmentation":
        raise MedueError(f"method {method!r} is for classification; {data!r} is a segmentation dataset")
    from .protect import protect

    return protect(
        data,
        out,
        method,
        options,
        overwrite=overwrite,
        protector_out=protector_out,
        resume=resume,
        seed=seed,
        device=device,
        limit=limit,
        data_root=data_root,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        spatial_size=spatial_size,
        resample=resample,
        include_test=include_test,
    )


def write_segmentation_release(run, folder: Path, protector_file: str | Path, fit: dict[str, Any]) -> dict[str, Any]:
    """Write a segmentation release (``images/``, ``masks/``, ``manifest.json``) into ``folder``.

    Args:
        run: the :class:`~medue_monai.pipeline.protect.ProtectionRun` with its fitted protector.
        folder: the (temporary) release folder.
        protector_file: the saved protector, hashed into the manifest.
        fit: the fit's timing (``seconds``, ``seconds_before_resume``, ``device``).

    Returns:
        The manifest written.
    """
    protector, source, spatial_size = run.protector, run.source, run.spatial_size
    region, radius = protector.release_region(spatial_size, spatial_size)
    released = {"train": run.train_records, **({"test": run.test_records} if run.include_test else {})}
    started = time.perf_counter()
    items, realized, empty = write_protected_images(
        protector,
        released,
        folder,
        spatial_size=spatial_size,
        channels=source.in_channels,
        batch_size=run.batch_size,
        resample=run.resample,
        num_workers=run.num_workers,
        progress=run.progress,
    )
    apply_seconds = time.perf_counter() - started
    jpeg = sum(1 for records in released.values() for r in records if r.format.upper() in ("JPEG", "MPO"))
    manifest = build_manifest(
        task="segmentation",
        method=run.method,
        options=protector.config(),
        seed=run.seed,
        source=source.path,
        data_spec=run.data,
        output_files={"images": folder / "images", "masks": folder / "masks"},
        counts={
            "train": len(run.train_records),
            "test": len(run.test_records) if run.include_test else 0,
            "empty_masks_train": empty["train"],
            "empty_masks_test": empty.get("test", 0),
        },
        extra={
            "dataset": {
                "name": source.name,
                "kind": source.kind,
                "in_channels": source.in_channels,
                "spatial_size": spatial_size,
                "limit": run.limit,
                "output_format": "png",
                "resample": run.resample,
                "jpeg_source_count": jpeg,
                "note": (
                    f"{jpeg} source images were JPEG; all outputs are lossless PNG (JPEG would erase the protection)"
                    if jpeg
                    else "all outputs are lossless PNG"
                ),
            },
            "held_out": run.held_out,
            "region": {
                "name": region,
                "working_radius": radius,
                "note": "the written change is confined to this region of each mask at the original size "
                "(band radius scaled by the resize factor)"
                if region != "full"
                else "the perturbation may touch any pixel",
            },
            "items": items,
            "budget": {**protector.budget_info(), "realized": realized},
            "timing": {
                "fit_seconds": fit["seconds"],
                # a resumed fit: the seconds its interrupted runs spent before (fit_seconds is this run's)
                "fit_seconds_before_resume": fit["seconds_before_resume"],
                "apply_seconds": apply_seconds,
                "apply_images_per_second": len(items) / max(apply_seconds, 1e-9),
                "device": fit["device"],
            },
            "history": getattr(protector, "history", []),
            "protector": protector_record(protector_file),
        },
    )
    write_manifest(folder, manifest)
    return manifest


@torch.no_grad()
def _test(network: torch.nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float | None]:
    """Foreground Dice, Jaccard, pixel AUC and predicted foreground share on ``loader``, in percent."""
    network.eval()
    dice = DiceMetric(include_background=False, reduction="mean", ignore_empty=False)
    iou = MeanIoU(include_background=False, reduction="mean", ignore_empty=False)
    pixels = PixelScores()
    for batch in loader:
        images = batch["image"].as_tensor().to(device)
        labels = (batch["label"].as_tensor().to(device) > 0.5).long()
        logits = network(images)
        prediction = logits.argmax(dim=1, keepdim=True)
        pred_onehot = torch.cat([prediction == 0, prediction == 1], dim=1).float()
        label_onehot = torch.cat([labels == 0, labels == 1], dim=1).float()
        dice(pred_onehot, label_onehot)
        iou(pred_onehot, label_onehot)
        pixels.update((logits[:, 1:2] - logits[:, 0:1]).float(), labels == 1)
    pixel_scores = pixels.aggregate()
    return {
        "dice": 100.0 * float(dice.aggregate().item()),
        "jaccard": 100.0 * float(iou.aggregate().item()),
        "pixel_auc": pixel_scores["pixel_auc"],
        "predicted_share": pixel_scores["predicted_share"],
    }


def train_segmentation_exploiter(
    recipe: dict[str, Any],
    exploiter: str,
    train: SegmentationDataset,
    test: SegmentationDataset,
    *,
    device: torch.device,
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
    description: str = "exploiter",
) -> dict[str, Any]:
    """Train an exploiter from scratch with a recipe and test it on the clean test split every epoch.

    The recipe's training-time counter-measures (``augmentation``: the masks take the same crop and flip;
    ``adversarial_eps``: PGD on the DiceCE loss; see :mod:`medue_monai.evaluation.hardening`) apply to
    every training batch.

    Args:
        recipe: a segmentation recipe (``lr``, ``weight_decay``, ``epochs``, ``batch_size``, optional
            training-time counter-measures).
        exploiter: network name (:func:`medue_monai.nets.get_segmenter`).
        train: training items (protected or clean).
        test: clean test items.
        device: torch device.
        seed: seed for weights, shuffling, augmentation and adversarial starts.
        num_workers: DataLoader workers.
        progress: show a tqdm bar.
        description: bar label.

    Returns:
        ``{"dice", "jaccard", "pixel_auc", "predicted_share", "curves": {"train_loss", "test_dice",
        "test_jaccard", "test_pixel_auc", "test_predicted_share"}}`` (final epoch; see
        :mod:`medue_monai.evaluation.pixels` for the last two, which show whether a low-but-not-zero Dice is
        the chance overlap of guesses or anatomy learned).
    """
    hardening = training_counter_measures(recipe)
    generator = set_seed(seed)
    spatial_dims = getattr(train, "spatial_dims", 2)
    side = min(train.spatial_size) if spatial_dims == 3 else train.spatial_size
    network = get_segmenter(exploiter, train.channels, 2, side, spatial_dims=spatial_dims).to(device)
    optimizer = torch.optim.Adam(
        network.parameters(), lr=float(recipe["lr"]), weight_decay=float(recipe.get("weight_decay", 0))
    )
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    batch_size = int(recipe["batch_size"])
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator, num_workers=num_workers)
    test_loader = DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    curves: dict[str, list[float | None]] = {
        "train_loss": [],
        "test_dice": [],
        "test_jaccard": [],
        "test_pixel_auc": [],
        "test_predicted_share": [],
    }
    scores: dict[str, float | None] = {"dice": 0.0, "jaccard": 0.0, "pixel_auc": None, "predicted_share": 0.0}
    for _ in tqdm(range(int(recipe["epochs"])), desc=description, disable=not progress, leave=False):
        network.train()
        losses = []
        for batch in train_loader:
            images = batch["image"].as_tensor().to(device)
            labels = (batch["label"].as_tensor().to(device) > 0.5).float()
            images, labels = harden_batch(
                network, images, labels, loss_function, hardening, targets_are_masks=True, generator=generator
            )
            loss = loss_function(network(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        scores = _test(network, test_loader, device)
        curves["train_loss"].append(float(np.mean(losses)))
        curves["test_dice"].append(scores["dice"])
        curves["test_jaccard"].append(scores["jaccard"])
        curves["test_pixel_auc"].append(scores["pixel_auc"])
        curves["test_predicted_share"].append(scores["predicted_share"])
    return {**scores, "curves": curves}


def _protected_records(folder: Path, manifest: dict[str, Any], ids: list[str], volumes: bool = False) -> list:
    """The release's records of ``ids``, every path resolved inside the release folder."""
    from ..data.volumes import VolumeRecord

    records = []
    items = manifest["items"]
    for item_id in ids:
        if item_id not in items:
            raise MedueError(f"{folder}: training item {item_id!r} of the private record is not in the release")
        entry = items[item_id]
        image = inside(folder, entry["image"], "image path")
        mask = inside(folder, entry["label" if volumes else "mask"], "mask path")
        for path in (image, mask):
            if not path.is_file():
                raise MedueError(f"{path}: listed in the manifest of {folder} but missing")
        if volumes:
            records.append(VolumeRecord(item_id, image, mask, tuple(entry["shape"]), entry["dtype"]))
        else:
            records.append(
                SegmentationRecord(
                    item_id, image, mask, tuple(entry["original_size"]), entry["channels"], "PNG", entry["dtype"]
                )
            )
    return records


def _volume_invisibility(clean: Any, protected_records: list) -> dict[str, float]:
    """PSNR and 3-D SSIM in [0, 1] units (each clean volume's intensity map applied to both), L-inf and L0, over the
    protected training volumes read back from disk."""
    from skimage.metrics import structural_similarity

    from ..io.nifti import read_nifti

    squared, values, changed, largest, ssims = 0.0, 0, 0, 0.0, []
    for record, written in zip(clean.records, protected_records, strict=True):
        volume, _, (low, high) = clean.load(record)
        original = np.clip((volume.native - low) / (high - low), 0, 1)
        release = np.clip((read_nifti(written.image).native - low) / (high - low), 0, 1)
        difference = release - original
        squared += float((difference**2).sum())
        values += difference.size
        changed += int(np.count_nonzero(difference))
        largest = max(largest, float(np.abs(difference).max()))
        ssims.append(float(structural_similarity(original, release, data_range=1.0)))
    mse = squared / max(values, 1)
    return {
        "psnr": float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf"),
        "ssim": float(np.mean(ssims)) if ssims else 1.0,
        "linf_max": largest,
        "l0_share": changed / max(values, 1),
    }


def evaluate_segmentation(
    protected: str,
    recipe: str = "seg-quick",
    exploiter: str = "unet",
    *,
    epochs: int | None = None,
    output: str | None = None,
    device: str = "auto",
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
    data_root: str | None = None,
    clean_run: dict[str, Any] | None = None,
    defense: str | None = None,
    augmentation: str | None = None,
    adversarial_eps: float | None = None,
    protector: str | Path | None = None,
) -> dict:
    """Train an exploiter on the protected train split (read back from disk) and on the clean one.

    Both are tested on the CLEAN held-out test images of the original source, which the private record in
    the release's protector file lists with the source's location (pass ``data_root`` when the source moved:
    it is then looked up as ``data_root/<source folder name>``); the source must be the one protected
    (checksum).

    Args:
        protected: folder written by :func:`protect_segmentation`.
        recipe: segmentation recipe name (``seg-quick``, ``seg-paper``).
        exploiter: ``unet``, ``attentionunet``, ``basicunetplusplus`` or ``swinunetr``.
        epochs: override the recipe's epochs.
        output: results JSON path (a learning-curve PNG is written beside it); ``None`` writes nothing.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        seed: seed of both exploiter runs (the same for clean and protected).
        num_workers: DataLoader workers.
        progress: show progress bars.
        data_root: where to find the clean source when its recorded path is gone.
        clean_run: the clean-trained run of an earlier evaluation of the SAME source, split, recipe,
            exploiter and seed (its ``clean`` entry plus ``curves``: ``{**results["clean"], "curves":
            results["curves"]["clean"]}``, plus the earlier ``split_sha256`` when known, which must match
            this copy's split), reused instead of training it again (benchmarks that compare several
            protectors of one dataset); ``None`` trains it.
        defense: an exploiter-side counter-measure from
            :data:`~medue_monai.transforms.defenses.DEFENSES`, applied to the training pairs of both runs
            at their original size (the test split stays clean); ``None`` is the recipe's (``none`` unless
            it names one).
        augmentation: training-time augmentation of both runs, ``none`` or ``crop-flip`` (random crop after
            4-pixel zero padding + left-right flip, :mod:`medue_monai.evaluation.hardening`); ``None`` is the
            recipe's.
        adversarial_eps: adversarial training of both runs: PGD in this L-inf radius (10 steps of 1/255 unless
            the recipe says otherwise) on every training batch; 0 turns it off; ``None`` is the recipe's.
        protector: the release's fitted protector file, which holds the private record (default
            ``<protected>.protector.pt``).

    Returns:
        Results with ``clean`` / ``protected`` ``{"dice", "jaccard"}`` (%), ``invisibility``,
        ``budget``, ``curves`` and ``split_sha256`` (hash of the train/test ids, to match runs).

    Raises:
        MedueError: not a segmentation output, unknown recipe / exploiter / counter-measure, missing files, or a
            ``clean_run`` trained for another number of epochs, with another exploiter network (where it records
            one), on another split or with other counter-measures.
    """
    folder = Path(protected)
    manifest, record = open_release(folder, protector)
    if manifest.get("task") != "segmentation":
        raise MedueError(f"{folder}: manifest task is {manifest.get('task')!r}, not segmentation")
    recipe_config = get_recipe(
        recipe, epochs=epochs, defense=defense, augmentation=augmentation, adversarial_eps=adversarial_eps
    )
    if recipe_config["task"] != "segmentation":
        raise MedueError(f"recipe {recipe!r} is for {recipe_config['task']}, not segmentation")
    counter = counter_measures(recipe_config)
    recipe_config.update(counter)
    defense = counter["defense"]
    if exploiter not in EXPLOITERS:
        raise MedueError(f"unknown segmentation exploiter {exploiter!r}; choose from {', '.join(EXPLOITERS)}")
    split = record["split"]
    split_sha256 = hashlib.sha256(json.dumps(split, sort_keys=True).encode()).hexdigest()
    if clean_run is not None:
        check_clean_run(
            clean_run,
            score="test_dice",
            epochs=recipe_config["epochs"],
            exploiter=exploiter,
            counter=counter,
            split_sha256=split_sha256,
        )
    dataset_info = manifest["dataset"]
    source_spec, root = resolve_clean_source(manifest, record, data_root)
    volumes = str(dataset_info.get("kind", "")).startswith("volume")
    if volumes:
        from ..data.volumes import VolumeDataset, load_volume_source

        source = load_volume_source(source_spec, data_root=root)

        def dataset(records, **kwargs):
            size = tuple(dataset_info["working_size"])
            return VolumeDataset(records, size, dataset_info["intensity"], dataset_info.get("roi_classes"), **kwargs)

    else:
        source = load_segmentation_source(source_spec, data_root=root)
        size = int(recipe_config.get("spatial_size") or dataset_info["spatial_size"])
        channels = int(dataset_info["in_channels"])

        def dataset(records, **kwargs):
            return SegmentationDataset(records, size, channels, **kwargs)

    known = set(source.ids)
    missing = [i for i in split["train"] + split["test"] if i not in known]
    if missing:
        raise MedueError(f"{source_spec}: clean source lacks {len(missing)} ids of the release (e.g. {missing[0]!r})")
    clean_train_records = source.subset(split["train"])
    protected_records = _protected_records(folder, manifest, split["train"], volumes)
    threads = max(1, num_workers) * 2
    test = dataset(source.subset(split["test"]), cache=True).preload(threads)
    torch_device = resolve_device(device)
    started = time.perf_counter()
    runs = {}
    splits = [("clean", clean_train_records), ("protected", protected_records)]
    if clean_run is not None:
        runs["clean"] = {k: v for k, v in clean_run.items() if k != "split_sha256"}
        splits = splits[1:]
    for name, records in splits:
        train = dataset(records, cache=True, defense=defense).preload(threads)
        runs[name] = train_segmentation_exploiter(
            recipe_config,
            exploiter,
            train,
            test,
            device=torch_device,
            seed=seed,
            num_workers=num_workers,
            progress=progress,
            description=f"{exploiter} on {name}",
        )
        runs[name].update(counter, exploiter=exploiter)
    if volumes:
        realized = _volume_invisibility(dataset(clean_train_records), protected_records)
    else:
        accumulator = _BudgetAccumulator(ssim=True)
        for clean_record, protected_record in zip(clean_train_records, protected_records, strict=True):
            accumulator.add(read_image_array(clean_record.image), read_image_array(protected_record.image))
        realized = accumulator.result()
    results = {
        "task": "segmentation",
        "dataset": dataset_info["name"],
        "method": manifest["method"],
        "recipe": recipe_config,
        "exploiter": exploiter,
        "seed": seed,
        "defense": defense,
        "counter_measures": counter,
        "device": str(torch_device),
        "clean": {k: v for k, v in runs["clean"].items() if k != "curves"},
        "protected": {k: v for k, v in runs["protected"].items() if k != "curves"},
        "invisibility": {"psnr": realized["psnr"], "ssim": realized["ssim"]},
        "budget": {
            "norm": manifest["budget"]["norm"],
            "eps": manifest["budget"]["budget"],
            "linf_max": realized["linf_max"],
            "l0_share": realized["l0_share"],
        },
        "curves": {name: run["curves"] for name, run in runs.items()},
        "split_sha256": split_sha256,
        "reused_clean_run": clean_run is not None,
        "wall_seconds": time.perf_counter() - started,
    }
    if output is not None:
        from ..evaluation.report import write_results

        write_results(results, output, "test_dice")
    return results

"""Segmentation pipeline: protect an image + mask dataset into PNGs, and evaluate it with an exploiter.

``protect_segmentation`` fits a segmentation protector (UMed) on the seeded 80/20 train split at a
working size, then writes every image as a lossless PNG at its ORIGINAL size and channel count
(train: protected; test: unperturbed), copies masks byte for byte and writes ``manifest.json``, all
into a temporary folder renamed at the end; the fitted protector goes beside that folder (private).
``evaluate_segmentation`` reads the protected training split BACK FROM DISK, trains an exploiter on it
and on the clean originals, and tests both on the clean test split (foreground Dice and Jaccard in
percent).
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, MeanIoU
from monai.networks.nets import AttentionUnet, BasicUNetPlusPlus, SwinUNETR, UNet
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
    split_ids,
)
from ..evaluation.hardening import harden_batch, training_counter_measures
from ..evaluation.invisibility import invisibility_metrics
from ..evaluation.pixels import PixelScores
from ..evaluation.recipes import check_clean_run, counter_measures, get_recipe
from ..io.atomic import atomic_output_dir, atomic_output_file, check_output_dir, check_output_file, protector_path
from ..io.manifest import build_manifest, protector_record, read_manifest, write_manifest
from ..io.png import RESAMPLE_MODES, apply_delta_uint8, copy_mask, write_png
from ..protectors import get_protector_class
from ..protectors import umed as _umed  # noqa: F401  (registers "umed")
from ..utils import MedueError, resolve_device, set_seed
from .resume import attach_fit_checkpoint

__all__ = ["EXPLOITERS", "build_exploiter", "evaluate_segmentation", "protect_segmentation"]

EXPLOITERS = ("unet", "unet-batchnorm", "attentionunet", "basicunetplusplus", "swinunetr")


def _pair_stats(clean: np.ndarray, written: np.ndarray) -> tuple[int, int, int, int, int]:
    """Integer statistics of one (clean, written) uint8 pair: sum of squared differences, number of
    values, changed pixel positions, positions, and the largest absolute difference."""
    diff = written.astype(np.int16) - clean.astype(np.int16)
    changed = diff != 0 if diff.ndim == 2 else np.any(diff != 0, axis=-1)
    flat = diff.reshape(-1).astype(np.int32)
    largest = int(np.abs(flat).max()) if flat.size else 0
    return int(np.dot(flat, flat)), int(diff.size), int(changed.sum()), int(changed.size), largest


class _BudgetAccumulator:
    """Budget and invisibility over images of varying sizes, one pair at a time (nothing is kept).

    PSNR comes from the pooled MSE over all pixels, SSIM is the per-image mean, ``l0_share`` the share
    of pixel positions where any channel changed, ``linf_max`` the largest change in [0, 1] units.
    Pairs are summarized by :func:`_pair_stats` (cheap, in the writer threads) and then added here.

    L2 norms (in [0, 1] units, added with :meth:`add_l2`): an L2 budget is defined at the protector's
    working size (``C x S x S`` values), where the protector projects its delta. ``l2_max`` /
    ``l2_mean`` are the per-image ``||delta||_2`` there; ``l2_written_max`` / ``l2_written_mean`` measure
    the written file at its original size (``C x H x W``) and rescale to the working size,
    ``||x_written - x||_2 * sqrt(C S^2 / (C H W))``, so they compare with the same budget (resizing
    and 8-bit rounding make them differ a little from the working-size norms).
    """

    def __init__(self, ssim: bool) -> None:
        self.ssim = ssim
        self.squared, self.count, self.changed, self.positions, self.largest = 0, 0, 0, 0, 0
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
            self.ssims.append(invisibility_metrics(clean[None], written[None], hashes=False)["ssim"])

    def add_stats(self, stats: tuple[int, int, int, int, int]) -> None:
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
            "psnr": float(10.0 * np.log10(255.0**2 / mse)) if mse > 0 else float("inf"),
            "linf_max": self.largest / 255.0,
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
) -> dict:
    """Fit a segmentation protector on the train split and write the protected dataset.

    Output layout (the release): ``images/<id>.png`` (train protected, test unperturbed, both at the
    original size and channel count), ``masks/<original mask file>`` (copied unchanged),
    ``manifest.json``. The fitted protector goes OUTSIDE it, to ``protector_out`` (default
    ``<out>.protector.pt``): it is the key that removes the protection, so keep it private.

    Args:
        data: folder with ``images/`` + ``masks/`` (or ``labels/``), or a MONAI datalist JSON.
        out: output folder (must not exist unless ``overwrite``; never inside the input).
        method: registered segmentation protector name (``umed``).
        options: extra constructor options of the protector.
        seed: seed of the split, the loaders and the protector (recorded).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        overwrite: replace an existing output folder.
        limit: use only the first ``limit`` ids (sorted) before splitting, for quick runs.
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

    Returns:
        The manifest written.

    Raises:
        MedueError: bad data, options or output folder (nothing is written then).
    """
    cls = get_protector_class(method)
    if cls.task != "segmentation":
        raise MedueError(f"method {method!r} is for {cls.task}; {data!r} is a segmentation dataset")
    if resample not in RESAMPLE_MODES:
        raise MedueError(f"resample must be one of {RESAMPLE_MODES}, got {resample!r}")
    source = load_segmentation_source(data, data_root=data_root, limit=limit)
    out_path = check_output_dir(out, overwrite=overwrite, inputs=(source.path,))
    protector_file = check_output_file(
        protector_path(out_path, protector_out), overwrite=overwrite, inputs=(source.path,)
    )
    generator = set_seed(seed)
    try:
        protector = cls(**{"progress": progress, **options, "seed": seed, "device": resolve_device(device)})
    except TypeError as err:
        raise MedueError(f"method {method!r}: {err}") from err
    split = split_ids(source.ids, seed=seed)
    train_records, test_records = source.subset(split["train"]), source.subset(split["test"])
    channels = source.in_channels
    train = SegmentationDataset(train_records, spatial_size, channels)
    batch_size = int(batch_size or getattr(protector, "batch_size", 16))
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator, num_workers=num_workers)
    run = {"data": str(data), "seed": seed, "limit": limit, "batch_size": batch_size, "spatial_size": spatial_size}
    checkpoint = attach_fit_checkpoint(protector, protector_file, source.path, run, resume)
    started = time.perf_counter()
    protector.fit(loader, 2, len(train))
    fit_seconds = time.perf_counter() - started

    budget = protector.budget_info()
    eps = budget["budget"] if budget["norm"] == "linf" else None
    empty = {"train": 0, "test": 0}
    resize: dict[str, dict[str, Any]] = {}
    budget_sum = _BudgetAccumulator(ssim=False)
    with (
        atomic_output_file(protector_file, overwrite) as saved,
        atomic_output_dir(out_path, overwrite=overwrite) as folder,
    ):
        (folder / "images").mkdir()
        (folder / "masks").mkdir()
        started = time.perf_counter()
        chunks = [train_records[i : i + batch_size] for i in range(0, len(train_records), batch_size)]

        def load_one(record: SegmentationRecord) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
            original = read_image_array(record.image)
            image = resize_image(original, spatial_size, channels)
            return original, image, resize_mask(read_mask_array(record.label), spatial_size)

        def write_one(args: tuple[SegmentationRecord, np.ndarray, torch.Tensor]) -> tuple[tuple[int, ...], float]:
            record, original, delta_row = args
            written = apply_delta_uint8(original, delta_row, eps, resample=resample)
            write_png(folder / "images" / f"{record.id}.png", written)
            return _pair_stats(original, written), float(delta_row.float().norm())

        # decoding, resizing, quantizing and PNG encoding run in threads (PIL, zlib and torch release the GIL)
        with ThreadPoolExecutor(max_workers=max(2, 2 * num_workers)) as pool:
            for chunk in tqdm(chunks, desc="write protected", disable=not progress, leave=False):
                originals, images, labels = zip(*pool.map(load_one, chunk), strict=True)
                delta = protector.perturb(torch.stack(images), torch.stack(labels)).cpu()
                for stats, working_l2 in pool.map(write_one, zip(chunk, originals, delta, strict=True)):
                    budget_sum.add_stats(stats)
                    squared, count = stats[0], stats[1]
                    written_l2 = np.sqrt(squared) / 255.0 * np.sqrt(delta[0].numel() / max(count, 1))
                    budget_sum.add_l2(working_l2, float(written_l2))
        apply_seconds = time.perf_counter() - started
        for split_name, records in (("train", train_records), ("test", test_records)):
            for record in records:
                if split_name == "test":
                    write_png(folder / "images" / f"{record.id}.png", read_image_array(record.image))
                mask = copy_mask(record.label, folder / "masks")
                empty[split_name] += int(read_mask_array(mask).max() == 0)
                resize[record.id] = {
                    "original_size": list(record.size),
                    "channels": record.channels,
                    "working_size": [spatial_size, spatial_size],
                    "source_format": record.format,
                    "image": f"images/{record.id}.png",
                    "mask": f"masks/{mask.name}",
                }
        realized = budget_sum.result()
        protector.save(saved)
        jpeg = sorted(r.id for r in source.records if r.format.upper() in ("JPEG", "MPO"))
        manifest = build_manifest(
            task="segmentation",
            method=method,
            options=protector.config(),
            seed=seed,
            source=source.path,
            data_spec=str(data),
            output_files={
                "images": folder / "images",
                "masks": folder / "masks",
            },
            counts={
                "train": len(train_records),
                "test": len(test_records),
                "empty_masks_train": empty["train"],
                "empty_masks_test": empty["test"],
            },
            extra={
                "dataset": {
                    "name": source.name,
                    "kind": source.kind,
                    "path": str(Path(source.path).resolve()),
                    "data_root": data_root,
                    "in_channels": channels,
                    "spatial_size": spatial_size,
                    "limit": limit,
                    "replaced_splits": ["train"],
                    "output_format": "png",
                    "resample": resample,
                    "jpeg_source_count": len(jpeg),
                    "note": (
                        f"{len(jpeg)} source images were JPEG; all outputs are lossless PNG "
                        "(JPEG would erase the protection)"
                        if jpeg
                        else "all outputs are lossless PNG"
                    ),
                },
                "split": split,
                "resize": resize,
                "budget": {**budget, "realized": realized},
                "timing": {
                    "fit_seconds": fit_seconds,
                    # a resumed fit: the seconds its interrupted runs spent before (fit_seconds is this run's)
                    "fit_seconds_before_resume": checkpoint.earlier_seconds if checkpoint is not None else 0.0,
                    "apply_seconds": apply_seconds,
                    "apply_images_per_second": len(train_records) / max(apply_seconds, 1e-9),
                    "device": str(protector.device),
                },
                "history": getattr(protector, "history", []),
                "protector": protector_record(protector_file, saved),
            },
        )
        write_manifest(folder, manifest)
    if checkpoint is not None:
        checkpoint.remove()
    return manifest


def build_exploiter(name: str, in_channels: int, spatial_size: int) -> torch.nn.Module:
    """A MONAI segmentation network with 2 output channels (background, foreground).

    ``unet`` is the seg-quick U-Net with MONAI's default instance normalization; ``unet-batchnorm`` is the same
    network with batch normalization, as in the classic U-Net. The two react differently to a protected copy: an
    instance-normalized network rescales every feature map per image, so it cannot tell "this image has no
    shortcut" from "this image has a weak one" (see ``benchmarks/README.md``).

    Args:
        name: ``unet``, ``unet-batchnorm``, ``attentionunet``, ``basicunetplusplus`` or ``swinunetr``.
        in_channels: image channels.
        spatial_size: working side (SwinUNETR needs a multiple of 32).

    Returns:
        The network; BasicUNetPlusPlus is wrapped to return its first output.

    Raises:
        MedueError: for an unknown name.
    """
    if name in ("unet", "unet-batchnorm"):
        norm = "batch" if name == "unet-batchnorm" else "instance"
        return UNet(
            2, in_channels, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2, norm=norm
        )
    if name == "attentionunet":
        return AttentionUnet(2, in_channels, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2))
    if name == "basicunetplusplus":
        return _FirstOutput(BasicUNetPlusPlus(spatial_dims=2, in_channels=in_channels, out_channels=2))
    if name == "swinunetr":
        if spatial_size % 32:
            raise MedueError(f"swinunetr needs a spatial size divisible by 32, got {spatial_size}")
        return SwinUNETR(in_channels=in_channels, out_channels=2, spatial_dims=2, feature_size=24)
    raise MedueError(f"unknown segmentation exploiter {name!r}; choose from {', '.join(EXPLOITERS)}")


class _FirstOutput(torch.nn.Module):
    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)[0]


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
        exploiter: network name (see :func:`build_exploiter`).
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
    network = build_exploiter(exploiter, train.channels, train.spatial_size).to(device)
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


def _protected_records(folder: Path, manifest: dict[str, Any]) -> list[SegmentationRecord]:
    records = []
    for item_id in manifest["split"]["train"]:
        entry = manifest["resize"][item_id]
        image, mask = folder / entry["image"], folder / entry["mask"]
        for path in (image, mask):
            if not path.is_file():
                raise MedueError(f"{path}: listed in the manifest of {folder} but missing")
        records.append(
            SegmentationRecord(item_id, image, mask, tuple(entry["original_size"]), entry["channels"], "PNG")
        )
    return records


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
) -> dict:
    """Train an exploiter on the protected train split (read back from disk) and on the clean one.

    Both are tested on the CLEAN test split of the original source (path from the manifest; pass
    ``data_root`` when the source moved: it is then looked up as ``data_root/<source folder name>``).

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

    Returns:
        Results with ``clean`` / ``protected`` ``{"dice", "jaccard"}`` (%), ``invisibility``,
        ``budget``, ``curves`` and ``split_sha256`` (hash of the train/test ids, to match runs).

    Raises:
        MedueError: not a segmentation output, unknown recipe / exploiter / counter-measure, missing files, or a
            ``clean_run`` trained for another number of epochs, with another exploiter network (where it records
            one), on another split or with other counter-measures.
    """
    folder = Path(protected)
    manifest = read_manifest(folder)
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
    split_sha256 = hashlib.sha256(json.dumps(manifest["split"], sort_keys=True).encode()).hexdigest()
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
    source_path = Path(dataset_info["path"])
    if not source_path.exists() and data_root is not None:
        source_path = Path(data_root) / source_path.name
    source = load_segmentation_source(source_path, data_root=dataset_info.get("data_root"))
    known = set(source.ids)
    missing = [i for i in manifest["split"]["train"] + manifest["split"]["test"] if i not in known]
    if missing:
        raise MedueError(f"{source_path}: clean source lacks {len(missing)} ids of the manifest (e.g. {missing[0]!r})")
    size = int(recipe_config.get("spatial_size", dataset_info["spatial_size"]))
    channels = int(dataset_info["in_channels"])
    clean_train_records = source.subset(manifest["split"]["train"])
    protected_records = _protected_records(folder, manifest)
    threads = max(1, num_workers) * 2
    test = SegmentationDataset(source.subset(manifest["split"]["test"]), size, channels, cache=True).preload(threads)
    torch_device = resolve_device(device)
    started = time.perf_counter()
    runs = {}
    splits = [("clean", clean_train_records), ("protected", protected_records)]
    if clean_run is not None:
        runs["clean"] = {k: v for k, v in clean_run.items() if k != "split_sha256"}
        splits = splits[1:]
    for name, records in splits:
        train = SegmentationDataset(records, size, channels, cache=True, defense=defense).preload(threads)
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

"""Releases of volume sources: each protected NIfTI volume written with its source header and each DICOM series as
copies of its source datasets, in native units.

The protector's perturbation (in [0, 1] units at the working size) is cropped back to the volume's grid (the
working size only pads), confined to the method's region of the label map, scaled to native units by the
volume's intensity map, clipped to the native budget (``eps_native``, else ``eps`` times the intensity range),
and added to the STORED values: integer dtypes are rounded (never truncated) and clamped to the dtype's range,
float dtypes kept within the budget to the last bit. The label maps are copied byte for byte.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.manifest import build_manifest, protector_record, write_manifest
from ..io.nifti import write_nifti_like
from ..io.paths import inside
from ..protectors.masks import region_mask

__all__ = ["native_change", "write_volume_release"]


def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"


def native_change(
    volume: Any, change: np.ndarray, budget: float, stored_range: tuple[int, int] | None = None
) -> np.ndarray:
    """New stored values for a volume: ``change`` (native units) clipped to ``+-budget`` and written in the
    stored dtype, so the written native change never exceeds ``budget``.

    Args:
        volume: the source volume (:class:`~medue_monai.io.nifti.NiftiVolume` or
            :class:`~medue_monai.io.dicom.DicomSeries`: ``raw``, ``slope``).
        change: float change in native units, the volume's shape.
        budget: the largest allowed native change (> 0).
        stored_range: the stored values allowed (DICOM's BitsStored), default the dtype's range.

    Returns:
        The new stored values (the source's dtype).
    """
    raw = volume.raw
    scale = abs(volume.slope)
    stored_budget = budget / scale
    change = np.clip(change / volume.slope, -stored_budget, stored_budget)
    if np.issubdtype(raw.dtype, np.integer):
        info = np.iinfo(raw.dtype)
        low, high = stored_range if stored_range is not None else (info.min, info.max)
        limit = np.floor(stored_budget + 1e-6)
        step = np.clip(np.rint(change), -limit, limit)
        return np.clip(raw.astype(np.float64) + step, low, high).astype(raw.dtype)
    written = (raw.astype(np.float64) + change).astype(raw.dtype)
    over = np.abs(written.astype(np.float64) - raw) > stored_budget
    while over.any():  # float rounding may land one ulp past the budget: step back towards the source
        written[over] = np.nextafter(written[over], raw[over])
        over = np.abs(written.astype(np.float64) - raw) > stored_budget
    return written


def write_volume_release(run, folder: Path, protector_file: str | Path, fit: dict[str, Any]) -> dict[str, Any]:
    """Write a volume release into ``folder``: ``images/<id>.nii[.gz]``, ``labels/<id>.nii[.gz]``,
    ``dataset.json`` (an MSD-style list of the released pairs) and ``manifest.json``.

    Args:
        run: the :class:`~medue_monai.pipeline.protect.ProtectionRun` with its fitted protector.
        folder: the (temporary) release folder.
        protector_file: the saved protector, hashed into the manifest.
        fit: the fit's timing.

    Returns:
        The manifest written.
    """
    from ..data.volumes import VolumeDataset

    protector, source = run.protector, run.source
    size = run.working_size
    region, radius = protector.release_region(*size)
    budget = protector.budget_info()
    eps = float(budget["budget"])
    images_dir, labels_dir = folder / "images", folder / "labels"
    images_dir.mkdir()
    labels_dir.mkdir()
    released = {"train": run.train_records, **({"test": run.test_records} if run.include_test else {})}
    items: dict[str, dict[str, Any]] = {}
    squared, values, changed, largest_unit, largest_native = 0.0, 0, 0, 0.0, 0.0
    started = time.perf_counter()
    for split, records in released.items():
        dataset = VolumeDataset(records, size, run.intensity, run.roi_classes)
        for offset in range(0, len(records), run.batch_size):
            rows = list(range(offset, min(offset + run.batch_size, len(records))))
            batch = [dataset[i] for i in rows]
            images = torch.stack([item["image"].as_tensor() for item in batch])
            labels = torch.stack([item["label"].as_tensor() for item in batch])
            indices = torch.as_tensor(rows) if split == "train" else None
            delta = protector.perturb(images, labels, indices).cpu().double().numpy()
            for row in rows:
                record = records[row]
                volume, roi, (low, high) = dataset.load(record)
                crop = tuple(slice(0, s) for s in record.shape)
                unit = delta[row - offset, 0][crop]
                if region != "full":
                    mask = torch.from_numpy(roi)[None, None]
                    unit = unit * region_mask(mask, region, radius)[0, 0].numpy()
                limit = run.eps_native if run.eps_native is not None else eps * (high - low)
                if record.format == "DICOM":
                    from ..io.dicom import stored_range, write_series_like

                    written = native_change(volume, unit * (high - low), limit, stored_range(volume))
                    name = label_name = record.id
                    salt = f"{run.method}:{sorted(protector.config().items())}"
                    write_series_like(volume, written, inside(images_dir, name, "image path"), run.method, salt)
                    shutil.copytree(record.label, inside(labels_dir, label_name, "label path"))
                else:
                    written = native_change(volume, unit * (high - low), limit)
                    name = f"{record.id}{_suffix(record.image)}"
                    write_nifti_like(volume, written, inside(images_dir, name, "image path"))
                    label_name = f"{record.id}{_suffix(record.label)}"
                    shutil.copyfile(record.label, inside(labels_dir, label_name, "label path"))
                difference = (written.astype(np.float64) - volume.raw) * volume.slope
                native_max = float(np.abs(difference).max())
                unit_change = difference / (high - low)
                squared += float((unit_change**2).sum())
                values += difference.size
                changed += int(np.count_nonzero(difference))
                largest_unit = max(largest_unit, float(np.abs(unit_change).max()))
                largest_native = max(largest_native, native_max)
                items[record.id] = {
                    "image": f"images/{name}",
                    "label": f"labels/{label_name}",
                    "shape": list(record.shape),
                    "dtype": record.dtype,
                    "intensity_bounds": [low, high],
                    "native_budget": limit,
                    "max_abs_change_native": native_max,
                    "changed_voxels": int(np.count_nonzero(difference)),
                    "format": record.format,
                }
    apply_seconds = time.perf_counter() - started
    import json

    if all(e["format"] != "DICOM" for e in items.values()):  # an MSD-style list of the NIfTI pairs
        listing = [{"image": f"./{e['image']}", "label": f"./{e['label']}"} for e in items.values()]
        content = {
            "name": f"{source.name} (protected with {run.method})",
            "tensorImageSize": "3D",
            "numTraining": len(items),
            "training": listing,
        }
        (folder / "dataset.json").write_text(json.dumps(content, indent=2) + "\n")
    mse = squared / max(values, 1)
    realized = {
        "linf_max": largest_unit,
        "linf_max_native": largest_native,
        "psnr": float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf"),
        "l0_share": changed / max(values, 1),
    }
    manifest = build_manifest(
        task="segmentation",
        method=run.method,
        options=protector.config(),
        seed=run.seed,
        source=source.path,
        data_spec=run.data,
        output_files={"images": images_dir, "labels": labels_dir},
        counts={"train": len(run.train_records), "test": len(run.test_records) if run.include_test else 0},
        extra={
            "dataset": {
                "name": source.name,
                "kind": f"volume-{source.kind}",
                "in_channels": 1,
                "spatial_dims": 3,
                "working_size": list(size),
                "intensity": run.intensity.describe(),
                "roi_classes": list(run.roi_classes) if run.roi_classes else None,
                "limit": run.limit,
                "output_format": "nifti",
                "note": "each volume keeps its source header byte for byte; only voxel values changed",
            },
            "held_out": run.held_out,
            "region": {"name": region, "working_radius": radius},
            "items": items,
            "budget": {**budget, "eps_native": run.eps_native, "realized": realized},
            "timing": {
                "fit_seconds": fit["seconds"],
                "fit_seconds_before_resume": fit["seconds_before_resume"],
                "apply_seconds": apply_seconds,
                "device": fit["device"],
            },
            "history": getattr(protector, "history", []),
            "protector": protector_record(protector_file),
        },
    )
    write_manifest(folder, manifest)
    return manifest

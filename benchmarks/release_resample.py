"""How much of a segmentation protector's perturbation reaches whoever trains on the release.

Protectors work at a working size (e.g. 128x128); ``medue protect`` writes each image at its original
size, so the perturbation is enlarged (``--resample``), added and rounded to 8 bits; a trainer shrinks
the written image back to the working size. For a fitted protector beside a ``medue protect`` output
(``<out>.protector.pt``), this script redoes that path for the first ``--limit`` training images with
each resample mode and reports how the perturbation seen after shrinking compares with the one the
protector made: norm ratio ``||seen|| / ||delta||``, cosine similarity, and the PSNR of the written
images. With ``--evaluate`` it also re-releases the whole training split with each mode (same fitted
protector, same split; test images and masks copied) under ``--work-dir`` and trains the exploiter on
it (``medue evaluate`` code path; ``--clean-from`` reuses the clean-trained run of an earlier results
file of the same split, recipe and seed)::

    python benchmarks/release_resample.py --protected /tmp/bench/umed_full/kvasir-seg_umed_seed0 \\
        --modes bilinear,inverse --limit 100 --out benchmarks/results/release_resample_umed_cpu.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medue_monai.data.segmentation import (
    load_segmentation_source,
    read_image_array,
    read_mask_array,
    resize_image,
    resize_mask,
)
from medue_monai.evaluation.report import reusable_clean_run
from medue_monai.io import protector_path
from medue_monai.io.png import RESAMPLE_MODES, apply_delta
from medue_monai.pipeline.release import open_release, resolve_clean_source
from medue_monai.pipeline.segmentation import evaluate_segmentation, original_region, write_protected_images
from medue_monai.protectors import load_protector
from medue_monai.utils import machine_record


def _linf_bound(protector) -> float | None:
    """The protector's L-inf budget (the writer's clip), or ``None`` for an L2 method."""
    budget = protector.budget_info()
    return budget["budget"] if budget["norm"] == "linf" else None


def _training_records(protected: Path, limit: int | None = None):
    """``(manifest, training records of the clean source)`` in the order the protector was fitted with."""
    manifest, record = open_release(protected)
    spec, root = resolve_clean_source(manifest, record)
    source = load_segmentation_source(spec, data_root=root)
    return manifest, source.subset(record["split"]["train"][:limit])


def _batches(protected: Path, limit: int | None, batch_size: int = 16):
    """``(offset, originals, masks, working-size images, working-size masks)`` of the training split, in batches."""
    manifest, records = _training_records(protected, limit)
    size, channels = manifest["dataset"]["spatial_size"], manifest["dataset"]["in_channels"]
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        originals = [read_image_array(r.image) for r in chunk]
        masks = [read_mask_array(r.label) for r in chunk]
        images = torch.stack([resize_image(original, size, channels) for original in originals])
        working = torch.stack([resize_mask(mask, size) for mask in masks])
        yield start, originals, masks, images, working


def reach(protector, protected: Path, modes: list[str], limit: int | None) -> dict[str, dict[str, float]]:
    """Norm ratio, cosine and PSNR of the perturbation after write and read, per resample mode."""
    eps = _linf_bound(protector)
    stats = {mode: {"ratio": [], "cosine": [], "squared": 0.0, "count": 0} for mode in modes}
    for start, originals, masks, images, working in _batches(protected, limit):
        deltas = protector.perturb(images, working, torch.arange(start, start + len(images))).cpu()
        size = tuple(images.shape[-2:])
        for original, mask, image, delta in zip(originals, masks, images, deltas, strict=True):
            if not delta.any():
                continue
            allowed = original_region(mask, *protector.release_region(*size), size)
            for mode in modes:
                written = apply_delta(original, delta, eps, resample=mode, region=allowed)
                seen = resize_image(written, size, image.shape[0]) - image
                entry = stats[mode]
                entry["ratio"].append(float(seen.norm() / delta.norm()))
                entry["cosine"].append(float((seen * delta).sum() / (seen.norm() * delta.norm() + 1e-12)))
                entry["squared"] += float(((written.astype(np.float64) - original) ** 2).sum())
                entry["count"] += original.size
    return {
        mode: {
            "images": len(entry["ratio"]),
            "norm_ratio_mean": float(np.mean(entry["ratio"])),
            "cosine_mean": float(np.mean(entry["cosine"])),
            "psnr": float(10 * np.log10(255.0**2 / (entry["squared"] / max(entry["count"], 1)))),
        }
        for mode, entry in stats.items()
    }


def rerelease(protector, protected: Path, folder: Path, mode: str) -> float:
    """Copy ``protected`` to ``folder`` and rewrite its training images with ``mode``; returns seconds."""
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(protected, folder)
    shutil.copyfile(protector_path(protected), protector_path(folder))
    manifest, records = _training_records(protected)
    started = time.perf_counter()
    write_protected_images(
        protector,
        {"train": records},
        folder,
        spatial_size=manifest["dataset"]["spatial_size"],
        channels=manifest["dataset"]["in_channels"],
        resample=mode,
        progress=False,
    )
    manifest_path = folder / "manifest.json"
    manifest["dataset"]["resample"] = mode
    manifest["note"] = f"training images re-released from {protected} with resample={mode} by release_resample.py"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return time.perf_counter() - started


def evaluate_copy(
    folder: Path,
    clean_run: dict | None,
    recipe: str = "seg-quick",
    exploiter: str = "unet",
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Train the exploiter on a re-released copy (``medue evaluate`` code path); writes ``folder/results.json``."""
    return evaluate_segmentation(
        str(folder),
        recipe,
        exploiter,
        device=device,
        seed=seed,
        progress=False,
        clean_run=clean_run,
        output=str(folder / "results.json"),
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protected", required=True, help="a `medue protect` segmentation output folder")
    parser.add_argument("--protector", default=None, help="the fitted protector (default: <protected>.protector.pt)")
    parser.add_argument("--modes", default="bilinear,inverse", help="resample modes (default: bilinear,inverse)")
    parser.add_argument("--limit", type=int, default=100, help="training images measured (default: 100)")
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="re-release and train the exploiter per mode (default: off, measure only)",
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="where --evaluate writes the re-released copies (default: <protected>-resample beside the copy)",
    )
    parser.add_argument(
        "--clean-from", default=None, help="results JSON whose clean-trained run is reused (default: train it)"
    )
    parser.add_argument("--recipe", default="seg-quick", help="exploiter recipe (default: seg-quick)")
    parser.add_argument("--exploiter", default="unet", help="exploiter network (default: unet)")
    parser.add_argument("--device", default="cpu", help="device of the exploiter (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="exploiter seed (default: 0)")
    parser.add_argument("--out", required=True, help="results JSON")
    args = parser.parse_args(argv)
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = sorted(set(modes) - set(RESAMPLE_MODES))
    if unknown:
        raise SystemExit(f"--modes: unknown {unknown}; choose from {RESAMPLE_MODES}")
    protected = Path(args.protected)
    protector = load_protector(Path(args.protector or f"{protected}.protector.pt"), device="cpu")
    report = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_record(args.device),
        "protected": str(protected),
        "method": protector.name,
        "reach": reach(protector, protected, modes, args.limit),
    }
    print(json.dumps(report["reach"], indent=2), flush=True)
    if args.evaluate:
        clean_run = reusable_clean_run(json.loads(Path(args.clean_from).read_text())) if args.clean_from else None
        work = Path(args.work_dir or f"{protected}-resample")
        report["evaluate"] = {}
        for mode in modes:
            folder = work / f"{protected.name}_{mode}"
            write_seconds = rerelease(protector, protected, folder, mode)
            started = time.perf_counter()
            results = evaluate_copy(folder, clean_run, args.recipe, args.exploiter, args.device, args.seed)
            report["evaluate"][mode] = {
                "protected": results["protected"],
                "clean": results["clean"],
                "psnr": results["invisibility"].get("psnr"),
                "test_dice_per_epoch": results["curves"]["protected"]["test_dice"],
                "write_seconds": write_seconds,
                "evaluate_seconds": time.perf_counter() - started,
                "results": str(folder / "results.json"),
            }
            print(f"{mode}: protected Dice {results['protected']['dice']:.2f} %", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

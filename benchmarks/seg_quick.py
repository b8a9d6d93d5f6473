"""seg-quick benchmark: clean vs UMed-protected Kvasir-SEG at 128x128, UNet and AttentionUnet exploiters.

Runs ``protect_segmentation`` (UMed) once, then ``evaluate_segmentation`` for each exploiter, and
records command, machine, seed, date, wall times and peak memory in
``benchmarks/results/seg_quick_<device>.json`` plus a markdown table beside it.

Example (GPU)::

    python benchmarks/seg_quick.py --device cuda --data-root ../shared/data

Smoke test (CPU)::

    python benchmarks/seg_quick.py --device cpu --limit 16 --epochs 1 --umed-option epochs=1
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import resource
import shlex
import sys
import time
from pathlib import Path

import torch

from medue_monai.evaluation.report import reusable_clean_run
from medue_monai.pipeline.release import open_release
from medue_monai.pipeline.segmentation import evaluate_segmentation, protect_segmentation
from medue_monai.utils import machine_record, resolve_device

EXPLOITERS = ("unet", "attentionunet")


def _peak_memory() -> dict[str, float]:
    peak = {"cpu_max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if torch.cuda.is_available():
        peak["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def _parse_option(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its JSON and markdown results; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:i] (default: auto)")
    parser.add_argument(
        "--data-root",
        default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
        help="folder holding the dataset folder (default: ../shared/data beside the checkout)",
    )
    parser.add_argument("--dataset", default="kvasir-seg", help="folder under --data-root (default: kvasir-seg)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs (default: all)")
    parser.add_argument("--epochs", type=int, default=None, help="exploiter epochs (default: the recipe's 40)")
    parser.add_argument("--spatial-size", type=int, default=128, help="working side in pixels (default: 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of split, fit and exploiters (default: 0)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default: 0)")
    parser.add_argument(
        "--umed-option", action="append", default=[], help="UMed option key=value (repeatable; default: none)"
    )
    parser.add_argument(
        "--exploiters",
        default=",".join(EXPLOITERS),
        help=f"comma-separated exploiter names (default: {','.join(EXPLOITERS)})",
    )
    parser.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parent / "results"),
        help="results folder (default: benchmarks/results)",
    )
    parser.add_argument(
        "--work",
        default=None,
        help="folder for the protected copy (default: runs/seg_quick_<device>, git-ignored)",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="stem of the result files (default: seg_quick_<device>)",
    )
    parser.add_argument(
        "--protected",
        default=None,
        help="evaluate this existing UMed-protected copy instead of fitting UMed again (default: fit)",
    )
    parser.add_argument(
        "--clean-from",
        default=None,
        help="stem of an earlier run's result files (same split, recipe, epochs and seed): reuse its clean-trained "
        "run of each exploiter from <out>/<stem>_<exploiter>.json instead of training it again (default: train it)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    tag = device.type
    stem = args.name or f"seg_quick_{tag}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(__file__).resolve().parents[1] / "runs" / f"seg_quick_{tag}"
    work.mkdir(parents=True, exist_ok=True)
    options = dict(_parse_option(text) for text in args.umed_option)
    data = str(Path(args.data_root) / args.dataset)
    progress = not args.no_progress
    started = time.perf_counter()

    protect_started = time.perf_counter()
    if args.protected:
        protected = Path(args.protected)
        manifest, record = open_release(protected)
        data = record["source"] or data
        protect_seconds = None
    else:
        protected = work / "umed"
        manifest = protect_segmentation(
            data,
            str(protected),
            "umed",
            options,
            seed=args.seed,
            device=str(device),
            overwrite=True,
            limit=args.limit,
            spatial_size=args.spatial_size,
            num_workers=args.num_workers,
            progress=progress,
        )
        protect_seconds = time.perf_counter() - protect_started
    runs = {}
    for exploiter in [name.strip() for name in args.exploiters.split(",") if name.strip()]:
        run_started = time.perf_counter()
        clean_run = None
        if args.clean_from:
            earlier = json.loads((out / f"{args.clean_from}_{exploiter}.json").read_text())
            clean_run = reusable_clean_run(earlier)
        results = evaluate_segmentation(
            str(protected),
            "seg-quick",
            exploiter,
            epochs=args.epochs,
            output=str(out / f"{stem}_{exploiter}.json"),
            device=str(device),
            seed=args.seed,
            num_workers=args.num_workers,
            progress=progress,
            clean_run=clean_run,
        )
        runs[exploiter] = {
            "clean": results["clean"],
            "protected": results["protected"],
            "invisibility": results["invisibility"],
            "budget": results["budget"],
            "epochs": results["recipe"]["epochs"],
            "reused_clean_run": f"{args.clean_from}_{exploiter}.json" if args.clean_from else None,
            "wall_seconds": time.perf_counter() - run_started,
        }
    record = {
        "benchmark": "seg_quick",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": args.seed,
        "machine": machine_record(device),
        "data": data,
        "protected": str(protected),
        "reused_protected_copy": bool(args.protected),
        "limit": args.limit,
        "spatial_size": args.spatial_size,
        "umed": {
            "options": manifest["options"],
            "counts": manifest["counts"],
            "budget": manifest["budget"],
            "timing": manifest["timing"],
            "protect_wall_seconds": protect_seconds,
        },
        "runs": runs,
        "wall_seconds": time.perf_counter() - started,
        "peak_memory": _peak_memory(),
    }
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# seg-quick on {args.dataset} ({args.spatial_size}x{args.spatial_size}), device {device}",
        "",
        f"Command: `{record['command']}`  ",
        f"Date: {record['date']}, seed {args.seed}, limit {args.limit}, wall {record['wall_seconds']:.0f} s, "
        f"UMed fit {manifest['timing']['fit_seconds']:.0f} s",
        "",
        "| exploiter | epochs | clean Dice % | clean Jaccard % | UMed Dice % | UMed Jaccard % "
        "| PSNR dB | SSIM | max abs delta |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, run in runs.items():
        lines.append(
            f"| {name} | {run['epochs']} | {run['clean']['dice']:.2f} | {run['clean']['jaccard']:.2f} | "
            f"{run['protected']['dice']:.2f} | {run['protected']['jaccard']:.2f} | "
            f"{run['invisibility']['psnr']:.2f} | {run['invisibility']['ssim']:.4f} | "
            f"{255 * run['budget']['linf_max']:.0f}/255 |"
        )
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

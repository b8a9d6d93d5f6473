"""Classification efficacy benchmark: protect each dataset with each configured protector, then
train exploiters on the protected copy (read back from disk) and on the clean copy.

Usage (the recorded runs name their exact command in the results file)::

    python benchmarks/cls_quick.py --matrix configs/benchmarks/cls-quick.yaml \
        --data-root ../shared/data/medmnist --device auto --out benchmarks/results/cls_quick

Writes ``<out>.json`` (every number, the command, machine, seed, date, wall times, peak memory)
and ``<out>.md`` (a table beside the SALM paper's numbers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from medue_monai import __version__
from medue_monai.pipeline.classification import evaluate_classification, protect_classification

# The SALM paper's Table 1 (ResNet-18, clean -> SALM), for the side-by-side table.
PAPER = {
    "pathmnist": (90.7, 11.8),
    "dermamnist": (73.5, 8.7),
    "pneumoniamnist": (85.4, 63.9),
    "breastmnist": (86.3, 53.2),
    "retinamnist": (52.4, 12.2),
    "bloodmnist": (95.8, 7.1),
    "organcmnist": (90.0, 64.6),
    "organsmnist": (78.2, 46.8),
}


def machine_description(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__}
    info["cpu_threads"] = torch.get_num_threads()
    if device != "cpu" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_memory_mb() -> dict:
    peak = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if torch.cuda.is_available():
        peak["cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--matrix", default="configs/benchmarks/cls-quick.yaml", help="benchmark matrix YAML")
    parser.add_argument("--datasets", nargs="*", default=None, help="override the matrix's datasets")
    parser.add_argument("--entries", nargs="*", default=None, help="run only these entry names")
    parser.add_argument("--data-root", default=None, help="folder with <dataset>.npz")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of protection and exploiter training")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's exploiter epochs")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--out", default="benchmarks/results/cls_quick", help="output path stem (.json/.md)")
    args = parser.parse_args(argv)

    matrix = yaml.safe_load(Path(args.matrix).read_text())
    datasets = args.datasets or matrix["datasets"]
    entries = [e for e in matrix["entries"] if not args.entries or e["name"] in args.entries]
    record = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "version": __version__,
        "seed": args.seed,
        "device": args.device,
        "machine": machine_description(args.device),
        "matrix": matrix,
        "rows": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for dataset in datasets:
            for entry in entries:
                folder = Path(scratch) / f"{dataset}-{entry['name']}"
                started = time.perf_counter()
                manifest = protect_classification(
                    f"medmnist:{dataset}",
                    folder,
                    entry["method"],
                    dict(entry.get("options", {})),
                    seed=args.seed,
                    device=args.device,
                    limit=args.limit,
                    data_root=args.data_root,
                    num_workers=args.num_workers,
                    progress=False,
                    overwrite=True,
                )
                protect_seconds = time.perf_counter() - started
                for exploiter in matrix.get("exploiters", ["resnet18"]):
                    results = evaluate_classification(
                        folder,
                        matrix.get("recipe", "cls-quick"),
                        exploiter,
                        epochs=args.epochs,
                        device=args.device,
                        seed=args.seed,
                        num_workers=args.num_workers,
                        progress=False,
                        data_root=args.data_root,
                    )
                    row = {
                        "dataset": dataset,
                        "entry": entry["name"],
                        "method": entry["method"],
                        "options": manifest["options"],
                        "exploiter": exploiter,
                        "protect_seconds": protect_seconds,
                        "fit_seconds": manifest["timing"]["fit_seconds"],
                        "images_per_second": manifest["timing"]["images_per_second"],
                        "clean": results["clean"],
                        "protected": results["protected"],
                        "invisibility": results["invisibility"],
                        "budget": results["budget"],
                        "surrogate_history": manifest.get("history", [])[-3:],
                        "evaluate_seconds": results["wall_seconds"],
                        "peak_memory": peak_memory_mb(),
                    }
                    record["rows"].append(row)
                    print(
                        f"{dataset:15s} {entry['name']:18s} {exploiter:10s} clean {row['clean']['test_accuracy']:6.2f} "
                        f"protected {row['protected']['test_accuracy']:6.2f} "
                        f"(best {row['protected']['best_test_accuracy']:6.2f}) "
                        f"PSNR {row['invisibility']['psnr']:6.2f} L0 {100 * row['budget']['l0_share']:6.2f}% "
                        f"fit {row['fit_seconds']:7.1f}s",
                        flush=True,
                    )
                    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# {matrix.get('recipe', 'cls-quick')} results",
        "",
        f"Command: `{record['command']}`  ",
        f"Date: {record['date']}; seed {args.seed}; device {args.device}; machine: {json.dumps(record['machine'])}",
        "",
        "| dataset | protector | exploiter | clean acc % | protected acc % (final / best) | paper clean -> SALM "
        "| PSNR dB | SSIM | pixels touched % | max abs delta (x255) | fit s | img/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        paper = PAPER.get(row["dataset"])
        lines.append(
            f"| {row['dataset']} | {row['entry']} | {row['exploiter']} | {row['clean']['test_accuracy']:.2f} | "
            f"{row['protected']['test_accuracy']:.2f} / {row['protected']['best_test_accuracy']:.2f} | "
            f"{f'{paper[0]} -> {paper[1]}' if paper else '-'} | {row['invisibility']['psnr']:.2f} | "
            f"{row['invisibility']['ssim']:.4f} | {100 * row['budget']['l0_share']:.2f} | "
            f"{255 * row['budget']['linf_max']:.0f} | {row['fit_seconds']:.1f} | {row['images_per_second']:.1f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

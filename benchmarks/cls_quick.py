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
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from medue_monai import __version__
from medue_monai.pipeline.classification import evaluate_classification, protect_classification
from medue_monai.utils import machine_record

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


def peak_memory_mb() -> dict:
    peak = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if torch.cuda.is_available():
        peak["cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def _stat(rows: list[dict], section: str, key: str, digits: int = 2, scale: float = 1.0) -> str:
    """``mean`` (one row) or ``mean +- std`` (several seeds) of ``row[section][key] * scale``."""
    values = np.array([row[section][key] * scale for row in rows], dtype=float)
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} +- {values.std(ddof=1):.{digits}f}"


def run_entry(
    args: argparse.Namespace,
    matrix: dict,
    scratch: Path,
    dataset: str,
    entry: dict,
    seed: int,
    clean_runs: dict[tuple[str, str, int], dict],
) -> list[dict]:
    """Protect ``dataset`` with one matrix entry and evaluate it with every exploiter; returns the rows.

    The clean-trained exploiter of a (dataset, exploiter, seed) is trained once and reused by the
    other entries unless ``--retrain-clean``.
    """
    folder = scratch / f"{dataset}-{entry['name']}-seed{seed}"
    started = time.perf_counter()
    manifest = protect_classification(
        f"medmnist:{dataset}",
        folder,
        entry["method"],
        dict(entry.get("options", {})),
        seed=seed,
        device=args.device,
        limit=args.limit,
        data_root=args.data_root,
        num_workers=args.num_workers,
        progress=False,
        overwrite=True,
    )
    protect_seconds = time.perf_counter() - started
    rows = []
    for exploiter in matrix.get("exploiters", ["resnet18"]):
        key = (dataset, exploiter, seed)
        results = evaluate_classification(
            folder,
            matrix.get("recipe", "cls-quick"),
            exploiter,
            epochs=args.epochs,
            device=args.device,
            seed=seed,
            num_workers=args.num_workers,
            progress=False,
            data_root=args.data_root,
            clean_run=None if args.retrain_clean else clean_runs.get(key),
        )
        clean_runs.setdefault(key, {**results["clean"], "curves": results["curves"]["clean"]})
        row = {
            "dataset": dataset,
            "entry": entry["name"],
            "method": entry["method"],
            "seed": seed,
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
        rows.append(row)
        print(
            f"{dataset:15s} {entry['name']:18s} {exploiter:10s} seed {seed} "
            f"clean {row['clean']['test_accuracy']:6.2f} protected {row['protected']['test_accuracy']:6.2f} "
            f"(best {row['protected']['best_test_accuracy']:6.2f}) PSNR {row['invisibility']['psnr']:6.2f} "
            f"L0 {100 * row['budget']['l0_share']:6.2f}% fit {row['fit_seconds']:7.1f}s",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--matrix", default="configs/benchmarks/cls-quick.yaml", help="benchmark matrix YAML")
    parser.add_argument("--datasets", nargs="*", default=None, help="override the matrix's datasets")
    parser.add_argument("--entries", nargs="*", default=None, help="run only these entry names")
    parser.add_argument("--data-root", default=None, help="folder with <dataset>.npz")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of protection and exploiter training")
    parser.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds, each a full protect + evaluate repetition (overrides --seed); the table "
        "then shows mean +- standard deviation over seeds",
    )
    parser.add_argument(
        "--retrain-clean",
        action="store_true",
        help="train the clean exploiter again for every entry (default: once per dataset, exploiter and seed)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's exploiter epochs")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--out", default="benchmarks/results/cls_quick", help="output path stem (.json/.md)")
    args = parser.parse_args(argv)

    matrix = yaml.safe_load(Path(args.matrix).read_text())
    seeds = [int(text) for text in args.seeds.split(",")] if args.seeds else [args.seed]
    datasets = args.datasets or matrix["datasets"]
    entries = [e for e in matrix["entries"] if not args.entries or e["name"] in args.entries]
    record = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "version": __version__,
        "seed": args.seed,
        "seeds": seeds,
        "device": args.device,
        "machine": machine_record(args.device),
        "matrix": matrix,
        "rows": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_runs: dict[tuple[str, str, int], dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in seeds:
            for dataset in datasets:
                for entry in entries:
                    row_list = run_entry(args, matrix, Path(scratch), dataset, entry, seed, clean_runs)
                    record["rows"].extend(row_list)
                    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# {matrix.get('recipe', 'cls-quick')} results",
        "",
        f"Command: `{record['command']}`  ",
        f"Date: {record['date']}; seeds {seeds}; device {args.device}; machine: {json.dumps(record['machine'])}",
        "",
        "| dataset | protector | exploiter | seeds | clean acc % | protected acc % (final / best) "
        "| paper clean -> SALM | PSNR dB | SSIM | pixels touched % | max abs delta (x255) | fit s | img/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in record["rows"]:
        groups.setdefault((row["dataset"], row["entry"], row["exploiter"]), []).append(row)
    for (dataset, entry, exploiter), rows in groups.items():
        paper = PAPER.get(dataset)
        lines.append(
            f"| {dataset} | {entry} | {exploiter} | {len(rows)} | {_stat(rows, 'clean', 'test_accuracy')} | "
            f"{_stat(rows, 'protected', 'test_accuracy')} / {_stat(rows, 'protected', 'best_test_accuracy')} | "
            f"{f'{paper[0]} -> {paper[1]}' if paper else '-'} | {_stat(rows, 'invisibility', 'psnr')} | "
            f"{_stat(rows, 'invisibility', 'ssim', 4)} | {_stat(rows, 'budget', 'l0_share', scale=100)} | "
            f"{max(255 * row['budget']['linf_max'] for row in rows):.0f} | "
            f"{np.mean([row['fit_seconds'] for row in rows]):.1f} | "
            f"{np.mean([row['images_per_second'] for row in rows]):.1f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark every classification protector (clean, EM, TAP, LSP, AR, SEP, SALM) on one MedMNIST set.

Each method goes through the same pipeline as ``medue protect`` / ``medue evaluate``: fit on the
training split, write the quantized protected npz, read it back, train the exploiter on it and on
the clean split with the same recipe and seed, test both on the clean test split. Per method it
records the wall time of protection and of evaluation, the peak memory, the budget and realized
norms, the command line, the machine, the seed and the date, into
``benchmarks/results/baselines_<dataset>_<device>.json`` (rewritten after every method, so an
interrupted run keeps what it finished and ``--resume`` skips it) and a markdown table beside it
with the SALM paper's numbers (its Table 1: ResNet-18 on 28x28 MedMNIST; AdvT = TAP, SP = LSP;
the paper has no AR or SEP column).

The "clean" row is the clean-trained exploiter: trained once (same recipe and seed as every protected
run) and reused by every method's evaluation; with ``--retrain-clean`` each evaluation trains it again
and the JSON keeps every repetition.

Example (GPU, the paper-like recipe)::

    python benchmarks/baselines.py --data medmnist:breastmnist --data-root ../shared/data/medmnist \\
        --recipe cls-paper --device cuda

CPU smoke run (tiny; numbers are meaningless)::

    python benchmarks/baselines.py --data synthetic --methods lsp,ar --epochs 1 --device cpu
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import medue_monai.protectors.ar  # noqa: F401  (registers "ar"; harmless once the package imports it)
import medue_monai.protectors.lsp  # noqa: F401
import medue_monai.protectors.sep  # noqa: F401
import medue_monai.protectors.tap  # noqa: F401
from medue_monai import __version__
from medue_monai.evaluation.recipes import get_recipe
from medue_monai.pipeline.classification import evaluate_classification, protect_classification
from medue_monai.utils import resolve_device

METHODS = ("clean", "em", "tap", "lsp", "ar", "sep", "salm")

# SALM paper, Table 1: clean-test accuracy (%) of ResNet-18 trained on protected 28x28 MedMNIST.
PAPER_TABLE1 = {
    "pathmnist": {"clean": 90.7, "tap": 8.4, "em": 13.5, "lsp": 12.2, "salm": 11.8},
    "chestmnist": {"clean": 94.7, "tap": 38.8, "em": 78.7, "lsp": 63.5, "salm": 27.6},
    "dermamnist": {"clean": 73.5, "tap": 38.7, "em": 17.1, "lsp": 11.5, "salm": 8.7},
    "octmnist": {"clean": 74.3, "tap": 21.4, "em": 25.0, "lsp": 22.7, "salm": 21.2},
    "pneumoniamnist": {"clean": 85.4, "tap": 66.9, "em": 65.8, "lsp": 70.1, "salm": 63.9},
    "retinamnist": {"clean": 52.4, "tap": 39.5, "em": 13.0, "lsp": 8.3, "salm": 12.2},
    "breastmnist": {"clean": 86.3, "tap": 44.9, "em": 46.2, "lsp": 50.0, "salm": 53.2},
    "bloodmnist": {"clean": 95.8, "tap": 19.6, "em": 30.5, "lsp": 30.5, "salm": 7.1},
    "tissuemnist": {"clean": 67.6, "tap": 19.7, "em": 17.4, "lsp": 7.3, "salm": 21.4},
}


def _parse_options(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``METHOD.key=value`` (value parsed as JSON when possible) into ``{method: {key: value}}``."""
    options: dict[str, dict[str, Any]] = {}
    for item in items or []:
        target, _, value = item.partition("=")
        method, _, key = target.partition(".")
        if not key or not _:
            raise SystemExit(f"--option expects METHOD.key=value, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        options.setdefault(method, {})[key] = parsed
    return options


def _reset_peak_memory(device: torch.device) -> None:
    # The process's peak RSS cannot be reset portably, so it is reported as the peak since start;
    # the GPU peak is reset per method.
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> dict[str, float | None]:
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"peak_rss_mb_since_start": peak_rss, "peak_gpu_mb": gpu}


def _machine(device: torch.device) -> dict[str, Any]:
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "medue_monai": __version__,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def _cli_commands(args: argparse.Namespace, method: str, options: dict[str, Any], folder: Path) -> list[str]:
    protect = ["medue", "protect", "--data", args.data, "--method", method, "--out", str(folder)]
    protect += ["--seed", str(args.seed), "--device", args.device]
    if args.data_root:
        protect += ["--data-root", args.data_root]
    if args.limit:
        protect += ["--limit", str(args.limit)]
    for key, value in options.items():
        protect += ["--option", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    evaluate = ["medue", "evaluate", "--protected", str(folder), "--recipe", args.recipe]
    evaluate += ["--seed", str(args.seed), "--device", args.device]
    if args.epochs:
        evaluate += ["--epochs", str(args.epochs)]
    if args.exploiter:
        evaluate += ["--exploiter", args.exploiter]
    return [shlex.join(protect), shlex.join(evaluate)]


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """Write the table of one report (ours beside the SALM paper's Table 1)."""
    dataset = report["dataset"]
    paper = PAPER_TABLE1.get(dataset, {})
    machine = report["machine"]
    lines = [
        f"# Baselines on {dataset} ({report['recipe']}, exploiter {report['exploiter'] or 'recipe default'})",
        "",
        f"Device: {machine['device']} ({machine['gpu'] or machine['processor']}), "
        f"seed {report['seed']}, {report['date']}, medue-monai {machine['medue_monai']}.",
        f"Command: `{report['command']}`",
        *[f"Resumed from: `{e['command']}` ({e['date']})" for e in report.get("earlier_commands", [])],
        "",
        "Clean-test accuracy (%) of the exploiter trained on each protected training split (lower is better "
        "protection). Paper: SALM paper Table 1 (ResNet-18, 28x28; AdvT = TAP, SP = LSP; no AR/SEP column).",
        "",
        "| method | ours: test acc. | paper | PSNR (dB) | norm | budget | realized max "
        "| protect s | protect img/s | evaluate s | peak RSS MB | peak GPU MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method in report["methods"]:
        row = report["results"].get(method)
        if row is None:
            continue
        budget = row.get("budget") or {}
        realized = budget.get("realized") or {}
        realized_max = realized.get("linf_max") if budget.get("norm") == "linf" else realized.get("l2_max")
        lines.append(
            "| "
            + " | ".join(
                [
                    method,
                    _fmt(row.get("test_accuracy")),
                    _fmt(paper.get(method)),
                    _fmt(row.get("psnr"), 2),
                    _fmt(budget.get("norm")),
                    _fmt(budget.get("budget"), 4),
                    _fmt(realized_max, 4),
                    _fmt(row.get("protect_seconds")),
                    _fmt(row.get("protect_images_per_second")),
                    _fmt(row.get("evaluate_seconds")),
                    _fmt((row.get("memory") or {}).get("peak_rss_mb_since_start"), 0),
                    _fmt((row.get("memory") or {}).get("peak_gpu_mb"), 0),
                ]
            )
            + " |"
        )
    lines.append("")
    path.write_text("\n".join(lines))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the methods and write the JSON and markdown reports; returns the report."""
    device = resolve_device(args.device)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    options = _parse_options(args.option)
    dataset = args.data.split(":", 1)[1] if args.data.startswith("medmnist:") else Path(args.data).stem
    dataset = dataset.split(":", 1)[0] or "synthetic"
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{args.name or f'baselines_{dataset}_{device.type}'}.json"
    md_path = json_path.with_suffix(".md")
    report: dict[str, Any] = {
        "dataset": dataset,
        "data": args.data,
        "recipe": args.recipe,
        "exploiter": args.exploiter,
        "epochs": args.epochs,
        "seed": args.seed,
        "limit": args.limit,
        "methods": methods,
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(device),
        "paper": PAPER_TABLE1.get(dataset, {}),
        "results": {},
    }
    if args.resume and json_path.is_file():
        earlier_report = json.loads(json_path.read_text())
        report["results"] = earlier_report.get("results", {})
        report["earlier_commands"] = [
            *earlier_report.get("earlier_commands", []),
            {"command": earlier_report.get("command"), "date": earlier_report.get("date")},
        ]
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="medue-baselines-"))
    clean_runs: list[dict[str, Any]] = list(report["results"].get("clean", {}).get("repetitions", []))
    # the first clean-trained run, reused unless --retrain-clean (on --resume: the earlier run's, when found)
    reused_clean: dict[str, Any] | None = None
    if args.resume and not args.retrain_clean:
        reused_clean = _stored_clean_run(work, dataset, report, args)
    for method in methods:
        if method == "clean" or method in report["results"]:
            continue
        method_options = options.get(method, {})
        folder = work / f"{dataset}_{method}_seed{args.seed}"
        print(f"[baselines] {method}: protecting {args.data} -> {folder}", flush=True)
        _reset_peak_memory(device)
        started = time.perf_counter()
        manifest = protect_classification(
            args.data,
            folder,
            method,
            method_options,
            seed=args.seed,
            device=args.device,
            overwrite=True,
            limit=args.limit,
            data_root=args.data_root,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            progress=args.progress,
        )
        protect_seconds = time.perf_counter() - started
        memory = _peak_memory(device)
        started = time.perf_counter()
        results = evaluate_classification(
            folder,
            args.recipe,
            args.exploiter,
            epochs=args.epochs,
            output=folder / "results.json",
            device=args.device,
            seed=args.seed,
            num_workers=args.num_workers,
            progress=args.progress,
            clean_run=reused_clean,
        )
        evaluate_seconds = time.perf_counter() - started
        if reused_clean is None:
            clean_runs.append({"after": method, **results["clean"]})
            if not args.retrain_clean:
                reused_clean = {**results["clean"], "curves": results["curves"]["clean"]}
        report["results"][method] = {
            "test_accuracy": results["protected"]["test_accuracy"],
            "clean_test_accuracy": results["clean"]["test_accuracy"],
            "psnr": results["invisibility"].get("psnr"),
            "invisibility": results["invisibility"],
            "budget": manifest.get("budget"),
            "options": manifest.get("options", method_options),
            "timing": manifest.get("timing"),
            "protect_seconds": protect_seconds,
            "protect_images_per_second": manifest["counts"]["train"] / protect_seconds,
            "evaluate_seconds": evaluate_seconds,
            "memory": memory,
            "commands": _cli_commands(args, method, method_options, folder),
            "output": str(folder),
        }
        if "clean" in methods:
            first = clean_runs[0] if clean_runs else None
            report["results"]["clean"] = {
                "test_accuracy": first["test_accuracy"] if first else None,
                "repetitions": clean_runs,
                "psnr": None,
                "budget": None,
            }
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        write_markdown(report, md_path)
        print(
            f"[baselines] {method}: protected {report['results'][method]['test_accuracy']:.1f}% "
            f"(clean {results['clean']['test_accuracy']:.1f}%), protect {protect_seconds:.1f}s, "
            f"evaluate {evaluate_seconds:.1f}s",
            flush=True,
        )
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    write_markdown(report, md_path)
    print(f"[baselines] wrote {json_path} and {md_path}")
    return report


def _stored_clean_run(work: Path, dataset: str, report: dict[str, Any], args: argparse.Namespace) -> dict | None:
    """The clean-trained run of an earlier, resumed invocation, read from a finished method's results.json.

    Only a run of the same recipe, exploiter, epochs and seed qualifies (``evaluate_classification`` checks
    the epochs again).
    """
    for method in report["results"]:
        path = work / f"{dataset}_{method}_seed{args.seed}" / "results.json"
        if method == "clean" or not path.is_file():
            continue
        earlier = json.loads(path.read_text())
        recipe = get_recipe(args.recipe, epochs=args.epochs)
        same = (
            earlier.get("exploiter") == (args.exploiter or recipe["network"])
            and earlier.get("seed") == args.seed
            and earlier.get("recipe", {}).get("name", args.recipe) == args.recipe
            and earlier.get("recipe", {}).get("epochs") == recipe["epochs"]
        )
        if same and "clean" in earlier.get("curves", {}):
            print(f"[baselines] reusing the clean-trained run stored in {path}", flush=True)
            return {**earlier["clean"], "curves": earlier["curves"]["clean"]}
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="medmnist:breastmnist", help="medmnist:<name>, an npz path or synthetic")
    parser.add_argument("--data-root", default=None, help="folder with MedMNIST npz files")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--recipe", default="cls-quick", help="exploiter recipe (cls-quick, cls-paper)")
    parser.add_argument("--exploiter", default=None, help="exploiter network (default: the recipe's)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--option", action="append", metavar="METHOD.key=VALUE", help="a method option (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=None, help="protect only the first N training items")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--work-dir", default=None, help="where protected copies go (default: a temp folder)")
    parser.add_argument("--output-dir", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--resume", action="store_true", help="keep methods already in the results JSON")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument(
        "--retrain-clean",
        action="store_true",
        help="train the clean exploiter again for every method (default: train it once, reuse it)",
    )
    parser.add_argument("--name", default=None, help="stem of the result files (default: baselines_<dataset>_<device>)")
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

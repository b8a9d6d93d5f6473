"""Benchmark every protector of a task on one dataset in one table, beside the papers' numbers.

Classification: clean, EM, TAP, LSP, AR, SEP and SALM; segmentation: clean, EM, TAP, LSP, AR, SEP and UMed.

The task follows the recipe: ``cls-quick`` / ``cls-paper`` take a MedMNIST set (``medmnist:<name>`` or an
npz); ``seg-quick`` / ``seg-paper`` take a segmentation folder (``images/`` + ``masks/``) or a MONAI
datalist. For segmentation the method names map to the segmentation protectors (``em`` -> ``em-seg``,
``tap`` -> ``tap-seg``, ``lsp`` -> ``lsp-seg``, ``ar`` -> ``ar-seg``, ``sep`` -> ``sep-seg``; ``em-contour`` and
``em-roi`` are the UMed paper's ablations ``em-seg-contour`` / ``em-seg-roi``).

Each method goes through the same pipeline as ``medue protect`` / ``medue evaluate``: fit on the
training split, write the quantized protected copy, read it back, train the exploiter on it and on
the clean split with the same recipe and seed, test both on the clean test split. Per method it
records the wall time of protection and of evaluation, the peak memory, the budget and realized
norms, the command line, the machine, the seed and the date, into
``benchmarks/results/baselines_<dataset>_<device>.json`` (rewritten after every method, so an
interrupted run keeps what it finished and ``--resume`` skips it; a resumable method's fit that was
interrupted continues from its round checkpoint in ``--work-dir``, and a finished protected copy there
of the same method, options and data is reused) and a markdown table beside it
with the papers' numbers: for classification the SALM paper's Table 1 (ResNet-18 on 28x28
MedMNIST; AdvT = TAP, SP = LSP; no AR or SEP column), for segmentation the UMed paper's Table 1
(U-Net exploiter; Dice and Jaccard). Rows keep the protected run's per-epoch curves, and a PNG beside
the table (``<name>.png``) plots the clean-test score per epoch of every row, clean included.

``--defense NAME`` measures the protection against an exploiter-side counter-measure (PROTOCOL.md:
3x3 mean / median / Gaussian filter, JPEG 60 / 30 / 10, 2-bit depth, center crop, image shortcut
squeezing): every exploiter run, the clean-trained one included, trains on defended images and tests on
the clean test split. ``--augmentation crop-flip`` and ``--adversarial-eps 8/255`` are the training-time
counter-measures (random crop + flip on every batch; adversarial training with PGD, 10 steps of 1/255),
applied the same way and combinable with a defense. With ``--resume`` and the ``--work-dir`` of an
undefended run, the protected copies are reused, so a counter-measure costs only the exploiter
trainings; each evaluation is kept as ``results_<tag>.json`` beside the copy (``<tag>`` such as
``median3`` or ``crop-flip_adv8``). Use one ``--name`` per counter-measure.

The "clean" row is the clean-trained exploiter: trained once (same recipe and seed as every protected
run) and reused by every method's evaluation; with ``--retrain-clean`` each evaluation trains it again
and the JSON keeps every repetition. ``--reuse METHOD=RESULTS.json`` takes a method's row (and the
clean run) from an earlier ``medue evaluate`` results file of the same dataset, split, recipe,
exploiter and seed, or from another baselines report of the same setting (for instance a row run on a
GPU machine; the row keeps its timings and records that machine), instead of protecting and training
again; the row records where it came from.

Example (GPU, the paper-like recipe)::

    python benchmarks/baselines.py --data medmnist:breastmnist --data-root ../shared/data/medmnist \\
        --recipe cls-paper --device cuda

Segmentation (Kvasir-SEG at 128x128, UNet exploiter; the clean and UMed rows taken from an earlier
seg-quick evaluation)::

    python benchmarks/baselines.py --data ../shared/data/kvasir-seg --recipe seg-quick \\
        --methods clean,lsp,ar,em,tap,sep,umed --reuse umed=benchmarks/results/seg_quick_cpu_unet.json

CPU smoke run (tiny; numbers are meaningless)::

    python benchmarks/baselines.py --data synthetic --methods lsp,ar --epochs 1 --device cpu
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
from typing import Any

import torch

import medue_monai.protectors.ar  # noqa: F401  (registers "ar"; harmless once the package imports it)
import medue_monai.protectors.lsp  # noqa: F401
import medue_monai.protectors.sep  # noqa: F401
import medue_monai.protectors.tap  # noqa: F401
from medue_monai.evaluation.plots import plot_learning_curves
from medue_monai.evaluation.recipes import get_recipe
from medue_monai.evaluation.report import recorded_clean_run, reusable_clean_run
from medue_monai.io.manifest import public_spec
from medue_monai.io.png import RESAMPLE_MODES
from medue_monai.pipeline.classification import evaluate_classification, protect_classification
from medue_monai.pipeline.segmentation import evaluate_segmentation, protect_segmentation
from medue_monai.protectors import get_protector_class
from medue_monai.transforms.defenses import DEFENSES
from medue_monai.utils import MedueError, machine_record, parse_fraction, resolve_device

METHODS = {
    "classification": ("clean", "em", "tap", "lsp", "ar", "sep", "salm"),
    "segmentation": ("clean", "em", "tap", "lsp", "ar", "sep", "umed", "em-contour", "em-roi"),
}
# benchmark method name -> registered protector, per task
PROTECTORS = {
    "classification": {name: name for name in METHODS["classification"]},
    "segmentation": {
        "em": "em-seg",
        "tap": "tap-seg",
        "lsp": "lsp-seg",
        "ar": "ar-seg",
        "sep": "sep-seg",
        "umed": "umed",
        "em-contour": "em-seg-contour",
        "em-roi": "em-seg-roi",
    },
}
# run when --methods is not given: every method of the task but the segmentation ablations
DEFAULT_METHODS = {
    "classification": METHODS["classification"],
    "segmentation": ("clean", "em", "tap", "lsp", "ar", "sep", "umed"),
}
# the score of a row, per task (percent; lower is better protection)
SCORE = {"classification": "test_accuracy", "segmentation": "dice"}

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

# UMed paper, Table 1: clean-test Dice (%) of a U-Net trained on each protected training set.
PAPER_UMED_TABLE1 = {
    "busi": {"clean": 72.85, "em": 32.55, "tap": 34.77, "lsp": 34.16, "ar": 40.39, "sep": 35.47, "umed": 0.92},
    "chest-x-ray": {"clean": 91.85, "em": 64.62, "tap": 92.32, "lsp": 89.85, "ar": 91.45, "sep": 90.29, "umed": 19.24},
    "kvasir-seg": {"clean": 81.83, "em": 30.06, "tap": 25.84, "lsp": 64.38, "ar": 36.75, "sep": 63.45, "umed": 0.23},
}
PAPER_TABLES = {"classification": PAPER_TABLE1, "segmentation": PAPER_UMED_TABLE1}
PAPER_NAMES = {
    "classification": "SALM paper Table 1 (ResNet-18, 28x28; AdvT = TAP, SP = LSP; no AR/SEP column)",
    "segmentation": "UMed paper Table 1 (U-Net exploiter, Dice)",
}


def _parse_options(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``METHOD.key=value`` into ``{method: {key: value}}``; values parsed as JSON, else as a fraction (``2/255``)."""
    options: dict[str, dict[str, Any]] = {}
    for item in items or []:
        target, _, value = item.partition("=")
        method, _, key = target.partition(".")
        if not key or not _:
            raise SystemExit(f"--option expects METHOD.key=value, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            try:
                parsed = parse_fraction(value)
            except MedueError:
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


def _cli_commands(args: argparse.Namespace, protector: str, options: dict[str, Any], folder: Path) -> list[str]:
    protect = ["medue", "protect", "--data", args.data, "--method", protector, "--out", str(folder)]
    protect += ["--seed", str(args.seed), "--device", args.device]
    if args.data_root:
        protect += ["--data-root", args.data_root]
    if args.limit:
        protect += ["--limit", str(args.limit)]
    if args.task == "segmentation":
        protect += ["--spatial-size", str(args.spatial_size), "--resample", args.resample]
    for key, value in options.items():
        protect += ["--option", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    evaluate = ["medue", "evaluate", "--protected", str(folder), "--recipe", args.recipe]
    evaluate += ["--seed", str(args.seed), "--device", args.device]
    if args.epochs:
        evaluate += ["--epochs", str(args.epochs)]
    if args.exploiter:
        evaluate += ["--exploiter", args.exploiter]
    if args.defense != "none":
        evaluate += ["--defense", args.defense]
    if args.augmentation != "none":
        evaluate += ["--augmentation", args.augmentation]
    if args.adversarial_eps > 0:
        evaluate += ["--adversarial-eps", repr(args.adversarial_eps)]
    return [shlex.join(protect), shlex.join(evaluate)]


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """Write the table of one report (ours beside the paper's table of its task)."""
    dataset = report["dataset"]
    task = report.get("task", "classification")
    paper = PAPER_TABLES[task].get(dataset, {})
    machine = report["machine"]
    score_title = "test acc." if task == "classification" else "Dice % (Jaccard %)"
    unit = "Clean-test accuracy (%)" if task == "classification" else "Clean-test foreground Dice and Jaccard (%)"
    extra = ["balanced acc.", "ROC AUC"] if task == "classification" else ["pixel AUC", "predicted fg %"]
    lines = [
        f"# Baselines on {dataset} ({report['recipe']}, exploiter {report['exploiter'] or 'recipe default'})",
        "",
        f"Device: {machine['device']} ({machine['gpu'] or machine['processor']}), "
        f"seed {report['seed']}, {report['date']}, medue-monai {machine['medue_monai']}.",
        f"Command: `{report['command']}`",
        *[f"Resumed from: `{e['command']}` ({e['date']})" for e in report.get("earlier_commands", [])],
        "",
        f"{unit} of the exploiter trained on each protected training split (lower is better "
        f"protection). Paper: {PAPER_NAMES[task]}.",
        *(
            [
                "",
                f"Working size {report.get('spatial_size')}; perturbations brought to the original size with "
                f"`--resample {report.get('resample') or 'bilinear'}`.",
            ]
            if task == "segmentation"
            else []
        ),
        *(
            [
                "",
                f"Exploiter-side defense on the training images of every run, clean included: "
                f"`{report['defense']}` (the test split stays clean).",
            ]
            if report.get("defense", "none") != "none"
            else []
        ),
        *(
            [
                "",
                "Training-time counter-measures of every exploiter run, clean included: "
                + ", ".join(_training_counter_text(report)),
            ]
            if _training_counter_text(report)
            else []
        ),
        "",
        *(
            [
                "Balanced accuracy (mean of the per-class recalls) and ROC AUC are 50 % for an exploiter that "
                "learned nothing, whatever the class balance (accuracy is then the share of the class it answers).",
                "",
            ]
            if task == "classification"
            else [
                "Pixel AUC (ROC AUC of the foreground probability over all clean test pixels) is 50 % for an "
                "exploiter whose foreground guesses are unrelated to the masks; their chance overlap still gives "
                "a Dice of about 2pq/(p+q) for a predicted share p and mask share q (a dash: not measured).",
                "",
            ]
        ),
        f"| method | ours: {score_title} | "
        + "".join(f"{column} | " for column in extra)
        + "paper | PSNR (dB) | norm | budget | realized max | protect s | protect img/s | evaluate s "
        "| peak RSS MB | peak GPU MB |",
        "| --- " * (12 + len(extra)) + "|",
    ]
    reused = []
    for method in report["methods"]:
        row = report["results"].get(method)
        if row is None:
            continue
        budget = row.get("budget") or {}
        realized = budget.get("realized") or {}
        realized_max = realized.get("linf_max") if budget.get("norm") == "linf" else realized.get("l2_max")
        score = _fmt(row.get(SCORE[task]), 2 if task == "segmentation" else 1)
        if task == "segmentation" and row.get("jaccard") is not None:
            score += f" ({row['jaccard']:.2f})"
        source = row.get("reused_from") or (row.get("repetitions") or [{}])[0].get("reused_from")
        label = f"{method} (reused)" if source else method
        if source:
            where = row.get("reused_machine")
            ran_on = f" (run on {where['device']}, {where.get('gpu') or where.get('processor')})" if where else ""
            reused.append(f"{method}: `{source}`{ran_on}")
        lines.append(
            "| "
            + " | ".join(
                [
                    label,
                    score,
                    *(
                        [_fmt(row.get("test_balanced_accuracy")), _fmt(row.get("test_auc"))]
                        if task == "classification"
                        else [_fmt(row.get("pixel_auc")), _fmt(row.get("predicted_share"))]
                    ),
                    _fmt(paper.get(method), 2 if task == "segmentation" else 1),
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
    if reused:
        lines += ["", "Rows taken from earlier evaluation results (`--reuse`): " + "; ".join(reused) + "."]
    lines.append("")
    path.write_text("\n".join(lines))


def _dataset_name(data: str) -> str:
    if data.startswith("medmnist:"):
        return data.split(":", 1)[1].split(":", 1)[0] or "synthetic"
    if data == "synthetic":
        return "synthetic"
    path = Path(data)
    return path.stem if path.suffix in {".npz", ".json"} else path.name


def _protect(args: argparse.Namespace, protector: str, options: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Fit ``protector`` and write its protected copy to ``folder`` (the ``medue protect`` code path)."""
    common = {
        "seed": args.seed,
        "device": args.device,
        "overwrite": True,
        "limit": args.limit,
        "data_root": args.data_root,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "progress": args.progress,
        # an interrupted fit of a resumable method continues from its epoch checkpoint beside the output
        "resume": bool(args.resume) and get_protector_class(protector).resumable,
    }
    if args.task == "segmentation":
        size = args.spatial_size
        return protect_segmentation(
            args.data, str(folder), protector, options, spatial_size=size, resample=args.resample, **common
        )
    return protect_classification(args.data, folder, protector, options, **common)


def _training_counter_text(report: dict[str, Any]) -> list[str]:
    """How the report's training-time counter-measures read in its table (empty when there are none)."""
    parts = []
    if report.get("augmentation", "none") != "none":
        parts.append(f"augmentation `{report['augmentation']}` (random crop after 4-pixel zero padding + flip)")
    if report.get("adversarial_eps", 0.0) > 0:
        parts.append(f"adversarial training, PGD L-inf {report['adversarial_eps'] * 255:g}/255, 10 steps of 1/255")
    return parts


def counter_tag(args: argparse.Namespace) -> str:
    """A short name of this run's counter-measures (``""`` when there are none), e.g. ``median3_adv8``."""
    parts = [args.defense] if args.defense != "none" else []
    if args.augmentation != "none":
        parts.append(args.augmentation)
    if args.adversarial_eps > 0:
        parts.append(f"adv{args.adversarial_eps * 255:g}")
    return "_".join(parts)


def _results_name(args: argparse.Namespace) -> str:
    """The evaluation's results file in a protected folder: one per set of counter-measures, so runs do not
    overwrite each other."""
    tag = counter_tag(args)
    return f"results_{tag}.json" if tag else "results.json"


def _evaluate(args: argparse.Namespace, folder: Path, clean_run: dict[str, Any] | None) -> dict[str, Any]:
    """Train the exploiter on the protected copy read back from ``folder`` (the ``medue evaluate`` code path)."""
    common = {
        "epochs": args.epochs,
        "output": folder / _results_name(args),
        "device": args.device,
        "seed": args.seed,
        "num_workers": args.num_workers,
        "progress": args.progress,
        "clean_run": clean_run,
        "defense": args.defense,
        "augmentation": args.augmentation,
        "adversarial_eps": args.adversarial_eps,
    }
    if args.task == "segmentation":
        exploiter = args.exploiter or get_recipe(args.recipe)["network"]
        common["output"] = str(common["output"])
        return evaluate_segmentation(str(folder), args.recipe, exploiter, **common)
    return evaluate_classification(folder, args.recipe, args.exploiter, **common)


def _score_row(task: str, results: dict[str, Any]) -> dict[str, Any]:
    """The protected and clean scores of one evaluation, as stored in a report row."""
    curves = {"curves": results.get("curves", {}).get("protected")}
    if task == "segmentation":
        return {
            "dice": results["protected"]["dice"],
            "jaccard": results["protected"]["jaccard"],
            "clean_dice": results["clean"]["dice"],
            "clean_jaccard": results["clean"]["jaccard"],
            # absent from evaluations written before the pixel scores were measured
            "pixel_auc": results["protected"].get("pixel_auc"),
            "predicted_share": results["protected"].get("predicted_share"),
            **curves,
        }
    return {
        "test_accuracy": results["protected"]["test_accuracy"],
        "clean_test_accuracy": results["clean"]["test_accuracy"],
        # absent from evaluations written before balanced accuracy and AUC were measured
        "test_balanced_accuracy": results["protected"].get("test_balanced_accuracy"),
        "test_auc": results["protected"].get("test_auc"),
        "clean_test_balanced_accuracy": results["clean"].get("test_balanced_accuracy"),
        "clean_test_auc": results["clean"].get("test_auc"),
        **curves,
    }


CURVE = {"classification": "test_accuracy", "segmentation": "test_dice"}


def plot_report(report: dict[str, Any], path: Path) -> Path | None:
    """Plot the exploiter's clean-test score per epoch for every row that has curves (PNG).

    Args:
        report: the report of :func:`run`.
        path: output PNG path.

    Returns:
        ``path``, or ``None`` when no row has curves yet.
    """
    metric = CURVE[report.get("task", "classification")]
    runs = {}
    for method, row in report["results"].items():
        curves = (row.get("repetitions") or [{}])[0].get("curves") if method == "clean" else row.get("curves")
        if curves and curves.get(metric):
            runs[f"{method} (reused)" if row.get("reused_from") else method] = {metric: curves[metric]}
    if not runs:
        return None
    title = f"{report['dataset']}: {report['recipe']} exploiter trained on each copy, clean test split"
    return plot_learning_curves(runs, metric, path, title)


def _matches(earlier: dict[str, Any], args: argparse.Namespace, dataset: str) -> str | None:
    """Why an earlier evaluation's results cannot stand in for this run (``None`` when they can)."""
    recipe = get_recipe(args.recipe, epochs=args.epochs)
    checks = {
        "task": (earlier.get("task"), args.task),
        "dataset": (earlier.get("dataset"), dataset),
        "exploiter": (earlier.get("exploiter"), args.exploiter or recipe["network"]),
        "seed": (earlier.get("seed"), args.seed),
        "recipe": ((earlier.get("recipe") or {}).get("name"), args.recipe),
        "epochs": ((earlier.get("recipe") or {}).get("epochs"), recipe["epochs"]),
        "defense": (earlier.get("defense", "none"), args.defense),
        "augmentation": ((earlier.get("counter_measures") or {}).get("augmentation", "none"), args.augmentation),
        "adversarial_eps": ((earlier.get("counter_measures") or {}).get("adversarial_eps", 0.0), args.adversarial_eps),
    }
    wrong = [f"{key} {have!r} != {want!r}" for key, (have, want) in checks.items() if have != want]
    return "; ".join(wrong) or None


def _earlier_results(
    path: Path, flag: str, args: argparse.Namespace, dataset: str, earlier: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An earlier ``medue evaluate`` results file of this run's setting; ``flag`` names the option in errors.

    ``earlier`` is the file's content when the caller has already read it.
    """
    if earlier is None:
        if not path.is_file():
            raise SystemExit(f"{flag}: no such file")
        earlier = json.loads(path.read_text())
    if isinstance(earlier.get("results"), dict) and isinstance(earlier.get("recipe"), str):
        outputs = [row["output"] for row in earlier["results"].values() if isinstance(row, dict) and row.get("output")]
        hint = f" (one of them: {Path(outputs[0]) / 'results.json'})" if outputs else ""
        raise SystemExit(
            f"{flag}: this is a baselines report, not a `medue evaluate` results file; pass the results.json in a"
            f" protected copy's folder{hint}"
        )
    reason = _matches(earlier, args, dataset)
    if reason:
        raise SystemExit(f"{flag}: another setting ({reason})")
    return earlier


REPORT_SETTING = (
    "task",
    "dataset",
    "recipe",
    "exploiter",
    "epochs",
    "seed",
    "limit",
    "resample",
    "defense",
    "augmentation",
    "adversarial_eps",
)


def _changed_setting(earlier_report: dict[str, Any], report: dict[str, Any]) -> list[str]:
    """The keys of :data:`REPORT_SETTING` in which an earlier report differs from this run's."""
    earlier_report.setdefault("task", "classification")
    # segmentation reports written before --resample existed used bilinear upsampling
    earlier_report.setdefault("resample", "bilinear" if earlier_report["task"] == "segmentation" else None)
    earlier_report.setdefault("defense", "none")  # reports written before --defense existed
    earlier_report.setdefault("augmentation", "none")  # ... and before the training-time counter-measures
    earlier_report.setdefault("adversarial_eps", 0.0)
    return [key for key in REPORT_SETTING if earlier_report.get(key) != report[key]]


def _row_from_report(method: str, path: Path, earlier: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """A row of an earlier baselines report of the same setting, with the machine it ran on (``--reuse``).

    The row keeps its own timings and memory; ``reused_from`` and ``reused_machine`` say where they were
    measured. Its clean run is the earlier report's first clean repetition.
    """
    flag = f"--reuse {method}={path}"
    changed = _changed_setting(earlier, report)
    if changed:
        raise SystemExit(f"{flag}: another setting ({', '.join(changed)})")
    row = (earlier.get("results") or {}).get(method)
    if row is None:
        raise SystemExit(f"{flag}: the report has no {method!r} row")
    clean_run = recorded_clean_run(earlier)
    if clean_run is None:
        raise SystemExit(f"{flag}: the report keeps no clean-trained run")
    machine = earlier.get("machine") or {}
    return {
        **{k: v for k, v in row.items() if k not in {"reused_from", "reused_machine"}},
        "reused_from": str(path),
        "reused_machine": {key: machine.get(key) for key in ("device", "gpu", "processor", "cpu_count")},
        "clean_run": clean_run,
    }


def _reused_row(
    task: str, method: str, path: Path, args: argparse.Namespace, dataset: str, report: dict[str, Any]
) -> dict[str, Any]:
    """A report row taken from an earlier result of the same setting (``--reuse METHOD=PATH``).

    ``PATH`` is either a ``medue evaluate`` results file (the row gets its scores, budget and evaluation
    time) or another baselines report (the row is copied whole, timings included, with its machine).
    """
    if not path.is_file():
        raise SystemExit(f"--reuse {method}={path}: no such file")
    earlier = json.loads(path.read_text())
    if "results" in earlier:
        return _row_from_report(method, path, earlier, report)
    earlier = _earlier_results(path, f"--reuse {method}={path}", args, dataset, earlier)
    if earlier.get("method") != PROTECTORS[task][method]:
        raise SystemExit(f"--reuse {method}={path}: results of method {earlier.get('method')!r}")
    return {
        **_score_row(task, earlier),
        "psnr": earlier["invisibility"].get("psnr"),
        "invisibility": earlier["invisibility"],
        "budget": {
            "norm": earlier["budget"]["norm"],
            "budget": earlier["budget"]["eps"],
            "realized": {"linf_max": earlier["budget"]["linf_max"], "l0_share": earlier["budget"]["l0_share"]},
        },
        "evaluate_seconds": earlier.get("wall_seconds"),
        "reused_from": str(path),
        "clean_run": reusable_clean_run(earlier),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the methods and write the JSON and markdown reports; returns the report."""
    device = resolve_device(args.device)
    args.task = get_recipe(args.recipe)["task"]
    task = args.task
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else list(DEFAULT_METHODS[task])
    unknown = sorted(set(methods) - set(METHODS[task]))
    if unknown:
        raise SystemExit(f"unknown {task} methods {unknown}; choose from {', '.join(METHODS[task])}")
    options = _parse_options(args.option)
    reuse = {}
    for item in args.reuse or []:
        method, _, path = item.partition("=")
        if method not in METHODS[task] or method == "clean" or not path:
            raise SystemExit(f"--reuse expects METHOD=RESULTS.json with METHOD one of {', '.join(METHODS[task][1:])}")
        reuse[method] = Path(path)
    dataset = _dataset_name(args.data)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{args.name or f'baselines_{dataset}_{device.type}'}.json"
    md_path = json_path.with_suffix(".md")
    report: dict[str, Any] = {
        "task": task,
        "dataset": dataset,
        "data": args.data,
        "recipe": args.recipe,
        "exploiter": args.exploiter,
        "epochs": args.epochs,
        "spatial_size": args.spatial_size if task == "segmentation" else None,
        "resample": args.resample if task == "segmentation" else None,
        "defense": args.defense,
        "augmentation": args.augmentation,
        "adversarial_eps": args.adversarial_eps,
        "seed": args.seed,
        "limit": args.limit,
        "methods": methods,
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_record(device),
        "paper": PAPER_TABLES[task].get(dataset, {}),
        "results": {},
    }
    if args.resume and json_path.is_file():
        earlier_report = json.loads(json_path.read_text())
        changed = _changed_setting(earlier_report, report)
        if changed:
            raise SystemExit(f"--resume: {json_path} holds another setting ({', '.join(changed)}); use another --name")
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

    def save() -> None:
        if "clean" in methods:
            first = clean_runs[0] if clean_runs else None
            report["results"]["clean"] = {
                SCORE[task]: first[SCORE[task]] if first else None,
                **(
                    {key: first.get(key) for key in ("jaccard", "pixel_auc", "predicted_share")}
                    if first and task == "segmentation"
                    else {}
                ),
                **(
                    {key: first.get(key) for key in ("test_balanced_accuracy", "test_auc")}
                    if first and task == "classification"
                    else {}
                ),
                "repetitions": clean_runs,
                "psnr": None,
                "budget": None,
            }
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        write_markdown(report, md_path)
        plot_report(report, md_path.with_suffix(".png"))

    if args.clean_from and not args.retrain_clean and reused_clean is None:
        path = Path(args.clean_from)
        reused_clean = reusable_clean_run(_earlier_results(path, f"--clean-from {path}", args, dataset))
        clean_runs.append({"after": None, "reused_from": str(path), **reused_clean})
        print(f"[baselines] clean-trained run taken from {path}", flush=True)
    for method, path in reuse.items():
        row = _reused_row(task, method, path, args, dataset, report)
        clean_run = row.pop("clean_run")
        report["results"][method] = row
        if reused_clean is None and not args.retrain_clean:
            reused_clean = clean_run
            clean_runs.append({"after": method, "reused_from": str(path), **clean_run})
        print(f"[baselines] {method}: taken from {path}", flush=True)
    save()
    for method in methods:
        if method == "clean" or method in report["results"]:
            continue
        method_options = options.get(method, {})
        protector = PROTECTORS[task][method]
        folder = work / f"{dataset}_{method}_seed{args.seed}"
        print(f"[baselines] {method}: protecting {args.data} with {protector} -> {folder}", flush=True)
        _reset_peak_memory(device)
        started = time.perf_counter()
        manifest = _finished_copy(folder, protector, method_options, args) if args.resume else None
        if manifest is not None:
            # the protected copy of an earlier run of this setting (another --defense, say): its recorded times
            print(f"[baselines] {method}: reusing the finished protected copy in {folder}", flush=True)
            timing = manifest.get("timing") or {}
            protect_seconds = sum(float(timing.get(key) or 0.0) for key in ("fit_seconds", "apply_seconds"))
            memory = None
        else:
            manifest = _protect(args, protector, method_options, folder)
            protect_seconds = time.perf_counter() - started
            memory = _peak_memory(device)
        # a fit resumed from --work-dir also counts the seconds its interrupted runs spent
        protect_seconds += (manifest.get("timing") or {}).get("fit_seconds_before_resume", 0.0)
        started = time.perf_counter()
        results = _evaluate(args, folder, reused_clean)
        evaluate_seconds = time.perf_counter() - started
        if reused_clean is None:
            clean_runs.append({"after": method, **reusable_clean_run(results)})
            if not args.retrain_clean:
                reused_clean = reusable_clean_run(results)
        report["results"][method] = {
            **_score_row(task, results),
            "psnr": results["invisibility"].get("psnr"),
            "invisibility": results["invisibility"],
            "budget": manifest.get("budget"),
            "options": manifest.get("options", method_options),
            "timing": manifest.get("timing"),
            "protect_seconds": protect_seconds,
            "protect_images_per_second": manifest["counts"]["train"] / protect_seconds,
            "evaluate_seconds": evaluate_seconds,
            "memory": memory,
            **({"protected_copy_reused": True} if memory is None else {}),
            "commands": _cli_commands(args, protector, method_options, folder),
            "output": str(folder),
        }
        save()
        score = report["results"][method][SCORE[task]]
        clean_score = results["clean"][SCORE[task]]
        print(
            f"[baselines] {method}: protected {score:.2f}% (clean {clean_score:.2f}%), protect {protect_seconds:.1f}s, "
            f"evaluate {evaluate_seconds:.1f}s",
            flush=True,
        )
    save()
    print(f"[baselines] wrote {json_path} and {md_path}")
    return report


def _finished_copy(
    folder: Path, protector: str, options: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any] | None:
    """The manifest of a finished protected copy in ``folder`` made with this method, options and setting.

    A manifest is written last, inside a folder renamed into place only when complete, so its presence
    means the copy is whole. ``None`` when there is none or it differs (method, seed, given options,
    data, limit, and for segmentation the working size and resample mode).
    """
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    dataset = manifest.get("dataset") or {}
    same = [
        manifest.get("method") == protector,
        manifest.get("seed") == args.seed,
        all((manifest.get("options") or {}).get(key) == value for key, value in options.items()),
        (manifest.get("input") or {}).get("spec") == public_spec(args.data),
        dataset.get("limit") == args.limit,
    ]
    if args.task == "segmentation":
        same += [
            dataset.get("spatial_size") == args.spatial_size,
            dataset.get("resample", "bilinear") == args.resample,
        ]
    return manifest if all(same) else None


def _stored_clean_run(work: Path, dataset: str, report: dict[str, Any], args: argparse.Namespace) -> dict | None:
    """The clean-trained run of an earlier, resumed invocation.

    Looked up first in the report's clean repetitions (``run`` resumes only a report of the same
    setting; repetitions are stored with their curves), then in a finished method's ``results.json``
    under the work folder. Only a run of the same task, dataset, recipe, exploiter, epochs and seed
    qualifies (the evaluation checks the epochs, and for segmentation the split, again).
    """
    for repetition in report["results"].get("clean", {}).get("repetitions", []):
        if "curves" in repetition:
            print("[baselines] reusing the clean-trained run stored in the results JSON", flush=True)
            return {k: v for k, v in repetition.items() if k not in {"after", "reused_from"}}
    for method in report["results"]:
        path = work / f"{dataset}_{method}_seed{args.seed}" / _results_name(args)
        if method == "clean" or not path.is_file():
            continue
        earlier = json.loads(path.read_text())
        earlier.setdefault("task", args.task)
        earlier.setdefault("dataset", dataset)
        if _matches(earlier, args, dataset) is None and "clean" in earlier.get("curves", {}):
            print(f"[baselines] reusing the clean-trained run stored in {path}", flush=True)
            return reusable_clean_run(earlier)
    return None


def _fraction(text: str) -> float:
    """``8/255`` or ``0.03`` as a float in [0, 1] (an argparse type)."""
    try:
        value = parse_fraction(text)
    except MedueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (every one with its default in its help)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default="medmnist:breastmnist",
        help="medmnist:<name>, an npz path or synthetic (classification); a folder with images/ + masks/ or a "
        "datalist JSON (segmentation) (default: medmnist:breastmnist)",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="folder with MedMNIST npz files (classification) or base of a datalist's relative paths "
        "(segmentation) (default: none)",
    )
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated subset of the task's methods: "
        + "; ".join(f"{task}: {','.join(names)}" for task, names in METHODS.items())
        + " (default: every method of the task except the segmentation ablations em-contour and em-roi)",
    )
    parser.add_argument(
        "--recipe",
        default="cls-quick",
        help="exploiter recipe; its task picks the methods (cls-quick, cls-paper, "
        "seg-quick, seg-paper; default: cls-quick)",
    )
    parser.add_argument("--exploiter", default=None, help="exploiter network (default: the recipe's)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (default: recipe's)")
    parser.add_argument("--spatial-size", type=int, default=128, help="segmentation working size (default: 128)")
    parser.add_argument(
        "--resample",
        choices=RESAMPLE_MODES,
        default="bilinear",
        help="segmentation: how the perturbation reaches the original size (medue protect --resample; "
        "default: bilinear)",
    )
    parser.add_argument(
        "--defense",
        choices=list(DEFENSES),
        default="none",
        help="exploiter-side counter-measure on the training images of every exploiter run, clean included "
        "(medue evaluate --defense; default: none)",
    )
    parser.add_argument(
        "--augmentation",
        choices=["none", "crop-flip"],
        default="none",
        help="training-time augmentation of every exploiter run, clean included (medue evaluate --augmentation; "
        "default: none)",
    )
    parser.add_argument(
        "--adversarial-eps",
        type=_fraction,
        default=0.0,
        help="adversarial training of every exploiter run, clean included: PGD radius such as 4/255 or 8/255 "
        "(medue evaluate --adversarial-eps; default: 0, off)",
    )
    parser.add_argument(
        "--option",
        action="append",
        metavar="METHOD.key=VALUE",
        help="a method option (repeatable; default: the method's defaults)",
    )
    parser.add_argument(
        "--reuse",
        action="append",
        metavar="METHOD=RESULTS.json",
        help="take METHOD's row and the clean run from an earlier `medue evaluate` results file, or from "
        "another baselines report (row copied with its timings and machine), of the same setting instead of "
        "running it (repeatable; default: none)",
    )
    parser.add_argument(
        "--clean-from",
        default=None,
        metavar="RESULTS.json",
        help="take only the clean-trained run from an earlier `medue evaluate` results file of the same setting "
        "(dataset, split, recipe, epochs, exploiter, seed; default: train it)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of split, protectors and exploiters (default: 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:i] (default: auto)")
    parser.add_argument("--limit", type=int, default=None, help="protect only the first N items (default: all)")
    parser.add_argument("--batch-size", type=int, default=None, help="protector batch size (default: its own)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default: 0)")
    parser.add_argument("--work-dir", default=None, help="where protected copies go (default: a temp folder)")
    parser.add_argument(
        "--output-dir",
        default=str(Path(__file__).resolve().parent / "results"),
        help="results folder (default: benchmarks/results)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep methods already in the results JSON, continue an interrupted fit of a resumable method "
        "(salm, em, em-seg, umed) from its checkpoint in --work-dir, and reuse a finished protected copy there "
        "of the same method, options and data (for instance to evaluate it under another --defense; default: off)",
    )
    parser.add_argument("--progress", action="store_true", help="show progress bars (default: hidden)")
    parser.add_argument(
        "--retrain-clean",
        action="store_true",
        help="train the clean exploiter again for every method (default: train it once, reuse it)",
    )
    parser.add_argument("--name", default=None, help="stem of the result files (default: baselines_<dataset>_<device>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Write an evaluation's results: ``results.json`` (atomically) and its learning-curve PNG beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .plots import plot_learning_curves

__all__ = ["recorded_clean_run", "reusable_clean_run", "write_results"]


def write_results(results: dict[str, Any], output: str | Path, metric: str) -> dict[str, Any]:
    """Plot ``results["curves"]`` by ``metric`` into ``<output>.png`` and write the JSON to ``output``.

    Args:
        results: evaluation results with ``curves``, ``exploiter``, ``recipe``, ``dataset`` and ``method``.
        output: JSON path (its folder is created).
        metric: curve plotted per epoch, e.g. ``test_accuracy`` or ``test_dice``.

    Returns:
        ``results`` with ``learning_curves_png`` added.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    plot_path = output.with_suffix(".png")
    recipe = results["recipe"]["name"] if isinstance(results["recipe"], dict) else results["recipe"]
    plot_learning_curves(
        results["curves"],
        metric,
        plot_path,
        f"{results['exploiter']} ({recipe}) on {results['dataset']}: clean vs {results['method']}-protected",
        also=("test_auc",) if metric == "test_accuracy" else (),
    )
    results["learning_curves_png"] = str(plot_path)
    tmp = output.with_suffix(output.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(output)
    return results


def reusable_clean_run(results: dict[str, Any]) -> dict[str, Any]:
    """The clean-trained run of an evaluation's results, in the form its ``clean_run`` argument takes.

    Args:
        results: a ``results.json`` of ``evaluate_classification`` or ``evaluate_segmentation``.

    Returns:
        ``{**results["clean"], "curves": results["curves"]["clean"]}``, plus ``exploiter`` and
        ``split_sha256`` when recorded.
    """
    run = {**results["clean"], "curves": results["curves"]["clean"]}
    if "exploiter" in results:
        run.setdefault("exploiter", results["exploiter"])
    if "split_sha256" in results:
        run["split_sha256"] = results["split_sha256"]
    return run


def recorded_clean_run(document: dict[str, Any]) -> dict[str, Any] | None:
    """The clean-trained run kept in an evaluation's results or in a benchmark report, as ``clean_run`` takes it.

    Args:
        document: a ``results.json`` of ``medue evaluate``, or a ``benchmarks/baselines.py`` report (whose
            ``results.clean.repetitions`` list the clean-trained runs with ``after`` / ``reused_from``
            bookkeeping).

    Returns:
        For results, :func:`reusable_clean_run`; for a report, its first clean repetition without the
        bookkeeping keys. ``None`` when the document keeps no clean-trained run with its curves.
    """
    if "results" in document:
        repetitions = (document["results"].get("clean") or {}).get("repetitions") or []
        run = {k: v for k, v in repetitions[0].items() if k not in {"after", "reused_from"}} if repetitions else {}
    elif "clean" in document and "curves" in document:
        run = reusable_clean_run(document)
    else:
        run = {}
    return run if "curves" in run else None

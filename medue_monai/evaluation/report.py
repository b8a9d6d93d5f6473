"""Write an evaluation's results: ``results.json`` (atomically) and its learning-curve PNG beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .plots import plot_learning_curves

__all__ = ["reusable_clean_run", "write_results"]


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
        ``{**results["clean"], "curves": results["curves"]["clean"]}``, plus ``split_sha256`` when recorded.
    """
    run = {**results["clean"], "curves": results["curves"]["clean"]}
    if "split_sha256" in results:
        run["split_sha256"] = results["split_sha256"]
    return run

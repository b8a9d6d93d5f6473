"""Learning-curve plots (PNG) for evaluation reports."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_learning_curves"]


def _values(curve: list[float | None]) -> list[float]:
    return [math.nan if value is None else value for value in curve]


def plot_learning_curves(
    runs: dict[str, dict[str, list[float]]],
    metric: str,
    path: str | Path,
    title: str,
    also: tuple[str, ...] = (),
) -> Path:
    """Plot one metric per epoch for several runs (e.g. clean vs protected) into a PNG.

    Args:
        runs: run name -> curves dict (metric name -> per-epoch values).
        metric: curve key to plot against the epoch, e.g. ``test_accuracy``; ``train_*`` curves of the
            same runs are drawn dashed when present.
        path: output PNG path.
        title: figure title.
        also: further curve keys drawn dotted for the runs that have them (e.g. ``test_auc``); undefined
            values (``None``) leave a gap.

    Returns:
        The path written.
    """
    figure, axis = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    train_key = metric.replace("test_", "train_")
    styles = [(metric, "-"), *((key, ":") for key in also)]
    if train_key != metric:
        styles.append((train_key, "--"))
    for index, (name, curves) in enumerate(runs.items()):
        for key, linestyle in styles:
            if key == metric or key in curves:
                values = _values(curves.get(key, []))
                axis.plot(
                    range(1, len(values) + 1),
                    values,
                    color=f"C{index}",
                    linestyle=linestyle,
                    label=f"{name}: {key.replace('_', ' ')}",
                )
    axis.set_xlabel("epoch")
    axis.set_ylabel("%")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)

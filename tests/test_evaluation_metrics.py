"""Clean-test metrics of the classification exploiter: accuracy, balanced accuracy, ROC AUC."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from monai.data import DataLoader

from medue_monai.evaluation.classification import test_metrics as clean_test_metrics

CPU = torch.device("cpu")


class FixedLogits(torch.nn.Module):
    """Returns the logits stored in each image's first pixels (one per class)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, : self.num_classes]


def _loader(logits: list[list[float]], labels: list[int]) -> DataLoader:
    items = [
        {"image": torch.tensor(row + [0.0] * (4 - len(row))).reshape(1, 2, 2), "label": torch.tensor([label])}
        for row, label in zip(logits, labels, strict=True)
    ]
    return DataLoader(items, batch_size=3)


def test_a_majority_answer_scores_its_class_share_in_accuracy_but_half_in_balanced_accuracy_and_auc():
    labels = [1, 1, 1, 0] * 5
    metrics = clean_test_metrics(FixedLogits(2), _loader([[0.0, 1.0]] * 20, labels), CPU, 2)
    assert metrics["accuracy"] == pytest.approx(75.0)
    assert metrics["balanced_accuracy"] == pytest.approx(50.0)
    assert metrics["auc"] == pytest.approx(50.0)


def test_binary_auc_ranks_the_positive_class_probability():
    # positives score 0.9, 0.4; negatives 0.5, 0.1: 3 of the 4 pairs are ordered right
    logits = [[0.0, 2.2], [0.0, -0.4], [0.0, 0.0], [0.0, -2.2]]
    metrics = clean_test_metrics(FixedLogits(2), _loader(logits, [1, 1, 0, 0]), CPU, 2)
    assert metrics["auc"] == pytest.approx(75.0)
    assert metrics["accuracy"] == pytest.approx(75.0)  # 0.4 < 0.5: one positive answered negative
    assert metrics["balanced_accuracy"] == pytest.approx(75.0)


def test_multiclass_metrics_average_over_the_classes_present():
    logits = [[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]]
    perfect = clean_test_metrics(FixedLogits(3), _loader(logits, [0, 1, 2, 0]), CPU, 3)
    assert perfect == pytest.approx({"accuracy": 100.0, "balanced_accuracy": 100.0, "auc": 100.0})
    # class 2 absent from the labels: class 0 recalls 2 of 3, class 1 1 of 1
    partial = clean_test_metrics(FixedLogits(3), _loader(logits, [0, 1, 0, 0]), CPU, 3)
    assert partial["accuracy"] == pytest.approx(75.0)
    assert partial["balanced_accuracy"] == pytest.approx(100.0 * (2 / 3 + 1) / 2)
    assert 0.0 <= partial["auc"] <= 100.0


def test_auc_is_undefined_for_a_single_class_split():
    metrics = clean_test_metrics(FixedLogits(2), _loader([[0.0, 1.0], [1.0, 0.0]], [1, 1]), CPU, 2)
    assert metrics["auc"] is None and metrics["balanced_accuracy"] == pytest.approx(50.0)


def test_baselines_table_shows_balanced_accuracy_and_auc_for_classification(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "baselines_benchmark", Path(__file__).parents[1] / "benchmarks" / "baselines.py"
    )
    baselines = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baselines)
    row = {"test_accuracy": 62.8, "test_balanced_accuracy": 51.25, "test_auc": 48.75, "psnr": 40.0}
    report = {
        "dataset": "breastmnist",
        "task": "classification",
        "recipe": "cls-quick",
        "exploiter": "resnet18",
        "seed": 0,
        "date": "2026-11-23",
        "command": "baselines.py",
        "machine": {"device": "cpu", "gpu": None, "processor": "x86_64", "medue_monai": "0.1.0"},
        "methods": ["clean", "salm"],
        "results": {"clean": {"test_accuracy": 83.3, "test_balanced_accuracy": 78.0, "test_auc": 88.1}, "salm": row},
    }
    path = tmp_path / "table.md"
    baselines.write_markdown(report, path)
    lines = path.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| method"))
    assert "balanced acc." in header and "ROC AUC" in header
    salm = next(line for line in lines if line.startswith("| salm"))
    cells = [cell.strip() for cell in salm.strip("|").split("|")]
    assert cells[:4] == ["salm", "62.8", "51.2", "48.8"]
    assert len(cells) == len(header.strip("|").split("|"))


def test_learning_curves_draw_auc_with_gaps_for_undefined_epochs(tmp_path):
    from medue_monai.evaluation.plots import plot_learning_curves

    runs = {
        "clean": {"test_accuracy": [50.0, 70.0], "test_auc": [None, 80.0]},
        "protected": {"test_accuracy": [40.0, 45.0]},
    }
    path = plot_learning_curves(runs, "test_accuracy", tmp_path / "curves.png", "t", also=("test_auc",))
    assert path.stat().st_size > 1000

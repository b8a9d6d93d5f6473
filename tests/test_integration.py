"""End to end on real data: protect BreastMNIST, read it back, train exploiters, check the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medue_monai.cli import main
from medue_monai.protectors import positions_to_keep


@pytest.mark.integration
def test_protect_and_evaluate_breastmnist(shared_data, tmp_path, capsys):
    path = shared_data / "medmnist" / "breastmnist.npz"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    out = tmp_path / "protected"
    assert (
        main(
            [
                "protect",
                "--method",
                "salm",
                "--data",
                str(path),
                "--out",
                str(out),
                "--limit",
                "64",
                "--epochs",
                "1",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "salm" and manifest["counts"] == {"train": 64, "val": 78}
    assert manifest["held_out"]["split"] == "test" and manifest["held_out"]["count"] == 156
    with np.load(out / "breastmnist.npz") as written, np.load(path) as clean:
        # every image of the release is protected, within the budget and K %; the test split stays out
        assert sorted(written.files) == ["train_images", "train_labels", "val_images", "val_labels"]
        for split, count in (("train", 64), ("val", 78)):
            delta = written[f"{split}_images"].astype(int) - clean[f"{split}_images"][:count].astype(int)
            touched = (delta != 0).reshape(count, -1).sum(axis=1)
            assert np.abs(delta).max() <= 8 and touched.min() > 0
            assert touched.max() <= positions_to_keep(28 * 28, 10)
            assert written[f"{split}_labels"].dtype == clean[f"{split}_labels"].dtype
            assert np.array_equal(written[f"{split}_labels"], clean[f"{split}_labels"][:count])
    results_path = tmp_path / "results.json"
    assert (
        main(
            [
                "evaluate",
                "--protected",
                str(out),
                "--recipe",
                "cls-quick",
                "--exploiter",
                "resnet18",
                "--epochs",
                "1",
                "--output",
                str(results_path),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    results = json.loads(results_path.read_text())
    assert results["task"] == "classification"
    for run in ("clean", "protected"):
        assert 0.0 <= results[run]["test_accuracy"] <= 100.0
        assert 0.0 <= results[run]["test_balanced_accuracy"] <= 100.0 and 0.0 <= results[run]["test_auc"] <= 100.0
    assert results["invisibility"]["psnr"] > 35.0 and 0.9 < results["invisibility"]["ssim"] <= 1.0
    assert results["budget"]["linf_max"] <= 8 / 255 + 1e-9 and 0 < results["budget"]["l0_share"] <= 0.1
    assert (tmp_path / "results.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "clean-trained" in out and "ROC AUC" in out

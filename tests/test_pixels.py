"""Pixel-level exploiter scores: binned ROC AUC and predicted foreground share."""

import pytest
import torch
from monai.metrics import compute_roc_auc

from medue_monai.evaluation.pixels import PixelScores, binned_roc_auc


def test_binned_auc_matches_monai() -> None:
    generator = torch.Generator().manual_seed(0)
    truth = torch.rand(4000, generator=generator) < 0.2
    log_odds = torch.randn(4000, generator=generator) * 3 + 1.5 * truth
    scores = PixelScores()
    scores.update(log_odds[:2500], truth[:2500])  # two batches add up
    scores.update(log_odds[2500:], truth[2500:])
    exact = 100.0 * float(compute_roc_auc(log_odds, truth.long()))
    assert 55.0 < exact < 80.0
    assert scores.aggregate()["pixel_auc"] == pytest.approx(exact, abs=0.05)


def test_confident_scores_are_not_tied() -> None:
    """Probabilities within 1e-4 of 0 still rank: the histogram is over log-odds."""
    truth = torch.tensor([True, False] * 500)
    log_odds = torch.where(truth, torch.tensor(-12.0), torch.tensor(-14.0))  # p(fg) ~ 6e-6 vs 8e-7
    scores = PixelScores()
    scores.update(log_odds, truth)
    assert scores.aggregate()["pixel_auc"] == pytest.approx(100.0)
    assert scores.aggregate()["predicted_share"] == 0.0


def test_pixel_scores_tell_guesses_from_knowledge() -> None:
    generator = torch.Generator().manual_seed(1)
    mask = torch.zeros(8, 1, 32, 32, dtype=torch.bool)
    mask[:, :, 8:20, 8:20] = True  # 14 % of the pixels
    guesses = PixelScores()
    # foreground guessed on 12 % of the pixels, wherever: Dice would overlap by chance, the AUC stays at 50 %
    guessed = torch.rand(mask.shape, generator=generator) < 0.12
    guesses.update(torch.where(guessed, 3.0, -3.0), mask)
    result = guesses.aggregate()
    assert result["pixel_auc"] == pytest.approx(50.0, abs=2.0)
    assert result["predicted_share"] == pytest.approx(12.0, abs=1.0)
    assert result["mask_share"] == pytest.approx(100.0 * 144 / 1024)
    knows = PixelScores()
    knows.update(torch.where(mask, 5.0, -5.0), mask)
    assert knows.aggregate()["pixel_auc"] == pytest.approx(100.0)
    assert knows.aggregate()["predicted_share"] == pytest.approx(100.0 * 144 / 1024)
    inverted = PixelScores()
    inverted.update(torch.where(mask, -50.0, 50.0), mask)  # beyond the binned range: end bins
    assert inverted.aggregate()["pixel_auc"] == pytest.approx(0.0)


def test_pixel_scores_bad_input() -> None:
    scores = PixelScores()
    with pytest.raises(ValueError, match="differ in shape"):
        scores.update(torch.rand(2, 1, 4, 4), torch.ones(2, 1, 4, 5, dtype=torch.bool))
    scores.update(torch.rand(1, 1, 4, 4), torch.ones(1, 1, 4, 4, dtype=torch.bool))
    assert scores.aggregate()["pixel_auc"] is None, "one class only: the AUC is undefined"
    with pytest.raises(ValueError, match="bins"):
        PixelScores(bins=1)
    with pytest.raises(ValueError, match="score_range"):
        PixelScores(score_range=0)
    with pytest.raises(ValueError, match="differ in shape"):
        binned_roc_auc(torch.ones(3), torch.ones(4))

"""Pixel-level scores of a segmentation exploiter that Dice alone hides.

Dice and Jaccard of an exploiter trained on a protected copy do not fall to zero when it learned nothing
about the anatomy: a network that marks some share ``p`` of every clean image as foreground at places
unrelated to the mask (foreground share ``q``) still overlaps it by chance, for an expected Dice of about
``2pq / (p + q)`` (``p = 12 %`` against ``q = 15 %``: about 13 %). Two scores separate the two cases:

- the pixel ROC AUC of the foreground score (log-odds) over all test pixels: 50 % when the score is no
  higher inside the masks than outside them, whatever the share predicted;
- the share of test pixels predicted foreground, which with the mask share gives that chance overlap.

:class:`PixelScores` accumulates both over batches in fixed memory (a histogram of scores per class), so
a test split of any size costs the same.
"""

from __future__ import annotations

import torch

__all__ = ["PixelScores", "binned_roc_auc"]


def binned_roc_auc(positive_counts: torch.Tensor, negative_counts: torch.Tensor) -> float | None:
    """ROC AUC from histograms of the scores of positives and negatives over the same bins.

    Pairs in one bin count as ties (one half): exact when scores in a bin are equal, otherwise off by at
    most half the share of (positive, negative) pairs that share a bin.

    Args:
        positive_counts: ``(bins,)`` counts of positive items per score bin, bins in increasing order.
        negative_counts: ``(bins,)`` counts of negative items per score bin.

    Returns:
        The AUC in [0, 1], or ``None`` when either class is empty.

    Raises:
        ValueError: when the two histograms differ in shape.
    """
    if positive_counts.shape != negative_counts.shape:
        shapes = f"{tuple(positive_counts.shape)} vs {tuple(negative_counts.shape)}"
        raise ValueError(f"histograms differ in shape: {shapes}")
    positives = positive_counts.double()
    negatives = negative_counts.double()
    total_positive, total_negative = positives.sum(), negatives.sum()
    if total_positive == 0 or total_negative == 0:
        return None
    negatives_below = torch.cumsum(negatives, 0) - negatives
    wins = (positives * (negatives_below + 0.5 * negatives)).sum()
    return float(wins / (total_positive * total_negative))


class PixelScores:
    """Pixel ROC AUC of the foreground score and the predicted foreground share, over batches.

    Scores are foreground log-odds (for a two-class softmax: ``logits[:, 1] - logits[:, 0]``), binned over
    ``[-score_range, +score_range]`` (beyond it: the end bins). Log-odds rather than probabilities, because a
    confident network puts most pixels within 1e-3 of probability 0 or 1, where probability bins would tie them.

    Args:
        bins: histogram bins (default 4000: 0.01 log-odds wide over the default range).
        score_range: half-width of the binned log-odds range.

    Raises:
        ValueError: for fewer than 2 bins or a non-positive range.

    Example::

        scores = PixelScores()
        for images, masks in loader:
            logits = net(images)
            scores.update(logits[:, 1:2] - logits[:, 0:1], masks > 0.5)
        scores.aggregate()  # {"pixel_auc": ..., "predicted_share": ..., "mask_share": ...} in percent
    """

    def __init__(self, bins: int = 4000, score_range: float = 20.0) -> None:
        if int(bins) < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        if not float(score_range) > 0:
            raise ValueError(f"score_range must be > 0, got {score_range}")
        self.bins = int(bins)
        self.score_range = float(score_range)
        self.reset()

    def reset(self) -> None:
        """Forget all batches."""
        self.positive = torch.zeros(self.bins, dtype=torch.float64)
        self.negative = torch.zeros(self.bins, dtype=torch.float64)
        self.predicted = 0

    def update(self, log_odds: torch.Tensor, mask: torch.Tensor) -> None:
        """Add a batch.

        Args:
            log_odds: foreground log-odds per pixel (> 0: predicted foreground), any shape.
            mask: the true foreground (bool or 0/1), same shape.

        Raises:
            ValueError: when the shapes differ.
        """
        if log_odds.shape != mask.shape:
            raise ValueError(f"scores {tuple(log_odds.shape)} and mask {tuple(mask.shape)} differ in shape")
        values = log_odds.detach().float().reshape(-1).cpu()
        truth = mask.detach().reshape(-1).cpu().bool()
        unit = (values.clamp(-self.score_range, self.score_range) + self.score_range) / (2 * self.score_range)
        index = (unit * self.bins).long().clamp(0, self.bins - 1)
        self.positive += torch.bincount(index[truth], minlength=self.bins).double()
        self.negative += torch.bincount(index[~truth], minlength=self.bins).double()
        self.predicted += int((values > 0).sum())

    def aggregate(self) -> dict[str, float | None]:
        """``{"pixel_auc", "predicted_share", "mask_share"}`` in percent (``pixel_auc`` ``None`` if undefined)."""
        total = float(self.positive.sum() + self.negative.sum())
        auc = binned_roc_auc(self.positive, self.negative)
        return {
            "pixel_auc": None if auc is None else 100.0 * auc,
            "predicted_share": 100.0 * self.predicted / total if total else 0.0,
            "mask_share": 100.0 * float(self.positive.sum()) / total if total else 0.0,
        }

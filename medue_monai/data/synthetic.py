"""A synthetic classification set made in-process (no download), for the demo and the tests."""

from __future__ import annotations

import numpy as np

from .classification import ClassificationSource, load_classification_source

__all__ = ["make_synthetic_classification"]


def _draw_images(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw grey ``(N, size, size)`` uint8 images whose shape depends on the label.

    Class 0: a disk; class 1: a ring; class 2: a square; further classes repeat with thinner
    outlines. Positions, radii, brightness and background noise vary per image, so a
    classifier must learn the shape rather than a fixed pixel.
    """
    n = labels.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy = rng.uniform(0.35, 0.65, n)[:, None, None] * size
    cx = rng.uniform(0.35, 0.65, n)[:, None, None] * size
    radius = rng.uniform(0.18, 0.28, n)[:, None, None] * size
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    cheb = np.maximum(np.abs(yy - cy), np.abs(xx - cx))
    shape = labels % 3
    thin = 1.0 + (labels // 3)
    disk = dist <= radius
    square = cheb <= radius * 0.85
    ring = np.abs(dist - radius) <= 1.5 / thin[:, None, None]
    mask = np.where(shape[:, None, None] == 0, disk, np.where(shape[:, None, None] == 1, ring, square))
    # low contrast under strong noise, like many medical images: the shape is learnable but not instantly
    background = rng.uniform(60, 120, n)[:, None, None]
    foreground = background + rng.uniform(25, 45, n)[:, None, None]
    images = np.where(mask, foreground, background) + rng.normal(0, 20, (n, size, size))
    return np.clip(images, 0, 255).astype(np.uint8)


def make_synthetic_classification(
    num_train: int = 400,
    num_val: int = 80,
    num_test: int = 200,
    size: int = 28,
    num_classes: int = 2,
    seed: int = 0,
) -> ClassificationSource:
    """Make a MedMNIST-shaped synthetic classification set.

    Args:
        num_train: training images.
        num_val: validation images.
        num_test: test images.
        size: image side in pixels.
        num_classes: number of classes (shapes cycle disk/ring/square).
        seed: random seed; the same seed gives the same arrays.

    Returns:
        A :class:`ClassificationSource` named ``synthetic`` with uint8 grey images.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", num_train), ("val", num_val), ("test", num_test)):
        labels = rng.integers(0, num_classes, count)
        arrays[f"{split}_images"] = _draw_images(labels, size, rng)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.int64)
    return load_classification_source(arrays, name="synthetic")

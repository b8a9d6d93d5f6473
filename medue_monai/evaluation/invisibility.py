"""Invisibility and budget metrics computed on written (quantized) images."""

from __future__ import annotations

import numpy as np
from skimage.metrics import normalized_mutual_information, peak_signal_noise_ratio, structural_similarity

__all__ = ["BudgetStats", "budget_metrics", "invisibility_metrics", "hash_similarity"]


def _as_nhwc(images: np.ndarray) -> np.ndarray:
    """Images with a trailing channel axis: ``(N, H, W, C)``, or ``(N, D, H, W, 1)`` for volumes."""
    from ..data.classification import image_layout

    spatial_dims, _ = image_layout(images)
    return images[..., None] if images.ndim == spatial_dims + 1 else images


class BudgetStats:
    """L-inf, per-image L2 and L0 of ``protected - clean`` in [0, 1] units, accumulated chunk by chunk (a set of any
    size is measured in the memory of one chunk).

    Args:
        max_value: the value mapped to 1.0 (255 for uint8).
    """

    def __init__(self, max_value: float = 255.0) -> None:
        self.max_value = float(max_value)
        self.linf, self.l2_sum, self.l2_max, self.images, self.changed, self.positions = 0.0, 0.0, 0.0, 0, 0, 0

    def add(self, clean: np.ndarray, protected: np.ndarray) -> None:
        """Add a chunk of images (``(n, ...)`` in the same layout)."""
        delta = (_as_nhwc(protected).astype(np.float32) - _as_nhwc(clean).astype(np.float32)) / self.max_value
        if not delta.size:
            return
        changed = np.any(delta != 0, axis=-1)
        l2 = np.sqrt((delta.reshape(delta.shape[0], -1).astype(np.float64) ** 2).sum(axis=1))
        self.linf = max(self.linf, float(np.abs(delta).max()))
        self.l2_sum += float(l2.sum())
        self.l2_max = max(self.l2_max, float(l2.max()))
        self.images += len(l2)
        self.changed += int(changed.sum())
        self.positions += int(changed.size)

    def result(self) -> dict[str, float]:
        """``linf_max``, ``l2_mean`` / ``l2_max`` (per-image L2 norms) and ``l0_share`` (positions changed)."""
        return {
            "linf_max": self.linf,
            "l2_mean": self.l2_sum / self.images if self.images else 0.0,
            "l2_max": self.l2_max,
            "l0_share": self.changed / self.positions if self.positions else 0.0,
        }


def budget_metrics(
    clean: np.ndarray, protected: np.ndarray, max_value: float = 255.0, chunk: int = 512
) -> dict[str, float]:
    """L-inf, L2 and L0 of ``protected - clean`` in [0, 1] units (in chunks of ``chunk`` images).

    Args:
        clean: ``(N, H, W[, C])`` originals, or ``(N, D, H, W)`` volumes.
        protected: same shape, as written.
        max_value: the value mapped to 1.0 (255 for uint8).
        chunk: images per chunk.

    Returns:
        ``linf_max`` (max over all pixels), ``l2_mean`` / ``l2_max`` (per-image L2 norms), and
        ``l0_share`` (share of pixel positions where any channel changed).
    """
    stats = BudgetStats(max_value)
    for start in range(0, len(clean), chunk):
        stats.add(clean[start : start + chunk], protected[start : start + chunk])
    return stats.result()


def hash_similarity(clean: np.ndarray, protected: np.ndarray) -> dict[str, float]:
    """Mean perceptual-hash similarity in percent (100 = identical hashes): aHash, pHash, dHash."""
    import imagehash
    from PIL import Image

    scores = {"ahash": [], "phash": [], "dhash": []}
    functions = {"ahash": imagehash.average_hash, "phash": imagehash.phash, "dhash": imagehash.dhash}
    for a, b in zip(_as_nhwc(clean), _as_nhwc(protected), strict=True):
        image_a = Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a)
        image_b = Image.fromarray(b.squeeze(-1) if b.shape[-1] == 1 else b)
        for name, function in functions.items():
            hash_a, hash_b = function(image_a), function(image_b)
            scores[name].append(100.0 * (1.0 - (hash_a - hash_b) / hash_a.hash.size))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def invisibility_metrics(
    clean: np.ndarray, protected: np.ndarray, max_value: float = 255.0, hashes: bool = True
) -> dict[str, float]:
    """Mean PSNR (dB), SSIM, NMI and hash similarities between clean and protected images.

    PSNR is computed from the mean squared error over the whole set (identical images give
    ``inf``, reported as ``float('inf')``); SSIM and NMI are per-image means (skimage).

    Args:
        clean: ``(N, H, W[, C])`` originals as written (uint8).
        protected: same shape.
        max_value: data range.
        hashes: also compute aHash/pHash/dHash similarity.

    Returns:
        A dictionary with ``psnr``, ``ssim``, ``nmi`` and (optionally) ``ahash``, ``phash``, ``dhash``.
    """
    clean4, prot4 = _as_nhwc(clean), _as_nhwc(protected)
    psnr = (
        float(peak_signal_noise_ratio(clean4, prot4, data_range=max_value))
        if not np.array_equal(clean4, prot4)
        else float("inf")
    )
    channel_axis = -1
    ssim_values, nmi_values = [], []
    for a, b in zip(clean4, prot4, strict=True):
        side = min(a.shape[0], a.shape[1])
        window = min(7, side if side % 2 == 1 else side - 1)
        ssim_values.append(
            structural_similarity(a, b, data_range=max_value, channel_axis=channel_axis, win_size=window)
        )
        nmi_values.append(normalized_mutual_information(a, b, bins=64))
    result = {"psnr": psnr, "ssim": float(np.mean(ssim_values)), "nmi": float(np.mean(nmi_values))}
    if hashes and clean4.ndim == 4:  # perceptual hashes are defined for 2-D images only
        result.update(hash_similarity(clean4, prot4))
    return result

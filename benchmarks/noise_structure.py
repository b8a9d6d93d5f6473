"""How a protected MedMNIST copy's noise is structured: norms, sparsity and how class-consistent it is.

Compares the training split of a protected npz (what ``medue protect`` wrote) with the clean npz and
prints, per class and overall: the share of changed positions, the share of positive changes, the
mean L2 norm of ``delta`` in [0, 1] units, and the mean cosine similarity of the per-image deltas
within each class and between classes (1 = every image of a class carries the same pattern). With
``--block N`` it also reports, per class and per aligned ``N x N`` tile, the share of images whose noise
touches the tile and, among those, the share that give it the class's majority sign (the sign of the tile's
summed change): shares near 100 % mean the per-image noise has become one sign code per class at fixed
places. The numbers behind the "what limits SALM" notes in ``benchmarks/README.md``::

    python benchmarks/noise_structure.py --clean ../shared/data/medmnist/breastmnist.npz \\
        --protected /tmp/bench/salm_cpu_check_k100/breastmnist_salm_seed0/breastmnist.npz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medue_monai.protectors import TILE_PATTERNS, tile_pattern_field


def _check_shapes(clean: np.ndarray, protected: np.ndarray, labels: np.ndarray) -> None:
    if clean.shape != protected.shape or len(labels) != len(clean):
        raise ValueError(f"shapes differ: clean {clean.shape}, protected {protected.shape}, labels {labels.shape}")


def noise_structure(clean: np.ndarray, protected: np.ndarray, labels: np.ndarray) -> dict:
    """Statistics of ``delta = protected - clean`` (uint8 images, ``(N, H, W[, C])``).

    Args:
        clean: clean training images.
        protected: protected training images, same shape.
        labels: ``(N,)`` class indices.

    Returns:
        A dict with overall and per-class statistics (see the module docstring).

    Raises:
        ValueError: when the shapes differ.
    """
    _check_shapes(clean, protected, labels)
    delta = (protected.astype(np.float64) - clean.astype(np.float64)) / 255.0
    flat = delta.reshape(len(delta), -1)
    positions = np.abs(delta).reshape(len(delta), clean.shape[1] * clean.shape[2], -1).sum(-1) > 0
    norms = np.linalg.norm(flat, axis=1)
    unit = flat / np.clip(norms[:, None], 1e-12, None)
    similarity = unit @ unit.T
    classes = sorted(int(c) for c in np.unique(labels))
    per_class = {}
    for c in classes:
        rows = labels == c
        changed = flat[rows][flat[rows] != 0]
        within = similarity[np.ix_(rows, rows)]
        off_diagonal = (within.sum() - np.trace(within)) / max(rows.sum() * (rows.sum() - 1), 1)
        per_class[str(c)] = {
            "count": int(rows.sum()),
            "changed_positions": float(positions[rows].mean()),
            "positive_share": float((changed > 0).mean()) if changed.size else 0.0,
            "l2_mean": float(norms[rows].mean()),
            "within_class_cosine": float(off_diagonal),
        }
    pairs = [(a, b) for i, a in enumerate(classes) for b in classes[i + 1 :]]
    between = [float(similarity[np.ix_(labels == a, labels == b)].mean()) for a, b in pairs]
    return {
        "changed_positions": float(positions.mean()),
        "l2_mean": float(norms.mean()),
        "between_class_cosine": float(np.mean(between)) if between else None,
        "per_class": per_class,
    }


def tile_layout(
    clean: np.ndarray, protected: np.ndarray, labels: np.ndarray, block: int, pattern: str = "flat"
) -> dict:
    """Per class and per aligned ``block x block`` tile: how many images change it, and with which sign.

    The sign of a tile is that of its summed change times the tile pattern SALM used (``pattern``, see
    :func:`medue_monai.protectors.tile_pattern_field`): for ``"checker"`` tiles, the checkerboard's phase.

    Args:
        clean: clean training images, uint8 ``(N, H, W[, C])``.
        protected: protected training images, same shape.
        labels: ``(N,)`` class indices.
        block: tile side in pixels, >= 1 (tiles cut by the right or bottom border are left out).
        pattern: ``"flat"`` or ``"checker"``.

    Returns:
        ``{"block": block, "pattern": pattern, "per_class": {class: {"used_share": rows x cols,
        "majority_sign": rows x cols of +1 / -1 / 0, "majority_sign_share": rows x cols (None where no image
        changes the tile)}}}``.

    Raises:
        ValueError: when the shapes differ or ``block`` is not in [1, min(H, W)].
    """
    _check_shapes(clean, protected, labels)
    height, width = clean.shape[1:3]
    if not 1 <= block <= min(height, width):
        raise ValueError(f"block must be in [1, {min(height, width)}], got {block}")
    delta = protected.astype(np.int64) - clean.astype(np.int64)
    delta = (
        delta.reshape(len(delta), height, width, -1).sum(-1)
        * tile_pattern_field(height, width, pattern=pattern)[0, 0].numpy()
    )
    rows, cols = height // block, width // block
    tiles = delta[:, : rows * block, : cols * block].reshape(len(delta), rows, block, cols, block)
    touched = (tiles != 0).any(axis=(2, 4))
    sign = np.sign(tiles.sum(axis=(2, 4)))
    per_class = {}
    for c in sorted(int(c) for c in np.unique(labels)):
        used, signs = touched[labels == c], sign[labels == c]
        positive = ((signs > 0) & used).sum(0)
        negative = ((signs < 0) & used).sum(0)
        count = used.sum(0)
        share = np.where(count > 0, np.maximum(positive, negative) / np.maximum(count, 1), np.nan)
        per_class[str(c)] = {
            "used_share": used.mean(0).round(4).tolist(),
            "majority_sign": np.sign(positive - negative).astype(int).tolist(),
            "majority_sign_share": [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in share],
        }
    return {"block": block, "pattern": pattern, "per_class": per_class}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", required=True, help="clean MedMNIST .npz (required)")
    parser.add_argument("--protected", required=True, help="protected .npz written by medue protect (required)")
    parser.add_argument(
        "--block",
        type=int,
        default=0,
        help="also report per-class use and sign of every aligned BLOCK x BLOCK tile (default 0: no tile report)",
    )
    parser.add_argument(
        "--pattern",
        choices=TILE_PATTERNS,
        default="flat",
        help="with --block: the tile pattern SALM used (its `pattern` option); a tile's sign is that of its summed "
        "change times the pattern (default: flat)",
    )
    args = parser.parse_args(argv)
    for path in (args.clean, args.protected):
        if not Path(path).is_file():
            raise SystemExit(f"error: {path}: no such file")
    clean_npz, protected_npz = np.load(args.clean), np.load(args.protected)
    # an NpzFile reads its member from disk on every access: read each once
    clean, protected = clean_npz["train_images"], protected_npz["train_images"]
    labels = clean_npz["train_labels"].reshape(-1)
    stats = noise_structure(clean, protected, labels)
    if args.block:
        stats["tiles"] = tile_layout(clean, protected, labels, args.block, args.pattern)
    print(json.dumps(stats, indent=2))
    return stats


if __name__ == "__main__":
    main()

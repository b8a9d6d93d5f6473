"""How loud a +-eps tile is next to the images under it: flat offsets against checkerboards.

SALM with ``block > 1`` spends its K% budget on aligned ``block x block`` tiles, each carrying one signed value
times a fixed pattern (``pattern="flat"``: a constant offset; ``pattern="checker"``: a checkerboard). A network
can only read a tile's sign on an unseen image if the tile stands out from what that image already holds at
the same place in the same shape. For each aligned tile (away from the border) this script reports, over the
training images of a MedMNIST ``.npz``:

- ``flat``: the std over images of the tile's mean minus the mean of its four neighbouring tiles (the local
  contrast a flat offset competes with), as a multiple of ``eps``;
- ``checker``: the std over images of the tile's mean of ``image * checkerboard`` (the image's own component
  along the pattern), as a multiple of ``eps``.

A ratio well below 1 means the pattern is louder than anything the images put there. Example::

    python benchmarks/tile_contrast.py --npz ../shared/data/medmnist/breastmnist.npz --block 4 \\
        --output benchmarks/results/tile_contrast_breastmnist.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medue_monai.protectors import tile_pattern_field  # noqa: E402
from medue_monai.utils import parse_fraction  # noqa: E402


def tile_contrast(images: np.ndarray, block: int, eps: float) -> dict[str, object]:
    """Per-tile std over images of the flat and checkerboard components, in units of ``eps``.

    Args:
        images: ``(N, H, W)`` or ``(N, H, W, C)`` uint8 images (channels are averaged).
        block: tile side; the image is cut into whole aligned tiles (a partial last row/column is dropped).
        eps: the perturbation amplitude in [0, 1] units.

    Returns:
        ``{"flat": rows x cols list (inner tiles only), "checker": rows x cols list, "flat_range": [min, max],
        "checker_range": [min, max]}``.

    Raises:
        ValueError: when the images hold fewer than 3 x 3 whole tiles.
    """
    array = torch.as_tensor(images, dtype=torch.float32) / 255.0
    if array.ndim == 4:
        array = array.mean(dim=-1)
    rows, cols = array.shape[1] // block, array.shape[2] // block
    if rows < 3 or cols < 3:
        raise ValueError(f"images of {tuple(array.shape[1:])} hold fewer than 3 x 3 tiles of {block}")
    array = array[:, : rows * block, : cols * block]
    field = tile_pattern_field(rows * block, cols * block, pattern="checker")[0, 0]
    tiles = array.reshape(-1, rows, block, cols, block)
    means = tiles.mean(dim=(2, 4))
    neighbours = (means[:, :-2, 1:-1] + means[:, 2:, 1:-1] + means[:, 1:-1, :-2] + means[:, 1:-1, 2:]) / 4
    flat = (means[:, 1:-1, 1:-1] - neighbours).std(dim=0) / eps
    checker = (array * field).reshape(-1, rows, block, cols, block).mean(dim=(2, 4))[:, 1:-1, 1:-1].std(dim=0) / eps
    return {
        "flat": flat.round(decimals=3).tolist(),
        "checker": checker.round(decimals=3).tolist(),
        "flat_range": [round(float(flat.min()), 3), round(float(flat.max()), 3)],
        "checker_range": [round(float(checker.min()), 3), round(float(checker.max()), 3)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", required=True, help="a MedMNIST-style .npz with train_images (required)")
    parser.add_argument("--block", type=int, default=4, help="tile side in pixels (default: 4)")
    parser.add_argument("--eps", default="8/255", help="perturbation amplitude, e.g. 8/255 (default: 8/255)")
    parser.add_argument("--output", default=None, help="also write the result as JSON here (default: print only)")
    args = parser.parse_args(argv)
    path = Path(args.npz)
    if not path.is_file():
        print(f"error: {path}: no such file", file=sys.stderr)
        return 2
    with np.load(path) as data:
        if "train_images" not in data:
            print(f"error: {path}: no train_images array", file=sys.stderr)
            return 2
        images = data["train_images"]
    try:
        result = tile_contrast(images, args.block, parse_fraction(args.eps))
    except ValueError as error:
        print(f"error: {path}: {error}", file=sys.stderr)
        return 2
    result = {"npz": str(path), "block": args.block, "eps": args.eps, "images": int(len(images)), **result}
    text = json.dumps(result, indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

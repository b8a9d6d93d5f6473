"""One-off check (session 25): release SALM's noise only on the images whose anatomy agrees with their label.

Hypothesis: an exploiter fits SALM's code within a few epochs and then keeps learning, because Adam takes
full-size steps along any direction whose gradient keeps its sign, however small the loss. After the code is
fitted, what is left of the gradient comes from the samples the code fits worst. If the images whose anatomy
points to the other class (the ones a clean model gets wrong out of fold) carry no code, those are the samples
left, and what they teach is the inverted anatomy ("looks benign, is malignant"), which a clean test image then
meets. This script tests that on a written copy, without touching the protector:

1. out-of-fold predictions of a small network (``--network``, Adam 1e-3, ``--epochs``) trained on the CLEAN
   training split in ``--folds`` folds;
2. "hard" images: those whose out-of-fold probability of their own label is below ``--threshold``;
3. a copy of the ``medue protect`` folder ``--protected`` in which the hard images are replaced by their clean
   originals (everything else byte for byte), written to ``--out``; ``--out/hard_images.json`` records the
   indices, the out-of-fold accuracy and the per-class counts.

Judge the copy with ``benchmarks/exploiter_seeds.py --protected OUT ...``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medue_monai.io import protector_path
from medue_monai.nets import get_classifier
from medue_monai.pipeline.release import open_release, resolve_clean_source


def out_of_fold_probability(images: np.ndarray, labels: np.ndarray, args) -> np.ndarray:
    """Probability of each image's own label from a network that never saw the image."""
    generator = np.random.default_rng(args.seed)
    order = generator.permutation(len(images))
    folds = np.array_split(order, args.folds)
    x = torch.as_tensor(images, dtype=torch.float32) / 255.0
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    y = torch.as_tensor(labels, dtype=torch.long)
    num_classes = int(labels.max()) + 1
    probability = np.zeros(len(images), dtype=np.float64)
    for fold_index, held_out in enumerate(folds):
        torch.manual_seed(args.seed + fold_index)
        train = np.setdiff1d(order, held_out)
        network = get_classifier(args.network, x.shape[1], num_classes, x.shape[-1])
        optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
        for _ in range(args.epochs):
            network.train()
            for batch in torch.as_tensor(train)[torch.randperm(len(train))].split(64):
                optimizer.zero_grad()
                F.cross_entropy(network(x[batch]), y[batch]).backward()
                optimizer.step()
        network.eval()
        with torch.no_grad():
            held = torch.as_tensor(held_out)
            probs = network(x[held]).softmax(1)
            probability[held_out] = probs[torch.arange(len(held)), y[held]].numpy()
        print(f"fold {fold_index + 1}/{args.folds}: held-out accuracy {(probability[held_out] > 0.5).mean():.4f}")
    return probability


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protected", required=True, help="a `medue protect` output folder")
    parser.add_argument("--out", required=True, help="new folder for the re-released copy")
    parser.add_argument("--folds", type=int, default=5, help="folds (default: 5)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per fold (default: 20)")
    parser.add_argument("--network", default="smallcnn", help="out-of-fold network (default: smallcnn)")
    parser.add_argument("--threshold", type=float, default=0.5, help="hard below this probability (default: 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    args = parser.parse_args()

    protected = Path(args.protected)
    manifest, private = open_release(protected)
    released = dict(np.load(protected / manifest["dataset"]["file"]))
    clean = np.load(resolve_clean_source(manifest, private)[0])
    clean_images = clean["train_images"]
    labels = clean["train_labels"].reshape(-1)
    if clean_images.shape != released["train_images"].shape:
        raise SystemExit(f"{protected}: train split shape differs from {private['source']}")

    probability = out_of_fold_probability(clean_images, labels, args)
    hard = np.flatnonzero(probability < args.threshold)
    released["train_images"] = released["train_images"].copy()
    released["train_images"][hard] = clean_images[hard]

    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists")
    shutil.copytree(protected, out)
    shutil.copyfile(protector_path(protected), protector_path(out))  # evaluate finds the clean source through it
    np.savez_compressed(out / manifest["dataset"]["file"], **released)
    record = {
        "protected": str(protected),
        "options": vars(args),
        "out_of_fold_accuracy": float((probability >= 0.5).mean()),
        "hard_indices": hard.tolist(),
        "hard_per_class": {str(c): int((labels[hard] == c).sum()) for c in np.unique(labels)},
        "images_per_class": {str(c): int((labels == c).sum()) for c in np.unique(labels)},
    }
    (out / "hard_images.json").write_text(json.dumps(record, indent=2))
    print(json.dumps({k: v for k, v in record.items() if k != "hard_indices"}, indent=2))


if __name__ == "__main__":
    main()

"""One-off check (session 18): where SALM's released tiles sit, and how far they form one code per class.

Loads a fitted SALM protector (``.protector.pt`` beside a benchmark work folder) and the training labels of
its MedMNIST npz, and prints, per class, the share of samples with a non-zero perturbation in each
``block x block`` tile, the mean signed perturbation of each tile (in 1/255), and, for the class's six most used
tiles, the share of the samples using each tile that give it the class's majority sign. Shares near 100 %
mean the sample-wise noise has become one code per class at fixed positions, which a
translation-invariant exploiter (global average pooling) has to read from absolute positions. Run of record:
2026-11-24, CPU, output ``results/salm_cpu_block4_noise_layout_seed0.log``::

    python benchmarks/oneoff/salm_noise_layout.py /tmp/bench/salm_block4/breastmnist_salm_seed0.protector.pt \
        ../shared/data/medmnist/breastmnist.npz
"""

import sys

import numpy as np
import torch

from medue_monai.protectors import load_protector

protector = load_protector(sys.argv[1], device="cpu")
labels = np.load(sys.argv[2])["train_labels"].reshape(-1)
block = protector.block
delta = protector.delta[
    :, :, : protector.delta.shape[-2] // block * block, : protector.delta.shape[-1] // block * block
]
rows, cols = delta.shape[-2] // block, delta.shape[-1] // block
tiles = delta.sum(1).reshape(len(delta), rows, block, cols, block).mean((2, 4)) * 255  # (N, rows, cols) in 1/255
print(f"protector {sys.argv[1]}: {len(delta)} deltas, block {block}, tiles {rows}x{cols}")
for label in np.unique(labels):
    chosen = tiles[torch.as_tensor(labels == label)]
    used = (chosen != 0).float().mean(0)
    print(f"\nclass {label}: {len(chosen)} samples; share of samples with a non-zero tile (%):")
    print((used * 100).round().int().numpy())
    print("mean signed tile value (1/255):")
    print(chosen.mean(0).numpy().round(1))
    top = torch.topk(used.flatten(), 6).indices
    for tile in top.tolist():
        values = chosen.flatten(1)[:, tile]
        values = values[values != 0]
        if len(values) == 0:
            continue
        majority = max(int((values > 0).sum()), int((values < 0).sum()))
        print(
            f"tile {tile} (row {tile // cols}, col {tile % cols}): used by {len(values)} samples, "
            f"{majority / len(values) * 100:.1f} % of them with the majority sign {'+' if values.mean() > 0 else '-'}"
        )

"""docs/monai_pipeline.md: UMedProtectd inside a typical MONAI pipeline (load, channel-first, scale, resize,
CacheDataset with workers), eagerly and with lazy resampling."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import CacheDataset
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized, ScaleIntensityd

from medue_monai.data.segmentation import make_synthetic_segmentation
from medue_monai.pipeline import protect
from medue_monai.protectors import dilate_mask
from medue_monai.protectors.masks import contour_radius
from medue_monai.transforms import UMedProtectd


def _pipeline(protector_file, lazy: bool, protect_it: bool = True) -> Compose:
    transforms = [
        LoadImaged(["image", "label"], image_only=True),
        EnsureChannelFirstd(["image", "label"]),
        ScaleIntensityd("image"),
        ScaleIntensityd("label"),
        Resized(["image", "label"], (32, 32), mode=("bilinear", "nearest")),
    ]
    if protect_it:
        transforms.append(UMedProtectd("image", str(protector_file), label_key="label", device="cpu"))
    return Compose(transforms, lazy=lazy)


def test_umed_protectd_in_a_cached_monai_pipeline(tmp_path) -> None:
    source = make_synthetic_segmentation(tmp_path / "data", num_items=8, size=48, seed=0)
    protect(str(source), tmp_path / "release", "umed", {"epochs": 1}, spatial_size=32, device="cpu", progress=False)
    protector_file = tmp_path / "release.protector.pt"
    items = [{"image": str(p), "label": str(source / "masks" / p.name)} for p in sorted((source / "images").iterdir())]

    eps = 4 / 255
    changed = 0
    for lazy in (False, True):
        cached = CacheDataset(items, transform=_pipeline(protector_file, lazy), num_workers=2, progress=False)
        again = CacheDataset(items, transform=_pipeline(protector_file, lazy), num_workers=0, progress=False)
        clean = CacheDataset(items, transform=_pipeline(protector_file, lazy, protect_it=False), progress=False)
        for index in range(len(items)):
            protected, original = cached[index], clean[index]
            assert protected["image"].meta["protected_by"] == "umed"
            # deterministic: another cache (other workers) holds the same protected image
            assert torch.equal(protected["image"].as_tensor(), again[index]["image"].as_tensor())
            # the pending resize ran before the protection: the change is bounded on the resized image
            delta = protected["image"].as_tensor() - original["image"].as_tensor()
            assert float(delta.abs().max()) <= eps + 1e-6
            mask = original["label"].as_tensor()[None]
            outside = 1 - dilate_mask(mask, contour_radius(32, 32))
            assert float((delta[None] * outside).abs().max()) == 0.0  # only the ROI and its contour band change
            changed += int(np.count_nonzero(delta.numpy()))
    assert changed > 0

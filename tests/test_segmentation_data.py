"""Segmentation sources, split, bad-input errors, and the protect pipeline on tiny folders and Kvasir-SEG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medue_monai.data.segmentation import (
    SegmentationDataset,
    load_segmentation_source,
    make_synthetic_segmentation,
    read_image_array,
    read_mask_array,
    split_ids,
)
from medue_monai.io.manifest import read_manifest
from medue_monai.nets import get_segmenter
from medue_monai.pipeline.segmentation import EXPLOITERS, protect_segmentation
from medue_monai.utils import MedueError

TINY = {"epochs": 1, "progress": False}


def _make_folder(root: Path, n: int = 5, mask_dir: str = "masks", grey: bool = False, empty: int = 0) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / mask_dir).mkdir()
    for i in range(n):
        height, width = 20 + i, 24 + 2 * i
        shape = (height, width) if grey else (height, width, 3)
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        mask = np.zeros((height, width), dtype=np.uint8)
        if i >= empty:
            mask[4:14, 5:17] = 255
        Image.fromarray(image).save(root / "images" / f"case{i}.png")
        Image.fromarray(mask).save(root / mask_dir / f"case{i}.png")
    return root


def test_folder_source_and_dataset(tmp_path) -> None:
    root = _make_folder(tmp_path / "d", mask_dir="labels", grey=True)
    source = load_segmentation_source(root)
    assert source.ids == [f"case{i}" for i in range(5)] and source.in_channels == 1
    item = SegmentationDataset(source.records, spatial_size=16)[2]
    assert item["image"].shape == (1, 16, 16) and item["label"].shape == (1, 16, 16)
    assert item["image"].meta["original_size"] == [22, 28] and item["image"].meta["original_channels"] == 1
    assert set(torch.unique(item["label"]).tolist()) <= {0.0, 1.0}
    assert item["image"].min() >= 0 and item["image"].max() <= 1


def test_split_is_seeded_and_disjoint() -> None:
    ids = [f"id{i:03d}" for i in range(50)]
    split = split_ids(list(reversed(ids)), seed=3)
    assert split == split_ids(ids, seed=3) and len(split["test"]) == 10
    assert set(split["train"]).isdisjoint(split["test"]) and set(split["train"]) | set(split["test"]) == set(ids)
    assert split != split_ids(ids, seed=4)


def test_datalist_source(tmp_path) -> None:
    root = _make_folder(tmp_path / "d", n=3)
    datalist = {"training": [{"image": f"images/case{i}.png", "label": f"masks/case{i}.png"} for i in range(3)]}
    path = root / "list.json"
    path.write_text(json.dumps(datalist))
    source = load_segmentation_source(path)
    assert source.kind == "datalist" and source.ids == ["case0", "case1", "case2"]
    path.write_text(json.dumps({"training": [{"image": "images/case0.png"}]}))
    with pytest.raises(MedueError, match="case0.png"):
        load_segmentation_source(path)


@pytest.mark.parametrize("problem", ["no_mask", "no_image", "size", "unreadable"])
def test_bad_inputs_name_the_file(tmp_path, problem: str) -> None:
    root = _make_folder(tmp_path / "d", n=3)
    if problem == "no_mask":
        (root / "masks" / "case1.png").unlink()
        expected = "case1.png: image has no mask"
    elif problem == "no_image":
        (root / "images" / "case1.png").unlink()
        expected = "case1.png: mask has no image"
    elif problem == "size":
        Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(root / "masks" / "case1.png")
        expected = "case1.png: mask size 5x5 differs"
    else:
        (root / "images" / "case1.png").write_bytes(b"not an image")
        expected = "case1.png: cannot read image"
    with pytest.raises(MedueError, match=expected):
        load_segmentation_source(root)
    out = tmp_path / "out"
    with pytest.raises(MedueError):
        protect_segmentation(str(root), str(out), "umed", TINY, spatial_size=16, device="cpu", progress=False)
    assert not out.exists() and not any(p.name.startswith(".out.partial") for p in tmp_path.iterdir())


def test_protect_writes_pngs_at_original_size(tmp_path) -> None:
    root = _make_folder(tmp_path / "d", n=5, empty=1)
    (root / "masks" / "case4.png").rename(root / "masks" / "case4.bmp")
    Image.open(root / "masks" / "case4.bmp").save(root / "masks" / "case4.bmp", format="BMP")
    out = tmp_path / "out"
    manifest = protect_segmentation(
        str(root), str(out), "umed", TINY, spatial_size=16, batch_size=2, device="cpu", progress=False
    )
    assert read_manifest(out)["task"] == "segmentation" and not (out / "protector.pt").exists()
    assert (tmp_path / "out.protector.pt").is_file() and manifest["protector"]["private"]
    assert manifest["counts"]["train"] == 4 and manifest["counts"]["test"] == 0
    assert manifest["held_out"]["count"] == 1 and not manifest["held_out"]["in_release"]
    assert manifest["dataset"]["resample"] == "bilinear"
    eps = manifest["budget"]["budget"]
    assert len(manifest["items"]) == 4 and len(list((out / "images").iterdir())) == 4
    for item_id, record in manifest["items"].items():
        original = read_image_array(root / "images" / f"{item_id}.png")
        written = np.array(Image.open(out / "images" / f"{item_id}.png"))
        assert written.shape == original.shape and written.dtype == np.uint8
        diff = np.abs(written.astype(int) - original.astype(int))
        assert diff.max() <= int(np.floor(255 * eps + 1e-6))
        if read_mask_array(out / record["mask"]).max() == 0:
            assert diff.max() == 0
        assert record["original_size"] == list(original.shape[:2]) and record["channels"] == 3
        source_mask = next((root / "masks").glob(f"{item_id}.*"))
        assert record["mask"] == f"masks/{item_id}{source_mask.suffix}"
        assert (out / record["mask"]).read_bytes() == source_mask.read_bytes()
    with pytest.raises(MedueError, match="already exists"):
        protect_segmentation(str(root), str(out), "umed", TINY, spatial_size=16, device="cpu", progress=False)
    with pytest.raises(MedueError, match="overlaps"):
        protect_segmentation(str(root), str(root / "x"), "umed", TINY, spatial_size=16, device="cpu", progress=False)
    with pytest.raises(MedueError, match="resample must be one of"):
        protect_segmentation(str(root), str(tmp_path / "y"), "umed", TINY, spatial_size=16, resample="cubic")
    assert not (tmp_path / "y").exists()


@pytest.mark.parametrize("method", ["lsp-seg", "ar-seg"])
def test_l2_methods_record_their_realized_norms(tmp_path, method) -> None:
    """The manifest of an L2 method records the norm, the budget and the realized L2 norms: at the working
    size within the budget, and on the written files (rescaled to the working size) close to it."""
    root = _make_folder(tmp_path / "d", n=5)
    out = tmp_path / "out"
    manifest = protect_segmentation(str(root), str(out), method, {}, spatial_size=16, device="cpu", progress=False)
    budget = manifest["budget"]
    realized = budget["realized"]
    assert budget["norm"] == "l2" and budget["budget"] > 0
    assert 0 < realized["l2_mean"] <= realized["l2_max"] <= budget["budget"] * (1 + 1e-5)
    # measured again from the written PNGs (original size, rescaled): resizing and 8-bit rounding only
    norms = []
    for item_id in manifest["items"]:
        original = read_image_array(root / "images" / f"{item_id}.png").astype(float)
        written = np.array(Image.open(out / "images" / f"{item_id}.png")).astype(float)
        norms.append(np.linalg.norm((written - original) / 255.0) * np.sqrt(16 * 16 / original[..., 0].size))
    assert realized["l2_written_max"] == pytest.approx(max(norms), rel=1e-6)
    assert realized["l2_written_mean"] == pytest.approx(np.mean(norms), rel=1e-6)
    assert max(norms) <= budget["budget"] * (1 + 1e-9) and min(norms) > 0.5 * budget["budget"]


def test_kvasir_subset(shared_data, tmp_path) -> None:
    root = shared_data / "kvasir-seg"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    out = tmp_path / "kv"
    manifest = protect_segmentation(
        str(root),
        str(out),
        "umed",
        TINY,
        limit=8,
        spatial_size=32,
        batch_size=4,
        device="cpu",
        progress=False,
    )
    assert manifest["counts"]["train"] == 8 and manifest["held_out"]["count"] == 200
    assert manifest["dataset"]["jpeg_source_count"] == 8 and "JPEG" in manifest["dataset"]["note"]
    realized = manifest["budget"]["realized"]
    assert realized["linf_max"] <= manifest["budget"]["budget"] + 1e-9 and realized["psnr"] > 40
    item_id = sorted(manifest["items"])[0]
    written = Image.open(out / "images" / f"{item_id}.png")
    original = Image.open(root / "images" / f"{item_id}.jpg")
    assert written.format == "PNG" and written.size == original.size and written.mode == "RGB"


def test_synthetic_segmentation_folder(tmp_path) -> None:
    root = make_synthetic_segmentation(tmp_path / "syn", num_items=6, size=32, seed=1)
    source = load_segmentation_source(root)
    assert len(source.ids) == 6 and source.in_channels == 1
    assert read_mask_array(source.records[0].label).max() == 1
    with pytest.raises(MedueError, match="already exists"):
        make_synthetic_segmentation(root)


def test_synthetic_segmentation_contrast(tmp_path) -> None:
    """Lower ``contrast`` gives fainter discs: a smaller foreground-background gap, same masks."""

    def gap(folder):
        images = [np.asarray(Image.open(p), dtype=float) for p in sorted((folder / "images").glob("*.png"))]
        masks = [np.asarray(Image.open(p)) > 0 for p in sorted((folder / "masks").glob("*.png"))]
        return np.mean([im[m].mean() - im[~m].mean() for im, m in zip(images, masks, strict=True)])

    bright = make_synthetic_segmentation(tmp_path / "bright", num_items=4, size=32, seed=2)
    faint = make_synthetic_segmentation(tmp_path / "faint", num_items=4, size=32, seed=2, contrast=0.1)
    for name in ("syn0000.png", "syn0003.png"):
        assert np.array_equal(
            np.asarray(Image.open(bright / "masks" / name)), np.asarray(Image.open(faint / "masks" / name))
        )
    assert gap(bright) > 100 and 0 < gap(faint) < 0.5 * gap(bright)


def test_budget_accumulator_matches_whole_set_metrics() -> None:
    """The streaming accumulator (images of different sizes) equals the metrics of the pooled pixels."""
    from medue_monai.evaluation.invisibility import budget_metrics
    from medue_monai.io.png import apply_delta
    from medue_monai.pipeline.segmentation import _BudgetAccumulator

    rng = np.random.default_rng(0)
    accumulator = _BudgetAccumulator(ssim=False)
    cleans, writtens = [], []
    for shape in ((20, 30, 3), (16, 16, 3), (25, 10)):
        clean = rng.integers(0, 256, shape, dtype=np.uint8)
        delta = torch.from_numpy(rng.uniform(-0.05, 0.05, (3, 8, 8)).astype(np.float32))
        written = apply_delta(clean, delta, 4 / 255)
        assert written.dtype == np.uint8 and written.shape == clean.shape
        assert np.abs(written.astype(int) - clean.astype(int)).max() <= 4
        accumulator.add(clean, written)
        cleans.append(clean.reshape(-1, 1) if clean.ndim == 2 else clean.reshape(-1, 3))
        writtens.append(written.reshape(-1, 1) if written.ndim == 2 else written.reshape(-1, 3))
    result = accumulator.result()
    pairs = list(zip(cleans, writtens, strict=True))
    squared = sum(float(((w.astype(float) - c.astype(float)) ** 2).sum()) for c, w in pairs)
    count = sum(c.size for c in cleans)
    assert result["psnr"] == pytest.approx(10 * np.log10(255.0**2 / (squared / count)))
    per_image = [budget_metrics(c[None, :, None], w[None, :, None]) for c, w in zip(cleans, writtens, strict=True)]
    assert result["linf_max"] == pytest.approx(max(m["linf_max"] for m in per_image))
    positions = [len(c) for c in cleans]
    share = sum(m["l0_share"] * n for m, n in zip(per_image, positions, strict=True)) / sum(positions)
    assert result["l0_share"] == pytest.approx(share)


def test_inverse_upsampling_survives_the_readers_downsampling() -> None:
    """The released full-size perturbation, shrunk as a reader shrinks it, gives back the working-size one."""
    import torch.nn.functional as F

    from medue_monai.data.segmentation import resample_image
    from medue_monai.io.png import upsample_delta

    generator = torch.Generator().manual_seed(0)
    eps = 4 / 255
    delta = torch.empty(3, 16, 16).uniform_(-eps, eps, generator=generator)  # fine detail, as a contour band has
    size = (77, 61)
    bilinear = upsample_delta(delta, size, "bilinear")
    assert torch.allclose(bilinear, F.interpolate(delta[None], size=size, mode="bilinear", align_corners=False)[0])
    inverse = upsample_delta(delta, size, "inverse", bound=eps)
    assert inverse.shape == (3, *size) and float(inverse.abs().max()) <= eps + 1e-7

    def seen_by_reader(upsampled: torch.Tensor) -> torch.Tensor:
        return resample_image(upsampled[None], (16, 16))[0]

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a * b).sum() / (a.norm() * b.norm()))

    error_bilinear = float((seen_by_reader(bilinear) - delta).norm() / delta.norm())
    error_inverse = float((seen_by_reader(inverse) - delta).norm() / delta.norm())
    assert error_inverse < 0.6 * error_bilinear, (error_inverse, error_bilinear)
    assert cosine(seen_by_reader(inverse), delta) > max(0.95, cosine(seen_by_reader(bilinear), delta) + 0.05)
    # more steps fit better; same size is the identity; a zero bound gives zeros; unknown modes are refused
    longer = upsample_delta(delta, size, "inverse", bound=eps, steps=40)
    assert float((seen_by_reader(longer) - delta).norm()) < float((seen_by_reader(inverse) - delta).norm())
    assert torch.equal(upsample_delta(delta, (16, 16), "inverse"), delta)
    assert not upsample_delta(delta, size, "inverse", bound=0.0).any()
    # without an L-inf bound (L2 methods) the enlargement keeps delta's L2 norm at the working size
    capped = upsample_delta(delta, size, "inverse")
    assert float(capped.norm()) * (16 * 16 / (size[0] * size[1])) ** 0.5 <= float(delta.norm()) * (1 + 1e-5)
    assert float(capped.norm()) < float(inverse.norm())
    with pytest.raises(MedueError, match="resample must be one of"):
        upsample_delta(delta, size, "cubic")


def test_written_file_carries_the_perturbation_to_the_reader() -> None:
    """End to end through quantization: the reader's view of the written file correlates with delta."""
    from medue_monai.data.segmentation import resize_image
    from medue_monai.io.png import apply_delta

    rng = np.random.default_rng(1)
    clean = rng.integers(30, 220, (96, 80, 3), dtype=np.uint8)
    eps = 4 / 255
    delta = torch.from_numpy(rng.choice([-eps, eps], size=(3, 16, 16)).astype(np.float32))
    views = {}
    for mode in ("inverse", "bilinear"):
        written = apply_delta(clean, delta, eps, resample=mode)
        assert np.abs(written.astype(int) - clean.astype(int)).max() <= 4
        seen = resize_image(written, 16, 3) - resize_image(clean, 16, 3)
        views[mode] = float((seen * delta).sum() / (seen.norm() * delta.norm()))
    assert views["inverse"] > max(0.93, views["bilinear"] + 0.05), views


@pytest.mark.parametrize(
    ("name", "norm_type"), [("unet", torch.nn.InstanceNorm2d), ("unet-batchnorm", torch.nn.BatchNorm2d)]
)
def test_unet_exploiters_differ_only_in_their_normalization(name: str, norm_type: type) -> None:
    network = get_segmenter(name, 3, 2, 32)
    norms = [m for m in network.modules() if isinstance(m, (torch.nn.InstanceNorm2d, torch.nn.BatchNorm2d))]
    assert norms and all(isinstance(m, norm_type) for m in norms)
    other = get_segmenter("unet-batchnorm" if name == "unet" else "unet", 3, 2, 32)
    assert [p.shape for p in network.parameters() if p.ndim > 1] == [p.shape for p in other.parameters() if p.ndim > 1]
    assert network.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 2, 32, 32)
    assert name in EXPLOITERS
    with pytest.raises(MedueError, match="unknown segmentation network"):
        get_segmenter("unet-groupnorm", 3, 2, 32)

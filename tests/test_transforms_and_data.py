"""Protect transforms in MONAI pipelines; MedMNIST/synthetic sources; io helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import DataLoader, MetaTensor
from monai.transforms import Compose, ScaleIntensityd

from medue_monai.data import load_classification_spec, load_medmnist
from medue_monai.io import atomic_output_dir, quantize_protected
from medue_monai.pipeline.classification import protect_classification
from medue_monai.protectors import SALMProtector
from medue_monai.transforms import Protectd, SALMProtect, SALMProtectD, SALMProtectd, SALMProtectDict
from medue_monai.utils import MedueError

SPEC = "synthetic:num_train=16,num_val=4,num_test=8,size=16,seed=1"


@pytest.fixture(scope="module")
def protector():
    source = load_classification_spec(SPEC)
    fitted = SALMProtector(epochs=1, device="cpu", progress=False, apply_steps=3)
    return fitted.fit(DataLoader(source.dataset("train"), batch_size=8), source.num_classes, 16)


def test_salm_protectd_in_a_monai_pipeline_keeps_meta(protector):
    source = load_classification_spec(SPEC)
    item = source.dataset("test")[2]
    pipeline = Compose([ScaleIntensityd("image", minv=0.0, maxv=1.0), SALMProtectd("image", protector)])
    out = pipeline(item)
    assert isinstance(out["image"], MetaTensor)
    assert out["image"].meta["split"] == "test" and out["image"].meta["index"] == 2
    assert out["image"].meta["protected_by"] == "salm"
    assert out["image"].shape == item["image"].shape and out["image"].dtype == torch.float32
    scaled = ScaleIntensityd("image", minv=0.0, maxv=1.0)(item)["image"]
    delta = (out["image"] - scaled).as_tensor()
    assert 0 < float(delta.abs().max()) <= 8 / 255 + 1e-6
    assert out["label"] is item["label"]


def test_dictionary_transform_aliases_and_missing_keys(protector):
    assert SALMProtectD is SALMProtectd and SALMProtectDict is SALMProtectd
    transform = SALMProtectd(["image", "other"], protector, allow_missing_keys=True)
    item = load_classification_spec(SPEC).dataset("test")[0]
    assert "other" not in transform(item)
    with pytest.raises(KeyError):
        SALMProtectd(["image", "other"], protector)(item)
    with pytest.raises(MedueError, match="no label key"):
        SALMProtectd("image", protector, label_key="y")(item)


def test_array_transform_on_batches_and_numpy(protector):
    images = torch.rand(3, 1, 16, 16)
    out = SALMProtect(protector)(images, torch.tensor([0, 1, 0]))
    assert out.shape == images.shape and float((out - images).abs().max()) <= 8 / 255 + 1e-6
    array = np.random.rand(1, 16, 16).astype(np.float32)
    protected = SALMProtect(protector)(array, 1)
    assert isinstance(protected, np.ndarray) and protected.dtype == np.float32


def test_transform_loads_saved_protector_and_checks_method(protector, tmp_path):
    path = tmp_path / "p.pt"
    protector.save(path)
    item = load_classification_spec(SPEC).dataset("test")[0]
    assert torch.allclose(
        Protectd("image", str(path), device="cpu")(item)["image"],
        SALMProtectd("image", protector)(item)["image"],
    )
    from medue_monai.protectors import LSPProtector

    lsp = LSPProtector(device="cpu", progress=False)
    source = load_classification_spec(SPEC)
    lsp.fit(DataLoader(source.dataset("train"), batch_size=8), 2, 16)
    with pytest.raises(MedueError, match="needs a salm protector"):
        SALMProtectd("image", lsp)


def test_quantize_keeps_budget_after_rounding():
    clean = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    protected = torch.from_numpy(np.moveaxis(clean, -1, 1) / 255.0 + 0.9 * 8.6 / 255).float()
    written = quantize_protected(clean, protected, 8 / 255)
    assert written.dtype == np.uint8 and written.shape == clean.shape
    assert np.abs(written.astype(int) - clean.astype(int)).max() <= 8


def test_atomic_output_dir_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError), atomic_output_dir(tmp_path / "out") as folder:
        (folder / "half.npz").write_bytes(b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_synthetic_source_is_deterministic_and_rgb_npz_works(tmp_path):
    a, b = load_classification_spec(SPEC), load_classification_spec(SPEC)
    assert np.array_equal(a.images("train"), b.images("train"))
    rng = np.random.default_rng(0)
    arrays = {f"{s}_images": rng.integers(0, 256, (6, 28, 28, 3), dtype=np.uint8) for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": rng.integers(0, 3, (6, 1)) for s in ("train", "val", "test")})
    np.savez(tmp_path / "rgb.npz", **arrays)
    source = load_medmnist(str(tmp_path / "rgb.npz"), limit=4)
    assert source.in_channels == 3 and source.images("train").shape == (4, 28, 28, 3)
    item = source.dataset("train")[1]
    assert item["image"].shape == (3, 28, 28) and item["id"] == "train/1"
    manifest = protect_classification(str(tmp_path / "rgb.npz"), tmp_path / "out", "lsp", {}, progress=False)
    with np.load(tmp_path / "out" / "rgb.npz") as npz:
        assert npz["train_images"].shape == (6, 28, 28, 3) and npz["train_images"].dtype == np.uint8
    assert manifest["budget"]["norm"] == "l2"
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["input"]["sha256"]


def test_real_medmnist_loads(shared_data):
    path = shared_data / "medmnist" / "breastmnist.npz"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    source = load_medmnist("medmnist:breastmnist", data_root=shared_data / "medmnist")
    assert source.images("train").shape == (546, 28, 28) and source.num_classes == 2
    assert source.labels("test").shape == (156, 1)
    with pytest.raises(MedueError, match="not found"):
        load_medmnist("medmnist:dermamnist", data_root=shared_data / "medmnist", download=False)


def test_evaluation_finds_a_moved_medmnist_source_under_data_root(tmp_path):
    from medue_monai.pipeline.classification import load_protected_classification

    rng = np.random.default_rng(1)
    arrays = {f"{s}_images": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8) for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": rng.integers(0, 2, (6, 1)) for s in ("train", "val", "test")})
    (tmp_path / "first").mkdir()
    np.savez(tmp_path / "first" / "tinymnist.npz", **arrays)
    protect_classification(
        "medmnist:tinymnist", tmp_path / "out", "lsp", {}, data_root=str(tmp_path / "first"), progress=False
    )
    (tmp_path / "first").rename(tmp_path / "moved")
    with pytest.raises(MedueError, match="tinymnist"):
        load_protected_classification(tmp_path / "out")
    _, protected, clean = load_protected_classification(tmp_path / "out", data_root=str(tmp_path / "moved"))
    assert np.array_equal(clean.images("train"), arrays["train_images"])
    assert protected["train_images"].shape == arrays["train_images"].shape


def test_chunked_npz_entries_read_back_as_the_whole_array(tmp_path) -> None:
    from medue_monai.io.npz import ChunkedArray, write_npz

    rng = np.random.default_rng(0)
    whole = rng.integers(0, 256, (10, 4, 5), dtype=np.uint8)
    chunks = ChunkedArray(whole.shape, whole.dtype, (whole[i : i + 3] for i in range(0, 10, 3)))
    write_npz(tmp_path / "a.npz", {"images": chunks, "labels": np.arange(10, dtype=np.int16)})
    with np.load(tmp_path / "a.npz") as npz:
        assert np.array_equal(npz["images"], whole) and npz["labels"].dtype == np.int16
    short = ChunkedArray((11, 4, 5), whole.dtype, iter([whole]))
    with pytest.raises(ValueError, match="10 rows"):
        write_npz(tmp_path / "b.npz", {"images": short})

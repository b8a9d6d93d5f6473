"""NIfTI volumes: sources, 3-D UMed releases that keep every header byte, dtype and affine, native budgets on
the WRITTEN files, multi-class label maps, bad inputs, and the 3-D evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medue_monai.cli import main
from medue_monai.data.volumes import load_volume_source, parse_intensity
from medue_monai.pipeline import protect
from medue_monai.pipeline.segmentation import evaluate_segmentation
from medue_monai.protectors import dilate_mask
from medue_monai.utils import MedueError

CPU = {"device": "cpu", "progress": False}


def _volume(shape, dtype, rng, big_endian=False):
    if np.issubdtype(dtype, np.integer):
        data = rng.integers(10, 120, size=shape).astype(dtype)
    else:
        data = rng.uniform(0, 1500, size=shape).astype(dtype)
    return data.astype(data.dtype.newbyteorder(">")) if big_endian else data


def _msd(root: Path, n: int = 6, classes: int = 2, slope: bool = False) -> Path:
    """An MSD-style folder: dataset.json, imagesTr/, labelsTr/ with mixed dtypes and a 0/1/2 label map."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    entries = []
    for i in range(n):
        shape = (14 + i % 3, 18, 12 + i % 2)
        dtype = (np.uint8, np.float32, np.int16)[i % 3]
        data = _volume(shape, dtype, rng, big_endian=(i % 3 == 2))
        affine = np.diag([1.0, 1.2, 2.0, 1.0])
        affine[:3, 3] = (i, 1, 2)
        image = nib.Nifti1Image(data, affine)
        image.header["descrip"] = b"test volume"
        image.header.set_xyzt_units("mm", "sec")
        if slope and dtype == np.int16:
            image.header.set_slope_inter(2.0, -10.0)
        labels = np.zeros(shape, np.uint8)
        labels[4:10, 5:12, 3:9] = 1
        if classes > 1:
            labels[4:10, 5:8, 3:9] = 2
        name = f"vol_{i:03d}.nii.gz"
        nib.save(image, root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(labels, affine), root / "labelsTr" / name)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "dataset.json").write_text(json.dumps({"name": "test", "training": entries}))
    return root


def _check_release(source_root: Path, out: Path, eps_native: float) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    for item_id, entry in manifest["items"].items():
        original = nib.load(source_root / "imagesTr" / f"{item_id}.nii.gz")
        written = nib.load(out / entry["image"])
        assert written.header.binaryblock == original.header.binaryblock, item_id  # every header field kept
        assert written.get_data_dtype() == original.get_data_dtype() and np.array_equal(written.affine, original.affine)
        before = np.asanyarray(original.dataobj).astype(np.float64)  # native units (scl_slope applied)
        after = np.asanyarray(written.dataobj).astype(np.float64)
        change = np.abs(after - before)
        assert change.max() > 0, f"{item_id} unchanged"
        assert change.max() <= eps_native, (item_id, change.max())
        labels = np.asanyarray(nib.load(source_root / "labelsTr" / f"{item_id}.nii.gz").dataobj)
        roi = torch.from_numpy((labels > 0).astype(np.float32))[None, None]
        allowed = dilate_mask(roi, manifest["region"]["working_radius"])[0, 0].numpy() > 0
        assert not (change[~allowed] > 0).any(), f"{item_id}: changed outside the ROI and its band"
        assert (out / entry["label"]).read_bytes() == (source_root / "labelsTr" / f"{item_id}.nii.gz").read_bytes()
    return manifest


def test_umed_volume_release_keeps_headers_and_the_native_budget(tmp_path) -> None:
    root = _msd(tmp_path / "msd", slope=True)
    out = tmp_path / "release"
    manifest = protect(str(root), out, "umed", {"epochs": 1, "eps": 8 / 255}, eps_native=20.0, include_test=True, **CPU)
    assert manifest["dataset"]["spatial_dims"] == 3 and manifest["dataset"]["working_size"] == [16, 32, 16]
    assert len(manifest["items"]) == 6 and manifest["budget"]["realized"]["linf_max_native"] <= 20.0
    _check_release(root, out, 20.0)
    # the release is itself an MSD folder of the protected pairs
    assert load_volume_source(out).ids == sorted(manifest["items"])


def test_scaled_integer_volumes_round_to_whole_stored_steps(tmp_path) -> None:
    """scl_slope 2: a native budget of 5 allows 2 stored steps (4 native units), never a truncated 2.5."""
    root = _msd(tmp_path / "msd", n=3, slope=True)
    out = tmp_path / "release"
    protect(str(root), out, "umed", {"epochs": 1, "eps": 64 / 255}, eps_native=5.0, include_test=True, **CPU)
    manifest = _check_release(root, out, 5.0)
    scaled = [i for i, e in manifest["items"].items() if e["dtype"] in ("int16", ">i2", "<i2")]
    assert scaled
    for item_id in scaled:
        before = np.asanyarray(nib.load(root / "imagesTr" / f"{item_id}.nii.gz").dataobj.get_unscaled())
        after = np.asanyarray(nib.load(out / f"images/{item_id}.nii.gz").dataobj.get_unscaled())
        steps = np.abs(after.astype(int) - before.astype(int))
        assert steps.max() == 2 and set(np.unique(steps)) <= {0, 1, 2}


def test_roi_classes_pick_the_region_of_a_multi_class_label_map(tmp_path) -> None:
    root = _msd(tmp_path / "msd", n=4)
    out = tmp_path / "release"
    protect(str(root), out, "umed", {"epochs": 1, "contour_only": True}, roi_classes=(2,), include_test=True, **CPU)
    manifest = json.loads((out / "manifest.json").read_text())
    for item_id, entry in manifest["items"].items():
        labels = np.asanyarray(nib.load(root / "labelsTr" / f"{item_id}.nii.gz").dataobj)
        before = np.asanyarray(nib.load(root / "imagesTr" / f"{item_id}.nii.gz").dataobj).astype(float)
        after = np.asanyarray(nib.load(out / entry["image"]).dataobj).astype(float)
        roi = torch.from_numpy((labels == 2).astype(np.float32))[None, None]
        allowed = dilate_mask(roi, manifest["region"]["working_radius"])[0, 0].numpy() > 0
        assert not (np.abs(after - before)[~allowed] > 0).any()


def test_volume_evaluation_trains_a_3d_unet_on_the_release(tmp_path) -> None:
    root = _msd(tmp_path / "msd", n=6)
    protect(str(root), tmp_path / "release", "umed", {"epochs": 1}, **CPU)
    results = evaluate_segmentation(str(tmp_path / "release"), "seg3d-quick", "unet", epochs=1, **CPU)
    assert 0.0 <= results["protected"]["dice"] <= 100.0 and results["invisibility"]["psnr"] > 30
    assert results["budget"]["linf_max"] <= 4 / 255 + 1e-6


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("four_d", "expected a 3-D volume"),
        ("nan", "NaN or infinite"),
        ("shape", "label map of shape"),
        ("affine", "on another grid"),
        ("float_labels", "non-integer"),
        ("negative_labels", "negative values"),
        ("missing_label", "does not exist"),
        ("truncated", "cannot read NIfTI"),
        ("duplicate", "duplicate id"),
        ("bad_id", "is not a plain name"),
        ("not_json", "needs a 'training' list"),
    ],
)
def test_bad_volume_inputs_are_refused_in_one_line(tmp_path, problem, message, capsys) -> None:
    root = _msd(tmp_path / "msd", n=3)
    image = root / "imagesTr" / "vol_001.nii.gz"
    label = root / "labelsTr" / "vol_001.nii.gz"
    affine = nib.load(image).affine
    if problem == "four_d":
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), affine), image)
    elif problem == "nan":
        data = np.ones((15, 18, 13), np.float32)
        data[1, 1, 1] = np.nan
        nib.save(nib.Nifti1Image(data, affine), image)
    elif problem == "shape":
        nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), affine), label)
    elif problem == "affine":
        nib.save(nib.Nifti1Image(np.asanyarray(nib.load(label).dataobj), np.eye(4) * 3), label)
    elif problem == "float_labels":
        nib.save(nib.Nifti1Image(np.full((15, 18, 13), 0.5, np.float32), affine), label)
    elif problem == "negative_labels":
        nib.save(nib.Nifti1Image(np.full((15, 18, 13), -1, np.int16), affine), label)
    elif problem == "missing_label":
        label.unlink()
    elif problem == "truncated":
        image.write_bytes(image.read_bytes()[:200])
    elif problem in ("duplicate", "bad_id"):
        content = json.loads((root / "dataset.json").read_text())
        content["training"][1]["id"] = "vol_000" if problem == "duplicate" else "../x"
        (root / "dataset.json").write_text(json.dumps(content))
    elif problem == "not_json":
        (root / "dataset.json").write_text("{not json")
    out = tmp_path / "out"
    code = main(["protect", "--method", "umed", "--data", str(root), "--out", str(out), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists() and not (tmp_path / "out.protector.pt").exists()


def test_intensity_maps_are_explicit() -> None:
    assert parse_intensity(None).describe() == "percentile:0.5,99.5"
    window = parse_intensity("window:-1000,1000")
    assert window.bounds(np.zeros(3), np.int16) == (-1000.0, 1000.0)
    assert parse_intensity("dtype").bounds(np.zeros(3), np.uint8) == (0.0, 255.0)
    for bad in ("window:5", "percentile:10,200", "cubic:1,2", "window:3,1"):
        with pytest.raises(MedueError):
            parse_intensity(bad)
    with pytest.raises(MedueError, match="integer volumes"):
        parse_intensity("dtype").bounds(np.zeros(3), np.float32)


@pytest.mark.integration
def test_umed_protects_eight_msd_hippocampus_volumes(shared_data, tmp_path) -> None:
    """The MSD layout with --eps-native 20: header field by field, dtype, affine, every volume changed, <= 20."""
    source = shared_data / "msd-hippocampus"
    if not source.is_dir():
        pytest.skip(f"{source} is absent")
    root = tmp_path / "hippo"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    content = json.loads((source / "dataset.json").read_text())
    entries = sorted(content["training"], key=lambda e: e["image"])[:8]
    for entry in entries:
        for key in ("image", "label"):
            shutil.copyfile(source / entry[key], root / entry[key])
    (root / "dataset.json").write_text(json.dumps({**content, "training": entries, "numTraining": 8}))
    out = tmp_path / "release"
    argv = ["protect", "--method", "umed", "--data", str(root), "--out", str(out), "--epochs", "1"]
    assert main([*argv, "--eps-native", "20", "--include-test", "--device", "cpu", "--no-progress"]) == 0
    manifest = _check_release(root, out, 20.0)
    assert len(manifest["items"]) == 8


def _npz3d(path: Path) -> Path:
    rng = np.random.default_rng(3)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 12, 12, 12), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8)[:, None]
    np.savez(path, **arrays)
    return path


def test_salm_protects_medmnist_3d_volumes_within_k_percent_of_voxels(tmp_path) -> None:
    from medue_monai.pipeline.classification import evaluate_classification
    from medue_monai.protectors import positions_to_keep

    data = _npz3d(tmp_path / "tiny3d.npz")
    out = tmp_path / "release"
    protect(str(data), out, "salm", {"epochs": 1, "eps": 0.03, "surrogate": "smallcnn"}, **CPU)
    limit = positions_to_keep(12**3, 10)
    with np.load(out / "tiny3d.npz") as written, np.load(data) as clean:
        assert sorted(written.files) == ["train_images", "train_labels", "val_images", "val_labels"]
        for split in ("train", "val"):
            assert written[f"{split}_images"].shape == clean[f"{split}_images"].shape
            assert written[f"{split}_images"].dtype == np.uint8 and written[f"{split}_labels"].dtype == np.uint8
            delta = written[f"{split}_images"].astype(int) - clean[f"{split}_images"].astype(int)
            touched = (delta != 0).reshape(len(delta), -1).sum(axis=1)
            assert np.abs(delta).max() <= 7 and touched.min() > 0 and touched.max() <= limit, split
    results = evaluate_classification(out, "cls3d-quick", "resnet18", epochs=1, **CPU)
    assert 0.0 <= results["protected"]["test_accuracy"] <= 100.0
    assert results["budget"]["l0_share"] <= 0.1


@pytest.mark.integration
def test_salm_protects_adrenalmnist3d(shared_data, tmp_path) -> None:
    from medue_monai.protectors import positions_to_keep

    data = shared_data / "medmnist3d" / "adrenalmnist3d.npz"
    if not data.is_file():
        pytest.skip(f"{data} is absent")
    out = tmp_path / "release"
    protect(str(data), out, "salm", {"epochs": 1}, limit=64, **CPU)
    with np.load(out / "adrenalmnist3d.npz") as written, np.load(data) as clean:
        for key in ("train_labels", "val_labels"):
            assert written[key].dtype == clean[key].dtype and written[key].shape[1:] == clean[key].shape[1:]
        delta = written["train_images"].astype(int) - clean["train_images"][:64].astype(int)
        touched = (delta != 0).reshape(64, -1).sum(axis=1)
        assert written["train_images"].shape == (64, 28, 28, 28) and np.abs(delta).max() <= 8
        assert touched.min() > 0 and touched.max() <= positions_to_keep(28**3, 10)

"""What a release holds, checked on the WRITTEN files: every image protected, budgets and regions held in the
file's own levels, dtypes kept, paths contained, nothing private or machine-specific inside."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medue_monai.cli import main
from medue_monai.data.segmentation import read_mask_array
from medue_monai.io.npz import quantize_protected
from medue_monai.pipeline.classification import evaluate_classification, protect_classification
from medue_monai.pipeline.segmentation import evaluate_segmentation, protect_segmentation
from medue_monai.protectors import dilate_mask, load_protector
from medue_monai.protectors.masks import contour_radius
from medue_monai.utils import MedueError

TINY = {"epochs": 1, "progress": False}
CPU = {"device": "cpu", "progress": False}


def _folder(root: Path, n: int = 6, size: tuple[int, int] = (24, 20), grey: bool = False, dtype=np.uint8) -> Path:
    """``images/`` + ``masks/`` with a rectangle ROI in every mask; 16-bit grey with ``dtype=np.uint16``."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    top = np.iinfo(dtype).max
    for i in range(n):
        height, width = size[0] + 2 * i, size[1] + i
        shape = (height, width) if grey or dtype == np.uint16 else (height, width, 3)
        image = rng.integers(top // 10, top - top // 10, size=shape, dtype=dtype)
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4 + i % 3] = 255
        Image.fromarray(image).save(root / "images" / f"case{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
    return root


def _npz(path: Path, labels_shape: str = "column", label_dtype=np.uint8) -> Path:
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", 16), ("val", 6), ("test", 8)):
        arrays[f"{split}_images"] = rng.integers(20, 236, (n, 16, 16), dtype=np.uint8)
        labels = (np.arange(n) % 2).astype(label_dtype)
        arrays[f"{split}_labels"] = labels[:, None] if labels_shape == "column" else labels
    np.savez(path, **arrays)
    return path


def _changed(written: np.ndarray, original: np.ndarray) -> np.ndarray:
    diff = written.astype(np.int64) - original.astype(np.int64)
    return diff if diff.ndim == 2 else np.abs(diff).max(axis=-1)


# ------------------------------------------------------------------ release semantics
def test_folder_release_holds_only_protected_images(tmp_path) -> None:
    """The held-out 20 % stay out of the release; every released image differs from its source inside its ROI."""
    root = _folder(tmp_path / "d", n=10)
    out = tmp_path / "out"
    manifest = protect_segmentation(str(root), str(out), "umed", TINY, spatial_size=16, **CPU)
    written = sorted(p.stem for p in (out / "images").iterdir())
    assert len(written) == 8 and sorted(p.stem for p in (out / "masks").iterdir()) == written
    assert manifest["held_out"] == {**manifest["held_out"], "split": "test", "count": 2, "in_release": False}
    for item_id in written:
        original = np.asarray(Image.open(root / "images" / f"{item_id}.png"))
        assert _changed(np.asarray(Image.open(out / "images" / f"{item_id}.png")), original).any(), item_id
    # the held-out ids are in the private record, not in the release
    record = torch.load(tmp_path / "out.protector.pt", weights_only=True)["record"]
    assert sorted(record["split"]["train"]) == written and len(record["split"]["test"]) == 2
    assert not set(record["split"]["test"]) & set(json.loads((out / "manifest.json").read_text())["items"])


def test_include_test_protects_the_held_out_images_too(tmp_path) -> None:
    root = _folder(tmp_path / "d", n=10)
    out = tmp_path / "out"
    manifest = protect_segmentation(str(root), str(out), "umed", TINY, spatial_size=16, include_test=True, **CPU)
    assert manifest["counts"]["train"] == 8 and manifest["counts"]["test"] == 2 and manifest["held_out"]["in_release"]
    for item_id in (p.stem for p in (root / "images").iterdir()):
        original = np.asarray(Image.open(root / "images" / f"{item_id}.png"))
        assert _changed(np.asarray(Image.open(out / "images" / f"{item_id}.png")), original).any(), item_id
    # the evaluation still trains on the training items only and tests on the clean held-out originals
    results = evaluate_segmentation(str(out), "seg-quick", "unet", epochs=1, **CPU)
    assert 0.0 <= results["protected"]["dice"] <= 100.0


def test_npz_release_protects_every_split_it_ships(tmp_path) -> None:
    data = _npz(tmp_path / "x.npz")
    out = tmp_path / "out"
    protect_classification(str(data), out, "salm", {"epochs": 1, "eps": 0.03}, **CPU)
    with np.load(out / "x.npz") as written, np.load(data) as clean:
        assert sorted(written.files) == ["train_images", "train_labels", "val_images", "val_labels"]
        for split in ("train", "val"):
            delta = written[f"{split}_images"].astype(int) - clean[f"{split}_images"].astype(int)
            assert (delta != 0).reshape(len(delta), -1).any(axis=1).all(), split
            assert np.abs(delta).max() <= 7
    out2 = tmp_path / "all"
    protect_classification(str(data), out2, "lsp", {}, include_test=True, **CPU)
    with np.load(out2 / "x.npz") as written, np.load(data) as clean:
        delta = written["test_images"].astype(int) - clean["test_images"].astype(int)
        assert (delta != 0).reshape(len(delta), -1).any(axis=1).all()


def test_npz_labels_and_untouched_arrays_keep_dtype_and_shape(tmp_path) -> None:
    for shape, dtype in (("column", np.uint8), ("flat", np.int16)):
        data = _npz(tmp_path / f"{shape}.npz", labels_shape=shape, label_dtype=dtype)
        out = tmp_path / f"out_{shape}"
        protect_classification(str(data), out, "lsp", {}, limit=10, **CPU)
        with np.load(out / f"{shape}.npz") as written, np.load(data) as clean:
            for key in ("train_labels", "val_labels"):
                assert written[key].dtype == clean[key].dtype and written[key].shape[1:] == clean[key].shape[1:]
            assert np.array_equal(written["train_labels"], clean["train_labels"][:10])
            assert np.array_equal(written["val_labels"], clean["val_labels"])
            assert written["train_images"].dtype == np.uint8 and written["train_images"].shape == (10, 16, 16)


def test_limit_counts_training_items_and_keeps_the_held_out_split(tmp_path) -> None:
    root = _folder(tmp_path / "d", n=10)
    manifest = protect_segmentation(str(root), str(tmp_path / "out"), "umed", TINY, spatial_size=16, limit=4, **CPU)
    assert manifest["counts"]["train"] == 4 and len(list((tmp_path / "out" / "images").iterdir())) == 4
    assert manifest["held_out"]["count"] == 2  # 20 % of all 10 items, as without --limit


# ------------------------------------------------------------------ what is released is what was learned
def test_em_seg_releases_the_learned_deltas(tmp_path) -> None:
    """At the working size the written change of a training image is its learned delta, quantized."""
    root = _folder(tmp_path / "d", n=5, size=(32, 32), grey=True)
    for i in range(5):  # every image 32x32 (the working size): no resampling between delta and file
        for folder in ("images", "masks"):
            path = root / folder / f"case{i}.png"
            Image.fromarray(np.asarray(Image.open(path))[:32, :32]).save(path)
    out = tmp_path / "out"
    options = {"epochs": 2, "model_steps": 1, "noise_steps": 3, "stop_error": None, "step_size": 2 / 255}
    protect_segmentation(str(root), str(out), "em-seg", options, spatial_size=32, **CPU)
    protector = load_protector(tmp_path / "out.protector.pt", device="cpu")
    record = torch.load(tmp_path / "out.protector.pt", weights_only=True)["record"]
    for index, item_id in enumerate(record["split"]["train"]):
        original = np.asarray(Image.open(root / "images" / f"{item_id}.png")).astype(np.float64)
        written = np.asarray(Image.open(out / "images" / f"{item_id}.png")).astype(np.float64)
        learned = protector.delta[index, 0].double().numpy() * 255.0
        expected = np.clip(np.rint(np.clip(original + learned, 0, 255) - original), -8, 8)
        assert np.array_equal(written - original, expected), item_id


def test_masks_that_share_a_file_name_stay_distinct(tmp_path) -> None:
    rng = np.random.default_rng(2)
    entries = []
    for i, case in enumerate(("caseA", "caseB", "caseC", "caseD")):
        folder = tmp_path / "src" / case
        folder.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / "image.png")
        mask = np.zeros((20, 20), dtype=np.uint8)
        mask[2 + i : 10 + i, 3 : 9 + 2 * i] = 255
        Image.fromarray(mask).save(folder / "mask.png")
        entries.append({"id": case, "image": f"{case}/image.png", "label": f"{case}/mask.png"})
    datalist = tmp_path / "src" / "list.json"
    datalist.write_text(json.dumps({"training": entries}))
    out = tmp_path / "out"
    manifest = protect_segmentation(str(datalist), str(out), "umed", TINY, spatial_size=16, include_test=True, **CPU)
    masks = sorted((out / "masks").iterdir())
    assert [p.name for p in masks] == [f"case{c}.png" for c in "ABCD"]
    for case in ("caseA", "caseB", "caseC", "caseD"):
        released = out / manifest["items"][case]["mask"]
        assert released.read_bytes() == (tmp_path / "src" / case / "mask.png").read_bytes()


# ------------------------------------------------------------------ paths stay inside their folders
@pytest.mark.parametrize("bad_id", ["../../escaped", "/tmp/abs", "a/b", ".hidden", "with space", ""])
def test_a_datalist_id_cannot_escape_the_release(tmp_path, bad_id) -> None:
    root = _folder(tmp_path / "d", n=3)
    entries = [{"image": f"images/case{i}.png", "label": f"masks/case{i}.png"} for i in range(3)]
    entries[1]["id"] = bad_id
    datalist = root / "list.json"
    datalist.write_text(json.dumps({"training": entries}))
    out = tmp_path / "r" / "out"
    with pytest.raises(MedueError, match="is not a plain name"):
        protect_segmentation(str(datalist), str(out), "umed", TINY, spatial_size=16, **CPU)
    assert not (tmp_path / "r").exists() and not (tmp_path / "escaped.png").exists()


def test_duplicate_ids_are_refused(tmp_path) -> None:
    root = _folder(tmp_path / "d", n=3)
    entries = [
        {"id": name, "image": f"images/case{i}.png", "label": f"masks/case{i}.png"}
        for i, name in enumerate(["a", "b", "A"])
    ]
    datalist = root / "list.json"
    datalist.write_text(json.dumps({"training": entries}))
    with pytest.raises(MedueError, match="duplicate id 'A'"):
        protect_segmentation(str(datalist), str(tmp_path / "out"), "umed", TINY, spatial_size=16, **CPU)


def test_manifest_paths_are_not_followed_outside_the_release(tmp_path) -> None:
    root = _folder(tmp_path / "d", n=5)
    out = tmp_path / "out"
    protect_segmentation(str(root), str(out), "lsp-seg", {}, spatial_size=16, **CPU)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    item = sorted(manifest["items"])[0]
    manifest["items"][item]["image"] = f"../d/images/{item}.png"  # a clean file outside the release
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(MedueError, match="outside the folder"):
        evaluate_segmentation(str(out), "seg-quick", "unet", epochs=1, **CPU)
    from medue_monai.io.paths import inside

    with pytest.raises(MedueError, match="is absolute"):
        inside(out, "/etc/passwd")
    with pytest.raises(MedueError, match="outside the folder"):
        inside(out, "images/../../x.png")


# ------------------------------------------------------------------ regions and budgets on the written files
@pytest.mark.parametrize("resample", ["bilinear", "inverse"])
def test_umed_change_stays_in_the_roi_and_its_scaled_band(tmp_path, resample) -> None:
    root = _folder(tmp_path / "d", n=5, size=(61, 47))
    out = tmp_path / "out"
    manifest = protect_segmentation(str(root), str(out), "umed", TINY, spatial_size=16, resample=resample, **CPU)
    radius = contour_radius(16, 16, base_radius=3.0)
    assert manifest["region"]["name"] == "dilated" and manifest["region"]["working_radius"] == radius
    changed_total = 0
    for item_id, entry in manifest["items"].items():
        original = np.asarray(Image.open(root / "images" / f"{item_id}.png"))
        changed = _changed(np.asarray(Image.open(out / entry["image"])), original) != 0
        mask = read_mask_array(out / entry["mask"])
        scale = max(mask.shape[0] / 16, mask.shape[1] / 16)
        allowed = dilate_mask(torch.from_numpy(mask).float()[None, None], int(np.ceil(radius * scale)))[0, 0]
        assert not (changed & (allowed.numpy() == 0)).any(), item_id
        changed_total += int(changed.sum())
    assert changed_total > 0


@pytest.mark.parametrize("method", ["em-seg-roi", "em-seg-contour"])
def test_em_seg_ablations_stay_in_their_region_at_the_original_size(tmp_path, method) -> None:
    root = _folder(tmp_path / "d", n=5, size=(90, 75))
    out = tmp_path / "out"
    options = {"epochs": 1, "model_steps": 1, "noise_steps": 2, "stop_error": None}
    manifest = protect_segmentation(str(root), str(out), method, options, spatial_size=32, **CPU)
    radius = manifest["region"]["working_radius"]
    for item_id, entry in manifest["items"].items():
        original = np.asarray(Image.open(root / "images" / f"{item_id}.png"))
        changed = _changed(np.asarray(Image.open(out / entry["image"])), original) != 0
        mask = torch.from_numpy(read_mask_array(out / entry["mask"])).float()[None, None]
        if method == "em-seg-roi":
            allowed = mask[0, 0] > 0
        else:
            scaled = int(np.ceil(radius * max(mask.shape[-2] / 32, mask.shape[-1] / 32)))
            allowed = (dilate_mask(mask, scaled) - (1 - dilate_mask(1 - mask, scaled)))[0, 0] > 0
        assert not (changed & ~allowed.numpy()).any(), item_id


def test_sixteen_bit_pngs_stay_sixteen_bit_within_the_budget(tmp_path) -> None:
    root = _folder(tmp_path / "d", n=5, dtype=np.uint16)
    out = tmp_path / "out"
    manifest = protect_segmentation(str(root), str(out), "umed", {**TINY, "eps": 0.03}, spatial_size=16, **CPU)
    limit = int(np.floor(65535 * 0.03))
    largest = 0
    for item_id, entry in manifest["items"].items():
        original = np.asarray(Image.open(root / "images" / f"{item_id}.png"))
        written = np.asarray(Image.open(out / entry["image"]))
        assert original.dtype == written.dtype == np.uint16 and entry["dtype"] == "uint16"
        largest = max(largest, int(np.abs(_changed(written, original)).max()))
    assert 255 < largest <= limit  # 16-bit levels: more than an 8-bit step, never over 65535 * eps
    assert manifest["budget"]["realized"]["linf_max"] <= 0.03


def _rgb16_png(path: Path, height: int, width: int) -> None:
    """A real 16-bit RGB PNG (Pillow cannot write one): IHDR depth 16, colour type 2, zlib-compressed rows."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    pixels = np.full((height, width, 3), 40000, dtype=">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def test_sixteen_bit_colour_pngs_are_refused_in_one_line(tmp_path) -> None:
    root = _folder(tmp_path / "d", n=3)
    _rgb16_png(root / "images" / "case1.png", *np.asarray(Image.open(root / "masks" / "case1.png")).shape)
    with pytest.raises(MedueError, match="16-bit colour PNGs are not supported"):
        protect_segmentation(str(root), str(tmp_path / "out"), "umed", TINY, spatial_size=16, **CPU)
    assert not (tmp_path / "out").exists()


def test_npz_writer_clips_to_a_budget_off_the_grid() -> None:
    """eps 0.03 is 7.65 grey levels: a change of exactly eps rounds to 8 and must be clipped to 7."""
    clean = np.full((2, 4, 4), 100, dtype=np.uint8)
    protected = torch.from_numpy(clean[:, None].astype(np.float32) / 255.0 + 0.03)
    protected[1] -= 0.06
    written = quantize_protected(clean, protected, 0.03)
    assert written.dtype == np.uint8
    assert np.array_equal(written[0], np.full((4, 4), 107)) and np.array_equal(written[1], np.full((4, 4), 93))


@pytest.mark.parametrize("method", ["lsp", "ar"])
def test_l2_methods_keep_their_budget_on_the_written_npz(tmp_path, method) -> None:
    data = _npz(tmp_path / "x.npz")
    out = tmp_path / "out"
    manifest = protect_classification(str(data), out, method, {}, include_test=True, **CPU)
    budget = manifest["budget"]["budget"]
    with np.load(out / "x.npz") as written, np.load(data) as clean:
        for split in ("train", "val", "test"):
            delta = (written[f"{split}_images"].astype(float) - clean[f"{split}_images"]) / 255.0
            norms = np.linalg.norm(delta.reshape(len(delta), -1), axis=1)
            assert norms.max() <= budget * (1 + 1e-9) and norms.min() > 0.5 * budget, split


def test_quantized_l2_change_never_exceeds_the_budget() -> None:
    from medue_monai.io.quantize import quantize_change

    rng = np.random.default_rng(3)
    clean = rng.integers(0, 256, (50, 8, 8), dtype=np.uint8)
    delta = rng.normal(size=(50, 8, 8))
    budget = 0.05
    delta *= budget / np.linalg.norm(delta.reshape(50, -1), axis=1)[:, None, None] * 1.1  # 10 % over the budget
    written = quantize_change(clean, delta, l2=budget)
    norms = np.linalg.norm((written.astype(float) - clean).reshape(50, -1), axis=1) / 255.0
    assert norms.max() <= budget * (1 + 1e-9) and norms.mean() > 0.8 * budget


# ------------------------------------------------------------------ nothing private or local in a release
def test_release_folder_is_readable_by_others_and_the_manifest_has_no_machine_paths(tmp_path) -> None:
    root = _folder(tmp_path / "d", n=5)
    out = tmp_path / "out"
    previous = os.umask(0o022)
    try:
        protect_segmentation(str(root), str(out), "umed", TINY, spatial_size=16, data_root=str(tmp_path), **CPU)
        protect_classification(str(_npz(tmp_path / "x.npz")), tmp_path / "cls", "lsp", {}, **CPU)
    finally:
        os.umask(previous)
    for release in (out, tmp_path / "cls"):
        assert stat.S_IMODE(release.stat().st_mode) == 0o755
        text = (release / "manifest.json").read_text()
        assert str(tmp_path) not in text and "/tmp" not in text
        assert not [p for p in release.rglob("*") if p.suffix == ".pt"]
    # the protector file (the key) stays private to its owner
    assert stat.S_IMODE((tmp_path / "out.protector.pt").stat().st_mode) == 0o600


def test_evaluation_finds_a_moved_release_through_its_protector(tmp_path) -> None:
    data = _npz(tmp_path / "x.npz")
    protect_classification(str(data), tmp_path / "out", "lsp", {}, **CPU)
    (tmp_path / "moved").mkdir()
    (tmp_path / "out").rename(tmp_path / "moved" / "release")
    with pytest.raises(MedueError, match="private protector file"):
        evaluate_classification(tmp_path / "moved" / "release", "cls-quick", "smallcnn", epochs=1, **CPU)
    results = evaluate_classification(
        tmp_path / "moved" / "release",
        "cls-quick",
        "smallcnn",
        epochs=1,
        protector=tmp_path / "out.protector.pt",
        **CPU,
    )
    assert results["method"] == "lsp"
    # a clean source that changed since it was protected is refused
    _npz(data, label_dtype=np.int64)
    with pytest.raises(MedueError, match="differs from the source"):
        evaluate_classification(
            tmp_path / "moved" / "release",
            "cls-quick",
            "smallcnn",
            epochs=1,
            protector=tmp_path / "out.protector.pt",
            **CPU,
        )


# ------------------------------------------------------------------ the evaluation trains and tests on the right data
def test_classification_evaluation_trains_on_the_release_and_tests_on_clean_held_out(tmp_path, monkeypatch) -> None:
    import medue_monai.pipeline.classification as pipeline

    data = _npz(tmp_path / "x.npz")
    protect_classification(str(data), tmp_path / "out", "lsp", {}, **CPU)
    seen = []

    def spy(recipe, train_images, train_labels, test_images, test_labels, *args, **kwargs):
        seen.append((train_images.copy(), train_labels.copy(), test_images.copy(), test_labels.copy()))
        return {"test_accuracy": 50.0, "curves": {"test_accuracy": [50.0]}}

    monkeypatch.setattr(pipeline, "train_exploiter", spy)
    evaluate_classification(tmp_path / "out", "cls-quick", "smallcnn", epochs=1, **CPU)
    (clean_run, protected_run) = seen
    with np.load(tmp_path / "out" / "x.npz") as release, np.load(data) as clean:
        assert np.array_equal(protected_run[0], release["train_images"])
        assert not np.array_equal(protected_run[0], clean["train_images"])
        assert np.array_equal(clean_run[0], clean["train_images"])
        for run in seen:
            assert np.array_equal(run[2], clean["test_images"]) and np.array_equal(run[3], clean["test_labels"])
            assert np.array_equal(run[1], clean["train_labels"])


def test_segmentation_evaluation_trains_on_the_release_and_tests_on_clean_held_out(tmp_path, monkeypatch) -> None:
    import medue_monai.pipeline.segmentation as pipeline

    root = _folder(tmp_path / "d", n=10)
    protect_segmentation(str(root), str(tmp_path / "out"), "lsp-seg", {}, spatial_size=16, **CPU)
    record = torch.load(tmp_path / "out.protector.pt", weights_only=True)["record"]
    seen = []

    def spy(recipe, exploiter, train, test, **kwargs):
        seen.append(([r.image for r in train.records], [r.image for r in test.records]))
        return {"dice": 1.0, "jaccard": 1.0, "pixel_auc": 0.5, "predicted_share": 0.1, "curves": {"test_dice": [1.0]}}

    monkeypatch.setattr(pipeline, "train_segmentation_exploiter", spy)
    evaluate_segmentation(str(tmp_path / "out"), "seg-quick", "unet", epochs=1, **CPU)
    (clean_train, clean_test), (protected_train, protected_test) = seen
    assert protected_train == [(tmp_path / "out" / "images" / f"{i}.png").resolve() for i in record["split"]["train"]]
    assert clean_train == [root / "images" / f"{i}.png" for i in record["split"]["train"]]
    assert clean_test == protected_test == [root / "images" / f"{i}.png" for i in record["split"]["test"]]


# ------------------------------------------------------------------ small things a user trips on
def test_demo_out_that_is_a_file_fails_in_one_line(tmp_path, capsys) -> None:
    target = tmp_path / "file.txt"
    target.write_text("mine")
    assert main(["demo", "--out", str(target), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a folder" in err and "--overwrite" not in err
    assert target.read_text() == "mine"


def test_rerun_without_resume_keeps_an_interrupted_fit(tmp_path, capsys) -> None:
    data = _npz(tmp_path / "x.npz")
    checkpoint = tmp_path / "out.protector.pt.resume"
    checkpoint.write_bytes(b"an interrupted fit")
    args = ["protect", "--method", "salm", "--data", str(data), "--out", str(tmp_path / "out"), "--epochs", "1"]
    args += ["--device", "cpu", "--no-progress"]
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err and checkpoint.read_bytes() == b"an interrupted fit"
    assert not (tmp_path / "out").exists()
    assert main([*args, "--overwrite"]) == 0 and not checkpoint.exists()


def test_one_loop_runs_every_schedule_with_history_early_stop_and_finalize() -> None:
    """fit() and BilevelTrainer are the same engine: EM's schedule and its early stop run there too."""
    from medue_monai.protectors import BilevelTrainer, EMProtector, SALMProtector

    loader = [{"image": torch.rand(4, 1, 8, 8), "label": torch.tensor([0, 1, 0, 1]), "index": torch.arange(4)}]
    em = EMProtector(epochs=5, em_model_steps=1, em_noise_steps=1, stop_error=0.99, device="cpu", progress=False)
    trainer = BilevelTrainer(em, loader, 2, 4)
    trainer.run()
    # a perturbed-train error below 0.99 stops after the first round
    assert trainer.state.epoch == 1 and len(em.history) == 1 and "perturbed_error" in em.history[0] and em.fitted
    salm = SALMProtector(epochs=2, surrogate="smallcnn", device="cpu", progress=False)
    BilevelTrainer(salm, loader, 2, 4).run()
    assert [entry["epoch"] for entry in salm.history] == [0, 1] and salm.fitted
    assert set(salm.history[0]) == {"epoch", "loss", "train_accuracy"}
    with pytest.raises(MedueError, match="not a bi-level protector"):
        from medue_monai.protectors import LSPProtector

        BilevelTrainer(LSPProtector(device="cpu"), loader, 2, 4)

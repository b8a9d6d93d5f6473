"""The bad-input catalogue (with test_cli.py, test_segmentation_data.py, test_volumes.py and test_release.py):
every case is refused by ``medue`` in one line that names the file and the problem, with a non-zero exit, no
traceback and nothing left behind."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medue_monai.cli import main


def _npz(path: Path, **overrides) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 16, 16), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1)).astype(np.uint8)
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _folder(root: Path, n: int = 4) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((20, 20), np.uint8)
        mask[5:15, 5:15] = 255
        Image.fromarray(np.full((20, 20, 3), 40 + i, np.uint8)).save(root / "images" / f"c{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"c{i}.png")
    return root


def _msd(root: Path, labels_declared: dict | None = None) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    entries = []
    for i in range(3):
        labels = np.zeros((12, 12, 12), np.uint8)
        labels[3:9, 3:9, 3:9] = 1 + i % 2
        nib.save(
            nib.Nifti1Image(np.full((12, 12, 12), 50.0 + i, np.float32), np.eye(4)), root / f"imagesTr/v{i}.nii.gz"
        )
        nib.save(nib.Nifti1Image(labels, np.eye(4)), root / f"labelsTr/v{i}.nii.gz")
        entries.append({"image": f"./imagesTr/v{i}.nii.gz", "label": f"./labelsTr/v{i}.nii.gz"})
    content = {"training": entries}
    if labels_declared is not None:
        content["labels"] = labels_declared
    (root / "dataset.json").write_text(json.dumps(content))
    return root


def _not_a_zip(d: Path) -> list[str]:
    (d / "broken.npz").write_bytes(b"this is not a zip archive")
    return ["--method", "salm", "--data", str(d / "broken.npz")]


def _float_npz(d: Path) -> list[str]:
    data = _npz(d / "float.npz", train_images=np.zeros((12, 16, 16), np.float32))
    return ["--method", "salm", "--data", str(data)]


def _five_d_npz(d: Path) -> list[str]:
    data = _npz(d / "five.npz", train_images=np.zeros((12, 4, 4, 4, 4), np.uint8))
    return ["--method", "salm", "--data", str(data)]


def _negative_labels(d: Path) -> list[str]:
    data = _npz(d / "neg.npz", train_labels=np.full((12, 1), -1, np.int64))
    return ["--method", "salm", "--data", str(data)]


def _float_labels(d: Path) -> list[str]:
    data = _npz(d / "flab.npz", train_labels=np.full((12, 1), 0.5))
    return ["--method", "salm", "--data", str(data)]


def _label_count(d: Path) -> list[str]:
    data = _npz(d / "count.npz", train_labels=np.zeros((11, 1), np.uint8))
    return ["--method", "salm", "--data", str(data)]


def _output_is_a_file(d: Path) -> list[str]:
    (d / "taken").write_text("mine")
    return ["--method", "salm", "--data", str(_npz(d / "x.npz")), "--out", str(d / "taken")]


def _protector_inside_release(d: Path) -> list[str]:
    return ["--method", "salm", "--data", str(_npz(d / "x.npz")), "--protector-out", str(d / "out" / "key.pt")]


def _mask_of_another_size(d: Path) -> list[str]:
    root = _folder(d / "seg")
    Image.fromarray(np.zeros((7, 7), np.uint8)).save(root / "masks" / "c2.png")
    return ["--method", "umed", "--data", str(root)]


def _two_files_one_stem(d: Path) -> list[str]:
    root = _folder(d / "seg")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "images" / "c1.bmp")
    return ["--method", "umed", "--data", str(root)]


def _id_with_a_space(d: Path) -> list[str]:
    root = _folder(d / "seg")
    (root / "images" / "c1.png").rename(root / "images" / "c 1.png")
    (root / "masks" / "c1.png").rename(root / "masks" / "c 1.png")
    return ["--method", "umed", "--data", str(root)]


def _empty_datalist(d: Path) -> list[str]:
    (d / "list.json").write_text(json.dumps({"training": []}))
    return ["--method", "umed", "--data", str(d / "list.json")]


def _datalist_missing_file(d: Path) -> list[str]:
    (d / "list.json").write_text(json.dumps({"training": [{"image": "nowhere.png", "label": "nowhere.png"}]}))
    return ["--method", "umed", "--data", str(d / "list.json")]


def _wrong_task(d: Path) -> list[str]:
    return ["--method", "umed", "--data", str(_npz(d / "x.npz"))]


def _empty_label_map(d: Path) -> list[str]:
    root = _msd(d / "msd")
    nib.save(nib.Nifti1Image(np.zeros((12, 12, 12), np.uint8), np.eye(4)), root / "labelsTr/v1.nii.gz")
    return ["--method", "umed", "--data", str(root)]


def _undeclared_label(d: Path) -> list[str]:
    return ["--method", "umed", "--data", str(_msd(d / "msd", labels_declared={"0": "background", "1": "roi"}))]


def _eps_native_on_images(d: Path) -> list[str]:
    return ["--method", "umed", "--data", str(_folder(d / "seg")), "--eps-native", "8"]


def _bad_window(d: Path) -> list[str]:
    return ["--method", "umed", "--data", str(_msd(d / "msd")), "--intensity", "window:5"]


def _volume_too_large(d: Path) -> list[str]:
    return ["--method", "umed", "--data", str(_msd(d / "msd")), "--volume-size", "8,8,8"]


def _negative_eps_native(d: Path) -> list[str]:
    return ["--method", "umed", "--data", str(_msd(d / "msd")), "--eps-native", "-3"]


CASES = {
    "npz that is not a zip": (_not_a_zip, "cannot read as npz"),
    "npz with float images": (_float_npz, "must be uint8"),
    "npz with 5-D images": (_five_d_npz, "expected (N,H,W)"),
    "negative class labels": (_negative_labels, "negative class indices"),
    "non-integer class labels": (_float_labels, "class labels must be integers"),
    "labels that do not match the images": (_label_count, "for 12 images"),
    "output path is a file": (_output_is_a_file, "already exists"),
    "protector inside the release": (_protector_inside_release, "outside the release folder"),
    "mask of another size": (_mask_of_another_size, "differs from its image"),
    "two files share a stem": (_two_files_one_stem, "share the stem"),
    "id with a space": (_id_with_a_space, "is not a plain name"),
    "empty datalist": (_empty_datalist, "non-empty 'training' list"),
    "datalist names a missing file": (_datalist_missing_file, "does not exist"),
    "method of the other task": (_wrong_task, "is for segmentation"),
    "empty label map": (_empty_label_map, "empty label map"),
    "label value not declared": (_undeclared_label, "not among the declared classes"),
    "native budget for 8-bit images": (_eps_native_on_images, "applies to NIfTI volumes"),
    "malformed intensity window": (_bad_window, "intensity must be"),
    "volume larger than the working size": (_volume_too_large, "exceeds the working size"),
    "negative native budget": (_negative_eps_native, "eps_native must be > 0"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_in_one_line(tmp_path, capsys, case) -> None:
    make, message = CASES[case]
    args = make(tmp_path)
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    code = main(["protect", *args, "--epochs", "1", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0, case
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*partial*"))


@pytest.mark.parametrize(
    "failure",
    [OSError(errno.ENOSPC, "No space left on device"), PermissionError(errno.EACCES, "Permission denied")],
)
def test_write_failures_are_one_line_and_leave_nothing(tmp_path, capsys, monkeypatch, failure) -> None:
    """No space left / permission denied while the release is written (simulated: a root CI ignores modes)."""
    import medue_monai.pipeline.classification as pipeline

    def failing(path, arrays):
        failure.filename = str(path)
        raise failure

    monkeypatch.setattr(pipeline, "write_npz", failing)
    out = tmp_path / "out"
    code = main(
        ["protect", "--method", "lsp", "--data", str(_npz(tmp_path / "x.npz")), "--out", str(out), "--no-progress"]
    )
    err = capsys.readouterr().err
    assert code == 1 and failure.strerror in err and "x.npz" in err and err.count("\n") == 1
    assert not out.exists() and not (tmp_path / "out.protector.pt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]

"""DICOM series in and out: a protected series copies every tag of its source except the pixel data and the
derivation / UID tags, keeps the pixel dtype and stays within the native budget; bad series are refused in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, MRImageStorage, generate_uid

from medue_monai.cli import main
from medue_monai.io.dicom import save_dataset
from medue_monai.pipeline import protect

CHANGEABLE = {"PixelData", "ImageType", "DerivationDescription", "SOPInstanceUID", "SeriesInstanceUID"}


def _slice(path: Path, pixels: np.ndarray, z: float, series_uid: str, study_uid: str, number: int) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = MRImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
    dataset.PatientName, dataset.PatientID, dataset.Modality = "Test^Patient", "TEST-001", "MR"
    dataset.InstanceNumber = number
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.PixelSpacing = [0.8, 0.8]
    dataset.SliceThickness = 2.0
    dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    dataset.ImagePositionPatient = [0.0, 0.0, z]
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    save_dataset(dataset, path, file_format=True)


def _case(root: Path, name: str, slices: int = 8, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    study = generate_uid(entropy_srcs=["study"])
    image_uid, mask_uid = generate_uid(entropy_srcs=[name, "image"]), generate_uid(entropy_srcs=[name, "mask"])
    for folder in ("images", "masks"):
        (root / folder / name).mkdir(parents=True)
    for index in range(slices):
        z = 2.0 * index
        pixels = rng.integers(200, 3000, size=(24, 20))
        mask = np.zeros((24, 20), np.uint16)
        if 2 <= index <= 5:
            mask[6:18, 5:15] = 1
        # file names in reverse order: slices are ordered by position, not by name
        file = f"{slices - index:04d}.dcm"
        _slice(root / "images" / name / file, pixels, z, image_uid, study, index + 1)
        _slice(root / "masks" / name / file, mask, z, mask_uid, study, index + 1)


def _source(root: Path) -> Path:
    _case(root, "caseA", seed=0)
    _case(root, "caseB", seed=1)
    return root


def _check(source: Path, out: Path, budget: float) -> int:
    changed = 0
    for case in ("caseA", "caseB"):
        uids = set()
        for path in sorted((source / "images" / case).iterdir()):
            before, after = pydicom.dcmread(path), pydicom.dcmread(out / "images" / case / path.name)
            keys = {e.keyword or str(e.tag) for e in before} | {e.keyword or str(e.tag) for e in after}
            for key in keys - CHANGEABLE:
                assert before.get(key) == after.get(key), (case, path.name, key)
            assert after.ImageType[0] == "DERIVED" and "umed" in after.DerivationDescription
            assert after.SOPInstanceUID != before.SOPInstanceUID
            assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
            assert after.pixel_array.dtype == before.pixel_array.dtype
            delta = np.abs(after.pixel_array.astype(int) - before.pixel_array.astype(int))
            assert delta.max() <= budget
            changed += int(np.count_nonzero(delta))
            uids.add(after.SeriesInstanceUID)
        assert len(uids) == 1 and uids != {before.SeriesInstanceUID}
        masks = sorted((source / "masks" / case).iterdir())
        assert [p.read_bytes() for p in masks] == [(out / "labels" / case / p.name).read_bytes() for p in masks]
    return changed


def test_umed_protects_dicom_series_into_dicom(tmp_path) -> None:
    source = _source(tmp_path / "src")
    out = tmp_path / "release"
    manifest = protect(
        str(source),
        out,
        "umed",
        {"epochs": 1, "eps": 16 / 255},
        eps_native=20.0,
        include_test=True,
        device="cpu",
        progress=False,
    )
    assert manifest["dataset"]["kind"] == "volume-dicom" and len(manifest["items"]) == 2
    assert _check(source, out, 20.0) > 0
    # the same run writes the same files (UIDs derived from the source UIDs and the run)
    again = tmp_path / "again"
    protect(
        str(source),
        again,
        "umed",
        {"epochs": 1, "eps": 16 / 255},
        eps_native=20.0,
        include_test=True,
        device="cpu",
        progress=False,
    )
    for path in sorted((out / "images").rglob("*.dcm")):
        assert path.read_bytes() == (again / path.relative_to(out)).read_bytes()


@pytest.mark.integration
def test_umed_protects_two_tcia_mr_series_with_their_masks(shared_data, tmp_path) -> None:
    """The PGBM-001 T1 series and its tumour mask, split into two series that both hold tumour."""
    series = shared_data / "formats" / "dicom" / "tcia-pgbm-001"
    if not series.is_dir():
        pytest.skip(f"{series} is absent")

    def along_z(path: Path) -> float:
        return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])

    images = sorted((series / "T1post").glob("*.dcm"), key=along_z)
    masks = sorted((series / "MaskTumor").glob("*.dcm"), key=along_z)
    source = tmp_path / "src"
    for name, part in (("caseA", slice(0, 18)), ("caseB", slice(17, 25))):
        for folder, files in (("images", images), ("masks", masks)):
            (source / folder / name).mkdir(parents=True)
            uid = generate_uid(entropy_srcs=[name, folder])
            for file in files[part]:
                dataset = pydicom.dcmread(file)
                dataset.SeriesInstanceUID = uid
                save_dataset(dataset, source / folder / name / file.name)
    out = tmp_path / "release"
    argv = ["protect", "--method", "umed", "--data", str(source), "--out", str(out), "--epochs", "1"]
    assert main([*argv, "--eps-native", "20", "--include-test", "--device", "cpu", "--no-progress"]) == 0
    assert _check(source, out, 20.0) > 0


def _break(root: Path, problem: str) -> None:
    folder = root / "images" / "caseA"
    files = sorted(folder.iterdir())
    if problem == "truncated":
        files[3].write_bytes(files[3].read_bytes()[:300])
    elif problem == "not_dicom":
        files[3].write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    elif problem == "no_pixels":
        dataset = pydicom.dcmread(files[3])
        del dataset.PixelData
        save_dataset(dataset, files[3])
    elif problem == "compressed":
        dataset = pydicom.dcmread(files[3])
        dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        dataset.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])  # a (tiny) JPEG frame
        save_dataset(dataset, files[3])
    elif problem == "missing_slice":
        files[4].unlink()
    elif problem == "duplicated_slice":
        shutil.copyfile(files[4], folder / "copy.dcm")
        dataset = pydicom.dcmread(folder / "copy.dcm")
        dataset.SOPInstanceUID = generate_uid()
        save_dataset(dataset, folder / "copy.dcm")
    elif problem == "mixed_series":
        dataset = pydicom.dcmread(files[2])
        dataset.SeriesInstanceUID = generate_uid()
        save_dataset(dataset, files[2])
    elif problem == "mask_grid":  # the whole mask series shifted by 1 mm: evenly spaced, but not on the grid
        for mask in sorted((root / "masks" / "caseA").iterdir()):
            dataset = pydicom.dcmread(mask)
            dataset.ImagePositionPatient = [0.0, 0.0, float(dataset.ImagePositionPatient[2]) + 1.0]
            save_dataset(dataset, mask)
    elif problem == "no_mask":
        shutil.rmtree(root / "masks" / "caseA")


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("truncated", "DICOM file"),
        ("not_dicom", "DICOM file"),
        ("no_pixels", "without PixelData"),
        ("compressed", "compressed transfer syntax"),
        ("missing_slice", "uneven slice spacing"),
        ("duplicated_slice", "duplicated slice"),
        ("mixed_series", "belongs to another series"),
        ("mask_grid", "not on the grid"),
        ("no_mask", "has no mask series"),
    ],
)
def test_bad_dicom_series_are_refused_in_one_line(tmp_path, capsys, problem, message) -> None:
    source = _source(tmp_path / "src")
    _break(source, problem)
    out = tmp_path / "out"
    code = main(["protect", "--method", "umed", "--data", str(source), "--out", str(out), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists() and not (tmp_path / "out.protector.pt").exists()

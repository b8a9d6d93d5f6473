"""The `medue` CLI: help text, bad input handled with one-line errors and no partial output."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from medue_monai.cli import main
from medue_monai.protectors import PROTECTORS
from medue_monai.utils import MedueError, parse_fraction


def _npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 16, 16), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1))
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_parse_fraction():
    assert parse_fraction("8/255") == pytest.approx(8 / 255)
    assert parse_fraction("0.5") == 0.5
    with pytest.raises(MedueError):
        parse_fraction("eight")


def test_protect_help_lists_every_method_with_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["protect", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in PROTECTORS:
        assert f"  {name} [" in text
    assert "k (default 10)" in text and "eps (default 8/255)" in text
    assert "block (default 1)" in text
    assert "0/255" not in text, "a zero default reads as 0, not as a fraction of 255"
    assert "--eps" in text and "--overwrite" in text


@pytest.mark.parametrize("command", ["protect", "evaluate", "demo"])
def test_every_option_states_its_default_once(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    section = capsys.readouterr().out.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
    entries: list[str] = []
    for line in section.splitlines():
        if re.match(r"  -", line):  # an option's first line; continuation lines are indented further
            entries.append(line.strip())
        else:
            entries[-1] += " " + line.strip()
    assert len(entries) > 5 and not any("(default: None)" in e for e in entries)
    for entry in entries:
        if entry.startswith(("-h, --help", "--method ", "--data DATA", "--out OUT", "--protected ")):
            continue  # help and the required options have no default
        assert entry.count("(default") == 1, entry


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d: ["--method", "salm", "--data", str(d / "missing.npz")], "no such file"),
        (
            lambda d: ["--method", "salm", "--data", str(_npz(d / "nokeys.npz", val_images=None))],
            "missing keys",
        ),
        (
            lambda d: ["--method", "salm", "--data", str(_npz(d / "x.npz")), "--eps", "0"],
            "--eps must be in (0, 1]",
        ),
        (
            lambda d: ["--method", "salm", "--data", str(_npz(d / "x.npz")), "--eps", "2"],
            "--eps must be in (0, 1]",
        ),
        (lambda d: ["--method", "salm", "--data", str(_npz(d / "x.npz")), "--k", "0"], "--k must be"),
        (lambda d: ["--method", "salm", "--data", str(_npz(d / "x.npz")), "--k", "150"], "--k must be"),
        (lambda d: ["--method", "nope", "--data", str(_npz(d / "x.npz"))], "unknown method"),
        (
            lambda d: [
                "--method",
                "salm",
                "--data",
                str(_npz(d / "nan.npz", train_images=np.full((12, 16, 16), np.nan))),
            ],
            "NaN",
        ),
        (
            lambda d: [
                "--method",
                "salm",
                "--data",
                str(_npz(d / "multi.npz", train_labels=np.zeros((12, 14)))),
            ],
            "multi-label",
        ),
        (lambda d: ["--method", "salm", "--data", "medmnist:chestmnist"], "multi-label"),
        (
            lambda d: ["--method", "lsp", "--data", str(_npz(d / "x.npz")), "--eps", "8/255"],
            "has no option 'eps'",
        ),
        (
            lambda d: ["--method", "salm", "--data", str(_npz(d / "x.npz")), "--option", "bogus=1"],
            "no option 'bogus'",
        ),
    ],
)
def test_protect_bad_input_is_one_line_error_without_output(tmp_path, capsys, make_args, message):
    out = tmp_path / "out"
    code = main(["protect", *make_args(tmp_path), "--out", str(out), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_protect_refuses_existing_output_without_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["protect", "--method", "lsp", "--data", str(_npz(tmp_path / "x.npz")), "--out", str(out)])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_protect_never_writes_into_the_input(tmp_path, capsys):
    data = _npz(tmp_path / "x.npz")
    code = main(["protect", "--method", "lsp", "--data", str(data), "--out", str(tmp_path), "--overwrite"])
    assert code == 2 and "overlaps the input" in capsys.readouterr().err


def test_evaluate_bad_input(tmp_path, capsys):
    assert main(["evaluate", "--protected", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_protect_and_evaluate_unknown_exploiter(tmp_path, capsys):
    data = _npz(tmp_path / "x.npz")
    out = tmp_path / "out"
    assert main(["protect", "--method", "lsp", "--data", str(data), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "12 train, 4 val images, every one protected with lsp" in printed
    assert "the 4 held-out test images are not in the release" in printed
    code = main(["evaluate", "--protected", str(out), "--exploiter", "alexnet", "--epochs", "1", "--device", "cpu"])
    assert code == 2 and "unknown exploiter" in capsys.readouterr().err


def test_console_script_runs_without_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "medue_monai.cli",
            "protect",
            "--method",
            "salm",
            "--data",
            str(tmp_path / "no.npz"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("medue protect: error:") and "Traceback" not in result.stderr


def test_protect_segmentation_folder_through_the_cli(tmp_path, capsys):
    from medue_monai.data.segmentation import make_synthetic_segmentation

    source = make_synthetic_segmentation(tmp_path / "seg", num_items=6, size=32, seed=0)
    out = tmp_path / "out"
    code = main(
        [
            "protect",
            "--method",
            "umed",
            "--data",
            str(source),
            "--out",
            str(out),
            "--spatial-size",
            "32",
            "--epochs",
            "1",
            "--resample",
            "inverse",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["images", "manifest.json", "masks"]
    assert json.loads((out / "manifest.json").read_text())["dataset"]["resample"] == "inverse"
    assert (tmp_path / "out.protector.pt").is_file()
    # 5 training images; the sixth is held out of the release to measure the protection
    assert len(list((out / "images").glob("*.png"))) == len(list((out / "masks").iterdir())) == 5


def test_fitted_protector_stays_out_of_the_release(tmp_path, capsys):
    """The protector (SALM's deltas: x = x_p - delta) never lands in the released folder."""
    from medue_monai.io import read_manifest
    from medue_monai.protectors import load_protector
    from medue_monai.utils import sha256_path

    data = _npz(tmp_path / "x.npz")
    out = tmp_path / "release"
    args = ["protect", "--method", "salm", "--data", str(data), "--out", str(out), "--epochs", "1"]
    args += ["--option", "surrogate=smallcnn", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    assert "keep it private" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "x.npz"]
    key = tmp_path / "release.protector.pt"
    record = read_manifest(out)["protector"]
    assert record["sha256"] == sha256_path(key) and record["private"] is True and "path" not in record
    assert load_protector(key, device="cpu").fitted
    # an existing protector file is not replaced without --overwrite, and nothing else is written then
    other = tmp_path / "second"
    assert main([*args[:6], str(other), *args[7:], "--protector-out", str(key)]) == 2
    assert "already exists" in capsys.readouterr().err and not other.exists()
    # the protector may not go into the release folder
    assert main([*args[:6], str(other), *args[7:], "--protector-out", str(other / "p.pt")]) == 2
    assert "outside the release folder" in capsys.readouterr().err and not other.exists()

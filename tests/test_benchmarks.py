"""The baselines benchmark script in its segmentation mode, on a tiny synthetic folder (numbers meaningless)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medue_monai.data.segmentation import make_synthetic_segmentation
from medue_monai.pipeline.segmentation import evaluate_segmentation
from medue_monai.utils import MedueError

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "baselines.py"


def _benchmark_module(name: str):
    """Import ``benchmarks/<name>.py`` (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _baselines_module():
    return _benchmark_module("baselines")


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    """One segmentation table (clean, LSP, AR) with a 1-epoch UNet exploiter."""
    root = tmp_path_factory.mktemp("bench")
    source = make_synthetic_segmentation(root / "seg", num_items=10, size=32, seed=0)
    baselines = _baselines_module()
    common = ["--data", str(source), "--recipe", "seg-quick", "--epochs", "1", "--spatial-size", "32"]
    common += ["--device", "cpu", "--output-dir", str(root / "results"), "--work-dir", str(root / "work")]
    report = baselines.run(baselines_args(baselines, [*common, "--methods", "clean,lsp,ar", "--name", "first"]))
    return baselines, root, common, report


def baselines_args(module, argv):
    return module.build_parser().parse_args(argv)


def test_segmentation_table_runs_every_method_through_the_segmentation_protectors(seg_run):
    _, root, _, report = seg_run
    assert report["task"] == "segmentation" and report["dataset"] == "seg"
    rows = report["results"]
    assert set(rows) == {"clean", "lsp", "ar"}
    for method, protector in (("lsp", "lsp-seg"), ("ar", "ar-seg")):
        manifest = json.loads((Path(rows[method]["output"]) / "manifest.json").read_text())
        assert manifest["method"] == protector
        assert rows[method]["budget"]["norm"] == "l2"
        assert 0 <= rows[method]["dice"] <= 100 and 0 <= rows[method]["jaccard"] <= 100
    # the clean exploiter is trained once (after the first method) and reused by the second
    assert len(rows["clean"]["repetitions"]) == 1
    assert rows["ar"]["clean_dice"] == rows["lsp"]["clean_dice"] == rows["clean"]["dice"]
    table = (root / "results" / "first.md").read_text()
    assert "Dice % (Jaccard %)" in table and "| lsp |" in table and "UMed paper Table 1" in table
    assert "| pixel AUC | predicted fg % |" in table
    lsp_line = next(line for line in table.splitlines() if line.startswith("| lsp |"))
    assert f"| {rows['lsp']['pixel_auc']:.1f} | {rows['lsp']['predicted_share']:.1f} |" in lsp_line
    assert report["resample"] == "bilinear" and "`--resample bilinear`" in table
    # every row keeps the per-epoch curve of its exploiter, plotted beside the table
    assert len(rows["lsp"]["curves"]["test_dice"]) == 1 and rows["lsp"]["curves"]["test_dice"][0] == rows["lsp"]["dice"]
    assert (root / "results" / "first.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reuse_takes_a_row_and_its_clean_run_from_earlier_results(seg_run):
    baselines, root, common, first = seg_run
    lsp_results = Path(first["results"]["lsp"]["output"]) / "results.json"
    argv = [*common, "--methods", "clean,lsp", "--name", "second", "--reuse", f"lsp={lsp_results}"]
    report = baselines.run(baselines_args(baselines, argv))
    row = report["results"]["lsp"]
    assert row["reused_from"] == str(lsp_results) and row["dice"] == first["results"]["lsp"]["dice"]
    assert report["results"]["clean"]["repetitions"][0]["reused_from"] == str(lsp_results)
    assert "(reused)" in (root / "results" / "second.md").read_text()
    # results of another method, or of another recipe length, are refused
    with pytest.raises(SystemExit, match="results of method 'lsp-seg'"):
        baselines.run(baselines_args(baselines, [*common, "--name", "x", "--reuse", f"ar={lsp_results}"]))
    other = [a if a != "1" else "2" for a in common]
    with pytest.raises(SystemExit, match="epochs 1 != 2"):
        baselines.run(baselines_args(baselines, [*other, "--name", "x", "--reuse", f"lsp={lsp_results}"]))


def test_resume_refuses_a_report_of_another_setting(seg_run):
    baselines, _, common, _ = seg_run
    other = [a if a != "1" else "2" for a in common]
    with pytest.raises(SystemExit, match="another setting"):
        baselines.run(baselines_args(baselines, [*other, "--methods", "clean,lsp", "--name", "first", "--resume"]))
    resample = [*common, "--methods", "clean,lsp", "--name", "first", "--resume", "--resample", "inverse"]
    with pytest.raises(SystemExit, match=r"another setting \(resample\)"):
        baselines.run(baselines_args(baselines, resample))


def test_segmentation_evaluation_checks_a_reused_clean_run(seg_run):
    _, _, _, report = seg_run
    folder = report["results"]["lsp"]["output"]
    results = json.loads((Path(folder) / "results.json").read_text())
    clean_run = {**results["clean"], "curves": results["curves"]["clean"], "split_sha256": results["split_sha256"]}
    reused = evaluate_segmentation(
        folder, "seg-quick", "unet", epochs=1, device="cpu", progress=False, clean_run=clean_run
    )
    assert reused["clean"] == results["clean"] and reused["reused_clean_run"] is True
    for run in ("clean", "protected"):  # pixel AUC and predicted share beside Dice, per epoch as well
        assert 0.0 <= results[run]["pixel_auc"] <= 100.0 and 0.0 <= results[run]["predicted_share"] <= 100.0
        assert results["curves"][run]["test_pixel_auc"] == [results[run]["pixel_auc"]]
        assert results["curves"][run]["test_predicted_share"] == [results[run]["predicted_share"]]
    assert reused["protected"] == pytest.approx(results["protected"])
    with pytest.raises(MedueError, match="trained for 1 epochs"):
        evaluate_segmentation(folder, "seg-quick", "unet", epochs=2, device="cpu", clean_run=clean_run)
    with pytest.raises(MedueError, match="another train/test split"):
        evaluate_segmentation(
            folder, "seg-quick", "unet", epochs=1, device="cpu", clean_run={**clean_run, "split_sha256": "0"}
        )
    with pytest.raises(MedueError, match="trained with exploiter 'unet', this evaluation uses 'attentionunet'"):
        evaluate_segmentation(folder, "seg-quick", "attentionunet", epochs=1, device="cpu", clean_run=clean_run)


def test_clean_from_takes_only_the_clean_run(seg_run):
    baselines, _, common, first = seg_run
    lsp_results = Path(first["results"]["lsp"]["output"]) / "results.json"
    argv = [*common, "--methods", "clean,ar", "--name", "third", "--clean-from", str(lsp_results)]
    report = baselines.run(baselines_args(baselines, argv))
    assert set(report["results"]) == {"clean", "ar"}
    assert report["results"]["clean"]["repetitions"][0]["reused_from"] == str(lsp_results)
    assert report["results"]["ar"]["clean_dice"] == first["results"]["clean"]["dice"]
    other = [a if a != "1" else "2" for a in common]
    with pytest.raises(SystemExit, match="--clean-from .*epochs 1 != 2"):
        baselines.run(baselines_args(baselines, [*other, "--name", "y", "--clean-from", str(lsp_results)]))
    report_file = next((Path(first["results"]["lsp"]["output"]).parents[1] / "results").glob("first.json"))
    with pytest.raises(SystemExit, match="baselines report, not a `medue evaluate` results file.*results.json"):
        baselines.run(baselines_args(baselines, [*common, "--name", "z", "--clean-from", str(report_file)]))


def test_noise_structure_measures_class_consistency_and_sparsity():
    module = _benchmark_module("noise_structure")
    rng = np.random.default_rng(0)
    clean = rng.integers(20, 200, size=(6, 8, 8), dtype=np.uint8)
    labels = np.array([0, 0, 0, 1, 1, 1])
    pattern = np.zeros((8, 8), dtype=np.int16)
    pattern[:2] = 8  # 16 of 64 positions, +8/255 for class 0 and -8/255 for class 1
    protected = (clean + np.where(labels[:, None, None] == 0, pattern, -pattern)).astype(np.uint8)
    stats = module.noise_structure(clean, protected, labels)
    assert stats["changed_positions"] == pytest.approx(0.25)
    assert stats["l2_mean"] == pytest.approx(4 * 8 / 255)
    assert stats["between_class_cosine"] == pytest.approx(-1.0)
    assert stats["per_class"]["0"]["within_class_cosine"] == pytest.approx(1.0)
    assert stats["per_class"]["0"]["positive_share"] == 1.0 and stats["per_class"]["1"]["positive_share"] == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        module.noise_structure(clean, protected[:3], labels)


def test_noise_structure_tile_layout_finds_a_sign_code_per_class():
    module = _benchmark_module("noise_structure")
    rng = np.random.default_rng(0)
    clean = rng.integers(20, 200, size=(4, 8, 8), dtype=np.uint8)
    labels = np.array([0, 0, 1, 1])
    offsets = np.zeros((4, 8, 8), dtype=np.int16)
    offsets[:2, :4, :4] = 8  # class 0: +8 on the top-left 4x4 tile
    offsets[2:, :4, :4] = -8  # class 1: -8 there
    offsets[1, 4:, 4:] = 8  # one class-0 image also on the bottom-right tile, with a sign the other lacks
    offsets[0, 4:, 4:] = -8
    protected = (clean + offsets).astype(np.uint8)
    layout = module.tile_layout(clean, protected, labels, 4)
    zero, one = layout["per_class"]["0"], layout["per_class"]["1"]
    assert zero["used_share"] == [[1.0, 0.0], [0.0, 1.0]] and one["used_share"] == [[1.0, 0.0], [0.0, 0.0]]
    assert zero["majority_sign"][0][0] == 1 and one["majority_sign"][0][0] == -1
    assert zero["majority_sign_share"] == [[1.0, None], [None, 0.5]]
    with pytest.raises(ValueError, match="block must be"):
        module.tile_layout(clean, protected, labels, 9)
    # checkerboard tiles: summed, their changes cancel; read with the pattern, the phase is the sign
    checker = np.where(np.indices((8, 8)).sum(0) % 2 == 0, 1, -1).astype(np.int16)
    protected = (clean + offsets * checker).astype(np.uint8)
    assert module.tile_layout(clean, protected, labels, 4)["per_class"]["0"]["majority_sign"][0][0] == 0
    phases = module.tile_layout(clean, protected, labels, 4, "checker")
    assert phases["pattern"] == "checker" and phases["per_class"] == layout["per_class"]


def test_tile_contrast_separates_flat_offsets_from_checkerboards(tmp_path):
    module = _benchmark_module("tile_contrast")
    rng = np.random.default_rng(0)
    # every 4x4 tile of every image gets its own flat grey level: loud for a flat offset, silent for a checker
    levels = rng.integers(60, 190, size=(32, 4, 4))
    images = np.repeat(np.repeat(levels, 4, axis=1), 4, axis=2).astype(np.uint8)
    result = module.tile_contrast(images, 4, 8 / 255)
    assert np.array(result["flat"]).shape == (2, 2), "inner tiles of a 4 x 4 grid"
    assert result["flat_range"][0] > 1.0 and result["checker_range"] == [0.0, 0.0]
    # a checkerboard of random per-image amplitude is what the checker column measures
    checker = np.where(np.indices((16, 16)).sum(0) % 2 == 0, 1, -1)
    amplitude = rng.integers(0, 16, size=(32, 1, 1))
    result = module.tile_contrast((128 + amplitude * checker).astype(np.uint8), 4, 8 / 255)
    assert result["flat_range"] == [0.0, 0.0]
    assert result["checker_range"][0] == pytest.approx(float(amplitude.std(ddof=1)) / 8, rel=1e-3)
    with pytest.raises(ValueError, match="fewer than 3 x 3"):
        module.tile_contrast(images[:, :8, :8], 4, 8 / 255)
    npz = tmp_path / "set.npz"
    np.savez(npz, train_images=images)
    assert module.main(["--npz", str(npz), "--output", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["images"] == 32
    assert module.main(["--npz", str(tmp_path / "missing.npz")]) == 2


def test_resume_continues_an_interrupted_fit_only_for_resumable_methods(seg_run, monkeypatch):
    baselines, root, common, _ = seg_run
    seen = {}

    def fake_protect(data, out, method, options, **kwargs):
        seen[method] = kwargs["resume"]
        return {}

    monkeypatch.setattr(baselines, "protect_segmentation", fake_protect)
    for method in ("em-seg", "lsp-seg"):
        for resume in ([], ["--resume"]):
            args = baselines_args(baselines, [*common, "--name", "r", *resume])
            args.task = "segmentation"
            baselines._protect(args, method, {}, root / "work" / method)
            assert seen[method] is (bool(resume) and method == "em-seg")


def test_release_resample_measures_what_reaches_the_reader(tmp_path):
    from medue_monai.pipeline.segmentation import protect_segmentation

    module = _benchmark_module("release_resample")
    source = make_synthetic_segmentation(tmp_path / "seg", num_items=6, size=64, seed=0)
    out = tmp_path / "release"
    protect_segmentation(str(source), str(out), "lsp-seg", {}, spatial_size=16, device="cpu", progress=False)
    report = module.main(["--protected", str(out), "--limit", "4", "--out", str(tmp_path / "r.json")])
    reach = report["reach"]
    assert reach["bilinear"]["images"] == reach["inverse"]["images"] > 0
    # the inverse enlargement gives the reader back more of the perturbation, at a lower PSNR
    assert reach["inverse"]["cosine_mean"] > reach["bilinear"]["cosine_mean"]
    assert reach["inverse"]["psnr"] < reach["bilinear"]["psnr"]
    assert json.loads((tmp_path / "r.json").read_text())["method"] == "lsp-seg"
    with pytest.raises(SystemExit, match="unknown"):
        module.main(["--protected", str(out), "--modes", "cubic", "--out", str(tmp_path / "x.json")])


def test_reuse_takes_a_row_with_its_timings_from_another_report(seg_run):
    baselines, root, common, first = seg_run
    report_path = root / "results" / "first.json"
    argv = [*common, "--methods", "clean,ar", "--name", "fourth", "--reuse", f"ar={report_path}"]
    report = baselines.run(baselines_args(baselines, argv))
    row, earlier = report["results"]["ar"], first["results"]["ar"]
    assert row["reused_from"] == str(report_path) and row["reused_machine"]["device"] == "cpu"
    assert row["dice"] == earlier["dice"] and row["protect_seconds"] == earlier["protect_seconds"]
    assert row["curves"] == earlier["curves"]
    assert report["results"]["clean"]["dice"] == first["results"]["clean"]["dice"]
    table = (root / "results" / "fourth.md").read_text()
    assert "| ar (reused) |" in table and "(run on cpu," in table
    # a report of another setting, or without the row, is refused
    other = [a if a != "1" else "2" for a in common]
    with pytest.raises(SystemExit, match=r"another setting \(epochs\)"):
        baselines.run(baselines_args(baselines, [*other, "--name", "x", "--reuse", f"ar={report_path}"]))
    with pytest.raises(SystemExit, match="no 'tap' row"):
        baselines.run(baselines_args(baselines, [*common, "--name", "x", "--reuse", f"tap={report_path}"]))


def test_defense_runs_every_exploiter_on_defended_training_images(seg_run):
    baselines, root, common, first = seg_run
    argv = [*common, "--methods", "clean,lsp", "--name", "defended", "--defense", "center-crop20", "--resume"]
    lsp_folder = Path(first["results"]["lsp"]["output"])
    written = (lsp_folder / "manifest.json").stat().st_mtime_ns
    report = baselines.run(baselines_args(baselines, argv))
    assert report["defense"] == "center-crop20"
    # --resume reuses the finished protected copy of the same setting instead of protecting again
    row = report["results"]["lsp"]
    assert row["protected_copy_reused"] and (lsp_folder / "manifest.json").stat().st_mtime_ns == written
    assert (lsp_folder / "results_center-crop20.json").is_file() and (lsp_folder / "results.json").is_file()
    args = baselines_args(baselines, argv)
    args.task = "segmentation"
    assert baselines._finished_copy(lsp_folder, "lsp-seg", {}, args) is not None
    assert baselines._finished_copy(lsp_folder, "lsp-seg", {"patch_size": 4}, args) is None
    assert baselines._finished_copy(lsp_folder, "ar-seg", {}, args) is None
    args.seed, args.resample = 0, "inverse"
    assert baselines._finished_copy(lsp_folder, "lsp-seg", {}, args) is None
    assert report["results"]["clean"]["repetitions"][0]["defense"] == "center-crop20"
    assert report["results"]["clean"]["dice"] != first["results"]["clean"]["dice"]
    assert "`center-crop20`" in (root / "results" / "defended.md").read_text()
    assert "--defense center-crop20" in report["results"]["lsp"]["commands"][1]
    # a report or results of another defense cannot be resumed or reused
    with pytest.raises(SystemExit, match=r"another setting \(defense\)"):
        baselines.run(
            baselines_args(
                baselines, [*common, "--methods", "clean,lsp", "--name", "first", "--resume"] + ["--defense", "mean3"]
            )
        )
    lsp_results = Path(first["results"]["lsp"]["output"]) / "results.json"
    with pytest.raises(SystemExit, match="defense 'none' != 'mean3'"):
        baselines.run(
            baselines_args(baselines, [*common, "--name", "x", "--defense", "mean3", "--reuse", f"lsp={lsp_results}"])
        )


def test_training_counter_measures_run_every_exploiter_and_name_their_results(seg_run):
    baselines, root, common, first = seg_run
    argv = [*common, "--methods", "clean,lsp", "--name", "augmented", "--augmentation", "crop-flip", "--resume"]
    report = baselines.run(baselines_args(baselines, argv))
    assert report["augmentation"] == "crop-flip" and report["adversarial_eps"] == 0.0
    lsp_folder = Path(first["results"]["lsp"]["output"])
    assert report["results"]["lsp"]["protected_copy_reused"]
    results = json.loads((lsp_folder / "results_crop-flip.json").read_text())
    assert results["clean"]["augmentation"] == results["protected"]["augmentation"] == "crop-flip"
    assert report["results"]["clean"]["dice"] != first["results"]["clean"]["dice"]
    assert "--augmentation crop-flip" in report["results"]["lsp"]["commands"][1]
    assert "Training-time counter-measures" in (root / "results" / "augmented.md").read_text()
    with pytest.raises(SystemExit, match=r"another setting \(augmentation\)"):
        baselines.run(
            baselines_args(
                baselines,
                [*common, "--methods", "clean,lsp", "--name", "first", "--resume"] + ["--augmentation", "crop-flip"],
            )
        )
    lsp_results = lsp_folder / "results.json"
    with pytest.raises(SystemExit, match="adversarial_eps 0.0 != 0.01568"):
        baselines.run(
            baselines_args(
                baselines, [*common, "--name", "y", "--adversarial-eps", "4/255", "--reuse", f"lsp={lsp_results}"]
            )
        )
    args = baselines_args(baselines, [*common, "--defense", "median3", "--adversarial-eps", "8/255"])
    assert (
        baselines.counter_tag(args) == "median3_adv8" and baselines._results_name(args) == "results_median3_adv8.json"
    )
    with pytest.raises(SystemExit):
        baselines_args(baselines, [*common, "--adversarial-eps", "3"])


def test_method_options_parse_json_and_fractions():
    baselines = _baselines_module()
    options = baselines._parse_options(["umed.background_eps=2/255", "umed.epochs=3", "salm.surrogate=smallcnn"])
    assert options == {"umed": {"background_eps": 2 / 255, "epochs": 3}, "salm": {"surrogate": "smallcnn"}}
    with pytest.raises(SystemExit, match="METHOD.key=value"):
        baselines._parse_options(["epochs=3"])


def _write_json(path: Path, document: dict) -> str:
    path.write_text(json.dumps(document))
    return path.name


def test_targets_verdict_is_taken_on_the_mean_and_counts_single_runs(tmp_path):
    targets = _benchmark_module("targets")
    runs = [
        _write_json(tmp_path / f"run{seed}.json", {"seed": seed, "results": {"salm": {"acc": acc}}})
        for seed, acc in ((0, 50.0), (1, 60.0))
    ]
    below = {
        "issue": 2,
        "target": "acc",
        "compare": "<=",
        "bound": 53.2,
        "unit": "%",
        "value": "results.salm.acc",
        "runs": runs,
    }
    verdict = targets.evaluate_target(below, tmp_path)
    assert [run.seed for run in verdict.runs] == [0, 1]
    assert verdict.mean == pytest.approx(55.0)
    assert verdict.runs_meeting == 1 and not verdict.met
    assert verdict.margin == pytest.approx(1.8)
    above = {**below, "compare": ">=", "bound": 54.0, "unit": "dB"}
    assert targets.evaluate_target(above, tmp_path).met
    table = targets.markdown_table([verdict, targets.evaluate_target(above, tmp_path)])
    assert "| 50.00 (0); 60.00 (1) | 55.00 | 1 of 2 | missed by 1.80 points |" in table
    assert table.rstrip().endswith("| 55.00 | 1 of 2 | met |")
    # a run that keeps its number elsewhere names its own path
    other = _write_json(tmp_path / "other.json", {"runs": {"unet": {"protected": {"dice": 3.0}}}})
    mixed = {**below, "runs": [{"file": other, "value": "runs.unet.protected.dice"}]}
    assert targets.evaluate_target(mixed, tmp_path).runs[0].value == 3.0


def test_targets_name_the_file_and_the_problem(tmp_path):
    targets = _benchmark_module("targets")
    base = {"issue": 3, "target": "dice", "compare": "<=", "bound": 5, "value": "results.umed.dice"}
    _write_json(tmp_path / "text.json", {"results": {"umed": {"dice": "low"}}})
    (tmp_path / "broken.json").write_text("{")
    cases = {
        "missing.json": "no such result file",
        "text.json": "not a finite number",
        "broken.json": "not JSON",
    }
    for name, message in cases.items():
        with pytest.raises(targets.TargetError, match=message) as raised:
            targets.evaluate_target({**base, "runs": [name]}, tmp_path)
        assert name in str(raised.value)
    _write_json(tmp_path / "short.json", {"results": {}})
    with pytest.raises(targets.TargetError, match="missing 'umed'"):
        targets.evaluate_target({**base, "runs": ["short.json"]}, tmp_path)
    with pytest.raises(targets.TargetError, match="compare must be"):
        targets.evaluate_target({**base, "compare": "<", "runs": ["short.json"]}, tmp_path)
    with pytest.raises(targets.TargetError, match="missing field 'bound'"):
        targets.evaluate_target({k: v for k, v in base.items() if k != "bound"} | {"runs": ["x"]}, tmp_path)
    config = tmp_path / "targets.yaml"
    config.write_text("targets: {}\n")
    assert targets.main(["--config", str(config), "--results", str(tmp_path)]) == 2


def test_targets_accept_only_runs_of_the_current_defaults(tmp_path):
    from medue_monai.protectors import get_protector_class

    targets = _benchmark_module("targets")
    defaults = get_protector_class("salm")(device="cpu").config()
    target = {
        "issue": 2,
        "target": "acc",
        "compare": "<=",
        "bound": 53.2,
        "value": "results.salm.acc",
        "defaults_of": "salm",
        "options": "results.salm.options",
    }

    def run(name: str, options: dict) -> str:
        return _write_json(tmp_path / name, {"seed": 3, "results": {"salm": {"acc": 50.0, "options": options}}})

    assert targets.evaluate_target({**target, "runs": [run("same.json", {**defaults, "seed": 3})]}, tmp_path).met
    # an option recorded before it existed counts as the value checkpoints of that time had (block=1, not 4)
    older = {key: value for key, value in defaults.items() if key != "block"}
    cases = {
        "block.json": ({**defaults, "block": 1}, "block=1"),
        "older.json": (older, "block=1"),
        "removed.json": ({**defaults, "retired_switch": True}, "retired_switch=True"),
    }
    for name, (options, message) in cases.items():
        with pytest.raises(targets.TargetError, match=message) as raised:
            targets.evaluate_target({**target, "runs": [run(name, options)]}, tmp_path)
        assert name in str(raised.value)
    # an option since removed that was off is accepted
    off = run("off.json", {**defaults, "retired_switch": 0.0})
    assert targets.evaluate_target({**target, "runs": [off]}, tmp_path).runs[0].value == 50.0


def test_recorded_targets_quote_only_runs_of_the_current_defaults(tmp_path):
    """The committed table's runs still use today's defaults: change a default and this fails until re-measured."""
    targets = _benchmark_module("targets")
    root = SCRIPT.parents[1]
    verdicts = targets.run(
        root / "configs" / "benchmarks" / "targets.yaml", root / "benchmarks" / "results", tmp_path / "targets"
    )
    assert {verdict.issue for verdict in verdicts} == {2, 3}
    assert all(verdict.runs for verdict in verdicts)
    assert (tmp_path / "targets.md").read_text() == targets.markdown_table(verdicts)
    assert json.loads((tmp_path / "targets.json").read_text())["targets"][0]["mean"] == verdicts[0].mean


def test_exploiter_seeds_retrain_the_exploiter_on_one_fixed_copy(seg_run, tmp_path, monkeypatch):
    module = _benchmark_module("exploiter_seeds")
    _, root, _, first = seg_run
    folder = first["results"]["lsp"]["output"]
    report_file = root / "results" / "first.json"
    out = tmp_path / "seeds.json"
    argv = ["--protected", folder, "--seeds", "0,5", "--epochs", "1", "--device", "cpu"]
    report = module.main([*argv, "--clean-from", str(report_file), "--out", str(out)])
    assert [entry["seed"] for entry in report["runs"]] == [0, 5]
    assert report["exploiter"] == "unet" and report["recipe"] == "seg-quick" and report["fit_seed"] == 0
    machine = report["machine"]  # medue_monai.utils.machine_record, as in every benchmark record
    assert machine["device"] == "cpu" and machine["gpu"] is None and machine["cpu_count"] == os.cpu_count()
    assert machine["torch"] == torch.__version__ and machine["torch_threads"] == torch.get_num_threads()
    # exploiter seed 0 is the benchmark's own run of that copy; the clean run is the report's, with its seed
    assert report["runs"][0]["dice"] == pytest.approx(first["results"]["lsp"]["dice"])
    assert all(entry["clean"] == first["results"]["clean"]["dice"] for entry in report["runs"])
    assert report["clean_from_seed"] == 0 and all(entry["clean_seed"] == 0 for entry in report["runs"])
    dice = [entry["dice"] for entry in report["runs"]]
    assert report["summary"]["mean"] == pytest.approx(sum(dice) / 2)
    assert report["summary"]["min"] == min(dice) and report["summary"]["max"] == max(dice)
    assert json.loads(out.read_text())["summary"] == report["summary"]
    table = out.with_suffix(".md").read_text()
    assert "| 5 |" in table and "pixel_auc" in table
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["seeds_pending"] == [] and "Still to run" not in table
    # a run stopped after its first seed keeps that seed's record, and says which seeds are left
    evaluate, score, extras = module.TASKS["segmentation"]
    calls = []

    def stopped_after_one(*args, **kwargs):
        calls.append(kwargs["seed"])
        if len(calls) > 1:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setitem(module.TASKS, "segmentation", (stopped_after_one, score, extras))
    stopped = tmp_path / "stopped.json"
    with pytest.raises(KeyboardInterrupt):
        module.main([*argv[:2], "--seeds", "0,5,7", *argv[4:], "--clean-from", str(report_file), "--out", str(stopped)])
    kept = json.loads(stopped.read_text())
    assert [entry["seed"] for entry in kept["runs"]] == [0] and kept["seeds_pending"] == [5, 7]
    assert kept["runs"][0]["dice"] == pytest.approx(report["runs"][0]["dice"])
    assert "Still to run: exploiter seeds 5, 7." in stopped.with_suffix(".md").read_text()
    assert not list(tmp_path.glob("*.partial"))
    monkeypatch.undo()
    # bad input: one clear message each
    with pytest.raises(SystemExit, match="comma-separated integers"):
        module.main([*argv[:2], "--seeds", "1,x", "--out", str(out)])
    with pytest.raises(SystemExit, match="each once"):
        module.main([*argv[:2], "--seeds", "1,1", "--out", str(out)])
    with pytest.raises(SystemExit, match="no manifest.json"):
        module.main(["--protected", str(tmp_path), "--out", str(out)])
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(SystemExit, match="keeps no clean-trained run"):
        module.main([*argv, "--clean-from", str(tmp_path / "empty.json"), "--out", str(out)])

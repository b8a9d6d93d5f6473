"""The MONAI bundles (bundles/salm, bundles/umed) in the model-zoo style: metadata verified offline, train /
inference / evaluate through ``ConfigWorkflow`` with ``check_properties``, the same release as ``medue protect``,
and several processes sharing a fit (gloo)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from medue_monai.cli import main
from medue_monai.data.segmentation import make_synthetic_segmentation
from medue_monai.data.synthetic import make_synthetic_classification
from medue_monai.io.npz import write_npz
from medue_monai.protectors import load_protector

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
VOLATILE = ("created", "timing")


def _copy(name: str, tmp_path: Path) -> Path:
    """Bundles run from a copy of their folder (``--bundle_root <copy>``)."""
    return Path(shutil.copytree(BUNDLES / name, tmp_path / name))


def _tiny_npz(folder: Path, name: str = "tiny") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    source = make_synthetic_classification(num_train=24, num_val=6, num_test=8, size=16, seed=1)
    write_npz(folder / f"{name}.npz", source.arrays)
    return folder


def _workflow(bundle: Path, config: str, workflow_type: str, **override) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / config),
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(bundle),
        device="cpu",
        **override,
    )
    workflow.initialize()
    assert workflow.check_properties() == [], f"{config}: missing or wrong properties"
    return workflow


def _run(workflow: ConfigWorkflow) -> None:
    workflow.run()
    workflow.finalize()


@pytest.mark.parametrize("name", ["salm", "umed"])
def test_metadata_verifies_offline_against_the_schema_copy(name, tmp_path) -> None:
    from monai.bundle import verify_metadata

    schema = BUNDLES / "meta_schema.json"
    verify_metadata(meta_file=str(BUNDLES / name / "configs" / "metadata.json"), filepath=str(schema))
    broken = json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())
    del broken["network_data_format"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(schema))


def test_salm_bundle_trains_writes_a_release_and_evaluates(tmp_path, capsys) -> None:
    bundle = _copy("salm", tmp_path)
    data, out = _tiny_npz(tmp_path / "data"), tmp_path / "out"
    common = {"dataset_dir": str(data), "dataset_name": "tiny", "output_dir": str(out)}
    _run(_workflow(bundle, "train.json", "train", epochs=1, **common))
    protector = load_protector(out / "release.protector.pt", device="cpu")
    assert protector.name == "salm" and protector.fitted and len(protector.history) == 1
    assert not list(data.glob("*.pt")), "the private protector stays out of the data folder"

    _run(_workflow(bundle, "inference.json", "inference", **common))
    with np.load(out / "release" / "tiny.npz") as release, np.load(data / "tiny.npz") as clean:
        for split in ("train", "val", "test"):  # one protected image per input image
            delta = release[f"{split}_images"].astype(int) - clean[f"{split}_images"].astype(int)
            assert delta.shape == clean[f"{split}_images"].shape and np.abs(delta).max() <= 8
            assert (delta != 0).reshape(len(delta), -1).any(axis=1).all(), split

    results_file = tmp_path / "results.json"
    workflow = _workflow(
        bundle, "evaluate.json", "eval", protected_dir=str(out / "release"), epochs=1, exploiter="smallcnn", **common
    )
    workflow.parser["results_file"] = str(results_file)
    _run(workflow)
    printed = capsys.readouterr().out
    assert "clean-test accuracy" in printed and "protected-trained" in printed
    assert json.loads(results_file.read_text())["method"] == "salm"


def test_umed_bundle_trains_writes_a_release_and_evaluates(tmp_path, capsys) -> None:
    bundle = _copy("umed", tmp_path)
    data = make_synthetic_segmentation(tmp_path / "data", num_items=8, size=32, seed=0)
    out = tmp_path / "out"
    common = {"dataset_dir": str(data), "output_dir": str(out)}
    _run(_workflow(bundle, "train.json", "train", epochs=1, spatial_size=32, **common))
    assert load_protector(out / "release.protector.pt", device="cpu").name == "umed"
    _run(_workflow(bundle, "inference.json", "inference", **common))
    written = sorted(p.stem for p in (out / "release" / "images").iterdir())
    assert written == sorted(p.stem for p in (data / "images").iterdir())  # one protected image per input image
    _run(_workflow(bundle, "evaluate.json", "eval", protected_dir=str(out / "release"), epochs=1, **common))
    assert "Dice on clean test" in capsys.readouterr().out


def _release_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _stable(manifest: dict) -> dict:
    manifest = {k: v for k, v in manifest.items() if k not in VOLATILE}
    manifest["protector"] = {k: v for k, v in manifest["protector"].items() if k != "sha256"}
    return manifest


@pytest.mark.parametrize("name", ["salm", "umed"])
def test_cli_and_bundle_write_byte_identical_releases(name, tmp_path, capsys) -> None:
    """Same data, options and seed: every released file is the same bytes; the manifests differ only in time."""
    bundle = _copy(name, tmp_path)
    out = tmp_path / "bundle_out"
    if name == "salm":
        data_folder = _tiny_npz(tmp_path / "data")
        data = str(data_folder / "tiny.npz")
        common = {"dataset_dir": str(data_folder), "dataset_name": "tiny", "output_dir": str(out)}
        cli = ["--method", "salm", "--eps", "8/255", "--k", "10", "--epochs", "1"]
        train_override = {"epochs": 1}
    else:
        data = str(make_synthetic_segmentation(tmp_path / "data", num_items=8, size=32, seed=0))
        common = {"dataset_dir": data, "output_dir": str(out)}
        cli = ["--method", "umed", "--eps", "4/255", "--epochs", "1", "--spatial-size", "32"]
        cli += ["--option", "surrogate=unet"]
        train_override = {"epochs": 1, "spatial_size": 32}
    _run(_workflow(bundle, "train.json", "train", **train_override, **common))
    _run(_workflow(bundle, "inference.json", "inference", **common))
    release = tmp_path / "cli_release"
    argv = ["protect", "--data", data, "--out", str(release), *cli, "--include-test", "--device", "cpu"]
    assert main([*argv, "--no-progress"]) == 0, capsys.readouterr().err
    from_bundle, from_cli = _release_files(out / "release"), _release_files(release)
    assert sorted(from_bundle) == sorted(from_cli)
    for path in from_cli:
        if path != "manifest.json":
            assert from_bundle[path] == from_cli[path], path
    manifests = [json.loads(files["manifest.json"]) for files in (from_bundle, from_cli)]
    assert _stable(manifests[0]) == _stable(manifests[1])


# ---------------------------------------------------------------- several processes (gloo)
def _distributed_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    from medue_monai.pipeline import ProtectionRun
    from medue_monai.protectors import BilevelTrainer

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        spec = "synthetic:num_train=21,num_val=4,num_test=4,size=16,seed=2"  # 21 items: 11 per rank, one twice
        run = ProtectionRun(
            spec, "salm", {"epochs": 2, "batch_size": 4}, seed=0, device="cpu", progress=False, distributed=True
        )
        trainer = BilevelTrainer(run.protector, run.loader, run.num_classes, run.num_samples)
        local = {}
        finalize = run.protector.finalize

        def finalize_and_snapshot(loader=None) -> None:  # the rank's own deltas, before they are gathered
            finalize(loader)
            local["delta"] = run.protector.delta.clone()
            local["owned"] = run.protector.owned.clone()

        run.protector.finalize = finalize_and_snapshot
        trainer.run()
        torch.save(
            {
                "local": local["delta"],
                "owned": local["owned"],
                "final": run.protector.delta,
                "eps": run.protector.eps,
                "weights": [p.detach().clone() for p in run.protector.surrogate.parameters()],
            },
            f"{out}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_processes_gather_every_sample_from_its_owner_within_budget(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    owned = torch.stack([r["owned"] for r in ranks])
    assert owned.any(dim=0).all(), "every sample was learned by some rank"
    assert int(owned.sum()) == 22 and int((owned.sum(dim=0) == 2).sum()) == 1  # even_divisible padding: one twice
    final = ranks[0]["final"]
    assert torch.equal(final, ranks[1]["final"]), "both ranks end with the same deltas"
    for index in range(final.shape[0]):
        owner = int(torch.nonzero(owned[:, index])[0])  # the lowest rank that owned it
        assert torch.equal(final[index], ranks[owner]["local"][index]), index
        assert final[index].abs().max() > 0
    assert float(final.abs().max()) <= ranks[0]["eps"] + 1e-7
    for a, b in zip(ranks[0]["weights"], ranks[1]["weights"], strict=True):
        assert torch.allclose(a, b), "averaged gradients keep the surrogates identical"

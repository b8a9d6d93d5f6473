"""Interrupted fits resume from their epoch checkpoint and end exactly where an uninterrupted fit ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader

from medue_monai.cli import main
from medue_monai.data import load_classification_spec
from medue_monai.pipeline.classification import protect_classification
from medue_monai.protectors import SALMProtector
from medue_monai.protectors.base import FitCheckpoint
from medue_monai.protectors.em_seg import EMSegProtector
from medue_monai.protectors.umed import UMedProtector
from medue_monai.utils import MedueError

SPEC = "synthetic:num_train=24,num_val=4,num_test=8,size=16,seed=3"


class Interrupted(Exception):
    """Stands for Ctrl-C / a killed job in the middle of an epoch."""


class InterruptingLoader:
    """Wraps a DataLoader and raises after ``stop_after`` batches in total (counting every pass)."""

    def __init__(self, loader: DataLoader, stop_after: int) -> None:
        self.loader, self.stop_after, self.seen = loader, stop_after, 0
        self.generator = loader.generator

    def __iter__(self):
        for batch in self.loader:
            self.seen += 1
            if self.seen > self.stop_after:
                raise Interrupted
            yield batch


def _saved(path) -> dict:
    """The newest checkpoint in a fit checkpoint folder (MONAI CheckpointSaver: engine and fit state), with
    the epochs done (ignite keeps iterations)."""
    latest = FitCheckpoint(path, {}).latest_file()
    assert latest is not None, f"no checkpoint in {path}"
    saved = torch.load(latest, weights_only=True)
    saved["epochs_done"] = saved["trainer"]["iteration"] // saved["trainer"]["epoch_length"]
    return saved


def _salm_loader(source) -> DataLoader:
    return DataLoader(source.dataset("train"), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(5))


def _salm(**options) -> SALMProtector:
    return SALMProtector(epochs=3, surrogate="smallcnn", lr=0.01, device="cpu", progress=False, seed=0, **options)


@pytest.mark.parametrize("schedule", ["minibatch", "em"])
def test_salm_resume_matches_an_uninterrupted_fit(tmp_path, schedule):
    source = load_classification_spec(SPEC)
    options = {"schedule": schedule, "em_model_steps": 2, "em_noise_steps": 2}
    reference = _salm(**options).fit(_salm_loader(source), source.num_classes, 24)

    fingerprint = {"run": "test"}
    path = tmp_path / "fit.resume"
    interrupted = _salm(**options)
    interrupted.checkpoint = FitCheckpoint(path, fingerprint)
    # 1 batch for prepare, then 3 batches per epoch (minibatch) or 2 model + 3 noise batches per round (EM):
    # the 7th batch falls inside the second epoch / round
    with pytest.raises(Interrupted):
        interrupted.fit(InterruptingLoader(_salm_loader(source), stop_after=6), source.num_classes, 24)
    assert path.is_dir()
    saved = _saved(path)
    assert saved["epochs_done"] == 1 and saved["fit"]["fingerprint"] == fingerprint

    resumed = _salm(**options)
    resumed.checkpoint = FitCheckpoint(path, fingerprint, resume=True)
    resumed.fit(_salm_loader(source), source.num_classes, 24)
    assert resumed.history == reference.history and len(resumed.history) == 3
    # both schedules resume bit-identically (an EM round draws its own passes over the loader)
    assert torch.equal(resumed.delta, reference.delta)
    for a, b in zip(resumed.surrogate.parameters(), reference.surrogate.parameters(), strict=True):
        assert torch.equal(a, b)
    assert float(resumed.delta.abs().max()) <= resumed.eps + 1e-7


def _square_mask_loader(size: int):
    """A factory of identically shuffled loaders over 4 random images with a centred square mask."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, size, size, generator=generator)
    labels = torch.zeros(4, 1, size, size)
    labels[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    items = [{"image": images[i], "label": labels[i], "index": i} for i in range(4)]
    return lambda: DataLoader(items, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("reset_every", [0, 1])
def test_umed_resume_matches_an_uninterrupted_fit(tmp_path, reset_every):
    loader = _square_mask_loader(16)

    def umed() -> UMedProtector:
        return UMedProtector(epochs=3, device="cpu", progress=False, seed=0, reset_every=reset_every)

    torch.manual_seed(0)
    reference = umed().fit(loader(), 2, 4)
    path = tmp_path / "umed.resume"
    interrupted = umed()
    interrupted.checkpoint = FitCheckpoint(path, {"run": "umed"})
    torch.manual_seed(0)
    with pytest.raises(Interrupted):
        interrupted.fit(InterruptingLoader(loader(), stop_after=4), 2, 4)  # prepare 1 + epoch 2 + 1 batch
    resumed = umed()
    resumed.checkpoint = FitCheckpoint(path, {"run": "umed"}, resume=True)
    torch.manual_seed(0)
    resumed.fit(loader(), 2, 4)
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2]
    for net in ("contour_net", "texture_net", "surrogate"):
        for a, b in zip(getattr(resumed, net).parameters(), getattr(reference, net).parameters(), strict=True):
            assert torch.equal(a, b), net


def test_em_seg_resume_continues_from_the_last_round(tmp_path):
    loader = _square_mask_loader(32)

    def em_seg() -> EMSegProtector:
        options = {"epochs": 3, "model_steps": 1, "noise_steps": 1, "stop_error": None}
        return EMSegProtector(**options, device="cpu", progress=False, seed=0)

    path = tmp_path / "em-seg.resume"
    interrupted = em_seg()
    interrupted.checkpoint = FitCheckpoint(path, {"run": "em-seg"})
    # 1 batch for the shape, then 1 model batch + 2 noise batches per round: the 6th falls in round 2
    with pytest.raises(Interrupted):
        interrupted.fit(InterruptingLoader(loader(), stop_after=5), 2, 4)
    saved = _saved(path)
    assert saved["epochs_done"] == 1
    after_round_one = saved["fit"]["protector"]["delta"]
    assert float(after_round_one.abs().max()) > 0

    resumed = em_seg()
    resumed.checkpoint = FitCheckpoint(path, {"run": "em-seg"}, resume=True)
    counting = InterruptingLoader(loader(), stop_after=10**6)
    resumed.fit(counting, 2, 4)
    assert [r["round"] for r in resumed.history] == [0, 1, 2]
    assert counting.seen == 1 + 2 * 3  # the shape batch, then only the two remaining rounds
    assert resumed.checkpoint.earlier_seconds == pytest.approx(saved["fit"]["fit_seconds"])
    assert saved["fit"]["fit_seconds"] > 0
    assert float(resumed.delta.abs().max()) <= resumed.eps + 1e-7
    assert not torch.equal(resumed.delta, after_round_one.half().float())  # it went on learning


def test_checkpoint_of_another_run_is_refused(tmp_path):
    source = load_classification_spec(SPEC)
    path = tmp_path / "fit.resume"
    first = _salm()
    first.checkpoint = FitCheckpoint(path, {"options": 1})
    with pytest.raises(Interrupted):
        first.fit(InterruptingLoader(_salm_loader(source), stop_after=6), source.num_classes, 24)
    other = _salm()
    other.checkpoint = FitCheckpoint(path, {"options": 2}, resume=True)
    with pytest.raises(MedueError, match="belongs to another run"):
        other.fit(_salm_loader(source), source.num_classes, 24)


def test_pipeline_resumes_and_removes_the_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "release"
    options = {"surrogate": "smallcnn", "lr": 0.01, "epochs": 3}
    kwargs = dict(seed=0, device="cpu", progress=False)
    reference = protect_classification(SPEC, tmp_path / "reference", "salm", options, **kwargs)

    calls = {"n": 0}
    original = SALMProtector.train_iteration

    def failing(self, batch):
        calls["n"] += 1
        if calls["n"] > 1:  # in the second epoch (one batch of 24 per epoch at the default batch size)
            raise Interrupted
        return original(self, batch)

    monkeypatch.setattr(SALMProtector, "train_iteration", failing)
    with pytest.raises(Interrupted):
        protect_classification(SPEC, out, "salm", options, **kwargs)
    checkpoint = tmp_path / "release.protector.pt.resume"
    assert checkpoint.is_dir() and not out.exists() and not (tmp_path / "release.protector.pt").exists()
    monkeypatch.setattr(SALMProtector, "train_iteration", original)
    with pytest.raises(MedueError, match="another run"):  # other options: refused, nothing written
        protect_classification(SPEC, out, "salm", {**options, "k": 5}, resume=True, **kwargs)
    assert not out.exists()
    interrupted_seconds = _saved(checkpoint)["fit"]["fit_seconds"]
    assert interrupted_seconds > 0
    manifest = protect_classification(SPEC, out, "salm", options, resume=True, **kwargs)
    assert not checkpoint.exists() and (tmp_path / "release.protector.pt").is_file()
    # the fit time of the interrupted run is kept: this run's seconds plus the earlier ones
    assert manifest["timing"]["fit_seconds_before_resume"] == pytest.approx(interrupted_seconds)
    assert reference["timing"]["fit_seconds_before_resume"] == 0.0
    with np.load(out / "synthetic.npz") as resumed, np.load(tmp_path / "reference" / "synthetic.npz") as clean:
        assert np.array_equal(resumed["train_images"], clean["train_images"])
    assert manifest["history"] == reference["history"]


def test_resume_refused_for_methods_that_cannot(tmp_path, capsys):
    code = main(["protect", "--method", "lsp", "--data", SPEC, "--out", str(tmp_path / "o"), "--resume"])
    assert code == 2 and "cannot resume" in capsys.readouterr().err


def test_kill_9_mid_fit_then_resume_gives_a_byte_identical_release(tmp_path):
    """A process killed outright during the fit leaves no release; --resume then writes the same npz bytes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    spec = "synthetic:num_train=256,num_val=8,num_test=8,size=28,seed=1"
    args = ["protect", "--method", "salm", "--data", spec, "--epochs", "12", "--device", "cpu", "--no-progress"]
    args += ["--option", "surrogate=smallcnn"]
    assert main([*args, "--out", str(tmp_path / "reference")]) == 0
    out = tmp_path / "release"
    command = [sys.executable, "-m", "medue_monai.cli", *args, "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "release.protector.pt.resume"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(checkpoints.glob("*.pt"))) < 2 and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the fit ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists() and not (tmp_path / "release.protector.pt").exists()
    assert main([*args, "--out", str(out)]) == 2  # refuses to throw the interrupted fit away
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert not checkpoints.exists() and not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    resumed = (out / "synthetic.npz").read_bytes()
    assert resumed == (tmp_path / "reference" / "synthetic.npz").read_bytes()

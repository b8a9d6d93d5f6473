"""Training-time counter-measures of the exploiter: random crop + flip and adversarial training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medue_monai.cli import main
from medue_monai.evaluation.hardening import adversarial_examples, random_crop_flip, training_counter_measures
from medue_monai.evaluation.recipes import check_counter_measures, counter_measures, get_recipe
from medue_monai.utils import MedueError

SPEC = "synthetic:num_train=16,num_val=4,num_test=8,size=16,seed=2"


def test_random_crop_flip_shifts_and_flips_each_sample_and_its_mask_alike():
    images = torch.rand(64, 2, 12, 10)
    masks = (torch.rand(64, 1, 12, 10) > 0.5).float()
    generator = torch.Generator().manual_seed(0)
    out, out_masks = random_crop_flip(images, masks, padding=4, generator=generator)
    assert out.shape == images.shape and out_masks.shape == masks.shape
    padded = F.pad(images, (4,) * 4)
    padded_masks = F.pad(masks, (4,) * 4)
    flipped = shifted = 0
    for index in range(len(images)):
        matches = [
            (top, left, flip)
            for top in range(9)
            for left in range(9)
            for flip in (False, True)
            if torch.equal(_window(padded[index], top, left, 12, 10, flip), out[index])
        ]
        assert len(matches) == 1, f"sample {index} is not one crop of the padded image"
        top, left, flip = matches[0]
        assert torch.equal(_window(padded_masks[index], top, left, 12, 10, flip), out_masks[index])
        flipped += flip
        shifted += (top, left) != (4, 4)
    assert 16 < flipped < 48 and shifted > 48  # both happen, neither always
    again, _ = random_crop_flip(images, padding=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, out)


def _window(tensor, top, left, height, width, flip):
    window = tensor[:, top : top + height, left : left + width]
    return window.flip(-1) if flip else window


def test_adversarial_examples_stay_in_the_ball_raise_the_loss_and_leave_the_model_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    model[1].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(16, 3, 8, 8)
    labels = torch.randint(0, 4, (16,))
    eps = 8 / 255
    adversarial = adversarial_examples(
        model, images, labels, F.cross_entropy, eps=eps, steps=10, step_size=1 / 255, generator=torch.Generator()
    )
    assert (adversarial - images).abs().max() <= eps + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1 and not adversarial.requires_grad
    with torch.no_grad():
        assert F.cross_entropy(model(adversarial), labels) > F.cross_entropy(model(images), labels) + 0.05
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model[1].weight.requires_grad and not model[1].bias.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(adversarial_examples(model, images, labels, F.cross_entropy, eps=0.0), images)


def test_counter_measure_settings_are_checked():
    assert training_counter_measures(get_recipe("cls-quick")) == {
        "augmentation": "none",
        "adversarial_eps": 0.0,
        "adversarial_steps": 10,
        "adversarial_step_size": 1 / 255,
    }
    with pytest.raises(MedueError, match="unknown augmentation 'mixup'"):
        training_counter_measures({"augmentation": "mixup"})
    with pytest.raises(MedueError, match="adversarial_eps must be in"):
        training_counter_measures({"adversarial_eps": 2.0})
    with pytest.raises(MedueError, match="steps >= 1"):
        training_counter_measures({"adversarial_eps": 0.1, "adversarial_steps": 0})
    with pytest.raises(MedueError, match="unknown defense"):
        counter_measures({"defense": "blur"})
    expected = counter_measures(get_recipe("cls-quick", adversarial_eps=4 / 255))
    check_counter_measures({**expected, "test_accuracy": 50.0}, expected)
    with pytest.raises(MedueError, match="clean_run was trained with adversarial_eps 0.0"):
        check_counter_measures({"defense": "none"}, expected)  # an old run: no counter-measure at all


def test_classification_evaluation_trains_both_runs_adversarially_and_checks_reuse(tmp_path):
    from medue_monai.pipeline.classification import evaluate_classification, protect_classification

    folder = tmp_path / "lsp"
    protect_classification(SPEC, folder, "lsp", {}, seed=0, device="cpu", progress=False)
    common = {"epochs": 1, "device": "cpu", "progress": False}
    plain = evaluate_classification(folder, "cls-quick", "smallcnn", **common)
    hardened = evaluate_classification(folder, "cls-quick", "smallcnn", adversarial_eps=8 / 255, **common)
    assert hardened["counter_measures"]["adversarial_eps"] == 8 / 255
    assert hardened["counter_measures"]["augmentation"] == "none"
    for run in ("clean", "protected"):
        assert hardened[run]["adversarial_eps"] == 8 / 255
        # same seed, same batches: only the adversarial examples make the training loss differ
        assert hardened["curves"][run]["train_loss"] != plain["curves"][run]["train_loss"]
    assert plain["counter_measures"]["adversarial_eps"] == 0.0
    clean_run = {**plain["clean"], "curves": plain["curves"]["clean"]}
    with pytest.raises(MedueError, match="augmentation 'none', this evaluation uses 'crop-flip'"):
        evaluate_classification(
            folder, "cls-quick", "smallcnn", augmentation="crop-flip", clean_run=clean_run, **common
        )
    hardened_clean = {**hardened["clean"], "curves": hardened["curves"]["clean"]}
    reused = evaluate_classification(
        folder, "cls-quick", "smallcnn", adversarial_eps=8 / 255, clean_run=hardened_clean, **common
    )
    assert reused["protected"]["test_accuracy"] == hardened["protected"]["test_accuracy"]


def test_segmentation_exploiter_trains_on_augmented_adversarial_pairs(tmp_path):
    from medue_monai.data.segmentation import SegmentationDataset, load_segmentation_source, make_synthetic_segmentation
    from medue_monai.pipeline.segmentation import train_segmentation_exploiter

    folder = make_synthetic_segmentation(tmp_path / "seg", num_items=5, size=32, seed=0)
    records = load_segmentation_source(folder).records
    train = SegmentationDataset(records[:4], spatial_size=32, cache=True)
    test = SegmentationDataset(records[4:], spatial_size=32, cache=True)
    runs = {}
    for name, overrides in {
        "plain": {},
        "hardened": {"augmentation": "crop-flip", "adversarial_eps": 4 / 255, "adversarial_steps": 2},
    }.items():
        recipe = get_recipe("seg-quick", epochs=1, batch_size=2, **overrides)
        runs[name] = train_segmentation_exploiter(
            recipe, "unet", train, test, device=torch.device("cpu"), seed=0, progress=False
        )
    assert np.isfinite(runs["hardened"]["curves"]["train_loss"]).all()
    assert runs["hardened"]["curves"]["train_loss"] != runs["plain"]["curves"]["train_loss"]


def test_cli_evaluate_takes_the_training_counter_measures(tmp_path, capsys):
    from medue_monai.pipeline.classification import protect_classification

    folder = tmp_path / "lsp"
    protect_classification(SPEC, folder, "lsp", {}, seed=0, device="cpu", progress=False)
    output = tmp_path / "results.json"
    argv = ["evaluate", "--protected", str(folder), "--exploiter", "smallcnn", "--epochs", "1", "--device", "cpu"]
    argv += ["--no-progress", "--output", str(output), "--augmentation", "crop-flip", "--adversarial-eps", "4/255"]
    assert main(argv) == 0
    results = json.loads(output.read_text())
    assert results["counter_measures"]["adversarial_eps"] == pytest.approx(4 / 255)
    assert results["recipe"]["augmentation"] == "crop-flip"
    capsys.readouterr()
    assert main([*argv[:-2], "--adversarial-eps", "2"]) == 2
    assert "adversarial_eps must be in [0, 1]" in capsys.readouterr().err

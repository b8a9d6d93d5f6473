"""SALM / EM: budgets, sparsity, frozen surrogate, determinism, save/load, MONAI trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader

from medue_monai.data import load_classification_spec
from medue_monai.nets import CLASSIFIER_NAMES, get_classifier, resolve_classifier
from medue_monai.pipeline.classification import protect_classification
from medue_monai.protectors import (
    BilevelTrainer,
    EMProtector,
    SALMProtector,
    load_protector,
    positions_to_keep,
    project_l0,
    topk_position_mask,
)
from medue_monai.protectors.augment import TRANSFORM_NAMES, parse_transform_names, sample_transform
from medue_monai.utils import MedueError

SPEC = "synthetic:num_train=24,num_val=4,num_test=8,size=16,seed=3"
EPS = 8 / 255


def _loader(source, batch_size=8, shuffle=False):
    return DataLoader(source.dataset("train"), batch_size=batch_size, shuffle=shuffle)


@pytest.fixture(scope="module")
def fitted():
    source = load_classification_spec(SPEC)
    protector = SALMProtector(eps=EPS, k=10, epochs=2, device="cpu", progress=False, seed=0)
    protector.fit(_loader(source), source.num_classes, 24)
    return source, protector


def test_topk_mask_counts_positions_by_index_even_with_ties():
    score = torch.ones(3, 2, 10, 10)  # every position tied
    mask = topk_position_mask(score, 10.0)
    assert mask.shape == (3, 1, 10, 10)
    assert torch.equal(mask.sum(dim=(1, 2, 3)), torch.full((3,), 10.0))


def test_project_l0_keeps_at_most_k_percent_when_values_tie_at_eps():
    delta = torch.full((4, 3, 28, 28), EPS) * torch.sign(torch.randn(4, 3, 28, 28))
    sparse = project_l0(delta, 10.0)
    touched = (sparse.abs().sum(dim=1) > 0).flatten(1).sum(dim=1)
    assert int(touched.max()) == positions_to_keep(28 * 28, 10.0) == 78


def test_fitted_deltas_respect_linf_and_l0(fitted):
    source, protector = fitted
    delta = protector.delta
    assert float(delta.abs().max()) <= EPS + 1e-7
    touched = (delta.abs().sum(dim=1) > 0).flatten(1).sum(dim=1)
    assert int(touched.max()) <= positions_to_keep(16 * 16, 10.0)
    assert int(touched.min()) > 0, "every training image should be perturbed"
    batch = next(iter(_loader(source)))
    images = batch["image"].as_tensor()
    protected = protector.protect(images, batch["label"], batch["index"])
    assert float(protected.min()) >= 0.0 and float(protected.max()) <= 1.0


def test_surrogate_stays_frozen_while_applying(fitted):
    source, protector = fitted
    before = {k: v.clone() for k, v in protector.surrogate.state_dict().items()}
    batch = next(iter(DataLoader(source.dataset("test"), batch_size=8)))
    delta = protector.perturb(batch["image"].as_tensor(), batch["label"])  # new images: PGD
    after = protector.surrogate.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not protector.surrogate.training
    assert all(not p.requires_grad for p in protector.surrogate.parameters())
    assert float(delta.abs().max()) <= EPS + 1e-7
    touched = (delta.abs().sum(dim=1) > 0).flatten(1).sum(dim=1)
    assert int(touched.max()) <= positions_to_keep(16 * 16, 10.0)
    assert float(delta.abs().sum()) > 0


def test_save_load_round_trip_uses_weights_only(fitted, tmp_path):
    _, protector = fitted
    path = tmp_path / "salm.pt"
    protector.save(path)
    payload = torch.load(path, weights_only=True)  # plain tensors and types only
    assert payload["method"] == "salm"
    loaded = load_protector(path, device="cpu")
    assert loaded.config() == protector.config()
    assert torch.equal(loaded.delta, protector.delta)
    images = torch.rand(2, 1, 16, 16)
    labels = torch.tensor([0, 1])
    assert torch.equal(loaded.perturb(images, labels), protector.perturb(images, labels))


def test_checkpoint_saved_before_the_block_option_loads_as_per_pixel_noise(fitted, tmp_path):
    _, protector = fitted
    assert protector.config()["block"] == 4, "the default"
    path = tmp_path / "old.pt"
    protector.save(path)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["block"], payload["config"]["pattern"]
    torch.save(payload, path)
    assert load_protector(path, device="cpu").block == 1
    assert load_protector(path, device="cpu").pattern == "flat"
    assert load_protector(path, device="cpu").config()["block"] == 1
    assert EMProtector(device="cpu").block == 1, "EM stays per-pixel"


def test_load_rejects_non_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(MedueError, match="cannot load"):
        load_protector(bad)
    with pytest.raises(MedueError, match="no such"):
        load_protector(tmp_path / "missing.pt")


def test_classwise_em_gives_one_pattern_per_class():
    source = load_classification_spec(SPEC)
    protector = EMProtector(epochs=1, classwise=True, em_noise_steps=2, device="cpu", progress=False)
    protector.fit(_loader(source), source.num_classes, 24)
    assert protector.delta.shape[0] == source.num_classes
    batch = next(iter(_loader(source)))
    delta = protector.perturb(torch.full_like(batch["image"].as_tensor(), 0.5), batch["label"])
    for label in batch["label"].unique():
        rows = delta[batch["label"] == label]
        assert torch.equal(rows, rows[:1].expand_as(rows))
    assert float(protector.delta.abs().max()) <= EPS + 1e-7


def test_same_seed_gives_identical_written_files(tmp_path):
    outputs = []
    for name in ("a", "b"):
        protect_classification(SPEC, tmp_path / name, "salm", {"epochs": 1}, seed=7, device="cpu", progress=False)
        with np.load(tmp_path / name / "synthetic.npz") as npz:
            outputs.append(npz["train_images"].copy())
    assert np.array_equal(outputs[0], outputs[1])


def test_written_file_holds_budget_and_sparsity(tmp_path):
    """Every released split holds SALM's budget off the 1/255 grid (0.03: 7 levels) and its K % on the file."""
    manifest = protect_classification(
        SPEC, tmp_path / "out", "salm", {"epochs": 1, "eps": 0.03, "k": 5}, device="cpu", progress=False
    )
    source = load_classification_spec(SPEC)
    largest = []
    with np.load(tmp_path / "out" / "synthetic.npz") as npz:
        assert "test_images" not in npz.files and "test_labels" not in npz.files
        for split in ("train", "val"):
            written = npz[f"{split}_images"]
            assert written.dtype == np.uint8
            assert np.array_equal(npz[f"{split}_labels"], source.arrays[f"{split}_labels"])
            delta = written.astype(int) - source.images(split).astype(int)
            largest.append(int(np.abs(delta).max()))
            touched = (delta != 0).reshape(len(delta), -1).sum(axis=1)
            assert touched.max() <= positions_to_keep(16 * 16, 5) and touched.min() > 0
    assert max(largest) == 7  # floor(255 * 0.03): reached (the val images' 20 PGD steps), never exceeded
    assert manifest["budget"]["realized"]["linf_max"] <= 0.03
    assert manifest["options"]["k"] == 5
    assert manifest["input"]["sha256"] is None and manifest["output"]["synthetic.npz"]["sha256"]


def test_bilevel_trainer_runs_as_monai_trainer():
    source = load_classification_spec(SPEC)
    protector = SALMProtector(epochs=1, device="cpu", progress=False)
    trainer = BilevelTrainer(protector, _loader(source, shuffle=True), source.num_classes, 24, max_epochs=1)
    trainer.run()
    assert protector.fitted
    assert trainer.state.iteration == 3
    touched = (protector.delta.abs().sum(dim=1) > 0).flatten(1).sum(dim=1)
    assert int(touched.max()) <= positions_to_keep(16 * 16, 10.0)


def test_annealed_l0_budget_shrinks_to_k_and_holds_during_the_last_epochs():
    protector = SALMProtector(k=10, epochs=4, l0_projection="anneal", anneal_fraction=0.5, device="cpu")
    budgets = [protector.annealed_k(epoch) for epoch in range(4)]
    assert budgets[0] == 100.0 and budgets[1] == pytest.approx(10 + 90 / 8) and budgets[2:] == [10.0, 10.0]
    assert SALMProtector(k=10, epochs=4, device="cpu").annealed_k(0) == 10.0  # "final": no schedule

    source = load_classification_spec(SPEC)
    protector = SALMProtector(
        eps=EPS, k=10, epochs=4, l0_projection="anneal", block=1, device="cpu", progress=False
    )  # single pixels: two steps of 10 % per batch then touch more than 10 %
    seen = []
    original = protector.train_iteration

    def spy(batch):
        out = original(batch)
        touched = (protector.delta[batch["index"]].abs().sum(dim=1) > 0).flatten(1).sum(dim=1)
        seen.append((protector._projection_k, int(touched.max())))
        return out

    protector.train_iteration = spy
    protector.fit(_loader(source), source.num_classes, 24)
    limit = positions_to_keep(16 * 16, 10.0)
    assert seen[0][0] == 100.0 and seen[0][1] > limit, "the first epoch must not be projected"
    late = [touched for k, touched in seen if k == 10.0]
    assert len(late) == 6 and max(late) <= limit, "from the end of the schedule on, every step is projected"
    assert protector.config()["l0_projection"] == "anneal"


def test_bilevel_trainer_tells_the_protector_its_epoch():
    source = load_classification_spec(SPEC)
    protector = SALMProtector(epochs=2, l0_projection="anneal", device="cpu", progress=False)
    epochs = []
    original = protector.set_epoch
    protector.set_epoch = lambda epoch: (epochs.append(epoch), original(epoch))
    BilevelTrainer(protector, _loader(source), source.num_classes, 24, max_epochs=2).run()
    assert epochs == [0, 1] and protector._projection_k == 10.0


def test_em_schedule_rounds_also_set_the_epoch():
    source = load_classification_spec(SPEC)
    protector = SALMProtector(epochs=2, schedule="em", em_noise_steps=1, l0_projection="anneal", device="cpu")
    protector.progress = False
    epochs = []
    original = protector.set_epoch
    protector.set_epoch = lambda epoch: (epochs.append(epoch), original(epoch))
    protector.fit(_loader(source), source.num_classes, 24)
    assert epochs == [0, 1] and protector._projection_k == 10.0


def test_reset_every_reinitializes_the_surrogate_without_touching_the_global_rng():
    source = load_classification_spec(SPEC)
    protector = SALMProtector(epochs=1, reset_every=2, device="cpu", progress=False)
    protector.prepare(next(iter(_loader(source))), source.num_classes, 24)
    protector.train_iteration(next(iter(_loader(source))))
    trained = [p.detach().clone() for p in protector.surrogate.parameters()]
    protector.set_epoch(1)  # not a reset epoch
    assert all(torch.equal(a, b) for a, b in zip(trained, protector.surrogate.parameters(), strict=True))
    state = torch.get_rng_state()
    protector.set_epoch(2)
    assert torch.equal(state, torch.get_rng_state())
    fresh = list(protector.surrogate.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(trained, fresh, strict=True))
    assert protector.optimizer.param_groups[0]["params"][0] is fresh[0]
    assert not protector.optimizer.state, "the optimizer starts afresh with the new surrogate"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"k": 0}, "k must"),
        ({"k": 101}, "k must"),
        ({"eps": 0}, "eps must"),
        ({"eps": 1.5}, "eps must"),
        ({"schedule": "nope"}, "schedule"),
        ({"surrogate": "alexnet"}, "unknown network"),
        ({"lr": 0}, "lr must"),
        ({"l0_projection": "sometimes"}, "l0_projection"),
        ({"anneal_fraction": 0}, "anneal_fraction"),
        ({"reset_every": -1}, "reset_every"),
        ({"transforms": "flip,rotate"}, "unknown rotate"),
        ({"transforms": " , "}, "at least one"),
        ({"optimizer": "rmsprop"}, "optimizer must"),
        ({"surrogates": 0}, "surrogates must"),
    ],
)
def test_bad_options_raise(options, message):
    with pytest.raises(MedueError, match=message):
        SALMProtector(device="cpu", **options)


def test_surrogate_defaults_resolve_per_device_only_where_auto_and_are_recorded():
    import inspect

    from medue_monai.nets import resolve_classifier

    cpu = SALMProtector(device="cpu")
    assert cpu.config()["surrogate"] == "smallcnn" and cpu.config()["lr"] == 0.01
    # SALM's default names one network, so a GPU and a CPU release fit the same surrogate; EM keeps "auto"
    salm_default = inspect.signature(SALMProtector).parameters["surrogate"].default
    em_default = inspect.signature(EMProtector).parameters["surrogate"].default
    assert resolve_classifier(salm_default, torch.device("cuda")) == "smallcnn"
    assert resolve_classifier(em_default, torch.device("cuda")) == "resnet18"
    assert EMProtector(device="cpu").config()["surrogate"] == "smallcnn"
    assert resolve_classifier("auto", torch.device("cuda")) == "resnet18"
    assert resolve_classifier("vgg11", "cpu") == "vgg11"
    paper = SALMProtector(surrogate="resnet18", device="cpu")
    assert paper.config()["surrogate"] == "resnet18" and paper.config()["lr"] == 0.1
    assert SALMProtector(surrogate="resnet18", lr=0.05, device="cpu").config()["lr"] == 0.05
    # a saved config names the resolved network, so loading elsewhere rebuilds the same surrogate
    assert SALMProtector(**{**cpu.config(), "device": "cpu"}).config() == cpu.config()


def test_paper_literal_mode_masks_each_step_but_does_not_bound_the_released_positions():
    source = load_classification_spec(SPEC)
    limit = positions_to_keep(16 * 16, 10.0)
    protector = SALMProtector(
        eps=EPS, k=10, epochs=3, l0_projection="none", block=1, device="cpu", progress=False, seed=0
    )
    seen = []
    original = protector._sign_step

    def spy(rows, gradient, images):
        before = rows.clone()
        after = original(rows, gradient, images)
        changed = ((after - before).abs().sum(dim=1) > 0).flatten(1).sum(dim=1)
        seen.append(int(changed.max()))
        return after

    protector._sign_step = spy
    protector.fit(_loader(source), source.num_classes, 24)
    assert max(seen) <= limit, "each sign step moves at most K% of the positions"
    touched = (protector.delta.abs().sum(dim=1) > 0).flatten(1).sum(dim=1)
    assert int(touched.max()) > limit, "the union over steps is released without an L0 projection"
    assert float(protector.delta.abs().max()) <= EPS + 1e-7
    batch = next(iter(_loader(source)))
    new = protector.perturb(batch["image"], batch["label"])
    assert float(new.abs().max()) <= EPS + 1e-7
    assert int((new.abs().sum(dim=1) > 0).flatten(1).sum(dim=1).max()) > limit


def test_signed_rank_picks_the_largest_gradients_and_steps_down_there():
    gradient = torch.zeros(1, 1, 10, 10)
    gradient[0, 0, 0, :] = -5.0  # largest magnitudes, but negative
    gradient[0, 0, 1, :] = 1.0  # the ten largest signed values
    gradient[0, 0, 2:, :] = 0.1
    images = torch.full((1, 1, 10, 10), 0.5)
    rows = torch.zeros_like(images)
    options = {"eps": EPS, "k": 10, "step_size": EPS, "block": 1, "device": "cpu"}
    by_magnitude = SALMProtector(**options)._sign_step(rows, gradient, images)
    signed = SALMProtector(rank="signed", **options)._sign_step(rows, gradient, images)
    assert torch.allclose(by_magnitude[0, 0, 0], torch.full((10,), EPS)) and int((by_magnitude != 0).sum()) == 10
    assert torch.allclose(signed[0, 0, 1], torch.full((10,), -EPS)) and int((signed != 0).sum()) == 10
    assert SALMProtector(rank="signed", device="cpu").config()["rank"] == "signed"
    with pytest.raises(MedueError, match="rank must"):
        SALMProtector(rank="random", device="cpu")


def test_block_mask_keeps_whole_aligned_tiles_within_k_percent():
    from medue_monai.protectors import block_average

    score = torch.zeros(2, 1, 10, 10)
    score[0, 0, 2:4, 4:6] = 3.0  # one strong 2x2 tile
    score[0, 0, 0, 0] = 5.0  # one strong pixel: its tile's mean (1.25) is lower
    score[1, 0, 8:10, 8:10] = 1.0
    mask = topk_position_mask(score, 10.0, block=2)  # 10 positions -> 2 tiles of 4
    assert mask.shape == (2, 1, 10, 10)
    assert torch.equal(mask.sum(dim=(1, 2, 3)), torch.full((2,), 8.0))
    assert bool(mask[0, 0, 2:4, 4:6].all()) and bool(mask[0, 0, 0:2, 0:2].all())
    tiles = mask.reshape(2, 5, 2, 5, 2).sum(dim=(2, 4))
    assert set(tiles.unique().tolist()) <= {0.0, 4.0}, "tiles are kept whole"
    # a border cut by the grid: 7x7 with 3x3 tiles, the last row/column of tiles is partial
    averaged = block_average(torch.arange(49.0).reshape(1, 1, 7, 7), 3)
    assert averaged.shape == (1, 1, 7, 7)
    assert float(averaged[0, 0, 0, 0]) == float(torch.tensor([0, 1, 2, 7, 8, 9, 14, 15, 16.0]).mean())
    assert float(averaged[0, 0, 6, 6]) == 48.0
    assert int(topk_position_mask(torch.rand(1, 1, 7, 7), 10.0, block=3).sum()) <= positions_to_keep(49, 10.0)


def test_tiles_shrink_where_one_would_exceed_the_budget():
    from medue_monai.protectors import tile_side

    assert tile_side(28 * 28, 10.0, 4) == 4, "78 positions hold four 4x4 tiles"
    assert tile_side(16 * 16, 5.0, 4) == 3, "12 positions: a 4x4 tile (16) would exceed them"
    assert tile_side(7 * 7, 10.0, 3) == 2
    assert tile_side(100, 1.0, 4) == 1
    assert tile_side(28 * 28, 100.0, 1) == 1
    score = torch.zeros(3, 1, 16, 16)
    score[:, :, 3:6, 3:6] = torch.rand(3, 1, 3, 3) + 1.0  # one aligned 3x3 tile stands out
    mask = topk_position_mask(score, 5.0, block=4)
    assert torch.equal(mask.sum(dim=(1, 2, 3)), torch.full((3,), 9.0)), "one 3x3 tile, within the 12 allowed"
    assert bool(mask[:, :, 3:6, 3:6].all()), "the kept tile is the strong one"


def test_block_salm_releases_tile_constant_sparse_noise_within_budget(tmp_path):
    source = load_classification_spec(SPEC)
    protector = SALMProtector(eps=EPS, k=10, epochs=2, block=2, device="cpu", progress=False, seed=0)
    protector.fit(_loader(source), source.num_classes, 24)
    assert protector.config()["block"] == 2
    batch = next(iter(_loader(source)))
    images = batch["image"].as_tensor().clone()
    images[:] = 0.5  # away from [0, 1], so no clipping splits a tile
    for delta in (protector.perturb(images, batch["label"], batch["index"]), protector.perturb(images, batch["label"])):
        assert float(delta.abs().max()) <= EPS + 1e-7 and float(delta.abs().max()) > 0
        touched = delta.abs().sum(dim=1) > 0
        assert int(touched.flatten(1).sum(dim=1).max()) <= positions_to_keep(16 * 16, 10.0)
        tiles = delta.reshape(8, -1, 8, 2, 8, 2)
        assert torch.equal(tiles.amax(dim=(3, 5)), tiles.amin(dim=(3, 5))), "each 2x2 tile holds one value"
    with pytest.raises(MedueError, match="block must"):
        SALMProtector(block=0, device="cpu")


def test_checker_tiles_are_signed_checkerboards_moved_by_their_pattern_gradient(tmp_path):
    from medue_monai.protectors import tile_pattern_field

    field = tile_pattern_field(3, 4, pattern="checker")
    assert field.shape == (1, 1, 3, 4)
    assert field[0, 0].tolist() == [[1, -1, 1, -1], [-1, 1, -1, 1], [1, -1, 1, -1]]
    assert torch.equal(tile_pattern_field(2, 2, pattern="flat"), torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="pattern must"):
        tile_pattern_field(2, 2, pattern="stripes")

    # one step: a gradient that is itself a checkerboard on one tile selects that tile and moves it by the
    # pattern, against the gradient; a flat gradient of larger magnitude cancels under the pattern
    gradient = torch.zeros(1, 1, 8, 8)
    gradient[0, 0, 4:6, 2:4] = 2.0 * tile_pattern_field(2, 2, pattern="checker")[0, 0]
    gradient[0, 0, 0:2, 0:2] = 5.0
    images = torch.full((1, 1, 8, 8), 0.5)
    options = {"eps": EPS, "k": 6.25, "step_size": EPS, "block": 2, "device": "cpu"}  # 4 positions: one tile
    checker = SALMProtector(pattern="checker", **options)._sign_step(torch.zeros_like(images), gradient, images)
    flat = SALMProtector(**options)._sign_step(torch.zeros_like(images), gradient, images)
    expected = torch.zeros_like(images)
    expected[0, 0, 4:6, 2:4] = -EPS * tile_pattern_field(2, 2, pattern="checker")[0, 0]
    assert torch.allclose(checker, expected)
    assert torch.allclose(flat[0, 0, 0:2, 0:2], torch.full((2, 2), -EPS)) and int((flat != 0).sum()) == 4

    # a fit releases whole tiles, each +-eps times the checkerboard, within both budgets
    source = load_classification_spec(SPEC)
    protector = SALMProtector(eps=EPS, k=10, epochs=2, block=2, pattern="checker", device="cpu", progress=False)
    protector.fit(_loader(source), source.num_classes, 24)
    batch = next(iter(_loader(source)))
    images = torch.full_like(batch["image"].as_tensor(), 0.5)  # away from [0, 1], so no clipping breaks a tile
    for delta in (protector.perturb(images, batch["label"], batch["index"]), protector.perturb(images, batch["label"])):
        assert 0 < float(delta.abs().max()) <= EPS + 1e-7
        assert int((delta.abs().sum(dim=1) > 0).flatten(1).sum(dim=1).max()) <= positions_to_keep(16 * 16, 10.0)
        phase = (delta * tile_pattern_field(16, 16, pattern="checker")).reshape(8, -1, 8, 2, 8, 2)
        assert torch.equal(phase.amax(dim=(3, 5)), phase.amin(dim=(3, 5))), "each tile: one sign times the pattern"
    path = tmp_path / "checker.pt"
    protector.save(path)
    assert load_protector(path, device="cpu").pattern == "checker"
    with pytest.raises(MedueError, match="pattern must"):
        SALMProtector(pattern="stripes", device="cpu")


def test_mix_images_trains_the_surrogate_on_each_delta_placed_on_another_image():
    source = load_classification_spec(SPEC)
    batch = next(iter(_loader(source)))
    images, labels, indices = batch["image"].as_tensor().float(), batch["label"].reshape(-1).long(), batch["index"]
    mixed = SALMProtector(epochs=1, block=1, mix_images=True, device="cpu", progress=False, seed=0)
    mixed.prepare(batch, source.num_classes, 24)
    mixed.delta[indices] = EPS * torch.sign(torch.randn_like(images))
    start = {k: v.clone() for k, v in mixed.surrogate.state_dict().items()}
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))  # the protector's next draw
    assert mixed.config()["mix_images"] is True

    # the same surrogate step by hand: delta i on image order[i], label i
    reference = SALMProtector(epochs=1, block=1, device="cpu", progress=False, seed=0)
    reference.prepare(batch, source.num_classes, 24)
    reference.surrogate.load_state_dict(start)
    reference.surrogate.train()
    logits = reference.surrogate((images[order] + mixed.delta[indices]).clamp(0, 1))
    torch.nn.functional.cross_entropy(logits, labels).backward()
    expected = {n: p.grad.clone() for n, p in reference.surrogate.named_parameters()}
    mixed.model_step(images, labels, indices)
    for name, parameter in mixed.surrogate.named_parameters():
        assert torch.allclose(parameter.grad, expected[name], atol=1e-6), name

    # the noise step adds the gradient of each delta on another image to the one on its own image
    mixed.surrogate.load_state_dict(start)
    delta = mixed.delta[indices].clone()
    order = torch.randperm(len(images), generator=mixed.generator.clone_state())
    own = mixed._delta_gradient(images, delta, labels)
    other = mixed._delta_gradient(images[order], delta, labels)
    step = mixed._sign_step(delta.clone(), own + other, images)
    without = mixed._sign_step(delta.clone(), own, images)
    mixed.noise_step(images, labels, indices, 1)
    assert torch.equal(mixed.delta[indices], step)
    assert not torch.equal(step, without), "the other image's gradient must change the step"
    assert SALMProtector(device="cpu").config()["mix_images"] is False


@pytest.mark.parametrize(
    ("name", "norm_type"), [("smallcnn", torch.nn.InstanceNorm2d), ("SmallCNN_BatchNorm", torch.nn.BatchNorm2d)]
)
def test_small_surrogates_differ_only_in_their_normalization(name: str, norm_type: type) -> None:
    canonical = resolve_classifier(name, "cpu")
    assert canonical in CLASSIFIER_NAMES
    network = get_classifier(canonical, 1, 2, 28)
    norms = [m for m in network.modules() if isinstance(m, (torch.nn.InstanceNorm2d, torch.nn.BatchNorm2d))]
    assert norms and all(isinstance(m, norm_type) for m in norms)
    other = get_classifier("smallcnn-batchnorm" if canonical == "smallcnn" else "smallcnn", 1, 2, 28)
    assert [p.shape for p in network.parameters() if p.ndim > 1] == [p.shape for p in other.parameters() if p.ndim > 1]
    assert network.eval()(torch.rand(3, 1, 28, 28)).shape == (3, 2)
    # both small networks take the learning rate our smallcnn runs were measured with
    assert SALMProtector(surrogate=name, device="cpu").lr == 0.01
    with pytest.raises(MedueError, match="unknown network"):
        resolve_classifier("smallcnn-groupnorm", "cpu")


def test_crop_flip_transform_moves_every_sample_on_its_own_and_passes_gradients():
    generator = torch.Generator().manual_seed(0)
    images = torch.zeros(16, 1, 16, 16)
    images[:, :, 6:10, 5:9] = torch.rand(16, 1, 4, 4)  # content 5 px from every border: no crop cuts it
    images = images.requires_grad_(True)
    moved = sample_transform(images, generator, parse_transform_names("crop-flip"))
    assert moved.shape == images.shape
    assert torch.allclose(moved.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3))), "a shift by <= 4 px keeps the content"
    places = {tuple(torch.nonzero(m[0] > 0).min(dim=0).values.tolist()) for m in moved.detach()}
    assert len(places) > 4, "each sample takes its own crop"
    moved.sum().backward()
    assert torch.all(images.grad[:, :, 6:10, 5:9] == 1), "every content pixel reaches the output once"
    assert set(images.grad.unique().tolist()) <= {0.0, 1.0}, "border pixels a crop cuts off get no gradient"


def test_salm_draws_only_the_transforms_it_is_given(monkeypatch):
    from medue_monai.protectors import salm as salm_module

    drawn = []

    def recording(x, generator, names):
        drawn.append(names)
        return x

    monkeypatch.setattr(salm_module, "sample_transform", recording)
    source = load_classification_spec(SPEC)
    protector = SALMProtector(
        eps=EPS, k=10, epochs=1, num_transforms=2, transforms="crop-flip,blur", device="cpu", progress=False
    )
    protector.fit(_loader(source), source.num_classes, 24)
    assert drawn and set(drawn) == {("crop-flip", "blur")}
    assert protector.config()["transforms"] == "crop-flip,blur"
    assert SALMProtector(device="cpu").config()["transforms"] == ",".join(TRANSFORM_NAMES)


def test_ensemble_members_train_as_if_alone_and_the_noise_sees_their_mean_loss():
    from medue_monai.nets import ClassifierEnsemble

    source = load_classification_spec(SPEC)
    batch = next(iter(_loader(source)))
    images, labels, indices = batch["image"].as_tensor().float(), batch["label"].reshape(-1).long(), batch["index"]
    protector = SALMProtector(epochs=1, surrogates=3, device="cpu", progress=False, seed=0)
    protector.prepare(batch, source.num_classes, 24)
    ensemble = protector.surrogate
    assert isinstance(ensemble, ClassifierEnsemble) and len(ensemble.members) == 3
    first = [next(member.parameters()) for member in ensemble.members]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2]), "each member has its own init"
    protector.delta[indices] = EPS * torch.sign(torch.randn_like(images))
    inputs = (images + protector.delta[indices]).clamp(0, 1)

    # each member's gradient after one model step is the one it would get trained alone (scaled by 1/3)
    start = [{k: v.clone() for k, v in member.state_dict().items()} for member in ensemble.members]
    alone = []
    for state in start:
        single = get_classifier("smallcnn", 1, source.num_classes, 16)
        single.load_state_dict(state)
        single.train()
        torch.nn.functional.cross_entropy(single(inputs), labels).backward()
        alone.append([p.grad.clone() for p in single.parameters()])
    protector.model_step(images, labels, indices)
    for member, grads in zip(ensemble.members, alone, strict=True):
        for parameter, grad in zip(member.parameters(), grads, strict=True):
            assert torch.allclose(parameter.grad * 3, grad, atol=1e-6)

    # the noise gradient is that of the mean of the members' cross-entropies
    protector.surrogate.eval()
    delta = protector.delta[indices].clone().requires_grad_(True)
    losses = [torch.nn.functional.cross_entropy(m((images + delta).clamp(0, 1)), labels) for m in ensemble.members]
    expected = torch.autograd.grad(torch.stack(losses).mean(), delta)[0]
    assert torch.allclose(protector._delta_gradient(images, protector.delta[indices], labels), expected, atol=1e-7)


def test_ensemble_and_adam_surrogates_fit_within_budget_and_round_trip(tmp_path):
    source = load_classification_spec(SPEC)
    protector = SALMProtector(epochs=2, surrogates=2, optimizer="adam", device="cpu", progress=False, seed=0)
    protector.fit(_loader(source), source.num_classes, 24)
    assert isinstance(protector.optimizer, torch.optim.Adam)
    assert protector.config()["lr"] == 1e-3 and protector.config()["optimizer"] == "adam"
    assert protector.config()["surrogates"] == 2
    delta = protector.delta
    assert float(delta.abs().max()) <= EPS + 1e-7
    nonzero = (delta.abs().sum(1) > 0).flatten(1).sum(1)
    assert int(nonzero.max()) <= positions_to_keep(16 * 16, 10)
    path = tmp_path / "ensemble.pt"
    protector.save(path)
    loaded = load_protector(path, device="cpu")
    assert loaded.config() == protector.config()
    images = torch.stack([source.dataset("test")[i]["image"].as_tensor() for i in range(4)]).float()
    labels = torch.tensor([int(source.dataset("test")[i]["label"]) for i in range(4)])
    assert torch.equal(loaded.perturb(images, labels), protector.perturb(images, labels))
    assert SALMProtector(device="cpu").config()["surrogates"] == 1
    assert SALMProtector(device="cpu").config()["optimizer"] == "sgd"


def test_a_bundle_style_config_builds_and_runs_the_bilevel_trainer(tmp_path):
    """The bundle door: ``monai.bundle.ConfigParser`` builds loader, SALM and trainer from a train.json-like dict."""
    from monai.bundle import ConfigParser

    saved = tmp_path / "salm.pt"
    config = {
        "source": {"_target_": "medue_monai.data.load_classification_spec", "spec": SPEC},
        "dataset": "$@source.dataset('train')",
        "loader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 8, "shuffle": True},
        "protector": {
            "_target_": "medue_monai.protectors.SALMProtector",
            "eps": EPS,
            "k": 10,
            "epochs": 2,
            "device": "cpu",
            "progress": False,
        },
        "trainer": {
            "_target_": "medue_monai.protectors.BilevelTrainer",
            "protector": "@protector",
            "data_loader": "@loader",
            "num_classes": "$@source.num_classes",
            "num_samples": "$len(@dataset)",
            "max_epochs": "@protector#epochs",
            "handlers": [{"_target_": "StatsHandler", "tag_name": "train_loss", "output_transform": "$lambda x: None"}],
        },
        "run": ["$@trainer.run()", f"$@protector.save('{saved}')"],
    }
    parser = ConfigParser(config)
    parser.get_parsed_content("run")
    trainer, protector = parser.get_parsed_content("trainer"), parser.get_parsed_content("protector")
    assert trainer.state.epoch == 2 and trainer.state.iteration == 6 and protector.fitted
    assert float(protector.delta.abs().max()) <= EPS + 1e-7
    touched = (protector.delta.abs().sum(dim=1) > 0).flatten(1).sum(dim=1)
    assert int(touched.max()) <= positions_to_keep(16 * 16, 10.0) and int(touched.min()) > 0
    reloaded = load_protector(saved, device="cpu")
    assert torch.equal(reloaded.delta, protector.delta) and reloaded.config() == protector.config()

"""UMed: CDC layer, region masks, perturbation bounds, PNG round trip, transforms and the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.data import MetaTensor
from PIL import Image

from medue_monai.io.png import apply_delta, write_png
from medue_monai.nets.cdc import CDConv2d, CDCUNet, texture_generator
from medue_monai.protectors.base import load_protector
from medue_monai.protectors.masks import contour_band, contour_radius, dilate_mask, roi_interior
from medue_monai.protectors.trainer import BilevelTrainer
from medue_monai.protectors.umed import (
    UMedProtector,
    texture_strength,
)
from medue_monai.transforms.umed import UMedProtect, UMedProtectD, UMedProtectd, UMedProtectDict
from medue_monai.utils import MedueError

EPS = 4 / 255


def _batch(size: int = 16, batch: int = 2, channels: int = 3) -> dict:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, channels, size, size, generator=generator)
    labels = torch.zeros(batch, 1, size, size)
    labels[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    return {"image": images, "label": labels, "index": torch.arange(batch)}


@pytest.fixture(scope="module")
def fitted() -> UMedProtector:
    torch.manual_seed(0)
    protector = UMedProtector(epochs=2, device="cpu", progress=False, lr_generator=1e-2)
    batch = _batch()
    protector.fit([batch], 2, 2)
    return protector


def test_cdc_equals_two_convolution_formula() -> None:
    torch.manual_seed(0)
    for stride in (1, 2):
        layer = CDConv2d(3, 5, stride=stride)
        x = torch.randn(2, 3, 11, 13)
        vanilla = F.conv2d(x, layer.weight_v, layer.bias, stride=stride, padding=1)
        difference = F.conv2d(x, layer.weight_c, stride=stride, padding=1) - F.conv2d(
            x, layer.weight_c.sum(dim=(2, 3), keepdim=True), stride=stride
        )
        assert torch.allclose(layer(x), vanilla + difference, atol=1e-5)


def test_cdc_definition_by_neighbourhoods() -> None:
    """out(r) = sum w_v f(r+dr) + sum w_c [f(r+dr) - f(r)], from unfolded 3x3 neighbourhoods."""
    torch.manual_seed(1)
    layer = CDConv2d(2, 3, bias=False)
    x = torch.randn(1, 2, 6, 7)
    patches = F.unfold(x, 3, padding=1).view(1, 2, 9, 42)
    centre = x.view(1, 2, 1, 42)
    w_v, w_c = layer.weight_v.view(3, 2, 9), layer.weight_c.view(3, 2, 9)
    expected = torch.einsum("oik,bikp->bop", w_v, patches) + torch.einsum("oik,bikp->bop", w_c, patches - centre)
    assert torch.allclose(layer(x).view(1, 3, 42), expected, atol=1e-5)


def test_generators_keep_shape() -> None:
    x = torch.rand(1, 3, 30, 34)
    assert CDCUNet(3, 3)(x).shape == x.shape
    assert CDCUNet(3, 3, cdc=False)(x).shape == x.shape
    assert texture_generator(1, 1)(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_regions() -> None:
    mask = torch.zeros(1, 1, 20, 20)
    mask[..., 5:15, 5:15] = 1
    band = contour_band(mask, 2)
    interior = roi_interior(mask, 2)
    assert band[..., 3:17, 3:17].sum() == 14 * 14 - 6 * 6 and band.sum() == 14 * 14 - 6 * 6
    assert interior.sum() == 6 * 6 and (interior * band).sum() == 0
    assert contour_radius(224, 224) == 3 and contour_radius(128, 128) == 2 and contour_radius(32, 32) == 1
    strength = texture_strength(torch.rand(2, 3, 16, 16))
    assert strength.shape == (2, 1, 16, 16) and strength.min() >= 0 and strength.max() <= 1
    assert texture_strength(torch.full((1, 1, 8, 8), 0.5)).abs().sum() == 0


def test_delta_bounds(fitted: UMedProtector) -> None:
    batch = _batch()
    images, labels = batch["image"], batch["label"]
    band, interior, bound = fitted.regions(images, labels)
    with torch.no_grad():
        delta_c, delta_t = fitted.deltas(images, labels)
    assert delta_c.abs().max() <= EPS + 1e-7
    assert (delta_c * (1 - band)).abs().max() == 0
    assert delta_c.abs().sum() > 0
    strength = texture_strength(images)
    assert (delta_t.abs() <= EPS * strength * interior + 1e-7).all()
    assert (delta_t * (1 - interior)).abs().max() == 0
    delta = fitted.perturb(images, labels)
    assert ((images + delta) >= 0).all() and ((images + delta) <= 1).all()
    # band and interior are disjoint, so the sum of the two perturbations keeps the one budget
    assert (band * interior).max() == 0 and delta.abs().max() <= EPS + 1e-6
    outside = 1 - dilate_mask(labels, contour_radius(16, 16, base_radius=fitted.contour_radius))
    assert (delta * outside).abs().max() == 0
    empty = fitted.perturb(images, torch.zeros_like(labels))
    assert empty.abs().max() == 0


def test_ablation_switches() -> None:
    batch = _batch(16, 1)
    for options, zero in (({"contour_only": True}, "t"), ({"texture_only": True}, "c")):
        protector = UMedProtector(epochs=1, device="cpu", progress=False, **options)
        protector.prepare(batch)
        with torch.no_grad():
            delta_c, delta_t = protector.deltas(batch["image"], batch["label"])
        assert (delta_t if zero == "t" else delta_c).abs().max() == 0
    fixed = UMedProtector(fixed_bound=True, device="cpu")
    _, interior, bound = fixed.regions(batch["image"], batch["label"])
    assert torch.allclose(bound, EPS * interior)
    with pytest.raises(MedueError):
        UMedProtector(contour_only=True, texture_only=True)
    with pytest.raises(MedueError):
        UMedProtector(output="sigmoid")


def test_alternation_phase() -> None:
    protector = UMedProtector(device="cpu", alternation="epoch")
    assert [protector.phase(i) for i in range(6)] == ["surrogate"] + ["generators"] * 4 + ["surrogate"]
    assert UMedProtector(device="cpu").phase(3) == "both"
    with pytest.raises(MedueError, match="alternation"):
        UMedProtector(alternation="sometimes")


def test_batch_alternation_updates_generators_and_surrogate_each_batch() -> None:
    protector = UMedProtector(epochs=1, device="cpu", progress=False)
    batch = _batch(16, 1)
    protector.prepare(batch)
    before = {
        name: [p.detach().clone() for p in net.parameters()]
        for name, net in (
            ("contour", protector.contour_net),
            ("texture", protector.texture_net),
            ("surrogate", protector.surrogate),
        )
    }
    output = protector.train_iteration(batch)
    assert output["phase_surrogate"] == 1.0
    for name, net in (
        ("contour", protector.contour_net),
        ("texture", protector.texture_net),
        ("surrogate", protector.surrogate),
    ):
        changed = any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters(), strict=True))
        assert changed, f"{name} network was not updated"


@pytest.mark.parametrize("generator_steps", [1, 3])
def test_batch_alternation_takes_generator_steps_per_batch(generator_steps: int) -> None:
    protector = UMedProtector(epochs=1, generator_steps=generator_steps, device="cpu", progress=False)
    batch = _batch(16, 1)
    protector.prepare(batch)
    protector.train_iteration(batch)
    generator_parameter = next(protector.contour_net.parameters())
    surrogate_parameter = next(protector.surrogate.parameters())
    assert int(protector.generator_optimizer.state[generator_parameter]["step"]) == generator_steps
    assert int(protector.surrogate_optimizer.state[surrogate_parameter]["step"]) == 1
    with pytest.raises(MedueError, match="generator_steps"):
        UMedProtector(generator_steps=0)


def test_reset_every_reinitializes_the_surrogate_once_per_epoch() -> None:
    protector = UMedProtector(epochs=4, reset_every=2, device="cpu", progress=False)
    batch = _batch(16, 1)
    protector.prepare(batch)
    protector.set_epoch(0)
    protector.train_iteration(batch)
    trained = [p.detach().clone() for p in protector.surrogate.parameters()]
    contour = [p.detach().clone() for p in protector.contour_net.parameters()]
    protector.set_epoch(1)  # not a reset epoch
    assert all(torch.equal(a, b) for a, b in zip(trained, protector.surrogate.parameters(), strict=True))

    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    protector.set_epoch(2)
    assert torch.equal(torch.rand(3), expected_draw), "the reset must not consume the global random stream"
    fresh = [p.detach().clone() for p in protector.surrogate.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(trained, fresh, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(contour, protector.contour_net.parameters(), strict=True))
    assert not protector.surrogate_optimizer.state, "a reset surrogate starts with a fresh optimizer"

    protector.train_iteration(batch)
    protector.set_epoch(2)  # a second call for the same epoch (engine handler and fit loop) resets nothing
    assert any(not torch.equal(a, b) for a, b in zip(fresh, protector.surrogate.parameters(), strict=True))

    other = UMedProtector(epochs=4, reset_every=2, device="cpu", progress=False)
    other.prepare(batch)
    other.set_epoch(2)
    assert all(torch.equal(a, b) for a, b in zip(fresh, other.surrogate.parameters(), strict=True))
    assert UMedProtector(device="cpu").config()["reset_every"] == 0
    with pytest.raises(MedueError, match="reset_every"):
        UMedProtector(reset_every=-1)


def test_clean_negatives_train_the_surrogate_to_call_clean_images_background() -> None:
    batch = _batch(16, 2)
    images, labels = batch["image"], (batch["label"] > 0.5).float()
    with_negatives = UMedProtector(clean_negatives=0.5, device="cpu", progress=False)
    with_negatives.prepare(batch)
    start = {k: v.clone() for k, v in with_negatives.surrogate.state_dict().items()}

    # the same step by hand: DiceCE on the perturbed batch plus 0.5 x DiceCE on the clean batch labelled 0
    reference = UMedProtector(device="cpu", progress=False)
    reference.prepare(batch)
    reference.surrogate.load_state_dict(start)
    with torch.no_grad():
        delta_c, delta_t = with_negatives.deltas(images, labels)
    protected = (images + delta_c + delta_t).clamp(0.0, 1.0)
    perturbed_loss = reference.loss(reference.surrogate_logits(protected), labels)
    clean_loss = reference.loss(reference.surrogate_logits(images), torch.zeros_like(labels))
    (perturbed_loss + 0.5 * clean_loss).backward()
    expected = {n: p.grad.clone() for n, p in reference.surrogate.named_parameters()}

    record = with_negatives._surrogate_step(images, labels)
    # "loss" reports the perturbed part only
    assert record["loss"] == pytest.approx(float(perturbed_loss.detach()), rel=1e-5)
    for name, parameter in with_negatives.surrogate.named_parameters():
        assert torch.allclose(parameter.grad, expected[name], atol=1e-6), name
    # without the option the clean images play no part: the gradient is the perturbed loss's alone
    reference.surrogate.zero_grad()
    reference.loss(reference.surrogate_logits(protected), labels).backward()
    assert any(not torch.allclose(p.grad, expected[n], atol=1e-6) for n, p in reference.surrogate.named_parameters())
    assert UMedProtector(device="cpu").config()["clean_negatives"] == 0.0
    with pytest.raises(MedueError, match="clean_negatives"):
        UMedProtector(clean_negatives=-1)


def test_background_noise_is_label_free_bounded_and_seeded_per_image(fitted: UMedProtector, tmp_path) -> None:
    assert UMedProtector(device="cpu").config()["background_noise"] == 0.0
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(MedueError, match="background_noise"):
            UMedProtector(background_noise=bad)
    fitted.save(tmp_path / "umed.pt")
    noisy_protector = load_protector(tmp_path / "umed.pt", device="cpu")
    noisy_protector.background_noise = 0.5
    batch = _batch(size=32, batch=3)
    images, labels = batch["image"], batch["label"].clone()
    labels[2] = 0.0  # an empty mask: no perturbation at all, noise included
    plain = fitted.perturb(images, labels)
    noisy = noisy_protector.perturb(images, labels)
    near_roi = dilate_mask(labels, contour_radius(32, 32)).expand_as(images) > 0
    # inside the ROI and its band the release is the fitted generators' alone
    assert torch.equal(noisy[near_roi], plain[near_roi])
    # outside it: noise within 0.5 * eps * x_t, both signs, on every image with a mask
    outside = ~near_roi
    outside[2] = False
    bound = (0.5 * EPS * texture_strength(images)).expand_as(images)
    assert (noisy[outside].abs() <= bound[outside] + 1e-6).all()
    assert noisy.abs().max() <= EPS + 1e-6
    changed = noisy[outside][bound[outside] > 1e-3]
    assert (changed > 0).float().mean().item() == pytest.approx(0.5, abs=0.1)
    assert (changed != 0).all()
    assert noisy[2].abs().max() == 0
    # each image's signs depend on the image and the seed, not on the batch it came in
    assert torch.allclose(noisy_protector.perturb(images[1:2], labels[1:2]), noisy[1:2], atol=1e-6)
    first, second = torch.sign(noisy[0][outside[0]]), torch.sign(noisy[1][outside[1]])
    assert (first == second).float().mean().item() == pytest.approx(0.5, abs=0.1)
    noisy_protector.seed = 1
    reseeded = noisy_protector.perturb(images, labels)
    assert not torch.equal(reseeded[outside], noisy[outside])


def test_save_load_roundtrip(fitted: UMedProtector, tmp_path) -> None:
    path = tmp_path / "umed.pt"
    fitted.save(path)
    loaded = load_protector(path, device="cpu")
    batch = _batch()
    assert torch.allclose(
        loaded.perturb(batch["image"], batch["label"]), fitted.perturb(batch["image"], batch["label"])
    )
    assert loaded.config() == fitted.config()


def test_png_roundtrip_keeps_size_channels_budget(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for shape in ((37, 53, 3), (41, 29)):
        original = rng.integers(0, 256, size=shape, dtype=np.uint8)
        channels = 3 if len(shape) == 3 else 1
        delta = torch.empty(channels, 16, 16).uniform_(-3 * EPS, 3 * EPS)
        written = apply_delta(original, delta, EPS)
        path = write_png(tmp_path / f"x{len(shape)}.png", written)
        back = np.array(Image.open(path))
        assert back.shape == original.shape and back.dtype == np.uint8
        assert np.array_equal(back, written)
        assert np.abs(back.astype(int) - original.astype(int)).max() <= int(np.floor(EPS * 255 + 1e-6))
        assert np.abs(back.astype(int) - original.astype(int)).max() > 0


def test_transforms_keep_meta(fitted: UMedProtector, tmp_path) -> None:
    batch = _batch()
    image = MetaTensor(batch["image"][0], meta={"filename_or_obj": "a.png", "original_size": [40, 50]})
    label = MetaTensor(batch["label"][0])
    out = UMedProtect(fitted)(image, label)
    assert isinstance(out, MetaTensor) and out.meta["original_size"] == [40, 50] and out.shape == image.shape
    assert out.meta["filename_or_obj"] == "a.png"
    assert torch.allclose(out.as_tensor(), fitted.protect(batch["image"][:1], batch["label"][:1])[0])
    path = tmp_path / "p.pt"
    fitted.save(path)
    item = UMedProtectd(keys="image", protector=str(path), device="cpu")({"image": image, "label": label, "id": "a"})
    assert item["image"].meta["original_size"] == [40, 50] and item["id"] == "a"
    assert UMedProtectD is UMedProtectd and UMedProtectDict is UMedProtectd
    missing = UMedProtectd(keys=["image", "other"], protector=fitted, allow_missing_keys=True)(
        {"image": image, "label": label}
    )
    assert "other" not in missing
    with pytest.raises(MedueError):
        UMedProtectd(keys="image", protector=None)


def test_bilevel_trainer_drives_umed() -> None:
    protector = UMedProtector(epochs=2, cycle=2, alternation="epoch", device="cpu", progress=False)
    loader = [_batch(16, 1)]
    phases = []
    trainer = BilevelTrainer(protector, loader, 2, 1, max_epochs=2)
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda engine: phases.append(engine.state.output["phase_surrogate"])
    )
    trainer.run()
    assert phases == [1.0, 0.0] and protector.fitted


def test_a_bundle_style_config_fits_umed_on_a_folder_dataset(tmp_path) -> None:
    """The bundle door for segmentation: ``ConfigParser`` builds folder source, loader, UMed and trainer."""
    from monai.bundle import ConfigParser

    from medue_monai.data.segmentation import make_synthetic_segmentation

    folder = make_synthetic_segmentation(tmp_path / "seg", num_items=4, size=32, seed=1)
    config = {
        "source": {"_target_": "medue_monai.data.load_segmentation_source", "data": str(folder)},
        "dataset": {
            "_target_": "medue_monai.data.SegmentationDataset",
            "records": "$@source.records",
            "spatial_size": 32,
            "channels": "$@source.in_channels",
        },
        "loader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 2, "shuffle": True},
        "protector": {
            "_target_": "medue_monai.protectors.UMedProtector",
            "eps": EPS,
            "epochs": 2,
            "cycle": 2,
            "alternation": "epoch",
            "device": "cpu",
            "progress": False,
        },
        "trainer": {
            "_target_": "medue_monai.protectors.BilevelTrainer",
            "protector": "@protector",
            "data_loader": "@loader",
            "num_classes": 2,
            "num_samples": "$len(@dataset)",
            "max_epochs": "@protector#epochs",
        },
        "run": "$@trainer.run()",
    }
    parser = ConfigParser(config)
    parser.get_parsed_content("run")
    protector = parser.get_parsed_content("protector")
    assert parser.get_parsed_content("trainer").state.iteration == 4 and protector.fitted
    batch = next(iter(parser.get_parsed_content("loader")))
    images, labels = batch["image"].as_tensor(), batch["label"].as_tensor()
    delta = protector.perturb(images, labels)
    band, interior, bound = protector.regions(images, (labels > 0.5).float(), texture_strength(images))
    outside = (band + interior) == 0
    assert float(delta.abs().max()) > 0, "a fitted UMed changes the ROI"
    assert float(delta.abs().amax(dim=1, keepdim=True)[outside].max()) == 0.0
    assert float(delta.abs().max()) <= EPS + 1e-6

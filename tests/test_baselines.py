"""Baselines (TAP, SEP, LSP, AR, EM-seg and the segmentation versions) on tiny synthetic tensors."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch

from medue_monai.io.npz import quantize_protected
from medue_monai.protectors import em_seg as em_seg_module
from medue_monai.protectors import surrogate as surrogate_module
from medue_monai.protectors.ar import ARProtector, ARSegProtector, ar_generate, ar_row_inverse
from medue_monai.protectors.base import load_protector
from medue_monai.protectors.em_seg import EMSegContourProtector, EMSegProtector, EMSegROIProtector
from medue_monai.protectors.l2noise import l2_budget
from medue_monai.protectors.lsp import LSPProtector, LSPSegProtector
from medue_monai.protectors.masks import contour_band, contour_radius, dilate_mask, erode_mask, region_mask
from medue_monai.protectors.sep import SEPProtector, SEPSegProtector
from medue_monai.protectors.tap import TAPProtector, TAPSegProtector
from medue_monai.utils import MedueError

ALL_CLASSES = [
    TAPProtector,
    TAPSegProtector,
    SEPProtector,
    SEPSegProtector,
    LSPProtector,
    LSPSegProtector,
    ARProtector,
    ARSegProtector,
    EMSegProtector,
    EMSegContourProtector,
    EMSegROIProtector,
]


# ---------------------------------------------------------------------------- data
def _classification(n: int = 12, channels: int = 1, size: int = 16, classes: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n, channels, size, size), generator=generator, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    return raw, raw.float() / 255.0, labels


def _batches(images: torch.Tensor, labels: torch.Tensor, batch: int = 6) -> list[dict]:
    return [
        {
            "image": images[i : i + batch],
            "label": labels[i : i + batch],
            "index": torch.arange(i, i + batch)[: len(images[i : i + batch])],
        }
        for i in range(0, len(images), batch)
    ]


def _segmentation(n: int = 4, size: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n, 1, size, size), generator=generator, dtype=torch.uint8)
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        masks[i, :, 6 + i : 18 + i, 8 : 22 - i] = 1.0
    return raw, raw.float() / 255.0, masks


def _written_delta(raw: torch.Tensor, protected: torch.Tensor, eps: float | None) -> np.ndarray:
    """Quantize as the npz writer does and return (written - clean) / 255, shape (N, C*H*W)."""
    clean = raw[:, 0].numpy() if raw.shape[1] == 1 else np.moveaxis(raw.numpy(), 1, -1)
    written = quantize_protected(clean, protected, eps)
    return ((written.astype(np.float64) - clean.astype(np.float64)) / 255.0).reshape(len(raw), -1)


# ---------------------------------------------------------------------------- tiny networks
class _TinyClassifier(torch.nn.Module):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _tiny_segmenter(name: str, in_channels: int, out_channels: int = 2, *args) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_channels, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3, padding=1)
    )


REAL_GET_CLASSIFIER = surrogate_module.get_classifier
REAL_GET_SEGMENTER = surrogate_module.get_segmenter


@pytest.fixture(autouse=True)
def tiny_networks(monkeypatch):
    """Swap the ResNet-18 / UNet surrogates for tiny conv nets (the logic under test is network-agnostic)."""
    monkeypatch.setattr(surrogate_module, "get_classifier", lambda name, c, k, size, *dims: _TinyClassifier(c, k))
    monkeypatch.setattr(surrogate_module, "get_segmenter", _tiny_segmenter)
    monkeypatch.setattr(em_seg_module, "get_segmenter", _tiny_segmenter)


# ---------------------------------------------------------------------------- fitted fixtures
FAST_TAP = {"steps": 3, "surrogate_epochs": 1, "progress": False, "device": "cpu"}
FAST_SEP = {"steps": 3, "surrogate_epochs": 2, "progress": False, "device": "cpu"}
FAST_EM = {
    "epochs": 1,
    "model_steps": 2,
    "noise_steps": 2,
    "apply_steps": 2,
    "progress": False,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def cls_data():
    return _classification()


@pytest.fixture(scope="module")
def seg_data():
    return _segmentation()


@pytest.fixture
def fitted_tap(cls_data):
    _, images, labels = cls_data
    return TAPProtector(**FAST_TAP).fit(_batches(images, labels), 3, len(images))


@pytest.fixture
def fitted_sep(cls_data):
    _, images, labels = cls_data
    return SEPProtector(**FAST_SEP).fit(_batches(images, labels), 3, len(images))


# ---------------------------------------------------------------------------- interface
@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_options_documented_and_jsonable(cls):
    doc = inspect.getdoc(cls) or ""
    assert "Args:" in doc
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name in ("self", "device"):
            continue
        assert f"{name}:" in doc, f"{cls.__name__}: option {name} is not documented"
        json.dumps(parameter.default)


def test_budget_info_norms(cls_data):
    _, images, labels = cls_data
    lsp = LSPProtector(device="cpu").fit(_batches(images, labels), 3, len(images))
    ar = ARProtector(device="cpu").fit(_batches(images, labels), 3, len(images))
    assert lsp.budget_info() == {"norm": "l2", "budget": pytest.approx(16 * 6 / 255)}
    assert ar.budget_info() == {"norm": "l2", "budget": pytest.approx(np.sqrt(256 / 3072))}
    assert TAPProtector(device="cpu").budget_info() == {"norm": "linf", "budget": pytest.approx(8 / 255)}
    assert SEPProtector(device="cpu").budget_info()["norm"] == "linf"
    assert EMSegProtector(device="cpu").budget_info()["norm"] == "linf"


# ---------------------------------------------------------------------------- budgets on written values
@pytest.mark.parametrize("cls", [LSPProtector, ARProtector])
@pytest.mark.parametrize("channels", [1, 3])
def test_l2_budget_holds_after_quantization(cls, channels):
    raw, images, labels = _classification(channels=channels)
    protector = cls(device="cpu").fit(_batches(images, labels), 3, len(images))
    budget = protector.budget_info()["budget"]
    for indices in (torch.arange(len(images)), None):
        delta = protector.perturb(images, labels, indices)
        protected = images + delta
        assert protected.min() >= 0 and protected.max() <= 1
        norms = np.linalg.norm(_written_delta(raw, protected, None), axis=1)
        assert norms.max() <= budget * (1 + 1e-6)
        assert norms.min() > 0.5 * budget  # the budget is used, not wasted


def test_l2_budget_formulas():
    assert l2_budget((3, 32, 32), reference=1.0) == pytest.approx(1.0)
    assert l2_budget((1, 28, 28), reference=1.0) == pytest.approx(np.sqrt(784 / 3072))
    assert l2_budget((3, 224, 224), per_value=6 / 255) == pytest.approx(np.sqrt(3 * 224 * 224) * 6 / 255)


@pytest.mark.parametrize("name", ["tap", "sep"])
def test_linf_budget_holds_after_quantization(name, cls_data, fitted_tap, fitted_sep):
    raw, images, labels = cls_data
    protector = fitted_tap if name == "tap" else fitted_sep
    protected = images + protector.perturb(images, labels)
    assert protected.min() >= 0 and protected.max() <= 1
    diff = _written_delta(raw, protected, protector.eps)
    assert np.abs(diff).max() <= protector.eps + 1e-9


def test_sep_keeps_improved_checkpoints(fitted_sep):
    epochs = [r for r in fitted_sep.history if "epoch" in r]
    assert len(fitted_sep.models) == sum(r["kept"] for r in epochs) >= 1
    assert fitted_sep.history[0]["score_source"] == "holdout"
    assert fitted_sep.history[0]["recipe"]["optimizer"] == "adam"


def test_tap_targets_next_class(fitted_tap):
    labels = torch.tensor([0, 1, 2])
    assert fitted_tap._targets(labels).tolist() == [1, 2, 0]


# ---------------------------------------------------------------------------- class-wise structure
def test_lsp_one_pattern_family_per_class(cls_data):
    _, images, labels = cls_data
    protector = LSPProtector(noise_std=0.0, quantize=False, device="cpu")
    protector.fit(_batches(images, labels), 3, len(images))
    patterns = protector.patterns(protector.codes)
    for label in range(3):
        members = patterns[labels == label]
        assert torch.allclose(members, members[:1].expand_as(members))
    assert not torch.allclose(patterns[labels == 0][0], patterns[labels == 1][0])
    assert protector.class_counts == [4, 4, 4]


def test_lsp_codes_in_proportion_to_class_counts():
    labels = torch.tensor([0] * 9 + [1] * 3)
    images = torch.rand(12, 1, 16, 16)
    protector = LSPProtector(device="cpu").fit(_batches(images, labels), 2, 12)
    assert protector.class_counts == [9, 3]
    assert len(torch.unique(protector.codes, dim=0)) == 12  # one own draw per item
    # each code is nearer its own class centre
    distances = torch.cdist(protector.codes, protector.centres)
    assert torch.equal(distances.argmin(dim=1), labels)


def test_ar_one_filter_per_class(cls_data):
    _, images, labels = cls_data
    protector = ARProtector(device="cpu").fit(_batches(images, labels), 3, len(images))
    process = protector.processes([1, 2, 3], torch.tensor([0, 1, 2]))
    # residual of each class filter's recursion on interior pixels: ~0 for the own filter only
    for row, label in enumerate([0, 1, 2]):
        for other in range(3):
            weights = protector.filters[other].clone()
            weights[:, 2, 2] = 0
            x = process[row : row + 1].double()
            predicted = torch.nn.functional.conv2d(x, weights.double().unsqueeze(1), groups=x.shape[1])
            residual = (x[:, :, 2:, 2:] - predicted).abs().max() / x.abs().max()
            assert (residual < 1e-4) == (other == label)


def test_ar_generation_matches_pixel_loop():
    generator = torch.Generator().manual_seed(3)
    filters = torch.randn(2, 1, 3, 3, generator=generator, dtype=torch.float64)
    filters[..., 2, 2] = 0
    seeds = torch.randn(2, 1, 7, 9, generator=generator, dtype=torch.float64)
    fast = ar_generate(seeds, filters, ar_row_inverse(filters, 9))
    slow = seeds.clone()
    for b in range(2):
        for i in range(2, 7):
            for j in range(2, 9):
                window = slow[b, 0, i - 2 : i + 1, j - 2 : j + 1].clone()
                window[2, 2] = 0
                slow[b, 0, i, j] = (filters[b, 0] * window).sum()
    assert torch.allclose(fast, slow, rtol=1e-9, atol=1e-9)


def test_ar_rejects_diverging_filters(cls_data):
    _, images, labels = cls_data
    protector = ARProtector(device="cpu").fit(_batches(images, labels), 3, len(images))
    assert protector.rejected > 0
    assert torch.isfinite(protector.perturb(images, labels)).all()


# ---------------------------------------------------------------------------- masks and segmentation
def test_contour_band_helpers():
    mask = torch.zeros(1, 1, 20, 20)
    mask[:, :, 5:15, 5:15] = 1
    assert dilate_mask(mask, 2).sum() == 14 * 14
    assert erode_mask(mask, 2).sum() == 6 * 6
    assert contour_band(mask, 2).sum() == 14 * 14 - 6 * 6
    assert contour_radius(224, 224) == 3 and contour_radius(448, 448) == 6 and contour_radius(32, 32) == 1
    assert region_mask(mask, "roi").sum() == 100 and region_mask(mask, "full").sum() == 400


@pytest.mark.parametrize(
    "cls, region",
    [
        (EMSegContourProtector, "contour"),
        (EMSegROIProtector, "roi"),
        (TAPSegProtector, "roi"),
        (SEPSegProtector, "contour"),
    ],
)
def test_segmentation_regions_respected(cls, region, seg_data):
    raw, images, masks = seg_data
    batches = _batches(images, masks, batch=2)
    if cls in (EMSegContourProtector, EMSegROIProtector):
        protector = cls(**FAST_EM)
    else:
        protector = cls(steps=2, surrogate_epochs=1, region=region, progress=False, device="cpu")
    protector.fit(batches, 2, len(images))
    allowed = region_mask(masks, region)
    for indices in (torch.arange(len(images)), None):
        delta = protector.perturb(images, masks, indices)
        assert (delta * (1 - allowed)).abs().max() == 0
        assert delta.abs().max() <= protector.eps + 1e-7
        assert (images + delta).min() >= 0 and (images + delta).max() <= 1
    diff = _written_delta(raw, images + delta, protector.eps)
    assert np.abs(diff).max() <= protector.eps + 1e-9


def test_lsp_seg_composites_inside_and_outside_patterns(seg_data):
    _, _, masks = seg_data
    images = torch.full_like(masks, 0.5)
    protector = LSPSegProtector(noise_std=0.0, quantize=False, device="cpu")
    protector.fit(_batches(images, masks, batch=2), 2, len(images))
    delta = protector.perturb(images, masks, torch.arange(len(images)))
    outside = protector.patterns(protector.centres[:1])
    inside = protector.patterns(protector.centres[1:])
    expected = masks * inside + (1 - masks) * outside
    expected = expected / expected.reshape(len(masks), -1).norm(dim=1).reshape(-1, 1, 1, 1)
    unit = delta / delta.reshape(len(masks), -1).norm(dim=1).reshape(-1, 1, 1, 1)
    assert torch.allclose(unit, expected, atol=1e-5)


@pytest.mark.parametrize("cls", [LSPSegProtector, ARSegProtector])
def test_l2_segmentation_budget(cls, seg_data):
    raw, images, masks = seg_data
    protector = cls(device="cpu").fit(_batches(images, masks, batch=2), 2, len(images))
    delta = protector.perturb(images, masks, torch.arange(len(images)))
    norms = np.linalg.norm(_written_delta(raw, images + delta, None), axis=1)
    assert norms.max() <= protector.budget_info()["budget"] * (1 + 1e-6)


def test_ar_seg_uses_two_filters(seg_data):
    _, images, masks = seg_data
    protector = ARSegProtector(device="cpu").fit(_batches(images, masks, batch=2), 2, len(images))
    assert protector.filters.shape == (2, 1, 3, 3)
    assert not torch.allclose(protector.filters[0], protector.filters[1])


# ---------------------------------------------------------------------------- determinism and persistence
@pytest.mark.parametrize(
    "factory",
    [
        lambda: LSPProtector(seed=5, device="cpu"),
        lambda: ARProtector(seed=5, device="cpu"),
        lambda: TAPProtector(seed=5, **FAST_TAP),
    ],
)
def test_same_seed_same_output(factory, cls_data):
    _, images, labels = cls_data
    outputs = []
    for _ in range(2):
        protector = factory().fit(_batches(images, labels), 3, len(images))
        outputs.append(
            (protector.perturb(images, labels, torch.arange(len(images))), protector.perturb(images, labels))
        )
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])


def test_different_seed_differs(cls_data):
    _, images, labels = cls_data
    a = LSPProtector(seed=1, device="cpu").fit(_batches(images, labels), 3, len(images)).perturb(images, labels)
    b = LSPProtector(seed=2, device="cpu").fit(_batches(images, labels), 3, len(images)).perturb(images, labels)
    assert not torch.equal(a, b)


def test_em_seg_same_seed_same_output(seg_data):
    _, images, masks = seg_data
    deltas = [
        EMSegProtector(seed=3, **FAST_EM).fit(_batches(images, masks, 2), 2, 4).perturb(images, masks, torch.arange(4))
        for _ in range(2)
    ]
    assert torch.equal(deltas[0], deltas[1])


def _roundtrip(protector, images, labels, tmp_path, indices=None):
    path = tmp_path / f"{protector.name}.pt"
    protector.save(path)
    loaded = load_protector(path, device="cpu")
    assert type(loaded) is type(protector) and loaded.config() == protector.config()
    assert torch.equal(loaded.perturb(images, labels, indices), protector.perturb(images, labels, indices))


def test_save_load_roundtrip_classification(cls_data, fitted_tap, fitted_sep, tmp_path):
    _, images, labels = cls_data
    batches = _batches(images, labels)
    for protector in (
        fitted_tap,
        fitted_sep,
        LSPProtector(device="cpu").fit(batches, 3, len(images)),
        ARProtector(device="cpu").fit(batches, 3, len(images)),
    ):
        _roundtrip(protector, images[:4], labels[:4], tmp_path)
        _roundtrip(protector, images[:4], labels[:4], tmp_path, torch.arange(4))


def test_save_load_roundtrip_segmentation(seg_data, tmp_path):
    _, images, masks = seg_data
    batches = _batches(images, masks, batch=2)
    for protector in (
        LSPSegProtector(device="cpu").fit(batches, 2, 4),
        ARSegProtector(device="cpu").fit(batches, 2, 4),
        EMSegContourProtector(**FAST_EM).fit(batches, 2, 4),
        TAPSegProtector(steps=1, surrogate_epochs=1, progress=False, device="cpu").fit(batches, 2, 4),
    ):
        _roundtrip(protector, images, masks, tmp_path, torch.arange(4))


def test_bad_options_raise():
    with pytest.raises(MedueError):
        TAPProtector(steps=0)
    with pytest.raises(MedueError):
        SEPSegProtector(region="nowhere")
    with pytest.raises(MedueError):
        LSPProtector(patch_size=0)
    with pytest.raises(MedueError):
        ARProtector(max_growth=0.5)
    with pytest.raises(MedueError):
        EMSegProtector(region="inside")


def test_real_surrogates_train_and_attack(monkeypatch):
    """One pass with the real networks: ResNet-18 for TAP, the MONAI UNet for EM-seg."""
    monkeypatch.setattr(surrogate_module, "get_classifier", REAL_GET_CLASSIFIER)
    monkeypatch.setattr(em_seg_module, "get_segmenter", REAL_GET_SEGMENTER)
    raw, images, labels = _classification(n=4, size=8)
    tap = TAPProtector(steps=1, surrogate="resnet18", surrogate_epochs=1, progress=False, device="cpu")
    tap.fit(_batches(images, labels, 4), 3, 4)
    delta = tap.perturb(images, labels)
    assert delta.abs().max() <= tap.eps + 1e-7
    _, seg_images, masks = _segmentation(n=2)
    em = EMSegROIProtector(epochs=1, model_steps=1, noise_steps=1, apply_steps=1, progress=False, device="cpu")
    em.fit(_batches(seg_images, masks, 2), 2, 2)
    assert (em.perturb(seg_images, masks) * (1 - masks)).abs().max() == 0
    with pytest.raises(MedueError):
        REAL_GET_SEGMENTER("unet", 1, 2, 16)


def test_evaluation_reuses_a_clean_run(tmp_path):
    """The baselines benchmark trains the clean exploiter once: a reused run is kept as is, and a run of
    another length or of another exploiter network is refused."""
    from medue_monai.pipeline.classification import evaluate_classification, protect_classification

    spec = "synthetic:num_train=16,num_val=4,num_test=8,size=16,seed=2"
    folder = tmp_path / "lsp"
    protect_classification(spec, folder, "lsp", {}, seed=0, device="cpu", progress=False)
    first = evaluate_classification(folder, "cls-quick", "smallcnn", epochs=1, device="cpu", progress=False)
    clean_run = {**first["clean"], "curves": first["curves"]["clean"]}
    reused = evaluate_classification(
        folder, "cls-quick", "smallcnn", epochs=1, device="cpu", progress=False, clean_run=clean_run
    )
    assert reused["clean"] == first["clean"] and reused["protected"] == first["protected"]
    assert first["clean"]["exploiter"] == first["protected"]["exploiter"] == "smallcnn"
    with pytest.raises(MedueError, match="trained for 1 epochs"):
        evaluate_classification(folder, "cls-quick", "smallcnn", epochs=2, device="cpu", clean_run=clean_run)
    with pytest.raises(MedueError, match="trained with exploiter 'smallcnn', this evaluation uses 'resnet18'"):
        evaluate_classification(folder, "cls-quick", "resnet18", epochs=1, device="cpu", clean_run=clean_run)


def test_a_recorded_clean_run_keeps_its_exploiter_and_is_checked_against_it():
    """An older results.json kept the exploiter only at its top level: the reusable run takes it from there."""
    from medue_monai.evaluation.recipes import check_clean_run, counter_measures, get_recipe
    from medue_monai.evaluation.report import reusable_clean_run

    results = {
        "exploiter": "resnet18",
        "split_sha256": "abc",
        "clean": {"test_accuracy": 80.0},
        "curves": {"clean": {"test_accuracy": [70.0, 80.0]}},
    }
    run = reusable_clean_run(results)
    assert run == {
        "test_accuracy": 80.0,
        "curves": {"test_accuracy": [70.0, 80.0]},
        "exploiter": "resnet18",
        "split_sha256": "abc",
    }
    counter = counter_measures(get_recipe("cls-quick"))
    check_clean_run(run, score="test_accuracy", epochs=2, exploiter="resnet18", counter=counter)
    with pytest.raises(MedueError, match="exploiter 'resnet18', this evaluation uses 'vgg11'"):
        check_clean_run(run, score="test_accuracy", epochs=2, exploiter="vgg11", counter=counter)
    with pytest.raises(MedueError, match="another train/test split"):
        check_clean_run(run, score="test_accuracy", epochs=2, exploiter="resnet18", counter=counter, split_sha256="x")
    unnamed = {k: v for k, v in run.items() if k != "exploiter"}  # recorded before runs named their network
    check_clean_run(unnamed, score="test_accuracy", epochs=2, exploiter="vgg11", counter=counter)

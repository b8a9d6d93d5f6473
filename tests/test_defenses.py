"""Exploiter-side defenses: filters, JPEG, center crop, shortcut squeezing, as batch function and MONAI transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from medue_monai.data.segmentation import SegmentationDataset, load_segmentation_source, make_synthetic_segmentation
from medue_monai.transforms import DEFENSES, Defense, Defensed, apply_defense
from medue_monai.transforms.defenses import apply_defense_to_pair
from medue_monai.utils import MedueError


def _images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("name", list(DEFENSES))
@pytest.mark.parametrize("shape", [(3, 20, 24), (2, 20, 24, 3)])
def test_every_defense_keeps_shape_and_dtype_and_leaves_the_input_alone(name, shape):
    images = _images(shape)
    before = images.copy()
    out = apply_defense(images, name)
    assert out.shape == images.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(images, before)
    if name == "none":
        np.testing.assert_array_equal(out, images)
    else:
        assert np.abs(out.astype(int) - images.astype(int)).mean() > 1  # random noise is changed by all of them


@pytest.mark.parametrize(
    "name, reference",
    [
        ("mean3", lambda x: ndimage.uniform_filter(x, size=(1, 3, 3), mode="mirror")),
        ("median3", lambda x: ndimage.median_filter(x, size=(1, 3, 3), mode="mirror")),
        ("gaussian3", lambda x: ndimage.gaussian_filter(x, sigma=(0, 1, 1), mode="mirror", truncate=1.0)),
    ],
)
def test_low_pass_filters_match_scipy(name, reference):
    images = _images((2, 16, 18), seed=1)
    expected = np.clip(np.round(reference(images.astype(np.float64))), 0, 255)
    assert np.abs(apply_defense(images, name).astype(float) - expected).max() <= 1


def test_jpeg_quality_orders_the_damage_and_squeezing_greys_rgb():
    images = _images((2, 32, 32, 3), seed=2)
    error = {q: np.abs(apply_defense(images, f"jpeg{q}").astype(int) - images).mean() for q in (60, 30, 10)}
    assert error[10] > error[30] > error[60] > 0
    squeezed = apply_defense(images, "iss")
    assert (squeezed[..., 0] == squeezed[..., 1]).all() and (squeezed[..., 1] == squeezed[..., 2]).all()


def test_two_bit_depth_rounds_to_the_nearest_of_four_levels():
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    out = apply_defense(images, "bits2").astype(int)
    assert set(np.unique(out)) == {0, 85, 170, 255}
    assert np.abs(out - images).max() == 42  # half of the 85-level spacing, rounded down
    assert out[0, 2, 10] == 0 and out[0, 2, 11] == 85  # 42 -> 0, 43 -> 85


def test_center_crop_removes_a_fifth_of_each_side_and_crops_masks_alike():
    image = np.zeros((50, 40), np.uint8)
    image[:, 20:] = 200  # left half dark, right half bright
    mask = np.zeros((50, 40), np.uint8)
    mask[:10] = 1  # the top fifth only: gone after the crop
    mask[25:, 10:30] = 1
    out_image, out_mask = apply_defense_to_pair(image, mask, "center-crop20")
    assert out_image.shape == image.shape and out_mask.shape == mask.shape and out_mask.dtype == mask.dtype
    assert set(np.unique(out_mask)) <= {0, 1} and out_mask[:5].max() == 0
    # the kept middle columns 8..31 are stretched to 40 columns; the bright edge, in the middle, stays there
    assert out_image[:, :15].max() < 50 and out_image[:, 25:].min() > 150
    # columns 10..29 of the mask cover 2..21 of the crop's 24, i.e. about 3..36 after stretching
    assert out_mask[-1, 5:35].all() and not out_mask[-1, :2].any()
    same_image, same_mask = apply_defense_to_pair(image, mask, "jpeg60")
    assert same_mask is mask and same_image.shape == image.shape


def test_unknown_defense_and_bad_input_raise():
    with pytest.raises(MedueError, match="unknown defense 'blur'"):
        apply_defense(_images((1, 8, 8)), "blur")
    with pytest.raises(MedueError, match="needs uint8"):
        apply_defense(np.zeros((1, 8, 8), np.float32), "mean3")
    with pytest.raises(MedueError, match="channel-first"):
        Defense("mean3")(np.zeros((8, 8), np.float32))


def test_defense_transforms_keep_type_and_meta_and_crop_labels():
    image = MetaTensor(torch.rand(1, 20, 20), meta={"id": "a"})
    out = Defense("median3")(image)
    assert isinstance(out, MetaTensor) and out.meta["id"] == "a" and out.dtype == torch.float32
    expected = apply_defense(np.round(image.numpy()[0] * 255).astype(np.uint8)[None], "median3")[0] / 255.0
    np.testing.assert_allclose(out.numpy()[0], expected, atol=1e-6)
    rgb = np.random.default_rng(3).integers(0, 256, (3, 16, 16)).astype(np.uint8)
    assert Defense("iss")(rgb).dtype == np.uint8
    label = torch.zeros(1, 20, 20)
    label[:, :3] = 1
    item = Defensed(["image", "missing"], "center-crop20", label_keys="label", allow_missing_keys=True)(
        {"image": image, "label": label}
    )
    assert item["label"].max() == 0 and item["image"].shape == image.shape
    untouched = Defensed("image", "mean3", label_keys="label")({"image": image, "label": label})
    assert torch.equal(untouched["label"], label)


def test_segmentation_dataset_applies_the_defense_before_resizing(tmp_path):
    folder = make_synthetic_segmentation(tmp_path / "seg", num_items=2, size=40, seed=0)
    records = load_segmentation_source(folder).records
    plain = SegmentationDataset(records, spatial_size=40)[0]
    cropped = SegmentationDataset(records, spatial_size=40, defense="center-crop20")[0]
    expected_image, expected_mask = apply_defense_to_pair(
        np.round(plain["image"].numpy()[0] * 255).astype(np.uint8), plain["label"].numpy()[0], "center-crop20"
    )
    np.testing.assert_array_equal(cropped["label"].numpy()[0], expected_mask)
    assert np.abs(cropped["image"].numpy()[0] * 255 - expected_image).max() <= 1
    with pytest.raises(MedueError, match="unknown defense"):
        SegmentationDataset(records, spatial_size=40, defense="blur")


def test_evaluation_trains_both_runs_under_the_defense(tmp_path):
    from medue_monai.pipeline.classification import evaluate_classification, protect_classification

    spec = "synthetic:num_train=16,num_val=4,num_test=8,size=16,seed=2"
    folder = tmp_path / "lsp"
    protect_classification(spec, folder, "lsp", {}, seed=0, device="cpu", progress=False)
    common = {"epochs": 1, "device": "cpu", "progress": False}
    defended = evaluate_classification(folder, "cls-quick", "smallcnn", defense="median3", **common)
    assert defended["defense"] == "median3" and defended["recipe"]["defense"] == "median3"
    assert defended["clean"]["defense"] == defended["protected"]["defense"] == "median3"
    plain = evaluate_classification(folder, "cls-quick", "smallcnn", **common)
    assert plain["defense"] == "none" and plain["curves"]["clean"] != defended["curves"]["clean"]
    clean_run = {**plain["clean"], "curves": plain["curves"]["clean"]}
    with pytest.raises(MedueError, match="defense 'none', this evaluation uses 'median3'"):
        evaluate_classification(folder, "cls-quick", "smallcnn", defense="median3", clean_run=clean_run, **common)

"""One-off checks (session 22): a fitted UMed re-released with its perturbation rearranged, no refit.

Question: what in a UMed copy decides how much of a CLEAN image an instance-normalized exploiter marks?
Each variant keeps the fitted generators of a ``medue protect`` UMed output and changes only where their
output is written, then re-writes the training split with the default bilinear resample
(``benchmarks/release_resample.py``'s ``rerelease``; test images, masks and the split are copied). The
copy is then judged with ``benchmarks/exploiter_seeds.py`` over several exploiter seeds, since one
exploiter run per copy cannot tell a setting from the exploiter's own spread (session 21).

Variants:

- ``decoys RADIUS SHARE``: the texture generator's field is also written, at the texture bound
  ``eps * x_t * tanh(F_t(x))``, into random discs of ``RADIUS`` working-size pixels covering about ``SHARE``
  of the image, kept ``RADIUS + band + 2`` pixels away from the ROI: cue-like spots labelled background.
- ``contour``: the contour perturbation alone (the texture perturbation zeroed).
- ``sparse RADIUS SHARE``: the texture perturbation kept only on random discs covering about ``SHARE`` of
  the ROI interior (the contour perturbation unchanged).
- ``noise SCALE``: independent random signs (a fresh draw per image and pixel) times ``SCALE * eps * x_t``
  on every pixel outside the ROI and its band: background high-frequency content that carries no label.
- ``background_noise SCALE``: the same noise as the protector's own option ``background_noise=SCALE``
  (``UMedProtector.background_delta``: signs seeded per image by the fit's seed and the image's content),
  i.e. what ``medue protect --method umed --option background_noise=SCALE`` writes for the same fit.

The discs come from a generator seeded with 1234, drawn batch by batch in the order of the split. Usage::

    python benchmarks/oneoff/umed_release_variants.py PROTECTED OUT decoys 2 0.10
    python benchmarks/oneoff/umed_release_variants.py PROTECTED OUT contour
    python benchmarks/oneoff/umed_release_variants.py PROTECTED OUT sparse 1 0.3

(``PROTECTED``: a ``medue protect`` UMed output folder with its ``.protector.pt`` beside it; ``OUT``: the
folder the re-released copy is written to, replaced if it exists.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import release_resample  # noqa: E402

from medue_monai.protectors import load_protector  # noqa: E402
from medue_monai.protectors.masks import contour_radius, dilate_mask  # noqa: E402
from medue_monai.protectors.umed import texture_strength  # noqa: E402


def random_discs(shape: torch.Size, radius: int, share: float, generator: torch.Generator) -> torch.Tensor:
    """A ``{0, 1}`` map of random discs of ``radius`` pixels whose centres fall with density ``share / area``."""
    offsets = torch.arange(-radius, radius + 1)
    rows, columns = torch.meshgrid(offsets, offsets, indexing="ij")
    disc = ((rows**2 + columns**2) <= radius**2 + 0.5).float()[None, None]
    centres = (torch.rand(shape, generator=generator) < share / float(disc.sum())).float()
    return (F.conv2d(centres, disc, padding=radius) > 0).float()


def main(argv: list[str]) -> None:
    protected, out, variant = Path(argv[0]), Path(argv[1]), argv[2]
    protector = load_protector(Path(f"{protected}.protector.pt"), device="cpu")
    generator = torch.Generator().manual_seed(1234)
    shares: list[float] = []
    fitted_deltas = protector.deltas

    if variant == "contour":
        protector.contour_only = True
    elif variant == "sparse":
        radius, share = int(argv[3]), float(argv[4])

        def sparse_deltas(images, labels, regions=None):
            delta_c, delta_t = fitted_deltas(images, labels, regions)
            discs = random_discs(labels.shape, radius, share, generator)
            interior = (delta_t.abs().sum(1, keepdim=True) > 0).float()
            shares.append(float((discs * interior).sum() / interior.sum().clamp(min=1)))
            return delta_c, delta_t * discs

        protector.deltas = sparse_deltas
    elif variant == "decoys":
        radius, share = int(argv[3]), float(argv[4])

        def decoy_deltas(images, labels, regions=None):
            delta_c, delta_t = fitted_deltas(images, labels, regions)
            band_radius = contour_radius(images.shape[-2], images.shape[-1], base_radius=protector.contour_radius)
            allowed = 1.0 - dilate_mask((labels > 0.5).float(), band_radius + radius + 2)
            discs = random_discs(labels.shape, radius, share, generator) * allowed
            field = torch.tanh(protector._raw(protector.texture_net, images))
            strength = texture_strength(images, protector.lbp_points, protector.lbp_radius)
            shares.append(float(discs.mean()))
            return delta_c, delta_t + protector.eps * strength * discs * field

        protector.deltas = decoy_deltas
    elif variant == "background_noise":
        protector.background_noise = float(argv[3])
    elif variant == "noise":
        scale = float(argv[3])

        def noise_deltas(images, labels, regions=None):
            delta_c, delta_t = fitted_deltas(images, labels, regions)
            band_radius = contour_radius(images.shape[-2], images.shape[-1], base_radius=protector.contour_radius)
            outside = 1.0 - dilate_mask((labels > 0.5).float(), band_radius)
            signs = torch.randint(0, 2, images.shape, generator=generator).float() * 2 - 1
            strength = texture_strength(images, protector.lbp_points, protector.lbp_radius)
            return delta_c, delta_t + scale * protector.eps * strength * outside * signs

        protector.deltas = noise_deltas
    else:
        raise SystemExit(f"unknown variant {variant!r}: decoys, contour, sparse, noise or background_noise")
    seconds = release_resample.rerelease(protector, protected, out, "bilinear")
    record = {"variant": argv[2:], "write_seconds": seconds}
    if shares:
        record["mean_share" if variant == "decoys" else "interior_share_kept"] = sum(shares) / len(shares)
    print(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1:])

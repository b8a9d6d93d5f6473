"""One-off check (session 14): UMed's regions and bounds filled with a FIXED sign pattern, then evaluated.

Question: is the learned UMed perturbation better than the most consistent shortcut one can draw by hand
inside the same regions and bounds? The fitted generators of a UMed fit are replaced by a constant
checkerboard of ``block`` x ``block`` working-size pixels (same sign on every channel), saturated through
UMed's ``bound * tanh(...)``: every contour-band pixel moves by +-eps, every ROI pixel by its full LBP
bound, with the checkerboard's sign. The training split is re-written with the default bilinear resample
(``benchmarks/release_resample.py``'s ``rerelease``) and the seg-quick UNet exploiter trained on it,
reusing the clean-trained run of ``results/seg_quick_cpu_unet.json``. Result of record:
``results/umed_kvasir_cpu_fixed_pattern.json`` (run 2026-11-23, 22:52-23:03 UTC, seed 0, CPU; the script was
then at /tmp/diag/fixed_pattern.py with the same arguments; since
reformatted, evaluation through ``release_resample.evaluate_copy``: the same steps)::

    python benchmarks/oneoff/umed_fixed_pattern_release.py 2 /tmp/bench/umed_r15/kvasir-seg_umed_seed0 /tmp/diag/p2

(arguments: block side, a `medue protect` UMed output folder with its ``.protector.pt`` beside it (only its
regions, bounds and split are used), and the folder to write the re-released copy into).
"""

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import release_resample  # noqa: E402

from medue_monai.evaluation.report import reusable_clean_run  # noqa: E402
from medue_monai.protectors import load_protector  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"

block = int(sys.argv[1])
protected = Path(sys.argv[2])
folder = Path(sys.argv[3])
protector = load_protector(Path(f"{protected}.protector.pt"), device="cpu")


def checkerboard(net, images):
    """A saturated constant checkerboard in place of a generator's raw output."""
    height, width = images.shape[-2:]
    rows = torch.arange(height).div(block, rounding_mode="floor")
    columns = torch.arange(width).div(block, rounding_mode="floor")
    pattern = ((rows[:, None] + columns[None, :]) % 2) * 2.0 - 1.0
    return (1000 * pattern).expand(images.shape[0], images.shape[1], height, width)


protector._raw = checkerboard
print("write s", release_resample.rerelease(protector, protected, folder, "bilinear"), flush=True)
clean_run = reusable_clean_run(json.loads((RESULTS / "seg_quick_cpu_unet.json").read_text()))
started = time.perf_counter()
results = release_resample.evaluate_copy(folder, clean_run)
invisibility = results["invisibility"]
print("block", block, "dice", results["protected"], "psnr", invisibility.get("psnr"), "ssim", invisibility.get("ssim"))
print("evaluate s", time.perf_counter() - started)
print("curve", [round(value, 2) for value in results["curves"]["protected"]["test_dice"]])

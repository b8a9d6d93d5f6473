"""One-off check (session 10): re-release a fitted UMed with saturated generator outputs, then evaluate.

Kept as run on 2026-11-23 (then at /tmp/bench/umed_sign.py, argument ``1000``; since reformatted, and its
evaluation now goes through ``release_resample.evaluate_copy`` and ``reusable_clean_run``: the same steps). It
multiplies both generators' raw outputs by ``gain`` before UMed's ``bound * tanh(...)``, so with a large
gain every pixel of the contour band moves by +-eps and every ROI pixel by its full LBP bound, re-writes
the training split of the session-4 fit with the default bilinear resample
(``benchmarks/release_resample.py``'s ``rerelease``), and trains the seg-quick UNet exploiter on it,
reusing the clean-trained run of ``results/seg_quick_cpu_unet.json``. Result:
``results/umed_kvasir_cpu_saturated_release.json``; benchmarks/README.md has the numbers.

    python benchmarks/oneoff/umed_saturated_release.py 1000 /tmp/bench/umed_full/kvasir-seg_umed_seed0 \\
        /tmp/bench/umed_sign/gain1000

(arguments: gain, a `medue protect` UMed output folder with its ``.protector.pt`` beside it, and the folder to
write the re-released copy into; the run of record had the last two hard-coded to these paths).
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import release_resample  # noqa: E402

from medue_monai.evaluation.report import reusable_clean_run  # noqa: E402
from medue_monai.protectors import load_protector  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"

gain = float(sys.argv[1])
protected = Path(sys.argv[2])
protector = load_protector(Path(f"{protected}.protector.pt"), device="cpu")
raw = protector._raw
protector._raw = lambda net, images: raw(net, images) * gain
folder = Path(sys.argv[3])
print("write s", release_resample.rerelease(protector, protected, folder, "bilinear"), flush=True)
clean_run = reusable_clean_run(json.loads((RESULTS / "seg_quick_cpu_unet.json").read_text()))
started = time.perf_counter()
results = release_resample.evaluate_copy(folder, clean_run)
invisibility = results["invisibility"]
print("gain", gain, "dice", results["protected"], "psnr", invisibility.get("psnr"), "ssim", invisibility.get("ssim"))
print("evaluate s", time.perf_counter() - started)
print("curve", [round(value, 2) for value in results["curves"]["protected"]["test_dice"]])

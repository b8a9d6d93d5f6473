"""``medue demo``: the whole loop on built-in synthetic data, in a few minutes on a laptop CPU.

Classification: a MedMNIST-shaped synthetic set (low-contrast discs vs rings under noise) is protected
with SALM and read back from disk; an exploiter is trained on the protected copy and on the clean
copy and tested on clean images. Segmentation: MONAI's synthetic 2-D images
(``monai.data.synthetic.create_test_image_2d``) are protected with UMed and evaluated the same way.
The demo uses a small, fast CPU network (MONAI's ``Classifier``) and a small U-Net so it finishes
quickly; real runs use the recipes' networks (``medue evaluate --recipe cls-quick``).
"""

from __future__ import annotations

import time
from pathlib import Path

from .utils import MedueError

__all__ = ["run_demo", "DEMO_CLASSIFICATION", "DEMO_SEGMENTATION"]

# Demo settings (chosen for speed on 2 CPU cores; every value is an ordinary option of the CLI).
DEMO_CLASSIFICATION = {
    "data": "synthetic:num_train=256,num_val=16,num_test=200,size=28,seed=0",
    "method": "salm",
    "options": {"surrogate": "smallcnn", "lr": 0.01, "epochs": 20},
    "exploiter": "smallcnn",
    "exploiter_epochs": 15,
}
DEMO_SEGMENTATION = {
    "num_items": 60,
    "size": 64,
    "contrast": 1.0,
    "method": "umed",
    "options": {"epochs": 10},
    "exploiter": "unet",
    "exploiter_epochs": 8,
}


def _classification(out: Path, device: str, seed: int, progress: bool) -> dict:
    from .pipeline.classification import evaluate_classification, protect_classification

    config = DEMO_CLASSIFICATION
    protect_classification(
        config["data"],
        out / "protected",
        config["method"],
        dict(config["options"]),
        seed=seed,
        device=device,
        progress=progress,
    )
    return evaluate_classification(
        out / "protected",
        "cls-quick",
        config["exploiter"],
        epochs=config["exploiter_epochs"],
        output=out / "results.json",
        device=device,
        seed=seed,
        progress=progress,
    )


def _segmentation(out: Path, device: str, seed: int, progress: bool) -> dict:
    from .data.segmentation import make_synthetic_segmentation
    from .pipeline.segmentation import evaluate_segmentation, protect_segmentation

    config = DEMO_SEGMENTATION
    source = make_synthetic_segmentation(
        out / "source", config["num_items"], config["size"], seed=seed, contrast=config["contrast"]
    )
    protect_segmentation(
        str(source),
        str(out / "protected"),
        config["method"],
        dict(config["options"]),
        seed=seed,
        device=device,
        spatial_size=config["size"],
        progress=progress,
    )
    return evaluate_segmentation(
        str(out / "protected"),
        "seg-quick",
        config["exploiter"],
        epochs=config["exploiter_epochs"],
        output=str(out / "results.json"),
        device=device,
        seed=seed,
        progress=progress,
    )


def run_demo(
    out: str | Path = "medue-demo", device: str = "auto", seed: int = 0, progress: bool = True, parts: str = "all"
) -> dict[str, dict]:
    """Run the demo and print clean vs protected efficacy.

    Args:
        out: folder for the demo's data and results (replaced if it holds an earlier demo).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        seed: random seed.
        progress: show progress bars.
        parts: ``"all"``, ``"classification"`` or ``"segmentation"``.

    Returns:
        The results per part.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MedueError(f"{out}: exists and is not a folder; choose another --out")
    if out.exists() and any(out.iterdir()) and not (out / "demo.txt").exists():
        # never replace a folder that is not an earlier demo's
        raise MedueError(f"{out}: exists and is not an earlier demo's output; choose another --out")
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "demo.txt").write_text("medue demo output; safe to delete\n")
    results: dict[str, dict] = {}
    lines = []
    if parts in ("all", "classification"):
        started = time.perf_counter()
        r = _classification(out / "classification", device, seed, progress)
        results["classification"] = r
        lines.append(
            f"classification (SALM, {r['exploiter']} exploiter): clean-test accuracy "
            f"clean-trained {r['clean']['test_accuracy']:.1f}% vs "
            f"protected-trained {r['protected']['test_accuracy']:.1f}%"
            f" | PSNR {r['invisibility']['psnr']:.1f} dB, pixels touched {100 * r['budget']['l0_share']:.1f}%"
            f" | {time.perf_counter() - started:.0f} s"
        )
        print(lines[-1], flush=True)
    if parts in ("all", "segmentation"):
        started = time.perf_counter()
        r = _segmentation(out / "segmentation", device, seed, progress)
        results["segmentation"] = r
        lines.append(
            f"segmentation (UMed, {r['exploiter']} exploiter): clean-test Dice "
            f"clean-trained {r['clean']['dice']:.1f}% vs protected-trained {r['protected']['dice']:.1f}%"
            f" | PSNR {r['invisibility']['psnr']:.1f} dB | {time.perf_counter() - started:.0f} s"
        )
        print(lines[-1], flush=True)
    print(f"\nmedue demo results (lower protected numbers = stronger protection); details in {out}/:")
    for line in lines:
        print("  " + line)
    if "segmentation" in results:
        print(
            "  note: the synthetic discs are easy and the demo trains for seconds, so its segmentation part checks\n"
            "  the pipeline, not UMed's strength; for UMed on a real dataset (Kvasir-SEG) see benchmarks/README.md."
        )
    return results

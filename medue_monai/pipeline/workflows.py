"""The ``evaluator`` objects of the bundles' ``inference.json`` and ``evaluate.json``: thin wrappers whose
``run()`` calls the same functions as ``medue protect`` / ``medue evaluate``.

MONAI's bundle properties ask an inference or evaluation workflow for an ``evaluator`` with ``run()``, a
``dataset``, a ``network_def`` and an ``inferer``; these classes provide them without a second loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io.manifest import read_manifest
from ..utils import MedueError

__all__ = ["EvaluationRun", "ReleaseWriter", "evaluate", "summary_line"]


def _percent(value: float | None) -> str:
    """``12.34%``, or ``n/a`` for a metric that is undefined (or absent from a reused run)."""
    return "n/a" if value is None else f"{value:.2f}%"


def summary_line(results: dict[str, Any]) -> str:
    """The one-line summary that ``medue evaluate`` and the bundles print for a results dictionary."""
    clean, protected = results["clean"], results["protected"]
    if results["task"] == "segmentation":
        return (
            f"{results['exploiter']} Dice on clean test: clean-trained {clean['dice']:.2f}%, "
            f"protected-trained {protected['dice']:.2f}%; pixel AUC {_percent(clean.get('pixel_auc'))} vs "
            f"{_percent(protected.get('pixel_auc'))} (50% = foreground guessed at random); PSNR "
            f"{results['invisibility']['psnr']:.2f} dB"
        )
    return (
        f"{results['exploiter']} clean-test accuracy: clean-trained {clean['test_accuracy']:.2f}%, "
        f"protected-trained {protected['test_accuracy']:.2f}%; balanced accuracy "
        f"{_percent(clean.get('test_balanced_accuracy'))} vs {_percent(protected.get('test_balanced_accuracy'))}; "
        f"ROC AUC {_percent(clean.get('test_auc'))} vs {_percent(protected.get('test_auc'))}; PSNR "
        f"{results['invisibility']['psnr']:.2f} dB, SSIM {results['invisibility']['ssim']:.4f}"
    )


def evaluate(protected: str | Path, recipe: str | None = None, exploiter: str | None = None, **kwargs: Any) -> dict:
    """Evaluate a release with the function of its task (the manifest says which).

    Args:
        protected: the release folder.
        recipe: the exploiter recipe (default ``cls-quick`` / ``seg-quick``).
        exploiter: the exploiter network (default the recipe's / ``unet``).
        kwargs: the other arguments of :func:`~medue_monai.pipeline.classification.evaluate_classification` /
            :func:`~medue_monai.pipeline.segmentation.evaluate_segmentation`.

    Returns:
        The results.
    """
    if read_manifest(protected).get("task") == "segmentation":
        from .segmentation import evaluate_segmentation

        return evaluate_segmentation(str(protected), recipe or "seg-quick", exploiter or "unet", **kwargs)
    from .classification import evaluate_classification

    return evaluate_classification(protected, recipe or "cls-quick", exploiter, **kwargs)


class ReleaseWriter:
    """Write the release of a saved protector (the bundles' ``inference.json``): :func:`release_from_protector`.

    Args:
        protector_file: the fitted protector with its private record.
        out: the release folder.
        data: the data spec, when the source is not where the record says (default: the recorded one).
        data_root: where to look for the source (default: the recorded one).
        device: where the protector runs (default ``"auto"``).
        num_workers: DataLoader workers (default 0).
        progress: show progress bars (default ``False``).
        overwrite: replace an existing release folder (default ``False``).
        include_test: protect the held-out test images too and put them into the release (default: as recorded
            by the fit; the bundles' ``inference.json`` sets ``True``: one protected image per input image).
    """

    def __init__(
        self,
        protector_file: str | Path,
        out: str | Path,
        data: str | Path | None = None,
        data_root: str | Path | None = None,
        device: str = "auto",
        num_workers: int = 0,
        progress: bool = False,
        overwrite: bool = False,
        include_test: bool | None = None,
    ) -> None:
        self.protector_file, self.out = Path(protector_file), Path(out)
        self.kwargs = dict(
            data=data,
            data_root=data_root,
            device=str(device),
            num_workers=num_workers,
            progress=progress,
            include_test=include_test,
        )
        self.overwrite = overwrite
        self.manifest: dict[str, Any] | None = None
        self._run = None

    @property
    def protection(self):
        """The :class:`~medue_monai.pipeline.protect.ProtectionRun` of the saved protector (rebuilt on first use)."""
        if self._run is None:
            from .protect import run_from_protector

            self._run, _ = run_from_protector(self.protector_file, **self.kwargs)
        return self._run

    @property
    def protector(self):
        """The fitted protector."""
        return self.protection.protector

    @property
    def dataset(self):
        """The training items the protector was fitted on (the release also holds the other splits it ships)."""
        return self.protection.train_dataset

    def run(self) -> dict[str, Any]:
        """Write the release; returns (and keeps) its manifest."""
        from .protect import release_from_protector

        self.manifest = release_from_protector(
            self.protector_file, self.out, overwrite=self.overwrite, run=self.protection
        )
        counts = ", ".join(f"{n} {k}" for k, n in self.manifest["counts"].items() if not k.startswith("empty"))
        print(f"release -> {self.out}: {counts} images, every one protected with {self.manifest['method']}")
        return self.manifest


class EvaluationRun:
    """Train exploiters on a release read back from disk and on the clean source (the bundles' ``evaluate.json``).

    Args:
        protected: the release folder.
        recipe: exploiter recipe (default ``cls-quick`` / ``seg-quick`` by task).
        exploiter: exploiter network (default the recipe's / ``unet``).
        epochs: override the recipe's epochs (default: the recipe's).
        output: results JSON path (default: none).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"`` (default ``"auto"``).
        seed: seed of both exploiter runs (default 0).
        protector: the release's private protector file (default ``<protected>.protector.pt``).
        data_root: where to look for the clean source when it moved (default: none).
        progress: show progress bars (default ``False``).
    """

    def __init__(
        self,
        protected: str | Path,
        recipe: str | None = None,
        exploiter: str | None = None,
        epochs: int | None = None,
        output: str | Path | None = None,
        device: str = "auto",
        seed: int = 0,
        protector: str | Path | None = None,
        data_root: str | Path | None = None,
        progress: bool = False,
    ) -> None:
        self.protected = Path(protected)
        if not (self.protected / "manifest.json").is_file():
            raise MedueError(f"{self.protected}: not a release (no manifest.json); set protected_dir")
        self.recipe, self.exploiter = recipe, exploiter
        self.kwargs = dict(
            epochs=epochs,
            output=None if output is None else str(output),
            device=str(device),
            seed=seed,
            protector=protector,
            data_root=data_root,
            progress=progress,
        )
        self.results: dict[str, Any] | None = None

    @property
    def manifest(self) -> dict[str, Any]:
        """The release's manifest."""
        return read_manifest(self.protected)

    @property
    def network_def(self):
        """A fresh exploiter network for this release's images (the one the evaluation trains from scratch)."""
        from ..evaluation.recipes import get_recipe
        from ..nets import get_network

        manifest = self.manifest
        dataset = manifest["dataset"]
        if manifest["task"] == "segmentation":
            size = int(get_recipe(self.recipe or "seg-quick").get("spatial_size", dataset["spatial_size"]))
            return get_network(self.exploiter or "unet", dataset["in_channels"], 2, size)
        network = self.exploiter or get_recipe(self.recipe or "cls-quick")["network"]
        return get_network(network, dataset["in_channels"], dataset["num_classes"], dataset["spatial_size"][0])

    @property
    def dataset(self):
        """The released files the exploiter trains on, as a MONAI ``Dataset`` of ``{"id", "image"}`` items."""
        from monai.data import Dataset

        manifest = self.manifest
        if manifest["task"] == "segmentation":
            items = [{"id": i, "image": str(self.protected / e["image"])} for i, e in manifest["items"].items()]
        else:
            items = [{"id": "train", "image": str(self.protected / manifest["dataset"]["file"])}]
        return Dataset(items)

    def run(self) -> dict[str, Any]:
        """Evaluate, print the summary line and return the results."""
        self.results = evaluate(self.protected, self.recipe, self.exploiter, **self.kwargs)
        print(summary_line(self.results))
        return self.results

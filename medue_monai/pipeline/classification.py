"""Classification pipeline: protect a dataset into a released copy, and evaluate a released copy.

The CLI, the bundles and the tests all go through these two functions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import DataLoader
from tqdm.auto import tqdm

from ..data import ClassificationSource, load_classification_spec
from ..evaluation import (
    budget_metrics,
    get_recipe,
    invisibility_metrics,
    train_exploiter,
)
from ..evaluation.invisibility import BudgetStats
from ..evaluation.recipes import check_clean_run, counter_measures
from ..evaluation.report import write_results
from ..io import (
    build_manifest,
    protector_record,
    quantize_protected,
    write_manifest,
)
from ..io.npz import ChunkedArray, write_npz
from ..io.paths import inside
from ..protectors import get_protector_class
from ..transforms.defenses import apply_defense
from ..utils import MedueError, resolve_device
from .release import open_release, resolve_clean_source

__all__ = ["protect_classification", "evaluate_classification"]


def _protect_split(
    protector, source: ClassificationSource, split: str, batch_size: int, num_workers: int, progress: bool
) -> tuple[ChunkedArray, BudgetStats]:
    """The written (quantized) images of one split, streamed batch by batch in the source's stored layout, and the
    budget statistics that fill up as the chunks are written.

    The training split gets the perturbations learned for its items (``index``); the other splits are
    unseen images, protected by the fitted protector as such (``indices=None``).
    """
    budget = protector.budget_info()
    eps = budget["budget"] if budget["norm"] == "linf" else None
    l2 = budget["budget"] if budget["norm"] == "l2" else None
    clean = source.images(split)
    stored = source.arrays[f"{split}_images"]
    stats = BudgetStats()

    def chunks():
        loader = DataLoader(source.dataset(split), batch_size=batch_size, shuffle=False, num_workers=num_workers)
        start = 0
        for batch in tqdm(loader, desc=f"{protector.name} protect {split}", disable=not progress):
            images = batch["image"].as_tensor()
            indices = batch["index"] if split == "train" else None
            protected = protector.protect(images, batch["label"], indices).cpu()
            original = clean[start : start + len(images)]
            written = quantize_protected(original, protected, eps, l2)
            stats.add(original, written)
            start += len(images)
            yield written.reshape((len(written), *stored.shape[1:]))

    return ChunkedArray(tuple(stored.shape), stored.dtype, chunks()), stats


def protect_classification(
    data: str,
    out: str | Path,
    method: str,
    options: dict[str, Any],
    *,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    limit: int | None = None,
    data_root: str | None = None,
    batch_size: int | None = None,
    num_workers: int = 0,
    progress: bool = True,
    protector_out: str | Path | None = None,
    resume: bool = False,
    include_test: bool = False,
) -> dict[str, Any]:
    """Fit a protector on the training split and write the protected dataset.

    The output folder (the release) holds ``<name>.npz`` and ``manifest.json``. Every image in the npz is
    protected: ``train_images`` with the perturbations learned for them, ``val_images`` (and ``test_images``
    with ``include_test``) by the fitted protector as unseen images; labels and any other keys are copied with
    their dtype and shape. The ``test`` split is held out by default (not in the release) so that
    ``medue evaluate`` can measure the protection on clean images. The fitted protector (loadable with
    ``weights_only=True``), with the private record of where the clean source lies, goes OUTSIDE the release,
    to ``protector_out`` (default ``<out>.protector.pt``): it is the key that removes the protection, so
    keep it private. Both are written to temporary paths and renamed at the end, so a failure leaves
    nothing behind; the input is never modified.

    Args:
        data: ``medmnist:<name>``, a path to a MedMNIST npz, or ``synthetic[:...]``.
        out: output folder.
        method: registered protector name (``salm``, ``em``, ...).
        options: extra constructor options of the protector (e.g. ``{"eps": 8/255, "k": 10}``).
        seed: random seed (recorded).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        overwrite: replace an existing output folder and protector file (and discard an interrupted fit).
        limit: protect only the first ``limit`` training items (for quick trials); ``None``: all.
        data_root: folder with MedMNIST npz files.
        batch_size: loader batch size (default: the protector's ``batch_size`` option, else 64).
        num_workers: DataLoader workers.
        progress: show progress bars.
        protector_out: path of the fitted protector (default ``<out>.protector.pt``; never inside ``out``).
        resume: continue an interrupted fit from ``<protector file>.resume`` (resumable methods save it
            after every epoch and delete it when the output is written).
        include_test: also protect the held-out ``test`` split (as unseen images) and write it into the
            release, so it holds the whole dataset (default ``False``: the test split stays out).

    Returns:
        The manifest written.

    Raises:
        MedueError: bad data, options or output paths.
    """
    if get_protector_class(method).task != "classification":
        raise MedueError(f"method {method!r} is for segmentation; {data!r} is a classification dataset")
    from .protect import protect

    return protect(
        data,
        out,
        method,
        options,
        overwrite=overwrite,
        protector_out=protector_out,
        resume=resume,
        seed=seed,
        device=device,
        limit=limit,
        data_root=data_root,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        include_test=include_test,
    )


def write_classification_release(run, folder: Path, protector_file: str | Path, fit: dict[str, Any]) -> dict[str, Any]:
    """Write a classification release (``<name>.npz`` and ``manifest.json``) into ``folder``.

    Every image in the npz is protected: ``train_images`` with the perturbations learned for them, ``val_images``
    (and ``test_images`` when the run includes the test split) by the fitted protector as unseen images; labels
    and any other keys are copied with their dtype and shape.

    Args:
        run: the :class:`~medue_monai.pipeline.protect.ProtectionRun` with its fitted protector.
        folder: the (temporary) release folder.
        protector_file: the saved protector, hashed into the manifest.
        fit: the fit's timing (``seconds``, ``seconds_before_resume``, ``device``).

    Returns:
        The manifest written.
    """
    protector, source = run.protector, run.source
    splits = ("train", "val", "test") if run.include_test else ("train", "val")
    started = time.perf_counter()
    streams = {
        split: _protect_split(protector, source, split, run.batch_size, run.num_workers, run.progress)
        for split in splits
    }
    arrays = {key: value for key, value in source.arrays.items() if not key.startswith("test_") or run.include_test}
    for split in splits:
        arrays[f"{split}_images"] = streams[split][0]
    file_name = f"{source.name}.npz"
    write_npz(folder / file_name, arrays)  # protects and writes the images chunk by chunk
    apply_seconds = time.perf_counter() - started
    realized = {split: streams[split][1].result() for split in splits}
    manifest = build_manifest(
        task="classification",
        method=run.method,
        options=protector.config(),
        seed=run.seed,
        source=source.path,
        data_spec=run.data,
        output_files={file_name: folder / file_name},
        counts={split: int(streams[split][0].shape[0]) for split in splits},
        extra={
            "dataset": {
                "name": source.name,
                "file": file_name,
                "num_classes": source.num_classes,
                "in_channels": source.in_channels,
                "spatial_size": list(source.spatial_size),
                "dtype": str(source.dtype),
                "limit": run.limit,
                "protected_splits": list(splits),
                "carried_keys": sorted(set(arrays) - {f"{split}_images" for split in splits}),
            },
            "held_out": run.held_out,
            "budget": {**protector.budget_info(), "realized": realized["train"], "realized_by_split": realized},
            "timing": {
                "fit_seconds": fit["seconds"],
                # a resumed fit: the seconds its interrupted runs spent before (fit_seconds is this run's)
                "fit_seconds_before_resume": fit["seconds_before_resume"],
                "apply_seconds": apply_seconds,
                "images_per_second": run.num_samples / max(fit["seconds"] + apply_seconds, 1e-9),
                "device": fit["device"],
            },
            "history": getattr(protector, "history", []),
            "protector": protector_record(protector_file),
        },
    )
    write_manifest(folder, manifest)
    return manifest


def load_protected_classification(
    protected: str | Path, data_root: str | None = None, protector: str | Path | None = None
):
    """Read a release back from disk: (manifest, protected arrays, clean source).

    The clean source is found through the private record in the protector file (its recorded path; when
    that moved, the spec as given, a ``medmnist:<name>`` looked up under ``data_root``), and must have the
    checksum the manifest recorded.

    Args:
        protected: the release folder.
        data_root: where to look for the clean source when its recorded path is gone.
        protector: the fitted protector file (default ``<protected>.protector.pt``).

    Raises:
        MedueError: when the folder, its npz or the protector file is missing, the manifest is not a
            classification one, or the clean source is not the one protected.
    """
    protected = Path(protected)
    manifest, record = open_release(protected, protector)
    if manifest.get("task") != "classification":
        raise MedueError(f"{protected}: manifest task is {manifest.get('task')!r}, not classification")
    npz_path = inside(protected, manifest["dataset"]["file"], "npz file")
    if not npz_path.is_file():
        raise MedueError(f"{npz_path}: protected npz is missing")
    with np.load(npz_path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    spec, root = resolve_clean_source(manifest, record, data_root)
    clean = load_classification_spec(spec, data_root=root, limit=manifest["dataset"].get("limit"))
    if clean.arrays["train_images"].shape != arrays["train_images"].shape:
        raise MedueError(f"{npz_path}: train split shape differs from the clean source {spec}")
    return manifest, arrays, clean


def evaluate_classification(
    protected: str | Path,
    recipe: str = "cls-quick",
    exploiter: str | None = None,
    *,
    epochs: int | None = None,
    output: str | Path | None = None,
    device: str = "auto",
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
    data_root: str | None = None,
    clean_run: dict[str, Any] | None = None,
    defense: str | None = None,
    augmentation: str | None = None,
    adversarial_eps: float | None = None,
    protector: str | Path | None = None,
) -> dict[str, Any]:
    """Train the exploiter on the protected copy (read back from disk) and on the clean one; test both on clean data.

    Args:
        protected: folder written by :func:`protect_classification`.
        recipe: recipe name (``cls-quick`` or ``cls-paper``).
        exploiter: network name; default the recipe's.
        epochs: override the recipe's epochs.
        output: results JSON path (a learning-curve PNG is written beside it); ``None`` writes nothing.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        seed: the seed of both exploiter runs (same seed for clean and protected).
        num_workers: DataLoader workers.
        progress: show progress bars.
        data_root: folder with MedMNIST files, when the manifest's input path moved.
        clean_run: the clean-trained run of an earlier evaluation of the SAME source, recipe, exploiter
            and seed (its ``clean`` entry plus ``curves``: ``{**results["clean"], "curves":
            results["curves"]["clean"]}``), reused instead of training it again (benchmarks that compare
            several protectors of one dataset); ``None`` trains it.
        defense: an exploiter-side counter-measure from
            :data:`~medue_monai.transforms.defenses.DEFENSES`, applied to the training images of both
            runs (the test split stays clean); ``None`` is the recipe's (``none`` unless it names one).
        augmentation: training-time augmentation of both runs, ``none`` or ``crop-flip`` (random crop after
            4-pixel zero padding + left-right flip, :mod:`medue_monai.evaluation.hardening`); ``None`` is the
            recipe's.
        adversarial_eps: adversarial training of both runs: PGD in this L-inf radius (10 steps of 1/255 unless
            the recipe says otherwise) on every training batch; 0 turns it off; ``None`` is the recipe's.
        protector: the release's fitted protector file, which records the clean source (default
            ``<protected>.protector.pt``).

    Returns:
        Results with ``task``, ``clean``/``protected`` test accuracies (%), ``invisibility``, ``budget``.

    Raises:
        MedueError: for a recipe of another task, an unknown counter-measure, or a ``clean_run`` with another
            number of epochs, another exploiter network (where it records one) or other counter-measures.
    """
    manifest, arrays, clean = load_protected_classification(protected, data_root, protector)
    recipe_config = get_recipe(
        recipe, epochs=epochs, defense=defense, augmentation=augmentation, adversarial_eps=adversarial_eps
    )
    counter = counter_measures(recipe_config)
    recipe_config.update(counter)
    defense = counter["defense"]
    if recipe_config["task"] != "classification":
        raise MedueError(f"recipe {recipe!r} is for {recipe_config['task']}, not classification")
    exploiter = exploiter or recipe_config["network"]
    num_classes = manifest["dataset"]["num_classes"]
    started = time.perf_counter()
    runs = {}
    # the protected training images as read back, in the layout of clean.images (a channel axis of 1 dropped)
    protected_train = clean.images_of(arrays["train_images"])
    splits = [("clean", clean.images("train")), ("protected", protected_train)]
    if clean_run is not None:
        check_clean_run(
            clean_run, score="test_accuracy", epochs=recipe_config["epochs"], exploiter=exploiter, counter=counter
        )
        runs["clean"] = clean_run
        splits = splits[1:]
    for name, train_images in splits:
        runs[name] = train_exploiter(
            recipe_config,
            apply_defense(train_images, defense),
            clean.labels("train"),
            clean.images("test"),
            clean.labels("test"),
            exploiter,
            num_classes,
            device=device,
            seed=seed,
            num_workers=num_workers,
            progress=progress,
            description=f"{exploiter} on {name}",
        )
        runs[name].update(counter, exploiter=exploiter)
    results = {
        "task": "classification",
        "dataset": manifest["dataset"]["name"],
        "method": manifest["method"],
        "recipe": recipe_config,
        "exploiter": exploiter,
        "seed": seed,
        "defense": defense,
        "counter_measures": counter,
        "device": str(resolve_device(device)),
        "clean": {k: v for k, v in runs["clean"].items() if k != "curves"},
        "protected": {k: v for k, v in runs["protected"].items() if k != "curves"},
        "invisibility": invisibility_metrics(clean.images("train"), protected_train),
        "budget": {
            "norm": manifest["budget"]["norm"],
            "eps": manifest["budget"]["budget"],
            **budget_metrics(clean.images("train"), protected_train),
        },
        "curves": {name: run["curves"] for name, run in runs.items()},
        "wall_seconds": time.perf_counter() - started,
    }
    if output is not None:
        write_results(results, output, "test_accuracy")
    return results

"""MedMNIST npz sources, addressed as ``medmnist:<name>`` or as a path to an ``.npz`` file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..utils import MedueError
from .classification import ClassificationSource, load_classification_source

__all__ = ["load_medmnist", "resolve_medmnist_path", "DATA_ROOT_ENV"]

DATA_ROOT_ENV = "MEDUE_DATA_ROOT"


def _candidate_roots(data_root: str | os.PathLike | None) -> list[Path]:
    roots = []
    for root in (data_root, os.environ.get(DATA_ROOT_ENV)):
        if root:
            roots += [Path(root), Path(root) / "medmnist"]
    return roots


def _download_with_medmnist(name: str, root: Path) -> Path | None:
    """Try the optional ``medmnist`` package's downloader; return the file or None when unavailable."""
    try:
        import medmnist  # noqa: F401
        from medmnist import INFO
    except ImportError:
        return None
    base, _, size = name.partition("_")
    if base not in INFO:
        raise MedueError(f"unknown MedMNIST dataset {base!r}; known: {', '.join(sorted(INFO))}")
    dataset_class = getattr(__import__("medmnist"), INFO[base]["python_class"])
    root.mkdir(parents=True, exist_ok=True)
    kwargs = {"size": int(size)} if size else {}
    try:
        dataset_class(split="train", root=str(root), download=True, **kwargs)
    except Exception as err:  # network errors come in many types
        raise MedueError(f"could not download MedMNIST {name!r} ({err}); put {name}.npz under --data-root") from err
    path = root / f"{name}.npz"
    return path if path.exists() else None


def resolve_medmnist_path(spec: str, data_root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Find the npz file for a data spec.

    Args:
        spec: ``medmnist:<name>`` (e.g. ``medmnist:breastmnist`` or ``medmnist:pathmnist_64``) or a path.
        data_root: folder searched first (and its ``medmnist/`` subfolder); then ``$MEDUE_DATA_ROOT``.
        download: fall back to the optional ``medmnist`` package's downloader when installed.

    Returns:
        Path to an existing ``.npz`` file.

    Raises:
        MedueError: with instructions, when the file cannot be found or obtained.
    """
    if not spec.startswith("medmnist:"):
        path = Path(spec)
        if not path.exists():
            raise MedueError(f"{spec}: no such file")
        if path.is_dir() or path.suffix != ".npz":
            raise MedueError(f"{spec}: expected a MedMNIST .npz file or medmnist:<name>")
        return path
    name = spec.split(":", 1)[1].strip().lower()
    if not name:
        raise MedueError("empty MedMNIST name: use e.g. medmnist:breastmnist")
    if name.startswith("chestmnist"):
        raise MedueError("ChestMNIST is multi-label, which is not supported yet; use a single-label MedMNIST set")
    roots = _candidate_roots(data_root)
    for root in roots:
        if (root / f"{name}.npz").exists():
            return root / f"{name}.npz"
    if download:
        target = roots[0] if roots else Path.home() / ".medmnist"
        path = _download_with_medmnist(name, target)
        if path is not None:
            return path
    searched = ", ".join(str(r) for r in roots) or "(no --data-root and no $MEDUE_DATA_ROOT given)"
    raise MedueError(
        f"MedMNIST {name!r} not found in {searched}; download {name}.npz from the MedMNIST release "
        f"(zenodo record 10519652) into --data-root, or `pip install medmnist` on a machine that is online"
    )


def load_medmnist(
    spec: str, data_root: str | os.PathLike | None = None, limit: int | None = None, download: bool = True
) -> ClassificationSource:
    """Load a MedMNIST 2D npz (any single-label set and size, grey or RGB).

    Args:
        spec: ``medmnist:<name>`` or a path to an npz file.
        data_root: folder to look in for ``<name>.npz``.
        limit: keep only the first ``limit`` training items (val/test unchanged).
        download: allow the optional ``medmnist`` package to download a missing file.

    Returns:
        The validated :class:`ClassificationSource`.

    Raises:
        MedueError: missing/unreadable file, wrong keys or shapes, multi-label labels, non-finite pixels.
    """
    path = resolve_medmnist_path(spec, data_root, download=download)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as err:
        raise MedueError(f"{path}: cannot read as npz ({err})") from err
    name = path.stem
    return load_classification_source(arrays, name=name, path=str(path)).limited(limit)

"""Resolve a ``--data`` spec for classification: ``medmnist:<name>``, a path to an npz, or ``synthetic``."""

from __future__ import annotations

import os

from ..utils import MedueError
from .classification import ClassificationSource
from .medmnist import load_medmnist
from .synthetic import make_synthetic_classification

__all__ = ["load_classification_spec", "is_classification_spec"]


def is_classification_spec(spec: str) -> bool:
    """True for ``medmnist:...``, ``synthetic[:...]`` and ``*.npz`` specs."""
    return spec.startswith(("medmnist:", "synthetic")) or spec.endswith(".npz")


def _parse_synthetic(spec: str) -> dict[str, int]:
    """``synthetic`` or ``synthetic:num_train=400,size=28,num_classes=2,seed=0``."""
    options: dict[str, int] = {}
    _, _, rest = spec.partition(":")
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        if key not in ("num_train", "num_val", "num_test", "size", "num_classes", "seed"):
            raise MedueError(f"synthetic data: unknown option {key!r} in {spec!r}")
        try:
            options[key] = int(value)
        except ValueError as err:
            raise MedueError(f"synthetic data: {key} must be an integer, got {value!r}") from err
    return options


def load_classification_spec(
    spec: str, data_root: str | os.PathLike | None = None, limit: int | None = None
) -> ClassificationSource:
    """Load a classification source from a spec; the same spec always gives the same data.

    Args:
        spec: ``medmnist:<name>``, a path to a MedMNIST-style npz, or ``synthetic[:k=v,...]``.
        data_root: folder searched for MedMNIST files (else ``$MEDUE_DATA_ROOT``).
        limit: keep only the first ``limit`` training items.

    Returns:
        The source.

    Raises:
        MedueError: for unknown specs and unreadable or invalid data.
    """
    if spec.startswith("synthetic"):
        return make_synthetic_classification(**_parse_synthetic(spec)).limited(limit)
    return load_medmnist(spec, data_root=data_root, limit=limit)

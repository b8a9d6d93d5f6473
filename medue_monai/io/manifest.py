"""manifest.json: what was protected, how, with what, and checksums of input and output; and the private record.

The manifest travels with the release, so it names files relative to the release folder and the source
by the spec as the user gave it and its checksum: no machine paths. What only the data owner needs (where
the clean source lies, which images were held out to measure the protection) goes into the private
record, stored inside the fitted protector file beside the release (:func:`read_private_record`).
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..utils import sha256_path

__all__ = [
    "MANIFEST_NAME",
    "build_manifest",
    "private_record",
    "protector_record",
    "public_spec",
    "read_manifest",
    "read_private_record",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"


def build_manifest(
    *,
    task: str,
    method: str,
    options: dict[str, Any],
    seed: int,
    source: str | Path | None,
    data_spec: str,
    output_files: dict[str, Path],
    counts: dict[str, int],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a manifest dictionary.

    Args:
        task: ``"classification"`` or ``"segmentation"``.
        method: protector name.
        options: every option of the protector (its ``config()``) and of the command.
        seed: the seed used.
        source: input file or folder (hashed; its path is not recorded), or ``None`` for in-process data.
        data_spec: the data spec the user gave (a path is recorded by its last part only, :func:`public_spec`).
        output_files: files written, relative name -> path (hashed).
        counts: per-split item counts.
        extra: further task-specific entries (budget, split ids, resize records, ...).

    Returns:
        The manifest as a JSON-serializable dictionary.
    """
    manifest = {
        "tool": "medue-monai",
        "version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "task": task,
        "method": method,
        "seed": seed,
        "options": options,
        "input": {"spec": public_spec(data_spec), "sha256": sha256_path(source) if source else None},
        "output": {name: {"sha256": sha256_path(path)} for name, path in output_files.items()},
        "counts": counts,
        "environment": {"python": platform.python_version(), "torch": torch.__version__},
    }
    if extra:
        manifest.update(extra)
    return manifest


def public_spec(spec: str) -> str:
    """A data spec as a release may show it: ``medmnist:<name>`` and ``synthetic...`` as given, a path by its
    last part only (``/data/hospital/kvasir-seg`` -> ``kvasir-seg``), so no local folder layout travels."""
    spec = str(spec)
    if spec.startswith(("medmnist:", "synthetic")):
        return spec
    return Path(spec).name or spec


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` into ``folder`` and return its path."""
    path = Path(folder) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    return path


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Read ``manifest.json`` from a protected-dataset folder.

    Raises:
        MedueError: when the folder has no readable manifest.
    """
    from ..utils import MedueError

    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise MedueError(f"{folder}: not a protected dataset (no {MANIFEST_NAME}); run `medue protect` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MedueError(f"{path}: invalid JSON ({err})") from err


def protector_record(written: str | Path) -> dict[str, Any]:
    """Release-manifest entry for the fitted protector kept outside the release folder (no path).

    Args:
        written: the protector file to hash (it may still be at its temporary path).

    Returns:
        ``{"sha256", "private", "note"}``.
    """
    return {
        "sha256": sha256_path(written),
        "private": True,
        "note": "kept outside the release; whoever holds it can remove the protection",
    }


def private_record(
    *,
    spec: str,
    source: str | Path | None,
    data_root: str | Path | None,
    release: str | Path | None,
    held_out: dict[str, Any],
    split: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """What the data owner needs to evaluate a release and that must not travel with it.

    Args:
        spec: the data spec as given.
        source: the resolved source file or folder, or ``None`` for in-process data.
        data_root: the data root given, if any.
        release: the release folder (``None`` when the protector is saved before any release is written).
        held_out: ``{"split": name, "count": n, "in_release": bool}`` for the images kept to measure the protection.
        split: the train / test ids of a folder source.

    Returns:
        A JSON-like dictionary of plain types (stored in the protector file, loadable with ``weights_only=True``).
    """
    return {
        "spec": spec,
        "source": str(Path(source).resolve()) if source else None,
        "data_root": str(Path(data_root).resolve()) if data_root else None,
        "release": str(Path(release).resolve()) if release else None,
        "held_out": dict(held_out),
        "split": {name: list(ids) for name, ids in (split or {}).items()},
    }


def read_private_record(path: str | Path, release: str | Path | None = None) -> dict[str, Any]:
    """Read the private record from a fitted protector file (``torch.load(..., weights_only=True)``).

    Args:
        path: the protector file (``<release>.protector.pt`` by default).
        release: the release folder it belongs to, for the error messages.

    Returns:
        The record written by :func:`private_record`.

    Raises:
        MedueError: when the file is missing, unreadable or holds no record.
    """
    import torch

    from ..utils import MedueError

    path = Path(path)
    whose = f" of {release}" if release is not None else ""
    if not path.is_file():
        raise MedueError(
            f"{path}: the private protector file{whose} is missing; it records the clean source and the held-out "
            "images needed to evaluate (pass its path with --protector)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MedueError(f"{path}: cannot read the protector file ({err})") from err
    record = payload.get("record") if isinstance(payload, dict) else None
    if not isinstance(record, dict):
        raise MedueError(f"{path}: the protector file holds no private record (written by an older version?)")
    return record

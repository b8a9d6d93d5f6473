"""manifest.json: what was protected, how, with what, and checksums of input and output."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..utils import sha256_path

__all__ = ["MANIFEST_NAME", "build_manifest", "protector_record", "write_manifest", "read_manifest"]

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
        source: input file or folder (hashed), or ``None`` for in-process data.
        data_spec: the data spec the user gave.
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
        "input": {
            "spec": data_spec,
            "path": str(source) if source else None,
            "sha256": sha256_path(source) if source else None,
        },
        "output": {name: {"sha256": sha256_path(path)} for name, path in output_files.items()},
        "counts": counts,
        "environment": {"python": platform.python_version(), "torch": torch.__version__},
    }
    if extra:
        manifest.update(extra)
    return manifest


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


def protector_record(path: str | Path, written: str | Path | None = None) -> dict[str, Any]:
    """Manifest entry for the fitted protector kept outside the release folder.

    Args:
        path: the protector's final path.
        written: the file to hash when it is still at a temporary path (default ``path``).

    Returns:
        ``{"path", "sha256", "private", "note"}``.
    """
    return {
        "path": str(path),
        "sha256": sha256_path(written if written is not None else path),
        "private": True,
        "note": "keep this file private and out of the release: whoever holds it can remove the protection",
    }

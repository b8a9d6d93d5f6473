"""Resumable fits for the protect pipelines: one place that attaches a :class:`FitCheckpoint`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..protectors.base import FitCheckpoint, Protector
from ..utils import MedueError, sha256_path

__all__ = ["attach_fit_checkpoint", "fit_checkpoint_path"]


def fit_checkpoint_path(protector_file: str | Path) -> Path:
    """The fit checkpoint folder beside the fitted protector: ``<protector file>.resume``."""
    protector_file = Path(protector_file)
    return protector_file.with_name(protector_file.name + ".resume")


def attach_fit_checkpoint(
    protector: Protector,
    protector_file: Path,
    source: str | Path | None,
    run: dict[str, Any],
    resume: bool,
    overwrite: bool = False,
) -> FitCheckpoint | None:
    """Give a resumable protector an epoch checkpoint beside its output file.

    Args:
        protector: the protector about to be fitted.
        protector_file: where the fitted protector will be written.
        source: the input file or folder (hashed into the fingerprint), or ``None`` for in-process data.
        run: what else defines the run (data spec, seed, limit, batch and working size).
        resume: continue from an existing checkpoint of the same run.
        overwrite: without ``resume``, discard an existing checkpoint and start afresh (otherwise such a
            checkpoint is an interrupted fit that a rerun must not throw away silently).

    Returns:
        The attached checkpoint, or ``None`` for methods that cannot resume (then ``resume`` must be off).

    Raises:
        MedueError: when ``resume`` is asked of a method that cannot resume, or a checkpoint exists and
            neither ``resume`` nor ``overwrite`` says what to do with it.
    """
    if not protector.resumable:
        if resume:
            raise MedueError(f"method {protector.name!r} cannot resume an interrupted fit; run it without --resume")
        return None
    path = fit_checkpoint_path(protector_file)
    existing = FitCheckpoint(path, {})
    if (existing.files() or path.is_file()) and not resume:
        if not overwrite:
            raise MedueError(
                f"{path}: an interrupted fit of this output is saved there; pass --resume to continue it, or "
                "--overwrite to discard it and start afresh"
            )
        existing.remove()
        path.unlink(missing_ok=True)
    fingerprint = {
        "method": protector.name,
        "options": protector.config(),
        "input_sha256": sha256_path(source) if source else None,
        **run,
    }
    protector.checkpoint = FitCheckpoint(path, fingerprint, resume=resume)
    return protector.checkpoint

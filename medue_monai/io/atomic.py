"""Atomic output folders: write into a temporary sibling, rename at the end, never half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..utils import MedueError

__all__ = ["atomic_output_dir", "atomic_output_file", "check_output_dir", "check_output_file", "protector_path"]


def _refuse_input_overlap(out: Path, inputs: tuple[str | Path, ...], what: str) -> None:
    """Raise when ``out`` is an input, lies inside one, or contains one (originals are never modified)."""
    for source in inputs:
        source = Path(source).resolve()
        if out == source or source in out.parents or out in source.parents:
            raise MedueError(f"{out}: {what} overlaps the input {source}; originals are never modified")


def _current_umask() -> int:
    """The process's umask (the standard library can only read it by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_dir(out: str | Path, overwrite: bool = False, inputs: tuple[str | Path, ...] = ()) -> Path:
    """Validate an output folder before any work starts.

    Args:
        out: the output folder.
        overwrite: allow replacing an existing, non-empty folder.
        inputs: input paths that the output must not be, or contain, or lie inside (originals are never modified).

    Returns:
        The resolved output path.

    Raises:
        MedueError: when the folder exists (without ``overwrite``) or overlaps an input.
    """
    out = Path(out).resolve()
    _refuse_input_overlap(out, inputs, "output folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise MedueError(f"{out}: already exists; pass --overwrite to replace it")
    return out


@contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; on success move it to ``out``, on error delete it.

    Temporary folders of an earlier run on the same ``out`` that was killed outright are removed first (one
    process writes one release at a time).

    Args:
        out: final output folder.
        overwrite: replace an existing ``out`` at the end.

    Yields:
        The temporary folder to write into.
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    # a run killed outright (kill -9, power loss) cannot clean up: its temporary folder is removed here
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        # mkdtemp makes the folder private (0700); a release folder gets the user's usual mode, as mkdir would
        tmp.chmod(0o777 & ~_current_umask())
        yield tmp
        if out.exists():
            if not overwrite and (not out.is_dir() or any(out.iterdir())):
                raise MedueError(f"{out}: already exists; pass --overwrite to replace it")
            backup = out.with_name(f".{out.name}.old")
            if backup.exists():
                shutil.rmtree(backup)
            out.rename(backup)
            tmp.rename(out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def protector_path(out: str | Path, protector_out: str | Path | None = None) -> Path:
    """Where the fitted protector goes: ``protector_out``, else ``<out>.protector.pt`` beside the release folder.

    The protector is the key to the protection (SALM's per-image deltas, UMed's generators, LSP's class
    patterns): whoever holds it can estimate and subtract the perturbation, so it never goes into the
    folder that is released.

    Args:
        out: the release folder.
        protector_out: an explicit path, or ``None`` for the default.

    Returns:
        The resolved path.

    Raises:
        MedueError: when the path lies inside the release folder.
    """
    out = Path(out).resolve()
    path = Path(protector_out).resolve() if protector_out is not None else out.with_name(f"{out.name}.protector.pt")
    if path == out or out in path.parents:
        raise MedueError(
            f"{path}: the fitted protector must lie outside the release folder {out} "
            "(whoever holds it can remove the protection)"
        )
    return path


def check_output_file(path: str | Path, overwrite: bool = False, inputs: tuple[str | Path, ...] = ()) -> Path:
    """Validate an output file before any work starts (exists without ``overwrite``, overlaps an input).

    Args:
        path: the output file.
        overwrite: allow replacing an existing file.
        inputs: input paths the file must not be or lie inside.

    Returns:
        The resolved path.

    Raises:
        MedueError: when the file exists (without ``overwrite``), is a folder, or overlaps an input.
    """
    path = Path(path).resolve()
    _refuse_input_overlap(path, inputs, "output file")
    if path.is_dir():
        raise MedueError(f"{path}: is a folder, expected a file path")
    if path.exists() and not overwrite:
        raise MedueError(f"{path}: already exists; pass --overwrite to replace it")
    return path


@contextmanager
def atomic_output_file(path: str | Path, overwrite: bool = False, private: bool = False) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; on success rename it to ``path``, on error delete it.

    Args:
        path: final file path.
        overwrite: replace an existing file at the end.
        private: make the file readable by its owner only (mode 0600), as the fitted protector is.

    Yields:
        The temporary path to write.

    Raises:
        MedueError: when ``path`` appeared meanwhile and ``overwrite`` is off.
    """
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    tmp = Path(name)
    try:
        os.close(handle)
        yield tmp
        if path.exists() and not overwrite:
            raise MedueError(f"{path}: already exists; pass --overwrite to replace it")
        if private:
            tmp.chmod(0o600)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

"""Atomic output folders: write into a temporary sibling, rename at the end, never half-written."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..utils import MedueError

__all__ = ["atomic_output_dir", "check_output_dir"]


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
    for source in inputs:
        source = Path(source).resolve()
        if out == source or source in out.parents or out in source.parents:
            raise MedueError(f"{out}: output folder overlaps the input {source}; originals are never modified")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise MedueError(f"{out}: already exists; pass --overwrite to replace it")
    return out


@contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; on success move it to ``out``, on error delete it.

    Args:
        out: final output folder.
        overwrite: replace an existing ``out`` at the end.

    Yields:
        The temporary folder to write into.
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
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

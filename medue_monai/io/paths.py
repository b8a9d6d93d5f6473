"""Path containment for everything derived from data: item ids and the paths a manifest lists.

An id becomes a file name in a release (``images/<id>.png``), so it must be a plain name: one
letter or digit, then letters, digits, ``.``, ``_`` or ``-`` (:data:`ID_PATTERN`). A path read from a
manifest is resolved and must stay inside its release folder. Neither check is in MONAI or the
standard library (``pathlib`` resolves, it does not contain), so both are written here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from ..utils import MedueError

__all__ = ["ID_PATTERN", "check_item_id", "check_unique_ids", "inside"]

#: what an item id may look like (it becomes a file name in the release)
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_item_id(item_id: object, origin: str | Path) -> str:
    """Return ``item_id`` as a string when it is a safe file name.

    Args:
        item_id: the id (a string; other types are refused, not converted).
        origin: the file the id came from, named in the error.

    Returns:
        The id.

    Raises:
        MedueError: for an id that is not a string, is too long, or does not match :data:`ID_PATTERN`
            (path separators, ``..``, a leading dot or dash, spaces, ...).
    """
    if not isinstance(item_id, str) or not ID_PATTERN.fullmatch(item_id) or len(item_id) > 200:
        raise MedueError(
            f"{origin}: id {item_id!r} is not a plain name (it must match [A-Za-z0-9][A-Za-z0-9._-]*, at most "
            "200 characters: it becomes a file name in the release)"
        )
    return item_id


def check_unique_ids(ids: Iterable[str], origin: str | Path) -> None:
    """Refuse ids that repeat, also when they differ only in case (they would share a file on some disks).

    Raises:
        MedueError: naming the first repeated id.
    """
    seen: dict[str, str] = {}
    for item_id in ids:
        key = item_id.lower()
        if key in seen:
            raise MedueError(f"{origin}: duplicate id {item_id!r} (also {seen[key]!r}); ids must be unique")
        seen[key] = item_id


def inside(folder: str | Path, relative: str | Path, what: str = "path") -> Path:
    """Resolve ``relative`` under ``folder`` and make sure it stays there.

    Args:
        folder: the folder the path must lie in.
        relative: a relative path (from a manifest or built from an id).
        what: what the path is, for the error message.

    Returns:
        The resolved path.

    Raises:
        MedueError: for an absolute path or one that leaves ``folder`` (``..``, symbolic links).
    """
    base = Path(folder).resolve()
    if Path(relative).is_absolute():
        raise MedueError(f"{folder}: {what} {str(relative)!r} is absolute; it must be relative to the folder")
    path = (base / relative).resolve()
    if path == base or base not in path.parents:
        raise MedueError(f"{folder}: {what} {str(relative)!r} lies outside the folder")
    return path

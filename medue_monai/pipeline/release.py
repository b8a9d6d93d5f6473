"""What a release holds and how the data owner finds the clean source of one again.

A release (the output folder of ``medue protect``) holds protected images only, in every split it ships. The
images held out to measure the protection (MedMNIST's ``test`` split; the seeded 20 % test split of a
folder source) stay out of it unless the user asks for them to be protected and included too. The
private record inside the fitted protector file (:func:`medue_monai.io.manifest.private_record`) says
where the clean source lies and which ids were held out; :func:`open_release` reads both back for the
evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io.atomic import protector_path
from ..io.manifest import read_manifest, read_private_record
from ..utils import MedueError, sha256_path

__all__ = ["held_out_entry", "held_out_sentence", "open_release", "resolve_clean_source"]


def held_out_entry(split: str, count: int, in_release: bool) -> dict[str, Any]:
    """The manifest's description of the held-out images (the same words the CLI prints).

    Args:
        split: the held-out split's name (``test``).
        count: how many images it holds.
        in_release: whether they were protected (as unseen images) and written into the release.

    Returns:
        ``{"split", "count", "in_release", "note"}``.
    """
    entry = {"split": split, "count": int(count), "in_release": bool(in_release)}
    entry["note"] = held_out_sentence(entry)
    return entry


def held_out_sentence(entry: dict[str, Any]) -> str:
    """One sentence on what happened to the held-out images of a release."""
    count, split = entry["count"], entry["split"]
    if entry["in_release"]:
        return (
            f"the {count} held-out {split} images were protected as unseen images and are in the release; "
            "`medue evaluate` still tests on their clean originals"
        )
    return (
        f"the {count} held-out {split} images are not in the release: `medue evaluate` reads them from the "
        "clean source to measure the protection"
    )


def open_release(release: str | Path, protector: str | Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a release's manifest and the private record of its protector.

    Args:
        release: the release folder.
        protector: the fitted protector file (default ``<release>.protector.pt`` beside the folder).

    Returns:
        ``(manifest, record)``.

    Raises:
        MedueError: for a folder without a manifest, a missing or unreadable protector file, or a protector
            that belongs to another release.
    """
    manifest = read_manifest(release)
    path = Path(protector) if protector is not None else protector_path(release)
    record = read_private_record(path, release)
    expected = (manifest.get("protector") or {}).get("sha256")
    if expected is not None and sha256_path(path) != expected:
        raise MedueError(f"{path}: this protector file does not belong to the release {release} (checksum differs)")
    return manifest, record


def resolve_clean_source(
    manifest: dict[str, Any], record: dict[str, Any], data_root: str | Path | None = None
) -> tuple[str, str | None]:
    """Find the clean source of a release: the recorded path, else the spec as given under ``data_root``.

    The source found must have the checksum the manifest recorded (the release was made from it).

    Args:
        manifest: the release manifest.
        record: its private record.
        data_root: where to look when the recorded path is gone (a moved source is found as
            ``data_root/<its name>``; a ``medmnist:<name>`` spec under ``data_root``).

    Returns:
        ``(spec or path to load, data_root to load it with)``.

    Raises:
        MedueError: when no source is found or the one found differs from the protected one.
    """
    recorded = record.get("source")
    spec = record.get("spec") or manifest["input"]["spec"]
    root = data_root if data_root is not None else record.get("data_root")
    candidates = []
    if recorded:
        candidates.append(Path(recorded))
        if data_root is not None:
            candidates.append(Path(data_root) / Path(recorded).name)
    if not spec.startswith(("medmnist:", "synthetic")):
        candidates.append(Path(spec))
        if data_root is not None:
            candidates.append(Path(data_root) / spec)
    found = next((path for path in candidates if path.exists()), None)
    if found is None:
        if spec.startswith("synthetic"):
            return spec, None
        if not spec.startswith("medmnist:"):
            raise MedueError(f"cannot find the clean source of this release ({spec!r}); pass --data-root")
        from ..data.medmnist import resolve_medmnist_path

        try:
            found = resolve_medmnist_path(spec, root, download=False)
        except MedueError as err:
            raise MedueError(f"cannot find the clean source of this release ({err}); pass --data-root") from err
    expected = manifest["input"].get("sha256")
    if expected is not None and sha256_path(found) != expected:
        raise MedueError(f"{found}: differs from the source this release was made from (checksum); pass --data-root")
    return str(found), (str(root) if root is not None else None)

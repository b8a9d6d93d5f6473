"""Small shared helpers: user-facing errors, fraction parsing, devices, seeds, checksums, machine records."""

from __future__ import annotations

import hashlib
import os
import platform
import random
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "MedueError",
    "machine_record",
    "parse_fraction",
    "resolve_device",
    "set_seed",
    "sha256_file",
    "sha256_path",
]


class MedueError(Exception):
    """An error caused by the user's input; the CLI prints its message on one line and exits 2."""


def parse_fraction(text: str | float | int) -> float:
    """Parse ``"8/255"``, ``"0.03"`` or a number into a float.

    Args:
        text: a fraction ``"a/b"``, a decimal string or a number.

    Returns:
        The value as a float.

    Raises:
        MedueError: if the text is not a number or a fraction.
    """
    if isinstance(text, (int, float)):
        return float(text)
    try:
        return float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError) as err:
        raise MedueError(f"not a number or fraction: {text!r} (use e.g. 8/255 or 0.0314)") from err


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Map ``"auto"`` to the first CUDA device when present, else the CPU.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``.

    Returns:
        The resolved ``torch.device``.

    Raises:
        MedueError: if a CUDA device is asked for and none is present.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise MedueError(f"device {device!r} requested but no CUDA device is available (use --device cpu)")
    return resolved


def machine_record(device: str | torch.device = "cpu") -> dict[str, object]:
    """What a benchmark record says about the machine it ran on.

    Args:
        device: the device the measured work ran on (``"auto"`` is resolved first).

    Returns:
        Host, platform, processor, CPU count, torch threads, Python, torch and package versions, the device
        and the GPU's name (``None`` on a CPU).
    """
    from . import __version__

    resolved = resolve_device(device)
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "medue_monai": __version__,
        "device": str(resolved),
        "gpu": torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else None,
    }


def set_seed(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, and return a CPU generator seeded the same way.

    Args:
        seed: the seed.

    Returns:
        A ``torch.Generator`` seeded with ``seed`` for code that wants its own stream.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def sha256_file(path: str | os.PathLike) -> str:
    """Return the hex sha256 of one file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """Return the sha256 of a file, or of a folder as the digest of its files' sorted ``sha  relpath`` lines."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    lines = [
        f"{sha256_file(p)}  {p.relative_to(path).as_posix()}\n"
        for p in sorted(path.rglob("*"), key=lambda q: q.relative_to(path).as_posix())
        if p.is_file()
    ]
    return hashlib.sha256("".join(lines).encode()).hexdigest()

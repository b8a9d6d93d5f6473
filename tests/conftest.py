"""Shared fixtures: where the real data lives, and small CPU settings for fast tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

_DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data_root() -> Path:
    """``$MEDUE_DATA_ROOT`` if set, else ``../shared/data`` beside the checkout."""
    return Path(os.environ.get("MEDUE_DATA_ROOT", _DEFAULT_SHARED))


@pytest.fixture
def shared_data() -> Path:
    """The real-data folder; tests using it skip with a clear reason when it is absent."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real data folder {root} is absent (set MEDUE_DATA_ROOT to ../shared/data)")
    return root

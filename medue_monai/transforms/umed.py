"""UMed protect transforms (array + dictionary) for MONAI pipelines.

Both wrap a fitted :class:`~medue_monai.protectors.umed.UMedProtector` and run ONE forward pass of its
two generators per call; the mask (``label``) decides where the perturbation may go. They build on
the generic :class:`~medue_monai.transforms.protect.Protect` / ``Protectd``: the output keeps the
input's type, and a ``MetaTensor`` keeps its meta (with ``protected_by`` added).
"""

from __future__ import annotations

from ..protectors import umed as _umed  # noqa: F401  (registers "umed" for protectors loaded from a path)
from ..utils import MedueError
from .protect import Protect, Protectd

__all__ = ["UMedProtect", "UMedProtectd", "UMedProtectD", "UMedProtectDict"]


class UMedProtect(Protect):
    """Apply a fitted UMed protector to a channel-first image given its mask.

    Call as ``transform(img, label)`` with ``img`` ``(C, H, W)`` (or a batch ``(B, C, H, W)``) in [0, 1]
    and ``label`` the binary mask ``(1, H, W)`` (or ``(B, 1, H, W)``). An empty mask leaves the image
    unchanged.

    Args:
        protector: a fitted UMed protector, or the path of one saved with ``save()``.
        device: device for a protector loaded from a path.
    """

    method = "umed"


class UMedProtectd(Protectd):
    """Dictionary form of :class:`UMedProtect`.

    Args:
        keys: image keys to protect (default ``"image"``).
        protector: a fitted UMed protector or the path of a saved one.
        label_key: key of the binary mask (default ``"label"``).
        device: device for a protector loaded from a path.
        allow_missing_keys: don't raise when an image key is missing.

    Raises:
        MedueError: when no protector is given.
    """

    array_class = UMedProtect

    def __init__(
        self,
        keys: str | list[str] | tuple[str, ...] = "image",
        protector: object = None,
        label_key: str = "label",
        device: str = "auto",
        allow_missing_keys: bool = False,
    ) -> None:
        if protector is None:
            raise MedueError("UMedProtectd needs a fitted protector or a checkpoint path")
        super().__init__(
            keys,
            protector,
            label_key=label_key,
            index_key=None,
            device=device,
            allow_missing_keys=allow_missing_keys,
        )


UMedProtectD = UMedProtectDict = UMedProtectd

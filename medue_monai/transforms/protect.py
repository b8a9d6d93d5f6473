"""Protect transforms: apply a fitted protector inside any MONAI pipeline (array + dictionary forms)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from ..protectors import Protector, load_protector
from ..utils import MedueError

__all__ = [
    "Protect",
    "Protectd",
    "ProtectD",
    "ProtectDict",
    "SALMProtect",
    "SALMProtectd",
    "SALMProtectD",
    "SALMProtectDict",
]


def _as_protector(protector: Protector | str, device: str) -> Protector:
    if isinstance(protector, Protector):
        return protector
    return load_protector(protector, device=device)


class Protect(Transform):
    """Add a fitted protector's perturbation to an image (channel-first, one item or a batch).

    The output has the input's type; a ``MetaTensor`` keeps its meta, with ``protected_by`` added.

    Args:
        protector: a fitted :class:`~medue_monai.protectors.Protector`, or a path to one saved with
            ``save()`` (loaded with ``weights_only=True``).
        device: device for a protector loaded from a path.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]
    method: str | None = None

    def __init__(self, protector: Protector | str, device: str = "auto") -> None:
        self.protector = _as_protector(protector, device)
        if self.method is not None and self.protector.name != self.method:
            raise MedueError(f"{type(self).__name__} needs a {self.method} protector, got {self.protector.name!r}")

    def __call__(self, img: Any, label: Any, index: Any | None = None) -> Any:
        """Protect ``img`` given its ``label`` (class index or mask) and optional training index.

        Args:
            img: ``(C, H, W)`` or ``(B, C, H, W)`` image in [0, 1].
            label: class index / ``(B,)`` indices, or a ``(1, H, W)`` / ``(B, 1, H, W)`` mask.
            index: training-set index (or indices) of items the protector was fitted on.

        Returns:
            The protected image, same type, shape and dtype as ``img``.
        """
        tensor = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img, dtype=torch.float32)
        single = tensor.ndim == 3
        batch = tensor[None] if single else tensor
        labels = torch.as_tensor(label.as_tensor() if isinstance(label, MetaTensor) else label)
        if self.protector.task == "segmentation":
            labels = labels[None] if single else labels
        else:
            labels = labels.reshape(-1)
        indices = None if index is None else torch.as_tensor(index).reshape(-1)
        protected = self.protector.protect(batch, labels, indices)
        protected = protected[0] if single else protected
        output, *_ = convert_to_dst_type(protected, img, dtype=getattr(img, "dtype", None))
        if isinstance(output, MetaTensor):
            output.meta["protected_by"] = self.protector.name
        return output


class Protectd(MapTransform):
    """Dictionary form of :class:`Protect`.

    Args:
        keys: image keys to protect.
        protector: a fitted protector or a path to a saved one.
        label_key: key of the class index or mask.
        index_key: key of the training-set index (e.g. ``"index"``) when items are the ones the
            protector was fitted on; ``None`` treats every item as new.
        device: device for a protector loaded from a path.
        allow_missing_keys: don't raise when a key is missing.
    """

    backend = Protect.backend
    array_class: type[Protect] = Protect

    def __init__(
        self,
        keys: KeysCollection,
        protector: Protector | str,
        label_key: str = "label",
        index_key: str | None = None,
        device: str = "auto",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.protect = self.array_class(protector, device=device)
        self.label_key = label_key
        self.index_key = index_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.label_key not in d:
            raise MedueError(f"{type(self).__name__}: item has no label key {self.label_key!r}")
        index = d.get(self.index_key) if self.index_key is not None else None
        for key in self.key_iterator(d):
            d[key] = self.protect(d[key], d[self.label_key], index)
        return d


class SALMProtect(Protect):
    """:class:`Protect` for a fitted SALM protector (sign-PGD against its frozen surrogate)."""

    method = "salm"


class SALMProtectd(Protectd):
    """Dictionary form of :class:`SALMProtect`; see :class:`Protectd` for the arguments."""

    array_class = SALMProtect


ProtectD = ProtectDict = Protectd
SALMProtectD = SALMProtectDict = SALMProtectd

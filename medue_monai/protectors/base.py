"""The Protector contract and the registry of protection methods by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..utils import MedueError, resolve_device

__all__ = ["Protector", "PROTECTORS", "register_protector", "get_protector_class", "load_protector"]

PROTECTORS: dict[str, type[Protector]] = {}


def register_protector(name: str) -> Callable[[type[Protector]], type[Protector]]:
    """Class decorator registering a protector under ``name`` (used by ``--method`` and bundles)."""

    def decorator(cls: type[Protector]) -> type[Protector]:
        PROTECTORS[name] = cls
        cls.name = name
        return cls

    return decorator


def get_protector_class(name: str) -> type[Protector]:
    """Return the registered protector class for ``name``.

    Raises:
        MedueError: for an unknown method name.
    """
    if name not in PROTECTORS:
        raise MedueError(f"unknown method {name!r}; choose from {', '.join(sorted(PROTECTORS))}")
    return PROTECTORS[name]


class Protector(ABC):
    """A protection method: learns on a clean set (``fit``), then returns bounded perturbations.

    Inside a protector images are float32 in [0, 1] and ``eps`` is in that unit. ``perturb``
    always returns a perturbation already projected into the method's budget and mask, with
    ``images + delta`` inside [0, 1].

    Args:
        eps: L-inf budget in [0, 1] units (methods with an L2 budget document their own).
        seed: random seed for everything the method draws.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
    """

    name: ClassVar[str] = ""
    task: ClassVar[str] = "classification"

    def __init__(self, eps: float = 8 / 255, seed: int = 0, device: str | torch.device = "auto") -> None:
        if not 0.0 < float(eps) <= 1.0:
            raise MedueError(f"eps must be in (0, 1] (image units), got {eps}")
        self.eps = float(eps)
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.fitted = False

    # ------------------------------------------------------------------ contract
    @abstractmethod
    def fit(self, loader: Iterable[dict], num_classes: int, num_samples: int) -> Protector:
        """Learn what the method needs on the clean training set.

        Args:
            loader: iterable of collated MONAI dict batches with ``image``, ``label`` and ``index``.
            num_classes: number of classes (2 for binary segmentation).
            num_samples: number of training items (``index`` runs over ``0..num_samples-1``).

        Returns:
            ``self``, fitted.
        """

    @abstractmethod
    def perturb(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Return the perturbation for a batch, inside the budget and with ``images + delta`` in [0, 1].

        Args:
            images: ``(B, C, H, W)`` float images in [0, 1].
            labels: ``(B,)`` class indices or ``(B, 1, H, W)`` masks.
            indices: training-set indices of the items, when they are the items the method was fit on.

        Returns:
            ``delta`` with the images' shape, device and dtype.
        """

    def config(self) -> dict[str, Any]:
        """The options that define this protector (recorded in manifests and checkpoints)."""
        return {"eps": self.eps, "seed": self.seed}

    def budget_info(self) -> dict[str, Any]:
        """The norm and budget the perturbation obeys (recorded in manifests; writers clip to it).

        Returns:
            ``{"norm": "linf", "budget": eps}`` here; L2 methods override with ``"l2"``.
        """
        return {"norm": "linf", "budget": self.eps}

    def state_dict(self) -> dict[str, Any]:
        """Learned state as plain tensors / numbers (loadable with ``weights_only=True``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore learned state produced by :meth:`state_dict`."""
        self.fitted = True

    # ------------------------------------------------------------------ helpers
    def protect(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Return ``clip(images + delta, 0, 1)`` for a batch."""
        return (images + self.perturb(images, labels, indices)).clamp_(0.0, 1.0)

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise MedueError(f"{self.name}: call fit() (or load a saved protector) before perturbing")

    def save(self, path: str | Path) -> None:
        """Save method name, config and learned state to ``path`` (a ``torch.save`` file of plain types)."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save({"method": self.name, "config": self.config(), "state": self.state_dict()}, tmp)
        tmp.replace(path)


def load_protector(path: str | Path, device: str | torch.device = "auto") -> Protector:
    """Load a protector saved by :meth:`Protector.save`, with ``weights_only=True``.

    Args:
        path: checkpoint path.
        device: where to put its tensors.

    Returns:
        The fitted protector.

    Raises:
        MedueError: when the file is missing or not a medue protector checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise MedueError(f"{path}: no such protector checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MedueError(f"{path}: cannot load protector checkpoint ({err})") from err
    if not isinstance(payload, dict) or "method" not in payload:
        raise MedueError(f"{path}: not a medue protector checkpoint")
    cls = get_protector_class(payload["method"])
    config = dict(payload["config"])
    config["device"] = device
    protector = cls(**config)
    protector.load_state_dict(payload["state"])
    return protector

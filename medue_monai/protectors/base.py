"""The Protector contract and the registry of protection methods by name."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from ..utils import MedueError, resolve_device

__all__ = [
    "FitCheckpoint",
    "Protector",
    "PROTECTORS",
    "register_protector",
    "get_protector_class",
    "load_protector",
]

PROTECTORS: dict[str, type[Protector]] = {}


def surrogate_reset_seed(seed: int, epoch: int, reset_every: int) -> int | None:
    """The seed of a surrogate re-initialization due at the start of ``epoch``, or ``None`` when none is due.

    Shared by the protectors' ``reset_every`` options: a reset falls on every ``reset_every``-th epoch after
    the first (``reset_every=0``: never), seeded from ``seed`` and the epoch so that a resumed fit resets
    exactly as an uninterrupted one.

    Args:
        seed: the protector's seed.
        epoch: the 0-based epoch about to start.
        reset_every: reset period in epochs (0 = never).

    Returns:
        ``seed + 1000 * epoch`` when a reset is due, else ``None``.
    """
    if reset_every and epoch > 0 and epoch % reset_every == 0:
        return seed + 1000 * epoch
    return None


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


class FitCheckpoint:
    """Where a resumable protector saves its training state after every epoch, so an interrupted fit resumes.

    The file holds plain tensors and numbers (loads with ``weights_only=True``): the protector's training
    state (networks, optimizers, perturbations, history), the epochs done, the fit seconds spent so far
    (over all interrupted runs; a resumed run reads them into :attr:`earlier_seconds`), the global torch RNG state
    and the loader's shuffling generator, and a ``fingerprint`` of the run (method, options, data) that
    must match for a resume. It contains what the protection adds, so it is as private as the fitted
    protector; callers delete it once the protected output is written.

    Args:
        path: checkpoint file.
        fingerprint: JSON-like description of the run; a checkpoint with another fingerprint is refused.
        resume: continue from ``path`` when it exists (otherwise start afresh and overwrite it).
    """

    def __init__(self, path: str | Path, fingerprint: dict[str, Any], resume: bool = False) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.resume = bool(resume)
        #: fit seconds spent by the interrupted runs this one continues (read by :meth:`load`)
        self.earlier_seconds = 0.0
        self._started = time.perf_counter()

    def save(self, training_state: dict[str, Any], epochs_done: int, loader: Any) -> None:
        """Write the state after ``epochs_done`` epochs (temporary file, then rename)."""
        generator = getattr(loader, "generator", None)
        payload = {
            "fingerprint": self.fingerprint,
            "epochs_done": int(epochs_done),
            "fit_seconds": self.earlier_seconds + (time.perf_counter() - self._started),
            "torch_rng": torch.get_rng_state(),
            "loader_rng": generator.get_state() if isinstance(generator, torch.Generator) else None,
            "state": training_state,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(self.path)

    def load(self, loader: Any) -> tuple[dict[str, Any], int] | None:
        """Return ``(training_state, epochs_done)`` and restore the RNG states, or ``None`` (no resume).

        Raises:
            MedueError: when the file cannot be read or belongs to another run.
        """
        if not self.resume or not self.path.is_file():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise MedueError(f"{self.path}: cannot read the fit checkpoint ({err}); delete it to start afresh") from err
        if not isinstance(payload, dict) or payload.get("fingerprint") != self.fingerprint:
            raise MedueError(
                f"{self.path}: this fit checkpoint belongs to another run (method, options or data differ); "
                "delete it, or run without --resume"
            )
        torch.set_rng_state(payload["torch_rng"])
        self.earlier_seconds = float(payload.get("fit_seconds", 0.0))
        self._started = time.perf_counter()
        generator = getattr(loader, "generator", None)
        if isinstance(generator, torch.Generator) and payload["loader_rng"] is not None:
            generator.set_state(payload["loader_rng"])
        return payload["state"], int(payload["epochs_done"])

    def remove(self) -> None:
        """Delete the checkpoint (after a successful run)."""
        self.path.unlink(missing_ok=True)


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
    #: whether ``fit`` saves and resumes epoch checkpoints through :attr:`checkpoint`
    resumable: ClassVar[bool] = False
    #: options whose default changed after checkpoints were saved without them: the value those
    #: checkpoints were fitted with, used by :func:`load_protector` when the saved config lacks the key
    legacy_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, eps: float = 8 / 255, seed: int = 0, device: str | torch.device = "auto") -> None:
        if not 0.0 < float(eps) <= 1.0:
            raise MedueError(f"eps must be in (0, 1] (image units), got {eps}")
        self.eps = float(eps)
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.fitted = False
        self.checkpoint: FitCheckpoint | None = None  # set by callers to make a resumable fit save/resume

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

    def release_region(self, height: int, width: int) -> tuple[str, int]:
        """Where the perturbation of a segmentation item may be non-zero, relative to its mask.

        The segmentation writers re-apply this region at each image's ORIGINAL size (with the band radius
        scaled by the resize factor), so the written change stays where the method puts it although
        resizing spreads a working-size perturbation.

        Args:
            height: working height in pixels.
            width: working width in pixels.

        Returns:
            ``(region, radius)``: a region of :func:`~medue_monai.protectors.masks.region_mask` (``"full"`` here:
            anywhere) and its band radius in working pixels (0 where unused).
        """
        return "full", 0

    def state_dict(self) -> dict[str, Any]:
        """Learned state as plain tensors / numbers (loadable with ``weights_only=True``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore learned state produced by :meth:`state_dict`."""
        self.fitted = True

    def training_state(self) -> dict[str, Any]:
        """Everything a resumable fit needs to continue (resumable protectors override)."""
        raise NotImplementedError(f"{self.name} does not support resuming")

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`training_state` into a protector prepared for the same data."""
        raise NotImplementedError(f"{self.name} does not support resuming")

    def _surrogate_training_state(self) -> dict[str, Any]:
        """Surrogate, optimizer, perturbations (full precision) and history: the shared part of a fit checkpoint.

        For protectors that learn a ``delta`` tensor against a ``surrogate`` trained by ``optimizer``
        (SALM, EM, EM-seg); :meth:`_restore_surrogate_state` reads it back.
        """
        return {
            "surrogate": {k: v.detach().cpu() for k, v in self.surrogate.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "delta": self.delta.detach().cpu(),
            "history": list(self.history),
        }

    def _restore_surrogate_state(self, state: dict[str, Any]) -> None:
        """Restore the surrogate, its optimizer, the perturbations and the history of a fit checkpoint.

        The shared part of :meth:`load_training_state` for protectors that learn a ``delta`` tensor
        against a ``surrogate`` trained by ``optimizer`` (SALM, EM, EM-seg); ``fit`` must have built them
        for the same data first.

        Raises:
            MedueError: when the checkpoint's perturbations do not match this data's shape.
        """
        if tuple(state["delta"].shape) != tuple(self.delta.shape):
            raise MedueError(
                f"{self.name}: the fit checkpoint holds perturbations of shape {tuple(state['delta'].shape)}, "
                f"this data needs {tuple(self.delta.shape)}"
            )
        self.surrogate.load_state_dict(state["surrogate"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.delta = state["delta"].to(self.device)
        self.history = list(state["history"])

    def _resume(self, loader: Any) -> int:
        """Load the checkpoint when resuming; returns the number of epochs already done (0 otherwise)."""
        if self.checkpoint is None or not self.resumable:
            return 0
        loaded = self.checkpoint.load(loader)
        if loaded is None:
            return 0
        state, epochs_done = loaded
        self.load_training_state(state)
        return epochs_done

    def _em_rounds(self, loader: Iterable[dict]) -> tuple[Iterator[dict], tqdm]:
        """EM's schedule (SALM's ``schedule="em"``, EM-seg): an endless batch stream for the model steps and
        a progress bar over the rounds left, after resuming from the checkpoint when one is attached.

        On a resume the stream restarts at the loader's start, so a resumed fit is not bit-identical.
        """

        def cycle() -> Iterator[dict]:
            while True:
                yield from loader

        start = self._resume(loader)
        bar = tqdm(
            range(start, self.epochs),
            initial=start,
            total=self.epochs,
            desc=f"{self.name} fit (EM rounds)",
            disable=not self.progress,
        )
        return cycle(), bar

    def _save_checkpoint(self, loader: Any, epochs_done: int) -> None:
        """Save the training state after ``epochs_done`` epochs when a checkpoint is attached."""
        if self.checkpoint is not None and self.resumable:
            self.checkpoint.save(self.training_state(), epochs_done, loader)

    # ------------------------------------------------------------------ helpers
    def protect(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Return ``clip(images + delta, 0, 1)`` for a batch."""
        return (images + self.perturb(images, labels, indices)).clamp_(0.0, 1.0)

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise MedueError(f"{self.name}: call fit() (or load a saved protector) before perturbing")

    def save(self, path: str | Path, record: dict[str, Any] | None = None) -> None:
        """Save method name, config and learned state to ``path`` (a ``torch.save`` file of plain types).

        Args:
            path: the file to write (a temporary file beside it is renamed at the end).
            record: the release's private record (:func:`medue_monai.io.manifest.private_record`), stored
                with the protector because both stay with the data owner; ``None`` stores none.
        """
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        payload = {"method": self.name, "config": self.config(), "state": self.state_dict()}
        if record is not None:
            payload["record"] = record
        torch.save(payload, tmp)
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
    config = {**cls.legacy_defaults, **payload["config"], "device": device}
    protector = cls(**config)
    protector.load_state_dict(payload["state"])
    return protector

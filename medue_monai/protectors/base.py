"""The Protector contract and the registry of protection methods by name."""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sized
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..utils import MedueError, resolve_device

__all__ = [
    "BilevelProtector",
    "EMRound",
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
    """Where a resumable fit keeps its epoch checkpoints, and whether to resume from them.

    The folder holds the files of MONAI's ``CheckpointSaver`` (the engine's state and a
    :class:`~medue_monai.protectors.trainer.FitState`: the protector's training state, RNG states, the fit
    seconds so far and the run's ``fingerprint``), plain tensors that load with ``weights_only=True``. The
    newest two are kept, so an interruption while one is written leaves the previous one. It contains what
    the protection adds, so it is as private as the fitted protector; callers delete it once the protected
    output is written.

    Args:
        path: the checkpoint folder.
        fingerprint: JSON-like description of the run (method, options, data); a checkpoint with another
            fingerprint is refused.
        resume: continue from the newest readable checkpoint in ``path`` when there is one (otherwise start
            afresh; checkpoints are written there either way).
    """

    def __init__(self, path: str | Path, fingerprint: dict[str, Any], resume: bool = False) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.resume = bool(resume)
        #: fit seconds spent by the interrupted runs this one continues (set when a checkpoint is loaded)
        self.earlier_seconds = 0.0

    def files(self) -> list[Path]:
        """The checkpoint files in the folder, newest epoch first."""
        if not self.path.is_dir():
            return []

        def epoch(path: Path) -> int:
            digits = "".join(ch for ch in path.stem.rsplit("=", 1)[-1] if ch.isdigit())
            return int(digits) if digits else -1

        return sorted(self.path.glob("*.pt"), key=epoch, reverse=True)

    def latest_file(self) -> Path | None:
        """The newest checkpoint that can be read (a file cut short by an interruption is skipped), or ``None``.

        Raises:
            MedueError: when checkpoint files exist but none can be read.
        """
        files = self.files()
        for path in files:
            try:
                torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - a truncated or foreign file: try the previous one
                continue
            return path
        if files:
            raise MedueError(f"{self.path}: no readable fit checkpoint; delete the folder to start afresh")
        return None

    def remove(self) -> None:
        """Delete the checkpoints (after a successful run)."""
        shutil.rmtree(self.path, ignore_errors=True)


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
    #: options of earlier versions that are gone: :func:`load_protector` drops them from a saved config
    retired_options: ClassVar[tuple[str, ...]] = ()

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

    def release_region(self, *spatial: int) -> tuple[str, int]:
        """Where the perturbation of a segmentation item may be non-zero, relative to its mask.

        The segmentation writers re-apply this region at each image's ORIGINAL size (with the band radius
        scaled by the resize factor), so the written change stays where the method puts it although
        resizing spreads a working-size perturbation.

        Args:
            spatial: the working size (``h, w`` or ``d, h, w``).

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


class EMRound:
    """One round of EM's schedule as a sequence of work items: ``("model", batch)`` for ``model_steps`` batches
    of a fresh pass over the loader, then ``("noise", batch)`` for every batch of another pass.

    Each round draws its own shuffles, so a fit resumed at a round boundary repeats an uninterrupted one.

    Args:
        loader: the training loader.
        model_steps: surrogate steps per round.
    """

    def __init__(self, loader: Iterable[dict], model_steps: int) -> None:
        self.loader, self.model_steps = loader, int(model_steps)

    def __len__(self) -> int:
        return self.model_steps + len(self.loader)  # raises TypeError for a loader without a length

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        done = 0
        while done < self.model_steps:
            for batch in self.loader:
                yield "model", batch
                done += 1
                if done == self.model_steps:
                    break  # before the next batch is drawn
        for batch in self.loader:
            yield "noise", batch


class BilevelProtector(Protector):
    """A protector learned by a bi-level loop, fitted by :class:`~medue_monai.protectors.trainer.BilevelTrainer`.

    Subclasses implement ``prepare`` (networks, optimizers and perturbations from the first batch),
    ``train_iteration`` (one work item of :meth:`epoch_plan`) and ``finalize``; :meth:`fit` runs the engine,
    with the checkpoint in :attr:`checkpoint` when one is attached. Gradients pass through :meth:`_step`,
    which averages them over processes when several fit together.
    """

    resumable = True
    #: rows of ``delta`` this process updated (several processes: each row is taken from its owner)
    owned: torch.Tensor | None = None

    def prepare(self, first_batch: dict, num_classes: int, num_samples: int) -> None:
        """Build what the fit needs from the first batch."""
        raise NotImplementedError

    def train_iteration(self, item: Any) -> dict[str, float]:
        """One work item of :meth:`epoch_plan`; returns numbers averaged into the epoch record."""
        raise NotImplementedError

    def finalize(self, loader: Iterable[dict] | None = None) -> None:
        """Freeze what was learned and mark the protector fitted."""
        raise NotImplementedError

    def epoch_plan(self, loader: Iterable[dict]) -> Iterable[Any]:
        """What one epoch iterates (default: the loader's batches)."""
        return loader

    def epoch_length(self, loader: Iterable[dict]) -> int:
        """The number of items of :meth:`epoch_plan` (``TypeError`` when the loader has no length)."""
        plan = self.epoch_plan(loader)
        if not isinstance(plan, Sized):
            raise TypeError("no length")
        return len(plan)

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of every (0-based) epoch; nothing by default."""

    def epoch_record(self, loader: Iterable[dict], epoch: int, stats: dict[str, float]) -> dict[str, Any]:
        """The history entry of an epoch from the mean iteration outputs (subclasses add their own measures)."""
        return {"epoch": int(epoch), **stats}

    def end_epoch(self, loader: Iterable[dict], epoch: int, stats: dict[str, float]) -> dict[str, Any]:
        """Append :meth:`epoch_record` to :attr:`history` and return it."""
        record = self.epoch_record(loader, epoch, stats)
        self.history.append(record)
        return record

    def _step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """``zero_grad``, ``backward``, gradients averaged over processes, ``step``."""
        from .distributed import average_gradients

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(p for group in optimizer.param_groups for p in group["params"])
        optimizer.step()

    def _own(self, indices: torch.Tensor) -> None:
        """Mark rows of ``delta`` as updated by this process."""
        if self.owned is not None:
            self.owned[indices.to(self.owned.device)] = True

    def fit(self, loader: Iterable[dict], num_classes: int, num_samples: int) -> BilevelProtector:
        """Fit with :class:`~medue_monai.protectors.trainer.BilevelTrainer` (resumable through :attr:`checkpoint`).

        Args:
            loader: batches with ``image``, ``label`` and ``index``.
            num_classes: number of classes (2 for binary segmentation).
            num_samples: number of training items.

        Returns:
            ``self``, fitted.
        """
        from .trainer import fit_bilevel

        return fit_bilevel(self, loader, num_classes, num_samples)


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
    for option in cls.retired_options:
        config.pop(option, None)
    protector = cls(**config)
    protector.load_state_dict(payload["state"])
    return protector

"""The one bi-level fitting loop: a MONAI ``Trainer`` (as MONAI's ``GanTrainer`` overrides ``_iteration``).

Every bi-level protector (SALM and EM with either schedule, UMed, EM-seg) fits through
:class:`BilevelTrainer`; ``protector.fit()``, the CLI, the bundles and the MONAI Label app all run it. What
used to be loop code is a handler here:

- the protector's epoch (``set_epoch``) at ``EPOCH_STARTED``; a ``DistributedSampler``'s epoch too;
- the epoch record (``end_epoch``: mean of the iteration outputs, the perturbed-train error where the
  protector measures it) appended to ``protector.history`` at ``EPOCH_COMPLETED``;
- the early stop (:class:`StopOnPerturbedError`) once that error is below ``protector.stop_error``;
- checkpoint and resume through MONAI's ``CheckpointSaver`` / ``CheckpointLoader`` (:func:`attach_fit_checkpoint`)
  of the engine and a :class:`FitState` (the protector's training state, RNG states, fit seconds);
- ``finalize`` (and, across ranks, the gathering of sample-wise perturbations) at ``COMPLETED``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from tqdm.auto import tqdm

from ..utils import MedueError
from .distributed import gather_from_owners, is_distributed

__all__ = ["BilevelTrainer", "FitState", "StopOnPerturbedError", "attach_fit_checkpoint", "fit_bilevel"]


_END = object()


class _EpochPlan:
    """What one epoch iterates: the protector's ``epoch_plan(loader)`` (the loader itself, or EM's round)."""

    def __init__(self, protector: Any, loader: Iterable) -> None:
        self.protector, self.loader = protector, loader

    def __iter__(self):
        # Two details keep a resumed fit on the shuffles of an uninterrupted one. The loader's iterator (which draws
        # from the loader's generator) is made lazily, at the first batch, after the STARTED handlers restored the
        # generator. And each item is fetched one ahead, so the iterator is exhausted within its epoch: PyTorch's
        # RandomSampler draws once more from the generator when it runs out, which must happen before the epoch's
        # checkpoint, not at the start of the next epoch.
        def items():
            iterator = iter(self.protector.epoch_plan(self.loader))
            item = next(iterator, _END)
            while item is not _END:
                following = next(iterator, _END)
                yield item
                item = following

        return items()


def _epoch_length(protector: Any, loader: Iterable) -> int | None:
    try:
        return int(protector.epoch_length(loader))
    except TypeError:  # a loader without a length: ignite learns it from the first epoch
        return None


class FitState:
    """The resumable part of a fit beside the engine's own state, for MONAI's checkpoint handlers.

    ``state_dict`` holds plain tensors and numbers (loads with ``weights_only=True``): the run's fingerprint,
    the protector's :meth:`training_state`, the global torch RNG state, the loader's shuffling generator, the
    fit seconds spent over all runs so far and whether the early stop ended the fit.

    Args:
        protector: the protector being fitted.
        loader: its training loader (its ``generator`` is saved and restored).
        fingerprint: JSON-like description of the run; a checkpoint of another run is refused.
    """

    def __init__(self, protector: Any, loader: Any, fingerprint: dict[str, Any]) -> None:
        self.protector, self.loader, self.fingerprint = protector, loader, fingerprint
        self.earlier_seconds = 0.0
        self.stopped = False
        self._started = time.perf_counter()

    def _generator(self) -> torch.Generator | None:
        generator = getattr(self.loader, "generator", None)
        return generator if isinstance(generator, torch.Generator) else None

    def state_dict(self) -> dict[str, Any]:
        generator = self._generator()
        return {
            "fingerprint": self.fingerprint,
            "protector": self.protector.training_state(),
            "torch_rng": torch.get_rng_state(),
            "loader_rng": generator.get_state() if generator is not None else None,
            "fit_seconds": self.earlier_seconds + (time.perf_counter() - self._started),
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("fingerprint") != self.fingerprint:
            raise MedueError(
                "this fit checkpoint belongs to another run (method, options or data differ); "
                "delete it, or run without --resume"
            )
        self.protector.load_training_state(state["protector"])
        torch.set_rng_state(state["torch_rng"])
        generator = self._generator()
        if generator is not None and state["loader_rng"] is not None:
            generator.set_state(state["loader_rng"])
        self.earlier_seconds = float(state["fit_seconds"])
        self.stopped = bool(state["stopped"])
        self._started = time.perf_counter()


class StopOnPerturbedError:
    """Early stop: terminate the fit once the epoch's perturbed-train error is below ``protector.stop_error``.

    EM's rule (Huang et al.): the surrogate has fitted the noise. Attach after the epoch record is made.
    """

    def __init__(self, fit_state: FitState | None = None) -> None:
        self.fit_state = fit_state

    def attach(self, engine: BilevelTrainer) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: BilevelTrainer) -> None:
        threshold = getattr(engine.protector, "stop_error", None)
        record = engine.protector.history[-1] if engine.protector.history else {}
        if threshold is not None and record.get("perturbed_error", 1.0) < threshold:
            if self.fit_state is not None:
                self.fit_state.stopped = True
            engine.terminate()


def attach_fit_checkpoint(engine: BilevelTrainer, checkpoint: Any, fit_state: FitState) -> None:
    """Save the engine and ``fit_state`` after every epoch into ``checkpoint.path`` (a folder) with MONAI's
    ``CheckpointSaver``, and, when resuming, load the newest checkpoint there with ``CheckpointLoader``.

    Args:
        engine: the trainer.
        checkpoint: a :class:`~medue_monai.protectors.base.FitCheckpoint` (path, fingerprint, resume).
        fit_state: the fit's :class:`FitState`.

    Raises:
        MedueError: when the checkpoint folder cannot be read.
    """
    from monai.handlers import CheckpointLoader, CheckpointSaver

    folder = Path(checkpoint.path)
    objects = {"trainer": engine, "fit": fit_state}
    existing = checkpoint.latest_file()
    if checkpoint.resume and existing is not None:
        CheckpointLoader(load_path=str(existing), load_dict=objects, map_location="cpu").attach(engine)

        def after_load(engine: BilevelTrainer) -> None:
            checkpoint.earlier_seconds = fit_state.earlier_seconds
            if fit_state.stopped or engine.state.epoch >= engine.state.max_epochs:
                engine.terminate()

        engine.add_event_handler(Events.STARTED, after_load)
    folder.mkdir(parents=True, exist_ok=True)
    CheckpointSaver(
        save_dir=str(folder), save_dict=objects, file_prefix="fit", save_interval=1, n_saved=2, epoch_level=True
    ).attach(engine)


class BilevelTrainer(Trainer):
    """Drive a bi-level protector with MONAI/ignite: the one loop that ``fit()``, the CLI and the bundles run.

    Each iteration calls ``protector.train_iteration(item)`` for the items of ``protector.epoch_plan(loader)``
    (SALM's minibatch schedule: a batch, noise steps then one surrogate step; EM's schedule: a round of
    ``em_model_steps`` surrogate steps then a noise pass over the data). Handlers (see the module docstring)
    keep the epoch, the history, the early stop, checkpoints and the final step; further MONAI/ignite handlers
    (``StatsHandler``, ``ValidationHandler``, ...) can be attached as to any trainer.

    Args:
        protector: a bi-level protector (``prepare``, ``epoch_plan``, ``epoch_length``, ``set_epoch``,
            ``train_iteration``, ``end_epoch``, ``finalize``).
        data_loader: training loader with ``image``, ``label`` and ``index`` keys.
        num_classes: number of classes (2 for binary segmentation).
        num_samples: number of training items (``index`` runs over ``0..num_samples-1``).
        max_epochs: epochs (EM rounds); default the protector's ``epochs``.
        handlers: further MONAI/ignite handlers to attach.
        checkpoint: a :class:`~medue_monai.protectors.base.FitCheckpoint` to save after every epoch and resume
            from; default ``protector.checkpoint``. Not with several processes.
        progress: show a progress bar over epochs; default the protector's ``progress``.
        kwargs: passed on to :class:`monai.engines.Trainer`.

    Raises:
        MedueError: for a protector without the bi-level interface, or a checkpoint across processes.
    """

    def __init__(
        self,
        protector: Any,
        data_loader: Iterable,
        num_classes: int,
        num_samples: int,
        max_epochs: int | None = None,
        handlers: Sequence | None = None,
        checkpoint: Any | None = None,
        progress: bool | None = None,
        **kwargs: Any,
    ) -> None:
        name = getattr(protector, "name", type(protector).__name__)
        needed = ("prepare", "epoch_plan", "epoch_length", "set_epoch", "train_iteration", "end_epoch", "finalize")
        missing = [m for m in needed if not callable(getattr(protector, m, None))]
        if missing:
            raise MedueError(f"{name}: not a bi-level protector ({', '.join(missing)} missing); fit it with fit()")
        checkpoint = checkpoint if checkpoint is not None else getattr(protector, "checkpoint", None)
        if checkpoint is not None and is_distributed():
            raise MedueError(f"{name}: fit checkpoints are per process; resume is not available across processes")
        protector.prepare(next(iter(data_loader)), num_classes, num_samples)
        super().__init__(
            device=protector.device,
            max_epochs=int(max_epochs if max_epochs is not None else protector.epochs),
            data_loader=_EpochPlan(protector, data_loader),
            epoch_length=_epoch_length(protector, data_loader),
            handlers=handlers,
            decollate=False,
            **kwargs,
        )
        self.protector = protector
        self.loader = data_loader
        self._outputs: list[dict[str, float]] = []
        self.add_event_handler(Events.EPOCH_STARTED, BilevelTrainer._start_epoch)
        self.add_event_handler(Events.ITERATION_COMPLETED, BilevelTrainer._collect)
        self.add_event_handler(Events.EPOCH_COMPLETED, BilevelTrainer._end_epoch)
        self.fit_state = None
        if checkpoint is not None:
            self.fit_state = FitState(protector, data_loader, checkpoint.fingerprint)
        StopOnPerturbedError(self.fit_state).attach(self)
        if checkpoint is not None:
            attach_fit_checkpoint(self, checkpoint, self.fit_state)
        show = protector.progress if progress is None else progress
        if show:
            self._bar = None
            self.add_event_handler(Events.STARTED, BilevelTrainer._open_bar)
            self.add_event_handler(Events.EPOCH_COMPLETED, BilevelTrainer._advance_bar)
            self.add_event_handler(Events.COMPLETED, BilevelTrainer._close_bar)
        self.add_event_handler(Events.COMPLETED, BilevelTrainer._complete)

    def _iteration(self, engine: BilevelTrainer, batchdata: Any) -> dict[str, Any]:
        output = self.protector.train_iteration(batchdata)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return output

    @staticmethod
    def _start_epoch(engine: BilevelTrainer) -> None:
        sampler = getattr(engine.loader, "sampler", None)
        if isinstance(sampler, torch.utils.data.distributed.DistributedSampler):
            sampler.set_epoch(engine.state.epoch - 1)
        engine._outputs = []
        engine.protector.set_epoch(engine.state.epoch - 1)

    @staticmethod
    def _collect(engine: BilevelTrainer) -> None:
        if isinstance(engine.state.output, dict):
            engine._outputs.append(engine.state.output)

    @staticmethod
    def _end_epoch(engine: BilevelTrainer) -> None:
        stats: dict[str, float] = {}
        for key in sorted({k for output in engine._outputs for k in output}):
            values = [float(output[key]) for output in engine._outputs if key in output]
            stats[key] = sum(values) / len(values)
        engine.protector.end_epoch(engine.loader, engine.state.epoch - 1, stats)

    @staticmethod
    def _open_bar(engine: BilevelTrainer) -> None:
        protector = engine.protector
        engine._bar = tqdm(
            total=engine.state.max_epochs, initial=engine.state.epoch, desc=f"{protector.name} fit", leave=False
        )

    @staticmethod
    def _advance_bar(engine: BilevelTrainer) -> None:
        record = engine.protector.history[-1] if engine.protector.history else {}
        engine._bar.set_postfix({k: round(v, 4) for k, v in record.items() if isinstance(v, float)})
        engine._bar.update(1)

    @staticmethod
    def _close_bar(engine: BilevelTrainer) -> None:
        engine._bar.close()

    @staticmethod
    def _complete(engine: BilevelTrainer) -> None:
        engine.protector.finalize(engine.loader)
        if is_distributed():
            gather_from_owners(engine.protector)


def fit_bilevel(protector: Any, loader: Iterable, num_classes: int, num_samples: int) -> Any:
    """Fit a bi-level protector with :class:`BilevelTrainer` (what its ``fit()`` does).

    Args:
        protector: the protector (its ``checkpoint``, when set, makes the fit resumable).
        loader: training loader with ``image``, ``label`` and ``index``.
        num_classes: number of classes.
        num_samples: number of training items.

    Returns:
        The fitted protector.
    """
    BilevelTrainer(protector, loader, num_classes, num_samples).run()
    return protector

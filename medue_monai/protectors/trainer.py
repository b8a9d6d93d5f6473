"""The bi-level protector loop as a MONAI ``Trainer`` (as MONAI's ``GanTrainer`` overrides ``_iteration``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from monai.engines import Trainer
from monai.engines.utils import IterationEvents

from ..utils import MedueError

__all__ = ["BilevelTrainer"]


def _refuse_unsupported(protector: Any) -> None:
    """Raise for a protector whose configuration asks for more than the per-minibatch loop runs."""
    name = getattr(protector, "name", type(protector).__name__)
    missing = [m for m in ("prepare", "train_iteration", "finalize") if not callable(getattr(protector, m, None))]
    if missing:
        raise MedueError(f"{name}: has no per-minibatch loop ({', '.join(missing)} missing); fit it with fit()")
    refusals = []
    if getattr(protector, "schedule", "minibatch") != "minibatch":
        refusals.append(f"schedule={protector.schedule!r} (only 'minibatch')")
    if getattr(protector, "stop_error", None) is not None:
        refusals.append(f"stop_error={protector.stop_error} (no early stop; set it to None)")
    if int(getattr(protector, "refine_epochs", 0) or 0):
        refusals.append(f"refine_epochs={protector.refine_epochs} (set it to 0)")
    if getattr(protector, "checkpoint", None) is not None:
        refusals.append("a fit checkpoint (no resume)")
    if refusals:
        raise MedueError(f"{name}: BilevelTrainer does not run {'; '.join(refusals)}; use fit() for these")


class BilevelTrainer(Trainer):
    """Drive a bi-level protector (SALM, EM) with MONAI/ignite, e.g. from a bundle's ``train.json``.

    Every iteration calls ``protector.train_iteration(batch)`` (noise steps, then one surrogate
    step) - the same body :meth:`SALMProtector.fit` runs, with ``protector.set_epoch`` called at the start
    of every epoch where the protector has one - so standard MONAI handlers
    (``StatsHandler``, ``CheckpointSaver``, ``ValidationHandler``) can be attached. Call
    ``protector.finalize()`` after ``run()`` (the ``COMPLETED`` event handler below does it).

    It runs the per-minibatch loop only, so it refuses a protector configured for what that loop does not do
    (EM's round schedule, the early stop on the perturbed-train error, SALM's refinement epochs, a resumable
    fit checkpoint) instead of silently running something else than ``fit()``. Each epoch's mean loss is
    appended to ``protector.history``, as ``fit()`` does.

    Args:
        protector: a protector exposing ``prepare``, ``train_iteration`` and ``finalize``.
        data_loader: training loader with ``image``, ``label`` and ``index`` keys.
        num_classes: number of classes.
        num_samples: number of training items.
        max_epochs: passes over the loader.
        handlers: MONAI/ignite handlers to attach.
        kwargs: passed on to :class:`monai.engines.Trainer`.
    """

    def __init__(
        self,
        protector: Any,
        data_loader: Iterable,
        num_classes: int,
        num_samples: int,
        max_epochs: int,
        handlers: Sequence | None = None,
        **kwargs: Any,
    ) -> None:
        _refuse_unsupported(protector)
        super().__init__(
            device=protector.device,
            max_epochs=max_epochs,
            data_loader=data_loader,
            handlers=handlers,
            decollate=False,
            **kwargs,
        )
        self.protector = protector
        protector.prepare(next(iter(data_loader)), num_classes, num_samples)
        from ignite.engine import Events

        if hasattr(protector, "set_epoch"):
            self.add_event_handler(
                Events.EPOCH_STARTED, lambda engine: engine.protector.set_epoch(engine.state.epoch - 1)
            )
        self._epoch_losses: list[float] = []
        self.add_event_handler(Events.ITERATION_COMPLETED, BilevelTrainer._record_loss)
        self.add_event_handler(Events.EPOCH_COMPLETED, BilevelTrainer._record_epoch)
        self.add_event_handler(Events.COMPLETED, lambda engine: engine.protector.finalize(engine.data_loader))

    @staticmethod
    def _record_loss(engine: BilevelTrainer) -> None:
        output = engine.state.output
        if isinstance(output, dict) and "loss" in output:
            engine._epoch_losses.append(float(output["loss"]))

    @staticmethod
    def _record_epoch(engine: BilevelTrainer) -> None:
        losses, engine._epoch_losses = engine._epoch_losses, []
        record: dict[str, Any] = {"epoch": engine.state.epoch - 1}
        if losses:
            record["loss"] = sum(losses) / len(losses)
        engine.protector.history.append(record)

    def _iteration(self, engine: BilevelTrainer, batchdata: dict[str, torch.Tensor]) -> dict[str, Any]:
        output = self.protector.train_iteration(batchdata)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return output

"""The bi-level protector loop as a MONAI ``Trainer`` (as MONAI's ``GanTrainer`` overrides ``_iteration``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from monai.engines import Trainer
from monai.engines.utils import IterationEvents

__all__ = ["BilevelTrainer"]


class BilevelTrainer(Trainer):
    """Drive a bi-level protector (SALM, EM) with MONAI/ignite, e.g. from a bundle's ``train.json``.

    Every iteration calls ``protector.train_iteration(batch)`` (noise steps, then one surrogate
    step) - the same body :meth:`SALMProtector.fit` runs, with ``protector.set_epoch`` called at the start
    of every epoch where the protector has one - so standard MONAI handlers
    (``StatsHandler``, ``CheckpointSaver``, ``ValidationHandler``) can be attached. Call
    ``protector.finalize()`` after ``run()`` (the ``COMPLETED`` event handler below does it).

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
        self.add_event_handler(Events.COMPLETED, lambda engine: engine.protector.finalize(engine.data_loader))

    def _iteration(self, engine: BilevelTrainer, batchdata: dict[str, torch.Tensor]) -> dict[str, Any]:
        output = self.protector.train_iteration(batchdata)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return output

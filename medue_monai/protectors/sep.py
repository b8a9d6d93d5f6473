"""SEP: self-ensemble protection (Chen et al., "Self-Ensemble Protection: Training Checkpoints Are
Good Data Protectors", ICLR 2023).

One surrogate is trained on the clean data and its checkpoints are kept (up to 30: the epochs
whose validation score improved); each image then gets L-inf PGD towards a wrong target with the
loss averaged over all kept checkpoints. The segmentation version ("sep-seg") uses the
pixel-wise DiceCE loss towards the inverted mask and a MONAI UNet surrogate.

Checkpoint scoring: when ``fit`` receives a ``val_loader`` it scores each epoch on it; otherwise
a seeded 10% of the training items (``holdout_fraction``) is held out of surrogate training and
scores the epochs (accuracy, or foreground Dice for segmentation); with ``holdout_fraction=0``
the training batches score them.
"""

from __future__ import annotations

import torch

from ..utils import MedueError
from .base import register_protector
from .masks import REGIONS
from .surrogate import SurrogatePGDProtector

__all__ = ["SEPProtector", "SEPSegProtector"]


@register_protector("sep")
class SEPProtector(SurrogatePGDProtector):
    """Self-ensemble protection for classification (L-inf budget).

    Defaults from the SEP paper: ``eps=8/255``, 30 PGD steps of ``1/255``, the loss averaged over
    up to 30 checkpoints of one clean training run. Defaults chosen by us: checkpoints are the
    epochs whose validation accuracy improved (most recent 30 kept), validation on a seeded
    10% hold-out of the training items when no validation loader is given, surrogate ResNet-18
    trained with Adam ``lr=1e-3``, cosine schedule, 30 epochs, target class ``(y + 1) mod C``,
    ``restarts=1`` random start.

    Args:
        eps: L-inf budget in [0, 1] units.
        steps: PGD steps per restart.
        step_size: PGD sign-step size in [0, 1] units.
        restarts: random restarts (the restart with the lowest ensemble loss is kept per image).
        surrogate: surrogate classifier name (:func:`medue_monai.nets.get_classifier`) or ``"auto"``
            (ResNet-18 on a GPU, ``smallcnn`` on a CPU).
        surrogate_epochs: epochs of clean surrogate training (one candidate checkpoint per epoch).
        surrogate_lr: Adam learning rate of the surrogate (cosine-annealed).
        surrogate_weight_decay: Adam weight decay of the surrogate.
        batch_size: minibatch size used by callers that build the loader (CLI, bundles).
        max_checkpoints: most checkpoints kept in the ensemble.
        holdout_fraction: share of training items held out to score checkpoints when ``fit``
            gets no ``val_loader`` (0 scores on the training batches).
        progress: show tqdm progress bars.
        seed: random seed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.

    Raises:
        MedueError: for options outside their ranges.
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        steps: int = 30,
        step_size: float = 1 / 255,
        restarts: int = 1,
        surrogate: str = "auto",
        surrogate_epochs: int = 30,
        surrogate_lr: float = 1e-3,
        surrogate_weight_decay: float = 0.0,
        batch_size: int = 128,
        max_checkpoints: int = 30,
        holdout_fraction: float = 0.1,
        progress: bool = True,
        seed: int = 0,
        device: str | torch.device = "auto",
    ) -> None:
        super().__init__(
            eps=eps,
            steps=steps,
            step_size=step_size,
            restarts=restarts,
            surrogate=surrogate,
            surrogate_epochs=surrogate_epochs,
            surrogate_lr=surrogate_lr,
            surrogate_weight_decay=surrogate_weight_decay,
            batch_size=batch_size,
            checkpoints="improved",
            max_checkpoints=max_checkpoints,
            holdout_fraction=holdout_fraction,
            progress=progress,
            seed=seed,
            device=device,
        )

    def config(self) -> dict:
        config = super().config()
        for derived in ("checkpoints", "region"):
            config.pop(derived)
        return config


@register_protector("sep-seg")
class SEPSegProtector(SEPProtector):
    """SEP for binary segmentation: ensemble PGD towards the inverted mask with the pixel-wise DiceCE loss.

    Paper defaults as :class:`SEPProtector` (``eps=8/255``, 30 steps of ``1/255``, up to 30
    checkpoints); ours: MONAI UNet surrogate by default (16-256 channels, strides 2x4, 2 residual units,
    ``DiceCELoss``), Adam ``lr=1e-3``, cosine schedule, 30 epochs, checkpoints kept when the
    held-out foreground Dice improved; image sides must be multiples of 16.

    Args:
        eps: L-inf budget in [0, 1] units.
        steps: PGD steps per restart.
        step_size: PGD sign-step size in [0, 1] units.
        restarts: random restarts (the restart with the lowest ensemble loss is kept per image).
        surrogate: the surrogate segmentation network (:func:`medue_monai.nets.get_segmenter`): ``unet``,
            ``unet-batchnorm``, ``attentionunet``, ``basicunetplusplus`` or ``swinunetr``.
        surrogate_epochs: epochs of clean surrogate training.
        surrogate_lr: Adam learning rate of the surrogate (cosine-annealed).
        surrogate_weight_decay: Adam weight decay of the surrogate.
        batch_size: minibatch size used by callers that build the loader.
        max_checkpoints: most checkpoints kept in the ensemble.
        holdout_fraction: share of training items held out to score checkpoints.
        region: where the perturbation may be non-zero: ``"full"``, ``"roi"``, ``"contour"``,
            ``"interior"`` or ``"background"``.
        progress: show tqdm progress bars.
        seed: random seed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.

    Raises:
        MedueError: for options outside their ranges.
    """

    task = "segmentation"

    def __init__(
        self,
        eps: float = 8 / 255,
        steps: int = 30,
        step_size: float = 1 / 255,
        restarts: int = 1,
        surrogate: str = "unet",
        surrogate_epochs: int = 30,
        surrogate_lr: float = 1e-3,
        surrogate_weight_decay: float = 0.0,
        batch_size: int = 16,
        max_checkpoints: int = 30,
        holdout_fraction: float = 0.1,
        region: str = "full",
        progress: bool = True,
        seed: int = 0,
        device: str | torch.device = "auto",
    ) -> None:
        super().__init__(
            eps=eps,
            steps=steps,
            step_size=step_size,
            restarts=restarts,
            surrogate=surrogate,
            surrogate_epochs=surrogate_epochs,
            surrogate_lr=surrogate_lr,
            surrogate_weight_decay=surrogate_weight_decay,
            batch_size=batch_size,
            max_checkpoints=max_checkpoints,
            holdout_fraction=holdout_fraction,
            progress=progress,
            seed=seed,
            device=device,
        )
        if region not in REGIONS:
            raise MedueError(f"region must be one of {REGIONS}, got {region!r}")
        self.region = region

    def config(self) -> dict:
        config = super().config()
        config["region"] = self.region
        return config

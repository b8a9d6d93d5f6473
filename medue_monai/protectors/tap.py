"""TAP: targeted adversarial poisoning.

Fowl et al., "Adversarial Examples Make Strong Poisons", NeurIPS 2021.

A surrogate is trained on the clean data and frozen; each image then gets an L-inf PGD
perturbation that minimizes the cross-entropy to a wrong target class ``(y + 1) mod C``. The
segmentation version ("tap-seg") runs the same PGD with the pixel-wise DiceCE loss towards the
inverted mask ``1 - y`` against a MONAI UNet surrogate.
"""

from __future__ import annotations

import torch

from ..utils import MedueError
from .base import register_protector
from .masks import REGIONS
from .surrogate import SurrogatePGDProtector

__all__ = ["TAPProtector", "TAPSegProtector"]


@register_protector("tap")
class TAPProtector(SurrogatePGDProtector):
    """Targeted adversarial poisoning for classification (L-inf budget).

    Defaults from the TAP paper: ``eps=8/255``, ``steps=250``, step ``0.05 * eps``
    (``step_fraction``), target class ``(y + 1) mod C``, a surrogate trained on clean data.
    Defaults chosen by us (the paper uses a pretrained network): surrogate ResNet-18 trained with
    the ``cls-quick``-like recipe Adam ``lr=1e-3``, cosine schedule, 20 epochs, no weight decay,
    keep the final weights; ``restarts=1`` random start.

    Args:
        eps: L-inf budget in [0, 1] units.
        steps: PGD steps per restart.
        step_fraction: PGD step size as a fraction of ``eps``.
        restarts: random restarts (the restart with the lowest target loss is kept per image).
        surrogate: surrogate classifier name (:func:`medue_monai.nets.get_classifier`) or ``"auto"``
            (ResNet-18 on a GPU, ``smallcnn`` on a CPU).
        surrogate_epochs: epochs of clean surrogate training.
        surrogate_lr: Adam learning rate of the surrogate (cosine-annealed).
        surrogate_weight_decay: Adam weight decay of the surrogate.
        batch_size: minibatch size used by callers that build the loader (CLI, bundles).
        holdout_fraction: share of training items held out to score the surrogate per epoch
            (recorded in the history only; TAP keeps the final weights).
        progress: show tqdm progress bars.
        seed: random seed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.

    Raises:
        MedueError: for options outside their ranges.
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        steps: int = 250,
        step_fraction: float = 0.05,
        restarts: int = 1,
        surrogate: str = "auto",
        surrogate_epochs: int = 20,
        surrogate_lr: float = 1e-3,
        surrogate_weight_decay: float = 0.0,
        batch_size: int = 128,
        holdout_fraction: float = 0.0,
        progress: bool = True,
        seed: int = 0,
        device: str | torch.device = "auto",
    ) -> None:
        if not 0.0 < float(step_fraction) <= 1.0:
            raise MedueError(f"step_fraction must be in (0, 1], got {step_fraction}")
        self.step_fraction = float(step_fraction)
        super().__init__(
            eps=eps,
            steps=steps,
            step_size=float(step_fraction) * float(eps),
            restarts=restarts,
            surrogate=surrogate,
            surrogate_epochs=surrogate_epochs,
            surrogate_lr=surrogate_lr,
            surrogate_weight_decay=surrogate_weight_decay,
            batch_size=batch_size,
            checkpoints="final",
            max_checkpoints=1,
            holdout_fraction=holdout_fraction,
            progress=progress,
            seed=seed,
            device=device,
        )

    def config(self) -> dict:
        config = super().config()
        for derived in ("step_size", "checkpoints", "max_checkpoints", "region"):
            config.pop(derived)
        config["step_fraction"] = self.step_fraction
        return config


@register_protector("tap-seg")
class TAPSegProtector(TAPProtector):
    """TAP for binary segmentation: PGD towards the inverted mask with the pixel-wise DiceCE loss.

    Same defaults as :class:`TAPProtector` (paper: ``eps=8/255``, 250 steps of ``0.05 * eps``);
    ours: the surrogate is by default the MONAI UNet (16-256 channels, strides 2x4, 2 residual units,
    ``DiceCELoss``) trained with Adam ``lr=1e-3``, cosine schedule, 20 epochs; image sides must
    be multiples of 16.

    Args:
        eps: L-inf budget in [0, 1] units.
        steps: PGD steps per restart.
        step_fraction: PGD step size as a fraction of ``eps``.
        restarts: random restarts (the restart with the lowest loss is kept per image).
        surrogate: the surrogate segmentation network (:func:`medue_monai.nets.get_segmenter`): ``unet``,
            ``unet-batchnorm``, ``attentionunet``, ``basicunetplusplus`` or ``swinunetr``.
        surrogate_epochs: epochs of clean surrogate training.
        surrogate_lr: Adam learning rate of the surrogate (cosine-annealed).
        surrogate_weight_decay: Adam weight decay of the surrogate.
        batch_size: minibatch size used by callers that build the loader.
        holdout_fraction: share of training items held out to score the surrogate (history only).
        region: where the perturbation may be non-zero: ``"full"``, ``"roi"``, ``"contour"``,
            ``"interior"`` or ``"background"``.
        progress: show tqdm progress bars.
        seed: random seed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
    """

    task = "segmentation"

    def __init__(
        self,
        eps: float = 8 / 255,
        steps: int = 250,
        step_fraction: float = 0.05,
        restarts: int = 1,
        surrogate: str = "unet",
        surrogate_epochs: int = 20,
        surrogate_lr: float = 1e-3,
        surrogate_weight_decay: float = 0.0,
        batch_size: int = 16,
        holdout_fraction: float = 0.0,
        region: str = "full",
        progress: bool = True,
        seed: int = 0,
        device: str | torch.device = "auto",
    ) -> None:
        super().__init__(
            eps=eps,
            steps=steps,
            step_fraction=step_fraction,
            restarts=restarts,
            surrogate=surrogate,
            surrogate_epochs=surrogate_epochs,
            surrogate_lr=surrogate_lr,
            surrogate_weight_decay=surrogate_weight_decay,
            batch_size=batch_size,
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

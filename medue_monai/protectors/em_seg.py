"""Error-minimizing noise (EM, Huang et al., ICLR 2021) for binary segmentation, and the UMed paper's
ablations that confine it to the contour band (ablation D) or to the ROI (ablation G).

Sample-wise deltas (one per training item, keyed by ``index``) are learned with EM's schedule:
per round, ``model_steps`` optimizer steps of a MONAI UNet surrogate on ``x + delta`` with
``DiceCELoss``, then a full pass of ``noise_steps`` error-minimizing sign-PGD steps per batch, each
followed by the L-inf projection and the region mask; stop once the surrogate's error on the
perturbed training set (``1 - mean foreground Dice``) is below ``stop_error`` (``epochs`` caps
the rounds).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from monai.losses import DiceCELoss

from ..nets import get_segmenter, resolve_segmenter
from ..utils import MedueError
from .base import BilevelProtector, EMRound, register_protector
from .budget import project_linf
from .distributed import reduce_sum
from .masks import REGIONS, contour_radius, region_mask
from .surrogate import batch_tensors, task_score

__all__ = ["EMSegProtector", "EMSegContourProtector", "EMSegROIProtector"]


@register_protector("em-seg")
class EMSegProtector(BilevelProtector):
    """Sample-wise error-minimizing noise for binary segmentation with the pixel-wise DiceCE loss (L-inf).

    Defaults from the EM paper: ``eps=8/255``, ``step_size=0.8/255``, 10 model steps then 20 PGD
    steps per batch per round, stop when the perturbed-train error is below 0.01. Defaults chosen
    by us: the surrogate is the MONAI UNet (16-256 channels, strides 2x4, 2 residual units) trained
    with Adam ``lr=1e-3`` (SGD 0.1 as in EM's classification setting does not train a UNet with
    DiceCE reliably), error = ``1 - foreground Dice``, at most 30 rounds, ``apply_steps=20`` for
    new images. Image sides must be multiples of 16.

    Args:
        eps: L-inf budget in [0, 1] units.
        step_size: sign-PGD step size in [0, 1] units.
        epochs: maximum number of EM rounds.
        model_steps: surrogate optimizer steps per round.
        noise_steps: PGD steps per batch per round.
        stop_error: stop once ``1 - mean Dice`` of the surrogate on the perturbed training set is
            below this; ``None`` runs all rounds.
        surrogate: the surrogate segmentation network (:func:`medue_monai.nets.get_segmenter`): ``unet``,
            ``unet-batchnorm``, ``attentionunet``, ``basicunetplusplus`` or ``swinunetr``.
        lr: Adam learning rate of the surrogate.
        weight_decay: Adam weight decay of the surrogate.
        batch_size: minibatch size used by callers that build the loader.
        region: where delta may be non-zero: ``"full"``, ``"roi"`` (ablation G), ``"contour"``
            (ablation D), ``"interior"`` or ``"background"``.
        contour_radius: contour band radius in pixels; ``None`` scales 3 px at 224 with image size.
        apply_steps: sign-PGD steps against the frozen surrogate for images not in the fitted set.
        progress: show tqdm progress bars.
        seed: random seed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.

    Raises:
        MedueError: for options outside their ranges.
    """

    task = "segmentation"
    default_region = "full"

    def __init__(
        self,
        eps: float = 8 / 255,
        step_size: float = 0.8 / 255,
        epochs: int = 30,
        model_steps: int = 10,
        noise_steps: int = 20,
        stop_error: float | None = 0.01,
        surrogate: str = "unet",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 16,
        region: str | None = None,
        contour_radius: int | None = None,
        apply_steps: int = 20,
        progress: bool = True,
        seed: int = 0,
        device: str | torch.device = "auto",
    ) -> None:
        super().__init__(eps=eps, seed=seed, device=device)
        region = self.default_region if region is None else region
        if region not in REGIONS:
            raise MedueError(f"region must be one of {REGIONS}, got {region!r}")
        for option, value in (("epochs", epochs), ("model_steps", model_steps), ("batch_size", batch_size)):
            if int(value) < 1:
                raise MedueError(f"{option} must be >= 1, got {value}")
        if int(noise_steps) < 0 or int(apply_steps) < 0:
            raise MedueError(f"noise_steps and apply_steps must be >= 0, got {noise_steps}, {apply_steps}")
        if stop_error is not None and not 0.0 <= float(stop_error) < 1.0:
            raise MedueError(f"stop_error must be in [0, 1), got {stop_error}")
        if contour_radius is not None and int(contour_radius) < 1:
            raise MedueError(f"contour_radius must be >= 1, got {contour_radius}")
        self.step_size = float(step_size)
        self.epochs = int(epochs)
        self.model_steps = int(model_steps)
        self.noise_steps = int(noise_steps)
        self.stop_error = None if stop_error is None else float(stop_error)
        self.surrogate_name = resolve_segmenter(surrogate)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.batch_size = int(batch_size)
        self.region = region
        self.contour_radius = None if contour_radius is None else int(contour_radius)
        self.apply_steps = int(apply_steps)
        self.progress = bool(progress)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.surrogate: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.delta: torch.Tensor | None = None
        self.image_shape: tuple[int, int, int] | None = None
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ config / state
    def config(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "step_size": self.step_size,
            "epochs": self.epochs,
            "model_steps": self.model_steps,
            "noise_steps": self.noise_steps,
            "stop_error": self.stop_error,
            "surrogate": self.surrogate_name,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "region": self.region,
            "contour_radius": self.contour_radius,
            "apply_steps": self.apply_steps,
            "seed": self.seed,
        }

    def budget_info(self) -> dict[str, Any]:
        """Norm and budget of the released perturbation: L-inf, ``eps`` in [0, 1] units."""
        return {"norm": "linf", "budget": self.eps}

    def state_dict(self) -> dict[str, Any]:
        """Surrogate weights and the learned deltas (float16, the precision ``fit`` keeps them at)."""
        self._require_fitted()
        return {
            "surrogate": {k: v.detach().cpu() for k, v in self.surrogate.state_dict().items()},
            "delta": self.delta.detach().cpu().half(),
            "image_shape": list(self.image_shape),
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.image_shape = tuple(int(s) for s in state["image_shape"])
        self._build_surrogate()
        self.surrogate.load_state_dict(state["surrogate"])
        self.delta = state["delta"].float().to(self.device)
        self.history = list(state.get("history", []))
        self._freeze()
        self.fitted = True

    def training_state(self) -> dict[str, Any]:
        """Surrogate, optimizer, perturbations (full precision) and history, saved after every EM round."""
        return self._surrogate_training_state()

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`training_state` into a fit that built the surrogate and deltas for the same data."""
        self._restore_surrogate_state(state)

    # ------------------------------------------------------------------ building blocks
    def _build_surrogate(self) -> None:
        channels, height, width = self.image_shape
        torch.manual_seed(self.seed)
        if height != width:
            raise MedueError(f"{self.name}: square working sizes only, got {height}x{width}")
        self.surrogate = get_segmenter(self.surrogate_name, channels, 2, height).to(self.device)
        self.optimizer = torch.optim.Adam(self.surrogate.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def _freeze(self) -> None:
        self.surrogate.eval()
        for parameter in self.surrogate.parameters():
            parameter.requires_grad_(False)

    def release_region(self, *spatial: int) -> tuple[str, int]:
        """The ``region`` option, with the contour band radius used at this working size."""
        radius = self.contour_radius if self.contour_radius is not None else contour_radius(*(int(s) for s in spatial))
        return self.region, radius

    def _project(self, delta: torch.Tensor, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        delta = project_linf(delta, images, self.eps)
        if self.region != "full":
            delta = delta * region_mask(masks, self.region, self.contour_radius)
        return delta

    def _descend(self, images: torch.Tensor, masks: torch.Tensor, delta: torch.Tensor, steps: int) -> torch.Tensor:
        """``steps`` error-minimizing sign steps on ``delta`` against the surrogate (eval mode)."""
        self.surrogate.eval()
        for _ in range(steps):
            delta = delta.detach().requires_grad_(True)
            loss = self.loss(self.surrogate((images + delta).clamp(0.0, 1.0)), masks)
            gradient = torch.autograd.grad(loss, delta)[0]
            delta = self._project(delta.detach() - self.step_size * gradient.sign(), images, masks)
        return delta.detach()

    def _model_step(self, images: torch.Tensor, masks: torch.Tensor, indices: torch.Tensor) -> float:
        self.surrogate.train()
        loss = self.loss(self.surrogate((images + self.delta[indices]).clamp(0.0, 1.0)), masks)
        self._step(self.optimizer, loss)
        return float(loss.detach())

    @torch.no_grad()
    def perturbed_error(self, loader: Iterable[dict]) -> float:
        """``1 - mean foreground Dice`` of the surrogate (eval mode) on the perturbed training set."""
        self.surrogate.eval()
        total, count = 0.0, 0
        for batch in loader:
            images, masks, indices = batch_tensors(batch, self.device, self.task)
            value, n = task_score(self.surrogate((images + self.delta[indices]).clamp(0.0, 1.0)), masks, self.task)
            total, count = total + value, count + n
        total, count = reduce_sum(total, count)
        return 1.0 - total / max(count, 1)

    # ------------------------------------------------------------------ fit / perturb
    def prepare(self, first_batch: dict, num_classes: int, num_samples: int) -> None:
        """Build the surrogate and zero deltas for the first batch's image shape.

        Raises:
            MedueError: when ``num_classes`` is not 2.
        """
        if int(num_classes) != 2:
            raise MedueError(f"{self.name}: binary segmentation only (num_classes=2), got {num_classes}")
        torch.manual_seed(self.seed)
        images, _, _ = batch_tensors(first_batch, self.device, self.task)
        self.image_shape = tuple(int(s) for s in images.shape[1:])
        self._build_surrogate()
        self.delta = torch.zeros((num_samples,) + self.image_shape, device=self.device)
        self.owned = torch.zeros(num_samples, dtype=torch.bool)
        self.history = []

    def epoch_plan(self, loader: Iterable[dict]) -> EMRound:
        """EM's round: ``model_steps`` surrogate steps, then a pass of ``noise_steps`` PGD steps per batch."""
        return EMRound(loader, self.model_steps)

    def train_iteration(self, item: tuple[str, dict]) -> dict[str, float]:
        """A surrogate step (``("model", batch)``) or the noise steps of a batch (``("noise", batch)``)."""
        kind, batch = item
        images, masks, indices = batch_tensors(batch, self.device, self.task)
        if kind == "model":
            return {"loss": self._model_step(images, masks, indices)}
        self._own(indices)
        self.delta[indices] = self._descend(images, masks, self.delta[indices], self.noise_steps)
        return {}

    def epoch_record(self, loader: Iterable[dict], epoch: int, stats: dict[str, float]) -> dict[str, Any]:
        """The round's mean surrogate loss, and the perturbed-train error when ``stop_error`` is set."""
        record = {"round": int(epoch), **stats}
        if self.stop_error is not None:
            record["perturbed_error"] = self.perturbed_error(loader)
        return record

    def finalize(self, loader: Iterable[dict] | None = None) -> None:
        """Keep the deltas at float16 precision, as saved (a reloaded protector releases identical deltas), and
        freeze the surrogate."""
        self.delta = self.delta.half().float()
        self._freeze()
        self.fitted = True

    def perturb(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Return the learned delta of fitted items, or ``apply_steps`` of error-minimizing PGD for new ones.

        Args:
            images: ``(B, C, H, W)`` in [0, 1].
            labels: ``(B, 1, H, W)`` binary masks.
            indices: training-set indices of fitted items, or ``None``.

        Returns:
            ``delta`` with ``|delta| <= eps``, ``images + delta`` in [0, 1] and zero outside the region.

        Raises:
            MedueError: when not fitted or the image shape differs from the fitted one.
        """
        self._require_fitted()
        batch = {"image": images, "label": labels, "index": torch.zeros(len(images), dtype=torch.long)}
        x, masks, _ = batch_tensors(batch, self.device, self.task)
        if tuple(x.shape[1:]) != self.image_shape:
            raise MedueError(f"{self.name}: images of shape {tuple(x.shape[1:])}, fitted on {self.image_shape}")
        if indices is not None:
            delta = self.delta[torch.as_tensor(indices).reshape(-1).long().to(self.device)]
        else:
            delta = self._descend(x, masks, torch.zeros_like(x), self.apply_steps)
        return self._project(delta, x, masks).to(device=images.device, dtype=images.dtype)


@register_protector("em-seg-contour")
class EMSegContourProtector(EMSegProtector):
    """EM for segmentation confined to the contour band ``dilate(y, r) - erode(y, r)`` (UMed ablation D).

    Same options and defaults as :class:`EMSegProtector` with ``region="contour"``; the band radius is
    3 px at 224x224 scaled with image size unless ``contour_radius`` is given.
    """

    default_region = "contour"


@register_protector("em-seg-roi")
class EMSegROIProtector(EMSegProtector):
    """EM for segmentation confined to the ROI (the label mask) (UMed ablation G).

    Same options and defaults as :class:`EMSegProtector` with ``region="roi"``.
    """

    default_region = "roi"


def _with_parent_args(cls: type, parent: type) -> None:
    """Give a subclass's docstring the parent's Args section (the CLI reads options from it)."""
    if cls.__doc__ and parent.__doc__ and "Args:" in parent.__doc__:
        cls.__doc__ = cls.__doc__.rstrip() + "\n\n    " + parent.__doc__[parent.__doc__.index("Args:") :]


_with_parent_args(EMSegContourProtector, EMSegProtector)
_with_parent_args(EMSegROIProtector, EMSegProtector)

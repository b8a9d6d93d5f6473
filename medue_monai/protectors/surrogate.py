"""Shared machinery of the surrogate-then-PGD baselines (TAP, SEP) for classification and segmentation.

A clean surrogate is trained with a recorded recipe (Adam, cosine schedule over epochs, weight
decay), its checkpoints are kept by a policy (``"final"``: the last weights; ``"improved"``:
every epoch whose validation score improved, the most recent ``max_checkpoints``), then new
perturbations come from targeted L-inf PGD that minimizes the task loss towards a wrong target
(``(y + 1) mod C`` for classification, the inverted mask ``1 - y`` for segmentation), averaged
over the kept checkpoints, with random starts and per-sample selection of the best restart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from tqdm.auto import tqdm

from ..nets import get_classifier, get_segmenter, resolve_classifier, resolve_segmenter
from ..utils import MedueError
from .base import Protector
from .budget import project_linf
from .masks import REGIONS, contour_radius, region_mask

__all__ = [
    "CHECKPOINT_POLICIES",
    "SurrogatePGDProtector",
    "batch_tensors",
    "per_sample_loss",
    "task_score",
]

CHECKPOINT_POLICIES = ("final", "improved")


def batch_tensors(batch: dict, device: torch.device, task: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, labels and indices of a collated batch, on ``device``.

    Args:
        batch: dict with ``image`` (B,C,H,W), ``label`` and ``index``.
        device: target device.
        task: ``"classification"`` (labels become ``(B,)`` long) or ``"segmentation"`` (labels
            become ``(B, 1, H, W)`` float ``{0, 1}`` masks).

    Returns:
        ``(images, labels, indices)``.
    """
    images = batch["image"]
    images = images.as_tensor() if hasattr(images, "as_tensor") else images
    labels = batch["label"]
    labels = labels.as_tensor() if hasattr(labels, "as_tensor") else torch.as_tensor(labels)
    if task == "segmentation":
        labels = (labels.float() > 0.5).float()
        if labels.dim() == 3:
            labels = labels.unsqueeze(1)
    else:
        labels = labels.reshape(-1).long()
    indices = torch.as_tensor(batch["index"]).reshape(-1).long()
    return images.float().to(device), labels.to(device), indices.to(device)


_DICE = DiceLoss(to_onehot_y=True, softmax=True, reduction="none")


def per_sample_loss(logits: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """Per-sample task loss: cross-entropy, or pixel CE + Dice (``DiceCELoss``'s terms) for masks.

    The batch mean equals ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)`` for segmentation.

    Args:
        logits: ``(B, K)`` or ``(B, 2, H, W)`` network outputs.
        targets: ``(B,)`` class indices or ``(B, 1, H, W)`` masks.
        task: ``"classification"`` or ``"segmentation"``.

    Returns:
        ``(B,)`` losses.
    """
    if task != "segmentation":
        return F.cross_entropy(logits, targets, reduction="none")
    cross_entropy = F.cross_entropy(logits, targets[:, 0].long(), reduction="none").mean(dim=(1, 2))
    dice = _DICE(logits, targets).reshape(len(logits), -1).mean(dim=1)
    return cross_entropy + dice


@torch.no_grad()
def task_score(logits: torch.Tensor, labels: torch.Tensor, task: str) -> tuple[float, int]:
    """Sum of per-sample scores and the count: accuracy, or foreground Dice of the argmax mask.

    An empty prediction of an empty mask scores 1.
    """
    if task != "segmentation":
        return float((logits.argmax(1) == labels).sum()), len(labels)
    prediction = (logits.argmax(1, keepdim=True) == 1).float()
    overlap = (prediction * labels).sum(dim=(1, 2, 3))
    total = prediction.sum(dim=(1, 2, 3)) + labels.sum(dim=(1, 2, 3))
    dice = torch.where(total > 0, 2 * overlap / total.clamp_min(1e-8), torch.ones_like(total))
    return float(dice.sum()), len(labels)


class SurrogatePGDProtector(Protector):
    """Base of TAP and SEP: a clean surrogate (or an ensemble of its checkpoints), then targeted PGD.

    Subclasses set the defaults of the paper they follow; every option below is recorded in
    :meth:`config` (the surrogate's training recipe included).

    Args:
        eps: L-inf budget in [0, 1] units.
        steps: PGD steps per restart.
        step_size: PGD sign-step size in [0, 1] units.
        restarts: random restarts; the restart with the lowest final loss is kept per sample.
        surrogate: classifier name (:func:`medue_monai.nets.get_classifier`) or ``"auto"`` (ResNet-18 on a
            GPU, ``smallcnn`` on a CPU, :func:`medue_monai.nets.resolve_classifier`); ignored for segmentation
            (segmentation: a name of :func:`medue_monai.nets.get_segmenter`, ``"auto"`` = ``unet``).
        surrogate_epochs: epochs of clean surrogate training.
        surrogate_lr: Adam learning rate (cosine-annealed to 0 over the epochs).
        surrogate_weight_decay: Adam weight decay.
        batch_size: minibatch size used by callers that build the loader (CLI, bundles).
        checkpoints: ``"final"`` (keep the last weights) or ``"improved"`` (keep each epoch's
            weights whenever the validation score improved).
        max_checkpoints: at most this many checkpoints are kept (the most recent ones).
        holdout_fraction: share of the training items (by a seeded permutation of their indices)
            held out of surrogate training to score checkpoints when ``fit`` gets no
            ``val_loader``; ``0`` scores on the training batches instead.
        region: segmentation only: where the perturbation may be non-zero (see
            :func:`medue_monai.protectors.masks.region_mask`).
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
        step_size: float = 0.4 / 255,
        restarts: int = 1,
        surrogate: str = "auto",
        surrogate_epochs: int = 20,
        surrogate_lr: float = 1e-3,
        surrogate_weight_decay: float = 0.0,
        batch_size: int = 128,
        checkpoints: str = "final",
        max_checkpoints: int = 1,
        holdout_fraction: float = 0.0,
        region: str = "full",
        progress: bool = True,
        seed: int = 0,
        device: str | torch.device = "auto",
    ) -> None:
        super().__init__(eps=eps, seed=seed, device=device)
        for option, value in (
            ("steps", steps),
            ("restarts", restarts),
            ("surrogate_epochs", surrogate_epochs),
            ("batch_size", batch_size),
            ("max_checkpoints", max_checkpoints),
        ):
            if int(value) < 1:
                raise MedueError(f"{option} must be >= 1, got {value}")
        if not 0.0 < float(step_size) <= 1.0:
            raise MedueError(f"step_size must be in (0, 1], got {step_size}")
        if checkpoints not in CHECKPOINT_POLICIES:
            raise MedueError(f"checkpoints must be one of {CHECKPOINT_POLICIES}, got {checkpoints!r}")
        if not 0.0 <= float(holdout_fraction) < 1.0:
            raise MedueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
        if region not in REGIONS:
            raise MedueError(f"region must be one of {REGIONS}, got {region!r}")
        self.steps = int(steps)
        self.step_size = float(step_size)
        self.restarts = int(restarts)
        if self.task == "segmentation":
            self.surrogate_name = resolve_segmenter("unet" if surrogate == "auto" else surrogate)
        else:
            self.surrogate_name = resolve_classifier(surrogate, self.device)
        self.surrogate_epochs = int(surrogate_epochs)
        self.surrogate_lr = float(surrogate_lr)
        self.surrogate_weight_decay = float(surrogate_weight_decay)
        self.batch_size = int(batch_size)
        self.checkpoints = checkpoints
        self.max_checkpoints = int(max_checkpoints)
        self.holdout_fraction = float(holdout_fraction)
        self.region = region
        self.progress = bool(progress)
        self.models: list[torch.nn.Module] = []
        self.num_classes = 0
        self.image_shape: tuple[int, int, int] | None = None
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ config / state
    def config(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "steps": self.steps,
            "step_size": self.step_size,
            "restarts": self.restarts,
            "surrogate": self.surrogate_name,
            "surrogate_epochs": self.surrogate_epochs,
            "surrogate_lr": self.surrogate_lr,
            "surrogate_weight_decay": self.surrogate_weight_decay,
            "batch_size": self.batch_size,
            "checkpoints": self.checkpoints,
            "max_checkpoints": self.max_checkpoints,
            "holdout_fraction": self.holdout_fraction,
            "region": self.region,
            "seed": self.seed,
        }

    def recipe(self) -> dict[str, Any]:
        """The surrogate's training recipe, as recorded in :attr:`history` and the manifest."""
        return {
            "network": self.surrogate_name,
            "loss": "DiceCELoss" if self.task == "segmentation" else "cross_entropy",
            "optimizer": "adam",
            "lr": self.surrogate_lr,
            "weight_decay": self.surrogate_weight_decay,
            "schedule": "cosine over epochs",
            "epochs": self.surrogate_epochs,
            "batch_size": self.batch_size,
            "checkpoints": self.checkpoints,
            "max_checkpoints": self.max_checkpoints,
            "holdout_fraction": self.holdout_fraction,
        }

    def budget_info(self) -> dict[str, Any]:
        """Norm and budget of the released perturbation: L-inf, ``eps`` in [0, 1] units."""
        return {"norm": "linf", "budget": self.eps}

    def state_dict(self) -> dict[str, Any]:
        self._require_fitted()
        return {
            "checkpoints": [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in self.models],
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_classes = int(state["num_classes"])
        self.image_shape = tuple(int(s) for s in state["image_shape"])
        self.models = []
        for weights in state["checkpoints"]:
            model = self._build_model()
            model.load_state_dict(weights)
            self.models.append(self._frozen(model))
        self.history = list(state.get("history", []))
        self.fitted = True

    # ------------------------------------------------------------------ surrogate training
    def _build_model(self) -> torch.nn.Module:
        channels, height, width = self.image_shape[0], self.image_shape[1], self.image_shape[-1]
        if self.task == "segmentation":
            if height != width:
                raise MedueError(f"{self.name}: square working sizes only, got {height}x{width}")
            return get_segmenter(self.surrogate_name, channels, 2, height).to(self.device)
        spatial_dims = len(self.image_shape) - 1
        return get_classifier(self.surrogate_name, channels, self.num_classes, height, spatial_dims).to(self.device)

    @staticmethod
    def _frozen(model: torch.nn.Module) -> torch.nn.Module:
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        return model

    def _targets(self, labels: torch.Tensor) -> torch.Tensor:
        if self.task == "segmentation":
            return 1.0 - labels
        return (labels + 1) % self.num_classes

    def release_region(self, *spatial: int) -> tuple[str, int]:
        """The ``region`` option of a segmentation protector (classification: ``"full"``)."""
        if self.task != "segmentation":
            return "full", 0
        return self.region, contour_radius(*(int(s) for s in spatial))

    def _region(self, labels: torch.Tensor) -> torch.Tensor | None:
        if self.task != "segmentation" or self.region == "full":
            return None
        return region_mask(labels, self.region)

    @torch.no_grad()
    def _score(self, model: torch.nn.Module, loader: Iterable[dict], keep: torch.Tensor | None) -> float:
        model.eval()
        total, count = 0.0, 0
        for batch in loader:
            images, labels, indices = batch_tensors(batch, self.device, self.task)
            if keep is not None:
                selected = keep[indices]
                if not bool(selected.any()):
                    continue
                images, labels = images[selected], labels[selected]
            value, n = task_score(model(images), labels, self.task)
            total, count = total + value, count + n
        return total / max(count, 1)

    def train_surrogate(
        self, loader: Iterable[dict], num_samples: int, val_loader: Iterable[dict] | None = None
    ) -> None:
        """Train the clean surrogate and keep checkpoints by the policy (fills ``models`` and ``history``).

        Args:
            loader: clean training batches.
            num_samples: training set size (for the seeded hold-out split).
            val_loader: optional validation batches; otherwise ``holdout_fraction`` of the
                training items are held out (or, if 0, the training batches score the epochs).
        """
        torch.manual_seed(self.seed)
        model = self._build_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=self.surrogate_lr, weight_decay=self.surrogate_weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.surrogate_epochs)
        held_out = torch.zeros(num_samples, dtype=torch.bool, device=self.device)
        if val_loader is None and self.holdout_fraction > 0:
            order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(self.seed))
            held_out[order[: max(1, int(math.floor(self.holdout_fraction * num_samples)))].to(self.device)] = True
        score_source = "val_loader" if val_loader is not None else ("holdout" if bool(held_out.any()) else "train")
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True) if self.task == "segmentation" else None
        kept: list[dict[str, torch.Tensor]] = []
        best = -math.inf
        self.history = [{"recipe": self.recipe(), "score_source": score_source}]
        bar = tqdm(range(self.surrogate_epochs), desc=f"{self.name} surrogate", disable=not self.progress)
        for epoch in bar:
            model.train()
            losses = []
            for batch in loader:
                images, labels, indices = batch_tensors(batch, self.device, self.task)
                train = ~held_out[indices]
                if not bool(train.any()):
                    continue
                logits = model(images[train])
                if loss_fn is not None:
                    loss = loss_fn(logits, labels[train])
                else:
                    loss = F.cross_entropy(logits, labels[train])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            scheduler.step()
            if score_source == "val_loader":
                score = self._score(model, val_loader, None)
            elif score_source == "holdout":
                score = self._score(model, loader, held_out)
            else:
                score = self._score(model, loader, None)
            improved = score > best
            best = max(best, score)
            keep = improved if self.checkpoints == "improved" else epoch == self.surrogate_epochs - 1
            if keep:
                kept.append({k: v.detach().clone() for k, v in model.state_dict().items()})
                kept = kept[-self.max_checkpoints :]
            record = {
                "epoch": epoch,
                "loss": sum(losses) / max(len(losses), 1),
                "score": score,
                "kept": bool(keep),
            }
            self.history.append(record)
            bar.set_postfix({"loss": round(record["loss"], 4), "score": round(score, 4)})
        self.models = []
        for weights in kept:
            copy = self._build_model()
            copy.load_state_dict(weights)
            self.models.append(self._frozen(copy))

    def fit(
        self,
        loader: Iterable[dict],
        num_classes: int,
        num_samples: int,
        val_loader: Iterable[dict] | None = None,
    ) -> SurrogatePGDProtector:
        """Train the clean surrogate (perturbations are computed later, per batch, by :meth:`perturb`).

        Args:
            loader: clean training batches with ``image``, ``label`` and ``index``.
            num_classes: number of classes (2 for binary segmentation).
            num_samples: training set size.
            val_loader: optional clean validation batches used to score checkpoints.

        Returns:
            ``self``, fitted.
        """
        images, _, _ = batch_tensors(next(iter(loader)), self.device, self.task)
        self.image_shape = tuple(int(s) for s in images.shape[1:])
        self.num_classes = int(num_classes)
        if self.task != "segmentation" and self.num_classes < 2:
            raise MedueError(f"{self.name}: needs at least 2 classes, got {num_classes}")
        self.train_surrogate(loader, num_samples, val_loader)
        self.fitted = True
        return self

    # ------------------------------------------------------------------ attack
    def _ensemble_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        total = per_sample_loss(self.models[0](inputs), targets, self.task)
        for model in self.models[1:]:
            total = total + per_sample_loss(model(inputs), targets, self.task)
        return total / len(self.models)

    def perturb(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Targeted PGD towards the wrong target against the (ensemble of) frozen surrogate(s).

        Args:
            images: ``(B, C, H, W)`` in [0, 1].
            labels: ``(B,)`` class indices, or ``(B, 1, H, W)`` masks for segmentation.
            indices: unused (the perturbation depends on the image and label only).

        Returns:
            ``delta`` with ``|delta| <= eps``, ``images + delta`` in [0, 1] and, for segmentation
            with a ``region``, zero outside it. The same seed and inputs give the same output.

        Raises:
            MedueError: when not fitted or the image shape differs from the fitted one.
        """
        self._require_fitted()
        device, dtype = images.device, images.dtype
        batch = {"image": images, "label": labels, "index": torch.zeros(len(images), dtype=torch.long)}
        x, y, _ = batch_tensors(batch, self.device, self.task)
        if tuple(x.shape[1:]) != self.image_shape:
            raise MedueError(f"{self.name}: images of shape {tuple(x.shape[1:])}, fitted on {self.image_shape}")
        targets = self._targets(y)
        region = self._region(y)
        generator = torch.Generator().manual_seed(self.seed)
        best_delta = torch.zeros_like(x)
        best_loss = torch.full((len(x),), math.inf, device=self.device)
        for _ in range(self.restarts):
            start = (torch.rand(x.shape, generator=generator) * 2 - 1) * self.eps
            delta = project_linf(start.to(self.device), x, self.eps)
            if region is not None:
                delta = delta * region
            for _ in range(self.steps):
                delta.requires_grad_(True)
                loss = self._ensemble_loss(x + delta, targets).sum()
                gradient = torch.autograd.grad(loss, delta)[0]
                delta = project_linf(delta.detach() - self.step_size * gradient.sign(), x, self.eps)
                if region is not None:
                    delta = delta * region
            with torch.no_grad():
                final = self._ensemble_loss(x + delta, targets)
                better = final < best_loss
                best_loss = torch.where(better, final, best_loss)
                best_delta[better] = delta[better]
        return best_delta.detach().to(device=device, dtype=dtype)

"""Train an exploiter classifier on a (protected) training split and test it on the clean test split."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import DataLoader
from monai.metrics import compute_roc_auc
from tqdm.auto import tqdm

from ..data import ClassificationDataset
from ..data.classification import image_layout
from ..nets import get_classifier
from ..utils import MedueError, resolve_device
from .hardening import harden_batch, training_counter_measures

__all__ = ["train_exploiter", "make_optimizer", "make_scheduler", "accuracy", "test_metrics"]


def make_optimizer(recipe: dict[str, Any], parameters) -> torch.optim.Optimizer:
    """Build the recipe's optimizer (``adam`` or ``sgd``).

    Raises:
        MedueError: for an unknown optimizer name.
    """
    name = recipe["optimizer"]
    if name == "adam":
        return torch.optim.Adam(parameters, lr=recipe["lr"], weight_decay=recipe.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=recipe["lr"],
            momentum=recipe.get("momentum", 0.9),
            weight_decay=recipe.get("weight_decay", 0.0),
        )
    raise MedueError(f"recipe {recipe.get('name')}: unknown optimizer {name!r} (adam or sgd)")


def make_scheduler(recipe: dict[str, Any], optimizer: torch.optim.Optimizer, epochs: int):
    """Per-epoch schedule: ``cosine``, ``multistep`` (x0.1 at 50% and 75%) or ``constant``."""
    schedule = recipe.get("schedule", "constant")
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if schedule == "multistep":
        milestones = [max(1, math.floor(0.5 * epochs)), max(1, math.floor(0.75 * epochs))]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    raise MedueError(f"recipe {recipe.get('name')}: unknown schedule {schedule!r}")


@torch.no_grad()
def test_metrics(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, num_classes: int | None = None
) -> dict[str, float]:
    """Accuracy, balanced accuracy and ROC AUC of ``model`` over ``loader``, all in percent.

    Accuracy alone hides how little a model learned on an imbalanced test split: on BreastMNIST a model
    that always answers "benign" scores 73 %. Balanced accuracy (the mean of the per-class recalls, over
    the classes present) and the ROC AUC (``monai.metrics.compute_roc_auc`` on the softmax, one-vs-rest
    averaged over classes for more than two) are 50 % for a model that learned nothing, whatever the
    class balance.

    Args:
        model: the classifier (evaluated in eval mode).
        loader: batches with ``image`` and ``label``.
        device: where the model runs.
        num_classes: number of classes; ``None``: the width of the model's output.

    Returns:
        ``{"accuracy", "balanced_accuracy", "auc"}`` in percent; ``auc`` is ``None`` when the split holds a
        single class.
    """
    model.eval()
    probabilities, targets = [], []
    for batch in loader:
        images = batch["image"].as_tensor() if hasattr(batch["image"], "as_tensor") else batch["image"]
        probabilities.append(torch.softmax(model(images.to(device)).float(), dim=1).cpu())
        targets.append(torch.as_tensor(batch["label"]).reshape(-1).long().cpu())
    probability = torch.cat(probabilities)
    target = torch.cat(targets)
    num_classes = probability.shape[1] if num_classes is None else num_classes
    predicted = probability.argmax(1)
    present = target.unique()
    correct = predicted == target
    recalls = [int(correct[target == c].sum()) / int((target == c).sum()) for c in present.tolist()]
    auc = None
    if len(present) > 1:
        if num_classes == 2:
            auc = float(compute_roc_auc(probability[:, 1], target))
        else:
            scores, onehot = probability[:, present], F.one_hot(target, num_classes)[:, present]
            auc = float(compute_roc_auc(scores, onehot, average="macro"))
    return {
        "accuracy": 100.0 * int(correct.sum()) / max(len(target), 1),
        "balanced_accuracy": 100.0 * sum(recalls) / max(len(recalls), 1),
        "auc": None if auc is None else 100.0 * auc,
    }


def accuracy(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Top-1 accuracy in percent of ``model`` over ``loader``."""
    return test_metrics(model, loader, device)["accuracy"]


def train_exploiter(
    recipe: dict[str, Any],
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    exploiter: str,
    num_classes: int,
    device: str | torch.device = "auto",
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
    description: str = "exploiter",
) -> dict[str, Any]:
    """Train a fresh exploiter from scratch on ``train_*`` with a recipe and test it on ``test_*`` each epoch.

    The recipe's training-time counter-measures (``augmentation``, ``adversarial_eps``: see
    :mod:`medue_monai.evaluation.hardening`) apply to every training batch, in that order.

    Args:
        recipe: a recipe from :func:`medue_monai.evaluation.recipes.get_recipe`.
        train_images: ``(N, H, W[, C])`` uint8 training images or ``(N, D, H, W)`` volumes (protected or clean, as
            read from disk).
        train_labels: ``(N, 1)`` labels.
        test_images: clean test images.
        test_labels: clean test labels.
        exploiter: network name (``resnet18``, ``resnet50``, ``vgg11``, ``densenet121``).
        num_classes: number of classes.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        seed: seed for initialisation, shuffling, augmentation and adversarial starts (same seed, same run).
        num_workers: DataLoader workers.
        progress: show a tqdm bar.
        description: label of the progress bar.

    Returns:
        ``{"test_accuracy": final %, "test_balanced_accuracy": final %, "test_auc": final % (``None`` for a
        single-class test split), "best_test_accuracy": %, "best_epoch": int, "curves": {...}}`` where curves
        hold per-epoch ``train_loss``, ``train_accuracy`` (on the batches as trained on, i.e. augmented or
        adversarial when the recipe says so), ``test_accuracy``, ``test_balanced_accuracy`` and ``test_auc``
        (see :func:`test_metrics`).
    """
    hardening = training_counter_measures(recipe)
    device = resolve_device(device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    spatial_dims, in_channels = image_layout(train_images)
    model = get_classifier(exploiter, in_channels, num_classes, train_images.shape[1], spatial_dims).to(device)
    train_loader = DataLoader(
        ClassificationDataset(train_images, train_labels),
        batch_size=recipe["batch_size"],
        shuffle=True,
        generator=generator,
        num_workers=num_workers,
    )
    test_loader = DataLoader(
        ClassificationDataset(test_images, test_labels, split="test"), batch_size=256, num_workers=num_workers
    )
    epochs = int(recipe["epochs"])
    optimizer = make_optimizer(recipe, model.parameters())
    scheduler = make_scheduler(recipe, optimizer, epochs)
    curves: dict[str, list[float]] = {
        "train_loss": [],
        "train_accuracy": [],
        "test_accuracy": [],
        "test_balanced_accuracy": [],
        "test_auc": [],
    }
    bar = tqdm(range(epochs), desc=description, disable=not progress)
    for _ in bar:
        model.train()
        loss_sum, correct, total = 0.0, 0, 0
        for batch in train_loader:
            images = batch["image"].as_tensor().to(device)
            labels = batch["label"].reshape(-1).to(device)
            images, labels = harden_batch(
                model, images, labels, F.cross_entropy, hardening, targets_are_masks=False, generator=generator
            )
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            total += len(labels)
        scheduler.step()
        curves["train_loss"].append(loss_sum / total)
        curves["train_accuracy"].append(100.0 * correct / total)
        metrics = test_metrics(model, test_loader, device, num_classes)
        curves["test_accuracy"].append(metrics["accuracy"])
        curves["test_balanced_accuracy"].append(metrics["balanced_accuracy"])
        curves["test_auc"].append(metrics["auc"])
        bar.set_postfix(train=round(curves["train_accuracy"][-1], 1), test=round(curves["test_accuracy"][-1], 1))
    best_epoch = int(np.argmax(curves["test_accuracy"]))
    return {
        "test_accuracy": curves["test_accuracy"][-1],
        "test_balanced_accuracy": curves["test_balanced_accuracy"][-1],
        "test_auc": curves["test_auc"][-1],
        "best_test_accuracy": curves["test_accuracy"][best_epoch],
        "best_epoch": best_epoch + 1,
        "curves": curves,
    }

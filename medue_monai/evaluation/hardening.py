"""Training-time counter-measures of the exploiter (PROTOCOL.md): standard augmentation and adversarial training.

Unlike the file-level defenses of :mod:`medue_monai.transforms.defenses` (a filter or re-encoding applied once
to the downloaded images), these change how the exploiter trains, batch by batch:

- ``augmentation="crop-flip"``: every batch is randomly cropped back to its size after zero-padding each
  side by 4 pixels, and flipped left-right with probability 1/2 (PROTOCOL.md's "standard augmentation");
  for segmentation the masks take the same crop and flip.
- adversarial training (``adversarial_eps > 0``): every batch is replaced by its PGD adversarial examples
  (L-inf ball of radius ``adversarial_eps`` around the batch, random uniform start, ``adversarial_steps``
  signed-gradient ascent steps of ``adversarial_step_size`` on the exploiter's own training loss, images
  kept in [0, 1]) before the optimizer step (Madry et al.'s recipe; PROTOCOL.md: 4/255 or 8/255,
  10 steps of 1/255). The attack runs with the network in training mode, as the update that follows
  does (batch statistics; normalization layers' running statistics also see the attack's forward
  passes, as in the usual implementations); the network's parameters receive no gradient from it.

MONAI has no adversarial attack, so the PGD loop is written here; both helpers are batched torch code.
Recipes carry the settings as data (``augmentation``, ``adversarial_eps``, ``adversarial_steps``,
``adversarial_step_size``); :func:`training_counter_measures` reads them with their defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..utils import MedueError

__all__ = [
    "AUGMENTATIONS",
    "adversarial_examples",
    "harden_batch",
    "random_crop_flip",
    "training_counter_measures",
]

#: training-time augmentations an exploiter recipe may name.
AUGMENTATIONS = ("none", "crop-flip")


def training_counter_measures(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe's training-time counter-measures, validated and with their defaults filled in.

    Args:
        recipe: an exploiter recipe (see :func:`medue_monai.evaluation.recipes.get_recipe`).

    Returns:
        ``{"augmentation", "adversarial_eps", "adversarial_steps", "adversarial_step_size"}``;
        ``adversarial_eps`` 0 means no adversarial training (steps and step size are then irrelevant but kept).

    Raises:
        MedueError: for an unknown augmentation, a negative or > 1 ``adversarial_eps``, fewer than one step
            or a non-positive step size while adversarial training is on.
    """
    augmentation = recipe.get("augmentation") or "none"
    if augmentation not in AUGMENTATIONS:
        raise MedueError(f"unknown augmentation {augmentation!r}; choose from {', '.join(AUGMENTATIONS)}")
    eps = float(recipe.get("adversarial_eps") or 0.0)
    steps = int(recipe.get("adversarial_steps", 10))
    step_size = float(recipe.get("adversarial_step_size", 1 / 255))
    if not 0.0 <= eps <= 1.0:
        raise MedueError(f"adversarial_eps must be in [0, 1] (0 = no adversarial training), got {eps}")
    if eps > 0 and (steps < 1 or step_size <= 0):
        raise MedueError(f"adversarial training needs steps >= 1 and step size > 0, got {steps} and {step_size}")
    return {
        "augmentation": augmentation,
        "adversarial_eps": eps,
        "adversarial_steps": steps,
        "adversarial_step_size": step_size,
    }


def random_crop_flip(
    images: torch.Tensor,
    masks: torch.Tensor | None = None,
    *,
    padding: int = 4,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random crop of a zero-padded batch back to its size, then a random left-right flip, per sample.

    Args:
        images: ``(B, C, H, W)`` batch.
        masks: optional ``(B, C', H, W)`` segmentation masks that take the same crop and flip (padded with 0,
            i.e. background).
        padding: pixels of zero padding on each side; the crop offset is uniform in ``[0, 2 * padding]``.
        generator: CPU random generator (same seed, same crops).

    Returns:
        ``(images, masks)`` of the input shapes (``masks`` ``None`` when not given).
    """
    batch, _, height, width = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    rows = (offsets[:, 0, None] + torch.arange(height)).to(images.device)
    cols = (offsets[:, 1, None] + torch.arange(width)).to(images.device)
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    flip = flip.to(images.device)[:, None, None, None]

    def crop(tensor: torch.Tensor) -> torch.Tensor:
        padded = F.pad(tensor, (padding,) * 4).permute(0, 2, 3, 1)
        cropped = padded[batch_index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        return torch.where(flip, cropped.flip(-1), cropped)

    return crop(images), (crop(masks) if masks is not None else None)


def adversarial_examples(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    eps: float,
    steps: int = 10,
    step_size: float = 1 / 255,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD adversarial examples that maximize ``loss_function(model(x), targets)`` in the L-inf ``eps`` ball.

    Args:
        model: the network being trained (left in the mode it is in; its parameters get no gradient).
        images: ``(B, C, H, W)`` batch in [0, 1].
        targets: what ``loss_function`` compares the logits with (class indices or masks).
        loss_function: the exploiter's training loss.
        eps: L-inf radius in [0, 1] units; 0 returns the images unchanged.
        steps: signed-gradient ascent steps.
        step_size: size of each step.
        generator: CPU random generator for the uniform random start.

    Returns:
        Detached adversarial images with ``|x_adv - x| <= eps`` and values in [0, 1].
    """
    images = images.detach()
    if eps <= 0:
        return images
    start = torch.rand(images.shape, generator=generator).to(images.device) * 2 - 1
    adversarial = (images + eps * start).clamp(0.0, 1.0)
    requires_grad = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        for _ in range(int(steps)):
            adversarial.requires_grad_(True)
            loss = loss_function(model(adversarial), targets)
            (gradient,) = torch.autograd.grad(loss, adversarial)
            step = adversarial.detach() + step_size * gradient.sign()
            adversarial = torch.minimum(torch.maximum(step, images - eps), images + eps).clamp(0.0, 1.0)
    finally:
        for parameter, flag in zip(model.parameters(), requires_grad, strict=True):
            parameter.requires_grad_(flag)
    return adversarial.detach()


def harden_batch(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    settings: dict[str, Any],
    *,
    targets_are_masks: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the training-time counter-measures to one training batch: augmentation first, then the attack.

    Args:
        model: the network being trained (the attack's target).
        images: ``(B, C, H, W)`` batch in [0, 1].
        targets: class indices, or ``(B, 1, H, W)`` masks.
        loss_function: the exploiter's training loss.
        settings: :func:`training_counter_measures` of the recipe.
        targets_are_masks: segmentation: the masks take the images' crop and flip.
        generator: CPU random generator (crops, flips and random starts).

    Returns:
        ``(images, targets)`` to train on.
    """
    if settings["augmentation"] == "crop-flip":
        images, moved = random_crop_flip(images, targets if targets_are_masks else None, generator=generator)
        targets = moved if targets_are_masks else targets
    if settings["adversarial_eps"] > 0:
        images = adversarial_examples(
            model,
            images,
            targets,
            loss_function,
            eps=settings["adversarial_eps"],
            steps=settings["adversarial_steps"],
            step_size=settings["adversarial_step_size"],
            generator=generator,
        )
    return images, targets

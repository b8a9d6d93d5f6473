"""A set of independently initialized classifiers trained side by side, used as one surrogate."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClassifierEnsemble"]


class ClassifierEnsemble(nn.Module):
    """Several classifiers of one architecture, each with its own initialization.

    The members never see each other's outputs: :meth:`loss` is the mean of the members' own
    cross-entropies, so one optimizer step over all parameters trains every member as if it were trained
    alone, while a perturbation that lowers :meth:`loss` has to be a shortcut for all of them at once.
    :meth:`forward` returns the mean logits (for accuracies).

    Args:
        build: called once per member to create it (the caller seeds the random stream beforehand).
        members: number of members, >= 1.

    Raises:
        ValueError: if ``members < 1``.
    """

    def __init__(self, build: Callable[[], nn.Module], members: int) -> None:
        super().__init__()
        if members < 1:
            raise ValueError(f"an ensemble needs at least one member, got {members}")
        self.members = nn.ModuleList(build() for _ in range(members))

    def member_logits(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every member for ``inputs``."""
        return [member(inputs) for member in self.members]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Mean of the members' logits."""
        return torch.stack(self.member_logits(inputs)).mean(0)

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean of the members' cross-entropies, and the mean logits.

        Args:
            inputs: ``(B, C, H, W)`` images.
            labels: ``(B,)`` class indices.

        Returns:
            ``(loss, logits)``: the scalar mean cross-entropy and the ``(B, num_classes)`` mean logits.
        """
        logits = self.member_logits(inputs)
        loss = torch.stack([F.cross_entropy(member, labels) for member in logits]).mean()
        return loss, torch.stack(logits).mean(0)

"""VGG-11 with batch norm: MONAI has no VGG, so it is written here (the SALM paper's exploiter)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["VGG11"]

# channels per conv layer, "M" = 2x2 max-pool (Simonyan & Zisserman, configuration A)
_VGG11_LAYERS = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    """VGG-11 (configuration A) with batch norm for small (32x32) inputs.

    Args:
        in_channels: image channels.
        num_classes: output logits.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for spec in _VGG11_LAYERS:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [
                    nn.Conv2d(channels, spec, 3, padding=1),
                    nn.BatchNorm2d(spec),
                    nn.ReLU(inplace=True),
                ]
                channels = spec
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))

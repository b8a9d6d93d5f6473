"""Central-difference convolution (CDC) and the UMed generators (MONAI has no CDC layer).

UMed's contour perturbator is an encoder-decoder whose encoder convolutions are central-difference
convolutions: ``out(r) = sum_dr w_v(dr) f(r + dr) + sum_dr w_c(dr) [f(r + dr) - f(r)]`` with two
trainable 3x3 kernels. The second sum is ``conv(f, w_c) - f(r) * sum(w_c)``; the last term is a 1x1
convolution with the kernel sums, and all three terms fold into ONE 3x3 convolution whose kernel is
``w_v + w_c`` with ``sum(w_c)`` subtracted at the centre tap, which is how :class:`CDConv2d` runs it.
The texture perturbator is MONAI's UNet.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import UNet

__all__ = ["CDConv2d", "CDCUNet", "texture_generator"]


class CDConv2d(nn.Module):
    """3x3 central-difference convolution with a vanilla kernel ``w_v`` and a difference kernel ``w_c``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: convolution stride.
        bias: add a learnable bias.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.stride = int(stride)
        self.weight_v = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.weight_c = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight_v, a=5**0.5)
        nn.init.kaiming_uniform_(self.weight_c, a=5**0.5)

    def folded_weight(self) -> torch.Tensor:
        """The single 3x3 kernel equal to the CDC operator: ``w_v + w_c - delta_centre * sum(w_c)``."""
        weight = self.weight_v + self.weight_c
        centre = torch.zeros_like(weight)
        centre[:, :, 1, 1] = self.weight_c.sum(dim=(2, 3))
        return weight - centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.folded_weight(), self.bias, stride=self.stride, padding=1)


def _conv(in_channels: int, out_channels: int, stride: int, cdc: bool) -> nn.Module:
    if cdc:
        return CDConv2d(in_channels, out_channels, stride=stride)
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


class _Block(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, stride: int, cdc: bool) -> None:
        super().__init__(
            _conv(in_channels, out_channels, stride, cdc),
            nn.InstanceNorm2d(out_channels, affine=True),
            nn.LeakyReLU(0.1, inplace=True),
            _conv(out_channels, out_channels, 1, cdc),
            nn.InstanceNorm2d(out_channels, affine=True),
            nn.LeakyReLU(0.1, inplace=True),
        )


class CDCUNet(nn.Module):
    """U-Net-shaped encoder-decoder whose encoder uses central-difference convolutions (UMed's F_c).

    The decoder uses vanilla convolutions and bilinear upsampling to each skip's size, so any input
    size works. ``cdc=False`` gives the vanilla encoder of the paper's ablation (case C).

    Args:
        in_channels: image channels.
        out_channels: perturbation channels (the image's).
        channels: feature widths per level; the first level keeps full resolution.
        cdc: use central-difference convolutions in the encoder.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: tuple[int, ...] = (8, 16, 32, 64),
        cdc: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = nn.ModuleList()
        previous = in_channels
        for level, width in enumerate(channels):
            self.encoder.append(_Block(previous, width, 1 if level == 0 else 2, cdc))
            previous = width
        self.decoder = nn.ModuleList(
            _Block(channels[level + 1] + channels[level], channels[level], 1, cdc=False)
            for level in reversed(range(len(channels) - 1))
        )
        self.head = nn.Conv2d(channels[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.decoder:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


def texture_generator(in_channels: int, out_channels: int, channels: tuple[int, ...] = (16, 32, 64, 128)) -> UNet:
    """UMed's texture perturbator F_t: a MONAI 2-D UNet (inputs must be divisible by ``2**(levels-1)``).

    Args:
        in_channels: image channels.
        out_channels: perturbation channels.
        channels: feature widths per level.

    Returns:
        The network.
    """
    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=1,
        norm="instance",
    )

"""Central-difference convolution (CDC) and the UMed generators (MONAI has no CDC layer).

UMed's contour perturbator is an encoder-decoder whose encoder convolutions are central-difference
convolutions: ``out(r) = sum_dr w_v(dr) f(r + dr) + sum_dr w_c(dr) [f(r + dr) - f(r)]`` with two
trainable 3x3 kernels. The second sum is ``conv(f, w_c) - f(r) * sum(w_c)``; the last term is a 1x1
convolution with the kernel sums, and all three terms fold into ONE 3x3 convolution whose kernel is
``w_v + w_c`` with ``sum(w_c)`` subtracted at the centre tap, which is how :class:`CDConv` runs it, in 2-D
(3x3) or 3-D (3x3x3 kernels: the same fold over the 27 neighbours of a voxel). The texture perturbator is
MONAI's UNet.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import UNet

__all__ = ["CDConv", "CDConv2d", "CDCUNet", "texture_generator"]


class CDConv(nn.Module):
    """Central-difference convolution (3x3 or 3x3x3) with a vanilla kernel ``w_v`` and a difference kernel ``w_c``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: convolution stride.
        bias: add a learnable bias.
        spatial_dims: 2 or 3.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, bias: bool = True, spatial_dims: int = 2
    ) -> None:
        super().__init__()
        self.stride = int(stride)
        self.spatial_dims = int(spatial_dims)
        kernel = (3,) * self.spatial_dims
        self.weight_v = nn.Parameter(torch.empty(out_channels, in_channels, *kernel))
        self.weight_c = nn.Parameter(torch.empty(out_channels, in_channels, *kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight_v, a=5**0.5)
        nn.init.kaiming_uniform_(self.weight_c, a=5**0.5)

    def folded_weight(self) -> torch.Tensor:
        """The single kernel equal to the CDC operator: ``w_v + w_c - delta_centre * sum(w_c)``."""
        weight = self.weight_v + self.weight_c
        centre = torch.zeros_like(weight)
        centre[(slice(None), slice(None), *([1] * self.spatial_dims))] = self.weight_c.sum(
            dim=tuple(range(2, 2 + self.spatial_dims))
        )
        return weight - centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = F.conv3d if self.spatial_dims == 3 else F.conv2d
        return conv(x, self.folded_weight(), self.bias, stride=self.stride, padding=1)


class CDConv2d(CDConv):
    """The 2-D :class:`CDConv` (3x3 kernels)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, stride=stride, bias=bias, spatial_dims=2)


def _conv(in_channels: int, out_channels: int, stride: int, cdc: bool, spatial_dims: int = 2) -> nn.Module:
    if cdc:
        return CDConv(in_channels, out_channels, stride=stride, spatial_dims=spatial_dims)
    conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    return conv(in_channels, out_channels, 3, stride=stride, padding=1)


class _Block(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, stride: int, cdc: bool, spatial_dims: int = 2) -> None:
        norm = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
        super().__init__(
            _conv(in_channels, out_channels, stride, cdc, spatial_dims),
            norm(out_channels, affine=True),
            nn.LeakyReLU(0.1, inplace=True),
            _conv(out_channels, out_channels, 1, cdc, spatial_dims),
            norm(out_channels, affine=True),
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
        spatial_dims: 2, or 3 for volumes (3x3x3 CDC kernels, trilinear upsampling).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: tuple[int, ...] = (8, 16, 32, 64),
        cdc: bool = True,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        self.spatial_dims = int(spatial_dims)
        self.encoder = nn.ModuleList()
        previous = in_channels
        for level, width in enumerate(channels):
            self.encoder.append(_Block(previous, width, 1 if level == 0 else 2, cdc, self.spatial_dims))
            previous = width
        self.decoder = nn.ModuleList(
            _Block(channels[level + 1] + channels[level], channels[level], 1, cdc=False, spatial_dims=self.spatial_dims)
            for level in reversed(range(len(channels) - 1))
        )
        self.head = (nn.Conv3d if self.spatial_dims == 3 else nn.Conv2d)(channels[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.decoder:
            skip = skips.pop()
            mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
            x = F.interpolate(x, size=skip.shape[2:], mode=mode, align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


def texture_generator(
    in_channels: int, out_channels: int, channels: tuple[int, ...] = (16, 32, 64, 128), spatial_dims: int = 2
) -> UNet:
    """UMed's texture perturbator F_t: a MONAI UNet (inputs must be divisible by ``2**(levels-1)``).

    Args:
        in_channels: image channels.
        out_channels: perturbation channels.
        channels: feature widths per level.
        spatial_dims: 2, or 3 for volumes.

    Returns:
        The network.
    """
    return UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=1,
        norm="instance",
    )

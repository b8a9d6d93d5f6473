"""Classification networks by name, built from ``monai.networks.nets`` where MONAI has them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import Classifier, DenseNet121, ResNet
from torch import nn

from ..utils import MedueError
from .vgg import VGG11

__all__ = ["AUTO_CLASSIFIER", "CLASSIFIER_NAMES", "PadTo", "get_classifier", "resolve_classifier"]

CLASSIFIER_NAMES = ("resnet18", "resnet50", "vgg11", "densenet121", "smallcnn", "smallcnn-batchnorm")
# What ``"auto"`` means per device type for surrogates: the papers' ResNet-18 on an accelerator, the small
# residual ``Classifier`` on a CPU (ResNet-18 with the stride-1 28x28 stem costs ~95 s per BreastMNIST epoch
# of SALM on 2 CPU cores; ``smallcnn`` about 1.3 s).
AUTO_CLASSIFIER = {"cpu": "smallcnn"}


def resolve_classifier(name: str, device: torch.device | str) -> str:
    """Return the network name for ``name``; ``"auto"`` becomes ``"smallcnn"`` on a CPU, else ``"resnet18"``.

    Args:
        name: a name of :data:`CLASSIFIER_NAMES` or ``"auto"``.
        device: the device the network will run on.

    Returns:
        A name that :func:`get_classifier` accepts.

    Raises:
        MedueError: for an unknown name.
    """
    if name == "auto":
        return AUTO_CLASSIFIER.get(torch.device(device).type, "resnet18")
    canonical = {_key(known): known for known in CLASSIFIER_NAMES}.get(_key(name))
    if canonical is None:
        raise MedueError(f"unknown network {name!r}; choose auto or one of {', '.join(CLASSIFIER_NAMES)}")
    return canonical


def _key(name: str) -> str:
    """``name`` lower-cased without ``-`` and ``_`` (``ResNet-18`` and ``resnet18`` are the same network)."""
    return name.lower().replace("-", "").replace("_", "")


class PadTo(nn.Module):
    """Zero-pad inputs symmetrically up to a minimum spatial size before a network.

    Used for networks whose pooling pyramid needs 32x32 (VGG-11, DenseNet-121) on 28x28 MedMNIST.

    Args:
        network: the wrapped network.
        min_size: minimum side length.
    """

    def __init__(self, network: nn.Module, min_size: int = 32) -> None:
        super().__init__()
        self.network = network
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = max(0, self.min_size - x.shape[-2])
        pad_w = max(0, self.min_size - x.shape[-1])
        if pad_h or pad_w:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return self.network(x)


def _resnet(block: str, layers: list[int], in_channels: int, num_classes: int, small: bool) -> nn.Module:
    # small inputs (<= 64 px): 3x3 stride-1 stem, no max-pool (the SALM paper's 28x28 ResNet);
    # large inputs: the torchvision-like 7x7 stride-2 stem with max-pool.
    return ResNet(
        block=block,
        layers=layers,
        block_inplanes=[64, 128, 256, 512],
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_size=3 if small else 7,
        conv1_t_stride=1 if small else 2,
        no_max_pool=small,
        num_classes=num_classes,
    )


def get_classifier(name: str, in_channels: int, num_classes: int, spatial_size: int = 28) -> nn.Module:
    """Build a classifier by name.

    Args:
        name: one of ``resnet18``, ``resnet50``, ``vgg11``, ``densenet121``, or ``smallcnn`` (MONAI's
            ``Classifier`` with channels 32/64/128 and stride-2 residual units: a fast CPU network for the
            demo and quick trials, not one of the papers' exploiters; MONAI's default instance norm) or
            ``smallcnn-batchnorm`` (the same network with batch norm, as the ResNets have; as SALM's surrogate it
            protected less against ResNet-18 than ``smallcnn`` on BreastMNIST, ``benchmarks/README.md``).
        in_channels: image channels (1 grey, 3 RGB).
        num_classes: number of classes.
        spatial_size: input side; <= 64 selects the small-image stem for ResNets.

    Returns:
        An ``nn.Module`` mapping ``(B, C, H, W)`` to ``(B, num_classes)`` logits.

    Raises:
        MedueError: for an unknown name.
    """
    key = _key(name)
    small = spatial_size <= 64
    if key == "resnet18":
        return _resnet("basic", [2, 2, 2, 2], in_channels, num_classes, small)
    if key == "resnet50":
        return _resnet("bottleneck", [3, 4, 6, 3], in_channels, num_classes, small)
    if key == "vgg11":
        return PadTo(VGG11(in_channels, num_classes), 32)
    if key == "densenet121":
        return PadTo(DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes), 32)
    if key in ("smallcnn", "smallcnnbatchnorm"):
        return Classifier(
            in_shape=(in_channels, spatial_size, spatial_size),
            classes=num_classes,
            channels=(32, 64, 128),
            strides=(2, 2, 2),
            num_res_units=1,
            norm="batch" if key == "smallcnnbatchnorm" else "instance",
        )
    raise MedueError(f"unknown exploiter/network {name!r}; choose from {', '.join(CLASSIFIER_NAMES)}")

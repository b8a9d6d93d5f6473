"""The one network factory: classifiers and segmenters by name, 2-D or 3-D, from ``monai.networks.nets``.

Every surrogate, exploiter and generator backbone of the package is built here. MONAI provides them all except
VGG-11 (``vgg.py``) and the CDC generator (``cdc.py``), which are written by hand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import AttentionUnet, BasicUNetPlusPlus, Classifier, DenseNet121, ResNet, SwinUNETR, UNet
from torch import nn

from ..utils import MedueError
from .vgg import VGG11

__all__ = [
    "AUTO_CLASSIFIER",
    "CLASSIFIER_NAMES",
    "SEGMENTER_NAMES",
    "PadTo",
    "get_classifier",
    "get_network",
    "get_segmenter",
    "resolve_classifier",
    "resolve_segmenter",
    "segmenter_multiple",
]

CLASSIFIER_NAMES = ("resnet18", "resnet50", "vgg11", "densenet121", "smallcnn", "smallcnn-batchnorm")
SEGMENTER_NAMES = ("unet", "unet-batchnorm", "attentionunet", "basicunetplusplus", "swinunetr")
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


def resolve_segmenter(name: str) -> str:
    """The canonical name of a segmenter (``AttentionUNet`` -> ``attentionunet``).

    Raises:
        MedueError: for an unknown name.
    """
    canonical = {_key(known): known for known in SEGMENTER_NAMES}.get(_key(name))
    if canonical is None:
        raise MedueError(f"unknown segmentation network {name!r}; choose from {', '.join(SEGMENTER_NAMES)}")
    return canonical


def segmenter_multiple(name: str, spatial_dims: int = 2) -> int:
    """The multiple of which a segmenter's input sides must be: 32 for SwinUNETR (five patch merges), else
    ``2 ** levels`` of the U-Nets' stride-2 levels (16 in 2-D, 8 in 3-D)."""
    if resolve_segmenter(name) == "swinunetr":
        return 32
    return 16 if spatial_dims == 2 else 8


class _FirstOutput(nn.Module):
    """Return the first output of a deep-supervision network (MONAI's BasicUNetPlusPlus returns a list)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)[0]


def get_segmenter(
    name: str, in_channels: int, out_channels: int = 2, spatial_size: int | None = None, spatial_dims: int = 2
) -> nn.Module:
    """Build a segmentation network by name (logits with ``out_channels`` channels, input's spatial size).

    Args:
        name: ``unet`` (MONAI UNet, channels 16-256 with strides 2x4 in 2-D, 16-128 with strides 2x3 in 3-D, 2
            residual units, instance norm: the seg-quick / seg3d-quick network), ``unet-batchnorm`` (the same with
            batch norm, as the classic U-Net), ``attentionunet`` (MONAI AttentionUnet, the same channels and
            strides), ``basicunetplusplus`` (MONAI BasicUNetPlusPlus, its first output) or ``swinunetr`` (MONAI
            SwinUNETR, feature size 24; input sides must be multiples of 32).
        in_channels: image channels.
        out_channels: output channels (2: background and foreground).
        spatial_size: the input side, checked when given: a multiple of :func:`segmenter_multiple`, and at least
            twice it (instance norm needs more than one value at the deepest level).
        spatial_dims: 2 or 3.

    Returns:
        The network.

    Raises:
        MedueError: for an unknown name, or an input side the network cannot take.
    """
    name = resolve_segmenter(name)
    if spatial_dims not in (2, 3):
        raise MedueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    multiple = segmenter_multiple(name, spatial_dims)
    if spatial_size is not None and (int(spatial_size) % multiple or int(spatial_size) < 2 * multiple):
        raise MedueError(
            f"{name} needs input sides divisible by {multiple} and at least {2 * multiple}, got {spatial_size}"
        )
    channels, strides = ((16, 32, 64, 128, 256), (2, 2, 2, 2)) if spatial_dims == 2 else ((16, 32, 64, 128), (2, 2, 2))
    if name in ("unet", "unet-batchnorm"):
        norm = "batch" if name == "unet-batchnorm" else "instance"
        return UNet(
            spatial_dims, in_channels, out_channels, channels=channels, strides=strides, num_res_units=2, norm=norm
        )
    if name == "attentionunet":
        return AttentionUnet(spatial_dims, in_channels, out_channels, channels=channels, strides=strides)
    if name == "basicunetplusplus":
        return _FirstOutput(
            BasicUNetPlusPlus(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels)
        )
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims, feature_size=24)


def get_network(
    name: str, in_channels: int, out_channels: int, spatial_size: int = 28, spatial_dims: int = 2
) -> nn.Module:
    """Build any network of the package by name: a classifier (:data:`CLASSIFIER_NAMES`, ``out_channels`` classes)
    or a segmenter (:data:`SEGMENTER_NAMES`, ``out_channels`` output channels).

    Raises:
        MedueError: for an unknown name.
    """
    if _key(name) in {_key(known) for known in SEGMENTER_NAMES}:
        return get_segmenter(name, in_channels, out_channels, spatial_size, spatial_dims)
    return get_classifier(name, in_channels, out_channels, spatial_size, spatial_dims)


def _resnet(
    block: str, layers: list[int], in_channels: int, num_classes: int, small: bool, spatial_dims: int = 2
) -> nn.Module:
    # small inputs (<= 64 px): 3x3 stride-1 stem, no max-pool (the SALM paper's 28x28 ResNet);
    # large inputs: the torchvision-like 7x7 stride-2 stem with max-pool.
    return ResNet(
        block=block,
        layers=layers,
        block_inplanes=[64, 128, 256, 512],
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        conv1_t_size=3 if small else 7,
        conv1_t_stride=1 if small else 2,
        no_max_pool=small,
        num_classes=num_classes,
    )


def get_classifier(
    name: str, in_channels: int, num_classes: int, spatial_size: int = 28, spatial_dims: int = 2
) -> nn.Module:
    """Build a classifier by name.

    Args:
        name: one of ``resnet18``, ``resnet50``, ``vgg11``, ``densenet121``, or ``smallcnn`` (MONAI's
            ``Classifier`` with channels 32/64/128 and stride-2 residual units: a fast CPU network for the
            demo and quick trials, not one of the papers' exploiters; MONAI's default instance norm) or
            ``smallcnn-batchnorm`` (the same network with batch norm, as the ResNets have; as SALM's surrogate it
            protected less against ResNet-18 than ``smallcnn`` on BreastMNIST, ``benchmarks/README.md``).
        in_channels: image channels (1 grey, 3 RGB).
        num_classes: number of classes.
        spatial_size: input side; <= 64 selects the small-image stem for 2-D ResNets.
        spatial_dims: 2, or 3 for volumes (ResNets, DenseNet-121 and ``smallcnn``; VGG-11 is 2-D only).

    Returns:
        An ``nn.Module`` mapping ``(B, C, H, W[, D])`` to ``(B, num_classes)`` logits.

    Raises:
        MedueError: for an unknown name, or VGG-11 in 3-D.
    """
    key = _key(name)
    # the stride-1 stem suits small 2-D images; volumes keep the 7^3 stride-2 stem (a stride-1 3-D ResNet on
    # 28^3 voxels costs about 64x more per sample, hours per epoch on a CPU)
    small = spatial_size <= 64 and spatial_dims == 2
    if spatial_dims not in (2, 3):
        raise MedueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if key == "resnet18":
        return _resnet("basic", [2, 2, 2, 2], in_channels, num_classes, small, spatial_dims)
    if key == "resnet50":
        return _resnet("bottleneck", [3, 4, 6, 3], in_channels, num_classes, small, spatial_dims)
    if key == "vgg11":
        if spatial_dims != 2:
            raise MedueError("vgg11 is a 2-D network; use resnet18, resnet50 or densenet121 for volumes")
        return PadTo(VGG11(in_channels, num_classes), 32)
    if key == "densenet121":
        network = DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes)
        return PadTo(network, 32) if spatial_dims == 2 else network
    if key in ("smallcnn", "smallcnnbatchnorm"):
        return Classifier(
            in_shape=(in_channels, *([spatial_size] * spatial_dims)),
            classes=num_classes,
            channels=(32, 64, 128),
            strides=(2, 2, 2),
            num_res_units=1,
            norm="batch" if key == "smallcnnbatchnorm" else "instance",
        )
    raise MedueError(f"unknown exploiter/network {name!r}; choose from {', '.join(CLASSIFIER_NAMES)}")

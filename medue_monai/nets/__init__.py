"""Network factory over ``monai.networks.nets`` plus the few networks MONAI lacks."""

from .cdc import CDConv, CDConv2d, CDCUNet, texture_generator
from .ensemble import ClassifierEnsemble
from .factory import (
    AUTO_CLASSIFIER,
    CLASSIFIER_NAMES,
    SEGMENTER_NAMES,
    PadTo,
    get_classifier,
    get_network,
    get_segmenter,
    resolve_classifier,
    resolve_segmenter,
    segmenter_multiple,
)
from .vgg import VGG11

__all__ = [
    "AUTO_CLASSIFIER",
    "CLASSIFIER_NAMES",
    "CDConv",
    "CDConv2d",
    "CDCUNet",
    "ClassifierEnsemble",
    "PadTo",
    "SEGMENTER_NAMES",
    "VGG11",
    "get_classifier",
    "get_network",
    "get_segmenter",
    "resolve_classifier",
    "resolve_segmenter",
    "segmenter_multiple",
    "texture_generator",
]

"""Network factory over ``monai.networks.nets`` plus the few networks MONAI lacks."""

from .cdc import CDConv2d, CDCUNet, texture_generator
from .ensemble import ClassifierEnsemble
from .factory import AUTO_CLASSIFIER, CLASSIFIER_NAMES, PadTo, get_classifier, resolve_classifier
from .vgg import VGG11

__all__ = [
    "AUTO_CLASSIFIER",
    "CLASSIFIER_NAMES",
    "CDConv2d",
    "CDCUNet",
    "ClassifierEnsemble",
    "PadTo",
    "VGG11",
    "get_classifier",
    "resolve_classifier",
    "texture_generator",
]

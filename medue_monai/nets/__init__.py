"""Network factory over ``monai.networks.nets`` plus the few networks MONAI lacks."""

from .cdc import CDConv2d, CDCUNet, texture_generator
from .factory import CLASSIFIER_NAMES, PadTo, get_classifier
from .vgg import VGG11

__all__ = ["CLASSIFIER_NAMES", "CDConv2d", "CDCUNet", "PadTo", "VGG11", "get_classifier", "texture_generator"]

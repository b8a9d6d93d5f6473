"""Network factory over ``monai.networks.nets`` plus the few networks MONAI lacks."""

from .factory import CLASSIFIER_NAMES, PadTo, get_classifier
from .vgg import VGG11

__all__ = ["CLASSIFIER_NAMES", "PadTo", "VGG11", "get_classifier"]

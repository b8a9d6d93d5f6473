"""Data sources mapped into MONAI-style dict items (``image``, ``label``, ``id``)."""

from .classification import ClassificationDataset, ClassificationSource, load_classification_source
from .medmnist import load_medmnist, resolve_medmnist_path
from .segmentation import SegmentationDataset, SegmentationSource, load_segmentation_source, split_ids
from .specs import is_classification_spec, load_classification_spec
from .synthetic import make_synthetic_classification

__all__ = [
    "ClassificationDataset",
    "ClassificationSource",
    "is_classification_spec",
    "load_classification_source",
    "load_classification_spec",
    "load_medmnist",
    "make_synthetic_classification",
    "resolve_medmnist_path",
    "SegmentationDataset",
    "SegmentationSource",
    "load_segmentation_source",
    "split_ids",
]

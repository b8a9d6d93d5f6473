"""Protect and evaluate as functions: what the CLI, the bundles and the MONAI Label app call.

No algorithm lives here, only orchestration: :class:`ProtectionRun` (source, split, protector, loader),
:func:`protect` (fit, then the private protector file and the release), :func:`release_from_protector`
(a release written later from a saved protector) and :func:`evaluate`.
"""

from .protect import ProtectionRun, is_segmentation_spec, protect, release_from_protector, run_from_protector
from .workflows import EvaluationRun, ReleaseWriter, evaluate, summary_line

__all__ = [
    "EvaluationRun",
    "ProtectionRun",
    "ReleaseWriter",
    "evaluate",
    "is_segmentation_spec",
    "protect",
    "release_from_protector",
    "run_from_protector",
    "summary_line",
]

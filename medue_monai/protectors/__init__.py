"""Protection methods: one module per method, a shared budget/mask toolkit, and a registry.

Importing this package registers every method (``PROTECTORS`` maps ``--method`` names to classes).
"""

from .ar import ARProtector, ARSegProtector
from .base import PROTECTORS, Protector, get_protector_class, load_protector, register_protector
from .budget import (
    TILE_PATTERNS,
    block_average,
    positions_to_keep,
    project_l0,
    project_linf,
    tile_pattern_field,
    tile_side,
    topk_position_mask,
)
from .em_seg import EMSegContourProtector, EMSegProtector, EMSegROIProtector
from .lsp import LSPProtector, LSPSegProtector
from .masks import contour_band, contour_radius, dilate_mask, erode_mask, region_mask, roi_interior
from .salm import EMProtector, SALMProtector
from .sep import SEPProtector, SEPSegProtector
from .tap import TAPProtector, TAPSegProtector
from .trainer import BilevelTrainer
from .umed import UMedProtector

__all__ = [
    "PROTECTORS",
    "TILE_PATTERNS",
    "ARProtector",
    "ARSegProtector",
    "BilevelTrainer",
    "EMProtector",
    "EMSegContourProtector",
    "EMSegProtector",
    "EMSegROIProtector",
    "LSPProtector",
    "LSPSegProtector",
    "Protector",
    "SALMProtector",
    "SEPProtector",
    "SEPSegProtector",
    "TAPProtector",
    "TAPSegProtector",
    "UMedProtector",
    "contour_band",
    "contour_radius",
    "dilate_mask",
    "erode_mask",
    "get_protector_class",
    "load_protector",
    "block_average",
    "positions_to_keep",
    "project_l0",
    "project_linf",
    "region_mask",
    "register_protector",
    "roi_interior",
    "tile_pattern_field",
    "tile_side",
    "topk_position_mask",
]

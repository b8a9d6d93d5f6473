"""Protection methods: one module per method, a shared budget/mask toolkit, and a registry."""

from .base import PROTECTORS, Protector, get_protector_class, load_protector, register_protector
from .budget import positions_to_keep, project_l0, project_linf, topk_position_mask
from .salm import EMProtector, SALMProtector
from .trainer import BilevelTrainer

__all__ = [
    "PROTECTORS",
    "BilevelTrainer",
    "EMProtector",
    "Protector",
    "SALMProtector",
    "get_protector_class",
    "load_protector",
    "positions_to_keep",
    "project_l0",
    "project_linf",
    "register_protector",
    "topk_position_mask",
]

"""MONAI transforms: protectors and exploiter-side defenses as array/dictionary transforms."""

from .defenses import DEFENSES, Defense, DefenseD, Defensed, DefenseDict, apply_defense
from .protect import (
    Protect,
    ProtectD,
    Protectd,
    ProtectDict,
    SALMProtect,
    SALMProtectD,
    SALMProtectd,
    SALMProtectDict,
)
from .umed import UMedProtect, UMedProtectD, UMedProtectd, UMedProtectDict

__all__ = [
    "DEFENSES",
    "Defense",
    "DefenseD",
    "DefenseDict",
    "Defensed",
    "apply_defense",
    "Protect",
    "ProtectD",
    "ProtectDict",
    "Protectd",
    "SALMProtect",
    "SALMProtectD",
    "SALMProtectDict",
    "SALMProtectd",
    "UMedProtect",
    "UMedProtectD",
    "UMedProtectDict",
    "UMedProtectd",
]

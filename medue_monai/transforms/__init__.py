"""MONAI transforms: protectors as array/dictionary transforms."""

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

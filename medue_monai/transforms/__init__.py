"""MONAI transforms: protectors as array/dictionary transforms."""

from .protect import (
    Protect,
    Protectd,
    ProtectD,
    ProtectDict,
    SALMProtect,
    SALMProtectd,
    SALMProtectD,
    SALMProtectDict,
)

__all__ = [
    "Protect",
    "ProtectD",
    "ProtectDict",
    "Protectd",
    "SALMProtect",
    "SALMProtectD",
    "SALMProtectDict",
    "SALMProtectd",
]

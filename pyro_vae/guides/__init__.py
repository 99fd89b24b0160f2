"""Inference side q(z|x). Importing this package registers every guide."""

from .base import AmortizedGuide
from .normal import DiagonalNormalGuide

__all__ = ["AmortizedGuide", "DiagonalNormalGuide"]

"""Inference side q(z|x). Importing this package registers every guide."""

from .base import AmortizedGuide
from .delta import DeltaGuide
from .flow import FlowGuide
from .full_rank import FullRankGuide
from .low_rank import LowRankGuide
from .normal import DiagonalNormalGuide

__all__ = ["AmortizedGuide", "DeltaGuide", "DiagonalNormalGuide", "FlowGuide", "FullRankGuide", "LowRankGuide"]

"""Type aliases and value constraints shared by the spec validator and the components.

A component's factory declares its parameters with ordinary annotations; constraints ride along
in ``typing.Annotated`` so the same signature documents, validates and builds::

    def mlp(*, hidden: list[PositiveInt] = [400], activation: Activation = "relu"): ...
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import torch

Tensor = torch.Tensor
Shape = tuple[int, ...]


@dataclass(frozen=True)
class Interval:
    """Inclusive/exclusive numeric bounds checked by the spec validator."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, x: float) -> bool:
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            return False
        return not (self.high is not None and (x > self.high or (self.high_open and x == self.high)))

    def describe(self) -> str:
        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        return " and ".join(p for p in (lo, hi) if p)


@dataclass(frozen=True)
class Component:
    """Marks a nested ``{kind: ..., ...}`` mapping resolved through registry group ``group``."""

    group: str


PositiveInt = Annotated[int, Interval(1)]
NonNegativeInt = Annotated[int, Interval(0)]
PositiveFloat = Annotated[float, Interval(0, low_open=True)]
NonNegativeFloat = Annotated[float, Interval(0)]
UnitInterval = Annotated[float, Interval(0, 1)]
Activation = Literal["relu", "tanh", "elu", "leaky_relu", "softplus", "gelu", "silu"]
Binarize = Literal["none", "static", "dynamic"]
ComponentSpec = Mapping[str, Any]

__all__ = [
    "Activation",
    "Binarize",
    "Component",
    "ComponentSpec",
    "Interval",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "Shape",
    "Tensor",
    "Union",
    "UnitInterval",
]

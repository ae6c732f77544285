"""Locally trained layers. Each returns a :class:`LayerOutput`; engines detach its features at the boundary."""

from .base import FFLayer, LayerOutput
from .cwconv import CWConv
from .heads import ClassifierHead
from .linear import FFLinear
from .residual import ParamFreeResidual
from .trifecta import TrifectaConv

__all__ = ["FFLayer", "LayerOutput", "CWConv", "ParamFreeResidual", "FFLinear", "TrifectaConv", "ClassifierHead"]

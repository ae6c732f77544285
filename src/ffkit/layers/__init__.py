"""Locally trained layers. Each returns a :class:`LayerOutput`; engines detach its features at the boundary."""

from .base import FFLayer, LayerOutput
from .cwcomp import CwCompConv
from .cwconv import CWConv
from .dropout import Dropout, drop_mask, dropout, dropout_mask
from .dtg import DTGConv, DTGLinear
from .heads import ClassifierHead
from .linear import FFLinear, peer_normalization_loss, relu_full_grad, rms_normalize
from .pon import PONLinear
from .pooling import max_pool2x2
from .residual import ParamFreeResidual
from .trifecta import TrifectaConv, TrifectaLinear

__all__ = [
    "FFLayer",
    "LayerOutput",
    "CWConv",
    "CwCompConv",
    "ParamFreeResidual",
    "FFLinear",
    "relu_full_grad",
    "rms_normalize",
    "peer_normalization_loss",
    "TrifectaConv",
    "TrifectaLinear",
    "ClassifierHead",
    "PONLinear",
    "max_pool2x2",
    "DTGConv",
    "DTGLinear",
    "Dropout",
    "dropout",
    "dropout_mask",
    "drop_mask",
]

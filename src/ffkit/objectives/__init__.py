"""How a network's layers are trained and how they vote: the two families of FF objectives.

* :class:`ClassScoreObjective` -- channel-wise layers output per-class scores ``[B, K]``; each layer minimises a
  local cross-entropy on them (DeeperForward, CwComp). Prediction needs one pass.
* :class:`PosNegObjective` -- the label is part of the input (overlay or label channel); each layer separates
  positive (true label) from negative (wrong label) samples by goodness, with the threshold loss (Hinton) or SymBa
  (The Trifecta). Prediction needs one pass per label.

Both expose ``layer_scores(network, x) -> [L, B, K]``, so evaluation (per layer, last-k, SIP) is shared.

What a positive/negative objective needs lives here too: label encoders (:class:`LabelOverlay`,
:class:`LabelChannel`) and negative-label samplers (:class:`RandomNegative`, :class:`FixedNegative`,
:class:`AdaptiveNegative`, :func:`get_negatives`).
"""

from .base import Objective, PreparedBatch
from .class_scores import ClassScoreObjective
from .labels import LabelChannel, LabelOverlay
from .negatives import AdaptiveNegative, FixedNegative, NegativeLabels, RandomNegative, get_negatives
from .posneg import PosNegObjective

__all__ = [
    "Objective",
    "PreparedBatch",
    "ClassScoreObjective",
    "PosNegObjective",
    "LabelOverlay",
    "LabelChannel",
    "NegativeLabels",
    "RandomNegative",
    "FixedNegative",
    "AdaptiveNegative",
    "get_negatives",
]

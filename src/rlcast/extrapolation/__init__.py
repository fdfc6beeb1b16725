"""Weight extrapolation: predict the weights of a later checkpoint from a run's earlier ones (`rlcast extrapolate`,
`rlcast compare`, the live jumps); the held-out accuracy is forecast in `rlcast.forecasting` instead. One module per
published method, all behind `rlcast.extrapolation.base.Extrapolator`, each with its paper as `reference`;
`check_extrapolator(cls)` runs their contract on any subclass (a user's too).

Importing any of them imports this package first, which registers every built-in method in METHODS, in this order.
"""

from rlcast.extrapolation.base import METHODS, Extrapolator, make_extrapolator, register, write_prediction
from rlcast.extrapolation.weight_linear import WeightLinear
from rlcast.extrapolation.alpharl import AlphaRL, AlphaRLStep
from rlcast.extrapolation.relex import Relex
from rlcast.extrapolation.next import NExt
from rlcast.extrapolation.drift import Drift
from rlcast.extrapolation.rre import RRE
from rlcast.extrapolation.checks import check_extrapolator

__all__ = ["METHODS", "RRE", "AlphaRL", "AlphaRLStep", "Drift", "Extrapolator", "NExt", "Relex", "WeightLinear",
           "check_extrapolator", "make_extrapolator", "register", "write_prediction"]

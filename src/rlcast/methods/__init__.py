"""Weight extrapolators: one module per published method, all behind `rlcast.methods.base.Extrapolator`, each with
its paper as `reference`; `check_extrapolator(cls)` runs their contract on any subclass (a user's too).

Importing any of them imports this package first, which registers every built-in method in METHODS, in this order.
"""

from rlcast.methods.base import METHODS, Extrapolator, make_extrapolator, register, write_prediction
from rlcast.methods.weight_linear import WeightLinear
from rlcast.methods.alpharl import AlphaRL, AlphaRLStep
from rlcast.methods.relex import Relex
from rlcast.methods.next import NExt
from rlcast.methods.drift import Drift
from rlcast.methods.rre import RRE
from rlcast.methods.checks import check_extrapolator

__all__ = ["METHODS", "RRE", "AlphaRL", "AlphaRLStep", "Drift", "Extrapolator", "NExt", "Relex", "WeightLinear",
           "check_extrapolator", "make_extrapolator", "register", "write_prediction"]

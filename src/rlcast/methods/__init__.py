"""Forecasting methods: one module per published method, all behind `rlcast.methods.base.Extrapolator`.

Importing any of them imports this package first, which registers every built-in method in METHODS, in this order.
"""

from rlcast.methods.base import METHODS, Extrapolator, make_extrapolator, register, write_prediction
from rlcast.methods.weight_linear import WeightLinear
from rlcast.methods.alpharl import AlphaRL, AlphaRLStep
from rlcast.methods.relex import Relex
from rlcast.methods.next import NExt
from rlcast.methods.drift import Drift
from rlcast.methods.rre import RRE

__all__ = ["METHODS", "RRE", "AlphaRL", "AlphaRLStep", "Drift", "Extrapolator", "NExt", "Relex", "WeightLinear",
           "make_extrapolator", "register", "write_prediction"]

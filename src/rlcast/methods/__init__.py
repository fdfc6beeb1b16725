"""Forecasting methods: one module per published method, all behind `rlcast.methods.base.Extrapolator`.

Importing any of them imports this package first, which registers every built-in method in METHODS, in this order.
"""

from rlcast.methods.base import METHODS, Extrapolator, make_extrapolator, register
from rlcast.methods.weight_linear import WeightLinear
from rlcast.methods.alpharl import AlphaRL, AlphaRLStep
from rlcast.methods.relex import Relex
from rlcast.methods.next import NExt

__all__ = ["METHODS", "AlphaRL", "AlphaRLStep", "Extrapolator", "NExt", "Relex", "WeightLinear", "make_extrapolator",
           "register"]

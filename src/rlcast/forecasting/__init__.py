"""Forecasting a run's held-out accuracy from its first checkpoints: curve fits, the reward curve, the weights, and
their back-tested combination, all behind `rlcast.forecasting.base.Forecaster`.

Importing any of them imports this package first, which registers every built-in forecaster in FORECASTERS.
"""

from rlcast.forecasting.base import FORECASTERS, LEVEL, Forecast, Forecaster, make_forecaster, register
from rlcast.forecasting.curves import Curve, checked, read_curve
from rlcast.forecasting.recent import Ceiling, Flat
from rlcast.forecasting.knee import knee
from rlcast.forecasting.curvefit import LogLinear, PowerLaw, RewardCurve, Sigmoid
from rlcast.forecasting.weights import AlphaRLForecast
from rlcast.forecasting.combine import ALONGSIDE, MEMBERS, Combination
from rlcast.forecasting.checks import check_forecaster

__all__ = ["ALONGSIDE", "FORECASTERS", "LEVEL", "MEMBERS", "AlphaRLForecast", "Ceiling", "Combination", "Curve", "Flat", "Forecast", "Forecaster",
           "LogLinear", "PowerLaw", "RewardCurve", "Sigmoid", "check_forecaster", "checked", "knee", "make_forecaster", "read_curve", "register"]

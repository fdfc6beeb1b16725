"""Layer 5, training: the tiny testbed, RL runs through TRL, live acceleration, optimizer-side lookahead, and the
forecast's stop rule as a callback (`rlcast.training.ForecastCallback`)."""

from rlcast.training.forecast_callback import ForecastCallback

__all__ = ["ForecastCallback"]

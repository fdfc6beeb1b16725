"""Forecasters of a run's recent regime, for real RL curves: a jump in the first dozens of steps while the model learns
the answer format, then a slow creep or a plateau (issue 29; the verl logs of `bench/forecast.py --logs`).

    flat      "no further gain": the mean of the last `last` scores, its interval the noise of that mean
    ceiling   a saturating curve whose ceiling comes from the recent slope: y = a + b log t fitted on the recent
              checkpoints (after the knee, within the last `recent` share of the steps); from the cutoff c on,
              y(T) = y_c + (b / alpha) (1 - (T / c)^-alpha), the power-law saturation with the same level and slope
              at c, so its ceiling is y_c + b / alpha (alpha -> 0 is the log-linear line, which never levels off)

Both read the curve after its early jump (`knee.knee`), the combination back-tests them from there, and a future
checkpoint's noise is measured there (rlcast.forecasting.knee).
"""

from __future__ import annotations

import numpy as np

from rlcast.errors import RlcastError
from rlcast.forecasting.base import Forecaster, register
from rlcast.forecasting.curves import Curve
from rlcast.forecasting.knee import knee

def _noise(curve: Curve, pick: np.ndarray) -> np.ndarray:
    """Each picked score's own noise: its run.json interval, else one evaluation's noise or the run's swing."""
    sd = curve.sd[pick]
    fallback = curve.noise(curve.accuracy[pick])
    return np.where(np.isfinite(sd) & (sd > 0), sd, fallback)


@register("flat")
class Flat(Forecaster):
    """No further gain: every future step at the mean of the last `last` scores (the base's excluded when there are
    enough checkpoints). Its paths spread by that mean's own noise (the scores' intervals, else one evaluation's noise
    or the run's swing, over sqrt(last))."""

    reference = "rlcast"
    saturating = True

    def __init__(self, last: int = 3, samples: int = 200, seed: int = 0):
        super().__init__(samples, seed)
        if not (isinstance(last, int) and last >= 1):
            raise RlcastError(f"flat: last={last!r}: expected a whole number >= 1")
        self.last = last

    def _fit(self, curve: Curve) -> None:
        after = np.flatnonzero(curve.steps > 0)
        pick = (after if len(after) >= self.last else np.arange(len(curve.steps)))[-self.last:]
        self.level_ = float(curve.accuracy[pick].mean())
        noise = _noise(curve, pick)
        self.sd_ = float(np.sqrt((noise ** 2).sum()) / len(pick)) if np.isfinite(noise).all() else 0.0

    def _curves(self, steps):
        center = np.full(len(steps), self.level_)
        z = np.random.default_rng(self.seed).standard_normal(self.samples)
        return center, np.repeat((self.level_ + self.sd_ * z)[:, None], len(steps), axis=1)


@register("ceiling")
class Ceiling(Forecaster):
    """Saturating, its ceiling from the recent slope (module docstring): y = a + b log t fitted by weighted least
    squares on the checkpoints after the knee within the last `recent` share of the steps (at least `min_points` of
    the latest), then y(T) = y_c + (b / alpha)(1 - (T / c)^-alpha) past the cutoff c. Its paths draw (a, b) from the
    fit's own covariance (the scores' noise, inflated by the residuals when they scatter more)."""

    reference = "rlcast"
    saturating = True

    def __init__(self, alpha: float = 1.0, recent: float = 0.5, samples: int = 200, seed: int = 0):
        super().__init__(samples, seed)
        if not (isinstance(alpha, (int, float)) and 0 < alpha <= 10):
            raise RlcastError(f"ceiling: alpha={alpha!r}: expected a number in (0, 10]")
        if not (isinstance(recent, (int, float)) and 0 < recent <= 1):
            raise RlcastError(f"ceiling: recent={recent!r}: expected a share in (0, 1]")
        self.alpha, self.recent = alpha, recent

    def _fit(self, curve: Curve) -> None:
        after = np.flatnonzero(curve.steps > 0)
        if len(after) < self.min_points:
            raise RlcastError(f"{self.label()}: {curve.run} has {len(after)} checkpoints after the base up to step "
                              f"{curve.last}, this forecaster needs {self.min_points}")
        start = max(knee(curve), (1 - self.recent) * curve.last)
        pick = after[curve.steps[after] >= start]
        if len(pick) < self.min_points:
            pick = after[-self.min_points:]
        t = np.log(curve.steps[pick].astype(float))
        y = curve.accuracy[pick]
        sd = _noise(curve, pick)
        w = 1.0 / np.maximum(sd, 1e-6) ** 2 if np.isfinite(sd).all() else np.ones(len(pick))
        X = np.stack([np.ones_like(t), t - np.log(curve.last)], 1)     # intercept = the level at the cutoff
        m = X.T @ (X * w[:, None])
        if abs(np.linalg.det(m)) < 1e-12:
            raise RlcastError(f"{self.label()}: {curve.run}: the recent checkpoints share one step")
        cov = np.linalg.inv(m)
        coef = cov @ (X.T @ (w * y))
        dof = len(y) - 2
        chi2 = float((w * (y - X @ coef) ** 2).sum())
        cov = cov * (max(1.0, chi2 / dof) if dof > 0 else 1.0)
        self.coef_, self.cov_ = coef, cov
        draws = np.random.default_rng(self.seed).multivariate_normal(coef, cov, size=self.samples) if self.samples \
            else np.zeros((0, 2))
        self.draws_ = draws

    def _shape(self, steps: np.ndarray) -> np.ndarray:
        """(1 - (T / c)^-alpha) / alpha at `steps` (1 / alpha at inf)."""
        with np.errstate(divide="ignore", over="ignore"):
            ratio = np.where(np.isfinite(steps), np.maximum(steps, 1e-9) / self.curve_.last, np.inf)
            return (1 - ratio ** -self.alpha) / self.alpha

    def _curves(self, steps):
        g = self._shape(steps)
        center = self.coef_[0] + self.coef_[1] * g
        return center, self.draws_[:, :1] + self.draws_[:, 1:] * g[None]

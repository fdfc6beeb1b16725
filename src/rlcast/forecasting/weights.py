"""Weight-based forecast: AlphaRL's PLS of accuracy on the rank-1 coefficient, driven forward along the step.

Per 2-D block tensor, a(t) = s1(t) u1(t) (sign-aligned over the checkpoints, `Curve.weights`, from the cached rank-1
spectra of `rlcast.core.trajectory`) is fitted by a least-squares line in the step (AlphaRL's linear dynamics, the
`alpharl-step` extrapolator), and a one-component PLS of the held-out accuracy on a(t) (AlphaRL's, `core.numerics.pls1`)
reads the accuracy off the line at the forecast steps. The forecast is the median over tensors. Because both maps are
linear, each tensor's forecast is a line in the step through the checkpoints' mean, with a slope set by the weights.
Intervals: a parametric bootstrap of the accuracies (their own noise, inflated by the residuals), the PLS refitted for
every sample, batched.
"""

from __future__ import annotations

import numpy as np

from rlcast.errors import RlcastError
from rlcast.forecasting.base import Forecaster, register
from rlcast.forecasting.curves import Curve


def pls_slopes(a: np.ndarray, steps: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Accuracy gained per step along the fitted line of a(t) (T, d), by one-component PLS of each row of y (R, T).

    The PLS weight w is proportional to a_c^T y_c, the score z = a_c w, the regression b = z.y_c / z.z; the line's
    direction beta moves the score by w.beta per step, hence the slope b * (w . beta)."""
    t = steps - steps.mean()
    ac = a - a.mean(0)
    beta = t @ ac / (t @ t)                                       # (d,) the line's slope
    yc = y - y.mean(1, keepdims=True)                             # (R, T)
    w = yc @ ac                                                   # (R, d)
    w /= np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-300)
    z = w @ ac.T                                                  # (R, T)
    b = (z * yc).sum(1) / np.maximum((z * z).sum(1), 1e-300)
    return b * (w @ beta)


@register("alpharl")
class AlphaRLForecast(Forecaster):
    """AlphaRL's rank-1 PLS of accuracy, driven by a line of a(t) in the step; needs `Curve.weights`
    (`read_curve(run, weights=True)`) at >= 3 checkpoints."""

    reference = "AlphaRL, arXiv 2510.00553"
    reads_weights = True

    def __init__(self, samples: int = 200, seed: int = 0):
        super().__init__(samples, seed)

    def _fit(self, curve: Curve) -> None:
        if curve.weights is None:
            raise RlcastError(f"{self.label()}: no rank-1 weight paths for {curve.run} (read the curve with "
                              f"weights=True, or --weights)")
        steps = np.array(curve.weight_steps, dtype=float)
        if len(steps) < 3:
            raise RlcastError(f"{self.label()}: {curve.run} has {len(steps)} checkpoints with weights and an accuracy "
                              f"up to step {curve.last}, this forecaster needs 3")
        index = {int(s): i for i, s in enumerate(curve.steps)}
        pick = [index[int(s)] for s in steps]
        y, sd = curve.accuracy[pick], curve.sd[pick]
        rng = np.random.default_rng(self.seed)
        self.mean_step_ = float(steps.mean())
        slopes = np.stack([pls_slopes(a.astype(float), steps, y[None])[0] for a in curve.weights.values()])
        self.slope_, self.level_ = float(np.median(slopes)), float(y.mean())
        fitted = self.level_ + self.slope_ * (steps - self.mean_step_)
        known = np.all(np.isfinite(sd)) and np.all(sd > 0)
        dof = len(y) - 2
        if known:
            noise = sd * np.sqrt(max(1.0, float((((y - fitted) / sd) ** 2).sum()) / dof) if dof > 0 else 1.0)
        else:
            noise = np.full_like(y, np.sqrt(float(((y - fitted) ** 2).sum()) / max(dof, 1)))
        self.levels_, self.slopes_ = np.zeros(0), np.zeros(0)
        if self.samples:
            ys = fitted[None] + rng.standard_normal((self.samples, len(y))) * noise
            per = np.stack([pls_slopes(a.astype(float), steps, ys) for a in curve.weights.values()])  # (modules, S)
            self.levels_, self.slopes_ = ys.mean(1), np.median(per, axis=0)

    def _curves(self, steps):
        center = self.level_ + self.slope_ * (steps - self.mean_step_)
        paths = self.levels_[:, None] + self.slopes_[:, None] * (steps[None] - self.mean_step_)
        return center, paths

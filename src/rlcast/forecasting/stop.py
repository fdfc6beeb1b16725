"""The stop rule: is the held-out gain still to come by the planned last step worth the remaining steps?

At a cutoff c the combination (`combine.Combination`, fitted on the curve up to c) samples the true accuracy curve;
the gain is each sampled curve's value at the target step T minus its own value at c (the run's current level, its
noise included). Stop when P(gain >= `min_gain`) < `threshold` at this validation and at the `patience` - 1 before it
(each forecast from the scores up to it), unless the run is in a dip (`in_dip`: its last 3 scores well below its best
3 so far): the run is unlikely to gain `min_gain` more, and not only by one refit's whim. `rlcast forecast --stop` prints the decision as one line, `--follow` at every new validation of a live log,
`rlcast.training.ForecastCallback` at every evaluation, and `bench/forecast.py` replays it on every curve (steps
saved against accuracy lost). THRESHOLD and PATIENCE were chosen there, on the tuning set (testbed seed 100's 15
curves, 5 learning rates x mu 1, 2, 4, and two of the three verl logs) over thresholds {0.1, ..., 0.5} x patience
{1, 2, 3}, after the knee's 12-sd rule and the combination's horizon-own path errors: 0.3 and 2 stop the testbed's
climbing curves rarely (3 % of their steps saved, the oracle's 18 %; loss <= 0.013) and save 28 % of the tuning logs'
steps (the oracle: 56 %) for <= 0.008; 0.4 and 3 saved 30 % of the logs for the same, 0.3 and 1 lost 0.21 on a
testbed curve, 0.4 and 2 0.215.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from rlcast.errors import RlcastError
from rlcast.forecasting.base import LEVEL, make_forecaster
from rlcast.forecasting.combine import Combination
from rlcast.forecasting.curves import Curve, checked
from rlcast.forecasting.knee import after_knee

MIN_GAIN = 0.01
THRESHOLD = 0.3
PATIENCE = 2  # validations in a row below the threshold: one flip of the back-test's choice is no plateau


@dataclass(frozen=True)
class Decision:
    """The stop rule at one cutoff: the gain's median and `LEVEL` interval (true accuracy, target minus cutoff),
    P(gain >= min_gain), the forecast of the true accuracy at the target, and the verdict."""

    stop: bool
    cutoff: int
    target: int
    gain: float
    low: float
    high: float
    p_gain: float
    min_gain: float
    final: float
    final_low: float
    final_high: float

    def line(self) -> str:
        """One line: `stop: +0.004 [-0.010, +0.015] expected by step T, below --min-gain 0.01`, or `continue: ...`."""
        span = f"{self.gain:+.3f} [{self.low:+.3f}, {self.high:+.3f}] expected by step {self.target}"
        if self.stop:
            return f"stop: {span}, below --min-gain {self.min_gain:g}"
        return f"continue: {span}, P(gain >= {self.min_gain:g}) = {self.p_gain:.2f}"

    def to_json(self) -> dict:
        return {**asdict(self), "line": self.line()}


def check_rule(min_gain: float, threshold: float) -> None:
    """A one-line error for a min_gain outside [0, 1) or a threshold outside (0, 1)."""
    if not (isinstance(min_gain, (int, float)) and np.isfinite(min_gain) and 0 <= min_gain < 1):
        raise RlcastError(f"--min-gain {min_gain!r}: expected an accuracy gain in [0, 1)")
    if not (isinstance(threshold, (int, float)) and np.isfinite(threshold) and 0 < threshold < 1):
        raise RlcastError(f"stop threshold {threshold!r}: expected a probability in (0, 1)")


def decide(curve: Curve, target: int, min_gain: float = MIN_GAIN, threshold: float = THRESHOLD,
           model: Combination | None = None, patience: int = PATIENCE) -> Decision:
    """The stop rule on `curve` (already cut at the cutoff) for the planned last step `target`; `model`: the
    combination, fitted on that curve or not (then fitted here; the earlier validations' fits, copies of it)."""
    check_rule(min_gain, threshold)
    if target < curve.last:
        raise RlcastError(f"{curve.run}: planned last step {target} is before the cutoff step {curve.last}")
    if model is None or not hasattr(model, "curve_"):
        model = make_forecaster(model or Combination()).fit(curve)
    gain, final = _gain(model, curve.last, target)
    q = np.quantile(gain, [0.5, (1 - LEVEL) / 2, (1 + LEVEL) / 2])
    f = np.quantile(final, [0.5, (1 - LEVEL) / 2, (1 + LEVEL) / 2])
    p = float((gain >= min_gain).mean())
    stop = p < threshold and not in_dip(curve)
    for step in curve.steps[curve.steps > 0][:-1][::-1][:patience - 1] if stop else ():
        window = curve.window(int(step))
        try:
            earlier = make_forecaster(model).fit(checked(window))
        except RlcastError:
            stop = False  # too few scores before this one to confirm it
            break
        if (_gain(earlier, window.last, target)[0] >= min_gain).mean() >= threshold:
            stop = False
            break
    return Decision(stop, curve.last, int(target), float(q[0]), float(q[1]), float(q[2]), p, float(min_gain),
                    float(f[0]), float(f[1]), float(f[2]))


def in_dip(curve: Curve) -> bool:
    """Whether the mean of the last 3 scores sits below the best such mean so far (after the early jump) by more than
    twice its own evaluation noise: a run in a dip is no plateau, and stopping there loses its best."""
    after = after_knee(curve)
    scores = after.accuracy[after.steps > 0]
    if len(scores) < 4:
        return False
    means = np.convolve(scores, np.ones(3) / 3, mode="valid")
    noise = float(after.evaluation_noise(np.array([means[-1]]))[0]) / np.sqrt(3)
    return bool(noise > 0 and means.max() - means[-1] > 2 * noise)


def _gain(model: Combination, cutoff: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """(gain samples, samples of the true accuracy at `target`) of a fitted combination."""
    pred = model.predict(np.array([cutoff, target], dtype=float))
    return pred.paths[:, 1] - pred.paths[:, 0], pred.paths[:, 1]

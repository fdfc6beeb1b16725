"""Where a run's early jump ends: real RL curves of LLMs rise fast for a few dozen steps while the model learns the
answer format, then creep or sit on a plateau (issue 29). Fits, back-tests and the noise of a future checkpoint read
the curve after this knee, so the jump is never taken for the trend or for checkpoint-to-checkpoint noise.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rlcast.forecasting.curves import Curve

KNEE_RATIO = 4.0  # the early slope over the late one that makes a knee
# the rise up to the knee, in one evaluation's noise sd: a format jump is large (the verl logs' Qwen2.5-0.5B runs: 0.0 ->
# 0.46, ~33 sd at 1319 prompts); the testbed's steady climb rises 7-9 sd before a local plateau, which 4 sd took
# for a knee (a back-test from there saw only the plateau and the stop rule ended runs that climbed again)
KNEE_RISE = 12.0


def knee(curve: Curve, ratio: float = KNEE_RATIO, share: float = 0.8, min_late: int = 3) -> int:
    """The first step after the early jump, or the first step of the curve when there is none.

    The candidate is the first score within `share` of the way from the first score to the mean of the last 3; it is
    a knee when the rise up to it exceeds 4 noise standard deviations and its mean slope is >= `ratio` x the slope of
    a line fitted through it and the >= `min_late` scores after it (a steady climb has one slope: no knee). Linear in
    the number of points.
    """
    x, y = curve.steps.astype(float), curve.accuracy.astype(float)
    if len(x) < 2 + min_late:
        return int(x[0])
    level = y[-3:].mean()
    rise = level - y[0]
    above = np.flatnonzero(y >= y[0] + share * rise)
    k = int(above[0]) if len(above) else len(x)
    if k == 0 or len(x) - k < min_late:
        return int(x[0])
    at = np.array([max(level, y[0])])
    noise = curve.evaluation_noise(at)[0] or curve.noise(at)[0]
    late = np.polyfit(x[k:], y[k:], 1)[0]
    early = (y[k] - y[0]) / (x[k] - x[0])
    if y[k] - y[0] > KNEE_RISE * noise and early >= ratio * max(late, 0.0):
        return int(x[k])
    return int(x[0])


def after_knee(curve: Curve) -> Curve:
    """`curve` without the points (held-out scores and rewards) before its knee."""
    start = knee(curve)
    if start <= curve.steps[0]:
        return curve
    keep, rkeep = curve.steps >= start, curve.reward_steps >= start
    return dataclasses.replace(curve, steps=curve.steps[keep], accuracy=curve.accuracy[keep], sd=curve.sd[keep],
                               reward_steps=curve.reward_steps[rkeep], reward=curve.reward[rkeep])

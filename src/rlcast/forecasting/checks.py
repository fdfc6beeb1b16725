"""`check_forecaster(cls)`: the estimator contract every forecaster keeps, run on a synthetic curve (scikit-learn's
`check_estimator` is the model). Run it on your own subclass before registering it:

    from rlcast.forecasting import check_forecaster
    check_forecaster(MyForecaster)    # raises RlcastError naming the class and the broken rule; returns the checks run

The rules (module docstring of `rlcast.forecasting.base`): the parameter rules of `rlcast.extrapolation.checks.check_params`
(constructible with no arguments, parameters stored unchanged, `get_params`, a `reference`, nothing learned before
`fit`, an unfitted copy through `make_forecaster`); `predict` before `fit` a one-line error; `fit(curve)` returns the
forecaster, sets only attributes ending in `_` (or private `_x`) and leaves the parameters alone; `predict(steps)`
returns a `Forecast` over exactly those steps (a central curve and `samples` or no sampled curves, finite, in [0, 1];
finite at step inf for a saturating one), is pure (twice: the same numbers, the forecaster unchanged) and
deterministic (a second fit predicts the same); a curve with too few points is a one-line RlcastError from `fit`.
"""

from __future__ import annotations

import numpy as np

from rlcast.extrapolation.checks import check_fit, check_params, expect_error, fail, state
from rlcast.forecasting.base import Forecast, Forecaster, make_forecaster
from rlcast.forecasting.curves import Curve

PROMPTS = 500


def synthetic_curve(seed: int = 0) -> Curve:
    """A run's curves as `read_curve(run, weights=True)` gives them, planted: held-out accuracy rising and levelling
    off (0.2 -> ~0.5 over 300 steps, scored every 20 steps on PROMPTS prompts with binomial noise), a training-reward
    log every 5 steps, and the rank-1 coefficients a(t) of two 2-D tensors moving along a line with the accuracy."""
    rng = np.random.default_rng(seed)
    steps = np.arange(0, 320, 20)
    true = 0.2 + 0.3 * (1 - np.exp(-steps / 120))
    accuracy = rng.binomial(PROMPTS, true) / PROMPTS
    reward_steps = np.arange(5, 305, 5, dtype=float)
    reward = 0.1 + 0.8 * (0.3 * (1 - np.exp(-reward_steps / 120))) + rng.normal(0, 0.01, len(reward_steps))
    after = tuple(int(s) for s in steps[1:])
    direction = {f"model.layers.0.mlp.{kind}.weight": rng.standard_normal(8) for kind in ("up_proj", "down_proj")}
    weights = {name: np.outer(np.array(after, dtype=float) / 300, d) + rng.normal(0, 1e-3, (len(after), 8))
               for name, d in direction.items()}
    return Curve("synthetic", steps, accuracy, np.sqrt(true * (1 - true) / PROMPTS), reward_steps, reward, "arith",
                 300, PROMPTS, weight_steps=after, weights=weights)


def check_forecaster(cls: type, curve: Curve | None = None, until: int | None = None,
                     params: dict | None = None) -> list[str]:
    """Run the estimator contract (module docstring) on the Forecaster subclass `cls`: the parameter rules on its
    defaults, the fits with `params` on top of them, on `curve` (default: `synthetic_curve()`) cut at `until` (default:
    its middle step), forecasting the steps after the cutoff up to the curve's last and twice that. Raises RlcastError
    naming the class and the first broken rule; returns the rules checked."""
    check_params(cls, Forecaster, make_forecaster)
    curve = synthetic_curve() if curve is None else curve
    until = int(curve.steps[len(curve.steps) // 2]) if until is None else until
    seen = curve.window(until)
    steps = np.array([s for s in curve.steps if s > until] + [2 * curve.last], dtype=float)
    forecaster = make_forecaster(cls(), **(params or {}))
    expect_error(cls, "predict before fit", lambda: forecaster.predict(steps))
    check_fit(cls, forecaster, seen, "curve")
    kept = state(forecaster)
    first = _forecast(cls, forecaster, steps)
    if state(forecaster) != kept:
        fail(cls, "predict is pure", "predict changed the forecaster's attributes")
    _compare(cls, "predict is deterministic", first, _forecast(cls, forecaster, steps))
    _compare(cls, "a second fit predicts the same", first,
             _forecast(cls, make_forecaster(forecaster).fit(seen), steps))
    if forecaster.saturating and not np.isfinite(forecaster.predict([np.inf]).center).all():
        fail(cls, "a saturating forecast is finite at step inf", "predict([inf]) is not finite")
    expect_error(cls, "a curve too short", lambda: make_forecaster(forecaster).fit(curve.window(0)))
    return ["parameters", "reference", "predict before fit", "fit returns self", "learned state ends in _",
            "predict returns a Forecast at the steps asked", "predict is pure", "predict is deterministic",
            "a second fit predicts the same", "bad input is one line"]


def _forecast(cls: type, forecaster: Forecaster, steps: np.ndarray) -> Forecast:
    """The forecast at `steps`, checked: a Forecast over exactly those steps, a central curve and `samples` (or no)
    sampled curves, finite, in [0, 1]."""
    out = forecaster.predict(steps)
    if not isinstance(out, Forecast):
        fail(cls, "predict returns a Forecast", f"got {type(out).__name__}")
    k = len(steps)
    if not np.array_equal(out.steps, steps) or out.center.shape != (k,) or out.paths.ndim != 2 \
            or out.paths.shape[1] != k or out.noise.shape != (k,):
        fail(cls, "predict returns a Forecast at the steps asked",
             f"steps {out.steps.shape}, center {out.center.shape}, paths {out.paths.shape}, noise {out.noise.shape} "
             f"for {k} steps")
    if len(out.paths) not in (0, getattr(forecaster, "samples", len(out.paths))):
        fail(cls, "predict samples `samples` curves", f"{len(out.paths)} sampled curves, samples="
                                                       f"{forecaster.samples}")
    values = np.concatenate([out.center, out.paths.ravel()])
    if not (np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()):
        fail(cls, "predict is a finite accuracy", "a value outside [0, 1] or not finite")
    return out


def _compare(cls: type, rule: str, a: Forecast, b: Forecast) -> None:
    if not (np.array_equal(a.center, b.center) and np.array_equal(a.paths, b.paths)
            and np.array_equal(a.noise, b.noise)):
        fail(cls, rule, "the forecasts differ")

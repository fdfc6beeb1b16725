"""The forecaster interface, its predictive distribution (`Forecast`) and the registry of forecasters.

A forecaster is a scikit-learn-style estimator of a run's held-out accuracy curve: hyper-parameters in `__init__`
(stored under the same names: `get_params()`), everything learned set by `fit(curve)` under names ending in `_`, and
`predict(steps)` pure, returning a `Forecast`: a central curve and `samples` sampled curves (noise-free accuracy;
one evaluation's noise is added by `Forecast.measured`). A forecaster that cannot use a curve (too few points, no
reward log, no weights) raises `RlcastError` from `fit` naming the run and what is missing.

Add your own: subclass `Forecaster`, implement `_fit(curve)` and `_curves(steps) -> (center, samples)`, set
`reference`, check it with `rlcast.forecasting.check_forecaster(MyForecaster)` and register it with
`@register("my-forecaster")` (or pass an instance wherever a forecaster is taken: `make_forecaster`,
`Combination(members=[...])`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from rlcast.errors import RlcastError
from rlcast.extrapolation.base import parameters
from rlcast.forecasting.curves import Curve
from rlcast.forecasting.knee import after_knee

LEVEL = 0.9  # the intervals everywhere: 90 %
MAX_POINTS = 200  # a fit sees at most this many held-out scores and as many rewards (`thinned`): cost flat in n


@dataclass
class Forecast:
    """Predictive distribution of the held-out accuracy at `steps`.

    `center` (k,) is the forecaster's central curve, `paths` (S, k) samples of the true accuracy curve (S = 0: a point
    forecast), `noise` (k,) the standard deviation of one evaluation at each step (the run's prompt count).
    """

    steps: np.ndarray
    center: np.ndarray
    paths: np.ndarray
    noise: np.ndarray
    seed: int = 0

    def measured(self) -> np.ndarray:
        """(S, k) samples of what a checkpoint evaluated at each step would score: paths plus evaluation noise
        (seeded; one normal draw per path, scaled by each step's noise, so the quantiles are smooth in the step; 400
        draws around the center for a point forecast)."""
        rng = np.random.default_rng(self.seed + 7919)
        paths = self.paths if len(self.paths) else np.repeat(self.center[None], 400, axis=0)
        return np.clip(paths + rng.standard_normal((len(paths), 1)) * self.noise, 0.0, 1.0)

    def interval(self, level: float = LEVEL, measured: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(median, low, high) per step: the central `level` interval of the measured (or the true) accuracy."""
        samples = self.measured() if measured or not len(self.paths) else self.paths
        q = np.quantile(samples, [0.5, (1 - level) / 2, (1 + level) / 2], axis=0)
        return q[0], q[1], q[2]

    def summary(self, i: int = -1, level: float = LEVEL) -> dict:
        """{"median", "low", "high"} at the step of index `i` (measured accuracy, `level` interval)."""
        med, low, high = self.interval(level)
        return {"median": float(med[i]), "low": float(low[i]), "high": float(high[i])}


class Forecaster:
    """Base class: parameters, the fit's checks and the predictive distribution.

    After `fit`: `curve_` (the curve it saw, already cut at the cutoff), then whatever `_fit` learns.
    """

    name = ""           # registry name (set by `register`)
    reference = ""      # where the forecaster comes from: its paper ("ScaleRL, arXiv 2510.13786"), or "rlcast"
    saturating = False  # True when the fitted curve has an asymptote (predict([inf]) is finite)
    min_points = 3      # held-out accuracies (the base's included) the fit needs
    reads_weights = False  # True when the fit needs `Curve.weights` (the checkpoints' rank-1 spectra)

    def __init__(self, samples: int = 200, seed: int = 0):
        self.samples = samples
        self.seed = seed

    def get_params(self) -> dict:
        return {p: getattr(self, p) for p in parameters(type(self))}

    def label(self) -> str:
        return self.name or type(self).__name__

    def fit(self, curve: Curve) -> "Forecaster":
        """Fit on every point of `curve` (cut at the cutoff with `curve.window(until)` beforehand)."""
        if len(curve.steps) < self.min_points:
            raise RlcastError(f"{self.label()}: {curve.run} has {len(curve.steps)} held-out accuracies up to step "
                              f"{curve.last if len(curve.steps) else 0}, this forecaster needs {self.min_points} "
                              f"(`rlcast eval {curve.run}` scores every checkpoint)")
        self.curve_ = curve = thinned(curve)
        self._fit(curve)
        return self

    def predict(self, steps) -> Forecast:
        """The predictive distribution at `steps` (any steps; inf is the asymptote of a saturating forecaster)."""
        if not hasattr(self, "curve_"):
            raise RlcastError(f"{self.label()}: call fit(curve) before predict(steps)")
        steps = np.atleast_1d(np.asarray(steps, dtype=float))
        center, paths = self._curves(steps)
        center, paths = np.clip(center, 0.0, 1.0), np.clip(paths, 0.0, 1.0)
        # a future checkpoint's noise: from the curve after its early jump (the jump is no checkpoint-to-checkpoint
        # swing)
        return Forecast(steps, center, paths, after_knee(self.curve_).noise(center), self.seed)

    def _fit(self, curve: Curve) -> None:
        """Learn from `curve` (override)."""

    def _curves(self, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(center (k,), sampled curves (S, k)) at `steps` (override; must not change the estimator)."""
        raise NotImplementedError


def thinned(curve: Curve, max_points: int = MAX_POINTS) -> Curve:
    """`curve` with at most `max_points` held-out scores after the base and as many rewards: consecutive points
    pooled into equal-count bins (mean score at the bin's median step, its noise that of the mean), so a fit costs
    the same on 10^5 points as on 200. The prompt count is kept, so a future checkpoint's noise stays one
    evaluation's; pooled scores drop the rank-1 weight paths (no checkpoint sits at a pooled step). A curve within
    the limits is returned as it is."""
    after = curve.steps > 0
    if after.sum() <= max_points and len(curve.reward) <= max_points:
        return curve
    prompts = curve.eval_prompts or curve._prompts_from_ci()

    def pool(steps, values, sd=None):
        if len(steps) <= max_points:
            return steps, values, sd
        bins = np.array_split(np.arange(len(steps)), max_points)
        at = np.array([steps[b[len(b) // 2]] for b in bins])
        mean = np.array([values[b].mean() for b in bins])
        noise = None if sd is None else np.array([np.sqrt((sd[b] ** 2).sum()) / len(b) for b in bins])
        return at, mean, noise

    steps, acc, sd = pool(curve.steps[after], curve.accuracy[after], curve.sd[after])
    base = ~after
    rsteps, reward, _ = pool(curve.reward_steps, curve.reward)
    return dataclasses.replace(curve, steps=np.concatenate([curve.steps[base], steps]),
                               accuracy=np.concatenate([curve.accuracy[base], acc]),
                               sd=np.concatenate([curve.sd[base], sd]), reward_steps=rsteps, reward=reward,
                               eval_prompts=int(round(prompts)) if prompts else None,
                               **({} if len(steps) == after.sum() else {"weights": None, "weight_steps": ()}))


FORECASTERS: dict[str, type[Forecaster]] = {}


def register(name: str):
    """Class decorator: add a Forecaster subclass to FORECASTERS under `name` (and set its `name`)."""
    def add(cls: type[Forecaster]) -> type[Forecaster]:
        if not (isinstance(cls, type) and issubclass(cls, Forecaster)):
            raise RlcastError(f"register({name!r}): {cls!r} is not a Forecaster subclass")
        cls.name = name
        FORECASTERS[name] = cls
        return cls
    return add


def make_forecaster(spec: str | Forecaster, **params) -> Forecaster:
    """An unfitted forecaster: FORECASTERS[spec](**params), or a fresh copy of an instance with `params` changed."""
    if isinstance(spec, Forecaster):
        cls, params = type(spec), {**spec.get_params(), **params}
    elif spec in FORECASTERS:
        cls = FORECASTERS[spec]
    else:
        raise RlcastError(f"unknown forecaster {spec!r}: choose from {', '.join(FORECASTERS)}")
    accepted = parameters(cls)
    unknown = [k for k in params if k not in accepted]
    if unknown:
        raise RlcastError(f"forecaster {cls.name or cls.__name__} has no parameter {unknown[0]!r} "
                          f"(it takes {', '.join(sorted(accepted))})")
    return cls(**params)

"""Who goes on at a rung of a successive-halving sweep: the forecast-driven scheduler, ASHA on the current score, the
median-stopping rule and random search.

A scheduler sees the trials that reached rung k (their curves revealed up to that rung only, on the generation-batch
axis) and returns the ones to stop, each with why. Every decision is synchronous (all trials of a rung are compared
together, whatever order they finished in) and seeded, so the embedded engine, any number of workers and Ray Tune
take the same decisions. `keep` is a fraction of the rung's trials (at least one is kept) or, to compare schedulers at
equal compute, the count to keep at each rung.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from rlcast.errors import RlcastError, check_number
from rlcast.forecasting import LEVEL, FORECASTERS, make_forecaster

FINAL_POINTS = 3  # a trial's score at the end: the mean of its last 3 checkpoints (one checkpoint is noisy)
# The defaults of `rlcast tune` and `Sweep`, chosen by bench/tune.py on tuning seed 100 (docs/results/tune/tune.json):
# of its 90 settings the lowest regret among those spending <= 1/3 of the full sweep: the sigmoid forecaster, 0.2 of
# a rung's trials kept, rungs at 1/15 and 1/5 of the budget (20 and 60 of 300 generation batches), 0.15 of the sweep.
FORECASTER = "sigmoid"
KEEP = 0.2
RUNG_FRACTIONS = (1 / 15, 1 / 5)


def final_score(points: Sequence[tuple]) -> float:
    """Mean held-out accuracy of the last FINAL_POINTS points after the base (batch 0)."""
    trained = [p[1] for p in points if p[0] > 0] or [p[1] for p in points]
    return float(np.mean(trained[-FINAL_POINTS:]))


def _check_keep(keep) -> float | tuple[int, ...]:
    if isinstance(keep, (list, tuple)):
        if not keep or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in keep):
            raise RlcastError(f"keep {list(keep)!r}: expected a count >= 1 per rung")
        return tuple(keep)
    check_number(keep, "keep", 0, 1, above=True)
    return float(keep)


class Scheduler:
    """Base class: `admit` the trials that start (all), then `decide` at each rung which of them stop."""

    name = ""

    def __init__(self, keep: float | Sequence[int] = KEEP):
        self.keep = _check_keep(keep)

    def settings(self) -> dict:
        return {"scheduler": self.name, "keep": list(self.keep) if isinstance(self.keep, tuple) else self.keep}

    def count(self, rung: int, n: int) -> int:
        """How many of the `n` trials at rung index `rung` go on."""
        if isinstance(self.keep, tuple):
            return min(n, self.keep[min(rung, len(self.keep) - 1)])
        return min(n, max(1, math.ceil(self.keep * n - 1e-9)))

    def admit(self, trials: list, sweep) -> list:
        return list(trials)

    def decide(self, rung: int, trials: list, sweep) -> dict[str, str]:
        """{trial id: why it stops} for the trials (all at rung index `rung`) that do not go on."""
        raise NotImplementedError


def _ranked(trials: list, key, count: int, what) -> dict[str, str]:
    """Stop all but the `count` best by `key` (ties broken by grid order); `what(trial, place)` says why."""
    order = sorted(trials, key=lambda t: (-key(t), t.index))
    return {t.id: what(t, place + 1) for place, t in enumerate(order) if place >= count}


class ForecastScheduler(Scheduler):
    """Keeps the trials whose forecast of the final accuracy can still win: the upper end of a trial's `level`
    interval at the budget must reach the lower end of the leader's (the trial with the highest lower end); of
    those, at most the keep count, by forecast median. A curve the forecaster cannot fit (too few points) is
    forecast by its current score, with one evaluation's noise as its interval."""

    name = "forecast"

    def __init__(self, forecaster: str = FORECASTER, keep: float | Sequence[int] = KEEP, level: float = LEVEL):
        super().__init__(keep)
        if forecaster not in FORECASTERS:
            raise RlcastError(f"forecaster {forecaster!r}: choose from {', '.join(FORECASTERS)}")
        check_number(level, "level", 0, 1, above=True)
        self.forecaster, self.level = forecaster, level

    def settings(self) -> dict:
        return {**super().settings(), "forecaster": self.forecaster, "level": self.level}

    def forecast(self, trial, rung: int, sweep) -> dict:
        """{"median", "low", "high", "by"} of the trial's accuracy at the budget, from its curve up to `rung`."""
        curve = sweep.curve(trial, sweep.rungs[rung])
        try:
            model = make_forecaster(self.forecaster, seed=sweep.seed).fit(curve)
            med, low, high = model.predict([sweep.budget]).interval(self.level)
            return {"median": float(med[0]), "low": float(low[0]), "high": float(high[0]), "by": self.forecaster}
        except RlcastError:
            score = float(np.mean(curve.accuracy[-FINAL_POINTS:]))
            z = NormalDist().inv_cdf((1 + self.level) / 2)
            sd = float(curve.noise(np.array([score]))[0])
            return {"median": score, "low": score - z * sd, "high": score + z * sd, "by": "current score"}

    def decide(self, rung: int, trials: list, sweep) -> dict[str, str]:
        forecasts = {t.id: self.forecast(t, rung, sweep) for t in trials}
        for t in trials:
            t.forecasts.append({"rung": sweep.rungs[rung], **forecasts[t.id]})
        leader = max(trials, key=lambda t: (forecasts[t.id]["low"], -t.index))
        bar = forecasts[leader.id]["low"]
        stop = {t.id: (f"forecast {_fmt(forecasts[t.id])} cannot reach the leader's lower bound {bar:.3f} "
                       f"({leader.name})") for t in trials if forecasts[t.id]["high"] < bar}
        alive = [t for t in trials if t.id not in stop]
        count = self.count(rung, len(trials))
        stop |= _ranked(alive, lambda t: forecasts[t.id]["median"], count,
                        lambda t, place: f"forecast {_fmt(forecasts[t.id])} ranked {place} of {len(alive)} that "
                                         f"can still win; {count} go on")
        return stop


class ASHA(Scheduler):
    """Successive halving on the current score (Ray Tune's ASHAScheduler's rule: the last reported accuracy),
    keeping the top `keep` of each rung."""

    name = "asha"

    def decide(self, rung: int, trials: list, sweep) -> dict[str, str]:
        until, count = sweep.rungs[rung], self.count(rung, len(trials))
        score = {t.id: t.revealed(until)[-1][1] for t in trials}
        return _ranked(trials, lambda t: score[t.id], count,
                       lambda t, place: f"current score {score[t.id]:.3f} ranked {place} of {len(trials)}; "
                                        f"{count} go on")


class MedianStopping(Scheduler):
    """The median-stopping rule (Ray Tune's MedianStoppingRule, Optuna's MedianPruner): a trial stops when its best
    score so far is below the median of the other trials' running means up to the same rung. `keep` is not used:
    the rule decides how many go on."""

    name = "median"

    def __init__(self):
        super().__init__(1.0)

    def settings(self) -> dict:
        return {"scheduler": self.name}

    def decide(self, rung: int, trials: list, sweep) -> dict[str, str]:
        until = sweep.rungs[rung]
        mean = {t.id: float(np.mean([p[1] for p in t.revealed(until) if p[0] > 0] or [0.0])) for t in trials}
        best = {t.id: max(p[1] for p in t.revealed(until)) for t in trials}
        stop = {}
        for t in trials:
            others = [mean[o.id] for o in trials if o is not t]
            if others and best[t.id] < float(np.median(others)):
                stop[t.id] = (f"best score {best[t.id]:.3f} below the others' median running mean "
                              f"{np.median(others):.3f}")
        return stop


class RandomSearch(Scheduler):
    """Random search: `keep` of the grid (a fraction, or a count as the first entry of a list) drawn with the
    sweep's seed, each trained to the budget; nothing is stopped early."""

    name = "random"

    def admit(self, trials: list, sweep) -> list:
        count = self.count(0, len(trials))
        chosen = random.Random(sweep.seed).sample(range(len(trials)), count)
        return [t for i, t in enumerate(trials) if i in chosen]

    def decide(self, rung: int, trials: list, sweep) -> dict[str, str]:
        return {}


SCHEDULERS = {"forecast": ForecastScheduler, "asha": ASHA, "median": MedianStopping, "random": RandomSearch}


def make_scheduler(spec: str | Scheduler, **params) -> Scheduler:
    """A scheduler by name (forecast, asha, median, random) with its settings, or the given instance."""
    if isinstance(spec, Scheduler):
        return spec
    if spec not in SCHEDULERS:
        raise RlcastError(f"unknown scheduler {spec!r}; known: {', '.join(SCHEDULERS)}")
    cls = SCHEDULERS[spec]
    accepted = {"forecast": ("forecaster", "keep", "level"), "asha": ("keep",), "median": (),
                "random": ("keep",)}[spec]
    unknown = [k for k, v in params.items() if v is not None and k not in accepted]
    if unknown:
        raise RlcastError(f"scheduler {spec} has no setting {unknown[0]!r} (it takes {', '.join(accepted) or 'none'})")
    return cls(**{k: v for k, v in params.items() if v is not None})


def _fmt(forecast: dict) -> str:
    return f"{forecast['median']:.3f} [{forecast['low']:.3f}, {forecast['high']:.3f}]"

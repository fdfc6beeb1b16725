"""The combination: forecasters weighted by a rolling-origin back-test on the run's own past.

On the curve up to the cutoff, for earlier checkpoints t (from the `min_origin`-th on, and from the third after the
early jump's knee, `knee.knee`: origins inside the jump say nothing of the creep after it; at most MAX_ORIGINS of
them, evenly spread) every member is fitted on the points up to t and scored at later checkpoints j up to the cutoff (at
most MAX_SCORED, the cutoff's included; where it can fit that early); nothing after the cutoff is read, so the weights
are never chosen with the future of the run. With fits on at most `base.MAX_POINTS` pooled points, the back-test
costs the same at 10^3 or 10^5 checkpoints (bench/forecast_scale.py).

Error model: a forecast made at t for step j misses by N(0, sd_j^2 + s^2 h^2), h = log(j / t)^`growth` (sd_j the
scored checkpoint's own noise): s is how fast a forecaster's error grows with the horizon. Each member's s is the
posterior mode on its back-test errors under a scaled inverse-chi-square prior (`s_prior`, `s_strength`
pseudo-errors), so a member scored on few short horizons stays near the prior instead of looking perfect. Its
weight is s^(-2 `power`) (`power` 1: inverse expected squared error at any horizon; 0: equal weights), normalised.
Defaults (`power` 2, `s_strength` 3) were chosen on the testbed's tuning seeds (100, 101) by the mean interval
score of the 90 % intervals; `s_prior` 0.02 (was 0.05) and the members on the tuning set of issue 29 (testbed seed
100 and two of the three verl logs, bench/forecast.py): with 0.05 the real logs' 90 % intervals were 0.2-0.27 wide
for errors of 0.01. The combined curve is the weighted mean of the members' central curves, unless one member's
back-test beat it (`select`, `chosen_`): then that member's.

Interval, calibrated on the same back-test: the combination's own errors (where every member forecast) give its s
the same way; at step T past the cutoff c its sd is sqrt(max(boot, (s h_T)^2) + `spread` * D), h_T = log(T / c)^growth,
boot the members' own bootstrap variance and D their disagreement around the center at T, weighted by the
back-test's weights even when one member was chosen. Its asymptote
(step inf) mixes the saturating members' asymptotes by their weights.
"""

from __future__ import annotations

import numpy as np

from rlcast.errors import RlcastError
from rlcast.forecasting.base import Forecaster, make_forecaster, register
from rlcast.forecasting.curves import Curve
from rlcast.forecasting.knee import knee

# "no further gain" and the recent slope's ceiling (rlcast.forecasting.recent) beside the curve fits: on real runs the
# fits read the answer-format jump as the trend and the back-test (origins after the jump) weights them down; on the
# testbed's steady climb they carry the forecast (issue 29; bench/forecast.py)
MEMBERS = ("flat", "ceiling", "sigmoid", "power", "reward")
MAX_ORIGINS = 12   # back-test origins at most (evenly spread over the checkpoints): cost flat in the points
MAX_SCORED = 12    # later checkpoints scored per origin at most (evenly spread, the cutoff's always)
# fitted and back-tested alongside, weight 0: AlphaRL's forecast is a line in the step, which short back-test
# horizons cannot tell from a curve (on the tuning seeds it overshoots the final by 0.10 from 20 % of the run);
# log-linear never saturates and dragged the combination down (tuning runs: combined MAE 0.031 with it, 0.028
# without, interval score 0.218 vs 0.198; the benchmark's 17 runs had shown mae_40 0.053 for it alone)
ALONGSIDE = ("log-linear", "alpharl")


@register("combined")
class Combination(Forecaster):
    """Members (names or Forecaster instances) weighted by their back-test on the curve's own past; `alongside`
    forecasters are fitted and back-tested the same way but get weight 0 (shown, not combined).

    After `fit`: `members_` {label: fitted forecaster}, `reasons_` {label: why it could not fit}, `backtest_`
    {label: {"pairs": [(origin, step)], "errors": array}}, `growth_` {label: s}, `weights_`, `s_` (the
    combination's error growth), `mse_` {label or "combined": back-test mean squared error on the pairs every
    weighted member forecast} and `chosen_` ("combined", or the one member whose back-test beat the weighted mean:
    then it alone carries the weight, so the combination is never worse than its best member on its own past;
    `mixture_` keeps the back-test's weights, whose members' disagreement still widens the interval).
    """

    reference = "rlcast"
    saturating = True

    def __init__(self, members=MEMBERS, alongside=ALONGSIDE, min_origin: int = 3, power: float = 2.0, growth: float = 1.0,
                 s_prior: float = 0.02, s_strength: float = 3.0, spread: float = 1.0, select: bool = True,
                 samples: int = 400, seed: int = 0):
        super().__init__(samples, seed)
        self.members, self.alongside = tuple(members), tuple(alongside)
        self.min_origin, self.power, self.growth = min_origin, power, growth
        self.s_prior, self.s_strength, self.spread, self.select = s_prior, s_strength, spread, select

    def _fit(self, curve: Curve) -> None:
        self.members_, self.reasons_, self.shown_ = {}, {}, set()
        for spec in self.members + self.alongside:
            member = make_forecaster(spec, seed=self.seed)
            try:
                self.members_[member.label()] = member.fit(curve)
            except RlcastError as err:
                self.reasons_[member.label()] = str(err)
            if spec in self.alongside:
                self.shown_.add(member.label())
        if not set(self.members_) - self.shown_:
            raise RlcastError(f"{self.label()}: no forecaster could fit {curve.run} up to step {curve.last}: "
                              + "; ".join(self.reasons_.values()))
        self.backtest_ = {k: self._backtest(curve, m) for k, m in self.members_.items()}
        self._calibrate(curve)

    def _calibrate(self, curve: Curve) -> None:
        """Weights and error growth from the back-test (`backtest_`): no refit."""
        self.growth_ = {k: self._growth(curve, b["pairs"], b["errors"]) for k, b in self.backtest_.items()}
        raw = {k: 0.0 if k in self.shown_ else s ** (-2 * self.power) for k, s in self.growth_.items()}
        self.weights_ = {k: v / sum(raw.values()) for k, v in raw.items()}
        self.mixture_ = dict(self.weights_)  # the back-test's weights, kept for the interval when one member is chosen
        weighted = [k for k in self.weights_ if self.weights_[k]]
        lookup = {k: dict(zip(self.backtest_[k]["pairs"], self.backtest_[k]["errors"])) for k in weighted}
        pairs = sorted(set.intersection(*(set(lookup[k]) for k in weighted)))
        errors = {k: np.array([lookup[k][p] for p in pairs]) for k in weighted}
        combined = sum(self.weights_[k] * errors[k] for k in weighted)
        self.mse_ = {k: float(np.mean(e ** 2)) if pairs else float("nan") for k, e in errors.items()}
        self.mse_["combined"] = float(np.mean(combined ** 2)) if pairs else float("nan")
        best = min(weighted, key=lambda k: self.mse_[k])
        self.chosen_ = "combined"
        if self.select and pairs and self.mse_[best] < self.mse_["combined"]:
            self.chosen_, combined = best, errors[best]
            self.weights_ = {k: float(k == best) for k in self.weights_}
        self.s_ = self._growth(curve, pairs, combined)

    def _backtest(self, curve: Curve, member: Forecaster) -> dict:
        """(origin, scored step) pairs and the errors there, the member fitted up to each origin only."""
        checkpoints = curve.steps[curve.steps > 0].astype(int)
        first = max(self.min_origin - 1, int(np.searchsorted(checkpoints, knee(curve))) + 2)
        if first >= len(checkpoints) - 1:  # too few checkpoints after the knee: back-test from the earliest origin
            first = self.min_origin - 1
        pairs, errors = [], []
        for origin in _spread(checkpoints[first:-1], MAX_ORIGINS):
            later = np.flatnonzero(curve.steps > origin)
            later = later[_spread(np.arange(len(later))[::-1], MAX_SCORED)][::-1]  # the cutoff's always scored
            try:
                pred = make_forecaster(member, samples=0).fit(curve.window(origin)).predict(curve.steps[later])
            except RlcastError:
                continue  # cannot fit this early (too few points, rewards or weights)
            pairs += [(int(origin), int(j)) for j in curve.steps[later]]
            errors.extend(pred.center - curve.accuracy[later])
        return {"pairs": pairs, "errors": np.array(errors)}

    def _growth(self, curve: Curve, pairs: list, errors: np.ndarray) -> float:
        sd = {int(s): float(d) if np.isfinite(d) else 0.0 for s, d in zip(curve.steps, curve.sd)}
        horizon = np.array([np.log(j / t) ** self.growth for t, j in pairs])
        return growth_rate(np.asarray(errors, dtype=float), horizon, np.array([sd[j] for _, j in pairs]),
                           self.s_prior, self.s_strength)

    def _curves(self, steps):
        finite = np.isfinite(steps)
        center, paths = np.zeros(len(steps)), np.zeros((self.samples, len(steps)))
        if finite.any():
            center[finite], paths[:, finite] = self._finite(steps[finite])
        if (~finite).any():
            center[~finite], paths[:, ~finite] = self._asymptote(int((~finite).sum()))
        return center, paths

    def _finite(self, steps):
        at = np.append(steps, self.curve_.last)  # the cutoff's own sd last: the level's error now
        preds = {k: m.predict(at) for k, m in self.members_.items() if self.mixture_[k]}
        center = sum(self.weights_[k] * p.center for k, p in preds.items())
        boot = sum(self.weights_[k] * _robust_var(p.paths) for k, p in preds.items())
        # the members' disagreement around the center, by the back-test's weights even when one member was chosen: the
        # choice on short back-test horizons is no certainty at the forecast's horizon
        spread = sum(self.mixture_[k] * (p.center - center) ** 2 for k, p in preds.items())
        horizon = np.log(np.maximum(at, self.curve_.last) / self.curve_.last) ** self.growth
        sd = np.sqrt(np.maximum(boot, (self.s_ * horizon) ** 2) + self.spread * spread)
        # a path = the level's error at the cutoff (one draw shared by every step) + the error the horizon adds (its
        # own draw): the gain from the cutoff then spreads by the added part, not by the difference of two sds
        level = np.minimum(sd, sd[-1])[:-1]
        sd, center = sd[:-1], center[:-1]
        z = np.random.default_rng(self.seed + 1).standard_normal((2, self.samples))
        return center, center[None] + z[0][:, None] * level[None] + z[1][:, None] * np.sqrt(sd ** 2 - level ** 2)[None]

    def _asymptote(self, k):
        """Center and paths at step inf: the saturating members' asymptotes mixed by their renormalised weights."""
        sat = {n: w for n, w in self.weights_.items() if w and self.members_[n].saturating}
        if not sat:
            return np.full(k, np.nan), np.full((self.samples, k), np.nan)
        total = sum(sat.values())
        preds = {n: self.members_[n].predict([np.inf]) for n in sat}
        center = sum(w / total * preds[n].center[0] for n, w in sat.items())
        rng = np.random.default_rng(self.seed + 2)
        names = list(sat)
        pick = rng.choice(len(names), size=self.samples, p=[sat[n] / total for n in names])
        draws = np.empty(self.samples)
        for i, n in enumerate(names):
            own = preds[n].paths[:, 0] if len(preds[n].paths) else preds[n].center
            mask = pick == i
            draws[mask] = rng.choice(own, size=int(mask.sum()))
        return np.full(k, center), np.repeat(draws[:, None], k, axis=1)


def _spread(values: np.ndarray, most: int) -> np.ndarray:
    """At most `most` of `values`, evenly spread by position (the first and the last kept): all when fewer."""
    if len(values) <= most:
        return values
    return values[np.unique(np.linspace(0, len(values) - 1, most).round().astype(int))]


def _robust_var(paths: np.ndarray) -> np.ndarray:
    """Per step, the variance of the sampled curves from their central 90 % (a few wild refits do not dominate)."""
    if len(paths) < 2:
        return np.zeros(paths.shape[1])
    q = np.quantile(paths, [0.05, 0.95], axis=0)
    return ((q[1] - q[0]) / 3.29) ** 2


def growth_rate(errors: np.ndarray, horizon: np.ndarray, sd: np.ndarray, s0: float, strength: float) -> float:
    """Posterior mode of s in errors ~ N(0, sd^2 + s^2 horizon^2), prior s^2 ~ scaled-inv-chi2(strength, s0^2)
    (on a grid from 1e-4 to 0.5; the prior's mode alone without errors)."""
    grid = np.linspace(1e-4, 0.5, 2000)
    v = sd[None] ** 2 + (grid[:, None] * horizon[None]) ** 2
    loglik = -0.5 * (np.log(np.maximum(v, 1e-12)) + errors[None] ** 2 / np.maximum(v, 1e-12)).sum(1)
    s2 = grid ** 2
    logprior = -(strength / 2 + 1) * np.log(s2) - strength * s0 ** 2 / (2 * s2) if strength else 0.0
    return float(grid[np.argmax(loglik + logprior)])

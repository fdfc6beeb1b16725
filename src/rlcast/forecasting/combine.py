"""The combination: forecasters weighted by a rolling-origin back-test on the run's own past.

On the curve up to the cutoff, for every earlier checkpoint t (from the `min_origin`-th on) every member is fitted on
the points up to t and scored at every later checkpoint j up to the cutoff (where it can fit that early); nothing
after the cutoff is read, so the weights are never chosen with the future of the run.

Error model: a forecast made at t for step j misses by N(0, sd_j^2 + s^2 h^2), h = log(j / t)^`growth` (sd_j the
scored checkpoint's own noise): s is how fast a forecaster's error grows with the horizon. Each member's s is the
posterior mode on its back-test errors under a scaled inverse-chi-square prior (`s_prior`, `s_strength`
pseudo-errors), so a member scored on few short horizons stays near the prior instead of looking perfect. Its
weight is s^(-2 `power`) (`power` 1: inverse expected squared error at any horizon; 0: equal weights), normalised.
Defaults (`power` 2, `s_prior` 0.05, `s_strength` 3) were chosen on the tuning runs of `bench/forecast.py` (seeds
100 and 101, lr 3e-5 and 1.2e-4 with 2 steps per batch) by the mean interval score of the 90 % intervals over a grid
of s_prior {0.03, 0.05} x s_strength {1, 3} x power {1, 2}: 0.218 (coverage 0.88) against 0.267 (coverage 0.75) for
the earlier 1 / 0.03 / 3.
The combined curve is the weighted mean of the members' central curves.

Interval, calibrated on the same back-test: the combination's own errors (where every member forecast) give its s
the same way; at step T past the cutoff c its sd is sqrt(max(boot, (s h_T)^2) + `spread` * D), h_T = log(T / c)^growth,
boot the members' own bootstrap variance and D their weighted disagreement at T (both weighted). Its asymptote
(step inf) mixes the saturating members' asymptotes by their weights.
"""

from __future__ import annotations

import numpy as np

from rlcast.errors import RlcastError
from rlcast.forecasting.base import Forecaster, make_forecaster, register
from rlcast.forecasting.curves import Curve

MEMBERS = ("sigmoid", "power", "reward")
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
    {label: {"pairs": [(origin, step)], "errors": array}}, `growth_` {label: s}, `weights_`, and `s_` (the
    combination's error growth).
    """

    saturating = True

    def __init__(self, members=MEMBERS, alongside=ALONGSIDE, min_origin: int = 3, power: float = 2.0, growth: float = 1.0,
                 s_prior: float = 0.05, s_strength: float = 3.0, spread: float = 1.0, samples: int = 400,
                 seed: int = 0):
        super().__init__(samples, seed)
        self.members, self.alongside = tuple(members), tuple(alongside)
        self.min_origin, self.power, self.growth = min_origin, power, growth
        self.s_prior, self.s_strength, self.spread = s_prior, s_strength, spread

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
        common = set.intersection(*(set(b["pairs"]) for k, b in self.backtest_.items() if self.weights_[k]))
        pairs = sorted(common)
        combined = np.array([sum(self.weights_[k] * b["errors"][b["pairs"].index(p)]
                                 for k, b in self.backtest_.items() if self.weights_[k]) for p in pairs])
        self.s_ = self._growth(curve, pairs, combined)

    def _backtest(self, curve: Curve, member: Forecaster) -> dict:
        """(origin, scored step) pairs and the errors there, the member fitted up to each origin only."""
        checkpoints = [int(s) for s in curve.steps if s > 0]
        pairs, errors = [], []
        for origin in checkpoints[self.min_origin - 1:-1]:
            later = curve.steps > origin
            try:
                pred = make_forecaster(member, samples=0).fit(curve.window(origin)).predict(curve.steps[later])
            except RlcastError:
                continue  # cannot fit this early (too few points, rewards or weights)
            pairs += [(origin, int(j)) for j in curve.steps[later]]
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
        preds = {k: m.predict(steps) for k, m in self.members_.items() if self.weights_[k]}
        center = sum(self.weights_[k] * p.center for k, p in preds.items())
        boot = sum(self.weights_[k] * _robust_var(p.paths) for k, p in preds.items())
        spread = sum(self.weights_[k] * (p.center - center) ** 2 for k, p in preds.items())
        horizon = np.log(np.maximum(steps, self.curve_.last) / self.curve_.last) ** self.growth
        sd = np.sqrt(np.maximum(boot, (self.s_ * horizon) ** 2) + self.spread * spread)
        z = np.random.default_rng(self.seed + 1).standard_normal(self.samples)
        return center, center[None] + z[:, None] * sd[None]

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

"""The combination: forecasters weighted by a rolling-origin back-test on the run's own past.

On the curve up to the cutoff, for every earlier checkpoint t (from the `min_origin`-th on) every member is fitted on
the points up to t and scored at every later checkpoint t + h up to the cutoff; nothing after the cutoff is read,
so the weights are never chosen with the future of the run. A member's score is its mean squared error, each error
weighted by log((t + h) / t) (the long horizons matter most); its weight is score^-`power`, normalised (0: equal
weights). The combined curve is the weighted mean of the members' central curves.

Interval, calibrated on the same back-test: the combination's own back-test error at horizon ratio r is modelled as
N(0, sd_j^2 + s^2 log(r)^2) (sd_j the scored checkpoint's own noise), and s is the posterior mode with a scaled
inverse-chi-square prior (`s_prior`, `s_strength` pseudo-errors) so that a few short back-test horizons cannot make it
vanish; at step T past the cutoff c, the combined curve's sd is the larger of s log(T / c) and the members' own
bootstrap sd (weighted). Its asymptote (step inf) mixes the saturating members' asymptotes by their weights.
"""

from __future__ import annotations

import numpy as np

from rlcast.errors import RlcastError
from rlcast.forecasting.base import Forecaster, make_forecaster, register
from rlcast.forecasting.curves import Curve

MEMBERS = ("sigmoid", "power", "log-linear", "reward", "alpharl")


@register("combined")
class Combination(Forecaster):
    """Members (names or Forecaster instances) weighted by their back-test on the curve's own past.

    After `fit`: `members_` {label: fitted forecaster}, `reasons_` {label: why it could not fit}, `weights_`,
    `scores_` (weighted back-test MSE), `backtest_` (origin, step, label -> error rows), `s_` (error growth per
    log-horizon).
    """

    saturating = True

    def __init__(self, members=MEMBERS, min_origin: int = 3, power: float = 1.0, s_prior: float = 0.03,
                 s_strength: float = 3.0, samples: int = 400, seed: int = 0):
        super().__init__(samples, seed)
        self.members, self.min_origin, self.power = tuple(members), min_origin, power
        self.s_prior, self.s_strength = s_prior, s_strength

    def _fit(self, curve: Curve) -> None:
        self.members_, self.reasons_ = {}, {}
        for spec in self.members:
            member = make_forecaster(spec, seed=self.seed)
            try:
                self.members_[member.label()] = member.fit(curve)
            except RlcastError as err:
                self.reasons_[member.label()] = str(err)
        if not self.members_:
            raise RlcastError(f"{self.label()}: no forecaster could fit {curve.run} up to step {curve.last}: "
                              + "; ".join(self.reasons_.values()))
        specs = {m.label(): m for m in self.members_.values()}
        pairs, errors = self._backtest(curve, specs)
        self.backtest_ = {"pairs": pairs, "errors": errors}
        if pairs:
            horizon = np.log([j / t for t, j in pairs])
            self.scores_ = {k: float((horizon * e ** 2).sum() / horizon.sum()) for k, e in errors.items()}
            raw = {k: max(v, 1e-8) ** -self.power for k, v in self.scores_.items()}
        else:
            self.scores_, raw = {k: None for k in specs}, {k: 1.0 for k in specs}
        total = sum(raw.values())
        self.weights_ = {k: v / total for k, v in raw.items()}
        combined = sum(self.weights_[k] * errors[k] for k in specs) if pairs else np.zeros(0)
        sd = np.array([_sd_at(curve, j) for _, j in pairs])
        self.s_ = _growth(combined, np.log([j / t for t, j in pairs]) if pairs else np.zeros(0), sd,
                          self.s_prior, self.s_strength)

    def _backtest(self, curve: Curve, specs: dict) -> tuple[list, dict]:
        """(origin step, scored step) pairs and, per member, the errors there: fitted up to the origin only."""
        checkpoints = [int(s) for s in curve.steps if s > 0]
        origins = checkpoints[self.min_origin - 1:-1]
        pairs, errors = [], {k: [] for k in specs}
        for origin in origins:
            past = curve.window(origin)
            later = curve.steps[curve.steps > origin]
            truth = curve.accuracy[curve.steps > origin]
            try:
                preds = {k: make_forecaster(m, samples=0).fit(past).predict(later).center for k, m in specs.items()}
            except RlcastError:
                continue  # a member cannot fit this early: the origin is scored for none (comparable scores)
            pairs += [(origin, int(j)) for j in later]
            for k in specs:
                errors[k].extend(preds[k] - truth)
        return pairs, {k: np.array(v) for k, v in errors.items()}

    def _curves(self, steps):
        finite = np.isfinite(steps)
        center, paths = np.zeros(len(steps)), np.zeros((self.samples, len(steps)))
        if finite.any():
            center[finite], paths[:, finite] = self._finite(steps[finite])
        if (~finite).any():
            center[~finite], paths[:, ~finite] = self._asymptote(int((~finite).sum()))
        return center, paths

    def _finite(self, steps):
        preds = {k: m.predict(steps) for k, m in self.members_.items()}
        center = sum(self.weights_[k] * p.center for k, p in preds.items())
        boot = sum(self.weights_[k] * (p.paths.var(0) if len(p.paths) > 1 else 0.0) for k, p in preds.items())
        with np.errstate(divide="ignore"):
            horizon = np.log(np.maximum(steps, self.curve_.last) / self.curve_.last)
        sd = np.sqrt(np.maximum(boot, (self.s_ * horizon) ** 2))
        z = np.random.default_rng(self.seed + 1).standard_normal(self.samples)
        return center, center[None] + z[:, None] * sd[None]

    def _asymptote(self, k):
        """Center and paths at step inf: the saturating members' asymptotes mixed by their renormalised weights."""
        sat = {n: w for n, w in self.weights_.items() if self.members_[n].saturating}
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


def _sd_at(curve: Curve, step: int) -> float:
    sd = float(curve.sd[list(curve.steps).index(step)])
    return sd if np.isfinite(sd) else 0.0


def _growth(errors: np.ndarray, horizon: np.ndarray, sd: np.ndarray, s0: float, strength: float) -> float:
    """Posterior mode of s in errors ~ N(0, sd^2 + s^2 horizon^2), prior s^2 ~ scaled-inv-chi2(strength, s0^2)."""
    grid = np.linspace(1e-4, 0.3, 600)
    v = sd[None] ** 2 + (grid[:, None] * horizon[None]) ** 2
    loglik = -0.5 * (np.log(np.maximum(v, 1e-12)) + errors[None] ** 2 / np.maximum(v, 1e-12)).sum(1)
    s2 = grid ** 2
    logprior = -(strength / 2 + 1) * np.log(s2) - strength * s0 ** 2 / (2 * s2) if strength else 0.0
    return float(grid[np.argmax(loglik + logprior)])

"""Curve fits of the held-out accuracy (and of the training reward) against the step, with bootstrap intervals.

    sigmoid     ScaleRL's saturating curve in compute: R(C) = A - (A - R0) / (1 + (C / C_mid)^B)
    power       R(C) = R0 + g (C / C_last)^b
    log-linear  R(C) = a + b log C                    (checkpoints after the base only)
    reward      the power law (or the sigmoid) on the training-reward log (denser, less noisy per point than the
                held-out scores), mapped to held-out accuracy by a line fitted on the checkpoints (the fitted reward)

Every family is linear in two coefficients once its shape parameters are fixed (R0 and A for the sigmoid, given
C_mid and B), so a fit is a weighted least-squares solve at every point of a grid over the shape parameters
(variable projection; no local minima, no scipy), the coefficients kept in their box ([0, 1] for accuracies), and the
best grid point per curve, plus the shape priors. Weights are 1 / sd^2 from each checkpoint's own binomial noise (its
95 % interval in run.json), inflated by the residuals when they scatter more (a factor kappa >= 1), or estimated from
the residuals when unknown (the reward log). Intervals come from a parametric bootstrap: `samples` curves refitted on
the fitted curve plus fresh noise of that size, all at once (the grid solves are batched over the samples).
Step axes are rescaled by the last step of the fitted window, so the shape priors do not depend on the step unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlcast.errors import RlcastError
from rlcast.forecasting.base import Forecaster, register
from rlcast.forecasting.curves import Curve


class Family:
    """A curve family y = c0 d0(x; theta) + c1 d1(x; theta): a box and a Gaussian prior on the coefficients, a grid
    over the shape theta (the product of `axes`, evenly spaced) and a Gaussian prior on one shape parameter
    (`shape_prior`: (index, mean, sd); sd 0 = flat)."""

    def __init__(self, axes=(), lo=(-np.inf, -np.inf), hi=(np.inf, np.inf), prior_mean=(0.0, 0.0),
                 prior_prec=(0.0, 0.0), shape_prior=(0, 0.0, 0.0)):
        self.axes = [np.asarray(a, dtype=float) for a in axes]
        self.grid = np.stack(np.meshgrid(*self.axes, indexing="ij"), -1).reshape(-1, len(self.axes)) if axes else \
            np.zeros((1, 0))
        self.lo, self.hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
        self.prior_mean, self.prior_prec = np.asarray(prior_mean, dtype=float), np.asarray(prior_prec, dtype=float)
        self.shape_prior = shape_prior

    def design(self, xs: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """(G, n, 2) design at rescaled steps `xs` (n,) for shapes `theta` (G, dims)."""
        raise NotImplementedError

    def penalty(self, theta: np.ndarray) -> np.ndarray:
        """-2 log prior of shapes `theta` (..., dims)."""
        index, mean, sd = self.shape_prior
        if not sd:
            return np.zeros(theta.shape[:-1])
        return ((theta[..., index] - mean) / sd) ** 2


class SigmoidFamily(Family):
    """theta = (log(C_mid / C_last), log B); coefficients (R0, A)."""

    def design(self, xs, theta):
        with np.errstate(divide="ignore"):
            logx = np.log(xs)
        z = np.exp(theta[:, 1:2]) * (logx[None] - theta[:, 0:1])
        phi = 0.5 * (1 + np.tanh(np.nan_to_num(z, nan=0.0) / 2))  # u / (1 + u), u = (x / C_mid)^B; 0 at x = 0
        return np.stack([1 - phi, phi], axis=-1)


class PowerFamily(Family):
    """theta = (log b,); coefficients (R0, g): R0 + g xs^b."""

    def design(self, xs, theta):
        with np.errstate(over="ignore"):
            return np.stack([np.ones((len(theta), len(xs))), xs[None] ** np.exp(theta[:, 0:1])], axis=-1)


class LogFamily(Family):
    """No shape; coefficients (a, b): a + b log xs."""

    def design(self, xs, theta):
        with np.errstate(divide="ignore"):
            logx = np.log(xs)
        return np.stack([np.ones((len(theta), len(xs))), np.broadcast_to(logx, (len(theta), len(xs)))], axis=-1)


def _box_solve(family: Family, m00, m01, m11, v0, v1):
    """The weighted least-squares coefficients in the family's box, exactly (the interior solution, or the best
    of the edge solutions, clipped), and the objective up to a constant: all arrays broadcast together."""
    det = m00 * m11 - m01 ** 2
    candidates = [((m11 * v0 - m01 * v1) / det, (m00 * v1 - m01 * v0) / det)]
    for c1 in (family.lo[1], family.hi[1]):
        if np.isfinite(c1):
            candidates.append(((v0 - m01 * c1) / m00, np.full_like(v0, c1)))
    for c0 in (family.lo[0], family.hi[0]):
        if np.isfinite(c0):
            candidates.append((np.full_like(v0, c0), (v1 - m01 * c0) / m11))
    best = None
    for c0, c1 in candidates:
        c0, c1 = np.clip(c0, family.lo[0], family.hi[0]), np.clip(c1, family.lo[1], family.hi[1])
        j = c0 * (m00 * c0 + 2 * (m01 * c1 - v0)) + c1 * (m11 * c1 - 2 * v1)  # + y'Wy, the same for all
        if best is None:
            best = (j, c0, c1)
        else:
            better = j < best[0]
            best = tuple(np.where(better, new, old) for new, old in zip((j, c0, c1), best))
    return best


def _normal_equations(family: Family, X: np.ndarray, w: np.ndarray, y: np.ndarray) -> tuple:
    """(m00, m01, m11, v0, v1) of the weighted least squares of y on X (..., n, 2), with the coefficient prior."""
    Xw = X * w[..., :, None]
    prec, mean = family.prior_prec + 1e-9, family.prior_prec * family.prior_mean
    m = np.einsum("...ni,...nj->...ij", Xw, X)
    v = np.einsum("...ni,...n->...i", Xw, y)
    return m[..., 0, 0] + prec[0], m[..., 0, 1], m[..., 1, 1] + prec[1], v[..., 0] + mean[0], v[..., 1] + mean[1]


def profile_fit(family: Family, xs: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best (shape (R, dims), coefficients (R, 2)) for every row of y (R, n), weights w (n,), in chi-square units.

    The whole grid first (its normal equations shared by every row), then twice a 5-point-per-axis local grid at a
    third of the previous spacing around each row's best: the shape to a ninth of the grid spacing.
    """
    R = y.shape[0]
    X = family.design(xs, family.grid)                                                   # (G, n, 2)
    Xw = X * w[None, :, None]
    m = np.einsum("gni,gnj->gij", Xw, X)
    v = (Xw.transpose(0, 2, 1).reshape(-1, len(xs)) @ y.T).reshape(len(X), 2, R)         # (G, 2, R)
    prec, mean = family.prior_prec + 1e-9, family.prior_prec * family.prior_mean
    j, c0, c1 = _box_solve(family, m[:, 0, 0, None] + prec[0], m[:, 0, 1, None], m[:, 1, 1, None] + prec[1],
                           v[:, 0] + mean[0], v[:, 1] + mean[1])
    g = np.argmin(j + family.penalty(family.grid)[:, None], axis=0)
    rows = np.arange(R)
    theta, coef = family.grid[g], np.stack([c0[g, rows], c1[g, rows]], 1)
    if not family.axes:
        return theta, coef
    step = np.array([a[1] - a[0] if len(a) > 1 else 0.0 for a in family.axes])
    low, high = np.array([a[0] for a in family.axes]), np.array([a[-1] for a in family.axes])
    for scale in (1 / 3, 1 / 9):
        offsets = np.stack(np.meshgrid(*[np.arange(-2, 3) * h * scale for h in step], indexing="ij"), -1)
        offsets = offsets.reshape(-1, len(step))                                         # (L, dims)
        cand = np.clip(theta[None] + offsets[:, None], low, high)                        # (L, R, dims)
        X = family.design(xs, cand.reshape(-1, len(step))).reshape(len(offsets), R, len(xs), 2)
        j, c0, c1 = _box_solve(family, *_normal_equations(family, X, w, y[None]))      # (L, R)
        best = np.argmin(j + family.penalty(cand), axis=0)
        theta, coef = cand[best, rows], np.stack([c0[best, rows], c1[best, rows]], 1)
    return theta, coef


@dataclass
class FittedFamily:
    """A family fitted on (x, y): the point fit, `samples` bootstrap refits and the noise scale they used."""

    family: Family
    scale: float            # steps are divided by it (the last fitted step)
    theta: np.ndarray       # (dims,) point fit's shape
    coef: np.ndarray        # (2,)
    thetas: np.ndarray      # (S, dims)
    coefs: np.ndarray       # (S, 2)
    kappa: float            # residual scatter / known noise (>= 1), or the estimated noise sd when it was unknown

    def curves(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xs = np.asarray(x, dtype=float) / self.scale
        center = np.einsum("nk,k->n", self.family.design(xs, self.theta[None])[0], self.coef)
        if not len(self.thetas):
            return center, np.zeros((0, len(xs)))
        return center, np.einsum("snk,sk->sn", self.family.design(xs, self.thetas), self.coefs)


def fit_family(family: Family, x: np.ndarray, y: np.ndarray, sd: np.ndarray | None, samples: int,
               rng: np.random.Generator, what: str) -> FittedFamily:
    """Point fit plus a parametric bootstrap of `samples` refits (sd None or not all finite: estimated)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    scale = float(x.max())
    xs = x / scale
    dof = len(x) - 2 - len(family.axes)
    known = sd is not None and np.all(np.isfinite(sd)) and np.all(sd > 0)
    w = 1.0 / sd ** 2 if known else np.ones_like(y)

    def point(w):
        theta, coef = profile_fit(family, xs, y[None], w)
        return theta[0], coef[0], family.design(xs, theta)[0] @ coef[0]

    theta, coef, fitted = point(w)
    chi2 = float((w * (y - fitted) ** 2).sum())
    if known:
        kappa = max(1.0, chi2 / dof) if dof > 0 else 1.0
    elif dof > 0:
        kappa = max(float(np.sqrt(chi2 / dof)), 1e-4)  # the estimated noise sd of one point
    else:
        raise RlcastError(f"{what}: {len(x)} points and no known noise: too few to estimate the noise of a fit with "
                          f"{2 + len(family.axes)} parameters")
    w = w / kappa if known else w / kappa ** 2
    if kappa != 1.0:
        theta, coef, fitted = point(w)
    thetas, coefs = np.zeros((0, len(family.axes))), np.zeros((0, 2))
    if samples:
        noisy = fitted[None] + rng.standard_normal((samples, len(y))) / np.sqrt(w)
        thetas, coefs = profile_fit(family, xs, noisy, w)
    return FittedFamily(family, scale, theta, coef, thetas, coefs, kappa)


def sigmoid_family(b_median: float, b_sd: float, a_mean: float | None, a_sd: float, lo=(0.0, 0.0),
                   hi=(1.0, 1.0)) -> SigmoidFamily:
    """The sigmoid's grid: C_mid from 0.05x to 1000x the last step, B from 0.25 to 4 (log-normal prior)."""
    axes = (np.linspace(np.log(0.05), np.log(1000.0), 22), np.linspace(np.log(0.25), np.log(4.0), 12))
    prec = (0.0, 0.0) if a_mean is None else (0.0, 1.0 / a_sd ** 2)
    return SigmoidFamily(axes, lo=lo, hi=hi, prior_mean=(0.0, a_mean or 0.0), prior_prec=prec,
                         shape_prior=(1, np.log(b_median), b_sd))


def power_family(b_median: float, b_sd: float, lo=(0.0, -1.0), hi=(1.0, 1.0)) -> PowerFamily:
    """The power law's grid: b from 0.02 to 2 (log-normal prior)."""
    return PowerFamily([np.linspace(np.log(0.02), np.log(2.0), 24)], lo=lo, hi=hi,
                       shape_prior=(0, np.log(b_median), b_sd))


class CurveFit(Forecaster):
    """A curve family fitted on the held-out accuracies (the base's included when the family allows step 0)."""

    use_base = True

    def family(self) -> Family:
        raise NotImplementedError

    def _fit(self, curve: Curve) -> None:
        keep = curve.steps > 0 if not self.use_base else np.ones(len(curve.steps), bool)
        if keep.sum() < self.min_points:
            raise RlcastError(f"{self.label()}: {curve.run} has {int(keep.sum())} checkpoints with accuracies after "
                              f"the base up to step {curve.last}, this forecaster needs {self.min_points}")
        sd = curve.sd[keep]
        self.fit_ = fit_family(self.family(), curve.steps[keep], curve.accuracy[keep], sd, self.samples,
                               np.random.default_rng(self.seed), f"{self.label()} on {curve.run}")

    def _curves(self, steps):
        return self.fit_.curves(steps)


@register("sigmoid")
class Sigmoid(CurveFit):
    """ScaleRL's saturating sigmoid in compute, R0 and A in [0, 1]; a log-normal prior on the exponent B (median
    `b_median`, log-sd `b_sd`; 0 = flat) and a Gaussian prior on the asymptote A (`a_mean`, `a_sd`; None = none).
    The B prior was chosen on the steady preset's tuning seeds (100, 101), whose whole curves fit B = 0.4-0.6."""

    reference = "ScaleRL, arXiv 2510.13786"
    saturating = True

    def __init__(self, b_median: float = 0.5, b_sd: float = 0.5, a_mean: float | None = None, a_sd: float = 0.3,
                 samples: int = 200, seed: int = 0):
        super().__init__(samples, seed)
        self.b_median, self.b_sd, self.a_mean, self.a_sd = b_median, b_sd, a_mean, a_sd

    def family(self):
        return sigmoid_family(self.b_median, self.b_sd, self.a_mean, self.a_sd)


@register("power")
class PowerLaw(CurveFit):
    """R(C) = R0 + g (C / C_last)^b, R0 in [0, 1], b from 0.02 to 2 with a log-normal prior (median `b_median`,
    log-sd `b_sd`; 0 = flat). The prior was chosen on the steady preset's tuning seeds (b = 0.34-0.37 from any cut)."""

    reference = "rlcast"

    def __init__(self, b_median: float = 0.35, b_sd: float = 0.5, samples: int = 200, seed: int = 0):
        super().__init__(samples, seed)
        self.b_median, self.b_sd = b_median, b_sd

    def family(self):
        return power_family(self.b_median, self.b_sd)


@register("log-linear")
class LogLinear(CurveFit):
    """R(C) = a + b log C on the checkpoints after the base."""

    reference = "rlcast"
    use_base = False

    def family(self):
        return LogFamily()


@register("reward")
class RewardCurve(Forecaster):
    """A curve fitted on the training-reward log, mapped to held-out accuracy.

    Reads `curve.reward_steps` / `curve.reward` (TRL's trainer_state.json log, else run.json's `train_reward`), fits
    `shape` there ("sigmoid" or "power", its exponent with the log-normal prior `b_median`, `b_sd`; the noise
    estimated from the residuals), then held-out accuracy = alpha + beta * fitted reward by weighted least squares on
    the checkpoints (the base's included: the fitted reward at step 0). The bootstrap refits both, so the interval
    carries the reward fit's and the map's uncertainty.
    """

    reference = "rlcast"

    def __init__(self, shape: str = "power", b_median: float = 0.35, b_sd: float = 0.5, min_rewards: int = 5,
                 samples: int = 200, seed: int = 0):
        super().__init__(samples, seed)
        if shape not in ("sigmoid", "power"):
            raise RlcastError(f"reward: shape {shape!r}: expected sigmoid or power")
        self.shape, self.b_median, self.b_sd, self.min_rewards = shape, b_median, b_sd, min_rewards
        self.saturating = shape == "sigmoid"

    def _fit(self, curve: Curve) -> None:
        if len(curve.reward) < self.min_rewards:
            raise RlcastError(f"{self.label()}: {curve.run} logs {len(curve.reward)} training rewards up to step "
                              f"{curve.last} (trainer_state.json or run.json train_reward), this forecaster needs "
                              f"{self.min_rewards}")
        r = curve.reward
        low, high = min(0.0, r.min()), max(1.0, r.max())
        if self.shape == "sigmoid":
            family = sigmoid_family(self.b_median, self.b_sd, None, 1.0, lo=(low, low), hi=(high, high))
        else:
            family = power_family(self.b_median, self.b_sd, lo=(low, low - high), hi=(high, high - low))
        rng = np.random.default_rng(self.seed)
        self.reward_ = fit_family(family, curve.reward_steps, r, None, self.samples, rng,
                                  f"{self.label()} on {curve.run}")
        center, paths = self.reward_.curves(curve.steps)
        sd = curve.sd if np.all(np.isfinite(curve.sd)) else None
        self.map_, self.maps_ = _line(center, curve.accuracy, sd, paths, rng, f"{self.label()} on {curve.run}")

    def _curves(self, steps):
        center, paths = self.reward_.curves(steps)
        return self.map_[0] + self.map_[1] * center, self.maps_[:, :1] + self.maps_[:, 1:] * paths


def _line(x: np.ndarray, y: np.ndarray, sd: np.ndarray | None, xs: np.ndarray, rng: np.random.Generator,
          what: str) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta) of y ~ alpha + beta x (weighted), and one refit per row of xs (S, n) on y plus fresh noise."""
    if np.ptp(x) < 1e-12:
        raise RlcastError(f"{what}: the fitted reward is flat over the checkpoints: no map to accuracy")
    w = 1.0 / sd ** 2 if sd is not None else np.ones_like(y)

    def solve(xr, yr):  # rows of xr, yr: (S, n)
        sw, sx, sy = w.sum(), (w * xr).sum(-1), (w * yr).sum(-1)
        sxx, sxy = (w * xr * xr).sum(-1), (w * xr * yr).sum(-1)
        beta = (sw * sxy - sx * sy) / np.maximum(sw * sxx - sx ** 2, 1e-300)
        return np.stack([(sy - beta * sx) / sw, beta], axis=-1)

    coef = solve(x[None], y[None])[0]
    resid = y - coef[0] - coef[1] * x
    dof = len(y) - 2
    chi2 = float((w * resid ** 2).sum())
    noise = (np.sqrt(max(1.0, chi2 / dof) if dof > 0 else 1.0) / np.sqrt(w) if sd is not None
             else np.full_like(y, np.sqrt(chi2 / dof) if dof > 0 else 0.0))
    if not len(xs):
        return coef, np.zeros((0, 2))
    fitted = coef[0] + coef[1] * xs
    return coef, solve(xs, fitted + rng.standard_normal(xs.shape) * noise)

"""AlphaRL (arXiv 2510.00553): extrapolate each module along its rank-1 trajectory a(t) = s1(t) u1(t).

    alpharl-step  W0 + a(T) v1^T, a(t) fitted by a least-squares line in the step and read at the target
    alpharl       W0 + a* v1^T, a* from a one-component PLS of accuracy on a(t), inverted at a target accuracy

v1 comes from the last window checkpoint. `pls_r2` is AlphaRL's linearity measure (accuracy predicted from a(t) by
PLS), which `rlcast dynamics` reports in-sample and held out.
"""

from __future__ import annotations

import torch

from rlcast.core.numerics import align_signs, line_fit, pls1, r2
from rlcast.core.trajectory import ModuleTrajectory, build_trajectory
from rlcast.errors import RlcastError, check_number
from rlcast.extrapolation.base import Extrapolator, register


def rank1_path(mod: ModuleTrajectory) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(a(t) = s1(t) u1(t) sign-aligned over time (T, m) in float64, v1 of the last checkpoint with the matching sign).

    1-D tensors: (their whole deltas (T, n), None).
    """
    if mod.vector is not None:
        return mod.vector.double(), None
    a = mod.sigma[:, :1].double() * mod.u[:, :, 0].double()
    aligned = align_signs(a)
    flip = 1.0 if float((aligned[-1] * a[-1]).sum()) >= 0 else -1.0
    return aligned, flip * mod.v[-1, :, 0].double()


def pls_r2(a: torch.Tensor, acc: torch.Tensor, n_fit: int) -> tuple[float, float, float]:
    """(in-sample R^2, held-out R^2, held-out mean absolute error) of accuracy predicted from the rows of `a` by PLS.

    Held out: fitted on the first `n_fit` checkpoints, scored on the rest. In-sample is AlphaRL's number, optimistic
    when the vector dimension is much larger than the number of checkpoints.
    """
    acc = acc.double()
    in_sample = r2(acc, pls1(a, acc).predict(a))
    pred = pls1(a[:n_fit], acc[:n_fit]).predict(a[n_fit:])
    return in_sample, r2(acc[n_fit:], pred), float((pred - acc[n_fit:]).abs().mean())


@register("alpharl-step")
class AlphaRLStep(Extrapolator):
    """AlphaRL's rank-1 trajectory, extrapolated in the step: W0 + a(T) v1^T.

    Per selected 2-D tensor (default "blocks": attention and MLP projections inside transformer blocks, as the
    released AlphaRL code), a(t) is sign-aligned over the window, fitted by a least-squares line in the step and read
    at the target; v1 comes from the last window checkpoint. 1-D tensors (selection "all") use their whole delta as
    a(t). Anchored at the base (anchor="last" adds the predicted update onto the last window checkpoint instead, as
    the released code does). Learns `steps_`, `a_` and `v_` (per tensor).
    """

    reference = "AlphaRL"
    min_checkpoints = 2

    def __init__(self, selection: str = "blocks", anchor: str = "base", progress: bool = False):
        super().__init__(selection, progress)
        if anchor not in ("base", "last"):
            raise RlcastError(f"{self.label()}: anchor must be 'base' or 'last', got {anchor!r}")
        self.anchor = anchor

    def _fit(self) -> None:
        traj = build_trajectory(self.run_, rank=1, progress=self.progress, names=self.targets_,
                                device=self.reader_.device)
        self.steps_ = traj.steps
        self.a_, self.v_ = {}, {}
        for name in self.targets_:
            self.a_[name], self.v_[name] = rank1_path(traj.modules[name])

    def _a_star(self, name: str, step: int) -> torch.Tensor:
        a, b = line_fit(torch.tensor(self.steps_, dtype=torch.float64), self.a_[name])
        return a + b * step

    def _tensor(self, name: str, step: int) -> torch.Tensor:
        a_star, v = self._a_star(name, step), self.v_[name]
        update = a_star if v is None else torch.outer(a_star, v)
        anchor = self._anchor(name)
        return anchor + update.float().to(anchor.device)


@register("alpharl")
class AlphaRL(AlphaRLStep):
    """AlphaRL: per module, one-component PLS of accuracy on a(t) = s1 u1, inverted at a target accuracy.

    Touches the selected tensors (default "blocks", as the released code); prediction W0 + a* v1^T, v1 from the last
    window checkpoint; anchored at the base (anchor="last": the released code's choice, onto the last checkpoint).
    The accuracies come from the run manifest (every window checkpoint needs one). `target_accuracy=None` forecasts
    the accuracy at the target step from a least-squares line of accuracy against the step (`accuracy_line_`),
    clipped to [0, 1]. PLS is linear in its score, so the target must lie in the PLS range `range_`: the window's
    observed accuracy range widened by `max_extrapolation` times its width on each side, within [0, 1]; outside it
    the inversion is an error. PLS here is unscaled (standardising coordinates would amplify the noise of tiny ones).
    """

    reference = "AlphaRL, arXiv 2510.00553"
    min_checkpoints = 3

    def __init__(self, target_accuracy: float | None = None, selection: str = "blocks", anchor: str = "base",
                 max_extrapolation: float = 3.0, progress: bool = False):
        super().__init__(selection, anchor, progress)
        if target_accuracy is not None:
            check_number(target_accuracy, "alpharl: target_accuracy", 0, 1)
        self.target_accuracy = target_accuracy
        self.max_extrapolation = check_number(max_extrapolation, "alpharl: max_extrapolation", 0)

    def _fit(self) -> None:
        missing = [s for s in self.run_.steps if s not in self.run_.accuracy]
        if missing:
            raise RlcastError(f"alpharl: no accuracy for step {missing[0]} in the run manifest "
                              f"(alpharl needs an evaluated accuracy for every window checkpoint: `rlcast eval "
                              f"{self.run_.root or 'RUN'}` scores them)")
        super()._fit()
        self.y_ = torch.tensor([self.run_.accuracy[s] for s in self.steps_], dtype=torch.float64)
        low, high = float(self.y_.min()), float(self.y_.max())
        if high - low < 1e-9:
            raise RlcastError(f"alpharl: accuracy is constant ({low:.3f}) over the window up to step {self.last_}, "
                              f"PLS cannot be fitted")
        width = high - low
        self.range_ = (max(0.0, low - self.max_extrapolation * width), min(1.0, high + self.max_extrapolation * width))
        a, b = line_fit(torch.tensor(self.steps_, dtype=torch.float64), self.y_)
        self.accuracy_line_ = (float(a), float(b))
        self.pls_ = {name: pls1(self.a_[name], self.y_) for name in self.targets_}

    def target(self, step: int) -> float:
        """The accuracy the prediction is inverted at: `target_accuracy`, else the step forecast (clipped)."""
        if self.target_accuracy is not None:
            return float(self.target_accuracy)
        a, b = self.accuracy_line_
        return min(1.0, max(0.0, a + b * step))

    def _check(self, step: int) -> None:
        y_star, (low, high) = self.target(step), self.range_
        if not low <= y_star <= high:
            raise RlcastError(f"alpharl: target accuracy {y_star:.3f} is outside the PLS range [{low:.3f}, {high:.3f}]"
                              f" of the window up to step {self.last_} (max_extrapolation={self.max_extrapolation})")

    def summary(self) -> dict:
        return {**super().summary(), "pls_range": list(self.range_), "accuracy_line": list(self.accuracy_line_)}

    def _a_star(self, name: str, step: int) -> torch.Tensor:
        fit = self.pls_[name]
        if fit.b == 0.0:  # accuracy does not vary along this module's score: keep its last position
            return self.a_[name][-1]
        return fit.invert(self.target(step))

"""Denoised drift (rlcast's own method, for live acceleration): the window's velocity by least squares.

A live RL trajectory is drift plus optimizer noise. Weight extrapolation reads the velocity off one point,
(W_t - W_0) / t, so whatever noise sits in W_t is carried T/t times. Here, per tensor, a least-squares line
W(s) ~ alpha + beta s is fitted over every window checkpoint (the base W_0 at s = 0 included as a point), and the
prediction keeps the last checkpoint and moves along the fitted velocity:

    W(T) = W_t + damping * beta * (T - t),   beta = sum_i c_i dW_i,   c_i = (s_i - s_mean) / sum_j (s_j - s_mean)^2

(the c_i sum to zero, so the base cancels and beta is a weighted sum of the window deltas, streamed one checkpoint at
a time). With two points (the base and one checkpoint) this is weight extrapolation from the last checkpoint; with
more, the velocity averages the noise of every window point instead of amplifying the last one's. `damping` < 1
shortens the move (the back-test of the live callback tells whether the drift holds over the horizon).

`origin="fit"` also denoises the starting point: the prediction is the fitted line itself,

    W(T) = W_mean + beta * (T - s_mean)      (W_mean, s_mean: the window's mean weights and mean step; base included)

which at T = t is the window's least-squares estimate of where the drift stands now, without the last point's noise
(an average of the window's iterates moved along the drift, as weight averaging does for noisy SGD).
"""

from __future__ import annotations

import torch

from rlcast.core.numerics import dense
from rlcast.errors import RlcastError, check_number
from rlcast.extrapolation.base import Extrapolator, register


def velocity_weights(steps: list[int], include_base: bool = True) -> list[float]:
    """c_i for the window deltas at `steps` (the base, a zero delta at step 0, counts as a point when included)."""
    s = torch.tensor(([0] if include_base else []) + list(steps), dtype=torch.float64)
    sc = s - s.mean()
    c = sc / sc.pow(2).sum()
    return c[1:].tolist() if include_base else c.tolist()


@register("drift")
class Drift(Extrapolator):
    """W_t + damping * beta * (T - t) on the selected tensors (default all); anchored at the last checkpoint."""

    reference = "rlcast"
    min_checkpoints = 1
    anchor = "last"

    def __init__(self, damping: float = 1.0, include_base: bool = True, origin: str = "last", selection: str = "all",
                 progress: bool = False):
        super().__init__(selection, progress)
        self.damping = check_number(damping, "drift: damping", 0, above=True)
        if origin not in ("last", "fit"):
            raise RlcastError(f"drift: origin must be last or fit, got {origin!r}")
        if not isinstance(include_base, bool):
            raise RlcastError(f"drift: include_base must be true or false, got {include_base!r}")
        self.origin = origin
        if not include_base:
            self.min_checkpoints = 2  # a line needs two points
        self.include_base = include_base

    def _fit(self) -> None:
        if len(self.run_.steps) < self.min_checkpoints:
            raise RlcastError(f"drift: a line without the base needs 2 checkpoints, the window has "
                              f"{len(self.run_.steps)}")
        self.coefficients_ = velocity_weights(self.run_.steps, self.include_base)
        points = ([0] if self.include_base else []) + list(self.run_.steps)
        self.mean_step_ = sum(points) / len(points)

    def _combination(self, name: str, weights: list[float]) -> torch.Tensor:
        """sum_i weights_i dW_i over the window's checkpoints, one delta read at a time."""
        out = None
        for w, step in zip(weights, self.run_.steps):
            term = w * dense(self.reader_.delta(step, name)).float()
            out = term if out is None else out.add_(term)
        return out

    def velocity(self, name: str) -> torch.Tensor:
        """beta: the least-squares velocity of one tensor over the window (per step)."""
        return self._combination(name, self.coefficients_)

    def _tensor(self, name: str, step: int) -> torch.Tensor:
        if self.origin == "fit":  # W_mean + beta (T - s_mean) = W0 + sum_i (1/n + damping c_i (T - s_mean)) dW_i
            n = len(self.run_.steps) + int(self.include_base)
            weights = [1 / n + self.damping * c * (step - self.mean_step_) for c in self.coefficients_]
            return self.reader_.base(name) + self._combination(name, weights)
        move = self.damping * (step - self.last_)
        return self.reader_.weight(self.last_, name) + move * self.velocity(name)

"""Reduced-rank extrapolation (RRE), damped and capped: the step modded-nanogpt's speedrun takes (PR #305).

RRE treats the last k iterates x_0..x_{k-1} (here: window checkpoints, the base being x = W_0) as a sequence
converging to a fixed point and estimates its limit. With the differences u_j = x_{j+1} - x_j, it finds the
combination of them of least norm whose coefficients sum to one,

    gamma = argmin ||sum_j gamma_j u_j||^2  s.t.  sum_j gamma_j = 1   =>   gamma = G^-1 1 / (1^T G^-1 1),  G = U^T U

and extrapolates to x* = sum_j gamma_j x_{j+1}. The move from the last iterate is damped and capped, globally over
the selected tensors:

    W = x_last + d (x* - x_last),   d = damping * min(1, max_move * ||x_last|| / ||x* - x_last||)

G is summed over all selected tensors (the fixed point is one point of the whole parameter vector); each tensor's
part is the streamed temporal Gram matrix of its deltas (`rlcast.core.numerics.gram`), so nothing is held beyond one
tensor. The target step does not enter: RRE predicts a limit, not a point in time, and its back-test says how far
along the trajectory that limit lies. Defaults as in the speedrun: the last 4 iterates, damping 0.875, a move of at
most 1e-3 of the weight norm. A ridge of `ridge * trace(G) / k` keeps G invertible when the differences are collinear
(a steady drift, where RRE has no fixed point to find and the cap decides the move).
"""

from __future__ import annotations

import math

import torch

from rlcast.core.numerics import dense, gram
from rlcast.errors import RlcastError, check_int, check_number
from rlcast.extrapolation.base import Extrapolator, register


def rre_coefficients(g: torch.Tensor, ridge: float) -> torch.Tensor:
    """Coefficients a over the iterates (k,) with x* = sum_i a_i x_i, from the iterates' Gram matrix g (k x k)."""
    k = g.shape[0]
    diff = torch.zeros(k - 1, k, dtype=torch.float64)  # u_j = x_{j+1} - x_j
    diff[:, 1:] += torch.eye(k - 1, dtype=torch.float64)
    diff[:, :-1] -= torch.eye(k - 1, dtype=torch.float64)
    gu = diff @ g @ diff.T
    gu = gu + ridge * max(float(gu.trace()), 1e-300) / (k - 1) * torch.eye(k - 1, dtype=torch.float64)
    ones = torch.ones(k - 1, dtype=torch.float64)
    y = torch.linalg.solve(gu, ones)
    gamma = y / y.sum()
    out = torch.zeros(k, dtype=torch.float64)
    out[1:] = gamma  # x* = sum_j gamma_j x_{j+1}
    return out


@register("rre")
class RRE(Extrapolator):
    """Damped, capped RRE over the last `iterates` window points (the base counts as one); anchored at the last."""

    reference = "reduced-rank extrapolation (modded-nanogpt speedrun)"
    min_checkpoints = 2
    anchor = "last"

    def __init__(self, iterates: int = 4, damping: float = 0.875, max_move: float = 1e-3, ridge: float = 1e-6,
                 selection: str = "all", progress: bool = False):
        super().__init__(selection, progress)
        self.iterates = check_int(iterates, "rre: iterates", 3)
        self.damping = check_number(damping, "rre: damping", 0, above=True)
        self.max_move = check_number(max_move, "rre: max_move", 0, above=True)
        self.ridge = check_number(ridge, "rre: ridge", 0)

    def _fit(self) -> None:
        points = ([0] + self.run_.steps)[-self.iterates:]  # step 0 is the base (a zero delta)
        if len(points) < 3:
            raise RlcastError(f"rre: the window up to step {self.last_} gives {len(points)} iterates, needs 3")
        stored = [s for s in points if s != 0]
        g = torch.zeros(len(points), len(points), dtype=torch.float64)
        offset = len(points) - len(stored)  # 1 when the base is one of the iterates
        weight_sq = 0.0
        for name in self.targets_:
            g[offset:, offset:] += gram(self.reader_, name, stored)
            weight_sq += float(self.reader_.weight(self.last_, name).double().pow(2).sum())
        move = rre_coefficients(g, self.ridge)
        move[-1] -= 1.0  # x* - x_last as a combination of the iterates (coefficients sum to 0: the base cancels)
        size = math.sqrt(max(float(move @ g @ move), 0.0))
        limit = self.max_move * math.sqrt(weight_sq)
        self.scale_ = self.damping * (min(1.0, limit / size) if size > 0 else 0.0)
        self.coefficients_ = {s: float(self.scale_ * c) for s, c in zip(points, move) if s != 0}
        self.move_norm_ = self.scale_ * size

    def summary(self) -> dict:
        return {**super().summary(), "scale": self.scale_, "move_norm": self.move_norm_}

    def _tensor(self, name: str, step: int) -> torch.Tensor:
        out = self.reader_.weight(self.last_, name)
        for s, c in self.coefficients_.items():
            out += c * dense(self.reader_.delta(s, name)).float()
        return out

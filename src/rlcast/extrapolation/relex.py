"""RELEX (arXiv 2605.21468): per tensor, temporal PCA of the stacked window deltas, coefficients linear in the step.

M (T x d) stacks the flattened deltas of the T window checkpoints. With the Gram matrix G = M M^T = E L E^T, the
temporal coefficients of direction i are c_i(t) = sqrt(l_i) E[t, i] and the direction itself p_i = M^T E[:, i] / sqrt(l_i).
Fitting c_i(t) ~ a_i + b_i t and reading it at the target T gives

    delta*(T) = sum_i c_i(T) p_i = M^T w(T),   w(T) = sum_i (a_i + b_i T) E[:, i] / sqrt(l_i) = w0 + T w1

so a fit only keeps the two T-vectors (w0, w1) per tensor, and a prediction is one streamed pass over M.
`temporal_explained` is RELEX's diagnostic: the share of the energy on the top temporal direction.
"""

from __future__ import annotations

import math

import torch

from rlcast.core.numerics import dense, gram, line_fit, row_chunks, rows
from rlcast.errors import check_int
from rlcast.extrapolation.base import Extrapolator, register


def temporal_explained(g: torch.Tensor) -> float:
    """lambda_1 / trace of a Gram matrix M M^T: the share of the stacked deltas' energy on their top temporal direction."""
    eig = torch.linalg.eigvalsh(g.double())
    total = float(eig.clamp_min(0).sum())
    return float(eig[-1]) / total if total > 0 else math.nan


def temporal_line(g: torch.Tensor, steps: list[int], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(w0, w1) with w(T) = w0 + T w1 (see the module docstring), from the top `rank` eigenpairs of G (T x T)."""
    lam, vecs = torch.linalg.eigh(g)
    lam, vecs = lam.flip(0), vecs.flip(1)
    w0 = torch.zeros(len(steps), dtype=torch.float64)
    w1 = torch.zeros(len(steps), dtype=torch.float64)
    x = torch.tensor(steps, dtype=torch.float64)
    for i in range(min(rank, len(steps))):
        if lam[i] <= 1e-12 * max(float(lam[0]), 1e-300):  # no energy left: the remaining directions are noise
            break
        a, b = line_fit(x, lam[i].sqrt() * vecs[:, i])
        w0 += a * vecs[:, i] / lam[i].sqrt()
        w1 += b * vecs[:, i] / lam[i].sqrt()
    return w0, w1


@register("relex")
class Relex(Extrapolator):
    """RELEX on the selected tensors (default all), anchored at the base.

    The Gram matrix is accumulated over row chunks of at most `chunk_mb` MB of M, reading one checkpoint's delta at a
    time (LoRA deltas stay factors); `fit` learns `lines_` = {name: (w0, w1)}, `predict` streams M^T w(T) + W0.
    """

    reference = "RELEX, arXiv 2605.21468"
    min_checkpoints = 2

    def __init__(self, rank: int = 1, selection: str = "all", chunk_mb: int = 256, progress: bool = False):
        super().__init__(selection, progress)
        self.rank = check_int(rank, "relex: rank", 1)
        self.chunk_mb = check_int(chunk_mb, "relex: chunk_mb", 0)  # 0: one row per chunk

    def _fit(self) -> None:
        steps = self.run_.steps
        self.lines_ = {name: temporal_line(gram(self.reader_, name, steps, self.chunk_mb), steps, self.rank)
                       for name in self.targets_}

    def weights(self, name: str, step: int) -> torch.Tensor:
        """w (T,) with delta*(step) = M^T w."""
        w0, w1 = self.lines_[name]
        return w0 + step * w1

    def _tensor(self, name: str, step: int) -> torch.Tensor:
        base = self.reader_.base(name)
        w = self.weights(name, step).float().to(base.device)
        flat = base.reshape(-1).clone()
        cols = max(1, math.prod(base.shape[1:]))
        for r0, r1 in row_chunks(tuple(base.shape), len(w), self.chunk_mb):
            chunk = torch.stack([dense(rows(self.reader_.delta(s, name), r0, r1)).reshape(-1)
                                 for s in self.run_.steps])
            flat[r0 * cols:r1 * cols] += w @ chunk
            del chunk
        return flat.view(base.shape)

"""The small numerics every method and diagnostic shares, each written once.

Deltas are dense float32 tensors or `LowRankDelta` factors (`scale * B @ A`); nothing here densifies factors except
`dense`, which exists for writing weights. Fits run in float64.

    line_fit     y ~ a + b x per coordinate, least squares                        (AlphaRL-step, RELEX, dynamics)
    pls1         one-component PLS of y on x, then OLS of y on the score          (AlphaRL, dynamics)
    r2           1 - SSE / SST over all entries, SST around the time mean          (dynamics)
    align_signs  flip rows so consecutive rows have cosine >= 0                   (rank-1 trajectories)
    inner        <D1, D2>_F of two deltas, factors kept as factors
    gram         G[i, j] = <dW_i, dW_j>_F over T checkpoints, streamed over row chunks (RELEX, dynamics)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlcast.io.lora import Delta, LowRankDelta


# --- fits ---

def line_fit(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares line y ~ a + b x along the first axis of y (x: (T,), y: (T, ...)); returns (a, b) in float64."""
    x, y = x.double(), y.double()
    xc = x - x.mean()
    shape = (-1,) + (1,) * (y.dim() - 1)
    b = (xc.view(shape) * (y - y.mean(0))).sum(0) / xc.pow(2).sum()
    a = y.mean(0) - b * x.mean()
    return a, b


@dataclass
class Pls1:
    """One-component PLS of y on the rows of x: weight w, score z = (x - x_mean) w, y ~ y_mean + b z.

    `p` is the x-loading (x ~ x_mean + z p^T), used to invert the fit: the x whose predicted y is a given value.
    """
    x_mean: torch.Tensor
    w: torch.Tensor
    p: torch.Tensor
    y_mean: float
    b: float

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.y_mean + self.b * ((x.double() - self.x_mean) @ self.w)

    def invert(self, y: float) -> torch.Tensor:
        """x_mean + z* p with z* = (y - y_mean) / b (b != 0)."""
        return self.x_mean + (y - self.y_mean) / self.b * self.p


def pls1(x: torch.Tensor, y: torch.Tensor) -> Pls1:
    """Fit one-component PLS of y (T,) on x (T, d), unscaled (no per-coordinate standardisation)."""
    x, y = x.double(), y.double()
    x_mean, y_mean = x.mean(0), y.mean()
    xc, yc = x - x_mean, y - y_mean
    w = xc.T @ yc
    w = w / w.norm().clamp_min(1e-300)
    z = xc @ w
    zz = float(z @ z)
    if zz <= 0:  # y does not vary along x: a flat fit
        return Pls1(x_mean, w, torch.zeros_like(x_mean), float(y_mean), 0.0)
    return Pls1(x_mean, w, xc.T @ z / zz, float(y_mean), float(z @ yc) / zz)


def r2(target: torch.Tensor, pred: torch.Tensor) -> float:
    """1 - SSE/SST over all entries; SST around the mean over the first axis (time). nan when SST is 0."""
    target, pred = target.double(), pred.double()
    sst = (target - target.mean(0, keepdim=True)).pow(2).sum()
    if sst <= 0:
        return math.nan
    return float(1 - (target - pred).pow(2).sum() / sst)


def align_signs(vectors: torch.Tensor) -> torch.Tensor:
    """Flip rows of (T, d) so that consecutive rows have cosine >= 0 (row 0 keeps its sign)."""
    out = vectors.clone()
    for t in range(1, out.shape[0]):
        if torch.dot(out[t], out[t - 1]) < 0:
            out[t] = -out[t]
    return out


# --- deltas ---

def dense(delta: Delta) -> torch.Tensor:
    """A delta as a dense float32 tensor (LoRA factors are multiplied out: only for writing weights)."""
    return delta.dense() if isinstance(delta, LowRankDelta) else delta


def difference(later: Delta, earlier: Delta) -> Delta:
    """later - earlier for two deltas of one tensor; LoRA factors stay factors (stacked, rank r1 + r2)."""
    if isinstance(later, LowRankDelta) and isinstance(earlier, LowRankDelta):
        return LowRankDelta(B=torch.cat([later.scale * later.B, -earlier.scale * earlier.B], dim=1),
                            A=torch.cat([later.A, earlier.A], dim=0), scale=1.0)
    return dense(later) - dense(earlier)


def inner(a: Delta, b: Delta) -> float:
    """Frobenius inner product <a, b> of two deltas; factors never densified: <s B A, t D C> = s t sum((B^T D) * (A C^T))."""
    if isinstance(a, LowRankDelta) and isinstance(b, LowRankDelta):
        return float(a.scale * b.scale * ((a.B.T @ b.B) * (a.A @ b.A.T)).sum())
    if isinstance(a, LowRankDelta):
        a, b = b, a
    if isinstance(b, LowRankDelta):  # <D, s B A> = s * sum((B^T D) * A)
        return float(b.scale * ((b.B.T @ a) * b.A).sum())
    return float((a.double() * b.double()).sum())


def row_chunks(shape: tuple[int, ...], n: int, chunk_mb: float) -> list[tuple[int, int]]:
    """Row ranges of a tensor such that n stacked float32 copies of the rows fit in chunk_mb MB (at least one row)."""
    rows = shape[0]
    row_bytes = 4 * n * max(1, math.prod(shape[1:]))
    per = max(1, int(chunk_mb * 2**20) // row_bytes)
    return [(r, min(rows, r + per)) for r in range(0, rows, per)]


def rows(delta: Delta, r0: int, r1: int) -> Delta:
    """Rows r0:r1 of a delta: a copy of the dense rows (so no view keeps the whole delta alive), or sliced factors."""
    if isinstance(delta, LowRankDelta):
        return LowRankDelta(B=delta.B[r0:r1], A=delta.A, scale=delta.scale)
    return delta[r0:r1].clone()


def gram(reader, name: str, steps: list[int], chunk_mb: float = 256) -> torch.Tensor:
    """T x T Gram matrix G[i, j] = <dW_i, dW_j>_F of one tensor's deltas at `steps`, in float64.

    Accumulated over row chunks: per chunk, each checkpoint's delta is read in turn (one at a time) and only its rows
    are kept, at most `chunk_mb` MB for the T of them. Dense rows are stacked into M and G += M M^T; LoRA rows stay
    factors and their inner products come from the factors. The deltas are read onto the reader's device; G is on the
    CPU.
    """
    g = torch.zeros(len(steps), len(steps), dtype=torch.float64)
    for r0, r1 in row_chunks(tuple(reader.shape(name)), len(steps), chunk_mb):
        pieces = [rows(reader.delta(step, name), r0, r1) for step in steps]
        if all(isinstance(p, torch.Tensor) for p in pieces):
            m = torch.stack([p.reshape(-1) for p in pieces])
            g += (m @ m.T).double().cpu()
        else:
            g += torch.tensor([[inner(p, q) for q in pieces] for p in pieces], dtype=torch.float64)
        del pieces
    return g

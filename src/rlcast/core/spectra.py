"""Top-k singular triplets of a weight update: exact, fast (randomized subspace iteration), or from LoRA factors.

The fast path is randomized subspace iteration (Halko, Martinsson & Tropp 2011) with oversampling: a seeded Gaussian
sketch of l = k + 1 + OVERSAMPLE columns, then power iterations

    V = orth(D^T Q)   (Rayleigh-Ritz: D^T Q = V S Ut^T gives u_i = Q ut_i, s_i, v_i)
    Q = orth(D V)     (D V also gives the residuals r_i = ||D v_i - s_i u_i||, at no extra cost)

Each iteration costs two thin matmuls with D, both written with the skinny factor on the left: D^T Q = (Q^T D)^T and
D V = (V^T D^T)^T: MKL runs `D^T @ Q` ~10x and `D @ V` ~2x slower than these forms on an AMD EPYC, and the transposed
results are the column-major tall matrices LAPACK's SVD and QR take without a copy (a wide row-major SVD input is
~10x slower there too).
Convergence is checked per triplet, not assumed:
    s accuracy:     min(r_i, r_i^2 / gap_i) <= S_TOL * s_1 for the top k   (residual bounds for Ritz values)
    u/v direction:  r_i <= ANGLE_TOL * gap_i,   gap_i = min(s_{i-1} - s_i, s_i - s_{i+1})   (Davis-Kahan / Wedin)
    s_next:         the Ritz value s_{k+1} (a lower bound); r_{k+1} <= NEXT_TOL * s_1 when it is near the threshold
A triplet whose gap is below GAP_MIN (s_i / s_{i+1} < 1.01) has no meaningful direction: it is flagged
`well_defined=False` and only its value must converge. If MAX_ITER iterations would not converge (the rate measured
from the residuals predicts it), that tensor falls back to the exact SVD. Oversampling makes the rate
(s_{l+1} / s_i)^2 per iteration, so a close pair s1/s2 = 1.006 is separated by the small SVD, not by the power
iteration.

LoRA deltas `scale * B @ A` never become dense: B = Qb Rb, A^T = Qa Ra, and the SVD of the r x r core
`scale * Rb Ra^T = Uc S Vc^T` gives u = Qb Uc, v = Qa Vc exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlcast.errors import RlcastError
from rlcast.io.lora import Delta, LowRankDelta

OVERSAMPLE = 8
MAX_ITER = 40
S_TOL = 1e-5
NEXT_TOL = 1e-3
ANGLE_TOL = 1e-2
GAP_MIN = 1.01


@dataclass
class Spectrum:
    u: torch.Tensor  # (m, k) left singular vectors
    s: torch.Tensor  # (k,)
    v: torch.Tensor  # (n, k) right singular vectors
    fro: float  # ||delta||_F
    s_next: float  # s_{k+1} when known (0.0 when the rank is exhausted)
    well_defined: bool  # False when s1/s2 is too close to 1 for u1 to be meaningful
    method: str = "exact"  # "exact" | "fast" | "fast->exact" (did not converge) | "lora" | "vector" | "zero"
    iterations: int = 0  # power iterations used by the fast path

    @property
    def rank1_energy(self) -> float:
        return float(self.s[0] ** 2 / self.fro ** 2) if self.fro > 0 else 0.0


def sign_convention(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each pair (u_i, v_i) so that the entry of u_i with the largest |value| is positive."""
    idx = u.abs().argmax(dim=0)
    signs = torch.sign(u[idx, torch.arange(u.shape[1], device=u.device)])
    signs[signs == 0] = 1
    return u * signs, v * signs


def _well_defined(s: torch.Tensor, s_next: float) -> bool:
    """u1 is meaningful when s1 / s2 >= GAP_MIN (and the update is not zero)."""
    s2 = s[1].item() if len(s) > 1 else s_next
    return s[0].item() > 0 and s[0].item() >= GAP_MIN * s2


def _finish(u, s, v, fro, s_next, method, iterations=0) -> Spectrum:
    u, v = sign_convention(u, v)
    return Spectrum(u.contiguous(), s.contiguous(), v.contiguous(), float(fro), float(s_next),
                    _well_defined(s, s_next), method, iterations)


def svd_exact(d: torch.Tensor, k: int) -> Spectrum:
    """Top-k triplets from the full SVD (what the published code does for every matrix)."""
    U, S, Vh = torch.linalg.svd(d, full_matrices=False)
    s_next = S[k].item() if len(S) > k else 0.0
    return _finish(U[:, :k], S[:k], Vh[:k].T, torch.linalg.vector_norm(S).item(), s_next, "exact")


def _orth(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(x).Q


def svd_fast(d: torch.Tensor, k: int, seed: int = 0, fro: float | None = None) -> Spectrum:
    """Randomized subspace iteration with a convergence check; exact SVD for a tensor where it does not converge."""
    m, n = d.shape
    l = min(k + 1 + OVERSAMPLE, m, n)
    if l <= k + 1 or 4 * l >= min(m, n):  # small matrices: the exact SVD is cheaper than iterating
        return svd_exact(d, k)
    fro = torch.linalg.vector_norm(d).item() if fro is None else fro
    gen = torch.Generator(device=d.device).manual_seed(seed)
    sketch = torch.randn(n, l, generator=gen, device=d.device, dtype=d.dtype)
    Q = _orth((sketch.T @ d.T).T)  # D @ sketch
    before = float("inf")
    for it in range(1, MAX_ITER + 1):
        V, S, Ut = torch.linalg.svd((Q.T @ d).T, full_matrices=False)  # D^T Q = V S Ut
        U = Q @ Ut.T
        DV = (V.T @ d.T).T
        res = torch.linalg.vector_norm(DV[:, :k + 1] - U[:, :k + 1] * S[:k + 1], dim=0)
        left = _unconverged(S, res, k)
        if left <= 1:
            return _finish(U[:, :k], S[:k], V[:, :k], fro, S[k].item(), "fast", it)
        if it >= 3 and math.isfinite(left) and math.isfinite(before):
            rate = left / before  # measured convergence rate: stop early when MAX_ITER would not be enough
            if rate >= 1 or it + math.log(left) / -math.log(rate) > MAX_ITER:
                break
        before = left
        Q = _orth(DV)
    spec = svd_exact(d, k)
    spec.method, spec.iterations = "fast->exact", it
    return spec


def _unconverged(S: torch.Tensor, res: torch.Tensor, k: int) -> float:
    """max over the criteria of (error bound / tolerance); <= 1 means converged.

    gap_i: distance of s_i to its neighbours, each widened by its own residual (the Ritz values are lower bounds).
    Top-k values: |s_i - s_i*| <= min(r_i, r_i^2 / gap_i) (the quadratic bound holds when the gap is open), to
    S_TOL * s1. Top-k directions where defined (s_i/s_{i+1} >= GAP_MIN): sin(angle) <= r_i / gap_i, to ANGLE_TOL.
    s_next (a Ritz value, hence a lower bound): r_{k+1} to NEXT_TOL * s1, only when it could flip the flag.
    """
    s, r = S[:k + 1].tolist(), res.tolist()
    worst = 0.0
    if s[k] * GAP_MIN * 1.1 > s[k - 1]:
        worst = r[k] / (NEXT_TOL * s[0])
    for i in range(k):
        above = s[i - 1] - r[i - 1] - s[i] if i > 0 else math.inf
        gap = min(above, s[i] - s[i + 1] - r[i + 1])
        value_error = min(r[i], r[i] ** 2 / gap) if gap > 0 else r[i]
        worst = max(worst, value_error / (S_TOL * s[0]))
        defined = s[i] >= GAP_MIN * s[i + 1] and (i == 0 or s[i - 1] >= GAP_MIN * s[i])
        if defined:
            worst = max(worst, r[i] / (ANGLE_TOL * gap) if gap > 0 else math.inf)
    return worst


def from_factors(delta: LowRankDelta, k: int) -> Spectrum:
    """Exact top-k of scale * B @ A through QR of the factors and an r x r SVD: never an m x n matrix."""
    Qb, Rb = torch.linalg.qr(delta.B)
    Qa, Ra = torch.linalg.qr(delta.A.T)
    Uc, S, Vch = torch.linalg.svd(delta.scale * (Rb @ Ra.T))
    kk = min(k, len(S))
    s_next = S[k].item() if len(S) > k else 0.0
    spec = _finish(Qb @ Uc[:, :kk], S[:kk], Qa @ Vch[:kk].T, torch.linalg.vector_norm(S).item(), s_next, "lora")
    return _pad(spec, k)


def top_k(delta: Delta, k: int = 1, exact: bool = False, seed: int = 0, name: str = "delta") -> Spectrum:
    """Top-k singular triplets of a delta (dense 2-D, LowRankDelta, or 1-D recorded as a unit vector and its norm).

    Finite entries can still be too large for float32 maths (1e38: the norm overflows, the SVD fails to converge or
    returns NaN): that is a one-line error naming the tensor `name`, never a traceback or a NaN spectrum.
    """
    try:
        spec = _top_k(delta, k, exact, seed)
    except (torch.linalg.LinAlgError, FloatingPointError) as err:
        raise RlcastError(f"tensor {name}: its SVD failed ({str(err).splitlines()[0][:120]}); "
                          f"{_largest(delta)}") from None
    if not (math.isfinite(spec.fro) and bool(torch.isfinite(spec.s).all())):
        raise RlcastError(f"tensor {name}: its singular values overflow float32; {_largest(delta)}")
    return spec


def _largest(delta: Delta) -> str:
    """The largest |entry| of a delta, for an error message (its factors' for a LoRA delta)."""
    parts = (delta.B, delta.A) if isinstance(delta, LowRankDelta) else (delta,)
    value = max((float(p.detach().abs().max()) for p in parts if p.numel()), default=0.0)
    return f"its largest entry is {value:.3g} (trained weights are many orders of magnitude smaller)"


def _top_k(delta: Delta, k: int, exact: bool, seed: int) -> Spectrum:
    if isinstance(delta, LowRankDelta):
        return from_factors(delta, k)
    d = delta.float()
    if d.dim() == 1:
        norm = torch.linalg.vector_norm(d).item()
        u = (d / norm if norm > 0 else d).unsqueeze(1)
        return Spectrum(u, d.new_tensor([norm]), d.new_ones(1, 1), norm, 0.0, norm > 0, "vector")
    if d.dim() != 2:
        d = d.reshape(d.shape[0], -1)
    fro = torch.linalg.vector_norm(d).item()
    if not math.isfinite(fro):  # checked before LAPACK, which would print its own complaints and fail
        raise FloatingPointError("its norm overflows float32")
    if fro == 0:
        m, n = d.shape
        return Spectrum(d.new_zeros(m, k), d.new_zeros(k), d.new_zeros(n, k), 0.0, 0.0, False, "zero")
    if min(d.shape) <= k:
        return _pad(svd_exact(d, min(d.shape)), k)
    return svd_exact(d, k) if exact else svd_fast(d, k, seed, fro)


def _pad(spec: Spectrum, k: int) -> Spectrum:
    """Pad a spectrum whose matrix has rank < k with zero triplets."""
    extra = k - spec.s.shape[0]
    if extra <= 0:
        return spec
    spec.u = torch.cat([spec.u, spec.u.new_zeros(spec.u.shape[0], extra)], 1)
    spec.v = torch.cat([spec.v, spec.v.new_zeros(spec.v.shape[0], extra)], 1)
    spec.s = torch.cat([spec.s, spec.s.new_zeros(extra)])
    spec.s_next = 0.0
    return spec


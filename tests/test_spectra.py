"""Fast spectra vs exact SVD (with and without a gap, a hard s1/s2 = 1.006 case), LoRA factors vs dense, signs."""

import pytest
import torch

from rlcast.io.lora import LowRankDelta
from rlcast.core.spectra import svd_exact, top_k

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def planted(m, n, sigmas, seed=0, noise=0.0):
    """float64 matrix U diag(sigmas) V^T (+ Gaussian noise of Frobenius norm `noise`)."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, len(sigmas), generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, len(sigmas), generator=g, dtype=torch.float64))
    d = (U * torch.tensor(sigmas, dtype=torch.float64)) @ V.T
    return d + noise * torch.randn(m, n, generator=g, dtype=torch.float64) / (m * n) ** 0.5


CASES = {
    "gap": planted(400, 300, [1.0, 0.5, 0.3] + [0.1] * 20),
    "rank1+noise": planted(512, 1024, [1.0], seed=1, noise=3.0),
    "hard_1.006": planted(400, 300, [1.0, 1 / 1.006, 0.9, 0.8] + [0.3 * 0.98 ** i for i in range(100)], seed=2),
    "pure_noise": torch.randn(300, 420, generator=torch.Generator().manual_seed(3), dtype=torch.float64),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_matches_exact(case):
    d = CASES[case]
    ref = torch.linalg.svd(d, full_matrices=False)  # float64 reference
    spec = top_k(d.float(), k=1)
    assert spec.method in {"fast", "fast->exact"}
    cos = abs(spec.u[:, 0].double() @ ref.U[:, 0]).item()
    assert abs(spec.s[0].item() - ref.S[0].item()) / ref.S[0].item() <= 1e-4
    assert spec.fro == pytest.approx(torch.linalg.norm(d).item(), rel=1e-5)
    ratio = (ref.S[0] / ref.S[1]).item()
    assert spec.well_defined == (ratio >= 1.01)
    if case in ("gap", "rank1+noise", "hard_1.006"):
        assert spec.method == "fast"  # converged without the exact fallback
        assert cos >= 0.999
        assert abs(spec.v[:, 0].double() @ ref.Vh[0]).item() >= 0.999
        assert spec.s_next == pytest.approx(ref.S[1].item(), rel=0.1)  # Ritz lower bound
    else:  # s1/s2 ~ 1.005 with a flat spectrum: the measured rate is too slow, it falls back to the exact SVD
        assert spec.method == "fast->exact" and cos >= 0.999
        assert spec.s_next == pytest.approx(ref.S[1].item(), rel=1e-4)


def test_fast_top3_and_determinism():
    d = planted(500, 350, [2.0, 1.0, 0.6, 0.2] + [0.05] * 30, seed=4).float()
    a, b = top_k(d, k=3, seed=7), top_k(d, k=3, seed=7)
    assert torch.equal(a.u, b.u) and torch.equal(a.s, b.s)
    ex = top_k(d, k=3, exact=True)
    assert ex.method == "exact"
    assert torch.allclose(a.s, ex.s, rtol=1e-4)
    assert (torch.diag(a.u.T @ ex.u) > 0.999).all()  # same sign convention, not just |cos|
    assert (torch.diag(a.v.T @ ex.v) > 0.999).all()
    assert a.s_next == pytest.approx(0.2, rel=0.05)
    assert a.rank1_energy == pytest.approx(4.0 / (4 + 1 + 0.36 + 0.04 + 30 * 0.0025), rel=1e-4)


def test_sign_convention():
    d = planted(64, 40, [1.0, 0.5], seed=5).float()
    for spec in (top_k(d, 2, exact=True), top_k(-d, 2, exact=True)):
        idx = spec.u.abs().argmax(0)
        assert (spec.u[idx, [0, 1]] > 0).all()
    pos, neg = top_k(d, 2, exact=True), top_k(-d, 2, exact=True)
    assert torch.allclose(pos.u, neg.u, atol=1e-5) and torch.allclose(pos.v, -neg.v, atol=1e-5)


def test_lora_factors_vs_dense():
    g = torch.Generator().manual_seed(6)
    delta = LowRankDelta(B=torch.randn(300, 8, generator=g), A=torch.randn(8, 200, generator=g), scale=0.25)
    spec = top_k(delta, k=2)
    ref = svd_exact(delta.dense(), 2)
    assert spec.method == "lora"
    assert torch.allclose(spec.s, ref.s, rtol=1e-4)
    assert spec.fro == pytest.approx(torch.linalg.norm(delta.dense()).item(), rel=1e-5)
    assert spec.s_next == pytest.approx(ref.s_next, rel=1e-4)
    assert (torch.diag(spec.u.T @ ref.u) > 0.9999).all() and (torch.diag(spec.v.T @ ref.v) > 0.9999).all()
    tiny = top_k(LowRankDelta(B=torch.randn(30, 1, generator=g), A=torch.randn(1, 20, generator=g), scale=1.0), k=3)
    assert tiny.s.shape == (3,) and tiny.s[1:].abs().max() == 0 and tiny.s_next == 0.0 and tiny.well_defined


def test_vectors_zero_and_small():
    vec = torch.tensor([3.0, -4.0])
    spec = top_k(vec)
    assert spec.s.tolist() == [5.0] and torch.allclose(spec.u[:, 0] * spec.s[0], vec) and spec.rank1_energy == 1
    zero = top_k(torch.zeros(20, 10), k=2)
    assert zero.fro == 0 and not zero.well_defined and zero.rank1_energy == 0.0
    small = top_k(torch.randn(5, 2), k=3)  # rank exhausted: padded with zero triplets
    assert small.s.shape == (3,) and small.s[2] == 0 and small.s_next == 0.0

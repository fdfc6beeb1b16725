import math

import pytest
import torch

from rlcast.apps.dynamics import parse_name, split, step_r2, summarize
from rlcast.core.numerics import r2
from rlcast.extrapolation.alpharl import pls_r2
from rlcast.extrapolation.relex import temporal_explained

STEPS = [10, 20, 30, 40, 50, 60, 70, 80, 90]


def _orthogonal_residual(t: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A vector orthogonal to 1 and t: a line fit cannot absorb it, so its energy is exactly the SSE."""
    e = torch.randn(len(t), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.stack([torch.ones_like(t), t], 1))
    return e - basis @ (basis.T @ e)


def test_step_r2_known_values():
    t = torch.tensor(STEPS, dtype=torch.float64)
    direction = torch.randn(50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    e = _orthogonal_residual(t)
    e = e / e.norm() * 20.0
    a = (t + e)[:, None] * direction[None]  # every coordinate = (t + e) * direction
    s_tt = float(((t - t.mean()) ** 2).sum())
    in_sample, held_out, _ = step_r2(a, STEPS)
    assert in_sample == pytest.approx(s_tt / (s_tt + 400.0), rel=1e-9)

    exact = t[:, None] * direction[None] + 3.0
    assert step_r2(exact, STEPS) == pytest.approx((1.0, 1.0, 0.0))


def test_held_out_r2_scores_the_later_checkpoints_only():
    t = torch.tensor(STEPS, dtype=torch.float64)
    n_fit = split(len(STEPS))
    assert n_fit == 6
    y = t.clone()
    y[n_fit:] += torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)  # the fit part is an exact line
    truth = 1 - 21.0 / float(((y[n_fit:] - y[n_fit:].mean()) ** 2).sum())
    assert step_r2(y[:, None], STEPS)[1] == pytest.approx(truth, rel=1e-9)
    assert step_r2(y[:, None], STEPS)[2] == pytest.approx(math.sqrt(21.0) / float(y[n_fit:].norm()), rel=1e-9)
    # a trajectory that saturates: held-out R^2 well below in-sample, and negative
    sat = (1 - torch.exp(-t / 20))[:, None] * torch.ones(1, 8, dtype=torch.float64)
    in_sample, held_out, relerr = step_r2(sat, STEPS)
    assert in_sample > 0.7 and held_out < -100 and 0.1 < relerr < 0.5  # 27 % off in norm, far worse than the mean


def test_r2_definition():
    target = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert r2(target, target) == 1.0
    assert r2(target, target.mean(0, keepdim=True).expand_as(target)) == pytest.approx(0.0)
    assert math.isnan(r2(torch.ones(3, 2), torch.zeros(3, 2)))


def test_pls_r2_on_planted_accuracy():
    t = torch.tensor(STEPS, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(40, generator=gen, dtype=torch.float64)
    a = t[:, None] * direction[None] + 1e-3 * torch.randn(len(t), 40, generator=gen, dtype=torch.float64)
    acc = 0.2 + 0.005 * t  # exactly linear in the step, hence in a's main direction
    in_sample, held_out, mae = pls_r2(a, acc, split(len(acc)))
    assert in_sample > 0.999 and held_out > 0.99 and mae < 1e-3
    # accuracy with a residual orthogonal to the step: a is rank 1 (exactly t * direction), known R^2
    e = _orthogonal_residual(t, seed=3)
    e = e / e.norm() * 0.05
    s_tt = float(((0.005 * t - (0.005 * t).mean()) ** 2).sum())
    exact = t[:, None] * direction[None]
    assert pls_r2(exact, acc + e, split(len(acc)))[0] == pytest.approx(s_tt / (s_tt + 0.0025), rel=1e-9)


def test_temporal_explained_variance():
    gen = torch.Generator().manual_seed(0)
    d1, d2 = torch.linalg.qr(torch.randn(100, 2, generator=gen, dtype=torch.float64))[0].T
    c = torch.arange(1, 7, dtype=torch.float64)
    rank1 = c[:, None] * d1[None]
    assert temporal_explained(rank1 @ rank1.T) == pytest.approx(1.0)
    # two orthogonal temporal patterns with energies 4 and 1 (orthogonal coefficient vectors)
    p1, p2 = torch.linalg.qr(torch.randn(6, 2, generator=gen, dtype=torch.float64))[0].T
    m = 2 * p1[:, None] * d1[None] + p2[:, None] * d2[None]
    assert temporal_explained(m @ m.T) == pytest.approx(0.8)


def test_parse_name_and_summary():
    assert parse_name("model.layers.3.mlp.up_proj.weight") == (3, "mlp.up_proj")
    assert parse_name("transformer.h.0.attn.c_attn.weight") == (0, "attn.c_attn")
    assert parse_name("lm_head.weight") == (None, "lm_head")
    from rlcast.apps.dynamics import ModuleDynamics

    mods = [ModuleDynamics(f"model.layers.{i}.mlp.up_proj.weight", i, "mlp.up_proj", 0.99, r, 0.1, None, None, None,
                           [0.5, 1.0], [0.9, 1.0], 0.95, 0.8, 0.01, 1.0) for i, r in enumerate([0.95, 0.5, -1.0, 0.91])]
    summary = summarize(mods)
    assert summary["overall"]["share_step_r2_heldout_gt_0.9"] == 0.5
    assert summary["overall"]["share_step_r2_heldout_lt_0"] == 0.25
    assert summary["by_kind"]["mlp.up_proj"]["step_r2_heldout"] == pytest.approx((0.95 + 0.5 - 1.0 + 0.91) / 4)
    assert math.isnan(summary["overall"]["mean_pls_r2"])
    assert list(summary["by_layer"]) == ["0", "1", "2", "3"]


def _with_manifest(root, accuracy):
    import json

    entries = [{"step": s, "path": f"checkpoint-{s}", "accuracy": accuracy(s)} for s in STEPS]
    (root / "run.json").write_text(json.dumps({"base": "base", "task": "arith", "algo": "grpo",
                                               "base_accuracy": accuracy(0), "checkpoints": entries}))
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from rlcast.io.synthetic import planted_run

    out = {}
    for kind in ("linear", "saturating"):
        root = planted_run(tmp_path_factory.mktemp(kind) / "run", steps=STEPS, kind=kind, hidden=32, layers=1)
        out[kind] = _with_manifest(root, lambda s: 0.2 + 0.005 * s)
    return out


def _scalar_r2(steps, c, n_fit):
    """Independent reference: numpy line fits of the scalar schedule c(t) (a(t) = c(t) * fixed vector)."""
    import numpy as np

    t, c = np.asarray(steps, float), np.asarray(c, float)
    r2_of = lambda y, p: 1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum()  # noqa: E731
    full = np.polyval(np.polyfit(t, c, 1), t)
    held = np.polyval(np.polyfit(t[:n_fit], c[:n_fit], 1), t[n_fit:])
    return r2_of(c, full), r2_of(c[n_fit:], held)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["linear", "saturating"])
def test_planted_runs_give_the_known_r2(runs, kind, tmp_path):
    from rlcast.io.checkpoints import load_run
    from rlcast.apps.dynamics import analyze_dynamics
    from rlcast.io.synthetic import schedule

    run = load_run(runs[kind])
    chunk_mb = {"linear": 256, "saturating": 0}[kind]  # RELEX's Gram matrix in one chunk, or one row at a time
    result = analyze_dynamics(run, progress=False, cache_dir=tmp_path / "cache", chunk_mb=chunk_mb)
    assert {m.kind for m in result.modules} == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                 "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                 "mlp.down_proj"}
    expected = _scalar_r2(STEPS, [schedule(kind, s, max(STEPS)) for s in STEPS], split(len(STEPS)))
    for m in result.modules:
        assert (m.step_r2, m.step_r2_heldout) == pytest.approx(expected, rel=1e-4, abs=1e-4), m.name
        assert m.relex_explained == pytest.approx(1.0, abs=1e-6)  # one planted direction
        assert min(m.cos_u_last) == pytest.approx(1.0, abs=1e-4) and m.rank1_energy_last == pytest.approx(1.0)
        assert m.well_defined == 1.0 and m.fro_last == pytest.approx(0.05, rel=1e-4)  # planted sigma 0.05, c = 1
        if kind == "linear":  # accuracy linear in the step and a(t) linear in the step: PLS is exact
            assert m.pls_r2 == pytest.approx(1.0, abs=1e-6) and m.pls_r2_heldout == pytest.approx(1.0, abs=1e-4)
    share = result.summary["overall"]["share_step_r2_heldout_gt_0.9"]
    assert share == (1.0 if kind == "linear" else 0.0)
    saved = result.save(tmp_path / "dyn.json")
    import json

    data = json.loads(saved.read_text())
    assert data["accuracy_source"] == "manifest" and len(data["modules"]) == 7

"""`rlcast compare` on a planted run over the testbed base: same prompts for every row, failing rows, outputs."""

import json

import pytest
from typer.testing import CliRunner

from rlcast.io.checkpoints import load_run
from rlcast.apps.cli import app
from rlcast.apps.compare import compare, save, table
from rlcast.methods.extrapolate import make_extrapolator
from rlcast.io.synthetic import planted_run
from rlcast.training.testbed import base_model

STEPS = [10, 20, 30, 40, 50]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Exactly linear rank-1 updates on the testbed arith model, with a run.json manifest (task, accuracies)."""
    base = base_model(progress=False)
    root = planted_run(tmp_path_factory.mktemp("cmp") / "run", steps=STEPS, base=base)
    manifest = {"base": str(base), "task": "arith", "base_accuracy": 0.4,
                "checkpoints": [{"step": s, "path": f"checkpoint-{s}", "accuracy": 0.4 + 0.002 * s} for s in STEPS]}
    (root / "run.json").write_text(json.dumps(manifest))
    return root


def test_compare_rows_same_prompts_and_reasons(run_dir, tmp_path):
    run = load_run(run_dir)
    result = compare(run, [0.2, 0.25, 0.6], methods=["weight-linear", "relex", "alpharl"], n_prompts=8,
                     progress=False, params={"alpharl": {"selection": "all"}})  # planted updates touch every tensor
    assert result.target == 50 and result.cutoffs == [10, 30]  # 0.2 and 0.25 both land on checkpoint 10
    real = {r.cutoff: r for r in result.rows if r.method == "real"}
    assert sorted(real) == [0, 10, 30, 50]
    assert real[50].pct_of_target == pytest.approx(100.0)
    # exactly linear updates: these predictions are the real step-50 weights, so on the same prompts the same accuracy
    for method, cutoff in [("weight-linear", 10), ("weight-linear", 30), ("relex", 30), ("alpharl", 30)]:
        row = result.row(method, cutoff)
        assert row.reason is None and row.accuracy == real[50].accuracy, (method, cutoff)
        assert row.pct_of_target == pytest.approx(100.0 if real[50].accuracy else None)
        assert row.gain == pytest.approx(real[50].accuracy - real[cutoff].accuracy)
    assert "needs at least 2 checkpoints" in result.row("relex", 10).reason
    assert "needs at least 3 checkpoints" in result.row("alpharl", 10).reason
    assert result.row("relex", 10).accuracy is None

    out = save(result, tmp_path / "out")
    data = json.loads((out / "compare.json").read_text())
    assert len(data["rows"]) == 4 + 2 * 3 and data["rows"][0]["fraction"] == 0.0
    assert (out / "compare.png").stat().st_size > 10_000
    assert table(result).row_count == 10


def test_next_chooses_c_on_the_validation_split(run_dir):
    run = load_run(run_dir)
    ex = make_extrapolator("next", epochs=2, task="arith", n_val=8, c_grid=(0.5, 2.0)).fit(run.window(30))
    list(ex.predict(50))
    assert set(ex.c_scores_) == {0.5, 2.0} and ex.c_ in (0.5, 2.0)
    assert ex.c_scores_[ex.c_] == max(ex.c_scores_.values())


def test_cli_compare(run_dir, tmp_path):
    out = tmp_path / "cmp"
    runner = CliRunner(env={"COLUMNS": "200"})
    res = runner.invoke(app, ["compare", str(run_dir), "--cutoffs", "0.6", "--methods", "weight-linear",
                              "--n-prompts", "4", "--out", str(out), "--keep",
                              "--param", "weight-linear.selection=all"])
    assert res.exit_code == 0, res.output
    assert "real @ 30" in res.output and "weight-linear" in res.output and "30/50 (60%)" in res.output
    assert (out / "compare.json").exists() and (out / "compare.png").exists()
    assert sorted(p.name for p in (out / "models").iterdir()) == ["real-0", "real-30", "real-50", "weight-linear-30"]
    assert json.loads((out / "compare.json").read_text())["params"] == {"weight-linear": {"selection": "all"}}
    bad = runner.invoke(app, ["compare", str(run_dir), "--cutoffs", "1.5", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "strictly between 0 and 1" in str(bad.exception)
    bad = runner.invoke(app, ["compare", str(run_dir), "--param", "relex", "--out", str(tmp_path / "x")])
    assert "expected METHOD.KEY=VALUE" in str(bad.exception)

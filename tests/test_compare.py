"""`rlcast compare` on a planted run over the testbed base: same prompts for every row, failing rows, outputs."""

import json
import tempfile
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlcast.apps.cli import app
from rlcast.apps.compare import compare, save, table
from rlcast.errors import RlcastError
from rlcast.evaluation.generation import evaluate
from rlcast.evaluation.tasks import get_task
from rlcast.extrapolation import Extrapolator, make_extrapolator
from rlcast.extrapolation import next as next_module
from rlcast.io.checkpoints import load_run
from rlcast.io.synthetic import planted_run
from rlcast.io.writer import write_model

STEPS = [10, 20, 30, 40, 50]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model):
    """Exactly linear rank-1 updates on the testbed arith model, with a run.json manifest (task, accuracies)."""
    base = tiny_model
    root = planted_run(tmp_path_factory.mktemp("cmp") / "run", steps=STEPS, base=base)
    manifest = {"base": str(base), "task": "arith", "base_accuracy": 0.4,
                "checkpoints": [{"step": s, "path": f"checkpoint-{s}", "accuracy": 0.4 + 0.002 * s} for s in STEPS]}
    (root / "run.json").write_text(json.dumps(manifest))
    return root


@pytest.mark.slow
def test_compare_rows_same_prompts_and_reasons(run_dir, tmp_path):
    run = load_run(run_dir)
    result = compare(run, [0.2, 0.25, 0.6], methods=["weight-linear", "relex", "alpharl"], n_prompts=8,
                     progress=False, params={"alpharl": {"selection": "all"}})  # planted updates touch every tensor
    assert result.target == 50 and result.cutoffs == [10, 30]  # 0.2 and 0.25 both land on checkpoint 10
    real = {r.cutoff: r for r in result.rows if r.method == "real"}
    assert sorted(real) == [0, 10, 30, 50]
    assert real[50].pct_of_target == pytest.approx(100.0)
    # the real step 50 scores differently from both cutoffs, so matching it below is not what stopping would give
    assert real[50].accuracy not in (real[10].accuracy, real[30].accuracy)
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
    # the accuracy curve's forecast of step 50 per cutoff (run.json's 0.4 + 0.002 step): none from 1 checkpoint
    early, late = data["forecasts"]
    assert early["cutoff"] == 10 and "at least 3" in early["reason"]
    assert late["cutoff"] == 30 and late["low"] < late["median"] < late["high"]
    # between "no further gain" (the mean of the last 3 scores, 0.44) and the planted 0.5: 3 checkpoints leave nothing
    # to back-test, so the members weigh the same
    assert 0.44 < late["median"] < 0.52
    assert table(result).row_count == 10 + 1  # the forecast from step 30


class Stop(Extrapolator):
    """A user method, unregistered: stop at the cutoff (every tensor at the last window checkpoint)."""

    anchor = "last"

    def _tensor(self, name, step):
        return self.reader_.weight(self.last_, name)


@pytest.mark.slow
def test_compare_takes_user_extrapolators(run_dir):
    run = load_run(run_dir)
    result = compare(run, [0.6], methods=[Stop(), "weight-linear"], n_prompts=8, progress=False,
                     params={"Stop": {"selection": "blocks"}, "weight-linear": {"selection": "all"}})
    stop, real = result.row("Stop", 30), {r.cutoff: r for r in result.rows if r.method == "real"}
    assert stop.reason is None and stop.info["selection"] == "blocks"
    assert stop.accuracy == real[30].accuracy and stop.gain == 0.0  # stopping is the real cutoff checkpoint
    assert result.row("weight-linear", 30).accuracy == real[50].accuracy != real[30].accuracy
    with pytest.raises(RlcastError, match="unknown method 'spline'"):
        compare(run, [0.6], methods=["spline"], n_prompts=8, progress=False)


@pytest.mark.slow
def test_next_chooses_c_on_the_train_split_only(run_dir, monkeypatch):
    """select_c (run by fit) evaluates every candidate in memory on train prompts only, never on test prompts."""
    run = load_run(run_dir)
    seen = []

    def spy(model, task, **kw):
        result = evaluate(model, task, **kw)
        seen.append((kw["split"], {d["prompt"] for d in result.details}))
        return result

    monkeypatch.setattr(next_module, "evaluate", spy)
    ex = make_extrapolator("next", epochs=2, task="arith", n_val=8, c_grid=(0.5, 2.0), target_step=50)
    ex.fit(run.window(30))
    assert set(ex.c_scores_) == {0.5, 2.0} and ex.c_ in (0.5, 2.0)
    assert ex.c_scores_[ex.c_] == max(ex.c_scores_.values())
    task = get_task("arith")
    train = {e.prompt for e in task.examples("train", None, seed=0)}
    test = {e.prompt for e in task.examples("test", None, seed=0)}
    assert [split for split, _ in seen] == ["train", "train"]
    assert all(prompts and prompts <= train and not prompts & test for _, prompts in seen)
    assert ex.summary()["c"] == ex.c_ and set(ex.summary()["c_scores"]) == {"0.5", "2.0"}


@pytest.mark.slow
def test_next_c_in_memory_equals_written_models(run_dir):
    """The in-memory candidates score exactly like the models the old code wrote and re-loaded: same c chosen."""
    run = load_run(run_dir)
    grid = (0.25, 1.0, 4.0, 16.0)
    ex = make_extrapolator("next", epochs=20, task="arith", n_val=16, c_grid=grid, c_search="grid",
                           target_step=50).fit(run.window(30))
    written = {}
    with tempfile.TemporaryDirectory() as tmp:
        for c in grid:
            fixed = make_extrapolator(ex, c=c, task=None).fit(run.window(30))
            folder = write_model(run.base, Path(tmp) / f"c{c}", fixed.predict(50))
            written[c] = evaluate(folder, "arith", n_prompts=16, split="train", seed=0, progress=False).accuracy
    print("c scores", ex.c_scores_)
    assert ex.c_scores_ == written
    assert ex.c_ == max(grid, key=lambda c: (written[c], -abs(c - 1.5)))
    assert len(set(written.values())) > 1  # the candidates differ, so the choice is not a tie-break
    local = make_extrapolator(ex, c_search="local").fit(run.window(30))
    print("local search scored", local.c_scores_)
    assert local.c_ == ex.c_ and local.c_scores_.items() <= ex.c_scores_.items() and len(local.c_scores_) < len(grid)


@pytest.mark.slow
def test_next_local_search_climbs_to_the_grid_choice_on_unimodal_scores(run_dir, monkeypatch):
    """c_search="local" scores the candidate nearest 1.5 and its neighbours, and moves while one is strictly better:
    on scores unimodal in c it picks what scoring the whole grid picks, from fewer candidates."""
    grid = (0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
    window = load_run(run_dir).window(30)
    candidate, extend = {}, next_module.NExt._extend

    def tracking_extend(self, name, step, c):  # remembers which candidate the model holds
        candidate["c"] = c
        return extend(self, name, step, c)

    monkeypatch.setattr(next_module.NExt, "_extend", tracking_extend)
    for peak in grid:
        scored = []

        def unimodal(model, task, **kw):  # a candidate's score: minus its distance to the peak
            scored.append(candidate["c"])
            return types.SimpleNamespace(accuracy=-abs(candidate["c"] - peak))

        monkeypatch.setattr(next_module, "evaluate", unimodal)
        ex = make_extrapolator("next", epochs=2, task="arith", n_val=4, c_grid=grid, target_step=50).fit(window)
        assert ex.c_ == peak and len(scored) == len(set(scored)) <= 3 + abs(grid.index(peak) - 3), (peak, scored)


@pytest.mark.slow
def test_cli_compare(run_dir, tmp_path):
    out = tmp_path / "cmp"
    runner = CliRunner(env={"COLUMNS": "200"})
    res = runner.invoke(app, ["compare", str(run_dir), "--cutoffs", "0.6", "--methods", "weight-linear",
                              "--n-prompts", "4", "--out", str(out), "--keep",
                              "--param", "weight-linear.selection=all"])
    assert res.exit_code == 0, res.output
    assert "real @ 30" in res.output and "weight-linear" in res.output and "30/50 (60%)" in res.output
    assert (out / "compare.json").exists() and (out / "compare.png").exists()
    assert sorted(p.name for p in (out / "models").iterdir()) == [".rlcast-output", "real-0", "real-30", "real-50",
                                                                  "weight-linear-30"]
    assert json.loads((out / "compare.json").read_text())["params"] == {"weight-linear": {"selection": "all"}}
    bad = runner.invoke(app, ["compare", str(run_dir), "--cutoffs", "1.5", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "strictly between 0 and 1" in str(bad.exception)
    bad = runner.invoke(app, ["compare", str(run_dir), "--param", "relex", "--out", str(tmp_path / "x")])
    assert "expected METHOD.KEY=VALUE" in str(bad.exception)

"""The demo's acceleration section and its CLI entry points (the accounting itself: tests/test_curves.py).

The real `--quick` budget takes minutes; the success path runs `rlcast demo --quick` with an even smaller budget.
"""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from rlcast.apps import demo
from rlcast.apps.cli import app, main
from rlcast.apps.demo import DemoConfig, acceleration_section
from rlcast.evaluation.curves import outcome
from rlcast.training.accelerate import AccelerateConfig


def test_acceleration_section_lists_every_jump():
    plain, accelerated = {0: 0.4, 10: 0.5, 20: 0.6}, {0: 0.4, 10: 0.6, 20: 0.61}
    result = outcome(plain, accelerated) | {"cost_step_equivalents": 3.5}
    jumps = [{"step": 5, "virtual_step": 5, "method": "relex", "horizon": 10, "backtest_error": 0.4,
              "reward_before": 0.45, "reward_after": 0.55, "kept": True, "reason": "ok"},
             {"step": 15, "virtual_step": 25, "method": "weight-linear", "horizon": 15, "backtest_error": 0.7,
              "reward_before": 0.6, "reward_after": 0.3, "kept": False, "reason": "dropped"}]
    page = acceleration_section(result, plain, accelerated, jumps)
    assert page.count("<tr>") >= 2 + 2 and "relex" in page and "weight-linear" in page
    assert "data:image/png;base64," in page and "speedup 2x" in page


def test_demo_refuses_a_non_empty_out_folder_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    monkeypatch.setattr(sys, "argv", ["rlcast", "demo", "--out", str(tmp_path / "taken")])
    with pytest.raises(SystemExit) as exit_:
        main()
    stderr = capsys.readouterr().err
    assert exit_.value.code == 1 and "exists and is not empty" in stderr
    assert len(stderr.strip().splitlines()) == 1


@pytest.mark.usefixtures("torch_single_thread")
def test_demo_quick_through_the_cli_writes_the_report_and_summary(tmp_path, monkeypatch):
    tiny = DemoConfig(steps=8, save_every=2, eval_prompts=20, compare_methods=("weight-linear",),
                      compare_cutoffs=(0.5,), dominance_ranks=(1,),
                      accelerate=AccelerateConfig(method="weight-linear", every=2, horizon=2, window=3,
                                                  snapshot_every=1, eval_prompts=8, max_backtest_error=None))
    monkeypatch.setattr(demo, "QUICK", tiny)
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["curves"]["plain"]) == sorted(summary["curves"]["accelerated"]) == ["0", "2", "4", "6", "8"]
    assert summary["accelerate_config"]["method"] == "weight-linear" and summary["acceleration"]["attempts"] == 3
    page = (out / "report.html").read_text()
    assert "Live acceleration" in page and "steps to 98 %" in page

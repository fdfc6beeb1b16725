"""The demo's acceleration section and its CLI entry points (the accounting itself: tests/test_speedup.py).

The real `--quick` budget takes minutes; the success path runs `rlcast demo --quick` with an even smaller budget.
"""

from __future__ import annotations

import html
import io
import json
import sys

import pytest
from rich.console import Console
from typer.testing import CliRunner

from rlcast.apps import demo
from rlcast.apps.cli import app, main
from rlcast.apps.demo import DemoConfig, acceleration_section, judged_outcome, print_outcome
from rlcast.errors import RlcastError


def test_acceleration_section_shows_both_runs_on_the_generation_batch_axis():
    plain, accelerated = {0: 0.4, 10: 0.5, 20: 0.6}, {0: 0.4, 10: 0.6, 20: 0.61}
    result = judged_outcome(plain, accelerated, 1000, relative_cost=1.25)
    result.update(runs={"plain": "plain GRPO, 2 steps per batch", "accelerated": "rank1, 2 steps per batch"},
                  seconds_per_batch={"plain": 2.0, "accelerated": 2.5},
                  lookahead={"repositions": 20, "failed": 1})
    page = acceleration_section(result, plain, accelerated)
    assert page.count("<tr>") >= 3 and "rank1, 2 steps per batch" in page and "generation batches to 98 %" in page
    assert "data:image/png;base64," in page and "speedup 2.00x" in page and "1.60x in training time" in page
    assert "20 (1 failed)" in page and html.escape(result["verdict"]) in page


# a plain run reaching the 98 % goal at step 140 (1000 prompts per checkpoint, +-0.03)
PLAIN = {s: 0.2 + 0.16 * s / 130 for s in range(0, 140, 10)} | {140: 0.376, 150: 0.38}


def test_a_one_checkpoint_lead_inside_the_noise_is_no_measurable_speed_up():
    ahead = {s: PLAIN[s + 10] for s in range(0, 150, 10)} | {150: 0.382}  # the same curve, one checkpoint earlier
    result = judged_outcome(PLAIN, ahead, 1000, relative_cost=1.2)
    assert result["speedup"] == pytest.approx(140 / 130) and result["effective_speedup"] == pytest.approx(140 / 156)
    assert result["speedup_range"] == pytest.approx([1.0, 140 / 120])
    assert not result["speedup_measurable"] and not result["goal_difference"]["significant"]
    assert not result["final_difference"]["significant"]
    low, high = result["plain"]["final_ci"]
    assert low < 0.38 < high and 0.05 < high - low < 0.07  # Wilson at n = 1000
    verdict = result["verdict"]
    assert verdict.startswith("no measurable speed-up") and "1.08x" in verdict
    assert "0.90x in training time (1.20x the plain run's seconds per batch)" in verdict
    assert "within one checkpoint" in verdict and "inside the noise" in verdict
    out = io.StringIO()
    result.update(runs={"plain": "plain", "accelerated": "sfpo"}, seconds_per_batch={"plain": 1.0, "accelerated": 1.2})
    print_outcome(result, Console(file=out, width=300))
    text = out.getvalue()
    assert "1.08x" in text and "0.90x in training time" in text and "no measurable speed-up" in text
    assert "generation batches to 98 %" in text and "sfpo" in text
    assert "[0.350, 0.410]" in text  # the plain final accuracy's interval


def test_a_clear_lead_is_a_measurable_speed_up_and_a_small_sample_is_not():
    jump = {0: 0.2, 10: 0.3, 20: 0.38} | {s: 0.39 for s in range(30, 160, 10)}
    result = judged_outcome(PLAIN, jump, 1000, relative_cost=1.05)
    assert result["speedup_measurable"] and result["speedup"] == pytest.approx(7.0)
    assert result["goal_difference"]["ci"][0] > 0 and result["verdict"].startswith("a measurable speed-up")
    assert "6.67x in training time" in result["verdict"]
    # the same curves on 20 prompts: the lead at the goal is inside the interval
    small = judged_outcome(PLAIN, jump, 20, relative_cost=1.05)
    assert not small["speedup_measurable"] and small["verdict"].startswith("no measurable speed-up")


def test_a_goal_never_reached_is_said_in_words():
    flat = {s: 0.2 for s in range(0, 160, 10)}
    result = judged_outcome(PLAIN, flat, 1000)
    assert result["speedup"] is None and result["effective_speedup"] is None and not result["speedup_measurable"]
    assert "never reached" in result["verdict"] and result["final_difference"]["significant"]
    assert "outside the noise" in result["verdict"]


def test_a_goal_crossed_then_lost_is_no_speed_up_in_the_demo():
    lost = {0: 0.2, 10: 0.4} | {s: 0.3 for s in range(20, 160, 10)}  # crosses at 10, ends far below the goal
    result = judged_outcome(PLAIN, lost, 1000, relative_cost=1.0)
    assert result["speedup"] is None and not result["speedup_measurable"]
    assert "crossed the goal at 10 generation batches but ended below it" in result["verdict"]


def test_demo_refuses_a_non_empty_out_folder_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    monkeypatch.setattr(sys, "argv", ["rlcast", "demo", "--out", str(tmp_path / "taken")])
    with pytest.raises(SystemExit) as exit_:
        main()
    stderr = capsys.readouterr().err
    assert exit_.value.code == 1 and "exists and is not empty" in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_demo_refuses_an_unknown_accelerator_before_any_training(tmp_path):
    with pytest.raises(RlcastError, match="demo accelerator 'warp': known: sfpo, gxpo, rank1"):
        demo.run_demo(tmp_path / "demo", config=DemoConfig(accelerator="warp"))
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("torch_single_thread")
def test_demo_quick_through_the_cli_writes_the_report_and_summary(tmp_path, monkeypatch):
    tiny = DemoConfig(batches=4, save_every=1, eval_prompts=20, compare_methods=("weight-linear",),
                      compare_cutoffs=(0.5,), dominance_ranks=(1,))
    monkeypatch.setattr(demo, "QUICK", tiny)
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    # both runs on the generation-batch axis: plain 2 steps per batch, rank1 (the default) 1 fast step + 1 more
    assert sorted(summary["curves"]["plain"]) == sorted(summary["curves"]["accelerated"]) == ["0", "1", "2", "3", "4"]
    assert summary["lookahead"] == {"repositions": 4, "failed": 0, "gate_off_at": None, "generation_batches": 4}
    assert summary["runs"]["accelerated"] == "rank1, 2 steps per batch" and summary["relative_cost"] > 0
    page = (out / "report.html").read_text()
    assert "Live acceleration" in page and "generation batches to 98 %" in page and html.escape(summary["verdict"]) in page
    assert "final_ci" in summary["plain"] and "final_difference" in summary
    told = summary["forecast"]  # the demo ends with the forecast and the stop rule, replayed on the plain run
    assert told["target"] == 4 and told["cutoff"] == 3 and set(told["forecast"]) == {"median", "low", "high"}
    assert "forecast from generation batch 3 of 4" in result.output and "stop rule" in result.output

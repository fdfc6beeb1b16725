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
    with pytest.raises(RlcastError, match="demo accelerator 'warp': known: skip, adaptive, sfpo, gxpo, rank1"):
        demo.run_demo(tmp_path / "demo", config=DemoConfig(accelerator="warp"))
    with pytest.raises(RlcastError, match="budget 12 must be a multiple of round_size 8"):  # against the preset's G
        demo.run_demo(tmp_path / "demo", config=DemoConfig(accel=(("budget", 12),)))
    assert not (tmp_path / "demo").exists()


def test_a_rollout_method_is_judged_in_completions_and_at_equal_spend():
    # plain: 384 completions a batch, plateaus at 0.50; adaptive: ~2x a batch, slower to the goal, a higher ceiling
    plain = {0: 0.3} | {384 * b: min(0.5, 0.3 + 0.002 * b) for b in range(10, 160, 10)}
    adaptive = {0: 0.3} | {800 * b: min(0.7, 0.3 + 0.0025 * b) for b in range(10, 160, 10)}
    result = judged_outcome(plain, adaptive, 1000, relative_cost=0.5, unit="completions", at_equal_spend=True)
    assert result["plain"]["steps_to_98"] == 384 * 100 and result["accelerated"]["steps_to_98"] == 800 * 80
    assert result["speedup"] == pytest.approx(384 * 100 / (800 * 80)) and not result["speedup_measurable"]
    same = result["equal_spend"]  # at plain's whole spend (57 600 completions): adaptive's batch 70 (56 000)
    assert same["spend"] == 384 * 150 and same["at"] == {"plain": 384 * 150, "accelerated": 800 * 70}
    assert same["accelerated"] == pytest.approx(0.475) and same["plain"] == 0.5
    assert not same["difference"]["significant"]  # -0.025 on 1000 prompts: inside the noise
    verdict = result["verdict"]
    assert "in completions" in verdict and "seconds per completion" in verdict
    assert "at equal spend (57600 completions) 0.475 vs 0.500" in verdict and verdict.count("inside the noise") == 1
    assert "outside the noise" in verdict  # the final accuracies: 0.7 vs 0.5


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
    # both runs on the completions axis: plain 4 steps per batch of 384 completions, adaptive (the default) the
    # same steps on groups formed from rounds until each has signal: at least as many completions
    plain = summary["curves"]["plain"]
    assert sorted(plain, key=int) == ["0", "384", "768", "1152", "1536"] and summary["unit"] == "completions"
    made = summary["rollouts"]
    assert made["rollouts"] == "adaptive" and made["generation_batches"] == 4 and made["completions"] >= 1536
    assert sorted(summary["curves"]["accelerated"], key=int)[-1] == str(made["completions"])
    assert summary["plain_rollouts"] == {"completions": 1536, "generation_batches": 4}
    assert summary["equal_spend"]["spend"] == 1536 and "at equal spend (1536 completions)" in summary["verdict"]
    assert summary["runs"]["accelerated"] == "adaptive rollouts, 4 steps per batch" and summary["relative_cost"] > 0
    page = (out / "report.html").read_text()
    assert "Live acceleration" in page and "completions to 98 %" in page and html.escape(summary["verdict"]) in page
    assert "final_ci" in summary["plain"] and "final_difference" in summary and "completions generated" in page
    told = summary["forecast"]  # the demo ends with the forecast and the stop rule, replayed on the plain run
    assert told["target"] == 4 and told["cutoff"] == 3 and set(told["forecast"]) == {"median", "low", "high"}
    assert "forecast from generation batch 3 of 4" in result.output and "stop rule" in result.output

"""Speed-up accounting: steps to the goal, speedup and retained accuracy of held-out curves read from run manifests."""

from __future__ import annotations

import json

import pytest

from rlcast.errors import RlcastError
from rlcast.evaluation.speedup import GOAL, batch_curve, curve, outcome, steps_to


def test_steps_to_is_the_first_evaluated_step_reaching_the_target():
    acc = {0: 0.40, 5: 0.50, 10: 0.58, 15: 0.55, 20: 0.60}
    assert steps_to(acc, 0.58) == 10       # the first crossing, not the last
    assert steps_to(acc, 0.40) == 0
    assert steps_to(acc, 0.61) is None


def test_outcome_speedup_and_retained():
    plain = {0: 0.40, 10: 0.45, 20: 0.50, 30: 0.55, 40: 0.60}
    accelerated = {0: 0.40, 10: 0.59, 20: 0.60, 30: 0.61, 40: 0.59}
    result = outcome(plain, accelerated)
    assert result["target"] == pytest.approx(0.98 * 0.60)
    assert result["plain"] == {"final_accuracy": 0.60, "steps": 40, "steps_to_98": 40}
    assert result["accelerated"]["steps_to_98"] == 10 and result["accelerated"]["final_accuracy"] == 0.59
    assert result["speedup"] == pytest.approx(4.0)
    assert result["retained"] == pytest.approx(0.59 / 0.60)
    never = outcome(plain, {0: 0.40, 10: 0.41, 40: 0.42})
    assert never["speedup"] is None and never["accelerated"]["steps_to_98"] is None


def test_a_goal_crossed_early_and_lost_by_the_end_is_no_speedup():
    plain = {0: 0.40, 10: 0.45, 20: 0.50, 30: 0.55, 40: 0.60}
    lost = outcome(plain, {0: 0.40, 10: 0.59, 20: 0.60, 30: 0.50, 40: 0.55})  # a noisy crossing, then a collapse
    assert lost["accelerated"]["crossed"] == 10 and not lost["accelerated"]["held"]
    assert lost["accelerated"]["steps_to_98"] is None and lost["speedup"] is None
    held = outcome(plain, {0: 0.40, 10: 0.59, 20: 0.60, 30: 0.50, 40: 0.59})  # dips, but ends at the goal
    assert held["accelerated"]["held"] and held["speedup"] == pytest.approx(4.0)
    assert GOAL == 0.98 and lost["target"] == pytest.approx(GOAL * 0.60)


def test_curve_reads_the_run_manifest(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"base_accuracy": 0.4, "checkpoints": [
        {"step": 5, "path": "checkpoint-5", "accuracy": 0.5}, {"step": 10, "path": "checkpoint-10", "accuracy": 0.6}]}))
    assert curve(tmp_path) == {0: 0.4, 5: 0.5, 10: 0.6}


def test_batch_curve_puts_a_reused_rollout_run_on_the_generation_batch_axis(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"base_accuracy": 0.4, "checkpoints": [
        {"step": 10, "path": "checkpoint-10", "accuracy": 0.5, "generation_batches": 5},
        {"step": 20, "path": "checkpoint-20", "accuracy": 0.6, "generation_batches": 10}]}))
    assert batch_curve(tmp_path) == {0: 0.4, 5: 0.5, 10: 0.6}
    (tmp_path / "run.json").write_text(json.dumps({"base_accuracy": 0.4, "checkpoints": [
        {"step": 10, "path": "checkpoint-10", "accuracy": 0.5}]}))
    with pytest.raises(RlcastError, match="checkpoint 10 records no generation_batches"):
        batch_curve(tmp_path)


def test_batch_curve_counts_completions_for_rollout_methods(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"base_accuracy": 0.4, "checkpoints": [
        {"step": 10, "path": "checkpoint-10", "accuracy": 0.5, "generation_batches": 5, "completions": 90},
        {"step": 20, "path": "checkpoint-20", "accuracy": 0.6, "generation_batches": 10, "completions": 200}]}))
    assert batch_curve(tmp_path, "completions") == {0: 0.4, 90: 0.5, 200: 0.6}
    with pytest.raises(RlcastError, match="cost 'tokens': one of generation_batches, completions"):
        batch_curve(tmp_path, "tokens")
    (tmp_path / "run.json").write_text(json.dumps({"base_accuracy": 0.4, "checkpoints": [
        {"step": 10, "path": "checkpoint-10", "accuracy": 0.5, "generation_batches": 5}]}))
    with pytest.raises(RlcastError, match="checkpoint 10 records no completions"):
        batch_curve(tmp_path, "completions")

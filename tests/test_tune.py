"""rlcast tune: successive halving over synthetic curves whose best configuration is planted, crashes, resume, the
Ray engine, bad grid values, and one tiny real sweep of `rlcast train` runs."""

import functools
import json
import os
import sys
import zlib

import numpy as np
import pytest

from rlcast.errors import RlcastError
from rlcast.training.train import preset
from rlcast.tune import ASHA, ForecastScheduler, MedianStopping, RandomSearch, Sweep
from rlcast.tune.trials import RlcastTrial, parse_grid, train_line

GRID = {"learning_rate": [3e-5, 6e-5, 1.2e-4, 2.4e-4, 4.8e-4], "num_iterations": [1, 2, 4]}
BEST = {"learning_rate": 1.2e-4, "num_iterations": 2}


def planted(config: dict, batches: int) -> float:
    """A saturating curve whose plateau peaks at BEST: every other configuration ends >= 0.03 lower."""
    top = 0.48 - 0.05 * abs(np.log2(config["learning_rate"] / 1.2e-4)) \
        - 0.03 * abs(np.log2(config["num_iterations"] / 2))
    return 0.25 + (top - 0.25) * (1 - np.exp(-batches / (50 / np.sqrt(config["num_iterations"]))))


def synthetic(config: dict, report) -> None:
    """A train_fn without checkpoints: replays its seeded curve (0.005 noise) from the start each time."""
    rng = np.random.default_rng(zlib.crc32(json.dumps(config, sort_keys=True).encode()))
    for batches in range(0, 301, 10):
        noise = rng.normal(0, 0.005)
        if not report(batches, float(planted(config, batches) + noise)):
            return


def crashing(config: dict, report, every: int = 10) -> None:
    """The highest learning rate diverges after batch 20."""
    for batches in range(0, 301, every):
        if config["learning_rate"] == 4.8e-4 and batches > 20:
            raise FloatingPointError("loss is nan\nat step 30")
        if not report(batches, float(planted(config, batches))):
            return


class Interrupt:
    """train_fn that is interrupted (KeyboardInterrupt) at its `after`-th report, once."""

    def __init__(self, after: int, train_fn=synthetic):
        self.after, self.calls, self.train_fn = after, 0, train_fn

    def __call__(self, config, report):
        def counted(batches, accuracy):
            self.calls += 1
            if self.calls == self.after:
                raise KeyboardInterrupt
            return report(batches, accuracy)
        self.train_fn(config, counted)


def decisions(sweep: Sweep) -> list:
    return [(t.id, t.status, t.batches, t.reason) for t in sweep.trials]


@pytest.mark.parametrize("scheduler", [ForecastScheduler(keep=1 / 3), ASHA(keep=1 / 3)])
def test_planted_best_configuration_is_found_for_a_fraction_of_the_sweep(scheduler):
    sweep = Sweep(synthetic, GRID, 300, scheduler=scheduler, rungs=[30, 100], eval_prompts=1000).run()
    assert sweep.winner.config == BEST
    assert sweep.compute()["batch_fraction"] < 0.4
    finished = [t for t in sweep.trials if t.status == "finished"]
    assert all(t.batches == 300 for t in finished) and 1 <= len(finished) <= 2
    stopped = [t for t in sweep.trials if t.status == "stopped"]
    assert len(stopped) == 15 - len(finished) and all(t.reason.startswith("at rung ") for t in stopped)
    assert sweep.compute()["backward_passes"] == sum(t.batches * t.config["num_iterations"] for t in sweep.trials)


def test_forecast_scheduler_stops_on_interval_overlap_and_records_forecasts():
    # power: its intervals at batch 30 are narrow enough to stop some (the default sigmoid's ~0.2 wide stop none)
    sweep = Sweep(synthetic, GRID, 300, scheduler="forecast", rungs=[30, 100], eval_prompts=1000,
                  scheduler_settings={"keep": 1.0, "forecaster": "power"}).run()
    first = [t for t in sweep.trials if t.rung == 0 and t.status == "stopped"]
    assert first and all("cannot reach the leader's lower bound" in t.reason for t in first)
    assert all(t.forecasts and t.forecasts[0]["rung"] == 30 for t in sweep.trials)
    assert sweep.winner.config == BEST


def test_random_search_and_median_rule():
    random = Sweep(synthetic, GRID, 300, scheduler=RandomSearch(keep=0.2), rungs=[30, 100], seed=3).run()
    assert sum(t.status == "finished" for t in random.trials) == 3
    assert sum(t.status == "skipped" for t in random.trials) == 12
    assert random.compute()["batch_fraction"] == pytest.approx(0.2)
    median = Sweep(synthetic, GRID, 300, scheduler=MedianStopping(), rungs=[30, 100]).run()
    assert median.winner.config == BEST
    assert all("median running mean" in t.reason for t in median.trials if t.status == "stopped")


def test_a_crashing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = Sweep(crashing, GRID, 300, scheduler="asha", rungs=[30, 100], out=tmp_path / "sweep").run()
    crashed = [t for t in sweep.trials if t.status == "crashed"]
    assert [t.config["learning_rate"] for t in crashed] == [4.8e-4] * 3
    assert all(t.reason == "FloatingPointError: loss is nan at step 30" and t.batches == 20 for t in crashed)
    assert sweep.winner.config == BEST
    saved = json.loads((tmp_path / "sweep" / "tune.json").read_text())
    assert saved["rlcast"]["command"] == "tune" and saved["winner"] == sweep.winner.id
    assert [t["status"] for t in saved["trials"]] == [t.status for t in sweep.trials]
    assert saved["compute"]["batches"] == sweep.compute()["batches"]


def test_resume_after_an_interrupt_takes_the_same_decisions(tmp_path):
    whole = Sweep(synthetic, GRID, 300, rungs=[30, 100], eval_prompts=1000).run()
    with pytest.raises(KeyboardInterrupt):
        Sweep(Interrupt(after=80), GRID, 300, rungs=[30, 100], eval_prompts=1000, out=tmp_path / "s").run()
    partial = json.loads((tmp_path / "s" / "tune.json").read_text())
    assert partial["winner"] is None and any(t["curve"] for t in partial["trials"])
    with pytest.raises(RlcastError, match="exists and is not empty"):
        Sweep(synthetic, GRID, 300, rungs=[30, 100], eval_prompts=1000, out=tmp_path / "s")
    with pytest.raises(RlcastError, match="other settings"):
        Sweep(synthetic, GRID, 200, rungs=[30, 100], eval_prompts=1000, out=tmp_path / "s", resume=True)
    resumed = Sweep(synthetic, GRID, 300, rungs=[30, 100], eval_prompts=1000, out=tmp_path / "s",
                    resume=True).run()
    assert decisions(resumed) == decisions(whole)
    assert resumed.winner.id == whole.winner.id


def ends_at_240(config: dict, report, die: bool = False) -> None:
    """synthetic, except that lr 2.4e-4 ends after batch 20: by raising, or by killing its process (`die`)."""
    def guarded(batches, accuracy):
        if config["learning_rate"] == 2.4e-4 and batches > 20:
            if die:
                os._exit(3)
            raise MemoryError("out of memory")
        return report(batches, accuracy)
    synthetic(config, guarded)


@pytest.mark.slow
def test_worker_processes_take_the_same_decisions_and_survive_a_dead_worker():
    grid = {"learning_rate": [6e-5, 1.2e-4, 2.4e-4], "num_iterations": [2]}
    settings = dict(scheduler="asha", rungs=[30], scheduler_settings={"keep": 0.5})
    here = Sweep(ends_at_240, grid, 300, **settings).run()
    pool = Sweep(functools.partial(ends_at_240, die=True), grid, 300, workers=2, **settings).run()
    assert decisions(pool)[:2] == decisions(here)[:2]
    assert [d[:2] for d in decisions(pool)] == [d[:2] for d in decisions(here)]  # a dead worker's points are lost
    assert pool.trials[2].status == "crashed" and pool.trials[2].reason == "the worker process died (out of memory?)"
    assert pool.winner.config == BEST


@pytest.mark.slow
def test_ray_engine_takes_the_embedded_decisions(tmp_path):
    ray = pytest.importorskip("ray")
    from rlcast.tune.ray_engine import run_on_ray

    grid = {"learning_rate": [6e-5, 1.2e-4, 4.8e-4], "num_iterations": [2]}
    coarse = functools.partial(crashing, every=50)  # few reports: each is a Ray round trip
    settings = dict(rungs=[50, 100], eval_prompts=1000, scheduler="asha", scheduler_settings={"keep": 0.5})
    embedded = Sweep(coarse, grid, 300, **settings).run()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this test module
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    with pytest.raises(KeyboardInterrupt):  # interrupted on its way to the second rung, embedded
        Sweep(Interrupt(after=7, train_fn=coarse), grid, 300, out=tmp_path / "i", **settings).run()
    try:
        on_ray = run_on_ray(Sweep(coarse, grid, 300, out=tmp_path / "r", workers=1, **settings))
        resumed = run_on_ray(Sweep(coarse, grid, 300, out=tmp_path / "i", workers=1, resume=True, **settings))
    finally:
        ray.shutdown()
    assert decisions(resumed) == decisions(embedded)
    assert [t.status for t in embedded.trials] == ["stopped", "finished", "crashed"]
    assert decisions(on_ray) == decisions(embedded)
    assert on_ray.winner.id == embedded.winner.id
    assert json.loads((tmp_path / "r" / "tune.json").read_text())["winner"] == embedded.winner.id


@pytest.mark.parametrize("items, fragment", [
    (["lerning_rate=1e-4"], "--grid 'lerning_rate=1e-4': unknown TrainConfig field 'lerning_rate'"),
    (["num_iterations=1,two"], "--grid 'num_iterations=two': 'two' is not an integer"),
    (["learning_rate=nan"], "--grid learning_rate=nan: learning_rate must be a finite number"),
    (["learning_rate=3e-5,-1e-4"], "--grid learning_rate=-1e-4: learning_rate must be > 0"),
    (["steps=100,200"], "steps is set by the sweep"),
    (["num_generations=5,8"], "batch_size 384 must be a multiple of num_generations 5"),
])
def test_bad_grid_values_fail_in_one_line(items, fragment):
    with pytest.raises(RlcastError) as err:
        parse_grid(items, preset("steady"))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_bad_grid_value_on_the_command_line_fails_before_any_training(tmp_path, run_cli):
    code, _, err = run_cli("tune", "--preset", "steady", "--grid", "learning_rate=3e-5,nan", "--budget", "30",
                           "--out", tmp_path / "s")
    assert code == 1 and not (tmp_path / "s").exists()
    assert err.strip().splitlines() == ["error: --grid learning_rate=nan: learning_rate must be a finite "
                                                  "number (got nan)"]


def test_a_grid_value_of_the_wrong_type_is_a_usage_error(tmp_path, run_cli):
    code, _, err = run_cli("tune", "--preset", "steady", "--grid", "learning_rate=3e-5,abc", "--budget", "30",
                           "--out", tmp_path / "s")
    assert code == 2 and not (tmp_path / "s").exists()
    assert "Usage: " in err and "tune [OPTIONS]" in err
    assert [line for line in err.splitlines() if line.startswith("Error:")] == [
        "Error: Invalid value for '--grid': 'learning_rate=abc': 'abc' is not a number or none"]


def test_winner_line_scales_steps_by_rollout_reuse():
    trial = RlcastTrial(preset("steady"), 300, 10)
    assert train_line(trial, BEST, {"preset": "steady", "hp": []}, "runs/tuned") == (
        "rlcast train --preset steady --hp learning_rate=0.00012 --hp num_iterations=2 --steps 600 --save-every 20 "
        "--out runs/tuned")


@pytest.mark.slow
def test_tiny_real_sweep_on_the_testbed(tmp_path, run_cli):
    out = tmp_path / "sweep"
    code, stdout, err = run_cli("tune", "--grid", "learning_rate=1e-5,3e-5", "--budget", "2", "--save-every", "1",
                                "--rungs", "1", "--keep", "0.5", "--hp", "batch_size=16", "--out", out)
    assert code == 0, err
    saved = json.loads((out / "tune.json").read_text())
    assert sorted(t["status"] for t in saved["trials"]) == ["finished", "stopped"]
    assert [len(t["curve"]) for t in saved["trials"] if t["status"] == "finished"] == [3]  # base, batch 1, batch 2
    assert (out / "trials" / saved["winner"] / "run.json").exists()
    assert "rlcast-output" in (out / "report.html").read_text()[:300]
    assert saved["train_command"] == stdout.strip().splitlines()[-1]
    assert stdout.strip().splitlines()[-1].startswith("rlcast train --preset default --hp batch_size=16 "
                                                             "--hp learning_rate=")


def test_output_folder_rules(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(RlcastError, match="is not a folder"):
        Sweep(synthetic, GRID, 300, out=tmp_path / "file")
    with pytest.raises(RlcastError, match="nothing to resume"):
        Sweep(synthetic, GRID, 300, out=tmp_path / "new", resume=True)
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep me")
    with pytest.raises(RlcastError, match="exists and is not empty"):
        Sweep(synthetic, GRID, 300, out=tmp_path / "theirs")
    assert (tmp_path / "file").read_text() == "mine" and (tmp_path / "theirs" / "notes.txt").exists()


def checkpointed(config: dict, report) -> None:
    """A train_fn that resumes from its checkpoint in report.folder and logs every batch it trains."""
    state = report.folder / "state.json"
    start = json.loads(state.read_text())["batches"] if state.exists() else -10
    assert start == report.last or (start == -10 and report.last == -1)
    for batches in range(start + 10, 301, 10):
        with (report.folder / "trained.log").open("a") as log:
            log.write(f"{batches}\n")
        state.write_text(json.dumps({"batches": batches}))
        if not report(batches, float(planted(config, batches))):
            return


def test_a_promoted_trial_resumes_from_its_checkpoint_and_never_retrains(tmp_path):
    sweep = Sweep(checkpointed, GRID, 300, scheduler="asha", rungs=[30, 100], out=tmp_path / "s").run()
    for t in sweep.trials:
        trained = (tmp_path / "s" / "trials" / t.id / "trained.log").read_text().split()
        assert trained == [str(b) for b in range(0, t.batches + 1, 10)]  # each batch once, up to where it stopped
    assert sweep.winner.config == BEST

"""The same sweep on Ray Tune: every trial a Ray Tune trial, the promotions a `TrialScheduler`.

Each Ray trial runs the sweep's train_fn one rung at a time and calls `ray.tune.report` for every held-out point,
with a small checkpoint (the batches reported so far). Ray Tune's function API blocks in `report` until the
scheduler answers, so a trial never trains past a rung unasked. The scheduler (`RungScheduler`, a `TrialScheduler`)
pauses each trial at the rung; when every trial still in the sweep has reached it (or crashed), it takes the
decision with the embedded engine's own code (`Sweep.settle`: the same scheduler, the same curves) and stops or
unpauses the trials. A promoted trial restarts from its Ray checkpoint and calls train_fn again, which resumes from
its own checkpoint (`report.folder`). Same decisions, same winner as the embedded engine for the same seeds. A
resumed sweep (OUT/tune.json) first decides the rungs all its trials have reached, as the embedded engine does, and
goes on on Ray from there.

Ray is a heavy optional dependency (pip install rlcast[ray]): it is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from rlcast.core.backend import connect
from rlcast.errors import RlcastError
from rlcast.io.outputs import scratch_dir
from rlcast.tune.sweep import Sweep, _segment

STATE = "rung.json"


def _trainable(config: dict, train_fn, trials: dict, rungs: list[int], folders: dict) -> None:
    """One Ray Tune trial: the trial `config["index"]` trained rung after rung, every point reported to Ray (a
    restarted one first reports where it stands, with no accuracy)."""
    from ray import tune  # heavy optional dependency (rlcast[ray]): the Ray engine only

    index = config["index"]
    trial_id, values, last = trials[index]
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            last = json.loads((Path(folder) / STATE).read_text())["last"]

    def send(point):
        nonlocal last
        last = point[0]
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / STATE).write_text(json.dumps({"last": last}))
            tune.report({"batches": point[0], "accuracy": point[1],
                         "sd": math.nan if point[2] is None else point[2]},
                        checkpoint=tune.Checkpoint.from_directory(folder))

    if last >= 0:  # resumed (a promotion, or a resumed sweep): say where it stands, so a trial at a rung waits
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / STATE).write_text(json.dumps({"last": last}))
            tune.report({"batches": last, "accuracy": math.nan, "sd": math.nan},
                        checkpoint=tune.Checkpoint.from_directory(folder))
    for until in [r for r in rungs if r > last]:
        folder = None if folders[index] is None else Path(folders[index])
        _, error = _segment(train_fn, trial_id, values, until, last, folder, send)
        if error is not None:
            tune.report({"batches": max(last, 0), "error": error})
            return
        if last < until:  # train_fn returned before the rung: the scheduler records it
            return


def _scheduler_class():
    """`RungScheduler`, built on first use (its base class is Ray Tune's)."""
    from ray.tune.experiment import Trial as RayTrial  # heavy optional dependency (rlcast[ray]): Ray engine only
    from ray.tune.schedulers import TrialScheduler  # heavy optional dependency (rlcast[ray]): Ray engine only

    class RungScheduler(TrialScheduler):
        """Synchronous successive halving: pause each trial at the sweep's current rung, decide once all are
        there (`Sweep.settle`), then stop the losers and unpause the others."""

        def __init__(self, sweep: Sweep, rung: int):
            super().__init__()
            self.sweep, self.rung = sweep, rung
            self.ray_trials: dict[str, object] = {}
            self.unpause: set[str] = set()

        def _ours(self, trial):
            return self.sweep.trials[trial.config["index"]]

        def _alive(self):
            return [t for t in self.sweep.trials if t.status in ("pending", "running")]

        def on_trial_add(self, tune_controller, trial):
            self.ray_trials[self._ours(trial).id] = trial

        def on_trial_result(self, tune_controller, trial, result):
            ours = self._ours(trial)
            if "error" in result:
                ours.status, ours.reason = "crashed", result["error"]
                self.sweep.save()
                return self._maybe_decide(tune_controller, trial) or TrialScheduler.STOP
            sd = result.get("sd")
            point = [int(result["batches"]), float(result["accuracy"]),
                     None if sd is None or math.isnan(sd) else float(sd)]
            if not math.isnan(point[1]) and (not ours.points or point[0] > ours.points[-1][0]):
                ours.points.append(point)
                self.sweep.save()
                self.sweep.on_update(self.sweep)
            if point[0] < self.sweep.rungs[self.rung] or self.rung == len(self.sweep.rungs) - 1:
                return TrialScheduler.CONTINUE
            self.unpause.discard(ours.id)
            return self._maybe_decide(tune_controller, trial) or TrialScheduler.PAUSE

        def on_trial_error(self, tune_controller, trial):
            ours = self._ours(trial)
            if ours.status != "crashed":
                ours.status, ours.reason = "crashed", f"the Ray trial failed (see {trial.path})"
            self._maybe_decide(tune_controller, None)

        def on_trial_complete(self, tune_controller, trial, result):
            self._maybe_decide(tune_controller, None)

        def on_trial_remove(self, tune_controller, trial):
            self._maybe_decide(tune_controller, None)

        def _maybe_decide(self, tune_controller, current) -> str | None:
            """When every trial still in the sweep is at the rung (or gone), decide; the action for `current`."""
            if self.rung == len(self.sweep.rungs) - 1:
                return None
            until = self.sweep.rungs[self.rung]
            alive = self._alive()
            waiting = [t for t in alive if t.batches < until and (
                t.id not in self.ray_trials or self.ray_trials[t.id].status not in (RayTrial.TERMINATED,
                                                                                     RayTrial.ERROR))]
            if waiting:
                return None
            self.sweep.settle(self.rung, alive)
            self.rung += 1
            action = None
            for t in alive:
                ray_trial = self.ray_trials[t.id]
                going_on = t.status == "running"
                if ray_trial is current:
                    action = TrialScheduler.CONTINUE if going_on else TrialScheduler.STOP
                elif ray_trial.status == RayTrial.PAUSED:
                    if going_on:
                        self.unpause.add(t.id)
                    else:
                        tune_controller.stop_trial(ray_trial)
            return action

        def choose_trial_to_run(self, tune_controller):
            for trial in tune_controller.get_trials():
                if trial.status == RayTrial.PENDING:
                    return trial
            for trial in tune_controller.get_trials():
                if trial.status == RayTrial.PAUSED and self._ours(trial).id in self.unpause:
                    return trial
            return None

        def debug_string(self) -> str:
            return f"rlcast tune: rung {self.sweep.rungs[self.rung]} of {self.sweep.rungs}"

    return RungScheduler


def run_on_ray(sweep: Sweep, address: str | None = None) -> Sweep:
    """Run `sweep` as Ray Tune trials (a local Ray instance with `sweep.workers` CPUs, or the cluster at `address`);
    its trials, tune.json and winner as `sweep.run()` gives them."""
    from ray import tune  # heavy optional dependency (rlcast[ray]): the Ray engine only

    alive = sweep.admit()
    if not alive:
        raise RlcastError("no trial to run")
    last = len(sweep.rungs) - 1
    rung = 0  # a resumed sweep: the rungs every trial has reached are decided as the embedded engine decides them
    while rung < last and all(t.batches >= sweep.rungs[rung] or t.status == "crashed" for t in alive):
        sweep.settle(rung, alive)
        alive, rung = [t for t in alive if t.status in ("pending", "running")], rung + 1
    for t in alive:
        t.status = "running"
    trials = {t.index: (t.id, t.config, t.last) for t in alive}
    folders = {t.index: None if sweep.out is None else str((sweep.out / "trials" / t.id).resolve()) for t in alive}
    scheduler = _scheduler_class()(sweep, rung)
    with connect("ray", address, sweep.workers or 1), scratch_dir("ray-tune") as storage:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trainable, train_fn=sweep.train_fn, trials=trials,
                                                     rungs=sweep.rungs, folders=folders), {"cpu": 1}),
            param_space={"index": tune.grid_search([t.index for t in alive])},
            tune_config=tune.TuneConfig(scheduler=scheduler),  # concurrency: the CPUs (a paused trial holds none)
            run_config=tune.RunConfig(storage_path=str(storage), name="tune", verbose=0))
        tuner.fit()
    sweep.settle(last, [t for t in sweep.trials if t.status in ("pending", "running")])
    sweep.on_update(sweep)
    return sweep

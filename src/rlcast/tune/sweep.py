"""`Sweep`: successive halving over a grid of configurations, with rungs counted in generation batches.

    sweep = Sweep(train_fn, {"learning_rate": [3e-5, 1.2e-4], "num_iterations": [1, 2]}, budget=300)
    result = sweep.run()          # result.winner: the trial with the best final accuracy

`train_fn(config, report)` trains one configuration (a dict of the grid's values) and calls
`report(batches, accuracy, sd=None)` after each held-out evaluation (batches: generation batches so far; sd: that
accuracy's own noise, when known). `report` returns False once the trial reached the rung it may train to
(`report.until`): the function then returns, leaving a checkpoint in `report.folder` (a folder of its own under the
sweep's `out`) from which it resumes when the trial is promoted: it is called again, with `report.last` the batches
already reported (points at or before it are ignored, so a function without checkpoints may replay from the start).

Every admitted trial trains to the first rung; the scheduler (`rlcast.tune.schedulers`) then stops some, the others
train on to the next rung, and so on to the budget, where the best final score (mean of the last 3 checkpoints) wins.
A trial whose function raises is recorded as crashed with the one-line reason and the sweep goes on. With `out`, the
state (every trial's curve, rung, compute and why it stopped) is rewritten to OUT/tune.json after every segment, and
`resume=True` continues an interrupted sweep: decisions are recomputed from the recorded curves, so they are the
same, and so is the winner. `workers=N` runs trials in N worker processes (train_fn must pickle); None runs them in
this process.
"""

from __future__ import annotations

import concurrent.futures as futures
import itertools
import json
import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rlcast.errors import RlcastError, check_int
from rlcast.forecasting import Curve
from rlcast.io.atomic import write_json_atomic
from rlcast.io.outputs import check_output, claim_folder
from rlcast.io.records import output_record
from rlcast.tune.schedulers import RUNG_FRACTIONS, Scheduler, final_score, make_scheduler

STATE = "tune.json"
TRIALS = "trials"


@dataclass
class Trial:
    """One configuration of the grid and what became of it."""

    index: int
    config: dict
    points: list = field(default_factory=list)   # [batches, accuracy, sd or None], batches increasing
    status: str = "pending"    # pending | running | stopped | finished | crashed | skipped
    reason: str = ""
    rung: int = -1             # index of the last rung reached
    passes: int = 1            # backward passes per generation batch (rollout reuse mu)
    forecasts: list = field(default_factory=list)  # the forecast-driven scheduler's forecast at each rung

    @property
    def id(self) -> str:
        return f"t{self.index:02d}"

    @property
    def name(self) -> str:
        return " ".join(f"{k}={_text(v)}" for k, v in self.config.items())

    @property
    def batches(self) -> int:
        """Generation batches spent: the last one reported."""
        return int(self.points[-1][0]) if self.points else 0

    @property
    def last(self) -> int:
        """The last batch reported (-1: none yet, not even the base's score at batch 0)."""
        return int(self.points[-1][0]) if self.points else -1

    @property
    def backward_passes(self) -> int:
        return self.batches * self.passes

    def revealed(self, until: int) -> list:
        return [p for p in self.points if p[0] <= until]

    def score(self) -> float | None:
        """Final score (mean of the last 3 checkpoints) when finished; the current one otherwise."""
        trained = [p for p in self.points if p[0] > 0]
        return final_score(trained) if trained else None

    def to_json(self) -> dict:
        return {"id": self.id, "config": self.config, "status": self.status, "reason": self.reason,
                "rung": self.rung, "batches": self.batches, "backward_passes": self.backward_passes,
                "score": self.score(), "curve": self.points, "forecasts": self.forecasts}


class Reporter:
    """The `report` callable a train_fn gets for one segment (a trial's training up to a rung)."""

    def __init__(self, trial_id: str, until: int, last: int, folder: Path | None, sink: Callable):
        self.trial, self.until, self.last, self.folder, self._sink = trial_id, until, last, folder, sink

    def __call__(self, batches: int, accuracy: float, sd: float | None = None) -> bool:
        """Record held-out `accuracy` after `batches` generation batches; False once the rung is reached."""
        check_int(batches, f"{self.trial}: reported batches", 0)
        if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float, np.floating)) \
                or not 0 <= accuracy <= 1:
            raise RlcastError(f"{self.trial}: accuracy {accuracy!r} at batch {batches} is not a number in [0, 1]")
        if self.last < batches <= self.until:
            self._sink([int(batches), float(accuracy), None if sd is None else float(sd)])
            self.last = batches
        return batches < self.until


def _segment(train_fn, trial_id: str, config: dict, until: int, last: int, folder: Path | None, sink=None):
    """Train one trial up to `until`: (points reported, one-line error or None). Runs here or in a worker."""
    points = []

    def keep(point):
        points.append(point)
        if sink is not None:
            sink(point)

    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    try:
        train_fn(dict(config), Reporter(trial_id, until, last, folder, keep))
    except Exception as err:  # a crashing trial is recorded, the sweep goes on
        return points, f"{type(err).__name__}: {' '.join(str(err).split()) or 'no message'}"
    return points, None


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


class Sweep:
    """Successive halving of `train_fn` over `grid` ({name: [values]}) with rungs in generation batches.

    budget       generation batches of a full trial (the last rung)
    scheduler    "forecast" | "asha" | "median" | "random" or a `Scheduler` (settings in `scheduler_settings`)
    rungs        the rungs in generation batches, increasing, the last the budget (default: `default_rungs`)
    out          folder of OUT/tune.json and the trials' own folders (OUT/trials/ID); None: nothing written
    workers      worker processes (None: this process)
    passes       backward passes per generation batch of a config (default: its num_iterations, else 1)
    eval_prompts prompts per held-out evaluation: the noise of a point reported without sd
    settings     what else the results depend on (recorded in tune.json; a resumed sweep must have the same)
    """

    def __init__(self, train_fn: Callable, grid: dict[str, Sequence], budget: int, scheduler: str | Scheduler =
                 "forecast", rungs: Sequence[int] | None = None, out: str | Path | None = None,
                 workers: int | None = None, seed: int = 0, passes: Callable[[dict], int] | None = None,
                 eval_prompts: int | None = None, resume: bool = False, settings: dict | None = None,
                 on_update: Callable | None = None, scheduler_settings: dict | None = None):
        self.train_fn, self.budget = train_fn, check_int(budget, "budget", 1)
        self.grid = _check_grid(grid)
        self.scheduler = make_scheduler(scheduler, **(scheduler_settings or {}))
        self.rungs = _check_rungs(rungs, self.budget)
        self.workers = None if workers is None else check_int(workers, "workers", 1)
        self.seed = check_int(seed, "seed", 0)
        self.eval_prompts = eval_prompts
        self.on_update = on_update or (lambda sweep: None)
        passes = passes or (lambda config: int(config.get("num_iterations", 1)))
        self.trials = [Trial(i, dict(zip(self.grid, values)), passes=passes(dict(zip(self.grid, values))))
                       for i, values in enumerate(itertools.product(*self.grid.values()))]
        self.out = None if out is None else Path(out)
        self.extra: dict = {}  # more for tune.json (the CLI's winner command)
        self.settings = {"grid": self.grid, "budget": self.budget, "rungs": self.rungs, "seed": self.seed,
                         **self.scheduler.settings(), **(settings or {})}
        if self.out is not None:
            self._claim(resume)

    # --- the state on disk

    def _claim(self, resume: bool) -> None:
        check_output(self.out, "tune", folder=True, replaces=False)
        if self.out.exists() and not self.out.is_dir():
            raise RlcastError(f"{self.out}: exists and is not a folder; write elsewhere with --out DIR")
        state = self.out / STATE
        if resume:
            if not state.exists():
                raise RlcastError(f"{self.out}: nothing to resume (no {STATE})")
            self._load(state)
        elif self.out.exists() and any(p.name != ".rlcast-output" for p in self.out.iterdir()):
            raise RlcastError(f"{self.out}: exists and is not empty (pass --resume to continue the "
                              f"sweep in it, or another --out)")
        claim_folder(self.out, output_record("tune"))

    def _load(self, state: Path) -> None:
        try:
            saved = json.loads(state.read_text())
        except ValueError as err:
            raise RlcastError(f"{state}: not valid JSON ({err})") from None
        old, new = (saved.get("rlcast") or {}).get("settings") or {}, output_record("tune", self.settings)["settings"]
        changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if changed:
            raise RlcastError(f"{state}: a sweep with other settings ({', '.join(changed)}); resume it with its own, "
                              f"or use another --out")
        for trial, record in zip(self.trials, saved.get("trials", [])):
            trial.points = [list(p) for p in record["curve"]]
            if record["status"] == "crashed":
                trial.status, trial.reason = "crashed", record["reason"]

    def save(self) -> None:
        if self.out is not None:
            write_json_atomic(self.out / STATE, self.to_json(), indent=1, record=output_record("tune", self.settings))

    # --- what the schedulers see

    def curve(self, trial: Trial, until: int) -> Curve:
        """The trial's curve up to `until` on the generation-batch axis, as the forecasters take it."""
        points = trial.revealed(until)
        steps = np.array([p[0] for p in points], dtype=int)
        acc = np.array([p[1] for p in points], dtype=float)
        binomial = np.sqrt(acc * (1 - acc) / self.eval_prompts) if self.eval_prompts else np.full(len(acc), np.nan)
        sd = np.array([p[2] if p[2] is not None else b for p, b in zip(points, binomial)], dtype=float)
        return Curve(f"{trial.id} ({trial.name})", steps, acc, sd, planned=self.budget,
                     eval_prompts=self.eval_prompts)

    # --- the sweep

    def run(self) -> "Sweep":
        """Run (or continue) the sweep to its end; returns itself (`winner`, `to_json()`)."""
        self.admit()
        try:
            for k, until in enumerate(self.rungs):
                todo = [t for t in self.trials if t.status in ("pending", "running")]
                self._train([t for t in todo if t.batches < until], until)
                self.settle(k, todo)
        finally:
            self.save()
        self.on_update(self)
        return self

    def admit(self) -> list[Trial]:
        """The trials the scheduler starts (all but random search's); the others are marked skipped."""
        admitted = {t.id for t in self.scheduler.admit(self.trials, self)}
        for t in self.trials:
            if t.id not in admitted:
                t.status, t.reason = "skipped", f"not drawn by {self.scheduler.name} search"
        return [t for t in self.trials if t.id in admitted and t.status != "crashed"]

    def settle(self, k: int, trials: list[Trial]) -> None:
        """Rung k is reached by every trial that did not crash: mark them, then stop those the scheduler stops."""
        until = self.rungs[k]
        for t in trials:
            if t.status == "crashed":
                continue
            if t.batches < until:
                t.status, t.reason = "crashed", f"stopped reporting at batch {t.batches}, before the rung {until}"
                continue
            t.rung, t.status = k, "running"
        alive = [t for t in trials if t.status == "running"]
        if k == len(self.rungs) - 1:
            for t in alive:
                t.status, t.reason = "finished", f"trained to the budget ({until} generation batches)"
        elif alive:
            for trial_id, why in self.scheduler.decide(k, alive, self).items():
                t = next(t for t in alive if t.id == trial_id)
                t.status, t.reason = "stopped", f"at rung {until}: {why}"
        self.save()
        self.on_update(self)

    def _folder(self, trial: Trial) -> Path | None:
        return None if self.out is None else self.out / TRIALS / trial.id

    def _record(self, trial: Trial, points: list, error: str | None) -> None:
        for p in points:
            if not trial.points or p[0] > trial.points[-1][0]:
                trial.points.append(p)
        if error is not None:
            trial.status, trial.reason = "crashed", error
        self.save()
        self.on_update(self)

    def _train(self, trials: list[Trial], until: int) -> None:
        """Each trial up to `until`: here, or `workers` at a time, each segment in a process of its own (a trial
        that kills its process, out of memory, takes no other trial with it)."""
        for t in trials:
            t.status = "running"
        if self.workers is None:
            for t in trials:
                def live(point, t=t):
                    t.points.append(point)
                    self.on_update(self)
                _, error = _segment(self.train_fn, t.id, t.config, until, t.last, self._folder(t), live)
                self._record(t, [], error)
            return
        context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        running: set = set()

        def one(t: Trial):
            with futures.ProcessPoolExecutor(1, mp_context=context, initializer=_worker_init,
                                             initargs=(threads,)) as process:
                running.add(process)
                try:
                    return process.submit(_segment, self.train_fn, t.id, t.config, until, t.last,
                                          self._folder(t)).result()
                except futures.process.BrokenProcessPool:
                    return [], "the worker process died (out of memory?)"
                finally:
                    running.discard(process)

        with futures.ThreadPoolExecutor(self.workers) as pool:
            jobs = {pool.submit(one, t): t for t in trials}
            try:
                for job in futures.as_completed(jobs):
                    self._record(jobs[job], *job.result())
            except BaseException:  # an interrupt: the running trials end too (they resume from their checkpoints)
                pool.shutdown(wait=False, cancel_futures=True)
                for process in list(running):
                    for child in list((process._processes or {}).values()):  # the executor has no public terminate
                        child.terminate()
                raise

    # --- results

    @property
    def winner(self) -> Trial | None:
        done = [t for t in self.trials if t.status == "finished"]
        return max(done, key=lambda t: (t.score(), -t.index)) if done else None

    def compute(self) -> dict:
        """Generation batches and backward passes spent, against the full sweep (every trial to the budget)."""
        batches = sum(t.batches for t in self.trials)
        passes = sum(t.backward_passes for t in self.trials)
        full_batches = self.budget * len(self.trials)
        full_passes = sum(self.budget * t.passes for t in self.trials)
        return {"batches": batches, "backward_passes": passes, "full_batches": full_batches,
                "full_backward_passes": full_passes, "batch_fraction": batches / full_batches,
                "pass_fraction": passes / full_passes}

    def to_json(self) -> dict:
        winner = self.winner
        return {"settings": self.settings, "rungs": self.rungs, "budget": self.budget,
                "compute": self.compute(), "winner": None if winner is None else winner.id,
                "trials": [t.to_json() for t in self.trials], **self.extra}


def _check_grid(grid: dict) -> dict[str, list]:
    if not isinstance(grid, dict) or not grid:
        raise RlcastError("grid: expected {name: [values]} with at least one name")
    out = {}
    for name, values in grid.items():
        values = list(values) if isinstance(values, (list, tuple)) else None
        if not values:
            raise RlcastError(f"grid {name}: expected a non-empty list of values")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise RlcastError(f"grid {name}: a value is given twice ({values})")
        out[str(name)] = values
    return out


def default_rungs(budget: int, every: int = 1) -> list[int]:
    """The rungs before `budget` at RUNG_FRACTIONS of it (chosen by bench/tune.py), on multiples of `every` (the
    evaluation interval: a rung between two evaluations would wait for the next)."""
    return sorted({min(budget, max(every, round(budget * f / every) * every)) for f in RUNG_FRACTIONS} - {budget})


def _check_rungs(rungs, budget: int) -> list[int]:
    rungs = default_rungs(budget) if rungs is None else list(rungs)
    for r in rungs:
        check_int(r, "rung", 1)
    if not rungs or rungs[-1] != budget:
        rungs.append(budget)
    rungs = sorted(set(rungs))
    if rungs[-1] != budget:
        raise RlcastError(f"rungs {rungs}: every rung must be <= the budget {budget}")
    return rungs


def _text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, (dict, list)) \
        else str(value)

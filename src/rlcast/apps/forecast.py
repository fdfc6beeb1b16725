"""`rlcast forecast`: where each run will end, from its first checkpoints, with 90 % intervals.

A run is any source `rlcast.io.logs.read_log` reads: a run folder (run.json), a TRL output folder, a verl console log,
TensorBoard event files, a CSV export (`--metric`, `--reward`, `--eval-size` pick what is read); the weight-based
forecaster needs readable checkpoints (run and TRL folders).
For each run, cut at `until` (default: its last checkpoint): every forecaster of `rlcast.forecasting` and their
back-tested combination give the held-out accuracy at the target step (default: the run's planned last step, run.json
config `steps`, else twice the cutoff) and at convergence (the saturating forecasters' asymptote), the step at which
an accuracy is reached, and the gain expected over the remaining steps with a stop/continue hint. Several runs are
ranked by their forecast at their own target, with the probability that the leader really ends highest (independent
draws from each run's predictive distribution). A future checkpoint's score scatters around the forecast trend by
one evaluation's noise or by the run's own checkpoint-to-checkpoint swing where that is larger (`Curve.noise`); a
swing over twice the evaluation noise is flagged as unstable (on the testbed it flagged only runs at 8x and 16x the
steady-slow learning rate, none at the tuned one). Bad input is one line naming the run, before any fit: fewer than 3
checkpoints with accuracies, a constant curve, a target before the cutoff, runs on different tasks in one ranking.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from rlcast.errors import RlcastError
from rlcast.forecasting import ALONGSIDE, FORECASTERS, LEVEL, Combination, Curve, checked
from rlcast.forecasting.curves import with_weights
from rlcast.forecasting.knee import after_knee
from rlcast.io.atomic import write_json_atomic
from rlcast.io.checkpoints import Checkpoint, Run, load_run
from rlcast.io.logs import detect, read_log
from rlcast.io.logs.runfolder import manifest_run

UNSTABLE = 2.0  # a swing between checkpoints this many times their evaluation noise is flagged
REACH_GRID = 400  # steps between the cutoff and 10x the target at which sampled curves are checked for --reach
CHECKPOINTED = ("run", "trl")  # the log formats that may come with checkpoints (for the weight-based forecaster)


@dataclass
class RunForecast:
    run: str
    task: str | None
    cutoff: int
    target_step: int
    current: float                 # the last measured held-out accuracy (at the cutoff)
    combined: dict                 # {"median", "low", "high"} at the target (a checkpoint's score: its noise included)
    forecasters: dict              # name -> {"median", "low", "high", "weight", "backtest_mse"} or {"reason"}
    convergence: dict | None       # the combined asymptote, or None when no saturating forecaster fits
    gain: dict                     # true-accuracy gain from the cutoff to the target
    hint: str
    reach: dict | None = None
    error_growth: float = 0.0      # the combination's calibrated error sd per log-horizon
    unstable: str | None = None    # why single checkpoints of this run scatter far from any forecast
    model: Combination | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("model")
        return out


def open_run(path: str | Path, base: str | None = None) -> tuple[Run, str | None]:
    """(run, None) when its checkpoints load, else (the run known by its run.json alone, why the weights cannot be
    read)."""
    try:
        return load_run(path, base=base), None
    except RlcastError as err:
        if not (Path(path).expanduser() / "run.json").is_file():
            raise
        return manifest_run(path), str(err)


def read_by(paths: list[str | Path], base: str | None = None) -> list[Run]:
    """Everything `forecast` reads, as runs for `io.outputs.check_output` (its --json output never is, contains or lies
    inside any of it): each run's folder and run.json, its base and checkpoint folders (their trainer_state.json), also
    the folders a run.json names when the weights in them cannot be read."""
    runs = []
    for path in paths:
        if detect(path)[0] != "run":
            continue  # a log: `log_inputs`
        run, unreadable = open_run(path, base)
        if unreadable:
            root, manifest = run.root, run.manifest
            named = [Checkpoint(e.step, (root / e.path).resolve(), "full") for e in manifest.checkpoints if e.path]
            origin = base or manifest.base
            run = Run((root / origin).resolve() if origin else None, named, root, manifest)
        runs.append(run)
    return runs


def log_inputs(paths: list[str | Path], base: str | None = None) -> dict[str, Path]:
    """The sources `forecast` reads that are not run folders (logs, TRL folders: all of each), and --base, as
    `io.outputs.check_output`'s inputs."""
    logs = {f"the log {path}": Path(path) for path in paths if detect(path)[0] != "run"}
    return logs | ({"the base model": Path(base)} if base else {})


def open_source(path: str | Path, base: str | None = None, metric: str | None = None, reward: str | None = None,
                eval_size: int | None = None, checkpoints: bool = True) -> tuple[Curve, Run | None, str | None]:
    """(the curve of any log `rlcast.io.logs.read_log` reads, its run when its checkpoints load, else why not): run
    folders and TRL folders may have checkpoints, the other formats are curves only. `checkpoints=False` (no weights
    wanted) skips resolving them: the curve alone is read, once."""
    fmt, _ = detect(path)
    curve = Curve.from_log(read_log(path, metric, reward, eval_size))
    if not checkpoints:
        return curve, None, "weights not wanted"
    if fmt == "run":
        run, unreadable = open_run(path, base)
        return curve, run, unreadable
    if fmt == "trl" and Path(path).is_dir():
        try:
            return curve, load_run(path, base=base), None
        except RlcastError as err:
            return curve, None, str(err)
    return curve, None, f"a {fmt} log holds no checkpoints"


def default_target(curve: Curve) -> int:
    """The run's planned last step (run.json config `steps`), else twice the cutoff."""
    return int(curve.planned) if curve.planned else 2 * curve.last


def prepare(paths: list[str | Path], until: int | None = None, target: int | None = None,
            weights: bool | None = None, base: str | None = None, progress: bool = False, metric: str | None = None,
            reward: str | None = None, eval_size: int | None = None) -> list[tuple[Curve, int]]:
    """(curve cut at `until`, target step) per source (any format `rlcast.io.logs` reads), every input checked before
    the first (expensive) read of weights.

    `weights`: None reads them when the checkpoints load, True requires them, False never reads them.
    """
    runs, curves = [], []
    for path in paths:
        full, run, unreadable = open_source(path, base, metric, reward, eval_size, checkpoints=weights is not False)
        if weights and unreadable:
            raise RlcastError(f"{path}: --weights needs readable checkpoints ({unreadable})")
        if until is not None and until > full.last:
            raise RlcastError(f"{full.run}: --until {until} is after its last checkpoint (step {full.last}); leave "
                              f"--until out to forecast from all of them")
        window = full.window(until) if until is not None else full
        points = int((window.steps > 0).sum())
        if points < 3 and detect(path)[0] != "run":  # checked()'s advice (rlcast eval) is for run folders
            raise RlcastError(f"{full.run}: {points} validation point(s) after step 0"
                              f"{f' up to step {until}' if until is not None else ''}; forecasting needs at least 3")
        curve = checked(window)
        step = target if target is not None else default_target(curve)
        if step < curve.last:
            raise RlcastError(f"{curve.run}: target step {step} is before the cutoff step {curve.last}")
        runs.append((run, unreadable is None))
        curves.append((curve, step))
    tasks = {c.task for c, _ in curves if c.task}  # a log that names no task ranks beside any run
    if len(curves) > 1 and len(tasks) > 1:
        listing = "; ".join(f"{c.run}: {c.task or 'no task'}" for c, _ in curves)
        raise RlcastError(f"runs on different tasks cannot be ranked together ({listing})")
    if weights is not False:
        curves = [(with_weights(c, run, progress) if readable and run.checkpoints else c, step)
                  for (c, step), (run, readable) in zip(curves, runs)]
    return curves


def forecast_curve(curve: Curve, target: int, reach: float | None = None, min_gain: float = 0.01,
                   model: Combination | None = None, level: float = LEVEL) -> RunForecast:
    """Fit the combination (default `Combination()`) on `curve` (already cut) and summarise it at `target`."""
    model = (model or Combination()).fit(curve)
    steps = np.array([curve.last, target, np.inf], dtype=float)
    combined = model.predict(steps)
    forecasters = {name: {"reason": reason} for name, reason in model.reasons_.items()}
    for name, member in model.members_.items():
        own = member.predict(steps)
        forecasters[name] = {**own.summary(1, level), "weight": model.weights_[name],
                             "in_combination": name not in model.shown_, "error_growth": model.growth_[name],
                             "backtests": len(model.backtest_[name]["pairs"]),
                             "convergence": own.summary(2, level) if member.saturating else None}
    convergence = combined.summary(2, level) if np.isfinite(combined.center[2]) else None
    gain = combined.paths[:, 1] - combined.paths[:, 0]
    q = np.quantile(gain, [0.5, (1 - level) / 2, (1 + level) / 2])
    gain = {"median": float(q[0]), "low": float(q[1]), "high": float(q[2]), "min_gain": min_gain}
    span = f"steps {curve.last} -> {target}"
    if target == curve.last:
        hint = "at the target already: nothing left to forecast"
    elif gain["low"] > min_gain:
        hint = f"continue: {gain['median']:+.3f} [{gain['low']:+.3f}, {gain['high']:+.3f}] expected over {span}"
    elif gain["high"] < min_gain:
        hint = f"stop: at most {gain['high']:+.3f} expected over {span} (90 % upper bound < {min_gain:+.3f})"
    else:
        hint = (f"undecided: {gain['median']:+.3f} [{gain['low']:+.3f}, {gain['high']:+.3f}] expected over {span} "
                f"(the interval straddles {min_gain:+.3f})")
    return RunForecast(curve.run, curve.task, curve.last, target, float(curve.accuracy[-1]), combined.summary(1, level),
                       forecasters, convergence, gain, hint, reach_step(curve, model, reach, target, level)
                       if reach is not None else None, model.s_, instability(curve), model)


def instability(curve: Curve) -> str | None:
    """A warning when the scores swing between checkpoints well beyond their evaluation noise (Curve.swing, after the
    early jump: the format jump of a real run is no swing)."""
    curve = after_knee(curve)
    swing = curve.swing()
    noise = float(np.median(curve.evaluation_noise(curve.accuracy[curve.steps > 0])))
    if not (np.isfinite(swing) and noise > 0 and swing > UNSTABLE * noise):
        return None
    return (f"unstable: its scores swing {swing:.3f} between checkpoints, {swing / noise:.1f}x their evaluation noise "
            f"{noise:.3f}; the forecast is of the trend, and any one checkpoint can land that far from it")


def reach_step(curve: Curve, model: Combination, accuracy: float, target: int, level: float = LEVEL) -> dict:
    """When the (true) accuracy first reaches `accuracy`: median and `level` interval over the sampled curves,
    searched up to 10x the target; a measured checkpoint at or above it answers directly."""
    hit = curve.steps[(curve.accuracy >= accuracy) & (curve.steps > 0)]
    if len(hit):
        return {"accuracy": accuracy, "reached_at": int(hit[0]), "median": int(hit[0]), "low": int(hit[0]),
                "high": int(hit[0]), "probability": 1.0, "horizon": int(hit[0])}
    horizon = 10 * max(target, curve.last)
    grid = np.unique(np.geomspace(curve.last, horizon, REACH_GRID).round())
    paths = model.predict(grid).paths
    above = paths >= accuracy
    never = 2.0 * horizon  # stands for "not by the horizon" in the quantiles
    first = np.where(above.any(1), grid[np.argmax(above, axis=1)], never)
    q = np.quantile(first, [0.5, (1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    as_step = lambda v: None if v >= never else int(v)  # noqa: E731 - None: not reached by the horizon
    return {"accuracy": accuracy, "reached_at": None, "median": as_step(q[0]), "low": as_step(q[1]),
            "high": as_step(q[2]), "probability": float((first < never).mean()), "horizon": horizon}


def rank(results: list[RunForecast], draws: int = 4000, seed: int = 0) -> dict:
    """Runs ordered by their forecast at their target, and P(the leader really ends highest): independent draws
    from each run's predictive distribution of its true accuracy at its target."""
    order = sorted(range(len(results)), key=lambda i: -results[i].combined["median"])
    rng = np.random.default_rng(seed)
    samples = []
    for r in results:
        paths = r.model.predict([r.target_step]).paths[:, 0]
        samples.append(rng.choice(paths, size=draws))  # resampled independently per run
    samples = np.stack(samples)
    leader = order[0]
    p = float((samples[leader] >= samples.max(0)).mean())
    return {"order": [results[i].run for i in order], "leader": results[leader].run, "p_leader": p}


def forecast(paths: list[str | Path], until: int | None = None, target: int | None = None,
             reach: float | None = None, weights: bool | None = None, min_gain: float = 0.01,
             base: str | None = None, progress: bool = True, metric: str | None = None, reward: str | None = None,
             eval_size: int | None = None) -> tuple[list[RunForecast], dict | None]:
    """Forecast every run or log (see the module docstring); (per-run results, ranking or None for one run).
    `metric`, `reward`, `eval_size`: `rlcast.io.logs.read_log`'s, for every source."""
    if reach is not None and not 0 < reach <= 1:
        raise RlcastError(f"--reach {reach}: expected an accuracy in (0, 1]")
    curves = prepare(paths, until, target, weights, base, progress, metric, reward, eval_size)
    results = []
    for path, (curve, step) in zip(paths, curves):
        checkpoints = weights is not False and detect(path)[0] in CHECKPOINTED  # else no weight-based forecaster
        alongside = [m for m in ALONGSIDE if checkpoints or not FORECASTERS[m].reads_weights]
        results.append(forecast_curve(curve, step, reach, min_gain, Combination(alongside=alongside)))
    return results, rank(results) if len(results) > 1 else None


def to_json(results: list[RunForecast], ranking: dict | None) -> dict:
    return {"level": LEVEL, "runs": [r.to_json() for r in results], "ranking": ranking}


def save(results: list[RunForecast], ranking: dict | None, path: Path, record: dict | None = None) -> Path:
    """Write the forecasts as JSON to `path` (`record`: the command and settings, `io.records.output_record`)."""
    return write_json_atomic(Path(path), to_json(results, ranking), record=record)


def _interval(d: dict | None) -> tuple[str, str]:
    if not d:
        return "-", "-"
    return f"{d['median']:.3f}", f"{d['low']:.3f}-{d['high']:.3f}"


def run_table(r: RunForecast) -> Table:
    """One run: each forecaster's forecast at the target and at convergence, its back-test weight, the combination."""
    tested = any(f.get("backtests") for f in r.forecasters.values())
    weights = (f"weights from a rolling-origin back-test on steps <= {r.cutoff}" if tested else
               "equal weights: too few checkpoints up to this cutoff for a back-test (0 back-test errors each)")
    t = Table(title=f"{r.run}: held-out accuracy at step {r.target_step}, forecast from the checkpoints up to step "
                    f"{r.cutoff} (last {r.current:.3f})",
              caption=f"90 % intervals for a checkpoint's score (its evaluation noise included); {weights}; "
                      f"error growth: the forecast error's sd per "
                      f"log-horizon (back-test errors, number of them); alongside: shown, not combined (it "
                      f"never levels off)", caption_justify="left")
    for col in ("forecaster", "weight", "error growth", f"step {r.target_step}", "90% interval", "convergence"):
        t.add_column(col, justify="left" if col == "forecaster" else "right", no_wrap=True)
    notes = []
    for name, f in r.forecasters.items():
        if "reason" in f:
            notes.append(f["reason"])
            t.add_row(f"[dim]{name}[/]", "-", "-", f"[dim]not fitted ({len(notes)})[/]", "", "")
            continue
        med, ci = _interval(f)
        conv = _interval(f["convergence"])
        growth = f"{f['error_growth']:.3f} ({f['backtests']})"
        weight = f"{f['weight']:.2f}" if f["in_combination"] else "alongside"
        t.add_row(name, weight, growth, med, ci, "-" if conv[0] == "-" else f"{conv[0]} ({conv[1]})")
    med, ci = _interval(r.combined)
    conv = _interval(r.convergence)
    t.add_row("[bold]combined[/]", "1.00", f"{r.error_growth:.3f}", f"[bold]{med}[/]", f"[bold]{ci}[/]",
              "-" if conv[0] == "-" else f"{conv[0]} ({conv[1]})")
    if notes:
        t.caption += "".join(f"\n({i + 1}) {n}" for i, n in enumerate(notes))
    return t


def ranking_table(results: list[RunForecast], ranking: dict) -> Table:
    by_run = {r.run: r for r in results}
    t = Table(title="ranking: which run ends highest",
              caption=f"P(the leader really ends highest) = {ranking['p_leader']:.2f}", caption_justify="left")
    for col in ("#", "run", "cutoff", "target", "forecast", "90% interval", "gain"):
        t.add_column(col, justify="left" if col == "run" else "right", no_wrap=col != "run")
    for i, name in enumerate(ranking["order"]):
        r = by_run[name]
        med, ci = _interval(r.combined)
        t.add_row(str(i + 1), name, str(r.cutoff), str(r.target_step), med, ci, f"{r.gain['median']:+.3f}")
    return t


def print_report(results: list[RunForecast], ranking: dict | None, console: Console | None = None) -> None:
    console = console or Console()
    for r in results:
        console.print(run_table(r))
        console.print(f"  {r.hint}", highlight=False)
        if r.unstable:
            console.print(f"  [yellow]{r.unstable}[/]", highlight=False)
        if r.reach:
            console.print("  " + reach_text(r.reach), highlight=False)
    if ranking:
        console.print(ranking_table(results, ranking))


def reach_text(reach: dict) -> str:
    acc = reach["accuracy"]
    if reach["reached_at"] is not None:
        return f"accuracy {acc:.3f} already reached at step {reach['reached_at']} (measured)"
    if reach["median"] is None:
        return (f"accuracy {acc:.3f}: not reached by step {reach['horizon']} in most sampled curves "
                f"(P(reached) = {reach['probability']:.2f})")
    high = "beyond " + str(reach["horizon"]) if reach["high"] is None else str(reach["high"])
    return (f"accuracy {acc:.3f} reached at step {reach['median']} [90 %: {reach['low']}, {high}], "
            f"P(reached by step {reach['horizon']}) = {reach['probability']:.2f}")

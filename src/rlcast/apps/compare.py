"""Every extrapolator side by side on one run: same target step, same held-out prompts, same budget.

For each cutoff (a fraction of the target step) and each method: fit on the checkpoints up to the cutoff, predict the
target step, write the predicted model to a temporary folder, evaluate it on the task's held-out prompts and delete it
(or keep it). A method is a registered name (`rlcast.extrapolation.METHODS`) or an `Extrapolator` instance, e.g. of a class
of your own; a method that takes a `task` (NExt, to choose its scale c on the train split) gets the compared task, its
arguments and the target step unless they are set.
The real checkpoints at each cutoff and at the target (and the base) are evaluated the same way as reference rows.
A method that cannot run on a window (too few checkpoints, no accuracies, ...) gets a row with the reason.
Every method fits on the `compute` device (auto: CUDA when present) and computes its predicted tensors on its backend
(local threads, or one Ray task per tensor), as `rlcast extrapolate` does; the evaluation is the same whatever they are.
Next to them, per cutoff, `rlcast forecast`'s combined forecast of the target's held-out accuracy from run.json's
accuracy curve up to the cutoff (90 % interval; no model is evaluated for it).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from rlcast.apps.forecast import forecast_curve
from rlcast.core.backend import Backend, Compute
from rlcast.errors import RlcastError
from rlcast.evaluation.generation import check_prompts, evaluate
from rlcast.evaluation.tasks import get_task, run_task_spec, task_variant
from rlcast.extrapolation import METHODS, Extrapolator, make_extrapolator
from rlcast.extrapolation.base import with_task
from rlcast.forecasting import checked, read_curve
from rlcast.io.atomic import atomic_file, write_json_atomic
from rlcast.io.checkpoints import Run
from rlcast.io.outputs import check_output, claim_folder, scratch_dir
from rlcast.io.reader import RunReader
from rlcast.io.records import STAMP, output_record
from rlcast.io.writer import write_model

REFERENCE = "real"


@dataclass
class Row:
    method: str                  # an extrapolation method, or "real" for a real checkpoint (step 0 = base)
    cutoff: int                  # last window step the method saw (for "real": the checkpoint's step)
    target: int
    accuracy: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    pct_of_target: float | None = None   # 100 * accuracy / accuracy of the real target checkpoint
    gain: float | None = None            # accuracy - accuracy of the real checkpoint at the cutoff
    reason: str | None = None            # why the method produced no model
    seconds: float = 0.0                 # fit + predict + write (methods) or write (real), without evaluation
    info: dict = field(default_factory=dict)  # what the method chose (Extrapolator.summary())

    @property
    def fraction(self) -> float:
        return self.cutoff / self.target


@dataclass
class Comparison:
    run: str
    task: str
    target: int
    n_prompts: int
    seed: int
    cutoffs: list[int]
    params: dict[str, dict]
    rows: list[Row] = field(default_factory=list)
    task_args: dict = field(default_factory=dict)
    forecasts: list[dict] = field(default_factory=list)  # per cutoff: the accuracy curve's forecast (forecast_at)
    settings: dict = field(default_factory=dict)  # what the numbers depend on (`settings`), recorded in the outputs

    @property
    def variant(self) -> str:
        return task_variant(self.task, self.task_args)

    def to_dict(self) -> dict:
        out = asdict(self)
        del out["settings"]
        for row, d in zip(self.rows, out["rows"]):
            d["fraction"] = row.fraction
        return out

    def row(self, method: str, cutoff: int) -> Row | None:
        return next((r for r in self.rows if r.method == method and r.cutoff == cutoff), None)


def cutoff_steps(run: Run, fractions: list[float], target: int) -> list[int]:
    """The nominal cutoff step of each fraction of the target (the window keeps checkpoints at or before it)."""
    if not fractions:
        raise RlcastError("no cutoffs: give at least one fraction of the target step, e.g. 0.1,0.2,0.4")
    out = []
    for f in fractions:
        if not 0 < f < 1:
            raise RlcastError(f"cutoff {f}: fractions must lie strictly between 0 and 1")
        out.append(int(round(f * target)))
    return out


def resolve_target(run: Run, target: str | int) -> int:
    """'last' -> the last checkpoint's step; an int must be a checkpoint of the run (its real accuracy is needed)."""
    if not run.checkpoints:
        raise RlcastError(f"{run.root or run.base}: the run has no checkpoints")
    if str(target) == "last":
        return run.steps[-1]
    step = int(target)
    run.checkpoint(step)
    return step


class _Evaluator:
    """Writes a weight stream to an HF folder (under `keep`, else a scratch folder deleted after), evaluates it."""

    def __init__(self, run: Run, task, n_prompts: int, seed: int, work: Path, keep: Path | None):
        self.run, self.task, self.n_prompts, self.seed = run, task, n_prompts, seed
        self.work, self.keep = work, keep

    def __call__(self, label: str, stream, metadata: dict) -> tuple[object, float]:
        start = time.perf_counter()
        folder = write_model(self.run.base, (self.keep or self.work) / label, stream, metadata=metadata,
                             record=output_record("compare"))
        seconds = time.perf_counter() - start
        try:
            result = evaluate(folder, self.task, n_prompts=self.n_prompts, seed=self.seed, progress=False)
        finally:
            if self.keep is None:
                shutil.rmtree(folder, ignore_errors=True)
        return result, seconds


def method_specs(methods: list[str | Extrapolator] | None) -> dict[str, str | Extrapolator]:
    """{row label: method}: registered names (checked now, before any evaluation) and Extrapolator instances."""
    specs = {}
    for m in methods or list(METHODS):
        if isinstance(m, Extrapolator):
            specs[m.label()] = m
        elif m in METHODS:
            specs[m] = m
        else:
            raise RlcastError(f"unknown method {m!r}: choose from {', '.join(METHODS)}")
    return specs


def settings(run: Run, cutoffs=(0.1, 0.2, 0.4), target: str | int = "last", task: str | None = None,
             methods: list[str | Extrapolator] | None = None, n_prompts: int = 200, seed: int = 0,
             params: dict[str, dict] | None = None, task_args: dict | None = None) -> dict:
    """What a comparison depends on (not where it ran): a saved one with other settings is not replaced silently."""
    return {"run": str(run.root or run.base), "cutoffs": list(cutoffs), "target": str(target), "task": task,
            "task_args": task_args or {}, "methods": list(method_specs(methods)), "n_prompts": n_prompts, "seed": seed, "params": params or {}}


def compare(run: Run, cutoffs: list[float] = (0.1, 0.2, 0.4), target: str | int = "last", task: str | None = None,
            methods: list[str | Extrapolator] | None = None, n_prompts: int = 200, seed: int = 0,
            params: dict[str, dict] | None = None, keep: Path | None = None, progress: bool = True,
            compute: Compute = Compute(), task_args: dict | None = None, force: bool = False) -> Comparison:
    """Run every method at every cutoff; returns the Comparison (rows: real references first, then methods).

    `methods`: registered names or Extrapolator instances (default: every registered method). `params` maps a method
    (its name, or an instance's `label()`) to hyper-parameters, set on top of an instance's own. `task`, `task_args`:
    the run's own unless given (`tasks.run_task_spec`). `keep`: a folder to write the evaluated models into (kept;
    otherwise they are deleted after their evaluation); one that rlcast compare did not write is refused unless
    `force`. `compute`: where the methods fit and predict (`rlcast.core.backend`). Every method is built with its
    parameters, and every setting checked, before anything is evaluated.
    """
    check_prompts(n_prompts)
    given = settings(run, cutoffs, target, task, methods, n_prompts, seed, params, task_args)
    if keep is not None:
        check_output(keep, "compare", folder=True, run=run, force=force)
    specs = method_specs(methods)
    stray = sorted(set(params or {}) - set(specs))
    if stray:
        raise RlcastError(f"parameters for {', '.join(map(repr, stray))}: not among the compared methods "
                          f"({', '.join(specs)})")
    params = {m: dict((params or {}).get(m, {})) for m in specs}
    task, task_args = run_task_spec(run.manifest, task, task_args)
    if not task:
        raise RlcastError(f"{run.root or run.base}: no task in the run manifest; pass --task")
    target = resolve_target(run, target)
    run.base_config()  # every model evaluated copies it: a base without one fails now, named
    budget = run.manifest.completion_budget if run.manifest else None  # the completions the run trained on
    for label, spec in specs.items():  # NExt chooses its scale c on the task's train split, for this target
        params[label] = with_task(spec, params[label], task, task_args, target, budget)
        make_extrapolator(spec, **params[label])  # unknown or bad parameters fail now, not inside a row
    nominal = cutoff_steps(run, list(cutoffs), target)
    windows = list({w.steps[-1] if w.checkpoints else 0: w for w in map(run.window, nominal)}.items())
    used = [step for step, _ in windows]  # fractions that land on the same checkpoint are compared once
    windows = [w for _, w in windows]
    result = Comparison(run=str(run.root or run.base), task=str(task), target=target, n_prompts=n_prompts, seed=seed,
                        cutoffs=used, params=params, task_args=task_args, settings=given)
    task_obj = get_task(task, task_args)
    reader = RunReader(run)
    real_steps = sorted(set([0] + used + [target]))
    # before anything is evaluated: bad settings fail first
    with compute.open() as (where, pool), scratch_dir("compare", run) as work:
        # headers, names and shapes now; NaN/Inf is named as each checkpoint streams in, before it is evaluated (a
        # check() here would read every real checkpoint twice)
        reader.open(s for s in real_steps if s)
        if keep is not None:
            claim_folder(keep, output_record("compare"))
        evaluator = _Evaluator(run, task_obj, n_prompts, seed, work, keep)
        console = Console(stderr=True)  # transient bar: nothing left behind in a log file
        with Progress(console=console, disable=not (progress and console.is_terminal), transient=True) as bar:
            job = bar.add_task("compare", total=len(real_steps) + len(windows) * len(specs))
            real: dict[int, Row] = {}
            for step in real_steps:
                bar.update(job, description=f"real checkpoint @ {step}")
                stream = ((name, reader.weight(step, name)) for name in reader.names())
                res, seconds = evaluator(f"real-{step}", stream, {"rlcast": f"real step {step}"})
                real[step] = Row(REFERENCE, step, target, res.accuracy, res.ci_low, res.ci_high, seconds=seconds)
                bar.advance(job)
            for cutoff, window in zip(used, windows):
                for label, spec in specs.items():
                    bar.update(job, description=f"{label} @ {cutoff} -> {target}")
                    result.rows.append(_method_row(label, spec, params[label], window, cutoff, target,
                                                   evaluator, where, pool))
                    bar.advance(job)
    result.rows = [real[s] for s in real_steps] + result.rows
    result.forecasts = [forecast_at(run, cutoff, target) for cutoff in used]
    top = real[target].accuracy
    for row in result.rows:
        if row.accuracy is None:
            continue
        row.pct_of_target = 100.0 * row.accuracy / top if top else None
        row.gain = row.accuracy - real[row.cutoff].accuracy
    return result


def forecast_at(run: Run, cutoff: int, target: int) -> dict:
    """The held-out accuracy at `target` forecast from run.json's accuracy curve up to `cutoff` (no model evaluated;
    `rlcast forecast` without the weights): {"cutoff", "target", "median", "low", "high"} (90 %) or with "reason"."""
    try:
        curve = checked(read_curve(run).window(cutoff))
        return {"cutoff": cutoff, "target": target, **forecast_curve(curve, target).combined}
    except RlcastError as err:
        return {"cutoff": cutoff, "target": target, "reason": str(err)}


def _method_row(method: str, spec: str | Extrapolator, params: dict, window: Run, cutoff: int, target: int,
                evaluator: _Evaluator, device: torch.device, backend: Backend) -> Row:
    """One method at one cutoff: a row with the evaluated accuracy, or with the reason it failed."""
    start = time.perf_counter()
    try:
        ex = make_extrapolator(spec, **params).fit(window, device)
        meta = {"rlcast": f"{method} from step {cutoff} to step {target}", "selection": ex.selection}
        res, _ = evaluator(f"{method}-{cutoff}", ex.predict(target, backend), meta)
        info = ex.summary()
    except RlcastError as err:
        return Row(method, cutoff, target, reason=str(err), seconds=time.perf_counter() - start)
    except Exception as err:  # a numerical failure of one method must not sink the other rows: report it in its row
        return Row(method, cutoff, target, reason=f"{type(err).__name__}: {err}".splitlines()[0],
                   seconds=time.perf_counter() - start)
    return Row(method, cutoff, target, res.accuracy, res.ci_low, res.ci_high, seconds=time.perf_counter() - start,
               info=info)


def table(result: Comparison) -> Table:
    """The rich table: real checkpoints as reference rows, then every method at every cutoff."""
    reasons = list(dict.fromkeys(r.reason.removeprefix(f"{r.method}: ") for r in result.rows if r.reason))
    notes = "".join(f"\n({i + 1}) {reason}" for i, reason in enumerate(reasons))
    t = Table(title=f"{result.run}: predicting step {result.target} ({result.variant}, {result.n_prompts} prompts)",
              caption="steps: checkpoints used up to / target step; gain: accuracy minus the real checkpoint's at "
                      "the cutoff (what stopping there gives)" + notes, caption_justify="left")
    for col in ("method", "steps", "accuracy", "95% CI", "% target", "gain"):
        t.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
    for row in result.rows:
        steps = f"{row.cutoff}/{row.target} ({100 * row.fraction:.0f}%)"
        if row.accuracy is None:
            note = reasons.index(row.reason.removeprefix(f"{row.method}: ")) + 1
            t.add_row(row.method, steps, f"[red]failed ({note})[/]", "-", "-", "-")
            continue
        name = ("base" if row.cutoff == 0 else f"real @ {row.cutoff}") if row.method == REFERENCE else row.method
        ci = f"{row.ci_low:.2f}-{row.ci_high:.2f}"
        pct = "-" if row.pct_of_target is None else f"{row.pct_of_target:.1f}%"
        gain = "" if row.method == REFERENCE else f"{row.gain:+.3f}"
        t.add_row(f"[dim]{name}[/]" if row.method == REFERENCE else name, steps, f"{row.accuracy:.3f}", ci, pct, gain)
    real = {r.cutoff: r.accuracy for r in result.rows if r.method == REFERENCE}
    for f in result.forecasts:  # what the accuracy curve alone says, with a 90 % interval (no model evaluated)
        if "median" in f:
            t.add_row("[italic]forecast (run.json curve, 90%)[/]", f"{f['cutoff']}/{f['target']}", f"{f['median']:.3f}",
                      f"{f['low']:.2f}-{f['high']:.2f}", f"{100 * f['median'] / real[result.target]:.1f}%"
                      if real.get(result.target) else "-", f"{f['median'] - real[f['cutoff']]:+.3f}")
    return t


def plot(result: Comparison, path: Path, record: dict | None = None) -> None:
    """Accuracy against the fraction of the target's steps: the real checkpoints and one line per method."""
    import matplotlib  # heavy optional dependency: only for the plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy optional dependency: only for the plot

    fig, ax = plt.subplots(figsize=(7, 4.5))
    real = [r for r in result.rows if r.method == REFERENCE]
    ax.plot([r.fraction for r in real], [r.accuracy for r in real], "k-o", label="real checkpoints")
    ax.axhline(next(r.accuracy for r in real if r.cutoff == result.target), color="k", ls="--", lw=0.8)
    for method in dict.fromkeys(r.method for r in result.rows if r.method != REFERENCE):
        rows = [r for r in result.rows if r.method == method and r.accuracy is not None]
        if rows:
            ax.plot([r.fraction for r in rows], [r.accuracy for r in rows], "-s", label=method)
    ax.set_xlabel(f"fraction of the {result.target} steps used")
    ax.set_ylabel(f"accuracy ({result.variant})")
    ax.set_title(f"predicting step {result.target}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png", metadata={STAMP: json.dumps(record)} if record else None)
    plt.close(fig)


def save(result: Comparison, out: Path) -> Path:
    """Write compare.json and compare.png into `out`, each atomically (`out` may also hold the kept models)."""
    out = Path(out)
    record = output_record("compare", result.settings)
    write_json_atomic(out / "compare.json", result.to_dict(), record=record)
    with atomic_file(out / "compare.png") as tmp:
        plot(result, tmp, record)
    return out


def print_table(result: Comparison, console: Console | None = None) -> None:
    """The table on `console` (default: stdout); piped or logged, at its full width: no column cut off."""
    console, rendered = console or Console(), table(result)
    if not console.is_terminal:  # a pipe or a log file has no width: 80 columns would cut the gain column
        natural = console.measure(rendered, options=console.options.update_width(10_000)).maximum
        console = Console(file=console.file, width=max(console.width, natural))
    console.print(rendered)

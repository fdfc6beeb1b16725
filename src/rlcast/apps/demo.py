"""`rlcast demo`: the whole story on the tiny testbed, from nothing, in one command.

1. the steady preset's testbed base (shipped or built once and cached): RL gains that keep accruing,
2. the best plain GRPO run (the preset's learning rate, each generation batch used for `plain_mu` optimizer steps:
   the tuned plain run of the curve library, lr 1.2e-4 x 4 steps per batch on steady) and the same run with a
   rollout method of `rlcast.training.rollouts` (default: adaptive generations, the one `bench/acceleration.py`
   measured ahead of the tuned run: a higher ceiling at equal completions and less wall time on this testbed, not
   fewer completions to the plain goal) or a lookahead method of `rlcast.training.lookahead`: same seed, learning
   rate and budget of generation batches, the cost counted in completions generated for a rollout method (which
   generates more or fewer per batch) and in generation batches for a lookahead method,
3. the plain run analysed: rank-1 dominance, rank-1 dynamics, every extrapolator compared (`compare`),
4. the HTML report (DIR/report.html): the acceleration verdict in its opening paragraph, the plain-vs-accelerated
   section right after it,
5. the table: completions (or generation batches) to reach 98 % of the plain run's final held-out accuracy, plain
   vs accelerated, and the ratio, every figure with its 95 % interval, the ratio also in training seconds (the
   accelerated run's cost per completion or batch counted), and a verdict in words ("no measurable speed-up" when
   the difference is inside the noise; for a rollout method also both runs' accuracy at equal spend), on the
   terminal, in the report and in DIR/summary.json.
6. the forecast and the stop rule replayed on the plain run's own checkpoints (`rlcast.apps.stopping.hindsight`):
   its final forecast from 40 % of its batches and where `--stop` would have ended it, beside what running on gave.

Both runs are scored by `rlcast train` on the same held-out prompts every `save_every` generation batches; training
seconds are the optimizer steps' (`rlcast.training.budget.TrainingClock`), not the scoring.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from rlcast.apps import compare as comparing
from rlcast.apps.dominance import dominance
from rlcast.apps.dynamics import analyze_dynamics
from rlcast.apps.report import _img, _png, build_report, results_dir, table
from rlcast.apps.stopping import hindsight, hindsight_lines
from rlcast.errors import RlcastError
from rlcast.evaluation.intervals import wilson
from rlcast.evaluation.speedup import GOAL, batch_curve, outcome
from rlcast.forecasting import Curve
from rlcast.io.atomic import write_text_atomic
from rlcast.io.checkpoints import load_run
from rlcast.io.logs import read_log
from rlcast.io.outputs import check_output, claim_folder
from rlcast.io.records import output_record
from rlcast.training.accelerators import make_accelerator
from rlcast.training.budget import BatchBudget, TrainingClock
from rlcast.training.lookahead import LOOKAHEAD
from rlcast.training.rollouts import ROLLOUTS, Rollouts, make_rollouts
from rlcast.training.train import preset, train


@dataclass(frozen=True)
class DemoConfig:
    """Budget of the demo; `quick` is the same pipeline with fewer batches, prompts and compared methods.

    The runs are the preset's (task, base, learning rate) cut to `batches` generation batches; `accelerator` names a
    method of `rlcast.training.rollouts` or `rlcast.training.lookahead`, `accel` its settings ((key, value) pairs;
    empty: its defaults)."""
    preset: str = "steady"
    batches: int = 150
    save_every: int = 10
    eval_prompts: int = 1000
    seed: int = 0
    plain_mu: int = 4  # the steady preset's tuned rollout reuse at its lr 1.2e-4 (the curve library, tuning seeds)
    accelerator: str = "adaptive"
    accel: tuple[tuple[str, object], ...] = ()
    compare_methods: tuple[str, ...] = ("weight-linear", "alpharl", "alpharl-step", "relex", "next")
    compare_cutoffs: tuple[float, ...] = (0.2, 0.4)
    dominance_ranks: tuple[int, ...] = (1, 2)
    forecast_from: float = 0.4  # the share of the plain run the replayed forecast reads (bench/forecast.py's 40 % cut)

    def method(self):
        """A fresh rollout method or lookahead callback of `accelerator` with `accel` (one line naming the method
        when unknown): the methods the demo can budget in generation batches and count in completions."""
        if self.accelerator in ROLLOUTS:
            return make_rollouts(self.accelerator, dict(self.accel), what="demo accelerator", option="demo accel")
        if self.accelerator not in LOOKAHEAD:
            raise RlcastError(f"demo accelerator {self.accelerator!r}: known: {', '.join([*ROLLOUTS, *LOOKAHEAD])}")
        return make_accelerator(self.accelerator, dict(self.accel), what="demo accelerator", option="demo accel")


QUICK = DemoConfig(batches=20, save_every=5, eval_prompts=300,
                   compare_methods=("weight-linear", "alpharl-step", "relex"), compare_cutoffs=(0.5,),
                   dominance_ranks=(1,))


def acceleration_section(result: dict, plain: dict[int, float], accelerated: dict[int, float]) -> str:
    """HTML: the cost-to-98 % table and both accuracy curves on the cost axis (completions or generation
    batches)."""
    import matplotlib  # heavy optional plotting, only for the report

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the headless backend

    names = result["runs"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, acc, style in (("plain", plain, "o-"), ("accelerated", accelerated, "s-")):
        batches = sorted(acc)
        ax.plot(batches, [acc[b] for b in batches], style, label=names[name], markersize=4)
    ax.axhline(result["target"], color="grey", linestyle=":", label=f"{GOAL:.0%} of plain's final")
    unit = result["unit"]
    ax.set_xlabel(f"{unit} (rollouts paid for)")
    ax.set_ylabel("held-out accuracy")
    ax.legend()
    rows = [{"run": names[name], "final accuracy": _acc(result[name]),
             f"{unit} to 98 %": result[name]["steps_to_98"],
             "training seconds per batch": _fmt(result["seconds_per_batch"][name])}
            for name in ("plain", "accelerated")]
    note = f"<p class=note>speedup {_ratio(result)}; retained {_fmt(result['retained'])}; {_method_note(result)}.</p>"
    return (f"<p><b>{html.escape(result['verdict'])}</b></p>" + table(rows) + note
            + _img(_png(fig), "plain vs accelerated"))


def _method_note(result: dict) -> str:
    """What the accelerated run's method did: its repositions (lookahead) or the completions it generated."""
    if "lookahead" in result:
        return (f"the accelerated run's repositions: {result['lookahead']['repositions']} "
                f"({result['lookahead']['failed']} failed)")
    made, plain = result["rollouts"], result["plain_rollouts"]
    return (f"completions generated: {made['completions']} over {made['generation_batches']} generation batches "
            f"against the plain run's {plain['completions']} over {plain['generation_batches']}")


def equal_spend(plain: dict[int, float], accelerated: dict[int, float], n_prompts: int) -> dict:
    """Both runs' accuracy where they had spent the same (the smaller of the two runs' final spend; each run's last
    checkpoint within it) and the difference with its 95 % interval: the fair comparison for a method that spends
    more or less per batch, whose ceiling may differ from the plain run's."""
    spend = min(max(plain), max(accelerated))
    at = {name: max(step for step in curve_ if step <= spend) for name, curve_ in
          (("plain", plain), ("accelerated", accelerated))}
    d, lo, hi = _difference(accelerated[at["accelerated"]], plain[at["plain"]], n_prompts)
    return {"spend": spend, "at": at, "plain": plain[at["plain"]], "accelerated": accelerated[at["accelerated"]],
            "difference": {"value": d, "ci": [lo, hi], "significant": lo > 0 or hi < 0}}


def _equal_spend_words(same: dict, unit: str) -> str:
    return (f"at equal spend ({same['spend']} {unit}) {same['accelerated']:.3f} vs {same['plain']:.3f}, difference "
            f"{_signed(same['difference'])}, " + ("outside" if same["difference"]["significant"] else "inside")
            + " the noise")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3g}" if isinstance(value, float) else html.escape(str(value))


def _difference(a: float, b: float, n: int) -> tuple[float, float, float]:
    """a - b and its 95 % interval (Newcombe's hybrid of the two Wilson intervals; unpaired, so conservative for two
    runs scored on the same prompts: run.json keeps accuracies, not per-prompt results)."""
    (la, ua), (lb, ub) = wilson(a * n, n), wilson(b * n, n)
    d = a - b
    return d, d - math.hypot(a - la, ub - b), d + math.hypot(ua - a, b - lb)


def _spacing(curve_: dict[int, float], step: int) -> int:
    """Steps between `step` and the evaluated step before it: how precisely a goal crossing at `step` is known."""
    earlier = [s for s in curve_ if s < step]
    return step - max(earlier) if earlier else step


def judged_outcome(plain: dict[int, float], accelerated: dict[int, float], n_prompts: int,
                   relative_cost: float | None = None, goal: float = GOAL, unit: str = "generation batches",
                   at_equal_spend: bool = False) -> dict:
    """`outcome` with its noise: Wilson 95 % intervals of both final accuracies and of their difference, the
    accuracy difference where the accelerated run reaches the goal, the speedup's range from the checkpoint spacing,
    the speedup in training time (`relative_cost`: the accelerated run's training seconds per `unit` / the plain
    run's), and a verdict in words. The curves are on the `unit` axis. `at_equal_spend`: also both runs' accuracy
    where they had spent the same (`equal_spend`), in the result and the verdict.

    A speed-up is measurable only when the accelerated run reaches the goal more than one checkpoint earlier AND is
    ahead of the plain run at that step by more than the 95 % interval of the difference; otherwise the verdict says
    "no measurable speed-up"."""
    result = outcome(plain, accelerated, goal)
    for name, acc in (("plain", plain), ("accelerated", accelerated)):
        final = acc[max(acc)]
        result[name]["final_ci"] = list(wilson(final * n_prompts, n_prompts))
    d, lo, hi = _difference(result["accelerated"]["final_accuracy"], result["plain"]["final_accuracy"], n_prompts)
    result["final_difference"] = {"value": d, "ci": [lo, hi], "significant": lo > 0 or hi < 0}
    result["n_prompts"] = n_prompts
    result["relative_cost"], result["unit"] = relative_cost, unit
    n_plain, n_acc = result["plain"]["steps_to_98"], result["accelerated"]["steps_to_98"]
    result["goal_difference"] = result["speedup_range"] = result["effective_speedup"] = None
    measurable, why = False, None
    if n_plain and n_acc:
        gap_plain, gap_acc = _spacing(plain, n_plain), _spacing(accelerated, n_acc)
        result["speedup_range"] = [(n_plain - gap_plain) / n_acc,
                                   n_plain / (n_acc - gap_acc) if n_acc > gap_acc else None]
        if relative_cost is not None:
            result["effective_speedup"] = n_plain / (n_acc * relative_cost)
        within = abs(n_plain - n_acc) <= max(gap_plain, gap_acc)
        if n_acc in plain:
            g, glo, ghi = _difference(accelerated[n_acc], plain[n_acc], n_prompts)
            result["goal_difference"] = {"step": n_acc, "value": g, "ci": [glo, ghi], "significant": glo > 0 or ghi < 0}
        ahead = result["goal_difference"] is not None and result["goal_difference"]["ci"][0] > 0
        measurable = n_acc < n_plain and not within and ahead
        why = (f"goal reached at {n_acc} vs {n_plain}"
               + (f", within one checkpoint ({max(gap_plain, gap_acc)} {unit})" if within else "")
               + (f"; accuracy there {_signed(result['goal_difference'])}" if result["goal_difference"] else ""))
    result["speedup_measurable"] = measurable
    if at_equal_spend:
        result["equal_spend"] = equal_spend(plain, accelerated, n_prompts)
    result["verdict"] = _verdict(result, measurable, why)
    return result


def _signed(diff: dict) -> str:
    return f"{diff['value']:+.3f} [{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}]"


def _verdict(result: dict, measurable: bool, why: str | None) -> str:
    """The demo's headline in words, every figure with its interval or its significance."""
    speedup, effective, cost = result["speedup"], result["effective_speedup"], result["relative_cost"]
    if speedup is None:
        crossed = result["accelerated"]["crossed"]
        head = "no measurable speed-up: " + (
            "the plain run itself never reached the goal" if not result["plain"]["steps_to_98"]
            else f"the accelerated run crossed the goal at {crossed} {result['unit']} but ended below it" if crossed
            is not None else "the accelerated run never reached the goal")
    else:
        head = (("a measurable speed-up" if measurable else "no measurable speed-up")
                + f": {speedup:.2f}x in {result['unit']} ({why})")
        if effective is not None:
            per = {"generation batches": "batch", "completions": "completion"}.get(result["unit"], result["unit"])
            head += f", {effective:.2f}x in training time ({cost:.2f}x the plain run's seconds per {per})"
    final = result["final_difference"]
    tail = (f"final accuracy {result['accelerated']['final_accuracy']:.3f} vs {result['plain']['final_accuracy']:.3f}, "
            f"difference {_signed(final)}, " + ("outside" if final["significant"] else "inside") + " the noise")
    if "equal_spend" in result:
        tail += "; " + _equal_spend_words(result["equal_spend"], result["unit"])
    return (f"{head}; {tail} (95 % intervals: Wilson, {result['n_prompts']} held-out prompts per checkpoint, "
            "unpaired, so conservative).")


def _acc(run: dict) -> str:
    low, high = run["final_ci"]
    return f"{run['final_accuracy']:.3f} [{low:.3f}, {high:.3f}]"


def _ratio(result: dict) -> str:
    """The raw speedup with its checkpoint-spacing range, next to the one counting the overhead."""
    if result["speedup"] is None:
        return "n/a (goal not reached)"
    low, high = result["speedup_range"]
    text = (f"{result['speedup']:.2f}x (by checkpoint spacing {low:.2f}-"
            + ("?" if high is None else f"{high:.2f}") + "x)")
    if result.get("effective_speedup") is not None:
        text += f", {result['effective_speedup']:.2f}x in training time"
    return text


def print_outcome(result: dict, console=None) -> None:
    """The final table (completions or generation batches to 98 % of plain's final accuracy, plain vs accelerated,
    with intervals) and the verdict in words."""
    console = console or Console(soft_wrap=True)
    unit = result["unit"]
    t = Table(title=f"{unit} to reach {GOAL:.0%} of the plain run's final held-out accuracy "
                    f"({result['plain']['final_accuracy']:.3f} -> target {result['target']:.3f})")
    for col in ("run", "final accuracy [95 % CI]", f"{unit} to 98 %", "training s per batch"):
        t.add_column(col, justify="right" if col != "run" else "left")
    for name in ("plain", "accelerated"):
        r = result[name]
        t.add_row(result["runs"][name], _acc(r), _reached(r), _fmt(result["seconds_per_batch"][name]))
    t.add_row("ratio (plain / accelerated)", f"difference {_signed(result['final_difference'])}", _ratio(result), "")
    console.print(t)
    console.print(result["verdict"], highlight=False)


def _reached(run: dict) -> str:
    """A run's cell in the goal column: where it reached the goal, or why it did not."""
    if run["steps_to_98"] is not None:
        return str(run["steps_to_98"])
    if run.get("crossed") is not None:
        return f"crossed at {run['crossed']}, ended below"
    return f"not reached in {run['steps']}"


def run_demo(out: str | Path, quick: bool = False, config: DemoConfig | None = None, progress: bool = True) -> dict:
    """Run the whole demo into `out`; returns the summary (also written to OUT/summary.json)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise RlcastError(f"{out}: exists and is not empty (choose another --out)")
    check_output(out, "demo", folder=True, replaces=False)
    cfg = config or (QUICK if quick else DemoConfig())
    method = cfg.method()  # a bad accelerator or setting fails here, before any training
    if isinstance(method, Rollouts):
        method.check_group(preset(cfg.preset).num_generations)
    claim_folder(out, output_record("demo"))
    torch.set_num_threads(1)  # the testbed is tiny: one thread beats several fighting over 2 (shared) cores
    console = Console(stderr=True)
    started = time.perf_counter()
    times = {}

    def stage(name: str, since: float) -> float:
        now = time.perf_counter()
        times[name] = round(now - since, 1)
        console.print(f"[bold]demo[/] {name}: {times[name]:.0f} s", highlight=False)
        return now

    base = dataclasses.replace(preset(cfg.preset), seed=cfg.seed, eval_prompts=cfg.eval_prompts)
    plain_config = dataclasses.replace(base, num_iterations=cfg.plain_mu, steps=cfg.batches * cfg.plain_mu,
                                       save_every=cfg.save_every * cfg.plain_mu)
    clocks = {"plain": TrainingClock(), "accelerated": TrainingClock()}
    if isinstance(method, Rollouts):  # the plain run's settings, other rollouts: counted in completions generated
        k, cost, unit, method_config = cfg.plain_mu, "completions", "completions", plain_config
        callbacks = [method, clocks["accelerated"]]
        names = {"plain": f"plain GRPO, {cfg.plain_mu} steps per batch",
                 "accelerated": f"{method.name} rollouts, {k} steps per batch"}
    else:
        k, cost, unit = method.num_iterations, "generation_batches", "generation batches"
        # steps: an upper bound (a gate that fires makes later batches one step each); BatchBudget stops at the budget
        method_config = dataclasses.replace(base, num_iterations=k, steps=cfg.batches * k, save_every=cfg.batches * k)
        callbacks = [method, BatchBudget(method, cfg.save_every, cfg.batches), clocks["accelerated"]]
        names = {"plain": f"plain GRPO, {cfg.plain_mu} steps per batch",
                 "accelerated": f"{method.name}, {k} steps per batch"}
    t = started
    console.print(f"[bold]demo[/] {names['plain']} ({cfg.preset} preset, lr {base.learning_rate:g}): {cfg.batches} "
                  f"generation batches, held-out accuracy on {cfg.eval_prompts} prompts every {cfg.save_every}",
                  highlight=False)
    train(out / "plain", plain_config, callbacks=[clocks["plain"]], progress=progress)
    t = stage("plain GRPO", t)
    console.print(f"[bold]demo[/] {names['accelerated']}: same seed, learning rate and budget, {method}",
                  highlight=False, soft_wrap=True)
    train(out / "accelerated", method_config, progress=progress, callbacks=callbacks)
    t = stage("accelerated GRPO", t)

    run = load_run(out / "plain")
    folder = results_dir(run)
    folder.mkdir(parents=True, exist_ok=True)
    dom = dominance(run, ranks=cfg.dominance_ranks, n_prompts=cfg.eval_prompts, progress=progress)
    dom.save(folder / "dominance.json")
    dyn = analyze_dynamics(run, progress=progress)
    dyn.save(folder / "dynamics.json")
    t = stage("analysis (dominance, dynamics)", t)
    comparison = comparing.compare(run, cutoffs=list(cfg.compare_cutoffs), methods=list(cfg.compare_methods),
                                   n_prompts=cfg.eval_prompts, progress=progress)
    comparing.save(comparison, out / "compare")
    t = stage("compare", t)

    plain, accelerated = batch_curve(out / "plain", cost), batch_curve(out / "accelerated", cost)
    batches = {name: max(batch_curve(out / name)) for name in ("plain", "accelerated")}
    per_batch = {name: clocks[name].total[0] / max(batches[name], 1) for name in batches}
    per_unit = {name: clocks[name].total[0] / max(max(c), 1)
                for name, c in (("plain", plain), ("accelerated", accelerated))}
    result = judged_outcome(plain, accelerated, cfg.eval_prompts, per_unit["accelerated"] / per_unit["plain"],
                            unit=unit, at_equal_spend=isinstance(method, Rollouts))
    result.update(runs=names, seconds_per_batch=per_batch, config=asdict(cfg),
                  curves={"plain": plain, "accelerated": accelerated})
    if isinstance(method, Rollouts):
        result["rollouts"] = method.summary()
        result["plain_rollouts"] = {"completions": max(plain), "generation_batches": batches["plain"]}
    else:
        result["lookahead"] = {"repositions": method.repositions_, "failed": method.failed_,
                               "gate_off_at": method.off_at_, "generation_batches": method.batches_}
    # would the forecast and the stop rule have told the user this, from the plain run's own early checkpoints?
    try:  # a forecast that cannot be made (too few scores) is said, not allowed to lose the runs' results
        result["forecast"] = hindsight(Curve.from_log(read_log(out / "plain")).generation_axis(), cfg.forecast_from)
        told = hindsight_lines(result["forecast"], unit="generation batch")
    except RlcastError as err:
        result["forecast"], told = {"error": str(err)}, [f"no forecast: {err}"]
    t = stage("forecast (replayed)", t)
    report = build_report(run, out=out / "report.html", progress=progress, verdict_notes=[
        f"Live acceleration, {method.name} against the best plain run (same seed, learning rate and budget of "
        f"generation batches, counted in {unit}): " + result["verdict"], "Forecast of the plain run (rlcast forecast --stop, replayed "
        "on its checkpoints): " + "; ".join(told)],
        lead=[(f"Live acceleration (best plain run vs {method.name})",
               acceleration_section(result, plain, accelerated))])
    t = stage("report", t)

    result["rank1"] = {"recovery": [asdict(r) if hasattr(r, "__dataclass_fields__") else r
                                    for r in dom.to_json().get("recovery", [])]}
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["stage_seconds"] = times
    write_text_atomic(out / "summary.json", json.dumps(result, indent=2, default=str))
    comparing.print_table(comparison, Console())
    print_outcome(result, Console())
    Console().print("\n".join(told), highlight=False)
    Console().print(f"report: {report}\nsummary: {out / 'summary.json'}\nwall time: {result['wall_seconds']:.0f} s")
    return result

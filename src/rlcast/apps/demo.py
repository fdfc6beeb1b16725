"""`rlcast demo`: the whole story on the tiny testbed, from nothing, in one command.

1. the steady preset's testbed base (shipped or built once and cached): RL gains that keep accruing,
2. plain GRPO and accelerated GRPO (`AccelerateCallback` with its default settings, the ones `bench/acceleration.py`
   measures), same seed, same hyper-parameters, same step budget,
3. the plain run analysed: rank-1 dominance, rank-1 dynamics, every extrapolator compared (`compare`),
4. the HTML report (DIR/report.html): the acceleration verdict in its opening paragraph, the plain-vs-accelerated
   section right after it,
5. the table: steps to reach 98 % of the plain run's final held-out accuracy, plain vs accelerated, and the ratio,
   every figure with its 95 % interval, the ratio also counting the overhead, and a verdict in words ("no
   measurable speed-up" when the difference is inside the noise), on the terminal, in the report and in
   DIR/summary.json.

Steps are optimizer steps; both runs are scored by `rlcast train` on the same held-out prompts at every checkpoint.
The accelerated run's checks and back-tests cost compute that is not an optimizer step: it is reported beside the
ratio in step-equivalents (their time / the mean step time).
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
from rlcast.errors import RlcastError
from rlcast.evaluation.curves import TARGET, curve, outcome
from rlcast.evaluation.intervals import wilson
from rlcast.io.runs import load_run
from rlcast.io.writer import check_output, claim_folder, output_record, write_text_atomic
from rlcast.training.accelerate import AccelerateCallback, AccelerateConfig
from rlcast.training.runs import preset, train


@dataclass(frozen=True)
class DemoConfig:
    """Budget of the demo; `quick` is the same pipeline with fewer steps, prompts and compared methods.

    The runs are the preset's (task, base, hyper-parameters) cut to `steps`; the callback's check uses the preset's
    task whatever `accelerate` says."""
    preset: str = "steady"
    steps: int = 150
    save_every: int = 10
    eval_prompts: int = 1000
    seed: int = 0
    accelerate: AccelerateConfig = AccelerateConfig()
    compare_methods: tuple[str, ...] = ("weight-linear", "alpharl", "alpharl-step", "relex", "next")
    compare_cutoffs: tuple[float, ...] = (0.2, 0.4)
    dominance_ranks: tuple[int, ...] = (1, 2)


QUICK = DemoConfig(steps=40, save_every=5, eval_prompts=300, accelerate=AccelerateConfig(every=5, horizon=5),
                   compare_methods=("weight-linear", "alpharl-step", "relex"), compare_cutoffs=(0.5,),
                   dominance_ranks=(1,))


def acceleration_section(result: dict, plain: dict[int, float], accelerated: dict[int, float],
                         jumps: list[dict]) -> str:
    """HTML: the steps-to-98 % table, both accuracy curves with the jumps marked, and the jump log."""
    import matplotlib  # heavy optional plotting, only for the report

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the headless backend

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, acc, style in (("plain GRPO", plain, "o-"), ("accelerated GRPO", accelerated, "s-")):
        steps = sorted(acc)
        ax.plot(steps, [acc[s] for s in steps], style, label=label, markersize=4)
    ax.axhline(result["target"], color="grey", linestyle=":", label=f"{TARGET:.0%} of plain's final")
    for j in jumps:
        if j["method"] is not None:
            ax.axvline(j["step"], color="green" if j["kept"] else "red", alpha=0.3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out accuracy")
    ax.legend()
    ax.set_title("green: kept jumps, red: rolled back")
    rows = [{"run": name, "final accuracy": _acc(result[name]),
             "steps to 98 %": result[name]["steps_to_98"]} for name in ("plain", "accelerated")]
    shown = {"reward_before": "check reward before", "reward_after": "check reward after"}  # on train prompts
    log = [{shown.get(k, k): j[k] for k in ("step", "virtual_step", "method", "horizon", "backtest_error",
                                            "reward_before", "reward_after", "kept", "reason")} for j in jumps]
    note = (f"<p class=note>speedup {_ratio(result)}; the checks (reward on train prompts) and back-tests cost "
            f"{_fmt(result.get('cost_step_equivalents'))} step-equivalents; retained {_fmt(result['retained'])}.</p>")
    return (f"<p><b>{html.escape(result['verdict'])}</b></p>" + table(rows) + note
            + _img(_png(fig), "plain vs accelerated") + "<h3>Jumps</h3>" + table(log))


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
                   cost: float | None = None, target: float = TARGET) -> dict:
    """`outcome` with its noise: Wilson 95 % intervals of both final accuracies and of their difference, the
    accuracy difference where the accelerated run reaches the goal, the speedup's range from the checkpoint spacing,
    the speedup counting `cost` step-equivalents of overhead, and a verdict in words.

    A speed-up is measurable only when the accelerated run reaches the goal more than one checkpoint earlier AND is
    ahead of the plain run at that step by more than the 95 % interval of the difference; otherwise the verdict says
    "no measurable speed-up"."""
    result = outcome(plain, accelerated, target)
    for name, acc in (("plain", plain), ("accelerated", accelerated)):
        final = acc[max(acc)]
        result[name]["final_ci"] = list(wilson(final * n_prompts, n_prompts))
    d, lo, hi = _difference(result["accelerated"]["final_accuracy"], result["plain"]["final_accuracy"], n_prompts)
    result["final_difference"] = {"value": d, "ci": [lo, hi], "significant": lo > 0 or hi < 0}
    result["n_prompts"] = n_prompts
    result["cost_step_equivalents"] = cost
    n_plain, n_acc = result["plain"]["steps_to_98"], result["accelerated"]["steps_to_98"]
    result["goal_difference"] = result["speedup_range"] = result["effective_speedup"] = None
    measurable, why = False, None
    if n_plain and n_acc:
        gap_plain, gap_acc = _spacing(plain, n_plain), _spacing(accelerated, n_acc)
        result["speedup_range"] = [(n_plain - gap_plain) / n_acc,
                                   n_plain / (n_acc - gap_acc) if n_acc > gap_acc else None]
        if cost is not None:
            result["effective_speedup"] = n_plain / (n_acc + cost)
        within = abs(n_plain - n_acc) <= max(gap_plain, gap_acc)
        if n_acc in plain:
            g, glo, ghi = _difference(accelerated[n_acc], plain[n_acc], n_prompts)
            result["goal_difference"] = {"step": n_acc, "value": g, "ci": [glo, ghi], "significant": glo > 0 or ghi < 0}
        ahead = result["goal_difference"] is not None and result["goal_difference"]["ci"][0] > 0
        measurable = n_acc < n_plain and not within and ahead
        why = (f"goal reached at step {n_acc} vs {n_plain}"
               + (f", within one checkpoint ({max(gap_plain, gap_acc)} steps)" if within else "")
               + (f"; accuracy there {_signed(result['goal_difference'])}" if result["goal_difference"] else ""))
    result["speedup_measurable"] = measurable
    result["verdict"] = _verdict(result, measurable, why)
    return result


def _signed(diff: dict) -> str:
    return f"{diff['value']:+.3f} [{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}]"


def _verdict(result: dict, measurable: bool, why: str | None) -> str:
    """The demo's headline in words, every figure with its interval or its significance."""
    speedup, effective, cost = result["speedup"], result["effective_speedup"], result["cost_step_equivalents"]
    if speedup is None:
        head = ("no measurable speed-up: " + ("the accelerated run never reached" if result["plain"]["steps_to_98"]
                                              else "the plain run itself never reached") + " the goal")
    else:
        head = (("a measurable speed-up" if measurable else "no measurable speed-up")
                + f": {speedup:.2f}x in optimizer steps ({why})")
        if effective is not None:
            head += f", {effective:.2f}x counting the overhead of {cost:.1f} step-equivalents"
    final = result["final_difference"]
    tail = (f"final accuracy {result['accelerated']['final_accuracy']:.3f} vs {result['plain']['final_accuracy']:.3f}, "
            f"difference {_signed(final)}, " + ("outside" if final["significant"] else "inside") + " the noise")
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
        text += f", {result['effective_speedup']:.2f}x counting the overhead"
    return text


def print_outcome(result: dict, console=None) -> None:
    """The final table (steps to 98 % of plain's final accuracy, plain vs accelerated, with intervals) and the
    verdict in words."""
    console = console or Console(soft_wrap=True)
    t = Table(title=f"steps to reach {TARGET:.0%} of plain GRPO's final held-out accuracy "
                    f"({result['plain']['final_accuracy']:.3f} -> target {result['target']:.3f})")
    for col in ("run", "final accuracy [95 % CI]", "steps to 98 %"):
        t.add_column(col, justify="right" if col != "run" else "left")
    for name in ("plain", "accelerated"):
        r = result[name]
        t.add_row(name, _acc(r), str(r["steps_to_98"] if r["steps_to_98"] is not None else
                                     f"not reached in {r['steps']}"))
    t.add_row("ratio (plain / accelerated)", f"difference {_signed(result['final_difference'])}", _ratio(result))
    console.print(t)
    cost = result.get("cost_step_equivalents")
    if cost is not None:
        console.print(f"acceleration overhead (checks + back-tests + jumps): {cost:.1f} step-equivalents over "
                      f"{len(result.get('jumps', []))} attempts")
    console.print(result["verdict"], highlight=False)


def run_demo(out: str | Path, quick: bool = False, config: DemoConfig | None = None, progress: bool = True) -> dict:
    """Run the whole demo into `out`; returns the summary (also written to OUT/summary.json)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise RlcastError(f"{out}: exists and is not empty (choose another --out)")
    check_output(out, "demo", folder=True, replaces=False)
    cfg = config or (QUICK if quick else DemoConfig())
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

    run_config = dataclasses.replace(preset(cfg.preset), steps=cfg.steps, save_every=cfg.save_every, seed=cfg.seed,
                                     eval_prompts=cfg.eval_prompts)
    accelerate = dataclasses.replace(cfg.accelerate, task=run_config.task, task_args=run_config.task_args or None)
    t = started
    console.print(f"[bold]demo[/] plain GRPO ({cfg.preset} preset): {cfg.steps} steps, held-out accuracy on "
                  f"{cfg.eval_prompts} prompts every {cfg.save_every}", highlight=False)
    train(out / "plain", run_config, progress=progress)
    t = stage("plain GRPO", t)
    console.print(f"[bold]demo[/] accelerated GRPO: same seed and budget, {accelerate}", highlight=False,
                  soft_wrap=True)
    callback = AccelerateCallback(accelerate)
    train(out / "accelerated", run_config, callbacks=[callback], progress=progress)
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

    plain, accelerated = curve(out / "plain"), curve(out / "accelerated")
    summary = callback.summary()
    result = judged_outcome(plain, accelerated, cfg.eval_prompts, summary["cost_step_equivalents"])
    result.update(jumps=callback.jumps,
                  acceleration=summary, accelerate_config=accelerate.to_json(), config=asdict(cfg),
                  curves={"plain": plain, "accelerated": accelerated})
    report = build_report(run, out=out / "report.html", progress=progress, verdict_notes=[
        "Live acceleration, plain vs accelerated GRPO with the same seed and budget: " + result["verdict"]],
        lead=[("Live acceleration (plain vs accelerated GRPO)",
               acceleration_section(result, plain, accelerated, callback.jumps))])
    t = stage("report", t)

    result["rank1"] = {"recovery": [asdict(r) if hasattr(r, "__dataclass_fields__") else r
                                    for r in dom.to_json().get("recovery", [])]}
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["stage_seconds"] = times
    write_text_atomic(out / "summary.json", json.dumps(result, indent=2, default=str))
    comparing.print_table(comparison, Console())
    print_outcome(result, Console())
    Console().print(f"report: {report}\nsummary: {out / 'summary.json'}\nwall time: {result['wall_seconds']:.0f} s")
    return result

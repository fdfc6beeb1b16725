"""An accelerator against the best plain run, counted in generation batches (the rollouts a run pays for) and wall time.

For each seed, on a preset (default: steady), every run with the same budget of generation batches (the preset's
steps: 300 on steady) and scored on the same held-out prompts every `--save-every` batches:

    method       `--method` jumps | sfpo | gxpo | rank1 with its settings (`--accel KEY=VALUE`, chosen on tuning
                 seeds >= 100) at the best plain learning rate (`--hp` overrides the method run's config); jumps
                 runs `AccelerateCallback` on top of the best plain setting, a lookahead method sets its own
                 num_iterations (rlcast.training.lookahead); or `--rollouts` skip | adaptive with its settings
                 (`--rollout KEY=VALUE`; rlcast.training.rollouts) on top of the best plain setting: which
                 completions are generated, not how they train (skip's draws are seeded by the run's seed)
    best plain   `--best-plain LR,MU`: learning rate and rollout reuse (TRL num_iterations), chosen by
                 bench/baselines.py on the tuning seeds; with `--parallel` trained in a second process side by side
                 with the method's run, so both see the same load on the shared cores; with `--library` the
                 plain runs are the committed curves of bench/curves.py (same config, not trained here)
    preset       the preset's own plain run (its learning rate, one step per batch)

The cost a run pays is counted in completions generated (run.json's `completions` per checkpoint; the same as
generation batches for every method that generates whole batches, and the only fair count for rollout methods, whose
batches shrink or grow), or in generation batches where a run predates the count; training seconds (wall and
this process's CPU time, summed over the optimizer steps: rollouts, backward passes, repositions and jump checks,
not the held-out scoring at checkpoints) are clocked per checkpoint into OUT/.../seconds.json. Per seed:

    goal            98 % of the best plain run's final held-out accuracy
    speedup         best plain's completions (or generation batches: `cost`) to the goal / the method's
    wall_speedup    best plain's training seconds to the goal / the method's (wall clock; cpu_speedup: CPU time)
    retained        the method's final accuracy / best plain's

and the same against the preset's run (its own 98 % goal). A method that reaches the goal but ends below it (a noisy
early crossing, then a collapse) did not get there: its speedup is 0. The last line (medians over seeds; never
reaching the goal, or not holding it, counts as speedup 0):

    speedup_vs_best_plain=X retained=Y seeds=N wall_speedup_vs_best_plain=Z best_plain=LR,MU method=M

Finished runs are reused, an interrupted plain run resumes and an interrupted method run restarts, so seeds can run
as separate processes on one --out; each writes OUT/<method>[,<settings>]/seed<S>-vs-<lr>,<mu>.json, which --report
merges (rows against different best plain settings, or tuning seeds >= 100 with benchmark seeds, are refused). A
finished method run is compared against another best plain setting without retraining it: rerun with the new
--best-plain (only the plain run trains), or with `--report ... --against DIR` against the runs of a curve-library
folder at the same lr and mu (another group size: DIR = docs/results/curves/steady+num_generations=4). Wall times
compare only side by side: a row whose best plain run was not trained next to the method's run (reused, or without
--parallel) says so; its cpu_speedup still holds (one torch thread per process).

    .venv/bin/python bench/acceleration.py --best-plain 1.2e-4,2 --method rank1 --accel boost=3 --seeds 100,101 \
        --out runs/accel
    .venv/bin/python bench/acceleration.py --best-plain 1.2e-4,2 --method sfpo --seeds 0 --parallel --out runs/accel
    .venv/bin/python bench/acceleration.py --report runs/accel/sfpo/seed*-vs-0.00012,2.json
    .venv/bin/python bench/acceleration.py --best-plain 1.2e-4,4 --rollouts skip --seeds 0-2 --out runs/accel \
        --library docs/results/curves/steady
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import shutil
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from common import TUNING, Results, add_out, add_seeds, finished, library_run, new_parser, spreads
from rlcast.errors import RlcastError
from rlcast.evaluation.speedup import outcome
from rlcast.io.atomic import write_json_atomic
from rlcast.io.manifest import Manifest
from rlcast.io.options import parse_overrides

# rlcast.training (TRL, seconds to import) is imported where a run is trained, so that --report stays quick

DURATION = ("~30 min per seed on 2 CPU cores (steady: the method's run and two plain runs of 300 generation batches; "
            "finished plain runs are reused)")


def run(out: Path, config, method: str | None = None, settings: dict | None = None,
        every: int = 10, budget: int = 300) -> dict:
    """Train one run (a TrainConfig) into `out` unless it is finished; the method's summary (none for a plain run),
    `trained`: whether this call trained it."""
    from rlcast.training.accelerate import AccelerateCallback
    from rlcast.training.accelerators import make_accelerator
    from rlcast.training.budget import BatchBudget, TrainingClock
    from rlcast.training.rollouts import ROLLOUTS, make_rollouts
    from rlcast.training.train import train

    torch.set_num_threads(1)  # the testbed is tiny: one thread beats several fighting over 2 (shared) cores
    summary = out / "method.json"
    if finished(out):
        return (json.loads(summary.read_text()) if summary.exists() else {}) | {"trained": False}
    if method is None:
        train(out, config, callbacks=[TrainingClock(out / "seconds.json")], progress=False,
              resume=(out / "run.json").exists())
        return {"trained": True}
    if method in ROLLOUTS:  # its state is saved with every checkpoint: an interrupted run resumes
        rollouts = make_rollouts(method, settings)
        train(out, config, callbacks=[rollouts, TrainingClock(out / "seconds.json")], progress=False,
              resume=(out / "run.json").exists())
        result = rollouts.summary()
        write_json_atomic(summary, result)
        return result | {"trained": True}
    shutil.rmtree(out, ignore_errors=True)  # a method's state lives in the process: an interrupted run restarts
    callback = make_accelerator(method, ({"verbose": False} if method == "jumps" else {}) | settings,
                                task=config.task, task_args=config.task_args)
    if isinstance(callback, AccelerateCallback):
        train(out, config, callbacks=[callback, TrainingClock(out / "seconds.json")], progress=False)
        result = {"summary": callback.summary(), "jumps": callback.jumps}
    else:
        train(out, config, callbacks=[callback, BatchBudget(callback, every, budget), TrainingClock(out / "seconds.json")],
              progress=False)
        result = {"repositions": callback.repositions_, "failed": callback.failed_, "gate_off_at": callback.off_at_,
                  "generation_batches": callback.batches_}
    write_json_atomic(summary, result)
    return result | {"trained": True}


LOGGED = {"frac_reward_zero_std": "zero_std", "rollouts/skip_rate": "skip_rate", "rollouts/signal": "signal",
          "grad_norm": "grad_norm"}


def logged(out: Path, keys: dict[str, str] = LOGGED) -> dict:
    """What TRL logged about a run's rollouts and steps (its trainer_state.json, a curve library's, or its last
    checkpoint's), as means over the second half of its optimizer steps, where a skip method acts (a prompt is skipped
    from its second epoch on): the share of generated groups with zero variance (`zero_std`; `signal` = 1 - it for a
    rollout method), the skip rate, and the gradient norm (how far a step goes); `keys`: TRL's name -> ours."""
    states = [out / "trainer_state.json"] if (out / "trainer_state.json").exists() else sorted(
        out.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    history = json.loads(states[-1].read_text())["log_history"] if states else []
    half = max((h.get("step", 0) for h in history), default=0) / 2
    means = {}
    for key, name in keys.items():
        values = [h[key] for h in history if key in h and h.get("step", 0) > half]
        if values:
            means[name] = statistics.fmean(values)
    return means


def points(out: Path, mu: int) -> list[dict]:
    """Per checkpoint (and the base, at 0): generation batches, completions generated, optimizer steps (one backward
    pass each), held-out accuracy, training seconds (wall, CPU) when clocked. Runs from before run.json counted
    generation batches: step // mu; from before it counted completions (none ran a rollout method): generation
    batches x batch_size, as rlcast.training.train counts them on resume."""
    manifest = Manifest.read(out / "run.json")
    seconds = json.loads((out / "seconds.json").read_text()) if (out / "seconds.json").exists() else {}
    batch_size = (manifest.config or {}).get("batch_size")
    rows = [{"batches": 0, "completions": 0, "steps": 0, "accuracy": manifest.base_accuracy, "wall": 0.0, "cpu": 0.0}]
    for c in manifest.checkpoints:
        wall, cpu = seconds.get(str(c.step), [None, None])
        batches = c.step // mu if c.generation_batches is None else c.generation_batches
        made = c.completions if c.completions is not None else batch_size and batches * batch_size
        rows.append({"batches": batches, "completions": made, "steps": c.step, "accuracy": c.accuracy, "wall": wall,
                     "cpu": cpu})
    return rows


def cost_axis(*curves: list[dict]) -> str:
    """What a run's cost is counted in: completions generated when every checkpoint of `curves` records them, else
    generation batches."""
    return "completions" if all(r.get("completions") is not None for c in curves for r in c) else "batches"


def at(rows: list[dict], cost: float | None, axis: str = "batches") -> dict:
    """The checkpoint whose `axis` is `cost`: its generation batches, completions and training seconds (all None: no
    checkpoint)."""
    row = next((r for r in rows if cost is not None and r[axis] == cost), {})
    return {"batches": row.get("batches"), "completions": row.get("completions"), "wall": row.get("wall"),
            "cpu": row.get("cpu")}


def ratio(a, b) -> float | None:
    """a / b for "reference cost / method cost": 0 when the method never got there, None when unmeasured."""
    if a is None:
        return None
    if b is None:
        return 0.0
    return a / b if b else float("inf")  # b = 0: the method's base already meets the goal


def compare(method: list[dict], reference: list[dict]) -> dict:
    """The method against a reference run on the reference's 98 % goal, counted by `rlcast.evaluation.speedup.outcome`:
    `held` says the method ends at or above the goal, else its crossing (kept as `crossed`) does not count (speedups
    0). The cost axis is `cost_axis`'s. `equal_cost_retained`: the method's accuracy at its last checkpoint within the
    reference's whole spend / the reference's final (what a method that spends more, or less, gives for the same)."""
    axis = cost_axis(method, reference)
    spent = reference[-1][axis]
    within = [r for r in method if r[axis] <= spent]
    result = outcome({r[axis]: r["accuracy"] for r in reference}, {r[axis]: r["accuracy"] for r in method})
    mine = result["accelerated"]
    ref, got = at(reference, result["plain"]["steps_to_98"], axis), at(method, mine["steps_to_98"], axis)
    if not mine["held"] and mine["crossed"] is not None:
        got["crossed"] = at(method, mine["crossed"], axis)["batches"]
    return {"goal": result["target"], "cost": axis, "held": mine["held"], "reference": ref, "method": got,
            "speedup": result["speedup"] or 0.0,
            "wall_speedup": ratio(ref["wall"], got["wall"]), "cpu_speedup": ratio(ref["cpu"], got["cpu"]),
            "retained": result["retained"],
            "equal_cost_retained": within[-1]["accuracy"] / reference[-1]["accuracy"] if reference[-1]["accuracy"]
            else None}


def tag(method: str, settings: list[str]) -> str:
    return ",".join([method, *sorted(settings)])


def best_plain(text: str) -> tuple[float, int]:
    """--best-plain LR,MU as (learning rate, rollout reuse)."""
    try:
        lr, mu = text.split(",")
        lr, mu = float(lr), int(mu)
        if not (lr > 0 and mu >= 1):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LR,MU (a learning rate > 0 and num_iterations >= 1, "
                                         f"e.g. 1.2e-4,2)") from None
    return lr, mu


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--method", help="an accelerator of rlcast.training.accelerators (jumps, sfpo, gxpo, rank1)")
    parser.add_argument("--accel", action="append", default=[], metavar="KEY=VALUE",
                        help="the method's setting; repeatable")
    parser.add_argument("--rollouts", help="a rollout method of rlcast.training.rollouts (skip, adaptive) instead of "
                                           "--method")
    parser.add_argument("--rollout", action="append", default=[], metavar="KEY=VALUE",
                        help="the rollout method's setting; repeatable")
    parser.add_argument("--library", type=Path, metavar="DIR",
                        help="take the plain runs from this curve library (docs/results/curves/PRESET) instead of "
                             "training them")
    parser.add_argument("--best-plain", type=best_plain, metavar="LR,MU",
                        help="the best plain learning rate and rollout reuse")
    parser.add_argument("--preset", default="steady", help="a preset of rlcast.training.train.PRESETS")
    add_seeds(parser, "5")
    parser.add_argument("--save-every", type=int, default=10, help="checkpoint every N generation batches")
    parser.add_argument("--budget", type=int, help="generation batches per run (default: the preset's steps)")
    parser.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                        help="TrainConfig hyper-parameter of the method's run; repeatable")
    parser.add_argument("--parallel", action="store_true", help="train the plain runs in a second process while the "
                                                                "method's run trains (side by side on 2 cores)")
    add_out(parser)
    parser.add_argument("--report", nargs="+", metavar="JSON", help="only summarise these per-seed JSON files")
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="with --report: the method against another plain setting at the same lr and mu, the runs "
                             "of this curve-library folder (e.g. steady+num_generations=4), instead of its best plain run")
    parser.add_argument("--longer", type=Path, metavar="DIR",
                        help="with --report: the best plain runs continued further (a curve library folder written by "
                             "bench/curves.py --batches N): each at the method's whole spend, beside the method")
    args = parser.parse_args()
    for option, folder in (("--longer", args.longer), ("--against", args.against)):
        if folder and not (args.report and folder.is_dir()):
            parser.error(f"{option} {folder}: needs --report and an existing curve-library folder")
    if args.report:
        rows = [json.loads(Path(path).read_text()) for path in args.report]
        rows = [against(row, args.against) for row in rows] if args.against else rows
        line = summarize(rows)[1]
        for row in rows if args.longer else []:
            print(longer(row, args.longer))
        print(line)
        return
    if not ((args.method is None) != (args.rollouts is None) and args.best_plain):
        parser.error("--best-plain and one of --method or --rollouts are needed (or --report)")
    if args.library and args.parallel:
        parser.error("--library takes the plain runs from the library: nothing to train side by side (--parallel)")
    from rlcast.training.accelerators import ACCELERATORS, accelerator_settings, make_accelerator
    from rlcast.training.rollouts import ROLLOUTS, Rollouts, make_rollouts, rollout_settings
    from rlcast.training.train import HYPERPARAMETERS, TrainConfig, preset

    for option, value, known in (("--method", args.method, ACCELERATORS), ("--rollouts", args.rollouts, ROLLOUTS)):
        if value is not None and value not in known:
            parser.error(f"{option} {value!r}: known: {', '.join(known)}")
    (lr, mu), seeds = args.best_plain, args.seeds
    name, items = (args.method, args.accel) if args.method else (args.rollouts, args.rollout)
    try:  # bad settings fail now, in one line, before any training
        if args.method:
            settings = accelerator_settings(args.method, args.accel)
            method = make_accelerator(args.method, settings)
        else:
            settings = rollout_settings(args.rollouts, args.rollout)
            method = make_rollouts(args.rollouts, settings)
        hp = parse_overrides(TrainConfig, args.hp, HYPERPARAMETERS, "--hp")
    except RlcastError as error:
        parser.error(str(error))
    base = preset(args.preset)
    budget, every = args.budget or base.steps, args.save_every
    results = Results(__file__, args)
    root = results.out
    folder = root / tag(name, items)
    torch.set_num_threads(1)

    for seed in seeds:
        plain = dataclasses.replace(base, seed=seed, steps=budget, save_every=every)
        best = dataclasses.replace(plain, learning_rate=lr, num_iterations=mu, steps=budget * mu,
                                   save_every=every * mu)
        mine = dataclasses.replace(best, **hp)
        run_settings = settings
        if isinstance(method, Rollouts) and args.rollouts == "skip" and "seed" not in settings:
            run_settings = settings | {"seed": seed}
        if args.method not in ("jumps", None):  # steps: an upper bound, BatchBudget stops at the budget of batches
            steps = budget * method.num_iterations
            mine = dataclasses.replace(mine, num_iterations=method.num_iterations, steps=steps, save_every=steps)
        if args.library:  # checked to hold exactly these configs
            paths = {"best": library_run(args.library, best, mu), "preset": library_run(args.library, plain, 1)}
        else:
            paths = {"best": root / f"plain-seed{seed}-lr{lr:g}-mu{mu}",
                     "preset": root / f"plain-seed{seed}-lr{plain.learning_rate:g}-mu1"}
        runs = {"best": (paths["best"], best, mu), "preset": (paths["preset"], plain, 1),
                "method": (folder / f"seed{seed}", mine, mine.num_iterations)}
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            side = [pool.submit(run, runs[k][0], runs[k][1]) for k in ("best", "preset")] if args.parallel else []
            summary = run(runs["method"][0], mine, name, run_settings, every, budget)
            trained = [job.result()["trained"] for job in side]
        if not (args.parallel or args.library):
            for k in ("best", "preset"):
                run(runs[k][0], runs[k][1])
        curves = {k: points(path, m) for k, (path, _, m) in runs.items()}
        logs = {k: logged(runs[k][0]) for k in ("method", "best")}
        row = {"seed": seed, "method": name, "settings": settings, "best_plain": [lr, mu],
               "side_by_side": bool(trained and trained[0] and summary["trained"]), "summary": summary, "logs": logs,
               "curves": curves,
               "vs_best": compare(curves["method"], curves["best"]),
               "vs_preset": compare(curves["method"], curves["preset"]), "provenance": results.provenance}
        write_json_atomic(folder / f"seed{seed}-vs-{lr:g},{mu}.json", row)
        results.add(row)
        show(row)
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob(f"seed*-vs-{lr:g},{mu}.json"))]
    tuning = seeds[0] >= TUNING  # the last line is over seeds of this invocation's kind
    results.finish(*summarize([r for r in rows if (r["seed"] >= TUNING) == tuning]))


def against(row: dict, library: Path) -> dict:
    """A per-seed row with its best plain run replaced by `library`/seedS-lrX-muM (another plain setting at the same
    learning rate and reuse, e.g. another group size) and the comparison redone; its wall times are not side by
    side."""
    (lr, mu), seed = row["best_plain"], row["seed"]
    folder = library / f"seed{seed}-lr{lr:g}-mu{mu}"
    if not (folder / "run.json").exists():
        raise SystemExit(f"{folder}: not in the curve library (bench/curves.py trains it)")
    best = points(folder, mu)
    return row | {"curves": row["curves"] | {"best": best}, "vs_best": compare(row["curves"]["method"], best),
                  "logs": row.get("logs", {}) | {"best": logged(folder)}, "side_by_side": False,
                  "against": library.name}


def longer(row: dict, library: Path) -> str:
    """One seed's method beside its best plain run continued past the budget (`library`/seedS-lrX-muM): the plain run
    at the method's whole spend (its last checkpoint within it) and both finals as the mean of the last 3 checkpoints,
    for a method that spends more per batch than the plain run."""
    (lr, mu), seed = row["best_plain"], row["seed"]
    folder = library / f"seed{seed}-lr{lr:g}-mu{mu}"
    if not (folder / "run.json").exists():
        return f"seed {seed}: no longer best plain run in {library}"
    plain, mine = points(folder, mu), row["curves"]["method"]
    spent = mine[-1]["completions"]
    within = [r for r in plain if r["completions"] <= spent]
    last3 = lambda rows: statistics.fmean(r["accuracy"] for r in rows[-3:])  # noqa: E731
    return (f"seed {seed}: at the method's spend ({spent} completions, {mine[-1]['batches']} batches) the best plain "
            f"run continued to {plain[-1]['batches']} batches scores {within[-1]['accuracy']:.3f} (batch "
            f"{within[-1]['batches']}), its last 3 {last3(within):.3f}; the method's last 3 {last3(mine):.3f}")


def per_batch(rows: list[dict], clock: str = "wall") -> float | None:
    """Training seconds (wall or cpu), or optimizer steps (`clock="steps"`: backward passes), per generation batch
    over the whole run."""
    last = rows[-1]
    return last[clock] / last["batches"] if last.get(clock) is not None and last["batches"] else None


def show(row: dict) -> None:
    best, pre, c = row["vs_best"], row["vs_preset"], row["curves"]
    fmt = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
    extra = {k: v for k, v in row["summary"].items() if k in ("repositions", "failed", "gate_off_at")}
    if "rollouts" in row["summary"]:  # a rollout method: what it generated, how often it skipped, what had signal
        made, batches = row["summary"]["completions"], row["summary"]["generation_batches"]
        extra = {"completions/batch": round(made / max(1, batches))}
        logs = row.get("logs", {})
        extra |= {f"late {k}": [round(logs[run][k], 3) if k in logs.get(run, {}) else None
                                for run in ("method", "best")] for k in ("skip_rate", "zero_std", "grad_norm")}
    elif "summary" in row["summary"]:
        extra = {k: row["summary"]["summary"][k] for k in ("attempts", "kept", "steps_gained")}
    print(f"seed {row['seed']}: final {c['method'][-1]['accuracy']:.3f} (best plain {c['best'][-1]['accuracy']:.3f}, "
          f"preset {c['preset'][-1]['accuracy']:.3f}); goal {best['goal']:.3f} at batch {best['method']['batches']}"
          f"{completions(best['method'])}{not_held(best)} "
          f"vs {best['reference']['batches']}{completions(best['reference'])}: speedup {best['speedup']:.2f} wall "
          f"{fmt(best['wall_speedup'])} cpu {fmt(best['cpu_speedup'])} retained {best['retained']:.3f}"
          f"{at_equal_cost(best)}; vs preset: speedup {pre['speedup']:.2f} wall "
          f"{fmt(pre['wall_speedup'])} retained {pre['retained']:.3f}; s/batch wall {fmt(per_batch(c['method']))} vs "
          f"{fmt(per_batch(c['best']))}{'' if row['side_by_side'] else ' (not side by side)'}, cpu "
          f"{fmt(per_batch(c['method'], 'cpu'))} vs {fmt(per_batch(c['best'], 'cpu'))}; backward passes/batch "
          f"{fmt(per_batch(c['method'], 'steps'))} vs {fmt(per_batch(c['best'], 'steps'))}; {extra}",
          flush=True)


def at_equal_cost(part: dict) -> str:
    """' (at best plain's spend: R)' where a per-seed row has it."""
    value = part.get("equal_cost_retained")
    return f" (at the reference's spend {value:.3f})" if value is not None else ""


def completions(point: dict) -> str:
    """' (N completions)' where a checkpoint of a per-seed row records them."""
    return f" ({point['completions']} completions)" if point.get("completions") is not None else ""


def not_held(part: dict) -> str:
    """What the per-seed line says of a goal crossed and then lost."""
    crossed = part["method"].get("crossed")
    return f" (crossed at batch {crossed}, ended below: not held)" if crossed else ""


def summarize(rows: list[dict]) -> tuple[dict, str]:
    """Print the per-seed figures and the medians against the preset's run; return the summary (median, min, max of
    each figure over seeds) and the last line (medians against the best plain)."""
    rows = sorted(rows, key=lambda r: r["seed"])
    if len({r["seed"] >= TUNING for r in rows}) > 1:
        raise SystemExit(f"--report: rows mix tuning seeds (>= {TUNING}) and benchmark seeds "
                         f"{[r['seed'] for r in rows]}; report one kind at a time")
    if len({tuple(r["best_plain"]) for r in rows}) > 1:
        raise SystemExit(f"--report: rows against different best plain settings "
                         f"{sorted({tuple(r['best_plain']) for r in rows})}; report one setting at a time")
    summary = {part: spreads([r[part] for r in rows], ("speedup", "wall_speedup", "retained"))
               for part in ("vs_best", "vs_preset")}
    summary |= {"seeds": [r["seed"] for r in rows], "side_by_side": sum(r["side_by_side"] for r in rows)}

    def med(part: str, key: str) -> float:
        value = summary[part][key]["median"]
        return float("nan") if value is None else value

    for part in ("vs_best", "vs_preset"):
        equal = [r[part].get("equal_cost_retained") for r in rows]
        print(f"{part}: seeds {[r['seed'] for r in rows]} speedup {[round(r[part]['speedup'], 2) for r in rows]} "
              f"wall {[r[part]['wall_speedup'] and round(r[part]['wall_speedup'], 2) for r in rows]} retained "
              f"{[round(r[part]['retained'], 3) for r in rows]}"
              + (f" retained at equal spend {[round(e, 3) for e in equal]}" if None not in equal else ""))
    print(f"vs preset plain: speedup={med('vs_preset', 'speedup'):.2f} retained={med('vs_preset', 'retained'):.3f} "
          f"wall_speedup={med('vs_preset', 'wall_speedup'):.2f}; wall clocked side by side on "
          f"{summary['side_by_side']} of {len(rows)} seeds")
    first = rows[0]
    cost = {r["vs_best"].get("cost", "batches") for r in rows}
    return summary, (f"speedup_vs_best_plain={med('vs_best', 'speedup'):.2f} retained={med('vs_best', 'retained'):.3f} "
                     f"seeds={len(rows)} wall_speedup_vs_best_plain={med('vs_best', 'wall_speedup'):.2f} "
                     f"best_plain={first['best_plain'][0]:g},{first['best_plain'][1]} "
                     f"method={tag(first['method'], [f'{k}={v}' for k, v in first['settings'].items()])}"
                     + (f" cost={'/'.join(sorted(cost))}" if cost != {"batches"} else "")
                     + (f" against={first['against']}" if "against" in first else ""))


if __name__ == "__main__":
    main()

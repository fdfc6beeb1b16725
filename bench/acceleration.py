"""Plain vs accelerated RL on a preset (default: steady): same seed, hyper-parameters and step budget, several seeds.

For each seed: a plain run (`rlcast.training.runs.train` on the preset, whose hyper-parameters are the plain runs'
best, fixed before any acceleration was tuned) and an accelerated run (the same config plus `AccelerateCallback` with
the given settings). Both are scored greedily on the same held-out test prompts (the preset's `eval_prompts`, 1000 for
steady) at every checkpoint; the callback's own check uses train-split prompts, never these. Per seed:

    speedup            plain steps / accelerated steps to reach 98 % of plain's final held-out accuracy
    effective_speedup  the same with the callback's cost added to the accelerated steps, in step-equivalents
                       (its checks, back-tests, jumps and snapshots over the mean optimizer-step time)
    retained           accelerated final accuracy / plain final accuracy

Last line: `speedup=X retained=Y seeds=N overhead=Z effective_speedup=W` (medians over seeds; a run that never
reaches the goal counts as speedup 0). Tuning seeds and benchmark seeds are kept apart with --first-seed: defaults
were chosen on seeds >= 100; the benchmark runs seeds 0..N-1.

    .venv/bin/python bench/acceleration.py --seeds 5 --save-every 10
    .venv/bin/python bench/acceleration.py --first-seed 100 --seeds 1 --accel every=20 --accel horizon=20
    .venv/bin/python bench/acceleration.py --preset smollm2 --seeds 1 --parallel --accel eval_prompts=32 --accel every=20
    .venv/bin/python bench/acceleration.py --hp learning_rate=1.2e-4   # on top of a better plain learning rate
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rlcast.apps.demo import curve, steps_to
from rlcast.training.accelerate import AccelerateCallback, AccelerateConfig
from rlcast.training.runs import HYPERPARAMETERS, TrainConfig, preset, train
from rlcast.training.support import parse_overrides

GOAL = 0.98


def compare(plain: dict[int, float], accelerated: dict[int, float], overhead: float) -> dict:
    goal = GOAL * plain[max(plain)]
    n_plain, n_acc = steps_to(plain, goal), steps_to(accelerated, goal)
    return {"goal": goal, "plain_steps": n_plain, "accelerated_steps": n_acc,
            "speedup": n_plain / n_acc if n_plain and n_acc else 0.0,
            "effective_speedup": n_plain / (n_acc + overhead) if n_plain and n_acc else 0.0,
            "retained": accelerated[max(accelerated)] / plain[max(plain)]}


def train_plain(plain_dir: Path, config) -> float:
    """The plain run of one seed (resumed when interrupted, kept when finished); its wall time in seconds."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    manifest = plain_dir / "run.json"
    if not manifest.exists() or json.loads(manifest.read_text())["status"] != "finished":
        train(plain_dir, config, progress=False, resume=manifest.exists())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="steady")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="benchmark: 0; tuning: >= 100")
    parser.add_argument("--save-every", type=int, default=10, help="checkpoint (and held-out score) every N steps")
    parser.add_argument("--hp", action="append", default=[], help="TrainConfig hyper-parameter KEY=VALUE for both "
                                                                  "runs (e.g. the best plain learning rate); repeatable")
    parser.add_argument("--accel", action="append", default=[], help="AccelerateConfig KEY=VALUE; repeatable")
    parser.add_argument("--parallel", action="store_true", help="train each seed's plain run in a second process "
                                                                     "while the accelerated one trains (2 cores)")
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--report", nargs="+", metavar="JSON", help="only print the summary of acceleration.json "
                                                                    "files (e.g. seeds run in parallel)")
    args = parser.parse_args()
    if args.report:
        summarize([row for path in args.report for row in json.loads(Path(path).read_text())])
        return

    torch.set_num_threads(1)  # the testbed is tiny: one thread beats several fighting over 2 (shared) cores
    base = dataclasses.replace(preset(args.preset), save_every=args.save_every,
                               **parse_overrides(TrainConfig, args.hp, HYPERPARAMETERS, "--hp"))
    accel = dataclasses.replace(AccelerateConfig(task=base.task, task_args=base.task_args or None, verbose=False),
                                **parse_overrides(AccelerateConfig, args.accel,
                                                  [f.name for f in dataclasses.fields(AccelerateConfig)], "--accel"))
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rlcast-bench-accel-"))
    print(f"preset {args.preset}: {json.dumps(base.to_json())}")
    print(f"accelerate: {json.dumps(accel.to_json())}")
    rows = []
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar, \
            ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        job = bar.add_task("seeds", total=2 * args.seeds)
        for seed in seeds:
            config = dataclasses.replace(base, seed=seed)
            plain_dir, accel_dir = root / f"plain-{seed}", root / f"accelerated-{seed}"
            plain = pool.submit(train_plain, plain_dir, config) if args.parallel else None
            if plain is None:
                plain_seconds = train_plain(plain_dir, config)
                bar.advance(job)
            callback = AccelerateCallback(accel)
            start = time.perf_counter()
            if accel_dir.exists():  # an interrupted accelerated run restarts: its jumps depend on the whole history
                shutil.rmtree(accel_dir)
            train(accel_dir, config, callbacks=[callback], progress=False)
            accel_seconds = time.perf_counter() - start
            bar.advance(job)
            if plain is not None:
                plain_seconds = plain.result()
                bar.advance(job)
            summary = callback.summary()
            overhead = summary["cost_step_equivalents"] or 0.0
            result = compare(curve(plain_dir), curve(accel_dir), overhead)
            rows.append(result | {"seed": seed, "overhead": overhead, "summary": summary, "jumps": callback.jumps,
                                  "plain_curve": curve(plain_dir), "accelerated_curve": curve(accel_dir),
                                  "seconds": {"plain": plain_seconds, "accelerated": accel_seconds}})
            jumps = " ".join(f"{j['step']}:{j['method']}+{j['horizon']}{'K' if j['kept'] else 'R'}"
                             f"(bt {j['backtest_error'] if j['backtest_error'] is None else round(j['backtest_error'], 2)}"
                             f", d {None if j['reward_after'] is None else round(j['reward_after'] - j['reward_before'], 3)}"
                             f" se {None if j.get('check_se') is None else round(j['check_se'], 3)})"
                             for j in callback.jumps if j["method"])
            bar.console.print(
                f"seed {seed}: plain final {result['goal'] / GOAL:.3f} (98 % at step {result['plain_steps']}), "
                f"accelerated final {curve(accel_dir)[max(curve(accel_dir))]:.3f} (98 % at step "
                f"{result['accelerated_steps']}); speedup {result['speedup']:.2f} effective "
                f"{result['effective_speedup']:.2f} retained {result['retained']:.3f}; jumps kept "
                f"{summary['kept']}/{summary['attempts']} (+{summary['steps_gained']} steps) [{jumps}]; overhead "
                f"{overhead:.1f} step-equivalents; wall {plain_seconds:.0f} s / {accel_seconds:.0f} s", highlight=False)
            (root / "acceleration.json").write_text(json.dumps(rows, indent=2, default=str))
    summarize(rows)


def summarize(rows: list[dict]) -> None:
    """Per-seed figures and the last line (medians over seeds)."""
    rows = sorted(rows, key=lambda r: r["seed"])
    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    print(f"seeds {[r['seed'] for r in rows]}: speedup {[round(r['speedup'], 2) for r in rows]} effective "
          f"{[round(r['effective_speedup'], 2) for r in rows]} retained {[round(r['retained'], 3) for r in rows]} "
          f"steps gained {[r['summary']['steps_gained'] for r in rows]}")
    print(f"speedup={med('speedup'):.2f} retained={med('retained'):.3f} seeds={len(rows)} "
          f"overhead={med('overhead'):.1f} effective_speedup={med('effective_speedup'):.2f}")


if __name__ == "__main__":
    main()

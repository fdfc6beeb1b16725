"""Is a preset's plain run limited by its step size? Plain runs at multiples of its learning rate, side by side.

A jump along the trajectory is close to a bigger step, so an accelerator must beat what a bigger learning rate buys
on its own. For each seed and multiplier m: a plain run of the preset at m x its learning rate (same seed, step budget,
warmup and held-out prompts). Per run: the final held-out accuracy and the first checkpoint reaching 98 % of the
preset-lr run's final accuracy (the goal of bench/acceleration.py); `speedup` = preset-lr steps / m-lr steps to that
goal, `retained` = final / preset-lr final. The last line is for the multiplier with the best median final accuracy
(medians over seeds; a run that never reaches the goal counts as speedup 0):

    best_lr=X speedup=Y retained=Z seeds=N preset=P

Tuning seeds (default 100, 101), not the benchmark's: this decides what a fair plain baseline is.

    .venv/bin/python bench/lr_baseline.py --multipliers 1,2,4,8,16 --out runs/lr
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rlcast.apps.demo import curve, outcome
from rlcast.training.runs import preset, train


def plain_run(out: Path, config) -> dict[int, float]:
    """The held-out curve of one plain run (resumed when interrupted, reused when finished)."""
    manifest = out / "run.json"
    if not manifest.exists() or json.loads(manifest.read_text())["status"] != "finished":
        train(out, config, progress=False, resume=manifest.exists())
    return curve(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="steady")
    parser.add_argument("--multipliers", default="1,2,4,8,16", help="learning-rate multipliers (1 = the preset's)")
    parser.add_argument("--seeds", default="100,101", help="tuning seeds (the benchmarks use 0..4)")
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the testbed is tiny: one thread beats several fighting over 2 (shared) cores
    base = dataclasses.replace(preset(args.preset), save_every=args.save_every)
    multipliers = sorted({float(m) for m in args.multipliers.split(",")} | {1.0})
    seeds = [int(s) for s in args.seeds.split(",")]
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rlcast-bench-lr-"))
    rows: dict[float, list[dict]] = {m: [] for m in multipliers}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        job = bar.add_task("runs", total=len(seeds) * len(multipliers))
        for seed in seeds:
            curves = {}
            for m in multipliers:
                config = dataclasses.replace(base, seed=seed, learning_rate=m * base.learning_rate)
                curves[m] = plain_run(root / f"seed{seed}-lr{config.learning_rate:g}", config)
                bar.advance(job)
            for m in multipliers:
                result = outcome(curves[1.0], curves[m])
                rows[m].append({"seed": seed, "final": result["accelerated"]["final_accuracy"],
                                "steps_to_goal": result["accelerated"]["steps_to_98"],
                                "speedup": result["speedup"] or 0.0, "retained": result["retained"]})
                shown = {s: round(curves[m][s], 3) for s in sorted(curves[m]) if s % 60 == 0}
                bar.console.print(f"seed {seed} lr {m:g}x ({m * base.learning_rate:g}): final "
                                  f"{rows[m][-1]['final']:.3f}, goal {result['target']:.3f} reached at step "
                                  f"{rows[m][-1]['steps_to_goal']} (speedup {rows[m][-1]['speedup']:.2f}); "
                                  f"accuracy every 60 steps {shown}", highlight=False)
    (root / "lr_baseline.json").write_text(json.dumps({str(m): r for m, r in rows.items()}, indent=2))
    med = {m: {key: statistics.median(r[key] for r in rows[m]) for key in ("final", "speedup", "retained")}
           for m in multipliers}
    for m in multipliers:
        print(f"lr {m:g}x: median final {med[m]['final']:.3f} speedup {med[m]['speedup']:.2f} "
              f"retained {med[m]['retained']:.3f}")
    best = max(multipliers, key=lambda m: med[m]["final"])
    print(f"best_lr={best * base.learning_rate:g} speedup={med[best]['speedup']:.2f} "
          f"retained={med[best]['retained']:.3f} seeds={len(seeds)} preset={args.preset}")


if __name__ == "__main__":
    main()

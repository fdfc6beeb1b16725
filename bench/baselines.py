"""Plain baselines an accelerator must beat: the preset at other learning rates and with rollouts reused.

A jump along the trajectory is close to a bigger step, and optimizer-side lookahead (SFPO, GXPO) reuses each batch of
rollouts for several updates, so before crediting an accelerator, measure what these buy on their own. For each seed,
learning-rate multiplier m and reuse mu: a plain run of the preset at m x its learning rate with TRL's
`num_iterations` = mu (each generation batch serves mu optimizer steps; steps and checkpoint interval x mu, so every
run sees the same number of generation batches and is scored after the same ones; warmup unchanged, in optimizer
steps). Steps below count *generation batches* (RL steps: the rollouts a run pays for). Per run: the final held-out
accuracy and the first checkpoint reaching 98 % of the preset run's final accuracy (the goal of bench/acceleration.py);
`speedup` = preset steps / this run's steps to that goal, `retained` = final / preset final. The best plain setting
is the fastest (highest median speedup; medians over seeds, never reaching the goal counts as speedup 0) among those
whose median final is within `FINAL_NOISE` of the best median final: finals that close are one evaluation's noise
apart, so ranking them by final would pick by chance, while a baseline exists to be fast. The last line:

    best_lr=X mu=M speedup=Y retained=Z seeds=N preset=P

Choose on tuning seeds (default 100, 101); run the benchmark seeds (0..4) once, with the chosen setting only.

    .venv/bin/python bench/baselines.py --multipliers 1,2,4,8,16 --out runs/baselines
    .venv/bin/python bench/baselines.py --seeds 0,1,2,3,4 --multipliers 4 --mu 1,2 --out runs/baselines
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

from rlcast.evaluation.curves import curve, outcome
from rlcast.training.runs import preset, train

FINAL_NOISE = 0.02  # one held-out score's standard deviation near 50 % on 1000 prompts: sqrt(.25 / 1000) = 0.016


def plain_run(out: Path, config, mu: int) -> dict[int, float]:
    """The held-out curve of one plain run on the generation-batch axis (resumed when interrupted, reused when
    finished)."""
    manifest = out / "run.json"
    if not manifest.exists() or json.loads(manifest.read_text())["status"] != "finished":
        train(out, config, progress=False, resume=manifest.exists())
    return {step // mu: accuracy for step, accuracy in curve(out).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="steady")
    parser.add_argument("--multipliers", default="1,2,4,8,16", help="learning-rate multipliers (1 = the preset's)")
    parser.add_argument("--mu", default="1", help="rollout reuse: TRL num_iterations values")
    parser.add_argument("--seeds", default="100,101", help="tuning seeds (the benchmarks use 0..4)")
    parser.add_argument("--save-every", type=int, default=10, help="in generation batches")
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the testbed is tiny: one thread beats several fighting over 2 (shared) cores
    base = dataclasses.replace(preset(args.preset), save_every=args.save_every)
    settings = sorted({(float(m), int(mu)) for m in args.multipliers.split(",") for mu in args.mu.split(",")}
                      | {(1.0, 1)})
    seeds = [int(s) for s in args.seeds.split(",")]
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rlcast-bench-baselines-"))
    rows: dict[tuple, list[dict]] = {s: [] for s in settings}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        job = bar.add_task("runs", total=len(seeds) * len(settings))
        for seed in seeds:
            curves = {}
            for m, mu in settings:
                config = dataclasses.replace(base, seed=seed, learning_rate=m * base.learning_rate, num_iterations=mu,
                                             steps=base.steps * mu, save_every=base.save_every * mu)
                name = f"seed{seed}-lr{config.learning_rate:g}" + (f"-mu{mu}" if mu > 1 else "")
                curves[m, mu] = plain_run(root / name, config, mu)
                bar.advance(job)
            for m, mu in settings:
                result = outcome(curves[1.0, 1], curves[m, mu])
                row = {"seed": seed, "final": result["accelerated"]["final_accuracy"],
                       "steps_to_goal": result["accelerated"]["steps_to_98"], "speedup": result["speedup"] or 0.0,
                       "retained": result["retained"]}
                rows[m, mu].append(row)
                shown = {s: round(a, 3) for s, a in sorted(curves[m, mu].items()) if s % 60 == 0}
                bar.console.print(f"seed {seed} lr {m:g}x ({m * base.learning_rate:g}) mu {mu}: final "
                                  f"{row['final']:.3f}, goal {result['target']:.3f} reached at step "
                                  f"{row['steps_to_goal']} (speedup {row['speedup']:.2f}); accuracy every 60 steps "
                                  f"{shown}", highlight=False)
    (root / "baselines.json").write_text(json.dumps({f"lr{m:g}x-mu{mu}": r for (m, mu), r in rows.items()}, indent=2))
    med = {s: {key: statistics.median(r[key] for r in rows[s]) for key in ("final", "speedup", "retained")}
           for s in settings}
    for m, mu in settings:
        print(f"lr {m:g}x mu {mu}: median final {med[m, mu]['final']:.3f} speedup {med[m, mu]['speedup']:.2f} "
              f"retained {med[m, mu]['retained']:.3f}")
    top = max(med[s]["final"] for s in settings)
    best = max((s for s in settings if med[s]["final"] >= top - FINAL_NOISE), key=lambda s: med[s]["speedup"])
    print(f"best_lr={best[0] * base.learning_rate:g} mu={best[1]} speedup={med[best]['speedup']:.2f} "
          f"retained={med[best]['retained']:.3f} seeds={len(seeds)} preset={args.preset}")


if __name__ == "__main__":
    main()

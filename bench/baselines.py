"""Plain baselines an accelerator must beat: the preset at other learning rates and with rollouts reused.

A jump along the trajectory is close to a bigger step, and optimizer-side lookahead (SFPO, GXPO) reuses each batch of
rollouts for several updates, so before crediting an accelerator, measure what these buy on their own. For each seed,
learning-rate multiplier m and reuse mu: a plain run of the preset at m x its learning rate with TRL's
`num_iterations` = mu (each generation batch serves mu optimizer steps; steps and checkpoint interval x mu, so every
run sees the same number of generation batches and is scored after the same ones; warmup unchanged, in optimizer
steps). Steps below count *generation batches* (RL steps: the rollouts a run pays for). Per run: the final held-out
accuracy and the first checkpoint reaching 98 % of the preset run's final accuracy (the goal of bench/acceleration.py);
`speedup` = preset steps / this run's steps to that goal, `retained` = final / preset final.

The best plain setting is the fastest (highest median speedup; medians over seeds, never reaching the goal counts as
speedup 0) among those whose median final is within `FINAL_NOISE` of the best median final: finals that close are
one evaluation's noise apart, so ranking them by final would pick by chance, while a baseline exists to be fast.
Fast in generation batches is not fast in wall time: a batch reused mu times costs g + mu (1 - g) one-pass steps
when generating is g of one (`--generation-share`, measured by bench/generation_share.py), so the same rule on
`implied_wall` picks the best setting in wall time, printed before the last line:

    best_lr=X mu=M speedup=Y retained=Z seeds=N preset=P

Choose on tuning seeds (default 100, 101); run the benchmark seeds (0..4) once, with the chosen setting only.

    .venv/bin/python bench/baselines.py --multipliers 1,2,4,8,16 --out runs/baselines
    .venv/bin/python bench/baselines.py --preset steady-slow --multipliers 4 --mu 2,4 --out runs/baselines

`--num-generations 4,8,16` adds completions per prompt (GRPO's group size) as a third axis at equal completions per
batch (batch_size unchanged: 16 prompts x 4 or 4 prompts x 16 instead of 8 x 8), so generation batches count the same
completions for every setting; the preset's own group size is always in. `--library DIR` replays the committed
curves of the curve library (bench/curves.py: 3e-5 x 1..16, mu 1, 2, 4; other group sizes from the variant folders
DIR+num_generations=G that `bench/curves.py --hp num_generations=G` writes) in seconds instead of training; a run
missing there is a one-line error:

    .venv/bin/python bench/baselines.py --preset steady-slow --mu 1,2,4 --seeds 100 --library docs/results/curves/steady
    .venv/bin/python bench/baselines.py --preset steady-slow --multipliers 4 --mu 2 --num-generations 4,8,16 \
        --seeds 100-100 --library docs/results/curves/steady
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from common import (Results, add_out, add_preset, add_seeds, console, goal_metrics, implied_wall, library_run,
                    new_parser, per_batch, plain_run, progress, reuse_rollouts, run_name, spread, train_config)
from rlcast.evaluation.speedup import curve

DURATION = "~6 h on 2 CPU cores (defaults: 2 seeds x 5 learning rates, 300 generation batches each)"
FINAL_NOISE = 0.02  # one held-out score's standard deviation near 50 % on 1000 prompts: sqrt(.25 / 1000) = 0.016
STEADY_SHARE = 0.27  # generating's share of a one-pass step on the steady testbed (bench/generation_share.py)


def fastest(settings: list[tuple], med: dict, key: str) -> tuple:
    """The setting with the highest median `key` among those whose median final is within FINAL_NOISE of the best."""
    top = max(med[s]["final"] for s in settings)
    return max((s for s in settings if med[s]["final"] >= top - FINAL_NOISE), key=lambda s: med[s][key])


def group_sizes(text: str) -> list[int]:
    """--num-generations 4,16 as [4, 16] (each >= 2: a group of one has no advantage)."""
    try:
        sizes = [int(g) for g in text.split(",")]
        if min(sizes) < 2:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated group sizes >= 2, e.g. 4,16") from None
    return sizes


def name(group: int, preset_group: int, prefix: str = " g") -> str:
    """How a setting's group size is shown: nothing for the preset's (the names from before the axis), else
    `prefix`G."""
    return "" if group == preset_group else f"{prefix}{group}"


def main() -> None:
    parser = new_parser(__doc__)
    add_preset(parser)
    parser.add_argument("--multipliers", default="1,2,4,8,16", help="learning-rate multipliers (1 = the preset's)")
    parser.add_argument("--mu", default="1", help="rollout reuse: TRL num_iterations values")
    parser.add_argument("--num-generations", type=group_sizes, default=[], metavar="G,G",
                        help="completions per prompt to try besides the preset's, at its completions per batch")
    add_seeds(parser, "100,101")
    parser.add_argument("--save-every", type=int, default=10, help="in generation batches")
    parser.add_argument("--generation-share", type=float, default=STEADY_SHARE,
                        help="generating's share of a one-pass step, for the wall-time pick")
    parser.add_argument("--library", type=Path, help="replay the committed curves of this folder of the curve library "
                        "(docs/results/curves/steady, written by bench/curves.py) instead of training")
    add_out(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the testbed is tiny: one thread beats several fighting over 2 (shared) cores
    results = Results(__file__, args)
    base = train_config(args, save_every=args.save_every)
    groups = sorted({base.num_generations} | set(args.num_generations))
    settings = sorted({(float(m), int(mu), g) for m in args.multipliers.split(",") for mu in args.mu.split(",")
                       for g in groups} | {(1.0, 1, base.num_generations)})
    rows: dict[tuple, list[dict]] = {s: [] for s in settings}
    with progress() as bar:
        job = bar.add_task("runs", total=len(args.seeds) * len(settings))
        for seed in args.seeds:
            curves = {}
            for m, mu, g in settings:
                config = reuse_rollouts(train_config(args, save_every=args.save_every, seed=seed, num_generations=g,
                                                     learning_rate=m * base.learning_rate), mu)
                variant = "" if g == base.num_generations else f"+num_generations={g}"
                run = (library_run(args.library.with_name(args.library.name + variant), config, mu) if args.library
                       else plain_run(results.out / (run_name(seed, config.learning_rate, mu) + variant), config))
                curves[m, mu, g] = per_batch(curve(run), mu)
                bar.advance(job)
            for m, mu, g in settings:
                metrics = goal_metrics(curves[1.0, 1, base.num_generations], curves[m, mu, g])
                row = {"seed": seed, "multiplier": m, "mu": mu, "num_generations": g, "final": metrics["final"],
                       "steps_to_goal": metrics["steps"], "speedup": metrics["speedup"],
                       "wall_speedup": implied_wall(args.generation_share, metrics["speedup"], mu, 1),
                       "retained": metrics["retained"]}
                results.add(row)
                shown = {s: round(a, 3) for s, a in sorted(curves[m, mu, g].items()) if s % 60 == 0}
                console.print(f"seed {seed} lr {m:g}x ({m * base.learning_rate:g}) mu {mu}"
                              f"{name(g, base.num_generations)}: final {row['final']:.3f}, "
                              f"goal {metrics['goal']:.3f} reached at step {row['steps_to_goal']} (speedup "
                              f"{row['speedup']:.2f}); accuracy every 60 steps {shown}")
                rows[m, mu, g].append(row)
    keys = ("final", "speedup", "wall_speedup", "retained")
    med = {s: {key: statistics.median(r[key] for r in rows[s]) for key in keys} for s in settings}
    for m, mu, g in settings:
        final, speed = spread(r["final"] for r in rows[m, mu, g]), spread(r["speedup"] for r in rows[m, mu, g])
        print(f"lr {m:g}x mu {mu}{name(g, base.num_generations)}: median final {final['median']:.3f} "
              f"({final['min']:.3f}-{final['max']:.3f}) "
              f"speedup {speed['median']:.2f} ({speed['min']:.2f}-{speed['max']:.2f}) (wall at generation share "
              f"{args.generation_share:g}: {med[m, mu, g]['wall_speedup']:.2f}) retained "
              f"{med[m, mu, g]['retained']:.3f}")
    best, wall = fastest(settings, med, "speedup"), fastest(settings, med, "wall_speedup")
    print(f"best in wall time at generation share {args.generation_share:g}: lr {wall[0] * base.learning_rate:g} "
          f"mu {wall[1]}{name(wall[2], base.num_generations)} (wall speedup {med[wall]['wall_speedup']:.2f})")
    summary = ({f"lr{m:g}x-mu{mu}" + name(g, base.num_generations, "-g"): med[m, mu, g] for m, mu, g in settings}
               | {"best": best, "best_wall": wall})
    results.finish(summary, f"best_lr={best[0] * base.learning_rate:g} mu={best[1]} speedup={med[best]['speedup']:.2f} "
                            f"retained={med[best]['retained']:.3f} seeds={len(args.seeds)} preset={args.preset}"
                            + (f" num_generations={best[2]}" if len(groups) > 1 else ""))


if __name__ == "__main__":
    main()

"""What `rlcast tune` saves: its schedulers replayed on the curve library, compute and regret at equal compute.

Each seed's grid (learning rates x rollout reuse mu, docs/results/curves/PRESET/seedS-lrX-muM/run.json, written by
bench/curves.py: a held-out score every 10 generation batches over 300) is searched again by `rlcast.tune.Sweep`, a
trial revealing its curve only up to the rung it reached. A seed whose grid is incomplete is skipped with a message.
Per seed and scheduler: compute spent as a fraction of the full sweep (generation batches, and backward passes =
batches x mu), and regret: the best final of the grid minus the real final of the configuration picked (finals: the
mean of the last 3 checkpoints of the complete curve). Schedulers at equal compute: ASHA (the current score) keeps as
many trials at each rung as the forecast-driven scheduler did, random search trains as many full trials as that
compute buys (its regret: the mean over 20 draws); the median-stopping rule spends what its rule decides.

What bounds a pick, per seed: where the grid's best configuration ranked at each rung by its current score, how far
apart the top 5 finals lie against the scatter of one checkpoint around its curve (sd of the residuals of a line
through the last third of each curve, the median over the grid's uncollapsed curves), and the pick's regret when a
final is the mean of the last 10 checkpoints instead of 3.

The forecast scheduler's settings (forecaster, keep fraction, rungs) are chosen on the tuning seeds (--tuning-seeds,
default 100) only: the lowest mean regret among the settings spending <= 1/3 of the full sweep; the benchmark seeds
(--seeds, default 0-2) are then reported with them. Last line (benchmark seeds only):

    compute_fraction= regret_mean= regret_max= asha_regret_mean= random_regret_mean= seeds=

    .venv/bin/python bench/tune.py --out docs/results/tune
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from common import Results, add_out, add_seeds, console, fmt, new_parser, parse_seeds
from rlcast.errors import RlcastError
from rlcast.forecasting import FORECASTERS
from rlcast.io.manifest import Manifest
from rlcast.tune import ASHA, ForecastScheduler, MedianStopping, RandomSearch, Sweep, final_score

DURATION = "~2 min (replays of committed curves: no training)"
LIBRARY = Path(__file__).resolve().parent.parent / "docs" / "results" / "curves"
Z95 = 1.959963984540054
RANDOM_DRAWS = 20
# the settings tried on the tuning seeds
KEEPS = (0.2, 1 / 3, 0.5)
RUNGS = ((20, 60), (30, 90), (30, 100), (30, 150), (50, 150), (20, 100))
CURVE_ONLY = ("alpharl", "reward", "combined")  # need weights or a reward log the replay has not, or back-test it
LONG_FINAL = 10  # checkpoints in the steadier final of `limits`
COLLAPSED = 0.1  # a final below this: a collapsed run, left out of the checkpoint scatter


def curve_name(seed: int, learning_rate: float, mu: int) -> str:
    return f"seed{seed}-lr{learning_rate:g}-mu{mu}"


def read_points(folder: Path) -> list:
    """[batches, accuracy, sd] of a library run: the base at batch 0, then every checkpoint."""
    manifest = Manifest.read(folder / "run.json")
    sd = lambda ci: None if not ci else (ci[1] - ci[0]) / (2 * Z95)  # noqa: E731
    mu = int((manifest.config or {}).get("num_iterations") or 1)
    points = [[0, manifest.base_accuracy, sd(manifest.base_ci)]]
    for e in manifest.checkpoints:
        points.append([e.generation_batches if e.generation_batches is not None else e.step // mu, e.accuracy,
                       sd(e.ci)])
    return points


class Replay:
    """train_fn of a replayed sweep: reports a library curve up to the rung the trial may reach."""

    def __init__(self, curves: dict):
        self.curves = curves

    def __call__(self, config: dict, report) -> None:
        for point in self.curves[(config["learning_rate"], config["num_iterations"])]:
            if not report(*point):
                return


def load_seed(library: Path, seed: int, rates: list[float], mus: list[int], budget: int) -> dict | None:
    """{(lr, mu): points} of a complete grid; None (with a message) when a curve is missing or short."""
    curves = {}
    for lr, mu in itertools.product(rates, mus):
        folder = library / curve_name(seed, lr, mu)
        if not (folder / "run.json").exists():
            console.print(f"seed {seed}: skipped, the grid is incomplete ({folder.name} is not in {library} yet)")
            return None
        points = read_points(folder)
        if points[-1][0] < budget:
            console.print(f"seed {seed}: skipped, {folder.name} ends at batch {points[-1][0]} < {budget}")
            return None
        curves[(lr, mu)] = points
    return curves


def evaluate(curves: dict, grid: dict, budget: int, scheduler, rungs, seed: int, eval_prompts: int) -> dict:
    """One replayed sweep: compute fractions, the pick and its regret, the survivors per rung."""
    sweep = Sweep(Replay(curves), grid, budget, scheduler=scheduler, rungs=rungs, seed=seed,
                  eval_prompts=eval_prompts).run()
    finals = {key: final_score(points) for key, points in curves.items()}
    picked = sweep.winner
    key = (picked.config["learning_rate"], picked.config["num_iterations"])
    c = sweep.compute()
    return {"compute_fraction": c["batch_fraction"], "pass_fraction": c["pass_fraction"],
            "batches": c["batches"], "picked": f"lr {key[0]:g} mu {key[1]}", "key": key, "picked_final": finals[key],
            "best": max(finals.values()), "regret": max(finals.values()) - finals[key],
            "survivors": [sum(t.rung > k for t in sweep.trials) for k in range(len(sweep.rungs) - 1)],
            "rungs": sweep.rungs}


def limits(curves: dict, rungs: list[int], picked: tuple) -> dict:
    """What bounds a pick on one seed: the best configuration's rank at each rung (by current score), the spread of
    the top 5 finals against one checkpoint's scatter around its curve, and the pick's regret with LONG_FINAL-point
    finals."""
    finals = {key: final_score(points) for key, points in curves.items()}
    best = max(finals, key=finals.get)
    ranks = []
    for rung in rungs:
        now = {key: [p[1] for p in points if p[0] <= rung][-1] for key, points in curves.items()}
        ranks.append(1 + sum(v > now[best] for v in now.values()))
    scatter = []
    for key, points in curves.items():
        late = np.array([p[:2] for p in points if p[0] >= 2 * points[-1][0] / 3])
        if finals[key] >= COLLAPSED and len(late) > 2:
            scatter.append(np.std(late[:, 1] - np.polyval(np.polyfit(late[:, 0], late[:, 1], 1), late[:, 0]), ddof=2))
    long = {key: float(np.mean([p[1] for p in points if p[0] > 0][-LONG_FINAL:])) for key, points in curves.items()}
    top = sorted(finals.values(), reverse=True)
    return {"best": f"lr {best[0]:g} mu {best[1]}", "best_final": finals[best], "ranks": ranks, "rungs": rungs,
            "top5_spread": top[0] - top[4], "checkpoint_sd": float(np.median(scatter)),
            "regret_long_final": max(long.values()) - long[tuple(picked)]}


def compare(curves: dict, grid: dict, budget: int, settings: dict, seed: int, eval_prompts: int) -> dict:
    """Every scheduler on one seed's grid, ASHA and random search at the forecast scheduler's compute."""
    forecast = evaluate(curves, grid, budget, ForecastScheduler(settings["forecaster"], settings["keep"]),
                        settings["rungs"], seed, eval_prompts)
    asha = evaluate(curves, grid, budget, ASHA(keep=forecast["survivors"]), settings["rungs"], seed, eval_prompts)
    full = max(1, round(forecast["batches"] / budget))
    draws = [evaluate(curves, grid, budget, RandomSearch(keep=[full]), settings["rungs"], seed * 1000 + d,
                      eval_prompts) for d in range(RANDOM_DRAWS)]
    median = evaluate(curves, grid, budget, MedianStopping(), settings["rungs"], seed, eval_prompts)
    return {"forecast": forecast, "asha": asha, "median": median,
            "limits": limits(curves, settings["rungs"], forecast["key"]),
            "random": {"compute_fraction": float(np.mean([d["compute_fraction"] for d in draws])),
                       "pass_fraction": float(np.mean([d["pass_fraction"] for d in draws])),
                       "regret": float(np.mean([d["regret"] for d in draws])), "trials": full,
                       "regret_max": max(d["regret"] for d in draws)}}


def choose(tuning: dict, grid: dict, budget: int, eval_prompts: int) -> tuple[dict, list]:
    """The forecast scheduler's settings with the lowest mean regret on the tuning seeds among those spending
    <= 1/3 of the full sweep (else the cheapest), and every candidate's figures."""
    candidates = []
    names = [n for n in FORECASTERS if n not in CURVE_ONLY]
    for name, keep, rungs in itertools.product(names, KEEPS, RUNGS):
        rows = [evaluate(curves, grid, budget, ForecastScheduler(name, keep), list(rungs), seed, eval_prompts)
                for seed, curves in tuning.items()]
        candidates.append({"forecaster": name, "keep": keep, "rungs": list(rungs),
                           "compute_fraction": float(np.mean([r["compute_fraction"] for r in rows])),
                           "regret": float(np.mean([r["regret"] for r in rows]))})
    feasible = [c for c in candidates if c["compute_fraction"] <= 1 / 3] or candidates
    best = min(feasible, key=lambda c: (round(c["regret"], 4), c["compute_fraction"]))
    return best, candidates


def main() -> None:
    parser = new_parser(__doc__)
    add_seeds(parser, "3")
    parser.add_argument("--tuning-seeds", type=parse_seeds, default=parse_seeds("100-100"),
                        help="seeds the scheduler's settings are chosen on (default: 100)")
    parser.add_argument("--preset", default="steady", help="the library's preset folder (default: steady)")
    parser.add_argument("--learning-rates", default="3e-5,6e-5,1.2e-4,2.4e-4,4.8e-4")
    parser.add_argument("--mu", default="1,2,4", help="rollout reuse values of the grid")
    parser.add_argument("--budget", type=int, default=300, help="generation batches of a full trial")
    parser.add_argument("--library", type=Path, default=LIBRARY, help="the curve library (default: %(default)s)")
    add_out(parser, "the result file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if set(args.seeds) & set(args.tuning_seeds):
        raise RlcastError(f"--seeds {args.seeds} and --tuning-seeds {args.tuning_seeds} overlap: settings chosen on "
                          f"a seed say nothing about it")
    rates = [float(x) for x in args.learning_rates.split(",")]
    mus = [int(x) for x in args.mu.split(",")]
    grid = {"learning_rate": rates, "num_iterations": mus}
    library = args.library / args.preset
    results = Results(__file__, args)

    def seeds(which):
        loaded = {s: load_seed(library, s, rates, mus, args.budget) for s in which}
        return {s: c for s, c in loaded.items() if c is not None}

    tuning, bench = seeds(args.tuning_seeds), seeds(args.seeds)
    prompts = {Manifest.read(library / curve_name(s, rates[0], mus[0]) / "run.json").config.get("eval_prompts")
               for s in [*tuning, *bench]}
    eval_prompts = prompts.pop() if len(prompts) == 1 else None
    if not tuning:
        results.finish({"skipped": "no complete tuning seed"},
                       f"compute_fraction=nan regret_mean=nan regret_max=nan asha_regret_mean=nan "
                       f"random_regret_mean=nan seeds=")
        return
    settings, candidates = choose(tuning, grid, args.budget, eval_prompts)
    console.print(f"chosen on tuning seeds {sorted(tuning)}: forecaster {settings['forecaster']}, keep "
                  f"{settings['keep']:.2f}, rungs {settings['rungs']} (compute {settings['compute_fraction']:.2f}, "
                  f"regret {settings['regret']:.4f})")
    for seed, curves in [*tuning.items(), *bench.items()]:
        row = compare(curves, grid, args.budget, settings, seed, eval_prompts)
        role = "tuning" if seed in tuning else "benchmark"
        results.add({"seed": seed, "role": role, **row})
        f, a, r, m = row["forecast"], row["asha"], row["random"], row["median"]
        console.print(f"seed {seed} ({role}): forecast {f['compute_fraction']:.2f} of the sweep "
                      f"({f['pass_fraction']:.2f} of its backward passes), picked {f['picked']} regret "
                      f"{f['regret']:.4f}; asha {a['regret']:.4f}; random ({r['trials']} full trials) "
                      f"{r['regret']:.4f}; median rule {m['regret']:.4f} at {m['compute_fraction']:.2f}")
        lim = row["limits"]
        console.print(f"seed {seed} limits: the best, {lim['best']} (final {lim['best_final']:.3f}), ranked "
                      f"{', '.join(map(str, lim['ranks']))} of {len(curves)} at rungs "
                      f"{', '.join(map(str, lim['rungs']))}; top 5 finals within {lim['top5_spread']:.3f}, a "
                      f"checkpoint's scatter sd {lim['checkpoint_sd']:.3f}; the pick's regret with {LONG_FINAL}-point "
                      f"finals {lim['regret_long_final']:.4f}")
    rows = [r for r in results.rows if r["role"] == "benchmark"]
    pick = lambda name, key: [r[name][key] for r in rows]  # noqa: E731
    summary = {"settings": settings, "candidates": candidates, "tuning_seeds": sorted(tuning),
               "seeds": [r["seed"] for r in rows]}
    if rows:
        summary |= {"compute_fraction": float(np.mean(pick("forecast", "compute_fraction"))),
                    "pass_fraction": float(np.mean(pick("forecast", "pass_fraction"))),
                    "regret_mean": float(np.mean(pick("forecast", "regret"))),
                    "regret_max": float(np.max(pick("forecast", "regret"))),
                    "asha_regret_mean": float(np.mean(pick("asha", "regret"))),
                    "random_regret_mean": float(np.mean(pick("random", "regret"))),
                    "median_regret_mean": float(np.mean(pick("median", "regret"))),
                    "median_compute_fraction": float(np.mean(pick("median", "compute_fraction"))),
                    "regret_long_final_mean": float(np.mean(pick("limits", "regret_long_final")))}
    else:
        console.print("no complete benchmark seed yet: the last line reports none")
    line = (f"compute_fraction={fmt(summary.get('compute_fraction'))} "
            f"regret_mean={fmt(summary.get('regret_mean'), '.4f')} "
            f"regret_max={fmt(summary.get('regret_max'), '.4f')} "
            f"asha_regret_mean={fmt(summary.get('asha_regret_mean'), '.4f')} "
            f"random_regret_mean={fmt(summary.get('random_regret_mean'), '.4f')} "
            f"seeds={','.join(str(s) for s in summary['seeds'])}")
    results.finish(summary, line)


if __name__ == "__main__":
    main()

"""How well `rlcast forecast` predicts where finished runs end, from 20 % and 40 % of their checkpoints.

Each finished run (run.json status "finished") is put on the generation-batch axis (run.json's `generation_batches`
where recorded, else step // num_iterations), cut at 20 % and 40 % of its length, and its final held-out accuracy
forecast from the checkpoints up to the cut only (rlcast.apps.forecast.forecast_curve: every forecaster and their
back-tested combination). Per run and cut: the real final, the combined forecast with its 90 % interval, every
forecaster's, and "no further gain" (the last accuracy at the cut). The last line:

    mae_20=X mae_40=Y coverage_90=Z rank_spearman_20=W best_single=NAME seconds=S

MAE of the combined forecast over runs; coverage_90: share of real finals (both cuts) inside the combined 90 %
intervals; rank_spearman_20: Spearman correlation between the 20 % forecasts and the real finals across the runs of
one seed of one task and model (its learning rates and rollout reuse), median over seeds; best_single: the
forecaster with the lowest MAE over both cuts. Before it, the rank ceiling: how well the real finals rank against a redraw of their own score
noise, about the best rank_spearman_20 a perfect forecaster could get. Tune forecaster settings on tuning seeds
(>= 100) only.

    .venv/bin/python bench/forecast.py --runs /work/runs/baselines/*
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rlcast.apps.forecast import forecast_curve, open_run
from rlcast.errors import RlcastError
from rlcast.forecasting import Combination, read_curve
from rlcast.forecasting.curves import with_weights
from rlcast.methods.base import parameters

CUTS = (0.2, 0.4)


def finished(path: Path) -> bool:
    try:
        return json.loads((path / "run.json").read_text()).get("status") == "finished"
    except (OSError, ValueError):
        return False


def spearman(x: list[float], y: list[float]) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def noise_ceiling(group: list[dict], draws: int = 2000, seed: int = 0) -> float:
    """Mean Spearman between the group's real finals and finals redrawn from their own binomial score noise: finals
    closer together than the noise cannot be ranked reliably by anyone, forecaster or a second evaluation."""
    rng = np.random.default_rng(seed)
    finals = np.array([r["final"] for r in group])
    prompts = np.array([r["prompts"] or 1000 for r in group])
    return float(np.nanmean([spearman(list(finals), list(rng.binomial(prompts, finals) / prompts))
                             for _ in range(draws)]))


def evaluate_run(path: Path, weights: bool, members: list[str] | None, params: dict) -> dict:
    run, unreadable = open_run(path)
    curve = read_curve(run)
    if weights and unreadable is None:
        curve = with_weights(curve, run)
    config = (run.manifest.config if run.manifest else None) or {}
    curve = curve.generation_axis()
    length, final = curve.last, float(curve.accuracy[-1])
    settled = float(np.mean(curve.accuracy[-3:]))  # the last 3 scores: less of one checkpoint's swing
    out = {"run": str(path), "seed": config.get("seed"), "task": config.get("task"), "model": config.get("model"),
           "prompts": config.get("eval_prompts"), "lr": config.get("learning_rate"),
           "mu": config.get("num_iterations", 1), "length": length, "final": final, "settled": settled}
    for cut in CUTS:
        window = curve.window(int(round(cut * length)))
        model = Combination(members, **params) if members else Combination(**params)
        r = forecast_curve(window, length, model=model)
        out[cut] = {"cutoff": window.last, "stop": float(window.accuracy[-1]), "combined": r.combined,
                    "forecasters": {k: v for k, v in r.forecasters.items() if "reason" not in v},
                    "weights": {k: v["weight"] for k, v in r.forecasters.items() if "weight" in v}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run folders (unfinished ones are skipped)")
    parser.add_argument("--no-weights", action="store_true", help="leave out the weight-based forecaster")
    parser.add_argument("--members", help="comma-separated forecasters to combine (default: all)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the combination (rlcast.forecasting.Combination: power, growth, s_prior, "
                             "s_strength, spread, min_origin); repeatable; tune on tuning seeds only")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()
    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or key not in parameters(Combination):
            parser.error(f"--param {item!r}: expected KEY=VALUE with KEY one of Combination's settings")
        try:
            params[key] = float(value) if "." in value or "e" in value else int(value)
        except ValueError:
            parser.error(f"--param {item!r}: {value!r} is not a number")
    try:
        Combination(**params)  # a bad setting fails here, before any run is read
    except RlcastError as err:
        parser.error(str(err))
    torch.set_num_threads(1)
    start = time.perf_counter()
    console = Console(soft_wrap=True)
    paths = [Path(p) for p in args.runs if Path(p).is_dir()]
    done = [p for p in paths if finished(p)]
    for p in sorted(set(paths) - set(done)):
        console.print(f"[dim]skipped {p}: not finished[/]", highlight=False)
    if not done:
        raise SystemExit("no finished runs")
    members = args.members.split(",") if args.members else None
    rows = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        job = bar.add_task("runs", total=len(done))
        for path in done:
            bar.update(job, description=path.name)
            try:
                rows.append(evaluate_run(path, not args.no_weights, members, params))
            except RlcastError as err:
                console.print(f"[red]{path.name}: {err}[/]", highlight=False)
            bar.advance(job)
    names = sorted({k for r in rows for cut in CUTS for k in r[cut]["forecasters"]})
    for r in rows:
        parts = [f"{Path(r['run']).name}: final {r['final']:.3f} at {r['length']}"]
        for cut in CUTS:
            c = r[cut]
            hit = c["combined"]["low"] <= r["final"] <= c["combined"]["high"]
            each = " ".join(f"{k}={v['median']:.3f}" for k, v in c["forecasters"].items())
            parts.append(f"  {int(100 * cut)}% (step {c['cutoff']}, {c['stop']:.3f}): combined "
                         f"{c['combined']['median']:.3f} [{c['combined']['low']:.3f}, {c['combined']['high']:.3f}]"
                         f"{'' if hit else ' MISS'} | {each}")
        console.print("\n".join(parts), highlight=False)

    def mae(cut, key=None):
        errs = [abs((r[cut]["combined"] if key is None else r[cut]["forecasters"][key])["median"] - r["final"])
                for r in rows if key is None or key in r[cut]["forecasters"]]
        return float(np.mean(errs)) if errs else float("nan")

    settled = {cut: float(np.mean([abs(r[cut]["combined"]["median"] - r["settled"]) for r in rows])) for cut in CUTS}
    console.print(f"combined     against the mean of each run's last 3 scores: mae_20={settled[0.2]:.4f} "
                  f"mae_40={settled[0.4]:.4f} (how much of the error is the last checkpoint's own swing)",
                  highlight=False)
    stop = {cut: float(np.mean([abs(r[cut]["stop"] - r["final"]) for r in rows])) for cut in CUTS}
    single = {k: (mae(0.2, k) + mae(0.4, k)) / 2 for k in names}
    for k in names:
        cover = np.mean([r[cut]["forecasters"][k]["low"] <= r["final"] <= r[cut]["forecasters"][k]["high"]
                         for r in rows for cut in CUTS if k in r[cut]["forecasters"]])
        console.print(f"{k:12s} mae_20={mae(0.2, k):.4f} mae_40={mae(0.4, k):.4f} coverage_90={cover:.2f}",
                      highlight=False)
    console.print(f"{'no gain':12s} mae_20={stop[0.2]:.4f} mae_40={stop[0.4]:.4f}", highlight=False)
    coverage = float(np.mean([r[cut]["combined"]["low"] <= r["final"] <= r[cut]["combined"]["high"]
                              for r in rows for cut in CUTS]))
    def interval_score(c: dict, y: float, alpha: float = 0.1) -> float:
        """Width of the 90 % interval plus 2 / alpha times how far outside it y falls (lower is better: Gneiting and
        Raftery's score rewards narrow intervals only while they still hold the truth)."""
        return c["high"] - c["low"] + 2 / alpha * (max(c["low"] - y, 0.0) + max(y - c["high"], 0.0))

    score = float(np.mean([interval_score(r[cut]["combined"], r["final"]) for r in rows for cut in CUTS]))
    console.print(f"combined     interval_score_90={score:.4f} mean_width_90="
                  f"{np.mean([r[c]['combined']['high'] - r[c]['combined']['low'] for r in rows for c in CUTS]):.4f}"
                  f" settings={params or 'defaults'}", highlight=False)
    by_seed: dict = {}  # runs ranked together: one seed of one task and model
    for r in rows:
        by_seed.setdefault((r["seed"], r["task"], r["model"]), []).append(r)
    rhos = [spearman([r[0.2]["combined"]["median"] for r in group], [r["final"] for r in group])
            for group in by_seed.values() if len(group) >= 3]
    rho = statistics.median(rhos) if rhos else float("nan")
    ceilings = [noise_ceiling(group) for group in by_seed.values() if len(group) >= 3]
    if ceilings:
        console.print(f"rank ceiling: Spearman of the real finals with a redraw of their own score noise (binomial "
                      f"over the held-out prompts, 2000 draws), median over groups {statistics.median(ceilings):.2f} "
                      f"(per group {', '.join(f'{c:.2f}' for c in ceilings)}): what a perfect forecaster could "
                      f"expect", highlight=False)
    best = min(single, key=single.get)
    combined = (mae(0.2) + mae(0.4)) / 2
    console.print(f"combined     mae={combined:.4f} vs best single {best} {single[best]:.4f}; runs={len(rows)} "
                  f"groups={len(by_seed)} (spearman over {len(rhos)} seed/task groups with >= 3 runs)", highlight=False)
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": rows}, indent=1, default=str))
    print(f"mae_20={mae(0.2):.4f} mae_40={mae(0.4):.4f} coverage_90={coverage:.2f} rank_spearman_20={rho:.2f} "
          f"best_single={best} seconds={time.perf_counter() - start:.0f}")


if __name__ == "__main__":
    main()

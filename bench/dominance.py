"""Where rank-1 dominance holds: rank-k gain recovery, rank-1 linearity and energy against the learning rate and reuse.

AlphaRL's premise (arXiv 2510.00553: the top singular direction of each update carries ~99 % of the RL gain and moves
linearly) was measured near lr 1e-6 on 7-8B models. Here it is measured on the final checkpoint of every finished plain
run of the curve library (`bench/curves.py`: steady preset, 300 generation batches, learning rates x rollout reuse mu,
one folder `seed{S}-lr{LR}-mu{MU}` per run under --runs; unfinished runs are skipped and listed). Per run:

    gain recovery (k = 1, 2, 4)  (acc_k - acc_base) / (acc_full - acc_base), paired 95 % bootstrap interval over the
                                 same held-out prompts (`rlcast.apps.dominance`, selection blocks, rescaled)
    step R^2 (held out)          mean (and median) over 2-D block modules of the R^2 of s1 u1 against a line in the step, fitted on
                                 the first 2/3 of the checkpoints and scored on the rest (`rlcast.apps.dynamics`)
    rank-1 energy                mean over 2-D block modules of s1^2 / ||dW||_F^2 at the final checkpoint, and over all
                                 checkpoints (`rlcast.apps.analysis`)

Nothing is written into the runs (spectra are cached in a scratch folder). OUT/dominance.json keeps one row per run;
a rerun on the same --out reuses the rows measured with the same settings, so runs finishing later are added.
Last line, at mu 1 (plain GRPO), over the seeds:

    lr_half_recovery=LR (Nx best) [min..max = min..max in x best]  recovery_at_min_lr=X recovery_at_best_lr=Y seeds=S

lr_half_recovery: per seed, the learning rate where rank-1 gain recovery first falls below 50 % going up from the
smallest one, interpolated linearly in log lr between the two measured rates around the crossing ("<" the smallest
when it starts below, ">" the largest when it never falls; a collapsed run, its final checkpoint at or below the base,
has no gain to share and is left out); the median over seeds (in log lr) with the seeds' range,
also in units of the tuned learning rate (best lr 1.2e-4). The recoveries are the median over seeds, with the 95 %
interval for one seed and the seeds' range for several.

    .venv/bin/python bench/dominance.py --seeds 100,0,1 --retained-seeds 100,0,1 --out docs/results/dominance
    .venv/bin/python bench/dominance.py --report docs/results/dominance/dominance.json   # the line, in seconds
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import rlcast
from common import (Results, add_out, add_seeds, console, finished, fmt, new_parser, quiet_transformers, run_name,
                    spread)
from extrapolation import METHODS
from rlcast.apps.analysis import analyze
from rlcast.apps.compare import compare
from rlcast.apps.dominance import dominance
from rlcast.apps.dynamics import analyze_dynamics
from rlcast.io.checkpoints import load_run
from rlcast.io.outputs import scratch_dir

DURATION = ("5-25 s per run on 2 shared CPU cores (1000 prompts, ranks 1,2,4; 15 runs per seed), 0.5-3 min more per "
            "run with --retained-seeds")
LIBRARY = Path("/work/runs/library")
LEARNING_RATES = "3e-5,6e-5,1.2e-4,2.4e-4,4.8e-4"
BEST_LR = 1.2e-4  # the tuned learning rate of the steady preset (seed 100)
HALF = 0.5  # the recovery the line's learning rate is defined by
KEYS = ("n_prompts", "ranks", "seed", "selection")  # the settings a reused row must share
CUTOFFS = (0.2, 0.4)  # bench/extrapolation.py's windows


def numbers(text: str, kind=float) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def measure(folder: Path, args) -> dict:
    """The row of one finished library run: its final checkpoint's rank-k recoveries, rank-1 dynamics and energy."""
    start = time.perf_counter()
    run = load_run(folder)
    result = dominance(run, ranks=args.ranks, n_prompts=args.n_prompts, selection=args.selection, seed=args.seed,
                       progress=False)
    with scratch_dir("bench-dominance") as cache:  # spectra cached here, never under the library's run folder
        dyn = analyze_dynamics(run, selection=args.selection, relex=False, progress=False, cache_dir=cache)
        energy = analyze(run, selection=args.selection, cache_dir=cache, progress=False)
    two_d = [m for m in energy.modules.values() if len(m["shape"]) == 2]
    last = str(energy.steps[-1])
    overall = dyn.summary["overall"]
    row = {"step": result.step, "base": result.base.accuracy, "full": result.full.accuracy,
           "ranks": {str(s.k): {"accuracy": s.accuracy, "recovery": r.recovery, "recovery_ci": list(r.recovery_ci),
                                "gain_recovery": r.gain_recovery, "gain_recovery_ci": list(r.gain_recovery_ci)}
                     for s, r in zip(result.ranks, result.recovery)},
           "step_r2": overall["mean_step_r2"], "step_r2_heldout": overall["mean_step_r2_heldout"],
           "median_step_r2_heldout": statistics.median(m.step_r2_heldout for m in dyn.modules),
           "share_step_r2_heldout_lt_0": overall["share_step_r2_heldout_lt_0"],
           "pls_r2": overall["mean_pls_r2"], "pls_r2_heldout": overall["mean_pls_r2_heldout"],
           "rank1_energy_last": statistics.mean(m["steps"][last]["rank1_energy"] for m in two_d),
           "rank1_energy": statistics.mean(s["rank1_energy"] for m in two_d for s in m["steps"].values()),
           "modules": len(two_d), "checkpoints": len(energy.steps)}
    row["seconds"] = time.perf_counter() - start
    return row


def mirror(folder: Path, into: Path) -> Path:
    """The run `folder` as links to its checkpoints' files (run.json copied) in `into`: the methods cache spectra
    under RUN/.rlcast-cache, which must land here, not in the library's run."""
    into.mkdir()
    (into / "run.json").write_bytes((folder / "run.json").read_bytes())
    for checkpoint in folder.glob("checkpoint-*"):
        (into / checkpoint.name).mkdir()
        for file in checkpoint.iterdir():
            (into / checkpoint.name / file.name).symlink_to(file)
    return into


def retained(folder: Path, args) -> dict:
    """bench/extrapolation.py's retained accuracy without its continuations: every method of it predicts the final
    checkpoint from the windows up to 20 % and 40 % of the steps (`rlcast.apps.compare`, same prompts);
    retained = acc(prediction) / acc(final checkpoint), and `stop` the same for the cutoff's own checkpoint."""
    start = time.perf_counter()
    with scratch_dir("bench-dominance-run") as tmp:
        result = compare(load_run(mirror(folder, tmp / folder.name)), cutoffs=CUTOFFS, methods=METHODS.split(","),
                         n_prompts=args.n_prompts, seed=0, progress=False)
    final = result.row("real", result.target).accuracy
    stop = {str(c): result.row("real", c).accuracy / final for c in result.cutoffs}  # stopping at the cutoff
    rows = [{"method": r.method, "cutoff": r.cutoff, "fraction": r.fraction, "accuracy": r.accuracy,
             "retained": None if r.accuracy is None else r.accuracy / final, "reason": r.reason}
            for r in result.rows if r.method != "real"]
    return {"target": result.target, "final": final, "stop": stop, "rows": rows,
            "seconds": time.perf_counter() - start}


def measured_by(provenance: dict, settings: dict) -> dict:
    """What measured a row: the commit of the checkout and of the rlcast code that ran, the machine and versions (the
    file's provenance is that of its last session; reused rows keep their own)."""
    return {"commit": provenance.get("commit"), "rlcast_commit": settings.get("rlcast_commit"),
            "rlcast_source": settings.get("rlcast_source"), "machine": provenance.get("machine"),
            "versions": provenance.get("versions")}


def crossing(points: list[tuple[float, float]], level: float = HALF) -> float:
    """The learning rate where the recovery first falls below `level` going up in lr, interpolated in log lr;
    -inf when the smallest lr is already below, +inf when none is (points: (lr, recovery), nan ones left out)."""
    points = sorted((lr, g) for lr, g in points if g is not None and math.isfinite(g))
    if not points:
        return math.nan
    if points[0][1] < level:
        return -math.inf
    for (lr0, g0), (lr1, g1) in zip(points, points[1:]):
        if g1 < level:
            t = (g0 - level) / (g0 - g1)
            return math.exp(math.log(lr0) + t * (math.log(lr1) - math.log(lr0)))
    return math.inf


def lr_text(lr: float, lrs: list[float]) -> str:
    if math.isnan(lr):
        return "nan"
    if lr == -math.inf:
        return f"<{min(lrs):.2g}"
    if lr == math.inf:
        return f">{max(lrs):.2g}"
    return f"{lr:.2g}"


def x_text(lr: float, lrs: list[float]) -> str:
    """`lr` in units of the tuned learning rate ("<" / ">" the grid's ends for a crossing outside it)."""
    if math.isnan(lr):
        return "nan"
    if math.isinf(lr):
        return f"{'<' if lr < 0 else '>'}{(min(lrs) if lr < 0 else max(lrs)) / BEST_LR:.2g}x"
    return f"{lr / BEST_LR:.2g}x"


def log_median(values: list[float]) -> float:
    """Median in log lr (+-inf kept: they order as censored values); nan without values."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return math.nan
    middle = statistics.median(math.log(v) if math.isfinite(v) else v for v in kept)
    return middle if math.isinf(middle) else math.exp(middle)


def collapsed(row: dict) -> bool:
    """Whether the run's final checkpoint scores at or below the base: no gain, so no share of one (the ratio of two
    losses, or of a loss to nothing, is left out of every summary)."""
    return "full" in row and row["full"] <= row["base"]


def rank1(row: dict) -> float | None:
    return row["ranks"]["1"]["gain_recovery"] if "1" in row["ranks"] and not collapsed(row) else None


def at_lr(rows: list[dict], lr: float) -> str:
    """Median rank-1 gain recovery over the seeds at `lr`: with its 95 % interval for one seed, the seeds' range
    for several."""
    chosen = [r for r in rows if math.isclose(r["learning_rate"], lr, rel_tol=1e-6) and rank1(r) is not None]
    if not chosen:
        return "nan"
    if len(chosen) == 1:
        lo, hi = chosen[0]["ranks"]["1"]["gain_recovery_ci"]
        return f"{rank1(chosen[0]):.0%} [{fmt(lo, '.0%')}, {fmt(hi, '.0%')}]"
    s = spread(rank1(r) for r in chosen)
    return f"{fmt(s['median'], '.0%')} (seeds {fmt(s['min'], '.0%')}..{fmt(s['max'], '.0%')})"


def summarize(rows: list[dict], lrs: list[float]) -> tuple[dict, str]:
    """Per mu: each seed's lr_half_recovery and its median; per (lr, mu): the spread over seeds of every measure; the
    last line at mu 1."""
    measures = ("step_r2_heldout", "median_step_r2_heldout", "rank1_energy_last", "share_step_r2_heldout_lt_0")
    grid = {}
    for lr in lrs:
        for mu in sorted({r["mu"] for r in rows}):
            cell = [r for r in rows if r["mu"] == mu and math.isclose(r["learning_rate"], lr, rel_tol=1e-6)]
            if cell:
                grid[f"lr{lr:g}-mu{mu}"] = {
                    "learning_rate": lr, "mu": mu, "seeds": sorted(r["seed"] for r in cell),
                    **{f"gain_recovery_k{k}": spread(r["ranks"][k]["gain_recovery"] for r in cell
                                                     if k in r["ranks"] and not collapsed(r))
                       for k in sorted(cell[0]["ranks"], key=int)},
                    "collapsed_seeds": sorted(r["seed"] for r in cell if collapsed(r)),
                    **{m: spread(r[m] for r in cell) for m in measures}}
    half = {}
    for mu in sorted({r["mu"] for r in rows}):
        per_seed = {seed: crossing([(r["learning_rate"], rank1(r)) for r in rows if r["seed"] == seed and r["mu"] == mu])
                    for seed in sorted({r["seed"] for r in rows if r["mu"] == mu})}
        finite = [v for v in per_seed.values() if not math.isnan(v)]
        measured = {seed: sorted({r["learning_rate"] for r in rows if r["seed"] == seed and r["mu"] == mu
                                  and rank1(r) is not None}) or lrs
                    for seed in per_seed}  # a seed still training: ">" its own largest measured rate, not the grid's
        half[f"mu{mu}"] = {"per_seed": {str(s): lr_text(v, measured[s]) for s, v in per_seed.items()},
                           "median": lr_text(log_median(finite), lrs),
                           "median_x_best": log_median(finite) / BEST_LR if finite else math.nan,
                           "min": lr_text(min(finite), lrs) if finite else "nan",
                           "max": lr_text(max(finite), lrs) if finite else "nan",
                           "range_x_best": (f"{x_text(min(finite), lrs)}..{x_text(max(finite), lrs)}" if finite
                                            else "nan")}
    plain = [r for r in rows if r["mu"] == 1]
    seeds = sorted({r["seed"] for r in plain})
    h = half.get("mu1", {"median": "nan", "median_x_best": math.nan, "min": "nan", "max": "nan",
                         "range_x_best": "nan"})
    units = x_text(h["median_x_best"] * BEST_LR, lrs)
    line = (f"lr_half_recovery={h['median']} ({units} best) [{h['min']}..{h['max']} = {h['range_x_best']}] "
            f"recovery_at_min_lr={at_lr(plain, min(lrs))} recovery_at_best_lr={at_lr(plain, BEST_LR)} "
            f"seeds={','.join(map(str, seeds)) or 'none'} mu=1")
    return {"lr_half_recovery": half, "grid": grid, "best_lr": BEST_LR}, line


def pct_ci(cell: dict) -> str:
    lo, hi = cell["gain_recovery_ci"]
    return f"{cell['gain_recovery']:.0%} [{fmt(lo, '.0%')}, {fmt(hi, '.0%')}]"


def lines(rows: list[dict]) -> list[str]:
    """One line per run (mu, seed, lr order): gain recovery per rank with its interval, the rank-1 trajectories'
    held-out step R^2 (median over modules) and energy; then, for runs with bench/extrapolation.py's retained accuracy,
    one line per run with it per method and window."""
    out = []
    for r in sorted(rows, key=lambda r: (r["mu"], r["seed"], r["learning_rate"])):
        ranks = " ".join(f"k{k}={pct_ci(v)}" for k, v in r["ranks"].items())
        out.append(f"mu={r['mu']} lr={r['learning_rate']:g} ({r['learning_rate'] / BEST_LR:.2g}x best) "
                   f"seed={r['seed']}: base={r['base']:.3f} full={r['full']:.3f} gain recovery {ranks} "
                   f"step_r2_heldout={fmt(r['median_step_r2_heldout'], '.2f')} "
                   f"rank1_energy={r['rank1_energy_last']:.2f}"
                   + (" collapsed: full <= base, no gain to share (left out)" if collapsed(r) else ""))
    for r in sorted((r for r in rows if r.get("retained")), key=lambda r: (r["seed"], r["learning_rate"])):
        by_cut = {}
        for m in r["retained"]["rows"]:
            by_cut.setdefault(m["cutoff"], []).append(f"{m['method']}={fmt(m['retained'], '.2f')}")
        cuts = " | ".join(f"@{c / r['retained']['target']:.1f}: stop={r['retained']['stop'][str(c)]:.2f} "
                          f"{' '.join(v)}" for c, v in sorted(by_cut.items()))
        out.append(f"retained mu={r['mu']} lr={r['learning_rate']:g} seed={r['seed']} "
                   f"rank1_gain={pct_ci(r['ranks']['1'])} {cuts}")
    return out


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--runs", type=Path, default=LIBRARY, help="the curve library's run folders (default: "
                                                                   f"{LIBRARY})")
    add_seeds(parser, "100,0,1,2")
    parser.add_argument("--lrs", default=LEARNING_RATES, help="learning rates of the library's runs")
    parser.add_argument("--mu", default="1,2,4", help="rollout reuse of the library's runs (mu 1 measured first)")
    parser.add_argument("--ranks", default="1,2,4", help="ranks k of the rank-k models")
    parser.add_argument("--n-prompts", type=int, default=1000, help="held-out prompts, the same for every model")
    parser.add_argument("--selection", default="blocks", choices=("blocks", "all-2d", "all"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts, the SVD and the bootstrap")
    parser.add_argument("--retained-seeds", default="", metavar="S,...",
                        help="the mu 1 runs of these seeds also get bench/extrapolation.py's retained accuracy "
                             "(every method from 20 %% and 40 %% windows, no continuation; minutes per run)")
    add_out(parser, "the result file")
    parser.add_argument("--report", type=Path, metavar="JSON", help="only print the lines of this result file")
    args = parser.parse_args()
    if args.report:
        record = json.loads(args.report.read_text())
        _, line = summarize(record["rows"], numbers(record["settings"]["lrs"]))
        print("\n".join([*lines(record["rows"]), line]))
        return
    quiet_transformers()
    torch.set_num_threads(1)  # the cores are shared with the library's training
    lrs, mus, args.ranks = numbers(args.lrs), numbers(args.mu, int), numbers(args.ranks, int)
    with_retained = set(numbers(args.retained_seeds, int))
    if not args.runs.is_dir():
        raise SystemExit(f"--runs {args.runs}: not a folder")
    source = Path(rlcast.__file__).parent  # the code that measured (may be a frozen copy beside this checkout)
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True)
    results = Results(__file__, args, {"ranks": args.ranks, "rlcast_source": str(source),
                                       "rlcast_commit": commit.stdout.strip()})
    same = {k: results.settings[k] for k in KEYS}
    old = json.loads(results.path.read_text()) if results.path.exists() else None
    kept = {r["name"]: r for r in old["rows"]} if old and {k: old["settings"].get(k) for k in KEYS} == same else {}
    for r in kept.values():  # a reused row keeps the provenance of the session that measured it
        r.setdefault("measured", measured_by(old["provenance"], old["settings"]))
    now = measured_by(results.provenance, results.settings)
    skipped = []
    for mu in sorted(mus):
        for seed in args.seeds:
            for lr in lrs:
                name = run_name(seed, lr, mu)
                folder = args.runs / name
                if name not in kept and not finished(folder):
                    skipped.append(name)
                    continue
                row = kept.get(name) or {"name": name, "seed": seed, "learning_rate": lr, "mu": mu,
                                         "run": str(folder), **measure(folder, args), "measured": now}
                if name not in kept:
                    console.print(lines([row])[0])
                if mu == 1 and seed in with_retained and "stop" not in row.get("retained", {}):
                    row["retained"] = retained(folder, args)
                    console.print(lines([row])[-1])
                results.add(row)
    summary, line = summarize(results.rows, lrs)
    results.finish({**summary, "skipped_unfinished": skipped}, line)


if __name__ == "__main__":
    sys.exit(main())

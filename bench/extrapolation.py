"""Every extrapolator on plain runs of a preset over seeds: accuracy from a window, alone and with k more RL steps.

For each seed: a plain run of the preset (`rlcast.training.train.train`, a checkpoint every `save_every` steps,
each keeping its optimizer state), then `rlcast.apps.compare.compare` predicts the last step T from the window up to
each cutoff c with every method. Per method and cutoff:

    retained = acc(prediction) / acc(plain @ T)          gain = acc(prediction) - acc(plain @ c)

Then the continuation protocol (NExt: "train 150 steps, extrapolate, train 100 more" against 400 plain steps):
`rlcast.training.continuation.continue_from` trains k more RL steps from each prediction with the cutoff's optimizer
state and step counter (k = c by default: the window's compute once more; --optimizer fresh restarts it as RL-Extra
does), and the result is compared at matched total steps:

    vs_matched = acc(prediction + k) - acc(plain @ c + k)     vs_final = acc(prediction + k) - acc(plain @ T)

Every accuracy is greedy on the same held-out prompts: the runs' run.json score `n_prompts` test prompts sampled with
seed 0 (`eval_prompts` = n_prompts, the continued runs inherit it) and compare is called with seed 0 and the same
n_prompts, so it scores the same prompts the same way (checked: its real rows must equal the plain run.json's
accuracies, its prediction rows the continued run.json's at the cutoff).
One row per seed (its plain curve and its method rows) goes to OUT/extrapolation.json; finished plain and continued
runs found in --out are reused. Last line, for the (method, cutoff) with the best median vs_final:
`method=M cutoff=F retained=X gain=Y continued=A vs_matched=B vs_final=C steps=c+k/T seeds=N preset=P`

    .venv/bin/python bench/extrapolation.py --seeds 3 --steps 300 --save-every 10 --cutoffs 0.2,0.4
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from common import (Results, add_out, add_preset, add_seeds, console, finished, fmt, new_parser, plain_run, progress,
                    quiet_transformers, spread, train_config)
from rlcast.apps.compare import compare
from rlcast.evaluation.speedup import curve
from rlcast.io.checkpoints import load_run
from rlcast.training.continuation import continue_from

DURATION = "~30-40 min per seed on 2 CPU cores (steady: 300 steps, 6 methods x 2 cutoffs, each continued)"
METHODS = "weight-linear,alpharl-step,relex,next,drift,rre"


def drop_optimizer_states(run: Path, keep: set[int] = frozenset()) -> None:
    """Delete a finished run's optimizer states (2/3 of a checkpoint's bytes) except at the steps in `keep`: only
    continuing from a checkpoint needs them."""
    for path in run.glob("checkpoint-*/optimizer.pt"):
        if int(path.parent.name.split("-")[1]) not in keep:
            path.unlink()


def continued_run(out: Path, plain_dir: Path, cutoff: int, end: int, weights: Path, optimizer: str) -> Path:
    """The continuation of the plain run from `weights` at `cutoff` to `end`: reused when finished, resumed when
    interrupted, else started."""
    if finished(out):
        return out
    return continue_from(out, plain_dir, cutoff, end, weights=weights, optimizer=optimizer, progress=False,
                         resume=(out / "run.json").exists())


def one_seed(args, seed: int, root: Path, methods: list[str]) -> dict:
    """The plain run, every prediction and every continuation of one seed; prints them and returns its row."""
    start = time.perf_counter()
    config = train_config(args, steps=args.steps, save_every=args.save_every, seed=seed,
                          eval_prompts=args.n_prompts, keep_optimizer="all")
    plain_dir = plain_run(root / f"seed{seed}" / "plain", config)
    trained = time.perf_counter() - start
    result = compare(load_run(plain_dir), cutoffs=args.cutoffs, methods=methods, n_prompts=args.n_prompts, seed=0,
                     keep=root / f"seed{seed}" / "predictions", progress=False)
    compared = time.perf_counter() - start - trained
    plain, target = curve(plain_dir), result.target
    mismatch = [r.cutoff for r in result.rows if r.method == "real" and r.accuracy != plain[r.cutoff]]
    if mismatch:
        raise SystemExit(f"seed {seed}: compare and run.json disagree at steps {mismatch}: not the same prompts")
    shown = " ".join(f"@{s}={a:.3f}" for s, a in plain.items() if s in (0, *result.cutoffs))
    console.print(f"seed {seed}: plain {shown} @{target}={plain[target]:.3f} (train {trained:.0f} s, compare "
                  f"{compared:.0f} s)")
    rows = []
    for cutoff in result.cutoffs:
        if cutoff == 0:
            console.print(f"  cutoff {cutoff} -> {target}: no checkpoint in the window, skipped")
            continue
        extra = args.extra or cutoff
        end = cutoff + extra
        console.print(f"  cutoff {cutoff} -> {target}, then {extra} RL steps ({args.optimizer} optimizer) to step "
                      f"{end}:")
        for method in methods:
            row = result.row(method, cutoff)
            if row is None or row.accuracy is None:
                console.print(f"    {method:14s} failed: {row.reason if row else 'no row'}")
                continue
            r = {"seed": seed, "method": method, "cutoff": cutoff, "fraction": cutoff / target, "extra": extra,
                 "target": target, "prediction": row.accuracy, "retained": row.accuracy / plain[target],
                 "gain": row.gain, "continued": None, "plain_matched": plain.get(end), "plain_final": plain[target],
                 "vs_matched": None, "vs_final": None}
            rows.append(r)
            if method not in args.continue_methods:
                console.print(f"    {method:14s} pred={row.accuracy:.3f} retained={r['retained']:.3f} "
                              f"gain={row.gain:+.3f}")
                continue
            began = time.perf_counter()
            continued = continued_run(root / f"seed{seed}" / f"{method}-{cutoff}", plain_dir, cutoff, end,
                                      root / f"seed{seed}" / "predictions" / f"{method}-{cutoff}", args.optimizer)
            scores = curve(continued)
            if scores[cutoff] != row.accuracy:
                raise SystemExit(f"seed {seed} {method}: the continuation scores its start {scores[cutoff]}, compare "
                                 f"scored the prediction {row.accuracy}: not the same prompts")
            acc = scores[end]
            drop_optimizer_states(continued)
            r.update(continued=acc, vs_matched=acc - plain[end] if end in plain else None,
                     vs_final=acc - plain[target])
            matched = f"{plain[end]:.3f} ({r['vs_matched']:+.3f})" if end in plain else "- (no checkpoint there)"
            console.print(f"    {method:14s} pred={row.accuracy:.3f} retained={r['retained']:.3f} "
                          f"gain={row.gain:+.3f} | pred+{extra}={acc:.3f} plain@{end}={matched} "
                          f"plain@{target}={plain[target]:.3f} ({r['vs_final']:+.3f}) "
                          f"({time.perf_counter() - began:.0f} s)")
    drop_optimizer_states(plain_dir, keep=set(result.cutoffs))  # a rerun may still continue from the cutoffs
    return {"seed": seed, "plain": plain, "rows": rows, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = new_parser(__doc__)
    add_preset(parser)
    add_seeds(parser, "3")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--cutoffs", default="0.2,0.4", help="windows as fractions of the steps")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--n-prompts", type=int, default=1000, help="held-out prompts for every score")
    parser.add_argument("--continue-methods", help="methods whose predictions are continued (default: all of "
                                                       "--methods; each costs k RL steps per cutoff and seed)")
    parser.add_argument("--extra", type=int, default=None, help="RL steps after each prediction (default: the "
                                                                "cutoff's steps, i.e. equal extra compute)")
    parser.add_argument("--optimizer", default="cutoff", choices=("cutoff", "fresh"),
                        help="continue with the cutoff's optimizer state, or a fresh one (RL-Extra)")
    add_out(parser)
    args = parser.parse_args()
    args.cutoffs = [float(x) for x in args.cutoffs.split(",")]
    args.continue_methods = (args.continue_methods or args.methods).split(",")
    torch.set_num_threads(1)  # tiny models: one thread is faster and gives the same numbers run to run
    quiet_transformers()
    results = Results(__file__, args)
    methods = args.methods.split(",")
    with progress() as bar:
        job = bar.add_task(f"{args.preset}: seeds", total=len(args.seeds))
        for seed in args.seeds:
            results.add(one_seed(args, seed, results.out, methods))
            bar.advance(job)
    console.print(f"runs in {results.out}")
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in (r for seed in results.rows for r in seed["rows"]):
        groups.setdefault((r["method"], round(r["fraction"], 3)), []).append(r)
    keys = ("retained", "gain", "continued", "vs_matched", "vs_final")
    summary = {f"{method} {fraction:.2f}": {key: spread(r[key] for r in group) for key in keys}
               for (method, fraction), group in groups.items()}
    for (method, fraction), group in groups.items():
        med = {key: value["median"] for key, value in summary[f"{method} {fraction:.2f}"].items()}
        console.print(f"{method:14s} cutoff={fraction:.2f} median retained={fmt(med['retained'])} "
                      f"gain={fmt(med['gain'], '+.3f')} continued={fmt(med['continued'])} "
                      f"vs_matched={fmt(med['vs_matched'], '+.3f')} vs_final={fmt(med['vs_final'], '+.3f')} "
                      f"per seed retained={[round(r['retained'], 3) for r in group]} "
                      f"vs_final={[None if r['vs_final'] is None else round(r['vs_final'], 3) for r in group]}")
    continued = [key for key in groups if summary[f"{key[0]} {key[1]:.2f}"]["vs_final"]["median"] is not None]
    if not continued:
        results.finish(summary, "no prediction was continued")
        return
    method, fraction = max(continued, key=lambda key: summary[f"{key[0]} {key[1]:.2f}"]["vs_final"]["median"])
    med = {key: value["median"] for key, value in summary[f"{method} {fraction:.2f}"].items()}
    r = groups[method, fraction][0]
    results.finish(summary, f"method={method} cutoff={fraction:.2f} retained={fmt(med['retained'])} "
                            f"gain={fmt(med['gain'], '+.3f')} continued={fmt(med['continued'])} "
                            f"vs_matched={fmt(med['vs_matched'], '+.3f')} vs_final={fmt(med['vs_final'], '+.3f')} "
                            f"steps={r['cutoff']}+{r['extra']}/{r['target']} seeds={len(groups[method, fraction])} "
                            f"preset={args.preset}")


if __name__ == "__main__":
    main()

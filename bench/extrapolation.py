"""Every extrapolator on fresh steady-preset runs over seeds: accuracy from a window, alone and with k more RL steps.

For each seed: a plain run of the steady preset (`rlcast.training.runs.train`, a checkpoint every `save_every` steps,
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
Everything is also written to OUT/results.json.

Last line, for the (method, cutoff) with the best median vs_final:
`method=M cutoff=F retained=X gain=Y continued=A vs_matched=B vs_final=C steps=c+k/T seeds=N preset=steady`

    .venv/bin/python bench/extrapolation.py --seeds 3 --steps 300 --save-every 10 --cutoffs 0.2,0.4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

METHODS = "weight-linear,alpharl-step,relex,next,drift,rre"


def drop_optimizer_states(run: Path) -> None:
    """Delete a finished run's optimizer states (2/3 of a checkpoint's bytes): only continuing from it needs them."""
    for path in run.glob("checkpoint-*/optimizer.pt"):
        path.unlink()


def one_seed(args, seed: int, root: Path, methods: list[str]) -> dict:
    """The plain run, every prediction and every continuation of one seed; prints them and returns the rows."""
    from rlcast.apps.compare import compare
    from rlcast.apps.demo import curve as accuracies  # {step: held-out accuracy} from run.json (0: the base)
    from rlcast.io.runs import load_run
    from rlcast.training.continuation import continue_from
    from rlcast.training.runs import preset, train

    start = time.perf_counter()
    config = dataclasses.replace(preset("steady"), steps=args.steps, save_every=args.save_every, seed=seed,
                                 eval_prompts=args.n_prompts, keep_optimizer="all")
    plain_dir = train(root / f"seed{seed}" / "plain", config, progress=False)
    trained = time.perf_counter() - start
    result = compare(load_run(plain_dir), cutoffs=args.cutoffs, methods=methods, n_prompts=args.n_prompts, seed=0,
                     keep=root / f"seed{seed}" / "predictions", progress=False)
    compared = time.perf_counter() - start - trained
    plain, target = accuracies(plain_dir), result.target
    mismatch = [r.cutoff for r in result.rows if r.method == "real" and r.accuracy != plain[r.cutoff]]
    if mismatch:
        raise SystemExit(f"seed {seed}: compare and run.json disagree at steps {mismatch}: not the same prompts")
    print(f"seed {seed}: plain {' '.join(f'@{s}={a:.3f}' for s, a in plain.items() if s in (0, *result.cutoffs))} "
          f"@{target}={plain[target]:.3f} (train {trained:.0f} s, compare {compared:.0f} s)", flush=True)
    rows = []
    for cutoff in result.cutoffs:
        if cutoff == 0:
            print(f"  cutoff {cutoff} -> {target}: no checkpoint in the window, skipped")
            continue
        extra = args.extra or cutoff
        end = cutoff + extra
        print(f"  cutoff {cutoff} -> {target}, then {extra} RL steps ({args.optimizer} optimizer) to step {end}:")
        for method in methods:
            row = result.row(method, cutoff)
            if row is None or row.accuracy is None:
                print(f"    {method:14s} failed: {row.reason if row else 'no row'}")
                continue
            r = {"seed": seed, "method": method, "cutoff": cutoff, "fraction": cutoff / target, "extra": extra,
                 "target": target, "prediction": row.accuracy, "retained": row.accuracy / plain[target],
                 "gain": row.gain, "continued": None, "plain_matched": plain.get(end), "plain_final": plain[target],
                 "vs_matched": None, "vs_final": None}
            rows.append(r)
            if method not in args.continue_methods:
                print(f"    {method:14s} pred={row.accuracy:.3f} retained={r['retained']:.3f} gain={row.gain:+.3f}")
                continue
            began = time.perf_counter()
            continued = continue_from(root / f"seed{seed}" / f"{method}-{cutoff}", plain_dir, cutoff, end,
                                      weights=root / f"seed{seed}" / "predictions" / f"{method}-{cutoff}",
                                      optimizer=args.optimizer, progress=False)
            scores = accuracies(continued)
            if scores[cutoff] != row.accuracy:
                raise SystemExit(f"seed {seed} {method}: the continuation scores its start {scores[cutoff]}, compare "
                                 f"scored the prediction {row.accuracy}: not the same prompts")
            acc = scores[end]
            drop_optimizer_states(continued)
            r.update(continued=acc, vs_matched=acc - plain[end] if end in plain else None,
                     vs_final=acc - plain[target])
            matched = f"{plain[end]:.3f} ({r['vs_matched']:+.3f})" if end in plain else "- (no checkpoint there)"
            print(f"    {method:14s} pred={row.accuracy:.3f} retained={r['retained']:.3f} gain={row.gain:+.3f} | "
                  f"pred+{extra}={acc:.3f} plain@{end}={matched} plain@{target}={plain[target]:.3f} "
                  f"({r['vs_final']:+.3f}) ({time.perf_counter() - began:.0f} s)", flush=True)
    drop_optimizer_states(plain_dir)
    return {"seed": seed, "plain": plain, "rows": rows, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
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
    parser.add_argument("--out", help="keep the runs and results.json here (default: a temporary folder)")
    args = parser.parse_args()
    args.cutoffs = [float(x) for x in args.cutoffs.split(",")]
    args.continue_methods = (args.continue_methods or args.methods).split(",")

    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)  # tiny models: one thread is faster and gives the same numbers run to run
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rlcast-bench-extrap-"))
    methods = args.methods.split(",")
    seeds = [one_seed(args, seed, root, methods) for seed in range(args.seeds)]
    (root / "results.json").write_text(json.dumps({"args": vars(args), "seeds": seeds}, indent=2) + "\n")
    print(f"runs and results.json in {root}")
    rows = [r for s in seeds for r in s["rows"]]
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], round(r["fraction"], 3)), []).append(r)

    def med(group: list[dict], key: str) -> float | None:
        values = [r[key] for r in group if r[key] is not None]
        return statistics.median(values) if values else None

    fmt = lambda v, sign="+": "-" if v is None else f"{v:{sign}.3f}"  # noqa: E731
    for (method, fraction), group in groups.items():
        print(f"{method:14s} cutoff={fraction:.2f} median retained={fmt(med(group, 'retained'), '')} "
              f"gain={fmt(med(group, 'gain'))} continued={fmt(med(group, 'continued'), '')} "
              f"vs_matched={fmt(med(group, 'vs_matched'))} vs_final={fmt(med(group, 'vs_final'))} "
              f"per seed retained={[round(r['retained'], 3) for r in group]} "
              f"vs_final={[None if r['vs_final'] is None else round(r['vs_final'], 3) for r in group]}")
    continued = {key: group for key, group in groups.items() if med(group, "vs_final") is not None}
    if not continued:
        print("no prediction was continued")
        return
    (method, fraction), group = max(continued.items(), key=lambda item: med(item[1], "vs_final"))
    r = group[0]
    print(f"method={method} cutoff={fraction:.2f} retained={fmt(med(group, 'retained'), '')} "
          f"gain={fmt(med(group, 'gain'))} continued={fmt(med(group, 'continued'), '')} "
          f"vs_matched={fmt(med(group, 'vs_matched'))} vs_final={fmt(med(group, 'vs_final'))} "
          f"steps={r['cutoff']}+{r['extra']}/{r['target']} seeds={len(group)} preset=steady")


if __name__ == "__main__":
    main()

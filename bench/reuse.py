"""Rollout reuse past 4 steps per batch: does it keep paying when TRL's ratio clipping is not what stops it?

On the steady preset reuse saturates near 4 optimizer steps per generation batch (TRL's num_iterations, mu). M2PO
(arXiv 2510.01161) bounds the second moment of the importance ratios instead of clipping them and reports no loss
with very stale rollouts; if clipping is what stops reuse, M2PO at mu 8 or 16 should keep buying batches. From the
curve library, at one learning rate, per seed: the plain runs with clipping (LIBRARY/PRESET/, mu 1..16) and with
M2PO's trust region (LIBRARY/PRESET+m2po_threshold=T/: `bench/curves.py --hp m2po_threshold=T`), each run checked
to hold exactly its config. Per run:

    final      mean held-out accuracy of its last 3 checkpoints (one checkpoint's sd ~0.016 on 1000 prompts)
    batches    generation batches to 98 % of the reference's final (the reference: clipping at `--reference-mu`),
               0 when never reached (a crossing that does not hold is not reached)
    speedup    reference batches / batches: rollouts saved;  wall: the same with each batch costing its mu
               optimizer passes (bench/common.implied_wall at `--generation-share`)
    touched    over the run's second half, the share of tokens the trust region held back: TRL's clipped share
               (clip_ratio/region_mean) or M2PO's masked share (m2po/masked); grad norm likewise

    .venv/bin/python bench/reuse.py --seeds 100-100 --mu 1,2,4,8,16 --m2po-mu 4,8,16
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

from common import (Results, add_out, add_preset, add_seeds, goal_metrics, implied_wall, library_run, new_parser,
                    per_batch, reuse_rollouts, run_name, train_config)
from acceleration import logged
from baselines import STEADY_SHARE
from curves import BATCHES, LIBRARY
from rlcast.evaluation.speedup import curve

DURATION = "seconds (replays the curve library; its runs: ~10-40 min each at mu 4-16 on one CPU core)"
TOUCHED = {"clip": "clip_ratio/region_mean", "m2po": "m2po/masked"}


def reuse_values(text: str) -> list[int]:
    """--mu 1,2,4 as [1, 2, 4] (each >= 1: optimizer steps per generation batch)."""
    try:
        values = [int(m) for m in text.split(",")]
        if min(values) < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated reuse values >= 1, e.g. 4,8") from None
    return values


def last3(points: dict[int, float]) -> float:
    return statistics.fmean(points[b] for b in sorted(points)[-3:])


def main() -> None:
    parser = new_parser(__doc__)
    add_preset(parser)
    add_seeds(parser, "100-100")
    parser.add_argument("--learning-rate", type=float, default=1.2e-4, help="the tuned learning rate")
    parser.add_argument("--mu", type=reuse_values, default="1,2,4,8,16", help="rollout reuse values with clipping (TRL num_iterations)")
    parser.add_argument("--m2po-mu", type=reuse_values, default="4,8,16", help="rollout reuse values with M2PO (at mu 1 TRL's ratio is "
                        "identically 1: nothing to bound)")
    parser.add_argument("--reference-mu", type=lambda t: reuse_values(t)[0], default=4, help="the clipped run whose final sets the goal")
    parser.add_argument("--m2po-threshold", type=float, default=0.04, help="M2PO's second-moment bound (the paper's)")
    parser.add_argument("--generation-share", type=float, default=STEADY_SHARE,
                        help="generating's share of a one-pass step, for the wall-time column")
    parser.add_argument("--library", type=Path, default=LIBRARY, help="the curve library (default: %(default)s)")
    add_out(parser, "the result file")
    args = parser.parse_args()
    results = Results(__file__, args)
    trust = {"clip": (args.preset, {}, args.mu),
             "m2po": (f"{args.preset}+m2po_threshold={args.m2po_threshold:g}", {"m2po_threshold": args.m2po_threshold},
                      args.m2po_mu)}
    rows = []
    for seed in args.seeds:
        base = train_config(args, seed=seed, learning_rate=args.learning_rate, steps=BATCHES, save_every=10)
        runs, missing = {}, []
        for loss, (folder, fields, mus) in trust.items():
            for mu in mus:
                if not (args.library / folder / run_name(seed, args.learning_rate, mu)).is_dir():
                    missing.append(f"{folder}/{run_name(seed, args.learning_rate, mu)}")
                    continue
                config = reuse_rollouts(dataclasses.replace(base, **fields), mu)
                runs[loss, mu] = library_run(args.library / folder, config, mu)
        if ("clip", args.reference_mu) not in runs:
            name = run_name(seed, args.learning_rate, args.reference_mu)
            raise SystemExit(f"{args.library / args.preset / name}: the reference run is not in the curve library; "
                             f"train it with bench/curves.py")
        reference = per_batch(curve(runs["clip", args.reference_mu]), args.reference_mu)
        for (loss, mu), run in sorted(runs.items(), key=lambda item: (item[0][0] != "clip", item[0][1])):
            points = per_batch(curve(run), mu)
            metrics = goal_metrics(reference, points)
            row = {"seed": seed, "trust": loss, "mu": mu, "final": metrics["final"], "last3": last3(points),
                   "batches": metrics["steps"], "crossed": metrics["crossed"], "speedup": metrics["speedup"],
                   "wall_speedup": implied_wall(args.generation_share, metrics["speedup"], mu, args.reference_mu),
                   **{"touched": None, "grad_norm": None}
                   | logged(run, {TOUCHED[loss]: "touched", "grad_norm": "grad_norm"})}
            rows.append(row)
            results.add(row)
            touched = "n/a" if row["touched"] is None else f"{row['touched']:.3f}"
            print(f"seed {seed} {loss} mu {mu}: final {row['final']:.3f} (last 3 {row['last3']:.3f}), goal "
                  f"{metrics['goal']:.3f} at batch {row['batches'] or 'never'}"
                  + (f" (crossed at {row['crossed']}, ended below)" if row["crossed"] and not row["batches"] else "")
                  + f", speedup {row['speedup']:.2f} (wall {row['wall_speedup']:.2f}), {TOUCHED[loss]} {touched}, "
                  f"grad norm {row['grad_norm']:.2f}")
        for name in missing:
            print(f"seed {seed}: {name} not in the library (bench/curves.py trains it)")
    best = {}
    for loss in trust:
        mine = [r for r in rows if r["trust"] == loss]
        by_mu = {mu: [r for r in mine if r["mu"] == mu] for mu in sorted({r["mu"] for r in mine})}
        if by_mu:  # highest median speedup; ties to the smaller mu (cheaper per batch)
            mu = max(by_mu, key=lambda m: (statistics.median(r["speedup"] for r in by_mu[m]), -m))
            best[loss] = (mu, statistics.median(r["speedup"] for r in by_mu[mu]),
                          statistics.median(r["last3"] for r in by_mu[mu]))
    line = " ".join(f"best_{loss}=mu{mu} speedup_{loss}={s:.2f} last3_{loss}={f:.3f}" for loss, (mu, s, f) in
                    best.items())
    results.finish({"best": best}, f"{line} reference=clip,mu{args.reference_mu} seeds={len(args.seeds)} "
                                   f"lr={args.learning_rate:g} m2po_threshold={args.m2po_threshold:g}")


if __name__ == "__main__":
    main()

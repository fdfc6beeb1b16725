"""Every extrapolator on fresh tiny-testbed GRPO runs, over seeds and learning rates: accuracy retained from a window.

For each learning rate and seed: a plain GRPO run (`rlcast.training.runs.train`, checkpoints every `save_every` steps), then
`rlcast.apps.compare.compare` predicts the last step from the window up to `cutoff` x steps with every method and scores the
predictions and the real checkpoints on the same `n_prompts` held-out prompts. Per method it prints
retained = accuracy(prediction) / accuracy(real last checkpoint) and the gain over stopping at the cutoff.

Last line: `lr=... method=... retained=X gain=Y seeds=N` for the best method by median retained at each lr.

    .venv/bin/python bench/extrapolation.py --lrs 1e-5,2e-6 --seeds 3 --steps 150 --save-every 10 --cutoff 0.2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", default="1e-5,2e-6", help="comma-separated GRPO learning rates")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--cutoff", type=float, default=0.2, help="window as a fraction of the steps")
    parser.add_argument("--methods", default="weight-linear,alpharl-step,relex,next")
    parser.add_argument("--n-prompts", type=int, default=1000, help="held-out prompts for every score")
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from rlcast.io.checkpoints import load_run
    from rlcast.apps.compare import compare
    from rlcast.training.runs import TrainConfig, train

    torch.set_num_threads(1)  # tiny models: one thread is faster and gives the same numbers run to run
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rlcast-bench-extrap-"))
    methods = args.methods.split(",")
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for lr in args.lrs.split(","):
        for seed in range(args.seeds):
            start = time.perf_counter()
            run_dir = train(root / f"lr{lr}-seed{seed}", TrainConfig(steps=args.steps, save_every=args.save_every,
                                                                      seed=seed, learning_rate=float(lr)),
                            progress=False)
            trained = time.perf_counter() - start
            result = compare(load_run(run_dir), cutoffs=[args.cutoff], methods=methods, n_prompts=args.n_prompts,
                             seed=seed, progress=False)
            final = result.row("real", result.target)
            cutoff_row = result.row("real", result.cutoffs[0])
            print(f"lr={lr} seed={seed}: real@{cutoff_row.cutoff}={cutoff_row.accuracy:.3f} "
                  f"real@{final.cutoff}={final.accuracy:.3f} (train {trained:.0f} s, "
                  f"compare {time.perf_counter() - start - trained:.0f} s)", flush=True)
            for method in methods:
                row = result.row(method, result.cutoffs[0])
                if row is None or row.accuracy is None:
                    print(f"  {method:14s} failed: {row.reason if row else 'no row'}")
                    continue
                retained = row.accuracy / final.accuracy
                results.setdefault((lr, method), []).append((retained, row.gain))
                print(f"  {method:14s} acc={row.accuracy:.3f} retained={retained:.3f} gain={row.gain:+.3f}")
    print(f"runs in {root}")
    for lr in args.lrs.split(","):
        rows = {m: results[(lr, m)] for m in methods if results.get((lr, m))}
        for method, values in rows.items():
            print(f"lr={lr} {method:14s} median retained={statistics.median(v[0] for v in values):.3f} "
                  f"median gain={statistics.median(v[1] for v in values):+.3f} "
                  f"per seed={[round(v[0], 3) for v in values]}")
    for lr in args.lrs.split(","):
        rows = {m: results[(lr, m)] for m in methods if results.get((lr, m))}
        if not rows:
            continue
        best = max(rows, key=lambda m: statistics.median(v[0] for v in rows[m]))
        values = rows[best]
        print(f"lr={lr} method={best} retained={statistics.median(v[0] for v in values):.3f} "
              f"gain={statistics.median(v[1] for v in values):+.3f} seeds={len(values)} cutoff={args.cutoff}")


if __name__ == "__main__":
    main()

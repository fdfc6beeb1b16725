"""Plain vs accelerated GRPO on the tiny testbed: same seed, same hyper-parameters, same step budget, several seeds.

For each seed: a plain run (`rlcast.training.runs.train` with its default TrainConfig, the best plain ones) and an
accelerated run (the same call plus `AccelerateCallback`). Both are scored on the same held-out prompts at every
checkpoint. Per seed:

    speedup  = plain steps / accelerated steps to reach 98 % of plain's final held-out accuracy
    retained = accelerated final accuracy / plain final accuracy
    cost     = (held-out checks + back-tests + jumps + snapshots) time / mean optimizer-step time  [step-equivalents]

Last line: `speedup=X retained=Y seeds=N` (medians over seeds).

    .venv/bin/python bench/acceleration.py --seeds 3 --steps 24 --save-every 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    from rlcast.apps.demo import ACCELERATE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--save-every", type=int, default=2)
    parser.add_argument("--eval-prompts", type=int, default=200)
    parser.add_argument("--method", default="auto")
    parser.add_argument("--every", type=int, default=ACCELERATE.every)
    parser.add_argument("--horizon", type=int, default=ACCELERATE.horizon)
    parser.add_argument("--window", type=int, default=ACCELERATE.window)
    parser.add_argument("--tolerance", type=float, default=ACCELERATE.tolerance)
    parser.add_argument("--check-prompts", type=int, default=ACCELERATE.eval_prompts)
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()

    import torch

    from rlcast.apps.demo import curve, outcome
    from rlcast.training.accelerate import AccelerateCallback, AccelerateConfig
    from rlcast.training.runs import TrainConfig, train
    from rlcast.training.testbed import base_model

    torch.set_num_threads(1)  # the testbed is tiny: one thread beats several fighting over 2 (shared) cores
    base = base_model()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rlcast-bench-accel-"))
    accel = AccelerateConfig(method=args.method, every=args.every, horizon=args.horizon, window=args.window,
                             tolerance=args.tolerance, eval_prompts=args.check_prompts, verbose=False)
    print(f"testbed {base}; default TrainConfig of rlcast.training.runs (both runs)")
    print(f"steps={args.steps} save_every={args.save_every} eval_prompts={args.eval_prompts} accelerate={accel}")
    rows = []
    for seed in range(args.seeds):
        config = TrainConfig(steps=args.steps, save_every=args.save_every, seed=seed, eval_prompts=args.eval_prompts,
                             model=str(base))
        start = time.perf_counter()
        train(root / f"plain-{seed}", config, progress=False)
        plain_seconds = time.perf_counter() - start
        callback = AccelerateCallback(accel)
        start = time.perf_counter()
        train(root / f"accelerated-{seed}", config, callbacks=[callback], progress=False)
        accel_seconds = time.perf_counter() - start
        result = outcome(curve(root / f"plain-{seed}"), curve(root / f"accelerated-{seed}"))
        summary = callback.summary()
        rows.append(result | {"seed": seed, "cost": summary["cost_step_equivalents"], "summary": summary,
                              "jumps": callback.jumps})
        jumps = " ".join(f"{j['step']}:{j['method']}+{j['horizon']}{'K' if j['kept'] else 'R'}"
                         for j in callback.jumps if j["method"])
        print(f"seed {seed}: plain final {result['plain']['final_accuracy']:.3f} "
              f"(98 % at step {result['plain']['steps_to_98']}), accelerated final "
              f"{result['accelerated']['final_accuracy']:.3f} (98 % at step {result['accelerated']['steps_to_98']}); "
              f"speedup {result['speedup']} retained {result['retained']:.3f}; "
              f"jumps kept {summary['kept']}/{summary['attempts']} (+{summary['steps_gained']} steps) [{jumps}]; "
              f"cost {summary['cost_step_equivalents']:.1f} step-equivalents "
              f"(mean step {summary['mean_step_seconds']:.2f} s); wall plain {plain_seconds:.0f} s, "
              f"accelerated {accel_seconds:.0f} s", flush=True)
    (root / "acceleration.json").write_text(json.dumps(rows, indent=2, default=str))
    speedups = [r["speedup"] if r["speedup"] is not None else 0.0 for r in rows]
    retained = [r["retained"] for r in rows]
    costs = [r["cost"] for r in rows if r["cost"] is not None]
    print(f"per-seed speedup {speedups} retained {[round(r, 3) for r in retained]}; results in {root}")
    print(f"cost of checks and back-tests: median {statistics.median(costs):.1f} step-equivalents per run "
          f"(steps budget {args.steps})")
    print(f"speedup={statistics.median(speedups):.2f} retained={statistics.median(retained):.3f} seeds={len(rows)}")


if __name__ == "__main__":
    main()

"""How much of an RL step is spent generating rollouts, and what that implies for a method's wall-clock speed-up.

Trains a few steps of a preset (default: smollm2, SmolLM2-135M-Instruct + LoRA, one step per generation batch) and
clocks, per optimizer step, the whole step (a callback's on_step_begin to on_step_end: rollouts, rewards, backward
pass, optimizer step) and inside it TRL's sampling (`GRPOTrainer._generate`, wrapped in this process only) and the
rest of `_generate_and_score_completions` (rewards, advantages, old log-probabilities). The first `--warmup` steps
are left out (allocator and cache warm-up). With generation share g of a plain step (and 1 - g for one optimizer pass
over the batch), a run that reuses each batch for K passes costs g + K (1 - g) per generation batch, so a method that
needs S x fewer generation batches than a run with K_ref passes per batch saves, in wall time,

    wall = S * (g + K_ref (1 - g)) / (g + K (1 - g))

The last line gives g and that figure for the lookahead methods (rlcast.training.lookahead) against the best plain
run (mu 2) at S = 1 (their break-even) and at `--speedup`:

    generation_share=G seconds_per_step=T steps=N preset=P model=M implied_wall_at_S=...

    .venv/bin/python bench/generation_share.py --steps 6
    .venv/bin/python bench/generation_share.py --preset steady --steps 20 --warmup 5
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from common import (Results, add_out, add_preset, fmt, implied_wall, new_parser, quiet_transformers, spreads,
                    train_config)
from rlcast.training.lookahead import LOOKAHEAD
from rlcast.training.train import train

DURATION = "~4 min on 2 CPU cores (smollm2, 6 steps); steady: ~1 min"


class Timer:
    """Seconds spent inside one method of GRPOTrainer, per call, while installed (restored on exit)."""

    def __init__(self, name: str):
        self.name, self.seconds = name, []

    def __enter__(self):
        self.original = getattr(GRPOTrainer, self.name)

        def timed(trainer, *args, **kwargs):
            start = time.perf_counter()
            try:
                return self.original(trainer, *args, **kwargs)
            finally:
                self.seconds.append(time.perf_counter() - start)

        setattr(GRPOTrainer, self.name, timed)
        return self

    def __exit__(self, *exc):
        setattr(GRPOTrainer, self.name, self.original)


class StepClock(TrainerCallback):
    """Wall seconds of every optimizer step."""

    def __init__(self):
        self.seconds, self.started = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.started)


def main() -> None:
    parser = new_parser(__doc__)
    add_preset(parser, default="smollm2")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps to train (one generation batch each)")
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of the figures")
    parser.add_argument("--speedup", type=float, default=1.22,
                        help="a measured speed-up in generation batches to translate to wall time")
    parser.add_argument("--reference-mu", type=int, default=2, help="the best plain run's rollout reuse")
    add_out(parser, "the short run and the result file")
    args = parser.parse_args()
    if args.warmup < 0 or args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} must exceed --warmup {args.warmup} (>= 0)")
    if args.speedup <= 0 or args.reference_mu < 1:
        parser.error(f"--speedup {args.speedup:g} must be > 0 and --reference-mu {args.reference_mu} >= 1")
    torch.set_num_threads(1)
    quiet_transformers()
    results = Results(__file__, args)
    config = dataclasses.replace(train_config(args), steps=args.steps, save_every=args.steps, num_iterations=1,
                                 eval_prompts=8, seed=0)
    clock = StepClock()
    with Timer("_generate") as sampling, Timer("_generate_and_score_completions") as scoring:
        train(results.out / "run", config, callbacks=[clock], progress=True)
    if len(sampling.seconds) != len(clock.seconds):
        raise SystemExit(f"expected one generation per step, got {len(sampling.seconds)} for {len(clock.seconds)}")
    for step, (total, gen, scored) in enumerate(zip(clock.seconds, sampling.seconds, scoring.seconds), 1):
        row = {"step": step, "seconds": total, "sampling": gen, "scoring": scored - gen,
               "share": gen / total, "warmup": step <= args.warmup}
        results.add(row)
        print(f"step {step}: {total:.2f} s, sampling {gen:.2f} s ({gen / total:.0%}), rewards and old log-probs "
              f"{scored - gen:.2f} s{' (warm-up, left out)' if row['warmup'] else ''}")
    rows = [r for r in results.rows if not r["warmup"]]
    share = sum(r["sampling"] for r in rows) / sum(r["seconds"] for r in rows)
    summary = spreads(rows, ("seconds", "share")) | {"generation_share": share}
    passes = {name: cls().num_iterations for name, cls in LOOKAHEAD.items()}
    implied = {name: {"passes": k, "break_even": implied_wall(share, 1.0, k, args.reference_mu),
                      "at_speedup": implied_wall(share, args.speedup, k, args.reference_mu)}
               for name, k in passes.items()}
    summary["implied"] = implied
    for name, figures in implied.items():
        print(f"{name} ({figures['passes']} passes per batch) vs plain mu {args.reference_mu}: wall x"
              f"{figures['break_even']:.2f} at equal generation batches, x{figures['at_speedup']:.2f} at "
              f"{args.speedup:g}x fewer")
    results.finish(summary, f"generation_share={share:.2f} seconds_per_step="
                            f"{fmt(statistics.median(r['seconds'] for r in rows), '.2f')} steps={len(rows)} "
                            f"preset={args.preset} model={config.model} implied_wall_at_S="
                            + ",".join(f"{n}:{f['at_speedup']:.2f}" for n, f in implied.items()))


if __name__ == "__main__":
    main()

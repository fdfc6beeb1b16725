"""Is a preset's RL regime steady? Gains that keep accruing and weight updates that drift, over seeds.

For each seed: `rlcast.training.train.train` on the preset (its checkpoints are scored greedily on the held-out prompts as they
are saved), then sampled avg@k at the training temperature at steps 0, T/5, T/2 and T, and the drift of the 2-D
weights inside the transformer blocks. Per seed and metric (greedy pass@1, sampled avg@k):

    early_share = (acc_T/5 - acc_0) / (acc_T - acc_0)     gain = acc_T - acc_0     late_gain = acc_T - acc_T/2

drift_exponent: per module, the slope of log ||dW_t||_F against log t over the checkpoints, median over modules;
cos: per module, the cosine of the flattened dW_T/5 and dW_T, median over modules (dW_t = W_t - W_0). The declared
metric (--metric, default sampled) fills the last line, medians over seeds; seconds is the median wall time of one
run with its checkpoint evaluations (cpu_seconds its process CPU time, which other jobs on the machine do not inflate;
seconds_per_step the median of TRL's logged step_time). A finished run already in --out is measured, not retrained.
`--model smollm2` runs the smollm2 preset (SmolLM2-135M-Instruct + LoRA, 100 steps, 1 seed, its 64 prompts). One row
per seed goes to OUT/regime.json; the last line:

    early_share=X gain=Y late_gain=Z drift_exponent=A cos=B seconds=S seeds=N preset=NAME

    .venv/bin/python bench/regime.py --preset steady --seeds 3 --steps 300 --prompts 1000
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import torch

from common import (Results, add_out, add_preset, add_seeds, finished, fmt, new_parser, plain_run,
                    progress, quiet_transformers, spreads, train_config)
from rlcast.core.numerics import inner
from rlcast.evaluation.generation import evaluate, load_model
from rlcast.evaluation.speedup import curve
from rlcast.evaluation.tasks import get_task
from rlcast.io.checkpoints import load_run
from rlcast.io.manifest import Manifest
from rlcast.io.reader import RunReader

DURATION = "~5 min per seed on 2 CPU cores (steady, 3 seeds by default); --model smollm2: ~75 min"
METRICS = ("greedy", "sampled")


def drift(run: Path, steps: list[int], early: int) -> tuple[float, float]:
    """(median log-log slope of ||dW_t||_F over `steps`, median cos(dW_early, dW_last)) over the 2-D block weights
    the run changes (LoRA: the adapted modules, dW = s B A, inner products taken on the factors)."""
    reader = RunReader(load_run(run))
    names = reader.selected("blocks", two_d=True)
    logs = [math.log(s) for s in steps]
    mx = sum(logs) / len(logs)

    def slope(ys: list[float]) -> float:
        ly = [math.log(max(y, 1e-30)) for y in ys]
        my = sum(ly) / len(ly)
        return sum((x - mx) * (y - my) for x, y in zip(logs, ly)) / sum((x - mx) ** 2 for x in logs)

    slopes, cos = [], []
    for name in names:
        deltas = {step: reader.delta(step, name) for step in steps}
        norms = [math.sqrt(max(inner(deltas[s], deltas[s]), 0.0)) for s in steps]
        slopes.append(slope(norms))
        a, b = deltas[early], deltas[steps[-1]]
        cos.append(inner(a, b) / max(norms[steps.index(early)] * norms[-1], 1e-30))
    return statistics.median(slopes), statistics.median(cos)


def criteria(acc: dict[int, float], early: int, mid: int, last: int) -> dict:
    gain = acc[last] - acc[0]
    return {"early_share": (acc[early] - acc[0]) / gain if gain else float("nan"), "gain": gain,
            "late_gain": acc[last] - acc[mid], "acc": {str(s): acc[s] for s in (0, early, mid, last)}}


def one_seed(args, seed: int, root: Path) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    config = train_config(args, steps=args.steps, save_every=args.save_every, eval_prompts=args.prompts, seed=seed)
    out = root / f"seed{seed}"
    reused = finished(out)
    run = plain_run(out, config)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    manifest = Manifest.read(run / "run.json")
    if reused:  # measured again, not retrained: its wall time from its manifest (base evaluation excluded)
        stamp = lambda key: time.mktime(time.strptime(getattr(manifest, key), "%Y-%m-%dT%H:%M:%S"))  # noqa: E731
        seconds, cpu_seconds = stamp("finished") - stamp("started"), float("nan")
    steps = [c.step for c in manifest.checkpoints]
    nearest = lambda target: min(steps, key=lambda s: abs(s - target))  # noqa: E731
    early, mid, last = nearest(args.steps / 5), nearest(args.steps / 2), steps[-1]
    greedy = curve(run)
    task = get_task(*manifest.task_spec())
    sampled = {}
    for step in (0, early, mid, last):
        model, tok = load_model(run / manifest.base if step == 0 else run / f"checkpoint-{step}")
        torch.manual_seed(seed)
        # at the training temperature and completion budget: what the policy samples during RL
        sampled[step] = evaluate(model, task, n_prompts=args.prompts, samples=args.samples, greedy=False,
                                 temperature=manifest.config["temperature"], seed=seed, tokenizer=tok,
                                 max_new_tokens=manifest.completion_budget,
                                 progress=False).accuracy
    exponent, cos = drift(run, steps, early)
    history = json.loads((run / f"checkpoint-{last}" / "trainer_state.json").read_text())["log_history"]
    step_times = [h["step_time"] for h in history if "step_time" in h]  # TRL's per-step wall time, logged
    return {"seconds_per_step": statistics.median(step_times) if step_times else float("nan"),
            "seed": seed, "greedy": criteria(greedy, early, mid, last),
            "sampled": criteria(sampled, early, mid, last), "drift_exponent": exponent, "cos": cos,
            "seconds": seconds, "cpu_seconds": cpu_seconds, "steps": [early, mid, last]}


def main() -> None:
    parser = new_parser(__doc__)
    add_preset(parser)
    parser.add_argument("--model", default="testbed", choices=("testbed", "smollm2"),
                        help="testbed: the preset's tiny base; smollm2: the smollm2 preset (SmolLM2-135M-Instruct + "
                             "LoRA on reasoning-gym letter counting, 100 steps, 1 seed by default)")
    add_seeds(parser, None, shown="3; smollm2: 1")
    parser.add_argument("--steps", type=int, help="default: the preset's (steady 300, smollm2 100)")
    parser.add_argument("--save-every", type=int, help="checkpoint (and held-out score) every N steps (default: the "
                                                       "preset's)")
    parser.add_argument("--prompts", type=int, help="held-out prompts of every accuracy (default: the preset's "
                                                    "eval_prompts, steady 1000, smollm2 64)")
    parser.add_argument("--samples", type=int, default=4, help="k of sampled avg@k")
    parser.add_argument("--metric", default="sampled", choices=METRICS, help="the declared accuracy metric")
    add_out(parser)
    args = parser.parse_args()
    if args.model == "smollm2":
        args.preset = "smollm2"
    chosen = train_config(args)
    args.seeds = args.seeds or ([0] if args.model == "smollm2" else [0, 1, 2])
    args.steps = args.steps or chosen.steps
    args.prompts = args.prompts or chosen.eval_prompts
    args.save_every = args.save_every or chosen.save_every
    torch.set_num_threads(1)  # tiny models: one thread is faster and gives the same numbers run to run
    quiet_transformers()
    results = Results(__file__, args)
    with progress() as bar:
        job = bar.add_task(f"{args.preset}: seeds", total=len(args.seeds))
        for seed in args.seeds:
            r = one_seed(args, seed, results.out)
            results.add(r)
            for metric in METRICS:
                c = r[metric]
                bar.console.print(f"seed {seed} {metric:7s} acc {' -> '.join(f'{v:.3f}' for v in c['acc'].values())}"
                                  f" (steps 0, {', '.join(map(str, r['steps']))}): early_share={c['early_share']:.2f}"
                                  f" gain={c['gain']:+.3f} late_gain={c['late_gain']:+.3f}")
            bar.console.print(f"seed {seed} drift_exponent={r['drift_exponent']:.2f} cos={r['cos']:.2f} "
                              f"seconds={r['seconds']:.0f} cpu_seconds={r['cpu_seconds']:.0f} "
                              f"seconds_per_step={r['seconds_per_step']:.2f}")
            bar.advance(job)
    rows = results.rows
    summary = {metric: spreads([r[metric] for r in rows], ("early_share", "gain", "late_gain")) for metric in METRICS}
    summary |= spreads(rows, ("drift_exponent", "cos", "seconds", "cpu_seconds", "seconds_per_step"))
    med = lambda key, metric=None: (summary[metric] if metric else summary)[key]["median"]  # noqa: E731
    for metric in METRICS:
        gain = summary[metric]["gain"]
        print(f"{metric}: early_share={fmt(med('early_share', metric), '.2f')} gain={fmt(med('gain', metric))} "
              f"late_gain={fmt(med('late_gain', metric))} (medians over {len(rows)} seeds; gain {fmt(gain['min'])}.."
              f"{fmt(gain['max'])})")
    print(f"runs in {results.out}; cpu_seconds={fmt(med('cpu_seconds'), '.0f')}")
    results.finish(summary, f"early_share={fmt(med('early_share', args.metric), '.2f')} "
                            f"gain={fmt(med('gain', args.metric))} late_gain={fmt(med('late_gain', args.metric))} "
                            f"drift_exponent={fmt(med('drift_exponent'), '.2f')} cos={fmt(med('cos'), '.2f')} "
                            f"seconds={fmt(med('seconds'), '.0f')} seeds={len(rows)} preset={args.preset}")

if __name__ == "__main__":
    main()

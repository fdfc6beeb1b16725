"""Is a preset's RL regime steady? Gains that keep accruing and weight updates that drift, over seeds.

For each seed: `rlcast.training.runs.train` on the preset (its checkpoints are scored greedily on the held-out prompts as they
are saved), then sampled avg@k at the training temperature at steps 0, T/5, T/2 and T, and the drift of the 2-D
weights inside the transformer blocks. Per seed and metric (greedy pass@1, sampled avg@k):

    early_share = (acc_T/5 - acc_0) / (acc_T - acc_0)     gain = acc_T - acc_0     late_gain = acc_T - acc_T/2

drift_exponent: per module, the slope of log ||dW_t||_F against log t over the checkpoints, median over modules;
cos: per module, the cosine of the flattened dW_T/5 and dW_T, median over modules (dW_t = W_t - W_0). The declared
metric (--metric, default sampled) fills the last line, medians over seeds; seconds is the median wall time of one
run with its checkpoint evaluations (cpu_seconds its process CPU time, which other jobs on the machine do not inflate):

    early_share=X gain=Y late_gain=Z drift_exponent=A cos=B seconds=S seeds=N preset=NAME

    .venv/bin/python bench/regime.py --preset steady --seeds 3 --steps 300 --prompts 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

METRICS = ("greedy", "sampled")


def drift(run: Path, base: Path, steps: list[int], early: int) -> tuple[float, float]:
    """(median log-log slope of ||dW_t||_F over `steps`, median cos(dW_early, dW_last)) over 2-D block weights."""
    import torch
    from safetensors.torch import load_file

    w0 = load_file(base / "model.safetensors")
    names = [k for k in w0 if k.startswith("model.layers.") and w0[k].ndim == 2]
    norms = {k: [] for k in names}
    deltas = {}
    for step in steps:
        w = load_file(run / f"checkpoint-{step}" / "model.safetensors")
        for k in names:
            d = w[k].double() - w0[k].double()
            norms[k].append(float(d.norm()))
            if step in (early, steps[-1]):
                deltas[(k, step)] = d.flatten()
    logs = [math.log(s) for s in steps]
    mx = sum(logs) / len(logs)

    def slope(ys: list[float]) -> float:
        ly = [math.log(max(y, 1e-30)) for y in ys]
        my = sum(ly) / len(ly)
        return sum((x - mx) * (y - my) for x, y in zip(logs, ly)) / sum((x - mx) ** 2 for x in logs)

    cos = [float(torch.nn.functional.cosine_similarity(deltas[(k, early)], deltas[(k, steps[-1])], dim=0))
           for k in names]
    return statistics.median(slope(norms[k]) for k in names), statistics.median(cos)


def criteria(acc: dict[int, float], early: int, mid: int, last: int) -> dict:
    gain = acc[last] - acc[0]
    return {"early_share": (acc[early] - acc[0]) / gain if gain else float("nan"), "gain": gain,
            "late_gain": acc[last] - acc[mid], "acc": {str(s): acc[s] for s in (0, early, mid, last)}}


def one_seed(args, seed: int, root: Path) -> dict:
    import torch

    from rlcast.evaluation.generation import evaluate, load_model
    from rlcast.evaluation.tasks import get_task
    from rlcast.training.runs import preset, train

    start, cpu = time.perf_counter(), time.process_time()
    config = dataclasses.replace(preset(args.preset), steps=args.steps, eval_prompts=args.prompts, seed=seed)
    run = train(root / f"seed{seed}", config, progress=False)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    manifest = json.loads((run / "run.json").read_text())
    steps = [c["step"] for c in manifest["checkpoints"]]
    nearest = lambda target: min(steps, key=lambda s: abs(s - target))  # noqa: E731
    early, mid, last = nearest(args.steps / 5), nearest(args.steps / 2), steps[-1]
    greedy = {0: manifest["base_accuracy"], **{c["step"]: c["accuracy"] for c in manifest["checkpoints"]}}
    task = get_task(manifest["task"], manifest["task_args"])
    sampled = {}
    for step in (0, early, mid, last):
        model, tok = load_model(manifest["base"] if step == 0 else run / f"checkpoint-{step}")
        torch.manual_seed(seed)
        sampled[step] = evaluate(model, task, n_prompts=args.prompts, samples=args.samples, greedy=False,
                                 temperature=manifest["config"]["temperature"], seed=seed, tokenizer=tok,
                                 progress=False).accuracy
    exponent, cos = drift(run, Path(manifest["base"]), steps, early)
    return {"seed": seed, "greedy": criteria(greedy, early, mid, last),
            "sampled": criteria(sampled, early, mid, last), "drift_exponent": exponent, "cos": cos,
            "seconds": seconds, "cpu_seconds": cpu_seconds, "steps": [early, mid, last]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="steady")
    parser.add_argument("--model", default="testbed", choices=("testbed", "smollm2"),
                        help="testbed: the preset's tiny base; smollm2: SmolLM2-135M + LoRA (planned)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--prompts", type=int, default=1000, help="held-out prompts of every accuracy")
    parser.add_argument("--samples", type=int, default=4, help="k of sampled avg@k")
    parser.add_argument("--metric", default="sampled", choices=METRICS, help="the declared accuracy metric")
    parser.add_argument("--out", help="keep the runs and results.json here (default: a temporary folder)")
    args = parser.parse_args()
    if args.model == "smollm2":
        # hook: a preset whose base is SmolLM2-135M-Instruct trained with LoRA on a reasoning-gym task goes here
        raise SystemExit("--model smollm2 is not implemented yet (planned: SmolLM2-135M + LoRA on reasoning-gym)")

    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)  # tiny models: one thread is faster and gives the same numbers run to run
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rlcast-bench-regime-"))
    root.mkdir(parents=True, exist_ok=True)
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        job = bar.add_task(f"{args.preset}: seeds", total=args.seeds)
        for seed in range(args.seeds):
            r = one_seed(args, seed, root)
            results.append(r)
            for metric in METRICS:
                c = r[metric]
                bar.console.print(f"seed {seed} {metric:7s} acc {' -> '.join(f'{v:.3f}' for v in c['acc'].values())}"
                                  f" (steps 0, {', '.join(map(str, r['steps']))}): early_share={c['early_share']:.2f}"
                                  f" gain={c['gain']:+.3f} late_gain={c['late_gain']:+.3f}", highlight=False)
            bar.console.print(f"seed {seed} drift_exponent={r['drift_exponent']:.2f} cos={r['cos']:.2f} "
                              f"seconds={r['seconds']:.0f} cpu_seconds={r['cpu_seconds']:.0f}", highlight=False)
            bar.update(job, advance=1)
    (root / "results.json").write_text(json.dumps({"args": vars(args), "seeds": results}, indent=2) + "\n")
    med = lambda key, metric=None: statistics.median(r[metric][key] if metric else r[key] for r in results)  # noqa
    for metric in METRICS:
        print(f"{metric}: early_share={med('early_share', metric):.2f} gain={med('gain', metric):.3f} "
              f"late_gain={med('late_gain', metric):.3f} (medians over {len(results)} seeds)")
    print(f"runs in {root}; cpu_seconds={med('cpu_seconds'):.0f}")
    print(f"early_share={med('early_share', args.metric):.2f} gain={med('gain', args.metric):.3f} "
          f"late_gain={med('late_gain', args.metric):.3f} drift_exponent={med('drift_exponent'):.2f} "
          f"cos={med('cos'):.2f} seconds={med('seconds'):.0f} seeds={len(results)} preset={args.preset}")


if __name__ == "__main__":
    main()

"""Do jumps buy the accuracy of the steps they skip? Extrapolation along plain runs, scored against the real future.

On finished plain runs (e.g. bench/acceleration.py's `plain-SEED` folders: checkpoints every 10 steps, held-out
accuracy recorded at each), at every `--every`-th step t: the callback's recipe offline. A window of `--window`
checkpoints ending at t (`--window 0`: every checkpoint from the base model on) is the run, its first the anchor (`load_run(base=..., checkpoints=...)`, as
`rlcast.training.accelerate` does); each method is back-tested (fit without the last, predict it) and then fitted on
the whole window to predict t + H. Against the real checkpoint at t + H:

    backtest_error  ||P_last - W_last|| / ||W_last - W_prev||        (what the callback sees; < 1 beats standing still)
    realised_error  ||P_t+H - W_t+H|| / ||W_t+H - W_t||              (what the jump really did, same scale;
                                                                       NaN at H = 0: a denoised point, no move)
    bought          (acc(P_t+H) - acc(W_t)) / (acc(W_t+H) - acc(W_t))   summed over t (ratio of sums: a noisy
                    denominator per t would explode): the share of the skipped steps' accuracy gain the jump buys

accuracies on the same held-out prompts the run's manifest used (greedy, test split, its eval_prompts, seed 0).
One row per jump goes to OUT/jump_quality.json; a line per method and horizon, the last one's:
`method=M H=N backtest=X realised=Y bought=Z gain_jump=A gain_real=B points=K`.

    .venv/bin/python bench/jump_quality.py RUN [RUN ...] --horizons 10,30 --methods weight-linear,drift
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import torch

from common import Results, add_out, new_parser, progress, quiet_transformers
from rlcast.evaluation.generation import evaluate, load_model
from rlcast.evaluation.speedup import curve
from rlcast.evaluation.tasks import get_task
from rlcast.extrapolation import make_extrapolator
from rlcast.io.checkpoints import load_run
from rlcast.io.manifest import Manifest
from rlcast.io.options import parse_overrides
from rlcast.io.tensors import TensorReader
from rlcast.io.writer import write_model

DURATION = "~15 min per run on 2 CPU cores (steady: a checkpoint every 10 steps, 3 methods, 2 horizons)"


def folder(run: Path, step: int) -> Path:
    """The weights of `run` at `step` (0: its base model)."""
    return run / Manifest.read(run / "run.json").base if step == 0 else run / f"checkpoint-{step}"


def window_run(run: Path, steps: list[int]):
    """The checkpoints at `steps` as a run whose base is the first (steps counted from it), as the callback sees."""
    return load_run(base=folder(run, steps[0]), checkpoints={s - steps[0]: folder(run, s) for s in steps[1:]})


def relative_error(stream, actual: TensorReader, before: TensorReader, tee: list | None = None) -> float:
    """||P - A|| / ||A - B|| over the tensors that move; the stream's items are appended to `tee` when given."""
    num = den = 0.0
    for name, pred in stream:
        a, b = actual.get(name, torch.float32), before.get(name, torch.float32)
        num += float((pred.float() - a).double().pow(2).sum())
        den += float((a - b).double().pow(2).sum())
        if tee is not None:
            tee.append((name, pred))
    return math.sqrt(num / den) if den > 0 else float("nan")


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("runs", nargs="+", help="finished plain run folders")
    parser.add_argument("--methods", default="weight-linear,drift,relex", help="comma-separated; a method's "
                        "parameters after a colon, separated by '+': drift:origin=fit+damping=0.5")
    parser.add_argument("--horizons", default="10,30")
    parser.add_argument("--window", type=int, default=6, help="checkpoints per window, the anchor included; 0: the "
                                                                  "whole run so far, anchored at the base model")
    parser.add_argument("--every", type=int, default=30, help="steps between jump points")
    add_out(parser, "the last prediction and the result file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet_transformers()
    methods, horizons = args.methods.split(","), [int(h) for h in args.horizons.split(",")]
    results = Results(__file__, args)
    plan = []
    for run in map(Path, args.runs):
        manifest = Manifest.read(run / "run.json")
        acc = curve(run)
        steps = sorted(acc)
        for i, t in enumerate(steps):
            if i + 1 < max(args.window, 3) or t % args.every:
                continue
            window = steps[:i + 1] if args.window == 0 else steps[i + 1 - args.window:i + 1]
            plan += [(run, manifest, acc, window, h, m)
                     for h in horizons if t + h in acc for m in methods]
    tasks: dict[str, object] = {}
    with progress() as bar:
        job = bar.add_task("jumps", total=len(plan))
        for run, manifest, acc, window, h, method in plan:
            t = window[-1]
            key = json.dumps(manifest.task_spec())
            task = tasks.setdefault(key, get_task(*manifest.task_spec()))
            name, _, spec = method.partition(":")  # METHOD[:key=value,...]
            params = parse_overrides(None, spec.split("+") if spec else [], None, "--methods")
            ex = make_extrapolator(name, selection="all", **params).fit(window_run(run, window[:-1]))
            backtest = relative_error(ex.predict(window[-1] - window[0]), TensorReader(run / f"checkpoint-{t}"),
                                      TensorReader(folder(run, window[-2])))
            ex = make_extrapolator(name, selection="all", **params).fit(window_run(run, window))
            predicted: list = []
            realised = relative_error(ex.predict(t + h - window[0]), TensorReader(run / f"checkpoint-{t + h}"),
                                      TensorReader(run / f"checkpoint-{t}"), tee=predicted)
            written = write_model(run / f"checkpoint-{t}", results.out / "prediction", predicted)
            model, tok = load_model(written)
            accuracy = evaluate(model, task, n_prompts=manifest.config["eval_prompts"], tokenizer=tok,
                                progress=False).accuracy
            results.add({"run": str(run), "t": t, "H": h, "method": method, "backtest_error": backtest,
                         "realised_error": realised, "acc_t": acc[t], "acc_real": acc[t + h], "acc_jump": accuracy})
            bar.console.print(f"{run.name} t={t} H={h} {method:13s} backtest {backtest:.2f} realised {realised:.2f} "
                              f"acc W_t {acc[t]:.3f} W_t+H {acc[t + h]:.3f} P {accuracy:.3f}")
            bar.advance(job)
    summary, lines = {}, []
    for method in methods:
        for h in horizons:
            sel = [r for r in results.rows if r["method"] == method and r["H"] == h]
            if not sel:
                continue
            gain_jump = sum(r["acc_jump"] - r["acc_t"] for r in sel) / len(sel)
            gain_real = sum(r["acc_real"] - r["acc_t"] for r in sel) / len(sel)
            entry = {"backtest": statistics.median(r["backtest_error"] for r in sel),
                     "realised": statistics.median(r["realised_error"] for r in sel),
                     "bought": gain_jump / gain_real if gain_real else float("nan"), "gain_jump": gain_jump,
                     "gain_real": gain_real, "points": len(sel)}
            summary[f"{method} H={h}"] = entry
            lines.append(f"method={method} H={h} backtest={entry['backtest']:.2f} realised={entry['realised']:.2f} "
                         f"bought={entry['bought']:.2f} gain_jump={gain_jump:+.4f} gain_real={gain_real:+.4f} "
                         f"points={len(sel)}")
    for line in lines[:-1]:
        print(line)
    results.finish(summary, lines[-1] if lines else "no jump point: the runs are shorter than a window plus a horizon")


if __name__ == "__main__":
    main()

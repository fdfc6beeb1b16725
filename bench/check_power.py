"""Can the live callback's check tell a good jump from a bad one? False-keep and false-rollback rates, measured.

A "jump" is any move between two checkpoints of a finished run (from W_t to W_t', t' - t within --max-gap steps,
forwards or backwards). Its true effect is the difference in greedy accuracy on the run's held-out test prompts (1000
for the steady preset); it counts as of known sign when that difference is at least --margin away from 0. The check
sees only what `AccelerateCallback` sees: the paired per-prompt greedy reward on its train-split check prompts, and
keeps a jump when the mean paired difference is >= -tolerance. For each check size:

    false_keep      share of known-bad jumps (truth <= -margin) the check keeps
    false_rollback  share of known-good jumps (truth >= +margin) it rolls back
    se              median standard error of the paired difference (compare with the tolerance)

Every checkpoint is scored once per prompt set; pairs are formed offline. One row per check size goes to
OUT/check_power.json; the last line is the largest check size's.

    .venv/bin/python bench/check_power.py RUN --sizes 64,256,512
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from common import Results, add_out, new_parser, progress
from rlcast.evaluation.generation import evaluate, load_model
from rlcast.evaluation.tasks import get_task
from rlcast.io.manifest import Manifest
from rlcast.training.accelerate import AccelerateConfig, CheckSet

DURATION = "~10 min per run on 2 CPU cores (steady: 31 checkpoints, 1000 test and 512 check prompts each)"


def per_prompt(path: Path, task, n: int, split: str) -> torch.Tensor:
    model, tok = load_model(path)
    result = evaluate(model, task, n_prompts=n, tokenizer=tok, split=split, progress=False, backend="transformers")
    return torch.tensor([row["reward"] for row in result.details], dtype=torch.float64)


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("run", type=Path, help="a finished run folder (run.json + checkpoint-N)")
    parser.add_argument("--sizes", default="64,256,512", help="check sizes (prompts) to measure")
    parser.add_argument("--tolerance", type=float, default=AccelerateConfig.tolerance)
    parser.add_argument("--margin", type=float, default=0.03, help="|true effect| that makes a jump's sign known")
    parser.add_argument("--max-gap", type=int, default=60, help="largest jump, in steps")
    add_out(parser, "the result file")
    args = parser.parse_args()

    torch.set_num_threads(1)
    results = Results(__file__, args)
    run = args.run
    manifest = Manifest.read(run / "run.json")
    task = get_task(*manifest.task_spec())
    sizes = [int(x) for x in args.sizes.split(",")]
    check = CheckSet(task, max(sizes))
    steps = [0] + [c.step for c in manifest.checkpoints]
    folders = {s: run / manifest.base if s == 0 else run / f"checkpoint-{s}" for s in steps}
    test, checked = {}, {}
    with progress() as bar:
        job = bar.add_task("scoring checkpoints", total=len(steps))
        for s in steps:
            test[s] = per_prompt(folders[s], task, manifest.config["eval_prompts"], "test").mean()
            checked[s] = per_prompt(folders[s], check, max(sizes), "train")
            bar.advance(job)
    pairs = [(a, b) for a in steps for b in steps if a != b and abs(a - b) <= args.max_gap]
    good = [(a, b) for a, b in pairs if test[b] - test[a] >= args.margin]
    bad = [(a, b) for a, b in pairs if test[b] - test[a] <= -args.margin]
    print(f"{run}: {len(steps)} checkpoints, {len(pairs)} jumps of at most {args.max_gap} steps, {len(good)} known "
          f"good and {len(bad)} known bad (|test accuracy difference| >= {args.margin} on "
          f"{manifest.config['eval_prompts']} prompts), tolerance {args.tolerance}")
    lines = []
    for n in sizes:
        diff = {(a, b): checked[b][:n] - checked[a][:n] for a, b in pairs}
        keep = {p: float(d.mean()) >= -args.tolerance for p, d in diff.items()}
        se = statistics.median(float(d.std() / n ** 0.5) for d in diff.values())
        false_keep = sum(keep[p] for p in bad) / len(bad) if bad else float("nan")
        false_rollback = sum(not keep[p] for p in good) / len(good) if good else float("nan")
        results.add({"check_prompts": n, "false_keep": false_keep, "false_rollback": false_rollback, "se": se,
                     "known_good": len(good), "known_bad": len(bad), "jumps": len(pairs)})
        lines.append(f"check_prompts={n} false_keep={false_keep:.3f} false_rollback={false_rollback:.3f} se={se:.4f}")
    for line in lines[:-1]:
        print(line)
    summary = {"checkpoints": len(steps), "jumps": len(pairs), "known_good": len(good), "known_bad": len(bad),
               "test_accuracy": {str(s): float(a) for s, a in test.items()}}
    results.finish(summary, lines[-1])


if __name__ == "__main__":
    main()

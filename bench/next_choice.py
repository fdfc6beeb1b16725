"""How long NExt's choice of c takes on a run, at the task's completion budget and at the run's, side by side.

NExt (`rlcast.extrapolation.next`) picks its predict-extend scale c in `fit` by scoring each candidate of `c_grid` on
`n_val` train prompts; compare and `rlcast continue` pass the run's training completion length (`max_new_tokens`).
For each cutoff this fits NExt twice on the same window, for the run's last step: once at the task's own budget (256
tokens for reasoning-gym) and once at the run's, and prints the seconds of each fit, the chosen c and the candidates'
scores. One row per fit goes to OUT/next_choice.json; the last line (sums over cutoffs):

    seconds_task_budget=X seconds_run_budget=Y speedup=Z same_c=K/N
    seconds_run_budget=X seconds_per_cutoff=Y threads=T          (--budgets run: one fit per cutoff)

    .venv/bin/python bench/next_choice.py RUN --cutoffs 0.2,0.4
"""

from __future__ import annotations

import time

import torch

from common import Results, add_out, new_parser, quiet_transformers
from rlcast.apps.compare import cutoff_steps
from rlcast.extrapolation import make_extrapolator
from rlcast.io.checkpoints import load_run

DURATION = "~25 min per cutoff on 2 CPU cores (the smollm2 run, both budgets; the run's budget alone: ~2-4 min)"


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("run", help="an rlcast run folder (run.json names its task and completion budget)")
    parser.add_argument("--cutoffs", default="0.2,0.4", help="fractions of the last step")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: all "
                                                                                   "cores, as rlcast compare)")
    parser.add_argument("--budgets", default="task,run", help="which fits: task (the task's completion budget), "
                                                              "run (the run's), or both")
    add_out(parser, "the result file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_transformers()
    results = Results(__file__, args)
    run = load_run(args.run)
    task, task_args = run.manifest.task_spec()
    budget = run.manifest.completion_budget
    target = run.steps[-1]
    budgets = [(label, tokens) for label, tokens in (("task", None), ("run", budget))
               if label in args.budgets.split(",")]
    totals, same = {label: 0.0 for label, _ in budgets}, 0
    cutoffs = cutoff_steps(run, [float(x) for x in args.cutoffs.split(",")], target)
    for cutoff in cutoffs:
        chosen = {}
        for label, tokens in budgets:
            start = time.perf_counter()
            ex = make_extrapolator("next", task=task, task_args=task_args,
                                   target_step=target, max_new_tokens=tokens).fit(run.window(cutoff))
            seconds = time.perf_counter() - start
            totals[label] += seconds
            chosen[label] = ex.c_
            results.add({"cutoff": cutoff, "budget": label, "tokens": tokens, "seconds": seconds, "c": ex.c_,
                         "scores": {str(c): a for c, a in ex.c_scores_.items()}})
            scores = " ".join(f"{c}:{a:.3f}" for c, a in ex.c_scores_.items())
            print(f"cutoff {cutoff}: {label} budget ({tokens or 'task default'} tokens) {seconds:.0f} s, c={ex.c_} "
                  f"[{scores}]", flush=True)
        same += len(set(chosen.values())) == 1
    summary = {"seconds": totals, "same_c": same, "cutoffs": len(cutoffs), "threads": args.threads}
    if len(budgets) == 2:
        line = (f"seconds_task_budget={totals['task']:.0f} seconds_run_budget={totals['run']:.0f} "
                f"speedup={totals['task'] / totals['run']:.2f} same_c={same}/{len(cutoffs)}")
    else:
        label = budgets[0][0]
        line = (f"seconds_{label}_budget={totals[label]:.0f} seconds_per_cutoff={totals[label] / len(cutoffs):.0f} "
                f"threads={args.threads}")
    results.finish(summary, line)


if __name__ == "__main__":
    main()

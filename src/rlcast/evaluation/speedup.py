"""Speed-up accounting: what two runs' held-out accuracy curves say about speed (steps to a goal, speedup, retained
accuracy); the one accounting of the demo and the benchmarks. Curve fitting is `rlcast.forecasting`'s.

A curve is `{step: accuracy}` with step 0 the base, as a run's run.json records it (greedy, test split, the same
prompts at every checkpoint). The goal is `GOAL` (98 %) of the reference run's final accuracy; a run reaches it at the
first evaluated step whose accuracy is at least the goal, and only counts as having reached it when it also ends at or
above it: a noisy early crossing followed by a collapse is no speed-up. `rlcast demo`, `rlcast continue` and the
benchmarks (bench/common.goal_metrics, bench/baselines.py, bench/acceleration.py) all count speed with `outcome`.
"""

from __future__ import annotations

from pathlib import Path

from rlcast.errors import RlcastError
from rlcast.io.manifest import Manifest

GOAL = 0.98  # fraction of the reference run's final held-out accuracy that counts as "reached"
COSTS = ("generation_batches", "completions")  # the axes a run's cost is counted on (run.json, per checkpoint)


def curve(run_dir: str | Path) -> dict[int, float]:
    """{0: base accuracy, step: accuracy, ...} from a run's manifest (run.json, read with its schema check)."""
    return Manifest.read(Path(run_dir) / "run.json").accuracy


def steps_to(accuracy: dict[int, float], target: float) -> int | None:
    """First evaluated step whose held-out accuracy reaches `target` (None: never within the run)."""
    return next((step for step in sorted(accuracy) if accuracy[step] >= target), None)


def outcome(plain: dict[int, float], accelerated: dict[int, float], goal: float = GOAL) -> dict:
    """Steps to `goal` x plain's final accuracy for both runs, the speedup and the retained accuracy.

    The accelerated run reaches the goal at its first crossing only if it ends at or above the goal (`held`);
    otherwise its `steps_to_98` is None and `crossed` keeps the step of the crossing that did not last.
    speedup = plain's steps / accelerated's steps to the goal (None when either never reaches it);
    retained = accelerated's final accuracy / plain's."""
    last = max(plain)
    target = goal * plain[last]
    n_plain, crossed = steps_to(plain, target), steps_to(accelerated, target)
    final_acc = accelerated[max(accelerated)]
    held = final_acc >= target
    n_acc = crossed if held else None
    return {"target": target, "plain": {"final_accuracy": plain[last], "steps": last, "steps_to_98": n_plain},
            "accelerated": {"final_accuracy": final_acc, "steps": max(accelerated), "steps_to_98": n_acc,
                            "crossed": crossed, "held": held},
            "speedup": (n_plain / n_acc) if n_plain and n_acc else None,
            "retained": final_acc / plain[last] if plain[last] else None}


def batch_curve(run_dir: str | Path, cost: str = "generation_batches") -> dict[int, float]:
    """{0: base accuracy, generation batches: accuracy, ...}: the curve on the rollouts-paid-for axis (run.json's
    `generation_batches` per checkpoint), for runs that reuse a batch for several optimizer steps; `cost`
    "completions" puts it on the completions-generated axis instead, for rollout methods that generate more or fewer
    completions per batch."""
    if cost not in COSTS:
        raise RlcastError(f"cost {cost!r}: one of {', '.join(COSTS)}")
    manifest = Manifest.read(Path(run_dir) / "run.json")
    missing = [e.step for e in manifest.checkpoints if e.accuracy is not None and getattr(e, cost) is None]
    if missing:
        raise RlcastError(f"{run_dir}/run.json: checkpoint {missing[0]} records no {cost} (an RL run of rlcast train "
                          f"records it)")
    acc = {0: manifest.base_accuracy} if manifest.base_accuracy is not None else {}
    return acc | {getattr(e, cost): e.accuracy for e in manifest.checkpoints if e.accuracy is not None}

"""Scoring a run's models on the same prompts: base, checkpoints and derived models, with per-prompt results.

Per-prompt results let callers compute paired intervals (`rlcast.evaluation.intervals`) between models.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rlcast.errors import RlcastError
from rlcast.evaluation.generation import TOKENIZER_FILES, evaluate
from rlcast.evaluation.tasks import Task, get_task, run_task_spec
from rlcast.io.checkpoints import Run
from rlcast.io.outputs import scratch_dir
from rlcast.io.reader import RunReader
from rlcast.io.writer import write_model


@dataclass
class Score:
    label: str                 # "base", "full" or "rank-k"
    k: int | None
    accuracy: float
    ci_low: float
    ci_high: float
    per_prompt: list[float]    # fraction of fully correct samples per prompt, in prompt order


def score(path: Path, task: Task, label: str, k: int | None, n_prompts: int, seed: int, progress: bool) -> Score:
    """Evaluate one model folder and keep the per-prompt results (for paired intervals)."""
    result = evaluate(path, task, n_prompts=n_prompts, seed=seed, progress=progress)
    per_prompt: dict[int, list[float]] = {}
    for row in result.details:
        per_prompt.setdefault(row["index"], []).append(float(row["reward"] >= 1.0))
    return Score(label, k, result.accuracy, result.ci_low, result.ci_high,
                 [sum(v) / len(v) for _, v in sorted(per_prompt.items())])


def run_task(run: Run, task: Task | str | None = None, task_args: dict | None = None) -> Task:
    """The Task to score with: a Task as given, else the run's task and arguments unless told otherwise
    (`tasks.run_task_spec`)."""
    if isinstance(task, Task):
        return task
    spec, args = run_task_spec(run.manifest, task, task_args)
    if spec is None:
        raise RlcastError(f"{run.root or run.base}: no task in the run manifest (run.json); pass --task")
    return get_task(spec, args)


def checkpoint_folder(run: Run, step: int, workdir: Path) -> Path:
    """A loadable HF folder for checkpoint `step`: the checkpoint itself when it is one, else a merged copy."""
    ckpt = run.checkpoint(step)
    if ckpt.kind == "full" and (ckpt.path / "config.json").exists() and any(
            (ckpt.path / f).exists() for f in TOKENIZER_FILES):
        return ckpt.path
    reader = RunReader(run)
    out = Path(workdir) / f"checkpoint-{step}"
    return write_model(run.base, out, ((n, reader.weight(step, n)) for n in reader.names()),
                       metadata={"rlcast": {"method": "merged", "step": step}})


def scored_checkpoints(run: Run, task: Task, steps=None, base: bool = True, n_prompts: int = 200, seed: int = 0,
                       progress: bool = True) -> Iterator[tuple[int, Score]]:
    """(0, the base's Score) when `base`, then (step, Score) of each checkpoint in `steps` (default: all), one at a
    time and on the same prompts: greedy, test split, as `rlcast train` scores its checkpoints. A caller that records
    each score as it comes (`rlcast eval RUN`) resumes where an interruption stopped it."""
    with scratch_dir("scores") as tmp:
        if base:
            yield 0, score(run.base, task, "base", None, n_prompts, seed, progress)
        for step in run.steps if steps is None else steps:
            folder = checkpoint_folder(run, step, tmp)
            result = score(folder, task, "full", None, n_prompts, seed, progress)
            if folder.parent == tmp:  # a merged copy: only one on disk at a time
                shutil.rmtree(folder)
            yield step, result


def checkpoint_accuracies(run: Run, task: Task, n_prompts: int = 200, seed: int = 0,
                          progress: bool = True) -> dict[int, float]:
    """{0: base accuracy, step: accuracy, ...} of every checkpoint of `run` on `task` (same prompts for all)."""
    return {step: s.accuracy for step, s in scored_checkpoints(run, task, n_prompts=n_prompts, seed=seed,
                                                                progress=progress)}

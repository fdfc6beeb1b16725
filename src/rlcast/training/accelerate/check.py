"""The check of a jump: greedy reward on a fixed sample of train prompts, before and after, and the verdict."""

from __future__ import annotations

import math

import torch

from rlcast.errors import RlcastError
from rlcast.evaluation.generation import evaluate
from rlcast.training.support import preserved_rng


class CheckSet:
    """`n` prompts of the task's train split (a fixed seeded sample): the check scores the policy on the prompts RL
    optimises, and leaves the test split, where users report accuracy, untouched by any keep/rollback decision."""

    def __init__(self, task, n: int, seed: int = 12345):
        pool = task.examples("train", None, seed=seed)
        if len(pool) < n:
            raise RlcastError(f"task {task.name}: train split has {len(pool)} prompts, the check needs {n} "
                              f"(lower eval_prompts)")
        self.name, self.max_new_tokens, self.task = f"{task.name}[check]", task.max_new_tokens, task
        self.pool = pool[:n]

    def examples(self, split: str, n: int | None, seed: int = 0):
        return self.pool[:n]

    def score(self, completion: str, example) -> float:
        return self.task.score(completion, example)


def rewards(model, tokenizer, check: CheckSet, batch_size: int) -> torch.Tensor:
    """Greedy reward of every check prompt, in prompt order (paired before/after the jump)."""
    with preserved_rng():  # a rolled-back jump must leave the run's rollouts exactly as they were
        result = evaluate(model, check, n_prompts=len(check.pool), greedy=True, seed=0, tokenizer=tokenizer,
                          batch_size=batch_size, progress=False, backend="transformers")
    return torch.tensor([row["reward"] for row in result.details], dtype=torch.float64)


def paired_se(before: torch.Tensor, after: torch.Tensor) -> float | None:
    """Standard error of the mean per-prompt difference (same prompts: the prompt-to-prompt spread cancels)."""
    diff = after - before
    return float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else None


def verdict(before: float, after: float, tolerance: float, collapse: float) -> str | None:
    """Why the jump from mean reward `before` to `after` is rolled back (a drop beyond `tolerance`, or a relative
    drop beyond `collapse`); None: keep it."""
    if after < before - tolerance:
        return f"check reward (train prompts) dropped by {before - after:.4f} > tolerance {tolerance}"
    if before > 0 and after < (1 - collapse) * before:
        return f"check reward (train prompts) collapsed ({before:.4f} -> {after:.4f})"
    return None

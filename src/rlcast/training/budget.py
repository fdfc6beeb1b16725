"""What a run pays: a budget of generation batches, and the training seconds spent on it.

Rollouts are the cost of RL, so runs that reuse a generation batch for several optimizer steps (TRL's
`num_iterations`, the lookahead methods) are compared on the generation-batch axis: `BatchBudget` checkpoints every N
batches and stops after a budget of them, whatever the steps per batch (SFPO's and GXPO's gates change it mid-run).
`TrainingClock` sums the wall and CPU seconds of the optimizer steps (rollouts, backward passes, repositions), not the
held-out scoring at checkpoints, so two runs scored equally often compare by what their training cost.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback

from rlcast.io.atomic import write_json_atomic


class BatchBudget(TrainerCallback):
    """Checkpoint every `every` generation batches and stop after `budget`, counted by a lookahead `method` (put it
    after the method in the callback list: the method counts the batch first)."""

    def __init__(self, method, every: int, budget: int):
        self.method, self.every, self.budget = method, every, budget

    def on_step_end(self, args, state, control, **kwargs):
        if not self.method.batch_done:
            return
        if self.method.batches_ % self.every == 0 or self.method.batches_ >= self.budget:
            control.should_save = True
        if self.method.batches_ >= self.budget:
            control.should_training_stop = True


class TrainingClock(TrainerCallback):
    """Training seconds [wall, CPU] so far (`total`), summed between each optimizer step's on_step_begin and
    on_step_end (last in the callback list, so a reposition or jump made in on_step_end is counted). With `path`,
    the totals at every checkpoint go to that JSON file ({step: [wall, cpu]}), and a resumed run goes on from them."""

    def __init__(self, path: Path | None = None):
        self.path, self.seconds, self.total, self.started = path, {}, [0.0, 0.0], None

    def on_train_begin(self, args, state, control, **kwargs):
        saved = json.loads(self.path.read_text()) if self.path and self.path.exists() else {}
        self.seconds = {step: s for step, s in saved.items() if int(step) <= state.global_step}
        self.total = list(self.seconds.get(str(state.global_step), [0.0, 0.0]))

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        self.total = [self.total[0] + time.perf_counter() - self.started[0],
                      self.total[1] + time.process_time() - self.started[1]]

    def on_save(self, args, state, control, **kwargs):
        self.seconds[str(state.global_step)] = self.total
        if self.path is not None:
            write_json_atomic(self.path, self.seconds)

"""`AccelerateCallback`: the TRL trainer glue of the live jumps (what they do and why: docs/JUMPS.md).

Every `snapshot_every` steps it adds the trainable tensors to the snapshot window; every `every` steps, at a
generation boundary, it attempts a jump (`jump`): choose a method by back-test, score the check prompts, write the
prediction for H steps ahead into the parameters, score again, keep or roll back to the exact pre-jump weights.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import DefaultFlowCallback, ExportableState

from rlcast.evaluation.tasks import get_task
from rlcast.io.outputs import check_output
from rlcast.io.records import json_safe
from rlcast.training.accelerate import reporting
from rlcast.training.accelerate.backtest import choose, fit
from rlcast.training.accelerate.check import CheckSet, paired_se, rewards, verdict
from rlcast.training.accelerate.config import AccelerateConfig, label, min_checkpoints
from rlcast.training.accelerate.jumps import apply, restore
from rlcast.training.accelerate.snapshots import SnapshotWindow, trainable
from rlcast.training.support import check_unsharded, config_from_dict

log = logging.getLogger("rlcast.accelerate")


def _clock() -> float:
    """Seconds for the cost accounting: this process's CPU time on CPU (immune to other jobs sharing the cores),
    wall time when a GPU does the work."""
    return time.perf_counter() if torch.cuda.is_available() else time.process_time()


class AccelerateCallback(TrainerCallback, ExportableState):
    """Jump a TRL GRPO/RLOO run ahead with an extrapolator every `config.every` steps, check, keep or roll back.

    Everything it acts on comes with TRL's callback arguments (`model`, `processing_class`, `optimizer`, `args`,
    `state`); a model sharded by FSDP or DeepSpeed ZeRO-3 is refused at the start in one line (a jump writes whole
    tensors).

    Args:
        config: an `AccelerateConfig` (or its dict, as transformers rebuilds it from a checkpoint): the method, how
            often and how far to jump, the check's task and prompts, the snapshot window (docs/JUMPS.md).

    Usage:
        jumps = AccelerateCallback(AccelerateConfig(every=10, task="arith"))
        trainer = GRPOTrainer(..., callbacks=[jumps])
        jumps.bind(trainer)   # optional: its accelerate/* metrics then reach every report_to logger
        trainer.train()
        print(jumps.summary())
    """

    def __init__(self, config: AccelerateConfig | dict = AccelerateConfig()):
        if isinstance(config, dict):  # rebuilt by transformers from the args saved in a checkpoint
            config = config_from_dict(AccelerateConfig, config, "AccelerateCallback")
        self.config = config
        self.methods = {label(m): m for m in config.candidates}
        self.window = SnapshotWindow(config.window)
        # resumable state (saved with the trainer checkpoint)
        self.current_horizon = config.horizon
        self.offset = 0                 # virtual step = global_step + offset
        self.segment_start = 0          # global step where the current window began (0 or the last jump)
        self.last_attempt = 0           # global step of the last jump attempt
        self.jumps: list[dict] = []
        self.seconds = {"train": 0.0, "eval": 0.0, "backtest": 0.0, "jump": 0.0, "snapshot": 0.0}
        self.train_steps = 0
        self._step_started: float | None = None
        self._check_set: CheckSet | None = None
        self._pending: dict = {}        # metrics of the last attempt, added to the trainer's next logs

    @property
    def snapshots(self) -> list[list[int]]:
        """[global_step, virtual_step] of every snapshot in the window, oldest first."""
        return self.window.steps

    @snapshots.setter
    def snapshots(self, steps: list[list[int]]) -> None:  # transformers restores saved attributes by setattr
        self.window.steps = steps

    # ------------------------------------------------------------------ ExportableState

    def state(self) -> dict:
        attrs = {k: getattr(self, k) for k in (
            "current_horizon", "offset", "segment_start", "last_attempt", "snapshots", "jumps", "seconds",
            "train_steps")}
        return {"args": {"config": self.config.to_json()}, "attributes": json_safe(attrs)}

    def state_dict(self) -> dict:
        return self.state()

    def load_state_dict(self, state: dict) -> None:
        for key, value in state["attributes"].items():
            setattr(self, key, value)

    # ------------------------------------------------------------------ the jump

    def predict(self, method: str, target: int):
        """(name, predicted tensor) for every trainable tensor at virtual step `target`: `method` fitted on the
        window."""
        steps = self.window.virtual
        return fit(self.methods[method], self.window, steps, self.config.method_params).predict(target - steps[0])

    def check_run(self, output_dir, model=None) -> None:
        """What the settings must agree with in this run, checked before any work (`training.train.train` calls it before
        the base is scored, `on_train_begin` again before the first step): an explicit snapshot_dir never is, contains
        or lies inside the run's output folder or the model (`io.outputs.check_output`, writability tried for real),
        and the check's task builds with enough train prompts (a bad one fails now, not at every jump attempt)."""
        if self.config.snapshot_dir:
            check_output(Path(self.config.snapshot_dir), "accelerate", folder=True, replaces=False,
                         inputs={"the run's output folder": output_dir, "the model": model},
                         option="--accel snapshot_dir=DIR")
        self._checks()

    def _checks(self) -> CheckSet:
        """The check prompts, built once."""
        if self._check_set is None:
            self._check_set = CheckSet(get_task(self.config.task, self.config.task_args or None),
                                       self.config.eval_prompts)
        return self._check_set

    def _reward(self, model, tokenizer) -> torch.Tensor:
        """Greedy reward of every check prompt, in prompt order (paired before/after the jump)."""
        checks = self._checks()
        start = _clock()
        try:
            return rewards(model, tokenizer, checks, self.config.eval_batch_size)
        finally:
            self.seconds["eval"] += _clock() - start

    def _keep(self, step: int, model, optimizer, horizon: int) -> None:
        """Commit a kept jump: the jumped weights anchor a new window at virtual step t + offset + H."""
        self.window.restart(model, step, step + self.offset + horizon)  # may fail: it comes before any change
        if self.config.optimizer_state == "reset" and optimizer is not None:
            inner = getattr(optimizer, "optimizer", optimizer)
            for param in trainable(model).values():
                inner.state.pop(param, None)
        self.offset += horizon
        self.segment_start = step
        self.current_horizon = min(self.config.horizon_cap, max(horizon + 1, round(horizon * self.config.grow)))

    def jump(self, step: int, model, tokenizer, optimizer=None) -> dict:
        """One attempt at global step `step`: choose, check before, extrapolate H steps ahead, check after, keep or
        roll back.

        Never raises an Exception: a rejected prediction or a failure anywhere restores the exact pre-jump weights,
        with the reason in the entry.
        """
        virtual, horizon = step + self.offset, int(self.current_horizon)
        entry = {"step": step, "virtual_step": virtual, "horizon": horizon, "method": None, "backtest_error": None,
                 "backtest": {}, "backtest_failed": {}, "reward_before": None, "reward_after": None, "check_se": None,
                 "kept": False, "rolled_back": False, "rejected": False, "failed": False, "reason": ""}
        params, backup = trainable(model), {}
        try:
            start = _clock()
            method = choose(self.methods, self.window, self.config, entry)
            self.seconds["backtest"] += _clock() - start
            if method is None:
                return entry
            entry["method"] = method
            before = self._reward(model, tokenizer)
            entry["reward_before"] = float(before.mean())
            start = _clock()
            problem = apply(self.predict(method, virtual + horizon), params, backup)
            self.seconds["jump"] += _clock() - start
            if problem:
                entry["rejected"], entry["reason"] = True, f"rejected: {problem}"
                log.warning("accelerate: jump at step %d rolled back: %s", step, entry["reason"])
            else:
                after = self._reward(model, tokenizer)
                entry["reward_after"] = float(after.mean())
                entry["check_se"] = paired_se(before, after)
                entry["reason"] = verdict(entry["reward_before"], entry["reward_after"], self.config.tolerance,
                                          self.config.collapse)
                if entry["reason"] is None:
                    self._keep(step, model, optimizer, horizon)
                    entry["kept"], entry["reason"] = True, "check reward (train prompts) within tolerance"
        except Exception as err:  # noqa: BLE001 - the user's training must survive any failure of ours
            entry["failed"], entry["reason"] = True, f"failed: {type(err).__name__}: {err}"
            log.warning("accelerate: jump at step %d failed and was rolled back: %s", step, entry["reason"])
        finally:  # also on KeyboardInterrupt: never leave a half-applied jump behind
            if not entry["kept"] and entry["method"] is not None:
                restore(params, backup)
                entry["rolled_back"] = True
                self.current_horizon = max(1, int(horizon * self.config.shrink))
        return entry

    # ------------------------------------------------------------------ trainer events

    def bind(self, trainer) -> "AccelerateCallback":
        """Stand right after `trainer`'s DefaultFlowCallback, ahead of its `report_to` integrations (an explicit
        handle: callback events are not given the trainer). They are registered before user callbacks and send the
        `logs` dict as soon as they get it; in front of them, `on_log` adds the jump's metrics in time. Unbound, the
        metrics reach the loggers after it. Adds the callback when the trainer does not hold it yet; returns self."""
        handler = trainer.callback_handler
        if self in handler.callbacks:
            handler.callbacks.remove(self)
        flow = [i for i, cb in enumerate(handler.callbacks) if isinstance(cb, DefaultFlowCallback)]
        handler.callbacks.insert(flow[0] + 1 if flow else 0, self)
        return self

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        check_unsharded(model, "accelerate")
        path = getattr(model, "name_or_path", None)
        self.check_run(args.output_dir, path if path and Path(path).exists() else None)
        self.window.open(Path(self.config.snapshot_dir or args.output_dir), args.output_dir)
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if state.global_step > 0 and isinstance(saved, dict) and "attributes" in saved:
            # resumed: restore our state even when restore_callback_states_from_checkpoint is off (its default)
            self.load_state_dict(saved)
            self.window.resume(state.global_step)
            if self.snapshots:
                return
            log.warning("accelerate: no snapshot left in %s; the window restarts at step %d", self.window.root,
                        state.global_step)
        else:
            self.window.clear()
            self.snapshots = []
        self.segment_start = state.global_step
        self.last_attempt = max(self.last_attempt, state.global_step)
        self._snapshot(state, model)  # the anchor of the first window: the weights training starts from

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = _clock()

    def _snapshot(self, state, model) -> None:
        start = _clock()
        self.window.add(model, state.global_step, state.global_step + self.offset)
        self.seconds["snapshot"] += _clock() - start

    def _at_generation_boundary(self, args, state) -> bool:
        per_generation = getattr(args, "steps_per_generation", None) or args.gradient_accumulation_steps
        generate_every = per_generation * (getattr(args, "num_iterations", None) or 1)
        return (state.global_step * args.gradient_accumulation_steps) % generate_every == 0

    def on_step_end(self, args, state, control, model=None, processing_class=None, optimizer=None, **kwargs):
        if self._step_started is not None:
            self.seconds["train"] += _clock() - self._step_started
            self.train_steps += 1
            self._step_started = None
        step = state.global_step
        due = (step - self.last_attempt >= self.config.every and step < state.max_steps
               and self._at_generation_boundary(args, state))
        if due or (step - self.segment_start) % self.config.snapshot_interval == 0:
            try:
                self._snapshot(state, model)
            except Exception as err:  # noqa: BLE001 - e.g. a full disk: skip this attempt, keep training
                log.warning("accelerate: snapshot at step %d failed (%s: %s); no jump now", step,
                            type(err).__name__, err)
                return
        if not due:
            return
        needed = min(min_checkpoints(m) + 1 + self.config.backtesting for m in self.methods.values())
        if len(self.snapshots) < needed:
            return
        self.last_attempt = step
        entry = self.jump(step, model, processing_class, optimizer)
        self.jumps.append(entry)
        self._pending = reporting.metrics(entry, self.offset)
        control.should_log = True  # the trainer logs at this step, with our metrics (on_log)
        if self.config.verbose:
            reporting.print_attempt(entry)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._pending or logs is None:
            return
        logs.update(self._pending)  # the loggers after us (report_to integrations) send it with TRL's metrics
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._pending)  # Trainer.log appended a copy of logs before on_log
        self._pending = {}

    def on_train_end(self, args, state, control, **kwargs):
        if not self.config.keep_snapshots:
            self.window.delete()

    def summary(self) -> dict:
        """Jumps tried / kept, steps gained, and the acceleration's cost in step-equivalents (CPU time on CPU, see
        `_clock`)."""
        return reporting.summary(self.jumps, self.seconds, self.train_steps)

"""Live acceleration inside TRL's GRPO / RLOO trainers: extrapolate the weights ahead, check, keep or roll back.

`AccelerateCallback` is a `transformers.TrainerCallback`. Every `snapshot_every` optimizer steps it writes the
trainable tensors to disk (safetensors, at most `window` snapshots, the first one the window's anchor). Every `every`
steps it

1. picks the extrapolator: the given `method`, or with "auto" the one that best back-tests on the window (fit on all
   snapshots but the last, predict the last; error `||P - W_T||_F / ||W_T - W_{T-1}||_F` over the changed tensors,
   so an error >= 1 means "no better than standing still"). The jump is skipped when the best error is
   >= `max_backtest_error` (default 1.0; a fixed method is back-tested too unless it is None);
2. scores the model on the check prompts (greedy, `rlcast.evaluation.generation.evaluate`): reward before;
3. fits that extrapolator on the window and copies its prediction for step `t + H` into the parameters in place;
4. scores again (reward after) and keeps the jump, or restores the exact pre-jump weights when the weights are not
   finite, when the reward drops by more than `tolerance`, or when it collapses (relative drop larger than
   `collapse`). H grows by `grow` after a kept jump and shrinks by `shrink` after a rollback.

Settings travel as one `AccelerateConfig` (frozen, JSON-serialisable, validated at construction). A method is a name
(`LIVE_METHODS`) or your own `Extrapolator` instance (copied unfitted before every fit, so fits never share state).

Design choices (each deliberate, each tested):
- The extrapolators are `rlcast.methods`' (module selection "all": every trainable tensor moves), fed through
  `rlcast.io.runs.load_run(base=..., checkpoints=...)`: the snapshot folders are presented as a run whose "model"
  is the set of trainable tensors and whose *base is the window's first snapshot*, with steps counted from it. The
  methods then extrapolate the recent segment of the trajectory (weight-linear becomes the line through the anchor
  and the last snapshot) instead of scaling the whole update since the start of training, which also scales up all
  the optimizer noise accumulated since then (on the testbed, weight-linear from W0 at 4x loses half the accuracy).
- The training is sacred. An exception anywhere in a jump (back-test, fit, predict, apply, the check, the bookkeeping
  of a kept jump) restores the exact pre-jump weights, is logged as a rolled-back jump with its reason, and training
  continues; a back-test that raises marks only that method failed for this attempt. The restore copy: before a
  tensor is overwritten, its current value is copied to CPU memory (one tensor at a time: the accelerator never holds
  a second model). Cost: CPU RAM for one copy of the tensors the jump changes (full fine-tuning: the trainable
  weights, e.g. 2 bytes x parameters in bf16; LoRA: the adapter only), held for the length of the jump.
- Metrics reach the trainer's loggers (`report_to`: wandb, tensorboard, ...) as `accelerate/*` next to TRL's, and
  `state.log_history` in the same entry: after an attempt the callback asks the trainer to log at that step
  (`control.should_log`) and adds its numbers to the `logs` dict in `on_log`. The integrations `report_to` registers
  come before user callbacks and send `logs` as soon as they see it, so the callback moves itself to just after the
  trainer's DefaultFlowCallback when the trainer first calls it (on_init_end / on_train_begin).
- `auto` back-tests weight-linear, alpharl-step and relex (closed-form, well under a step each on the testbed).
  `next` trains its MLPs at every fit (tens of steps' worth of time on the testbed): available through `methods=`.
- Steps are *virtual*: after a kept jump of H steps the model stands at step t + H of the trajectory it predicted,
  so later snapshots are recorded at `global_step + offset` (offset = total kept horizon). After a kept jump the
  window restarts with the jumped weights as its anchor (older snapshots belong to a trajectory the model has left).
- Full fine-tuning: the trainable tensors are the model's weights. peft LoRA: the trainable tensors are the adapter's
  A and B matrices and they are extrapolated as such (in parameter space, where the optimizer moves). The merged
  delta B @ A could be extrapolated instead, but writing it back needs a re-factorisation into new A, B, which
  changes the adapter's gauge and leaves Adam's per-coordinate moments attached to the wrong coordinates.
- Optimizer state: kept as it is by default (`optimizer_state="keep"`). RL updates are tiny and Adam's second
  moments measure the per-coordinate gradient scale, which a jump along the trajectory does not change; the first
  moment points along the recent update direction, the one the jump followed. Resetting them would make the next
  steps behave like Adam's first steps (unit-size, sign-like updates at the full learning rate): noise right after
  the jump. `optimizer_state="reset"` is available to clear the moments after a kept jump. A rollback never touches
  the optimizer, so a rolled-back jump leaves training exactly as if it had not been tried (the global RNG state is
  saved and restored around the held-out generation too).
- Jumps happen only at optimizer-step boundaries that are also generation boundaries (TRL reuses a generation for
  `steps_per_generation * num_iterations` micro-steps; jumping inside that block would train on completions of the
  pre-jump policy). With vLLM the new weights reach the engine at the next generation: TRL syncs whenever
  `global_step` changed since its last sync, and the jump happens in `on_step_end`, after the increment.
- The check scores a fixed seeded sample of `eval_prompts` prompts of the task's *train* split, greedily, before and
  after the jump, and decides on the paired difference (same prompts: the prompt-to-prompt spread cancels; its
  standard error is logged as `check_se`, so a user can size `eval_prompts` until it sits well below `tolerance`).
  The test split, where `rlcast train` and `rlcast eval` report accuracy, never enters a keep/rollback decision.
- Resume: the callback is an `ExportableState`; its counters, horizon, offset, jump log and window list are saved in
  the trainer checkpoint and restored at `on_train_begin` of a resumed run (whether or not
  `restore_callback_states_from_checkpoint` is set, which would instead rebuild the callback from its saved args).
  Snapshots live in `snapshot_dir` (default OUTPUT_DIR/.rlcast-accelerate), which survives an interruption; on resume, snapshots from steps after the checkpoint are dropped. If none is left (the folder is
  gone), the window restarts with the resumed weights as its anchor.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback, ExportableState

from rlcast.errors import RlcastError
from rlcast.evaluation.generation import evaluate
from rlcast.evaluation.tasks import get_task
from rlcast.io.runs import load_run
from rlcast.io.writer import atomic_folder, json_safe
from rlcast.methods import METHODS, Extrapolator, make_extrapolator
from rlcast.training.support import config_from_dict, preserved_rng

log = logging.getLogger("rlcast.accelerate")

SNAPSHOT_FILE = "model.safetensors"
# alpharl inverts an accuracy regression: it needs an evaluated accuracy for every snapshot, which a live run lacks
LIVE_METHODS = ("weight-linear", "alpharl-step", "relex", "next", "drift", "rre")
# auto's default candidates, chosen on tuning seeds (100, 101) of the steady preset: alpharl-step and rre back-tested
# at 2-5x the error of standing still on every attempt (never chosen), next retrains its MLPs at every fit
AUTO_METHODS = ("weight-linear", "drift", "relex")


def _clock() -> float:
    """Seconds for the cost accounting: this process's CPU time on CPU (immune to other jobs sharing the cores),
    wall time when a GPU does the work."""
    return time.perf_counter() if torch.cuda.is_available() else time.process_time()


def label(method) -> str:
    """A method's name: the string itself, or an Extrapolator instance's `name` (else its class name)."""
    return method if isinstance(method, str) else getattr(method, "name", "") or type(method).__name__


def _min_checkpoints(method) -> int:
    return METHODS[method].min_checkpoints if isinstance(method, str) else method.min_checkpoints


def _check_method(method) -> None:
    if not isinstance(method, str):
        if not isinstance(method, Extrapolator):
            raise RlcastError(f"accelerate: method {method!r} is neither a name nor an Extrapolator")
        return
    if method == "alpharl":
        raise RlcastError("accelerate: alpharl needs an evaluated accuracy for every snapshot, which a live run "
                          "does not have; use alpharl-step (the same rank-1 path, extrapolated in the step)")
    if method not in LIVE_METHODS:
        raise RlcastError(f"accelerate: unknown method {method!r}; known: auto, {', '.join(LIVE_METHODS)}")


@dataclass(frozen=True)
class AccelerateConfig:
    """Settings of `AccelerateCallback`. A method is a name or an Extrapolator instance; the rest is JSON.

    method: "auto" or one of LIVE_METHODS or an Extrapolator; every: steps between jump attempts; horizon: first jump
    length H (then grown by `grow` / shrunk by `shrink`, capped at `max_horizon`, default 8 H); window: snapshots
    kept (the anchor included), taken every `snapshot_every` steps (default every // (window - 1)); tolerance:
    largest held-out reward drop kept; collapse: relative drop always rolled back; task / task_args / eval_prompts /
    eval_batch_size: the held-out check; optimizer_state: "keep" or "reset" Adam's moments after a kept jump;
    methods: auto's candidates (default AUTO_METHODS); method_params: {name: {param: value}} for
    `make_extrapolator`; max_backtest_error: skip the jump when the best back-test error is >= this (None: no
    back-test of a fixed method, no limit for auto); snapshot_dir: default OUTPUT_DIR/.rlcast-accelerate.
    """

    method: str | Any = "auto"
    every: int = 10
    horizon: int = 10
    window: int = 6
    tolerance: float = 0.02
    task: str = "arith"
    task_args: dict | None = None
    eval_prompts: int = 256
    snapshot_every: int | None = None
    max_horizon: int | None = None
    grow: float = 1.5
    shrink: float = 0.5
    collapse: float = 0.5
    optimizer_state: str = "keep"
    methods: list | None = None
    method_params: dict | None = None
    max_backtest_error: float | None = 1.0
    snapshot_dir: str | None = None
    keep_snapshots: bool = False
    eval_batch_size: int = 64
    verbose: bool = True

    def __post_init__(self):
        if self.horizon < 1:
            raise RlcastError(f"accelerate: horizon must be >= 1 step (got {self.horizon})")
        if self.every < 1:
            raise RlcastError(f"accelerate: every must be >= 1 step (got {self.every})")
        if self.eval_prompts < 1:
            raise RlcastError(f"accelerate: eval_prompts must be >= 1 (got {self.eval_prompts})")
        if self.tolerance < 0 or not 0 < self.collapse <= 1:
            raise RlcastError(f"accelerate: need tolerance >= 0 and 0 < collapse <= 1 (got {self.tolerance}, "
                              f"{self.collapse})")
        if not (0 < self.shrink <= 1 <= self.grow):
            raise RlcastError(f"accelerate: need 0 < shrink <= 1 <= grow (got shrink={self.shrink}, grow={self.grow})")
        if self.optimizer_state not in ("keep", "reset"):
            raise RlcastError(f"accelerate: optimizer_state must be keep or reset (got {self.optimizer_state!r})")
        if self.method != "auto":
            _check_method(self.method)
        for m in self.methods or []:
            _check_method(m)
        # a fit needs the anchor + min_checkpoints snapshots; a back-test one more (the snapshot it predicts)
        if self.method == "auto":
            candidates = list(self.methods or AUTO_METHODS)
            if not any(_min_checkpoints(m) + 2 <= self.window for m in candidates):
                need = min(_min_checkpoints(m) for m in candidates) + 2
                raise RlcastError(f"accelerate: window {self.window} is shorter than auto needs (back-testing "
                                  f"{', '.join(map(label, candidates))} needs at least {need} snapshots)")
        elif _min_checkpoints(self.method) + 1 + self.backtesting > self.window:
            need = _min_checkpoints(self.method) + 1 + self.backtesting
            raise RlcastError(f"accelerate: window {self.window} is shorter than method {label(self.method)} needs "
                              f"({need} snapshots: an anchor, {_min_checkpoints(self.method)} more"
                              f"{' and one to back-test on' if self.backtesting else ''})")
        if not 1 <= self.snapshot_interval <= self.every:
            raise RlcastError(f"accelerate: snapshot_every must be in 1..every={self.every} "
                              f"(got {self.snapshot_interval})")

    @property
    def snapshot_interval(self) -> int:
        """snapshot_every, by default every // (window - 1): a full window between two attempts."""
        return self.snapshot_every or max(1, self.every // (self.window - 1 or 1))

    @property
    def horizon_cap(self) -> int:
        return self.max_horizon or 8 * self.horizon

    @property
    def backtesting(self) -> bool:
        """Is every attempt back-tested first? Always with auto; a fixed method only with a max_backtest_error."""
        return self.method == "auto" or self.max_backtest_error is not None

    @property
    def candidates(self) -> list:
        """The methods an attempt may use: auto's candidates that the window can back-test, or the fixed method."""
        if self.method != "auto":
            return [self.method]
        return [m for m in self.methods or AUTO_METHODS if _min_checkpoints(m) + 2 <= self.window]

    def to_json(self) -> dict:
        """The settings as JSON (an Extrapolator instance as its label: such a config cannot be rebuilt from JSON)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["method"] = label(self.method)
        data["methods"] = None if self.methods is None else [label(m) for m in self.methods]
        return json_safe(data)


class _CheckSet:
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


class AccelerateCallback(TrainerCallback, ExportableState):
    """Jump a TRL GRPO/RLOO run ahead with an extrapolator every `config.every` steps, check, keep or roll back."""

    def __init__(self, config: AccelerateConfig | dict = AccelerateConfig()):
        if isinstance(config, dict):  # rebuilt by transformers from the args saved in a checkpoint
            config = config_from_dict(AccelerateConfig, config, "AccelerateCallback")
        self.config = config
        self.methods = {label(m): m for m in config.candidates}
        # resumable state (saved with the trainer checkpoint)
        self.current_horizon = config.horizon
        self.offset = 0                 # virtual step = global_step + offset
        self.segment_start = 0          # global step where the current window began (0 or the last jump)
        self.last_attempt = 0           # global step of the last jump attempt
        self.snapshots: list[list[int]] = []   # [global_step, virtual_step], oldest first, at most `window`
        self.jumps: list[dict] = []
        self.seconds = {"train": 0.0, "eval": 0.0, "backtest": 0.0, "jump": 0.0, "snapshot": 0.0}
        self.train_steps = 0
        self._step_started: float | None = None
        self._heldout = None
        self._pending: dict = {}        # metrics of the last attempt, added to the trainer's next logs

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

    # ------------------------------------------------------------------ snapshots on disk

    def _dir(self, args) -> Path:
        return Path(self.config.snapshot_dir or Path(args.output_dir) / ".rlcast-accelerate")

    @staticmethod
    def _trainable(model) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in model.named_parameters() if p.requires_grad}

    def _write(self, folder: Path, model) -> None:
        """Trainable tensors of `model` -> folder/model.safetensors (+ config.json), written atomically."""
        # CPU parameters are written from their own storage (no copy); GPU ones come over to the CPU for the write
        tensors = {n: p.detach().cpu().contiguous() for n, p in self._trainable(model).items()}
        with atomic_folder(folder) as tmp:
            save_file(tensors, str(tmp / SNAPSHOT_FILE), metadata={"format": "pt"})
            config = getattr(model, "config", None)
            if config is not None:
                (tmp / "config.json").write_text(config.to_json_string())

    def _snapshot(self, args, state, model) -> None:
        start = _clock()
        virtual = state.global_step + self.offset
        self._write(self._dir(args) / f"step-{virtual}", model)
        self.snapshots = [s for s in self.snapshots if s[1] != virtual] + [[state.global_step, virtual]]
        while len(self.snapshots) > self.config.window:
            _, old = self.snapshots.pop(0)
            shutil.rmtree(self._dir(args) / f"step-{old}", ignore_errors=True)
        self.seconds["snapshot"] += _clock() - start

    def _run(self, args, virtual_steps: list[int]):
        """The snapshots as a Run: base = the first (the anchor), checkpoints at steps counted from it."""
        root, anchor = self._dir(args), virtual_steps[0]
        run = load_run(base=root / f"step-{anchor}",
                       checkpoints={v - anchor: root / f"step-{v}" for v in virtual_steps[1:]})
        run.root = root  # caches (rank-1 factors) go inside the snapshot folder and leave with it
        return run

    # ------------------------------------------------------------------ extrapolation

    def extrapolator(self, method: str, virtual_steps: list[int], args):
        """The method labelled `method`, fresh, fitted on the snapshots at `virtual_steps` (the first is the anchor).

        A name is built by `make_extrapolator` with selection "all" (every trainable tensor moves); an instance is
        copied unfitted by `make_extrapolator` (from its `get_params()`), so the user's object stays untouched.
        """
        spec = self.methods[method]
        params = {}
        if isinstance(spec, str):
            params = {"selection": "all"} | (self.config.method_params or {}).get(spec, {})
        return make_extrapolator(spec, **params).fit(self._run(args, virtual_steps))

    def predict(self, method: str, target: int, args):
        """(name, predicted tensor) for every trainable tensor at virtual step `target`, fitted on the window."""
        steps = [v for _, v in self.snapshots]
        return self.extrapolator(method, steps, args).predict(target - steps[0])

    def backtest(self, method: str, args) -> float:
        """Fit on all snapshots but the last, predict the last: ||P - W_T|| / ||W_T - W_{T-1}|| on changed tensors."""
        steps = [v for _, v in self.snapshots]
        root = self._dir(args)
        fitted = self.extrapolator(method, steps[:-1], args)
        num = den = 0.0
        with safe_open(str(root / f"step-{steps[-1]}" / SNAPSHOT_FILE), "pt") as last, \
                safe_open(str(root / f"step-{steps[-2]}" / SNAPSHOT_FILE), "pt") as prev:
            names = set(last.keys())
            for name, pred in fitted.predict(steps[-1] - steps[0]):
                if name not in names:
                    continue
                actual, before = last.get_tensor(name).float(), prev.get_tensor(name).float()
                step = float((actual - before).pow(2).sum())
                if step == 0.0:
                    continue
                num += float((pred.float() - actual).pow(2).sum())
                den += step
        return math.sqrt(num / den) if den > 0 else float("inf")

    def _choose(self, args, entry: dict) -> str | None:
        """The method to jump with (None: skip, reason in entry). Back-tests every candidate when back-testing;
        a back-test that raises marks only that method failed for this attempt (entry["backtest_failed"])."""
        if not self.config.backtesting:
            return next(iter(self.methods))
        errors, failed = {}, {}
        for name, spec in self.methods.items():
            if _min_checkpoints(spec) + 2 > len(self.snapshots):
                continue
            try:
                errors[name] = self.backtest(name, args)
            except Exception as err:  # noqa: BLE001 - any failure of one method must not stop the others
                failed[name] = f"{type(err).__name__}: {err}"
                log.info("back-test of %s failed: %s", name, failed[name])
        entry["backtest"] = {k: round(v, 6) if math.isfinite(v) else None for k, v in errors.items()}
        entry["backtest_failed"] = failed
        finite = {k: v for k, v in errors.items() if math.isfinite(v)}
        if not finite:
            entry["reason"] = "every back-test failed" if failed else "no method fits"
            return None
        best = min(finite, key=finite.get)
        entry["backtest_error"] = finite[best]
        limit = self.config.max_backtest_error
        if limit is not None and finite[best] >= limit:
            entry["reason"] = f"best back-test error {finite[best]:.3f} ({best}) >= max_backtest_error {limit}"
            return None
        return best

    # ------------------------------------------------------------------ held-out check

    def _reward(self, model, tokenizer) -> torch.Tensor:
        """Greedy reward of every check prompt, in prompt order (paired before/after the jump)."""
        if self._heldout is None:
            self._heldout = _CheckSet(get_task(self.config.task, self.config.task_args or None),
                                      self.config.eval_prompts)
        start = _clock()
        try:
            with preserved_rng():  # a rolled-back jump must leave the run's rollouts exactly as they were
                result = evaluate(model, self._heldout, n_prompts=self.config.eval_prompts, greedy=True, seed=0,
                                  tokenizer=tokenizer, batch_size=self.config.eval_batch_size, progress=False,
                                  backend="transformers")
        finally:
            self.seconds["eval"] += _clock() - start
        return torch.tensor([row["reward"] for row in result.details], dtype=torch.float64)

    # ------------------------------------------------------------------ the jump

    def _apply(self, predictions, model, backup: dict[str, torch.Tensor]) -> bool:
        """Copy predictions into the trainable parameters one tensor at a time, each one's current value first
        copied into `backup` (CPU); False, with nothing more written, at the first non-finite prediction."""
        params = self._trainable(model)
        with torch.no_grad():
            for name, tensor in predictions:
                param = params.get(name)
                if param is None:
                    continue
                if not torch.isfinite(tensor).all():
                    return False
                backup[name] = param.detach().to("cpu", copy=True)
                param.copy_(tensor.to(param.dtype))
        return True

    def _rollback(self, model, backup: dict[str, torch.Tensor]) -> None:
        """The exact pre-jump weights: every overwritten tensor copied back from its backup (same dtype: bitwise)."""
        params = self._trainable(model)
        with torch.no_grad():
            for name, saved in backup.items():
                params[name].copy_(saved)

    def _keep(self, args, state, model, optimizer, horizon: int) -> None:
        """Commit a kept jump: the jumped weights anchor a new window at virtual step t + offset + H."""
        virtual = state.global_step + self.offset + horizon
        self._write(self._dir(args) / f"step-{virtual}", model)  # the only step that may fail: before any change
        if self.config.optimizer_state == "reset" and optimizer is not None:
            inner = getattr(optimizer, "optimizer", optimizer)
            for param in self._trainable(model).values():
                inner.state.pop(param, None)
        for _, old in self.snapshots:
            if old != virtual:
                shutil.rmtree(self._dir(args) / f"step-{old}", ignore_errors=True)
        self.snapshots = [[state.global_step, virtual]]
        self.offset += horizon
        self.segment_start = state.global_step
        self.current_horizon = min(self.config.horizon_cap, max(horizon + 1, round(horizon * self.config.grow)))

    def jump(self, args, state, model, tokenizer, optimizer=None) -> dict:
        """One attempt: choose, check before, extrapolate H steps ahead, check after, keep or roll back.

        Never raises an Exception: a failure anywhere restores the exact pre-jump weights and is the entry's reason.
        """
        step, virtual = state.global_step, state.global_step + self.offset
        horizon = int(self.current_horizon)
        entry = {"step": step, "virtual_step": virtual, "horizon": horizon, "method": None, "backtest_error": None,
                 "backtest": {}, "backtest_failed": {}, "reward_before": None, "reward_after": None, "check_se": None,
                 "kept": False,
                 "rolled_back": False, "reason": ""}
        backup: dict[str, torch.Tensor] = {}
        try:
            start = _clock()
            method = self._choose(args, entry)
            self.seconds["backtest"] += _clock() - start
            if method is None:
                return entry
            entry["method"] = method
            scores_before = self._reward(model, tokenizer)
            entry["reward_before"] = before = float(scores_before.mean())
            start = _clock()
            finite = self._apply(self.predict(method, virtual + horizon, args), model, backup)
            self.seconds["jump"] += _clock() - start
            if not finite:
                entry["reason"] = "non-finite weights"
            else:
                scores_after = self._reward(model, tokenizer)
                entry["reward_after"] = after = float(scores_after.mean())
                diff = scores_after - scores_before  # paired on the same prompts: the prompt-to-prompt spread cancels
                entry["check_se"] = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else None
                if after < before - self.config.tolerance:
                    entry["reason"] = f"held-out reward dropped by {before - after:.4f} > tolerance " \
                                      f"{self.config.tolerance}"
                elif before > 0 and after < (1 - self.config.collapse) * before:
                    entry["reason"] = f"held-out reward collapsed ({before:.4f} -> {after:.4f})"
                else:
                    self._keep(args, state, model, optimizer, horizon)
                    entry["kept"], entry["reason"] = True, "held-out reward within tolerance"
        except Exception as err:  # noqa: BLE001 - the user's training must survive any failure of ours
            entry["reason"] = f"failed: {type(err).__name__}: {err}"
            log.warning("accelerate: jump at step %d failed and was rolled back: %s", step, entry["reason"])
        finally:  # also on KeyboardInterrupt: never leave a half-applied jump behind
            if not entry["kept"] and entry["method"] is not None:
                self._rollback(model, backup)
                entry["rolled_back"] = True
                self.current_horizon = max(1, int(horizon * self.config.shrink))
        return entry

    # ------------------------------------------------------------------ trainer events

    def _move_before_reporters(self) -> None:
        """Stand right after the trainer's DefaultFlowCallback, ahead of the `report_to` integrations.

        They are registered before user callbacks and send the `logs` dict as soon as they get it; in front of them,
        `on_log` can add the jump's metrics in time. The handler is the nearest caller that is a CallbackHandler
        (its call_event runs our event and iterates its list by index: moving ourselves earlier neither skips nor
        repeats a callback). Not found (another trainer loop): the metrics still reach every logger after us.
        """
        frame = sys._getframe(1)
        while frame is not None and not isinstance(frame.f_locals.get("self"), CallbackHandler):
            frame = frame.f_back
        handler = frame.f_locals["self"] if frame is not None else None
        if handler is None or self not in handler.callbacks:
            return
        handler.callbacks.remove(self)
        flow = [i for i, cb in enumerate(handler.callbacks) if isinstance(cb, DefaultFlowCallback)]
        handler.callbacks.insert(flow[0] + 1 if flow else 0, self)

    def on_init_end(self, args, state, control, **kwargs):
        self._move_before_reporters()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._move_before_reporters()  # also for a callback added with trainer.add_callback after __init__
        root = self._dir(args)
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if state.global_step > 0 and isinstance(saved, dict) and "attributes" in saved:
            # resumed: restore our state even when restore_callback_states_from_checkpoint is off (its default)
            self.load_state_dict(saved)
            # forget snapshots taken after the checkpoint (they belong to the interrupted future)
            kept = [s for s in self.snapshots if s[0] <= state.global_step and (root / f"step-{s[1]}").exists()]
            for s in self.snapshots:
                if s not in kept:
                    shutil.rmtree(root / f"step-{s[1]}", ignore_errors=True)
            self.snapshots = kept
            if kept:
                return
            log.warning("accelerate: no snapshot left in %s; the window restarts at step %d", root, state.global_step)
        elif root.exists():
            shutil.rmtree(root)
        self.snapshots, self.segment_start = [], state.global_step
        self.last_attempt = max(self.last_attempt, state.global_step)
        self._snapshot(args, state, model)  # the anchor of the first window: the weights training starts from

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = _clock()

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
                self._snapshot(args, state, model)
            except Exception as err:  # noqa: BLE001 - e.g. a full disk: skip this attempt, keep training
                log.warning("accelerate: snapshot at step %d failed (%s: %s); no jump now", step,
                            type(err).__name__, err)
                return
        if not due:
            return
        needed = min(_min_checkpoints(m) + 1 + self.config.backtesting for m in self.methods.values())
        if len(self.snapshots) < needed:
            return
        self.last_attempt = step
        entry = self.jump(args, state, model, processing_class, optimizer)
        self.jumps.append(entry)
        self._pending = self._metrics(entry)
        control.should_log = True  # the trainer logs at this step, with our metrics (on_log)
        if self.config.verbose:
            self._print(entry)

    def _metrics(self, entry: dict) -> dict:
        """The attempt as numbers for the trainer's loggers (strings and None are left to `jumps`)."""
        values = {"kept": float(entry["kept"]), "rolled_back": float(entry["rolled_back"]),
                  "horizon": entry["horizon"], "steps_gained": self.offset, "backtest_error": entry["backtest_error"],
                  "reward_before": entry["reward_before"], "reward_after": entry["reward_after"]}
        values |= {f"backtest/{name}": error for name, error in entry["backtest"].items()}
        return {f"accelerate/{k}": v for k, v in values.items() if v is not None}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._pending or logs is None:
            return
        logs.update(self._pending)  # the loggers after us (report_to integrations) send it with TRL's metrics
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._pending)  # Trainer.log appended a copy of logs before on_log
        self._pending = {}

    def _print(self, entry: dict) -> None:
        if entry["method"] is None:
            text = f"step {entry['step']}: no jump ({entry['reason']})"
        else:
            after = "n/a" if entry["reward_after"] is None else f"{entry['reward_after']:.3f}"
            before = "n/a" if entry["reward_before"] is None else f"{entry['reward_before']:.3f}"
            verdict = "[green]kept[/]" if entry["kept"] else f"[red]rolled back[/] ({entry['reason']})"
            text = (f"step {entry['step']}: jump +{entry['horizon']} with {entry['method']} "
                    f"reward {before} -> {after}: {verdict}")
        Console(stderr=True).print(f"[bold]accelerate[/] {text}", highlight=False, soft_wrap=True)

    def on_train_end(self, args, state, control, **kwargs):
        if not self.config.keep_snapshots:
            shutil.rmtree(self._dir(args), ignore_errors=True)

    # ------------------------------------------------------------------ reporting

    def summary(self) -> dict:
        """Jumps tried / kept, steps gained, and the acceleration's cost in step-equivalents: the time of its checks,
        back-tests, jumps and snapshots over the mean optimizer-step time (CPU time on CPU, see `_clock`)."""
        step_time = self.seconds["train"] / self.train_steps if self.train_steps else float("nan")
        overhead = self.seconds["eval"] + self.seconds["backtest"] + self.seconds["jump"] + self.seconds["snapshot"]
        return {"attempts": len(self.jumps), "kept": sum(j["kept"] for j in self.jumps),
                "rolled_back": sum(j.get("rolled_back", False) for j in self.jumps),
                "steps_gained": sum(j["horizon"] for j in self.jumps if j["kept"]),
                "mean_step_seconds": step_time, "seconds": dict(self.seconds),
                "cost_step_equivalents": overhead / step_time if step_time == step_time and step_time > 0 else None}

"""Live acceleration inside TRL's GRPO / RLOO trainers: extrapolate the weights ahead, check, keep or roll back.

`AccelerateCallback` is a `transformers.TrainerCallback`. Every `snapshot_every` optimizer steps it writes the
trainable tensors to disk (safetensors, at most `window` snapshots, the first one the window's anchor). Every `every`
steps it

1. picks the extrapolator: the given `method`, or with "auto" the one that best back-tests on the window (fit on all
   snapshots but the last, predict the last; error `||P - W_T||_F / ||W_T - W_{T-1}||_F` over the changed tensors,
   so an error >= 1 means "no better than standing still"; with `max_backtest_error` set, the jump is skipped when
   even the best method errs more than that);
2. scores the model on held-out prompts (greedy, `rlcast.evaluation.generation.evaluate`): reward before;
3. fits that extrapolator on the window and copies its prediction for step `t + H` into the parameters in place;
4. scores again (reward after) and keeps the jump, or restores the exact pre-jump weights from the last snapshot when
   the weights are not finite, when the reward drops by more than `tolerance`, or when it collapses (relative drop
   larger than `collapse`). H grows by `grow` after a kept jump and shrinks by `shrink` after a rollback.

Design choices (each deliberate, each tested):
- The extrapolators are `rlcast.methods`'s (module selection "all": every trainable tensor moves), fed through
  `rlcast.io.checkpoints.load_run(base=..., checkpoints=...)`: the snapshot folders are presented as a run whose "model"
  is the set of trainable tensors and whose *base is the window's first snapshot*, with steps counted from it. The
  methods then extrapolate the recent segment of the trajectory (weight-linear becomes the line through the anchor
  and the last snapshot) instead of scaling the whole update since the start of training, which also scales up all
  the optimizer noise accumulated since then (on the testbed, weight-linear from W0 at 4x loses half the accuracy).
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
- The held-out prompts are the *last* `eval_prompts` of the task's test split in its seed-0 order, so they do not
  overlap the first prompts that `rlcast train` and `rlcast evaluate` report accuracy on.
- Resume: the callback is an `ExportableState`; its counters, horizon, offset, jump log and window list are saved in
  the trainer checkpoint and restored at `on_train_begin` of a resumed run (whether or not
  `restore_callback_states_from_checkpoint` is set, which would instead rebuild the callback from its saved args).
  Snapshots live in `snapshot_dir` (default OUTPUT_DIR/.rlcast-accelerate), which survives an interruption; on resume, snapshots from steps after the checkpoint are dropped. If none is left (the folder is
  gone), the window restarts with the resumed weights as its anchor.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from rlcast.errors import RlcastError

log = logging.getLogger("rlcast.accelerate")


def _clock() -> float:
    """Seconds for the cost accounting: this process's CPU time on CPU (immune to other jobs sharing the cores),
    wall time when a GPU does the work."""
    return time.perf_counter() if torch.cuda.is_available() else time.process_time()
SNAPSHOT_FILE = "model.safetensors"


# alpharl inverts an accuracy regression: it needs an evaluated accuracy for every snapshot, which a live run lacks
LIVE_METHODS = ("weight-linear", "alpharl-step", "relex", "next")
AUTO_METHODS = ("weight-linear", "alpharl-step", "relex")  # closed-form fits; next retrains MLPs at every fit


def _methods() -> dict:
    from rlcast.methods import METHODS

    return {name: METHODS[name] for name in LIVE_METHODS}


class _HeldOut:
    """The last `n` prompts of a task's test split (seed-0 order): a check set disjoint from the reported one."""

    def __init__(self, task, n: int):
        pool = task.examples("test", None, seed=0)
        if len(pool) < 2 * n:
            raise RlcastError(f"task {task.name}: test split has {len(pool)} prompts, the check needs {n} of them "
                              f"plus as many for reporting (lower eval_prompts)")
        self.name, self.max_new_tokens, self.task = f"{task.name}[held-out]", task.max_new_tokens, task
        self.pool = pool[-n:]

    def examples(self, split: str, n: int | None, seed: int = 0):
        return self.pool[:n]

    def score(self, completion: str, example) -> float:
        return self.task.score(completion, example)


class AccelerateCallback(TrainerCallback, ExportableState):
    """Jump a TRL GRPO/RLOO run ahead with an extrapolator every `every` steps, check, keep or roll back.

    method: "auto" or one of LIVE_METHODS; every: steps between jump attempts; horizon: first jump length H (then
    grown by `grow` / shrunk by `shrink`, capped at `max_horizon`, default 8 H); window: snapshots kept (the anchor
    included), taken every `snapshot_every` steps (default every // (window - 1)); tolerance: largest held-out reward
    drop kept; collapse: relative drop always rolled back; task / task_args / eval_prompts: the held-out check;
    optimizer_state: "keep" or "reset" Adam's moments after a kept jump; methods: auto's candidates (default
    AUTO_METHODS); method_params: {method: {param: value}} for `rlcast.methods`; max_backtest_error: skip the
    jump when auto's best back-test error is above it. Every argument is JSON-serialisable (saved with checkpoints).
    """

    def __init__(self, method: str = "auto", every: int = 10, horizon: int = 10, window: int = 4,
                 tolerance: float = 0.02, task: str = "arith", task_args: dict | None = None, eval_prompts: int = 64,
                 snapshot_every: int | None = None, max_horizon: int | None = None, grow: float = 1.5,
                 shrink: float = 0.5, collapse: float = 0.5, optimizer_state: str = "keep",
                 methods: list[str] | None = None, method_params: dict | None = None,
                 max_backtest_error: float | None = None, snapshot_dir: str | None = None,
                 keep_snapshots: bool = False, eval_batch_size: int = 64, verbose: bool = True):
        known = _methods()
        if horizon < 1:
            raise RlcastError(f"accelerate: horizon must be >= 1 step (got {horizon})")
        if every < 1:
            raise RlcastError(f"accelerate: every must be >= 1 step (got {every})")
        if eval_prompts < 1:
            raise RlcastError(f"accelerate: eval_prompts must be >= 1 (got {eval_prompts})")
        if tolerance < 0 or not 0 < collapse <= 1:
            raise RlcastError(f"accelerate: need tolerance >= 0 and 0 < collapse <= 1 (got {tolerance}, {collapse})")
        if not (0 < shrink <= 1 <= grow):
            raise RlcastError(f"accelerate: need 0 < shrink <= 1 <= grow (got shrink={shrink}, grow={grow})")
        if optimizer_state not in ("keep", "reset"):
            raise RlcastError(f"accelerate: optimizer_state must be keep or reset (got {optimizer_state!r})")
        if method == "alpharl":
            raise RlcastError("accelerate: alpharl needs an evaluated accuracy for every snapshot, which a live run "
                              "does not have; use alpharl-step (the same rank-1 path, extrapolated in the step)")
        if method != "auto" and method not in known:
            raise RlcastError(f"accelerate: unknown method {method!r}; known: auto, {', '.join(known)}")
        unknown = [m for m in methods or [] if m not in known]
        if unknown:
            raise RlcastError(f"accelerate: unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")
        # a fit needs the anchor + min_checkpoints snapshots; a back-test one more (the snapshot it predicts)
        if method == "auto":
            candidates = list(methods or AUTO_METHODS)
            usable = [m for m in candidates if known[m].min_checkpoints + 2 <= window]
            if not usable:
                need = min(known[m].min_checkpoints for m in candidates) + 2
                raise RlcastError(f"accelerate: window {window} is shorter than auto needs (back-testing "
                                  f"{', '.join(candidates)} needs at least {need} snapshots)")
        else:
            usable = [method]
            if known[method].min_checkpoints + 1 > window:
                raise RlcastError(f"accelerate: window {window} is shorter than method {method} needs "
                                  f"({known[method].min_checkpoints + 1} snapshots: an anchor and "
                                  f"{known[method].min_checkpoints} more)")
        snapshot_every = snapshot_every or max(1, every // (window - 1))
        if snapshot_every < 1 or snapshot_every > every:
            raise RlcastError(f"accelerate: snapshot_every must be in 1..every={every} (got {snapshot_every})")
        self.method, self.every, self.horizon, self.window = method, every, horizon, window
        self.tolerance, self.task, self.task_args, self.eval_prompts = tolerance, task, task_args, eval_prompts
        self.snapshot_every, self.max_horizon = snapshot_every, max_horizon or 8 * horizon
        self.grow, self.shrink, self.collapse, self.optimizer_state = grow, shrink, collapse, optimizer_state
        self.methods, self.method_params, self.max_backtest_error = methods, method_params or {}, max_backtest_error
        self.snapshot_dir, self.keep_snapshots = snapshot_dir, keep_snapshots
        self.eval_batch_size, self.verbose = eval_batch_size, verbose
        self.candidates = usable
        # resumable state (saved with the trainer checkpoint)
        self.current_horizon = horizon
        self.offset = 0                 # virtual step = global_step + offset
        self.segment_start = 0          # global step where the current window began (0 or the last jump)
        self.last_attempt = 0           # global step of the last jump attempt
        self.snapshots: list[list[int]] = []   # [global_step, virtual_step], oldest first, at most `window`
        self.jumps: list[dict] = []
        self.seconds = {"train": 0.0, "eval": 0.0, "backtest": 0.0, "jump": 0.0, "snapshot": 0.0}
        self.train_steps = 0
        self._step_started: float | None = None
        self._heldout = None

    # ------------------------------------------------------------------ ExportableState

    def state(self) -> dict:
        args = {k: getattr(self, k) for k in (
            "method", "every", "horizon", "window", "tolerance", "task", "task_args", "eval_prompts",
            "snapshot_every", "max_horizon", "grow", "shrink", "collapse", "optimizer_state", "methods",
            "method_params", "max_backtest_error", "snapshot_dir", "keep_snapshots", "eval_batch_size", "verbose")}
        attrs = {k: getattr(self, k) for k in (
            "current_horizon", "offset", "segment_start", "last_attempt", "snapshots", "jumps", "seconds",
            "train_steps")}
        return {"args": args, "attributes": json.loads(json.dumps(attrs))}

    def state_dict(self) -> dict:
        return self.state()

    def load_state_dict(self, state: dict) -> None:
        for key, value in state["attributes"].items():
            setattr(self, key, value)

    # ------------------------------------------------------------------ snapshots on disk

    def _dir(self, args) -> Path:
        return Path(self.snapshot_dir or Path(args.output_dir) / ".rlcast-accelerate")

    @staticmethod
    def _trainable(model) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in model.named_parameters() if p.requires_grad}

    def _write(self, folder: Path, model) -> None:
        """Trainable tensors of `model` -> folder/model.safetensors (+ config.json), written atomically."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
        # CPU parameters are written from their own storage (no copy); GPU ones come over to the CPU for the write
        tensors = {n: p.detach().cpu().contiguous() for n, p in self._trainable(model).items()}
        save_file(tensors, str(tmp / SNAPSHOT_FILE), metadata={"format": "pt"})
        config = getattr(model, "config", None)
        if config is not None:
            (tmp / "config.json").write_text(config.to_json_string())
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)

    def _snapshot(self, args, state, model) -> None:
        start = _clock()
        virtual = state.global_step + self.offset
        self._write(self._dir(args) / f"step-{virtual}", model)
        self.snapshots = [s for s in self.snapshots if s[1] != virtual] + [[state.global_step, virtual]]
        while len(self.snapshots) > self.window:
            _, old = self.snapshots.pop(0)
            shutil.rmtree(self._dir(args) / f"step-{old}", ignore_errors=True)
        self.seconds["snapshot"] += _clock() - start

    def _run(self, args, virtual_steps: list[int]):
        """The snapshots as a Run: base = the first (the anchor), checkpoints at steps counted from it."""
        from rlcast.io.checkpoints import load_run

        root, anchor = self._dir(args), virtual_steps[0]
        run = load_run(base=root / f"step-{anchor}",
                       checkpoints={v - anchor: root / f"step-{v}" for v in virtual_steps[1:]})
        run.root = root  # caches (rank-1 factors) go inside the snapshot folder and leave with it
        return run

    def _restore(self, args, model, virtual: int) -> None:
        """Copy the snapshot at `virtual` back into the parameters (exact: stored in the parameters' dtype)."""
        params = self._trainable(model)
        with torch.no_grad(), safe_open(str(self._dir(args) / f"step-{virtual}" / SNAPSHOT_FILE), "pt") as f:
            for name in f.keys():
                params[name].copy_(f.get_tensor(name))

    # ------------------------------------------------------------------ extrapolation

    def extrapolator(self, method: str, virtual_steps: list[int], args):
        """`method` fitted on the snapshots at `virtual_steps` (the first is the anchor; steps relative to it)."""
        from rlcast.methods import make_extrapolator

        params = {"selection": "all"} | self.method_params.get(method, {})  # every trainable tensor moves
        return make_extrapolator(method, **params).fit(self._run(args, virtual_steps))

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

    def _choose(self, args) -> tuple[str | None, dict[str, float]]:
        """The method to jump with and every candidate's back-test error (auto), or the fixed method."""
        if self.method != "auto":
            return self.method, {}
        errors = {}
        for name in self.candidates:
            if _methods()[name].min_checkpoints + 2 > len(self.snapshots):
                continue
            try:
                errors[name] = self.backtest(name, args)
            except RlcastError as err:  # e.g. a method that needs per-checkpoint accuracy: not available live
                log.info("back-test of %s skipped: %s", name, err)
        finite = {k: v for k, v in errors.items() if math.isfinite(v)}
        if not finite:
            return None, errors
        best = min(finite, key=finite.get)
        too_far = self.max_backtest_error is not None and finite[best] > self.max_backtest_error
        return (None if too_far else best), errors

    # ------------------------------------------------------------------ held-out check

    def _reward(self, model, tokenizer) -> float:
        from rlcast.evaluation.generation import evaluate
        from rlcast.evaluation.tasks import get_task

        if self._heldout is None:
            self._heldout = _HeldOut(get_task(self.task, self.task_args), self.eval_prompts)
        start = _clock()
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            result = evaluate(model, self._heldout, n_prompts=self.eval_prompts, greedy=True, seed=0,
                              tokenizer=tokenizer, batch_size=self.eval_batch_size, progress=False,
                              backend="transformers")
        finally:
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
            self.seconds["eval"] += _clock() - start
        return result.mean_reward

    # ------------------------------------------------------------------ the jump

    def _apply(self, predictions, model) -> bool:
        """Copy predictions into the trainable parameters one tensor at a time; False at the first non-finite one."""
        params = self._trainable(model)
        with torch.no_grad():
            for name, tensor in predictions:
                param = params.get(name)
                if param is None:
                    continue
                if not torch.isfinite(tensor).all():
                    return False
                param.copy_(tensor.to(param.dtype))
        return True

    def _reset_moments(self, optimizer, model) -> None:
        inner = getattr(optimizer, "optimizer", optimizer)
        for param in self._trainable(model).values():
            inner.state.pop(param, None)

    def jump(self, args, state, model, tokenizer, optimizer=None) -> dict:
        """One attempt: choose, check before, extrapolate H steps ahead, check after, keep or roll back."""
        step, virtual = state.global_step, state.global_step + self.offset
        horizon = int(self.current_horizon)
        entry = {"step": step, "virtual_step": virtual, "horizon": horizon, "method": None, "backtest_error": None,
                 "backtest": {}, "reward_before": None, "reward_after": None, "kept": False, "reason": ""}
        start = _clock()
        method, errors = self._choose(args)
        self.seconds["backtest"] += _clock() - start
        entry["backtest"] = {k: round(v, 6) for k, v in errors.items()}
        if method is None:
            entry["reason"] = "no method back-tests within max_backtest_error" if errors else "no method fits"
            return entry
        entry["method"], entry["backtest_error"] = method, errors.get(method)
        before = self._reward(model, tokenizer)
        entry["reward_before"] = before
        start = _clock()
        finite = self._apply(self.predict(method, virtual + horizon, args), model)
        self.seconds["jump"] += _clock() - start
        after = self._reward(model, tokenizer) if finite else float("nan")
        entry["reward_after"] = None if math.isnan(after) else after
        if not finite:
            entry["reason"] = "non-finite weights"
        elif after < before - self.tolerance:
            entry["reason"] = f"held-out reward dropped by {before - after:.4f} > tolerance {self.tolerance}"
        elif before > 0 and after < (1 - self.collapse) * before:
            entry["reason"] = f"held-out reward collapsed ({before:.4f} -> {after:.4f})"
        else:
            entry["kept"], entry["reason"] = True, "held-out reward within tolerance"
        if entry["kept"]:
            self.offset += horizon
            if self.optimizer_state == "reset" and optimizer is not None:
                self._reset_moments(optimizer, model)
            for _, old in self.snapshots:
                shutil.rmtree(self._dir(args) / f"step-{old}", ignore_errors=True)
            self.snapshots = []
            self._snapshot(args, state, model)    # the jumped weights anchor the next window
            self.segment_start = step
            self.current_horizon = min(self.max_horizon, max(horizon + 1, round(horizon * self.grow)))
        else:
            self._restore(args, model, virtual)
            self.current_horizon = max(1, int(horizon * self.shrink))
        return entry

    # ------------------------------------------------------------------ trainer events

    def on_train_begin(self, args, state, control, model=None, **kwargs):
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
        due = (step - self.last_attempt >= self.every and step < state.max_steps
               and self._at_generation_boundary(args, state))
        if due or (step - self.segment_start) % self.snapshot_every == 0:
            self._snapshot(args, state, model)
        if not due:
            return
        needed = min(_methods()[m].min_checkpoints + 1 + (self.method == "auto") for m in self.candidates)
        if len(self.snapshots) < needed:
            return
        self.last_attempt = step
        entry = self.jump(args, state, model, processing_class, optimizer)
        self.jumps.append(entry)
        state.log_history.append({f"accelerate/{k}": v for k, v in entry.items() if k != "step"} | {"step": step})
        if self.verbose:
            self._print(entry)

    def _print(self, entry: dict) -> None:
        from rich.console import Console

        if entry["method"] is None:
            text = f"step {entry['step']}: no jump ({entry['reason']})"
        else:
            after = "nan" if entry["reward_after"] is None else f"{entry['reward_after']:.3f}"
            verdict = "[green]kept[/]" if entry["kept"] else f"[red]rolled back[/] ({entry['reason']})"
            text = (f"step {entry['step']}: jump +{entry['horizon']} with {entry['method']} "
                    f"reward {entry['reward_before']:.3f} -> {after}: {verdict}")
        Console(stderr=True).print(f"[bold]accelerate[/] {text}", highlight=False, soft_wrap=True)

    def on_train_end(self, args, state, control, **kwargs):
        if not self.keep_snapshots:
            shutil.rmtree(self._dir(args), ignore_errors=True)

    # ------------------------------------------------------------------ reporting

    def summary(self) -> dict:
        """Jumps tried / kept, steps gained, and the acceleration's cost in step-equivalents: the time of its checks,
        back-tests, jumps and snapshots over the mean optimizer-step time (CPU time on CPU, see `_clock`)."""
        step_time = self.seconds["train"] / self.train_steps if self.train_steps else float("nan")
        overhead = self.seconds["eval"] + self.seconds["backtest"] + self.seconds["jump"] + self.seconds["snapshot"]
        return {"attempts": len(self.jumps), "kept": sum(j["kept"] for j in self.jumps),
                "rolled_back": sum(j["method"] is not None and not j["kept"] for j in self.jumps),
                "steps_gained": sum(j["horizon"] for j in self.jumps if j["kept"]),
                "mean_step_seconds": step_time, "seconds": dict(self.seconds),
                "cost_step_equivalents": overhead / step_time if step_time == step_time and step_time > 0 else None}

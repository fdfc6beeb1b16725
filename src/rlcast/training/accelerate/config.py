"""`AccelerateConfig`: the callback's settings, frozen, JSON-serialisable and checked at construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rlcast.errors import RlcastError, check_int, check_number
from rlcast.extrapolation import METHODS, Extrapolator, make_extrapolator
from rlcast.io.records import json_safe

# auto's default candidates, chosen on tuning seeds (100, 101) of the steady preset: alpharl-step and rre back-tested
# at 2-5x the error of standing still on every attempt (never chosen), next retrains its MLPs at every fit
AUTO_METHODS = ("weight-linear", "drift", "relex")
MAX_COUNT = 10**9  # the largest step count, window or prompt count a setting may take (a bigger one is a typo)


def label(method) -> str:
    """A method's name: the string itself, or an Extrapolator instance's `label()`."""
    return method if isinstance(method, str) else method.label()


def min_checkpoints(method) -> int:
    """Snapshots a fit of `method` needs besides the anchor."""
    return METHODS[method].min_checkpoints if isinstance(method, str) else method.min_checkpoints


def _check_method(method) -> None:
    if not isinstance(method, str):
        if not isinstance(method, Extrapolator):
            raise RlcastError(f"accelerate: method {method!r} is neither a name nor an Extrapolator")
        return
    if method == "alpharl":
        raise RlcastError("accelerate: alpharl needs an evaluated accuracy for every snapshot, which a live run "
                          "does not have; use alpharl-step (the same rank-1 path, extrapolated in the step)")
    if method not in METHODS:
        known = ", ".join(m for m in METHODS if m != "alpharl")
        raise RlcastError(f"accelerate: unknown method {method!r}; known: auto, {known}")


@dataclass(frozen=True)
class AccelerateConfig:
    """Settings of `AccelerateCallback` (docs/JUMPS.md). A method is a name or an Extrapolator; the rest is JSON.

    method: "auto", a registered method (not alpharl) or an Extrapolator; every: steps between jump attempts;
    horizon: first jump length H (then grown by `grow` / shrunk by `shrink`, capped at `max_horizon`, default 8 H);
    window: snapshots kept (the anchor included), taken every `snapshot_every` steps (default every // (window - 1));
    tolerance: largest drop of the check reward (train prompts) kept; collapse: relative drop always rolled back;
    task / task_args / eval_prompts / eval_batch_size: the check; optimizer_state: "keep" or "reset" Adam's moments
    after a kept jump; methods: auto's candidates (default AUTO_METHODS); method_params: {name: {param: value}} for
    `make_extrapolator`; max_backtest_error: skip the jump when the best back-test error is >= this (None: no
    back-test of a fixed method, no limit for auto); snapshot_dir: where the snapshots go, in a folder of their own
    (`snapshots.FOLDER`, the only thing ever deleted; never the run's output folder, inside or around it, nor the
    model), default OUTPUT_DIR. Every number is checked here (type, finite, range): a bad one never reaches a jump.
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
        # every number checked for type, finiteness and range here, where it enters (a NaN tolerance would keep
        # every jump; a zero batch size would fail at each attempt, after training started)
        for name in ("every", "horizon", "window", "eval_prompts", "eval_batch_size"):
            check_int(getattr(self, name), f"accelerate: {name}", 1, MAX_COUNT)
        for name in ("snapshot_every", "max_horizon"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), f"accelerate: {name}", 1, MAX_COUNT)
        check_number(self.tolerance, "accelerate: tolerance", 0, 1)
        check_number(self.collapse, "accelerate: collapse", 0, 1, above=True)
        check_number(self.shrink, "accelerate: shrink", 0, 1, above=True)
        check_number(self.grow, "accelerate: grow", 1, 100)
        if self.max_backtest_error is not None:
            check_number(self.max_backtest_error, "accelerate: max_backtest_error", 0, above=True)
        for name in ("task", "optimizer_state") + (("snapshot_dir",) if self.snapshot_dir is not None else ()):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise RlcastError(f"accelerate: {name} must be a non-empty string (got {getattr(self, name)!r:.60})")
        for name in ("task_args", "method_params"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), dict):
                raise RlcastError(f"accelerate: {name} must be a JSON object (got {getattr(self, name)!r:.60})")
        for name in ("keep_snapshots", "verbose"):
            if not isinstance(getattr(self, name), bool):
                raise RlcastError(f"accelerate: {name} must be true or false (got {getattr(self, name)!r:.60})")
        if self.optimizer_state not in ("keep", "reset"):
            raise RlcastError(f"accelerate: optimizer_state must be keep or reset (got {self.optimizer_state!r})")
        if self.method != "auto":
            _check_method(self.method)
        for m in self.methods or []:
            _check_method(m)
        # a fit needs the anchor + min_checkpoints snapshots; a back-test one more (the snapshot it predicts)
        if self.method == "auto":
            candidates = list(self.methods or AUTO_METHODS)
            if not any(min_checkpoints(m) + 2 <= self.window for m in candidates):
                need = min(min_checkpoints(m) for m in candidates) + 2
                raise RlcastError(f"accelerate: window {self.window} is shorter than auto needs (back-testing "
                                  f"{', '.join(map(label, candidates))} needs at least {need} snapshots)")
        elif min_checkpoints(self.method) + 1 + self.backtesting > self.window:
            need = min_checkpoints(self.method) + 1 + self.backtesting
            raise RlcastError(f"accelerate: window {self.window} is shorter than method {label(self.method)} needs "
                              f"({need} snapshots: an anchor, {min_checkpoints(self.method)} more"
                              f"{' and one to back-test on' if self.backtesting else ''})")
        stray = sorted(set(self.method_params or {}) - {label(m) for m in self.candidates})
        if stray:
            raise RlcastError(f"accelerate: method_params for {', '.join(map(str, stray))}: not among the methods "
                              f"({', '.join(label(m) for m in self.candidates)})")
        for m in self.candidates:  # a method's bad parameter fails now, not at each jump attempt
            if isinstance(m, str):
                given = (self.method_params or {}).get(m, {})
                if not isinstance(given, dict):
                    raise RlcastError(f"accelerate: method_params.{m} must be a JSON object (got {given!r:.60})")
                make_extrapolator(m, **({"selection": "all"} | given))
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
        return [m for m in self.methods or AUTO_METHODS if min_checkpoints(m) + 2 <= self.window]

    def to_json(self) -> dict:
        """The settings as JSON (an Extrapolator instance as its label: such a config cannot be rebuilt from JSON)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["method"] = label(self.method)
        data["methods"] = None if self.methods is None else [label(m) for m in self.methods]
        return json_safe(data)

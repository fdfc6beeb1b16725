"""Which extrapolator a jump uses: each candidate fitted on the window but its last snapshot, scored on that one."""

from __future__ import annotations

import logging
import math

from safetensors import safe_open

from rlcast.extrapolation import Extrapolator, make_extrapolator
from rlcast.training.accelerate.config import AccelerateConfig, min_checkpoints
from rlcast.training.accelerate.snapshots import SNAPSHOT_FILE, SnapshotWindow

log = logging.getLogger("rlcast.accelerate")


def fit(method, window: SnapshotWindow, virtual_steps: list[int], method_params: dict | None) -> Extrapolator:
    """`method` (a name or an Extrapolator), fresh, fitted on the snapshots at `virtual_steps` (the first: the anchor).

    A name is built by `make_extrapolator` with selection "all" (every trainable tensor moves) and its
    `method_params`; an instance is copied unfitted by `make_extrapolator`, so the user's object stays untouched.
    """
    params = {}
    if isinstance(method, str):
        params = {"selection": "all"} | (method_params or {}).get(method, {})
    return make_extrapolator(method, **params).fit(window.run(virtual_steps))


def backtest_error(method, window: SnapshotWindow, method_params: dict | None) -> float:
    """Fit on all snapshots but the last, predict the last: ||P - W_T|| / ||W_T - W_{T-1}|| on the changed tensors
    (>= 1: no better than standing still at the previous snapshot)."""
    steps = window.virtual
    fitted = fit(method, window, steps[:-1], method_params)
    num = den = 0.0
    with safe_open(str(window.folder(steps[-1]) / SNAPSHOT_FILE), "pt") as last, \
            safe_open(str(window.folder(steps[-2]) / SNAPSHOT_FILE), "pt") as prev:
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


def choose(methods: dict, window: SnapshotWindow, config: AccelerateConfig, entry: dict) -> str | None:
    """The label of the method to jump with, from `methods` ({label: name or Extrapolator}); None: skip, the reason
    in `entry`. Back-tests every candidate the window can back-test when `config.backtesting`; a back-test that
    raises marks only that method failed for this attempt (entry["backtest_failed"])."""
    if not config.backtesting:
        return next(iter(methods))
    errors, failed = {}, {}
    for name, spec in methods.items():
        if min_checkpoints(spec) + 2 > len(window):
            continue
        try:
            errors[name] = backtest_error(spec, window, config.method_params)
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
    limit = config.max_backtest_error
    if limit is not None and finite[best] >= limit:
        entry["reason"] = f"best back-test error {finite[best]:.3f} ({best}) >= max_backtest_error {limit}"
        return None
    return best

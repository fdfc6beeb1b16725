"""`ForecastCallback`: the stop rule (`rlcast.forecasting.stop`) inside a training run, at every evaluation.

A TRL / transformers `TrainerCallback`. Its held-out scores come from either
    rlcast train      OUTPUT_DIR/run.json, where `train.ManifestCallback` records each checkpoint's held-out accuracy
                      at on_save (this callback runs after it: callbacks given to `train` follow it), with the
                      reward log of trainer_state.json (read by `rlcast.io.logs.read_log`, like any run folder)
    a plain TRL run   the trainer's eval metrics at on_evaluate (`metric`: default the only eval_* metric in [0, 1]
                      other than the loss and timings), with `reward` from the trainer's log history
At each new score it forecasts the final held-out accuracy at the planned last step (`planned`, else run.json's
config steps, else the trainer's max_steps), and sends `forecast/final`, `forecast/low`, `forecast/high` (90 %
interval of the true accuracy there), `forecast/p_gain` (P(gain >= min_gain)) and `forecast/stop` to the trainer's
loggers (report_to) at this step (`bind(trainer)`, as rlcast train does; unbound: with the trainer's next logs).
With `stop=True` it ends training once P(gain >= min_gain) < `threshold` here and at the evaluation before
(`forecasting.stop.decide`): right after the checkpoint just scored (rlcast train), or with a checkpoint saved at
this evaluation (plain TRL).
A forecast that fails (too few scores yet is no failure: it waits) is logged and skipped: it never ends the user's
run.

    trainer = GRPOTrainer(..., args=GRPOConfig(eval_strategy="steps", eval_steps=50, ...))
    ForecastCallback(stop=True, eval_size=500).bind(trainer)
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

from rlcast.errors import RlcastError
from rlcast.forecasting import Combination, Curve, checked, make_forecaster
from rlcast.forecasting.stop import MIN_GAIN, THRESHOLD, Decision, check_rule, decide
from rlcast.io.logs import read_log

log = logging.getLogger("rlcast.forecast")
SKIPPED = ("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch")


class ForecastCallback(TrainerCallback):
    """Forecast at every evaluation; with `stop`, end a run whose remaining gain is unlikely to reach `min_gain`
    (`model`: the combination to fit, default `Combination()`).

    After each forecast: `decisions` (every `forecasting.stop.Decision`), `failures` ("step N: why" of every skipped
    one), `stopped_at` (the step it ended training at, else None).
    """

    def __init__(self, stop: bool = False, min_gain: float = MIN_GAIN, threshold: float = THRESHOLD,
                 metric: str | None = None, reward: str = "reward", planned: int | None = None,
                 eval_size: int | None = None, model: Combination | None = None, verbose: bool = True):
        check_rule(min_gain, threshold)
        if planned is not None and not (isinstance(planned, int) and planned >= 1):
            raise RlcastError(f"ForecastCallback: planned={planned!r}: expected the run's last step (an integer >= 1)")
        if eval_size is not None and not (isinstance(eval_size, int) and eval_size >= 1):
            raise RlcastError(f"ForecastCallback: eval_size={eval_size!r}: expected a number of prompts >= 1")
        self.stop, self.min_gain, self.threshold = stop, min_gain, threshold
        self.metric, self.reward, self.planned, self.eval_size = metric, reward, planned, eval_size
        self.model, self.verbose = model, verbose
        self.points: dict[int, float] = {}
        self.decisions: list[Decision] = []
        self.failures: list[str] = []
        self.stopped_at: int | None = None
        self._handler = None   # the trainer's CallbackHandler once bound: the loggers get each forecast at its step
        self._pending: dict = {}

    def bind(self, trainer) -> "ForecastCallback":
        """An explicit handle on `trainer` (TRL's events do not pass it; `rlcast train` binds): each forecast then
        reaches every logger (report_to) at its own step. Unbound, it rides on the trainer's next logs, reaching the
        loggers after this callback, and stays in state.log_history. Adds the callback when the trainer does not hold
        it yet; returns self."""
        self._handler = trainer.callback_handler
        if self not in self._handler.callbacks:
            self._handler.add_callback(self)
        return self

    # ------------------------------------------------------------------ trainer events

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        """A plain TRL run: the trainer's eval metric at this step."""
        if not self._safely(state, lambda: self._record(metrics or {}, state.global_step)):
            return
        if self._forecast(args, state, control, self._safely(state, lambda: self._eval_curve(state))):
            control.should_save = True  # the trainer saves right after on_evaluate: training ends on a checkpoint
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending and logs is not None:
            logs.update(self._pending)
            self._pending = {}

    def on_save(self, args, state, control, **kwargs):
        """rlcast train: the checkpoint just scored into OUTPUT_DIR/run.json."""
        folder = Path(args.output_dir)
        if self.points or not (folder / "run.json").is_file():
            return  # scored by the trainer's eval metrics, or not an rlcast run
        curve = self._safely(state, lambda: Curve.from_log(read_log(folder)))
        if curve is not None and self._forecast(args, state, control, curve):
            control.should_training_stop = True  # the checkpoint of this step is saved and scored

    # ------------------------------------------------------------------ the forecast

    def _record(self, metrics: dict, step: int) -> bool:
        name = self.metric or _only_metric(metrics)
        if name is None:
            return False
        value = metrics.get(name, metrics.get(f"eval_{name}"))
        if value is None:
            raise RlcastError(f"no eval metric {name!r} at step {step}; metrics: {', '.join(sorted(metrics))}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise RlcastError(f"eval metric {name} is {value!r} at step {step}, not a held-out accuracy in [0, 1]")
        self.points[int(step)] = float(value)
        return True

    def _eval_curve(self, state) -> Curve:
        steps = np.array(sorted(self.points), dtype=int)
        acc = np.array([self.points[s] for s in steps])
        sd = (np.sqrt(np.maximum(acc * (1 - acc), 1e-4) / self.eval_size) if self.eval_size
              else np.full(len(acc), np.nan))
        logged = sorted({int(h["step"]): float(h[self.reward]) for h in state.log_history
                         if isinstance(h.get(self.reward), (int, float)) and math.isfinite(h[self.reward])
                         and isinstance(h.get("step"), int)}.items())
        return Curve("this run", steps, acc, sd, np.array([s for s, _ in logged], dtype=float),
                     np.array([r for _, r in logged]), None, None, self.eval_size)

    def _forecast(self, args, state, control, curve: Curve | None) -> bool:
        """Forecast on `curve` when it has a new score; True when training should stop."""
        if curve is None or (self.decisions and curve.last <= self.decisions[-1].cutoff):
            return False
        try:
            checked(curve)
        except RlcastError:
            return False  # too few scores yet (or all equal): wait for the next evaluation
        target = max(self.planned or curve.planned or state.max_steps or curve.last, curve.last)
        made = self._safely(state, lambda: decide(curve, target, self.min_gain, self.threshold,
                                                  make_forecaster(self.model or Combination()).fit(curve)))
        if made is None:
            return False
        self.decisions.append(made)
        metrics = {"forecast/final": made.final, "forecast/low": made.final_low, "forecast/high": made.final_high,
                   "forecast/p_gain": made.p_gain, "forecast/stop": float(made.stop)}
        state.log_history.append({**metrics, "step": state.global_step})
        if self._handler is not None:  # as Trainer.log sends its own: every logger, this step
            self._handler.on_log(args, state, control, logs=dict(metrics))
        else:
            self._pending = metrics
        if self.verbose:
            log.warning("forecast at step %d: %s", curve.last, made.line())
        if self.stop and made.stop and curve.last < target:
            self.stopped_at = state.global_step
            log.warning("forecast: training ends at step %d (P(gain >= %g by step %d) = %.2f < %g)",
                        state.global_step, self.min_gain, target, made.p_gain, self.threshold)
            return True
        return False

    def _safely(self, state, work):
        """`work()`, or None with the failure logged and kept: a forecast never ends the user's run."""
        try:
            return work()
        except Exception as err:  # noqa: BLE001 - any failure of ours is skipped, training goes on
            why = f"step {state.global_step}: {type(err).__name__}: {err}"
            self.failures.append(why)
            log.warning("forecast skipped at %s", why)
            return None


def _only_metric(metrics: dict) -> str | None:
    """The one eval_* metric in [0, 1] besides the loss and timings; None when there is none; a one-line error
    naming them when there are several."""
    found = sorted(k for k, v in metrics.items() if k.startswith("eval_") and k not in SKIPPED
                   and isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1)
    if len(found) > 1:
        raise RlcastError(f"several eval metrics could be the held-out accuracy ({', '.join(found)}); pick one with "
                          f"ForecastCallback(metric=...)")
    return found[0] if found else None


"""`rlcast forecast --stop` and `--stop --follow`: the stop rule (`rlcast.forecasting.stop`) as one line per run, and
on a live log at every new validation.

verl has no callback API, so `--follow` re-reads its console log (or any log `rlcast.io.logs` reads) every `poll`
seconds; at each new validation step it forecasts from the scores so far and prints `step N: stop: ...` or
`step N: continue: ...`. It ends on Ctrl-C, or once the log reaches the planned last step (the log's own, else
--target). Until its first forecast it waits for the log to hold 3 validation scores, saying why once (a wrong
--metric too: Ctrl-C ends it). `hindsight` replays both on a finished run beside what running on gave (the demo's
last word).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from rlcast.apps.forecast import RunForecast, forecast_curve, open_source
from rlcast.errors import RlcastError
from rlcast.forecasting import Curve, checked
from rlcast.forecasting.stop import MIN_GAIN, THRESHOLD, Decision, check_rule, decide

POLL = 10.0  # seconds between two reads of a followed log


def decision(result: RunForecast, min_gain: float = MIN_GAIN, threshold: float = THRESHOLD) -> Decision:
    """The stop rule on a forecast of `rlcast.apps.forecast` (its fitted combination, its target)."""
    return decide(result.model.curve_, result.target_step, min_gain, threshold, result.model)


def follow(path: str | Path, target: int | None = None, min_gain: float = MIN_GAIN, threshold: float = THRESHOLD,
           metric: str | None = None, reward: str | None = None, eval_size: int | None = None, poll: float = POLL,
           say: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep) -> Decision | None:
    """Follow the log at `path` as it grows (see the module docstring); the last decision, None when none was made.

    A planned last step is needed (the log's, else `target`): without one the first read says so in one line.
    """
    check_rule(min_gain, threshold)
    seen, waiting, last = 0, None, None
    try:
        while True:
            try:
                curve = open_source(path, None, metric, reward, eval_size)[0]
                checked(curve)
            except RlcastError as err:  # before its first forecast a live log may hold no validation yet: wait
                if seen:
                    raise
                if str(err) != waiting:
                    waiting = str(err)
                    say(f"waiting for validation scores: {waiting}")
                sleep(poll)
                continue
            planned = target if target is not None else curve.planned
            if planned is None:
                raise RlcastError(f"{path}: the log does not record its planned last step: give --target STEP")
            if curve.last > seen:
                seen = curve.last
                last = _decide(curve, max(planned, curve.last), min_gain, threshold)
                say(f"step {curve.last}: {last.line()}")
            if curve.last >= planned:
                return last
            sleep(poll)
    except KeyboardInterrupt:
        return last


def hindsight(curve: Curve, share: float = 0.4, min_gain: float = MIN_GAIN, threshold: float = THRESHOLD) -> dict:
    """On a finished run: its final forecast from `share` of its steps (from its third score when that is later), the
    stop rule at each validation from the third as `--follow` would have printed it (the first stop), and the truth:
    the run's final (the mean of its last 3 scores) and, at the stop, the steps saved and the accuracy lost."""
    curve = checked(curve)
    target, scored = curve.last, curve.steps[curve.steps > 0].astype(int)
    level = {int(s): float(curve.accuracy[(curve.steps > 0) & (curve.steps <= s)][-3:].mean()) for s in scored}
    cut = int(max(scored[2], scored[scored <= share * target].max(initial=0)))
    made = forecast_curve(curve.window(cut), target, min_gain=min_gain).combined
    out = {"cutoff": cut, "target": target, "forecast": {k: made[k] for k in ("median", "low", "high")},
           "final": level[target], "stop": None, "min_gain": min_gain, "threshold": threshold}
    for step in scored[2:]:
        if step >= target:
            break
        decided = _decide(curve.window(int(step)), target, min_gain, threshold)
        if decided.stop:
            out["stop"] = {"step": int(step), "saved": (target - step) / target, "lost": level[target] - level[step],
                           "line": decided.line()}
            break
    return out


def hindsight_lines(told: dict, unit: str = "step") -> list[str]:
    """`hindsight`'s result in two lines of words."""
    f = told["forecast"]
    lines = [f"forecast from {unit} {told['cutoff']} of {told['target']}: {f['median']:.3f} [{f['low']:.3f}, "
             f"{f['high']:.3f}] (90 %); running on gave {told['final']:.3f}"]
    stop = told["stop"]
    if stop is None:
        lines.append(f"stop rule (stop when P(gain >= {told['min_gain']:g}) < {told['threshold']:g} twice in a row): "
                     f"continue at every validation")
    else:
        lines.append(f"stop rule: stop at {unit} {stop['step']} ({stop['line']}): saves {100 * stop['saved']:.0f} % of "
                     f"the {unit}s for {stop['lost']:+.3f} of accuracy")
    return lines


def _decide(curve: Curve, target: int, min_gain: float, threshold: float) -> Decision:
    result = forecast_curve(curve, target, min_gain=min_gain)
    return decision(result, min_gain, threshold)

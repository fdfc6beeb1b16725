"""`LogCurve`, the one curve object every log reader returns, and the choice of its metric and reward.

A reader turns its format into series, {metric name: {step: value}} (the last value logged at a step wins: a resumed
run logs its steps again), and `build` picks the held-out metric (`--metric`, else the only validation metric) and the
training reward (`--reward`, else the format's usual name), checks their values and makes the arrays. Any failure is
one line naming the source and what it holds.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from rlcast.errors import RlcastError
from rlcast.io.files import regular_file
from rlcast.io.manifest import MAX_REWARD, MAX_STEP

# names of held-out metrics: verl >= 0.3 (val-core/ is its headline score, val-aux/ the rest), verl, TRL through
# TensorBoard or wandb (eval/), TRL's trainer_state.json (eval_)
VALIDATION = ("val-core/", "val/", "eval/", "eval_")
TIMING = ("runtime", "per_second", "epoch")  # eval_* keys that time the evaluation or count epochs: no score
SHOWN = 20  # metric names listed in a message at most
MAX_LINE = 2**24  # characters of one line of a text log (verl's step lines are a few KB)

Series = dict[str, dict[int, float]]


@dataclass(frozen=True)
class LogCurve:
    """A run's held-out curve and training reward as read from its log, whatever the format.

    `sd` is each held-out point's own standard deviation (from run.json's intervals, else binomial from `eval_size`,
    else nan). `steps` are the log's own (verl counts from 0, TRL from 1); step 0 of a run folder is its base.
    """

    source: str                     # the file or folder read
    format: str                     # run | trl | verl | tensorboard | csv
    metric: str                     # the held-out metric's name in the source
    steps: np.ndarray               # steps with a held-out value (int, increasing)
    accuracy: np.ndarray
    sd: np.ndarray
    eval_size: int | None = None    # prompts per held-out evaluation (for the noise of a future point)
    reward_metric: str | None = None
    reward_steps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    reward: np.ndarray = field(default_factory=lambda: np.zeros(0))
    planned: int | None = None      # the run's planned last step, when the source records it
    mu: int = 1                     # optimizer steps per generation batch (run.json config num_iterations)
    batches: dict = field(default_factory=dict)  # {step: generation batches} (run.json)
    task: str | None = None
    metrics: tuple[str, ...] = ()   # every metric the source holds


def listing(names) -> str:
    """`a, b, c` (at most SHOWN names, then how many more): what a source holds, for a one-line message."""
    names = sorted(names)
    more = f", ... ({len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return (", ".join(names[:SHOWN]) + more) if names else "none"


def is_validation(name: str) -> bool:
    """Whether `name` is a held-out metric by its prefix (VALIDATION), timings and epoch counters left out."""
    return name.startswith(VALIDATION) and not name.endswith(TIMING)


def binomial_sd(accuracy: np.ndarray, eval_size: int | None) -> np.ndarray:
    """One evaluation's standard deviation on `eval_size` prompts (nan when unknown), floored as run.json's are."""
    if not eval_size:
        return np.full(len(accuracy), np.nan)
    return np.sqrt(np.maximum(accuracy * (1 - accuracy), 1e-4) / eval_size)


def check_eval_size(eval_size) -> int | None:
    if eval_size is not None and (isinstance(eval_size, bool) or not isinstance(eval_size, int)
                                  or not 1 <= eval_size <= MAX_STEP):
        raise RlcastError(f"--eval-size {eval_size!r}: expected a number of validation prompts >= 1")
    return eval_size


def check_step(value, where: str) -> int:
    """A logged step: an integer (or an integral float, as CSV exports write them) in 0 .. 2^63 - 1."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STEP:
        raise RlcastError(f"{where} must be a step number (an integer >= 0, below 2^63), not {value!r:.40}")
    return value


def choose(source: str, fmt: str, series: Series, metric: str | None, default: str | None = None) -> str:
    """The held-out metric: `metric` when the source has it, else `default`, else the only validation metric."""
    if metric is not None:
        if metric not in series:
            raise RlcastError(f"{source}: no metric {metric!r} in this {fmt}; metrics found: {listing(series)}")
        return metric
    if default is not None:
        return default
    candidates = [n for n in series if is_validation(n)]
    core = [n for n in candidates if n.startswith("val-core/")]
    candidates = core or candidates
    if not candidates:
        raise RlcastError(f"{source}: no validation metric ({', '.join(p + '*' for p in VALIDATION)}) in this {fmt}; "
                          f"metrics found: {listing(series)}; name the held-out one with --metric, or score the "
                          f"checkpoints with `rlcast eval RUN`")
    if len(candidates) > 1:
        raise RlcastError(f"{source}: several validation metrics in this {fmt} ({listing(candidates)}); pick one "
                          f"with --metric")
    return candidates[0]


def build(source: str, fmt: str, series: Series, metric: str | None = None, reward: str | None = None,
          rewards: tuple[str, ...] = (), eval_size: int | None = None, default: str | None = None,
          **known) -> LogCurve:
    """The LogCurve of `series`: the held-out metric (`choose`), the reward (`reward`, else the first of `rewards`
    the source has, else none), their values checked: accuracies in [0, 1], rewards finite within +-MAX_REWARD.
    `known`: LogCurve's other fields (planned, mu, batches, task) as the source records them."""
    eval_size = check_eval_size(eval_size)
    name = choose(source, fmt, series, metric, default)
    points = sorted(series.get(name, {}).items())
    for step, value in points:
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise RlcastError(f"{source}: {name} is {value:g} at step {step}, not a held-out accuracy in [0, 1]; "
                              f"name the accuracy with --metric (metrics found: {listing(series)})")
    if reward is not None and reward not in series:
        raise RlcastError(f"{source}: no reward {reward!r} in this {fmt}; metrics found: {listing(series)}")
    reward = reward or next((r for r in rewards if series.get(r)), None)
    logged = sorted(series[reward].items()) if reward else []
    for step, value in logged:
        if not (math.isfinite(value) and abs(value) <= MAX_REWARD):
            raise RlcastError(f"{source}: {reward} is {value!r} at step {step}, not a finite number within "
                              f"+-{MAX_REWARD:g}")
    steps = np.array([s for s, _ in points], dtype=int)
    accuracy = np.array([v for _, v in points], dtype=float)
    return LogCurve(source, fmt, name, steps, accuracy, binomial_sd(accuracy, eval_size), eval_size, reward,
                    np.array([s for s, _ in logged], dtype=float), np.array([v for _, v in logged], dtype=float),
                    metrics=tuple(sorted(series)), **known)


def open_text(path: Path, what: str) -> io.TextIOBase:
    """The regular file `path` as text, gunzipped when it is gzip (by its magic bytes, whatever its name)."""
    path = regular_file(path, what)
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gz else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")


def lines(path: Path, what: str) -> Iterator[str]:
    """The lines of `path` (open_text), each read up to MAX_LINE characters so that memory stays bounded (a line longer
    than that is no log's: a one-line error), a read or decompression failure one line naming the file."""
    try:
        with open_text(path, what) as f:
            for n, line in enumerate(iter(lambda: f.readline(MAX_LINE), ""), start=1):
                if len(line) == MAX_LINE and not line.endswith("\n"):
                    raise RlcastError(f"{path}: line {n} is longer than {MAX_LINE:,} characters: not a {what}")
                yield line
    except (OSError, EOFError, zlib.error) as err:
        raise RlcastError(f"{path}: unreadable {what} ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                          ) from None

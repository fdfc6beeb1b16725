"""verl's console log: one line per step, `step:N - key:value - key:value ...`, as verl's console logger prints it.

A line may carry terminal colour codes and Ray's `(main_task pid=...)` prefix before `step:`; the file may be
gzip-compressed (read transparently). Validation keys start with `val/` (`val-core/` in verl >= 0.3); the training
reward is `critic/score/mean`, the mean score of the step's rollouts. Every step is kept as logged (steps count from 0
in verl before 0.3: the validation at step 9 follows the 10th update). Lines that are not a step's metrics (model
output quoted in the log, config dumps) are skipped; a key:value whose value is not a number is skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

from rlcast.errors import RlcastError
from rlcast.io.logs.curve import LogCurve, Series, build, check_step, lines

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STEP = re.compile(r"(?:^|[\s)\]])step:(\d+) - (.*)$")
PAIR = re.compile(r"^(\S+):(\S+)$")
REWARDS = ("critic/score/mean", "critic/rewards/mean")


def parse(path: Path) -> tuple[Series, int, str]:
    """(series, number of step lines, the first non-empty line) of the log at `path`."""
    series: Series = {}
    count, first = 0, ""
    for line in lines(path, "verl log"):
        line = ANSI.sub("", line).rstrip("\r\n")
        first = first or line.strip()
        match = STEP.search(line)
        if not match:
            continue
        pairs = [PAIR.match(part.strip()) for part in match.group(2).split(" - ")]
        values = {}
        for pair in filter(None, pairs):
            try:
                values[pair.group(1)] = float(pair.group(2))
            except ValueError:
                continue
        if not values:
            continue
        step = check_step(int(match.group(1)), f"{path}: the step of a line")
        count += 1
        for key, value in values.items():
            series.setdefault(key, {})[step] = value
    return series, count, first


def read(path: str | Path, metric: str | None = None, reward: str | None = None,
         eval_size: int | None = None) -> LogCurve:
    """The LogCurve of the verl console log at `path` (plain or gzip)."""
    path = Path(path)
    series, count, first = parse(path)
    if not count:
        shown = repr(first[:60]) + ("..." if len(first) > 60 else "") if first else "an empty file"
        raise RlcastError(f"{path}: not a log rlcast reads (no `step:N - key:value` line of a verl console log, no "
                          f"CSV header with a step column; not run.json, trainer_state.json or TensorBoard events); "
                          f"it starts with {shown}")
    return build(str(path), "verl log", series, metric, reward, REWARDS, eval_size)

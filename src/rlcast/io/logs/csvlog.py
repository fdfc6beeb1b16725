"""A CSV export of logged metrics (wandb, MLflow, a script's own): a step column and one column per metric.

The step column is the first of STEP_COLUMNS in the header; a blank cell (or NaN, as exports write a metric not
logged at that step) is no point; a column with any other non-number (a run name, a timestamp string) is no metric.
wandb's chart exports name a column `<run> - <metric>` with `__MIN`/`__MAX` companions: the companions are dropped and
a prefix shared by every column is cut, so `--metric val/score` names the column `my-run - val/score`. Plain or gzip.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from rlcast.errors import RlcastError
from rlcast.io.logs.curve import LogCurve, Series, build, check_step, lines

STEP_COLUMNS = ("step", "_step", "Step", "global_step")
REWARDS = ("critic/score/mean", "train/reward", "reward", "critic/rewards/mean")
COMPANIONS = ("__MIN", "__MAX")
MAX_FIELD = 2**24  # the longest cell read (csv's own default limit is 128 KB, an error, not a cap)


def step_column(header: list[str]) -> str | None:
    return next((c for c in STEP_COLUMNS if c in header), None)


def is_header(line: str) -> bool:
    """Whether `line` is a CSV header with a step column (how a CSV export without a .csv name is recognised)."""
    try:
        return "," in line and step_column([h.strip() for h in next(csv.reader([line]), [])]) is not None
    except csv.Error:
        return False


def read(path: str | Path, metric: str | None = None, reward: str | None = None,
         eval_size: int | None = None) -> LogCurve:
    """The LogCurve of the CSV file at `path`."""
    path = Path(path)
    csv.field_size_limit(MAX_FIELD)
    rows = csv.reader(lines(path, "CSV file"))
    try:
        header = [h.strip() for h in next(rows, [])]
        step = step_column(header)
        if step is None:
            raise RlcastError(f"{path}: no step column ({', '.join(STEP_COLUMNS)}) in its CSV header; columns: "
                              f"{', '.join(header[:20]) or 'none'}")
        at = header.index(step)
        columns = {i: name for i, name in enumerate(header) if i != at and name and not name.endswith(COMPANIONS)}
        series: Series = {}
        dropped = set()
        for n, row in enumerate(rows, start=2):
            if not row or not "".join(row).strip():
                continue
            cell = row[at].strip() if at < len(row) else ""
            try:
                value = float(cell)
            except ValueError:
                raise RlcastError(f"{path}: line {n}: step {cell!r:.40} is not a number") from None
            s = check_step(value if math.isfinite(value) else cell, f"{path}: line {n}: the step")
            for i, name in columns.items():
                text = row[i].strip() if i < len(row) else ""
                if not text or name in dropped:
                    continue
                try:
                    value = float(text)
                except ValueError:
                    dropped.add(name)
                    continue
                if not math.isnan(value):
                    series.setdefault(name, {})[s] = value
    except csv.Error as err:
        raise RlcastError(f"{path}: unreadable CSV ({err})") from None
    series = {name: points for name, points in series.items() if name not in dropped}
    return build(str(path), "CSV export", strip_run_prefix(series), metric, reward, REWARDS, eval_size)


def strip_run_prefix(series: Series) -> Series:
    """`{"run - val/acc": ...}` -> `{"val/acc": ...}` when every column carries the same `<run> - ` prefix."""
    prefixes = {name.split(" - ", 1)[0] if " - " in name else None for name in series}
    if len(prefixes) != 1 or None in prefixes:
        return series
    return {name.split(" - ", 1)[1]: points for name, points in series.items()}

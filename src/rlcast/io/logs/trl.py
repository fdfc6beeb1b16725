"""TRL's (the HF Trainer's) trainer_state.json: `log_history`, a list of logged dicts with their `step`.

Evaluations log `eval_*` keys (the held-out metric), training steps the `reward` (GRPO: the mean reward of the step's
completions); `max_steps` is the planned last step. An output folder holds the state in its newest `checkpoint-N/`
(or next to them, after `trainer.save_state()`).
"""

from __future__ import annotations

import re
from pathlib import Path

from rlcast.errors import RlcastError
from rlcast.io.files import read_json
from rlcast.io.logs.curve import LogCurve, Series, build, check_step

STATE = "trainer_state.json"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
REWARDS = ("reward",)


def state_file(folder: Path) -> Path | None:
    """The trainer_state.json of an output folder: in its newest checkpoint-N that has one, else in the folder."""
    numbered = sorted(((int(m.group(1)), child) for child in folder.iterdir()
                       if (m := CHECKPOINT.match(child.name)) and (child / STATE).is_file()), key=lambda x: x[0])
    if numbered:
        return numbered[-1][1] / STATE
    return folder / STATE if (folder / STATE).is_file() else None


def read_state(path: Path) -> tuple[Series, int | None]:
    """(series of every numeric key, max_steps or None) of the trainer_state.json at `path`; a bad entry or step is
    one line naming the file and the entry."""
    state = read_json(path, "trainer state")
    history = state.get("log_history", []) if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise RlcastError(f"{path}: unreadable trainer state (log_history is not a list)")
    series: Series = {}
    for i, entry in enumerate(history):
        if not isinstance(entry, dict):
            raise RlcastError(f"{path}: log_history[{i}] must be a JSON object, not {type(entry).__name__}")
        values = {k: float(v) for k, v in entry.items()  # epoch: a counter, not a metric
                  if k not in ("step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not values or "step" not in entry:
            continue
        step = check_step(entry["step"], f"{path}: log_history[{i}].step")
        for key, value in values.items():
            series.setdefault(key, {})[step] = value
    planned = state.get("max_steps")
    planned = planned if isinstance(planned, int) and not isinstance(planned, bool) and planned > 0 else None
    return series, planned


def read(path: str | Path, metric: str | None = None, reward: str | None = None,
         eval_size: int | None = None) -> LogCurve:
    """The LogCurve of a TRL output folder or its trainer_state.json file."""
    path = Path(path)
    file = state_file(path) if path.is_dir() else path
    if file is None:
        raise RlcastError(f"{path}: no {STATE} in this folder or its checkpoint-N folders")
    series, planned = read_state(file)
    return build(str(path), "trainer state", series, metric, reward, REWARDS, eval_size, planned=planned)


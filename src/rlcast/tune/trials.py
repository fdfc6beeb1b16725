"""`rlcast train` runs as the trials of a sweep: the grid of TrainConfig values, the train_fn that trains one grid
point up to a rung and resumes it from its last checkpoint when promoted, and the winner as a ready command line.

Rollout reuse mu (TRL's num_iterations) scales a trial's optimizer steps and checkpoint interval by mu, so every
trial is scored after the same generation batches (as bench/common.py `reuse_rollouts` does), and its lr schedule is
the full run's (schedule_steps = budget x mu) whatever rung it stops at.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import typing
from dataclasses import dataclass
from pathlib import Path

from rlcast.errors import RlcastError
from rlcast.io.manifest import Manifest
from rlcast.io.options import parse_overrides
from rlcast.training.train import HYPERPARAMETERS, TrainConfig, train

Z95 = 1.959963984540054
# set by the sweep itself: the budget (steps), the checkpoint interval (--save-every) and the schedule's length
NOT_AXES = ("steps", "save_every", "schedule_steps")
# TrainConfig fields that `rlcast train` takes as options of their own (the rest go through --hp)
OPTIONS = {"task": "--task", "algo": "--algo", "model": "--model", "seed": "--seed", "eval_prompts": "--eval-prompts"}


class GridError(RlcastError):
    """A --grid item that does not read as FIELD=VALUE,... of TrainConfig (its form, field or a value's type): a
    usage error, which the CLI reports with its usage line and exit code 2."""


def parse_grid(items: list[str], base: TrainConfig) -> dict[str, list]:
    """`["learning_rate=3e-5,6e-5", ...]` -> {field: [typed values]}, every value and every combination checked
    against TrainConfig on top of `base`; the first bad one is a one-line error naming the --grid item (a GridError
    when the item does not parse, else an RlcastError from TrainConfig's checks)."""
    hints = typing.get_type_hints(TrainConfig)
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    grid: dict[str, list] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not text.strip():
            raise GridError(f"--grid {item!r}: expected FIELD=VALUE,VALUE,...")
        if key not in fields:
            raise GridError(f"--grid {item!r}: unknown TrainConfig field {key!r}; known: "
                            f"{', '.join(f for f in fields if f not in NOT_AXES)}")
        if key in NOT_AXES:
            raise GridError(f"--grid {item!r}: {key} is set by the sweep (--budget, --save-every), not a grid axis")
        if key in grid:
            raise GridError(f"--grid {item!r}: {key} is given twice")
        texts = [text] if hints[key] is dict or text.strip().startswith("[") else text.split(",")
        values = []
        for raw in texts:
            try:
                value = parse_overrides(TrainConfig, [f"{key}={raw.strip()}"], [key], "--grid")[key]
            except RlcastError as err:
                raise GridError(str(err)) from None
            try:
                dataclasses.replace(base, **{key: value})
            except RlcastError as err:
                raise RlcastError(f"--grid {key}={raw.strip()}: {err}") from None
            if value in values:
                raise GridError(f"--grid {item!r}: {raw.strip()} is given twice")
            values.append(value)
        grid[key] = values
    if not grid:
        raise RlcastError("give at least one --grid FIELD=VALUE,VALUE,...")
    for combination in _combinations(grid):
        try:
            dataclasses.replace(base, **combination)
        except RlcastError as err:
            raise RlcastError(f"--grid: the combination {_show(combination)}: {err}") from None
    return grid


def _combinations(grid: dict[str, list]):
    keys = list(grid)
    total = [{}]
    for key in keys:
        total = [{**c, key: v} for c in total for v in grid[key]]
    return total


def _show(config: dict) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())


def _sd(ci) -> float | None:
    return None if not ci else (ci[1] - ci[0]) / (2 * Z95)


@dataclass(frozen=True)
class RlcastTrial:
    """train_fn of a sweep over `rlcast train` runs: `base` with a grid point's values, `budget` generation batches
    in all, a held-out evaluation every `save_every` generation batches."""

    base: TrainConfig
    budget: int
    save_every: int

    def config(self, values: dict) -> TrainConfig:
        """The full run of a grid point: what the winner trains (`train_line`)."""
        config = dataclasses.replace(self.base, **values)
        mu = config.num_iterations
        return dataclasses.replace(config, steps=self.budget * mu, save_every=self.save_every * mu)

    def passes(self, values: dict) -> int:
        return dataclasses.replace(self.base, **values).num_iterations

    def __call__(self, values: dict, report) -> None:
        if report.folder is None:
            raise RlcastError("rlcast train trials need a sweep with an output folder (out)")
        full = self.config(values)
        mu = full.num_iterations
        segment = dataclasses.replace(full, steps=report.until * mu, schedule_steps=full.schedule_steps or full.steps)
        folder, manifest = Path(report.folder), Path(report.folder) / "run.json"
        resume = manifest.exists()
        if not resume and any(folder.iterdir()):  # killed before its manifest was written: nothing to keep
            shutil.rmtree(folder)
            folder.mkdir()
        done = max((c.step for c in Manifest.read(manifest).checkpoints), default=0) if resume else 0
        if done < segment.steps:
            train(folder, segment, resume=resume, progress=False)
        run = Manifest.read(manifest)
        report(0, run.base_accuracy, _sd(run.base_ci))
        for entry in run.checkpoints:
            batches = entry.generation_batches if entry.generation_batches is not None else entry.step // mu
            if not report(batches, entry.accuracy, _sd(entry.ci)):
                break


def train_line(trial: RlcastTrial, values: dict, given: dict, out: str) -> str:
    """The `rlcast train` command of the winner's full run: the options the user gave the sweep (`given`: preset,
    task, task_arg, model, lora, hp) and the winning values."""
    config = trial.config(values)
    words = ["rlcast", "train", "--preset", given.get("preset", "default")]
    fixed = {k: v for k, v in given.items() if k in OPTIONS or k in ("lora", "task_arg")}
    for key, value in fixed.items():
        if key in values:
            continue
        if key == "lora":
            words.append("--lora" if value else "--no-lora")
        elif key == "task_arg":
            for arg in value:
                words += ["--task-arg", arg]
        else:
            words += [OPTIONS[key], str(value)]
    hps = [h for h in given.get("hp", []) if h.partition("=")[0].strip().replace("-", "_") not in values]
    for key, value in values.items():
        if key in OPTIONS:
            words += [OPTIONS[key], str(value)]
        elif key == "lora":
            words.append("--lora" if value else "--no-lora")
        elif key == "task_args":
            for k, v in value.items():
                words += ["--task-arg", f"{k}={v}"]
        elif key in HYPERPARAMETERS:
            hps.append(f"{key}={_value(value)}")
    for hp in hps:
        words += ["--hp", hp]
    words += ["--steps", str(config.steps), "--save-every", str(config.save_every), "--out", out]
    return shlex.join(words)


def _value(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)

"""run.json, the manifest of a run: what the run is (base, task, config) and what it reached (held-out accuracies).

Read (with the whole schema check) and written only here. Format 2, written by `rlcast train` and `rlcast continue`:

    {"format": 2, "config": {TrainConfig's fields}, "base": PATH, "task": SPEC, "task_args": {...}, "algo": NAME,
     "eval": "greedy, test split", "base_accuracy": A, "base_ci": [LO, HI],
     "checkpoints": [{"step": N, "path": "checkpoint-N", "accuracy": A, "ci": [LO, HI], "train_reward": R,
                      "generation_batches": G, "completions": C, "tokens": T}, ...],
     "steps_done": N, "status": "running" | "interrupted" | "finished", "started": TIME, "finished": TIME,
     "continued_from": {"run": PATH, "step": N, "optimizer": NAME, "weights": PATH | "prediction": {...}}}

Format 1 (no "format" key: older rlcast, hand-written manifests) has the same base, task, accuracy and checkpoint
fields and loose settings ("lora", "hparams", ...) instead of the config; keys this rlcast does not know are kept as
read. Every field is optional but `config` in format 2; a field of the wrong type is a one-line error naming the file
and the field.
"""

from __future__ import annotations

import math
import reprlib
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

from rlcast.errors import RlcastError
from rlcast.io.atomic import write_json_atomic
from rlcast.io.files import read_json

FORMAT = 2  # the format rlcast writes; 1 (no "format" key) stays readable
MAX_STEP = 2**63 - 1  # steps and counts must fit a 64-bit integer (numpy, torch and the trainers hold them so)
MAX_REWARD = 1e12  # |train_reward| above this is no reward a run logs (1e308 overflows every fit of the curve)


def _show(value) -> str:
    """`str 'high'`, `int 123`: the type and a short repr of a bad value (a message stays one line)."""
    return f"{type(value).__name__} {reprlib.repr(value)}"


class _Fields:
    """Typed reads of the keys of one JSON object, each failure a one-line error naming the file and the field."""

    def __init__(self, data, where: str, prefix: str = ""):
        self.where, self.prefix = where, prefix
        if not isinstance(data, dict):
            raise RlcastError(f"{where}: {prefix.rstrip('.') or 'the manifest'} must be a JSON object, not "
                              f"{_show(data)}")
        self.data = data

    def fail(self, key: str, expected: str):
        raise RlcastError(f"{self.where}: {self.prefix}{key} must be {expected}, not {_show(self.data[key])}")

    def get(self, key: str, kind: type | tuple, expected: str):
        value = self.data.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
            self.fail(key, expected)
        return value

    def text(self, key: str) -> str | None:
        return self.get(key, str, "a string")

    def object(self, key: str) -> dict | None:
        return self.get(key, dict, "a JSON object")

    def step(self, key: str) -> int | None:
        value = self.data.get(key)
        if isinstance(value, str) and value.strip().isdigit():  # hand-written manifests: "20"
            return int(value)
        value = self.get(key, int, "a step number (an integer >= 0)")
        if value is not None and value < 0:
            self.fail(key, "a step number (an integer >= 0)")
        if value is not None and value > MAX_STEP:
            self.fail(key, "a step number below 2^63")
        return value

    def count(self, key: str) -> int | None:
        """A positive integer setting (steps, prompts), below MAX_STEP."""
        value = self.get(key, int, "an integer >= 1")
        if value is not None and not 1 <= value <= MAX_STEP:
            self.fail(key, "an integer in 1 .. 2^63 - 1")
        return value

    def accuracy(self, key: str) -> float | None:
        value = self.get(key, (int, float), "a number in [0, 1]")
        if value is not None and not (math.isfinite(value) and 0 <= value <= 1):
            self.fail(key, "a number in [0, 1]")
        return None if value is None else float(value)

    def number(self, key: str, bound: float = math.inf) -> float | None:
        expected = "a finite number" + (f" within +-{bound:g}" if bound < math.inf else "")
        value = self.get(key, (int, float), expected)
        if value is not None and not (math.isfinite(value) and abs(value) <= bound):
            self.fail(key, expected)
        return None if value is None else float(value)

    def interval(self, key: str) -> list[float] | None:
        value = self.data.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
            self.fail(key, "a pair of numbers (low, high)")
        return None if value is None else [float(v) for v in value]

    def rest(self, known: tuple[str, ...]) -> dict:
        return {k: v for k, v in self.data.items() if k not in known}


@dataclass
class Entry:
    """One checkpoint of the manifest: its step, its folder (relative to the run), its held-out accuracy, and for RL
    runs the rollout batches generated until then (`generation_batches`: the cost a run pays for), the completions
    and the completion tokens generated until then (`completions`, `tokens`: what rollout methods that skip prompts
    or generate in rounds change; training.rollouts)."""
    step: int
    path: str | None = None
    accuracy: float | None = None
    ci: list[float] | None = None
    train_reward: float | None = None
    generation_batches: int | None = None
    completions: int | None = None
    tokens: int | None = None
    extra: dict = field(default_factory=dict)  # keys this rlcast does not know, kept as read

    KEYS = ("step", "path", "accuracy", "ci", "train_reward", "generation_batches", "completions", "tokens")

    @classmethod
    def parse(cls, data, where: str, prefix: str) -> Entry:
        f = _Fields(data, where, prefix)
        step = f.step("step")
        if step is None:
            raise RlcastError(f"{where}: {prefix}step is missing")
        return cls(step=step, path=f.text("path"), accuracy=f.accuracy("accuracy"), ci=f.interval("ci"),
                   train_reward=f.number("train_reward", MAX_REWARD), generation_batches=f.step("generation_batches"),
                   completions=f.step("completions"), tokens=f.step("tokens"), extra=f.rest(cls.KEYS))

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in self.KEYS if getattr(self, k) is not None}
        return out | self.extra


@dataclass
class Manifest:
    """run.json as typed fields (module docstring); `Manifest.read(path)` checks the whole schema."""
    format: int = FORMAT
    config: dict | None = None          # TrainConfig's fields (format 2), resolved: what the run really used
    base: str | None = None             # the base model folder, absolute or relative to the run folder
    task: str | None = None
    task_args: dict = field(default_factory=dict)
    algo: str | None = None
    eval: str | None = None             # how the accuracies were measured
    base_accuracy: float | None = None
    base_ci: list[float] | None = None
    checkpoints: list[Entry] = field(default_factory=list)
    steps_done: int | None = None
    status: str | None = None           # running | interrupted | finished
    started: str | None = None
    finished: str | None = None
    continued_from: dict | None = None  # rlcast continue: {run, step, optimizer, weights | prediction}
    extra: dict = field(default_factory=dict)  # keys this rlcast does not know (format 1's settings), kept as read
    path: Path | None = field(default=None, compare=False)  # the file it was read from (for messages)

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """The manifest in the file `path`; unreadable JSON or a field of the wrong type is a one-line error."""
        path = Path(path)
        return cls.parse(read_json(path, "run manifest"), path)

    @classmethod
    def parse(cls, data, path: str | Path | None = None) -> Manifest:
        """The manifest from the decoded JSON `data` (the file `path` names the errors)."""
        where = str(path or "run.json")
        f = _Fields(data, where)
        version = data.get("format", 1)
        if isinstance(version, bool) or version not in (1, 2):
            raise RlcastError(f"{where}: format {_show(version)} is not one this rlcast reads (1 or {FORMAT}; "
                              "written by a newer rlcast?)")
        config = f.object("config")
        if version == 2 and config is None:
            raise RlcastError(f"{where}: config is missing (format 2 stores the run's config)")
        if config is not None:
            c = _Fields(config, where, "config.")
            for key in ("max_completion_length", "steps", "num_iterations", "eval_prompts", "save_every"):
                c.count(key)  # what forecast, resume and continue compute with: a bad one fails here, named
            c.get("lora", bool, "true or false")
        continued = f.object("continued_from")
        if continued is not None:
            c = _Fields(continued, where, "continued_from.")
            if not (c.text("run") and c.step("step") is not None and c.text("optimizer")):
                raise RlcastError(f"{where}: continued_from needs run, step and optimizer")
        entries = f.get("checkpoints", list, "a list of checkpoint entries") or []
        checkpoints = [Entry.parse(e, where, f"checkpoints[{i}].") for i, e in enumerate(entries)]
        steps = [e.step for e in checkpoints]
        counts = Counter(steps)  # O(n): a run with a reward logged every step has thousands of entries
        dup = next((s for s in steps if counts[s] > 1), None)
        if dup is not None:
            raise RlcastError(f"{where}: checkpoints lists step {dup} twice")
        known = tuple(x.name for x in fields(cls) if x.name not in ("extra", "path"))
        return cls(format=version, config=config, base=f.text("base"), task=f.text("task"),
                   task_args=f.object("task_args") or {}, algo=f.text("algo"), eval=f.text("eval"),
                   base_accuracy=f.accuracy("base_accuracy"), base_ci=f.interval("base_ci"), checkpoints=checkpoints,
                   steps_done=f.step("steps_done"), status=f.text("status"), started=f.text("started"),
                   finished=f.text("finished"), continued_from=continued, extra=f.rest(known),
                   path=Path(path) if path else None)

    def to_json(self) -> dict:
        out = {}
        for x in fields(self):
            value = getattr(self, x.name)
            if x.name in ("extra", "path") or value is None or (x.name == "format" and value == 1):
                continue
            out[x.name] = [e.to_json() for e in value] if x.name == "checkpoints" else value
        return out | self.extra

    def write(self, path: str | Path) -> Path:
        """Write the manifest atomically to `path` (a reader never sees a half-written run.json)."""
        return write_json_atomic(Path(path), self.to_json())

    def record(self, entry: Entry) -> None:
        """Add (or replace) the entry of a checkpoint just evaluated; the list stays sorted by step and steps_done is
        the newest step (a resume may score an older checkpoint whose record an interrupt lost)."""
        self.checkpoints = sorted([e for e in self.checkpoints if e.step != entry.step] + [entry],
                                  key=lambda e: e.step)
        self.steps_done = max(entry.step, self.steps_done or 0)

    @property
    def accuracy(self) -> dict[int, float]:
        """{0: base accuracy, step: accuracy, ...}: the held-out accuracies recorded (steps without one left out)."""
        acc = {0: self.base_accuracy} if self.base_accuracy is not None else {}
        return acc | {e.step: e.accuracy for e in self.checkpoints if e.accuracy is not None}

    def task_spec(self) -> tuple[str, dict | None]:
        """(task spec, task arguments or None) of the run, as `get_task` takes them; no task is a one-line error."""
        if not self.task:
            raise RlcastError(f"{self.path or 'run.json'}: no task in the run manifest; pass --task")
        return self.task, self.task_args or None

    @property
    def completion_budget(self) -> int | None:
        """The completion length the run trained with (format 2), which a prediction of it is evaluated at."""
        return (self.config or {}).get("max_completion_length")

    @property
    def lora(self) -> bool | None:
        """Whether the run trained a LoRA adapter, as the manifest records it (None: not recorded)."""
        return (self.config or {}).get("lora", self.extra.get("lora"))

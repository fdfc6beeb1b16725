"""Verifiable-reward tasks: prompts with gold answers and a scorer in [0, 1].

- `arith`: 2-digit addition and subtraction ("23+45=" -> "68"); a fixed, seeded test split that never overlaps train.
- `rg:<dataset>`: any reasoning-gym dataset (config through `args`), scored by the dataset's own `score_answer`
  on the text inside <answer> tags, with the plain completion as fallback.
- `jsonl:<path>`: one JSON object per line with question/answer fields (names configurable), scored with
  math-verify (gold first), with a numeric fallback.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import reasoning_gym
from math_verify import parse, verify
from reasoning_gym.factory import DATASETS

from rlcast.errors import RlcastError
from rlcast.io.manifest import Manifest

ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class Example:
    prompt: str
    answer: str
    meta: dict = field(default_factory=dict)


def extract_tagged(completion: str) -> str | None:
    """Text inside the last <answer>...</answer> (an unclosed final tag runs to the end), or None."""
    found = ANSWER_TAG.findall(completion)
    return found[-1].strip() if found else None


def last_number(text: str) -> str | None:
    found = NUMBER.findall(text.replace(",", ""))
    return found[-1] if found else None


class Task:
    """A source of prompts with gold answers, and a scorer in [0, 1]. `args`: the arguments `get_task` built it with."""
    name: str = "task"
    max_new_tokens: int = 256
    args: dict = {}

    @property
    def variant(self) -> str:
        """The name with its arguments, e.g. 'arith (ops=+)': what a score was measured on."""
        return task_variant(self.name, self.args)

    def examples(self, split: str, n: int | None, seed: int = 0) -> list[Example]:
        raise NotImplementedError

    def score(self, completion: str, example: Example) -> float:
        raise NotImplementedError

    def _take(self, pool: list[Example], split: str, n: int | None, seed: int) -> list[Example]:
        """A seeded shuffle of the split, first `n` of it (all when n is None)."""
        if split not in ("train", "test"):
            raise RlcastError(f"task {self.name}: unknown split {split!r} (use train or test)")
        if not pool:
            raise RlcastError(f"task {self.name}: the {split} split is empty")
        order = list(range(len(pool)))
        random.Random(seed).shuffle(order)
        return [pool[i] for i in order[: n if n is not None else len(pool)]]


class ArithTask(Task):
    """2-digit arithmetic over `ops` (default + and -: 16 200 problems), split once (fixed seed) into test and train."""
    name = "arith"
    max_new_tokens = 6

    def __init__(self, ops: str = "+-", test_size: int = 1000, split_seed: int = 1234):
        if not ops or set(ops) - set("+-"):
            raise RlcastError(f"task arith: ops must be made of + and - (got {ops!r})")
        problems = [(a, op, b) for a in range(10, 100) for b in range(10, 100) for op in ops]
        random.Random(split_seed).shuffle(problems)
        make = [Example(f"{a}{op}{b}=", str(a + b if op == "+" else a - b), {"a": a, "b": b, "op": op})
                for a, op, b in problems]
        self.splits = {"test": make[:test_size], "train": make[test_size:]}

    def examples(self, split: str, n: int | None, seed: int = 0) -> list[Example]:
        return self._take(self.splits.get(split, []), split, n, seed)

    def score(self, completion: str, example: Example) -> float:
        text = extract_tagged(completion)
        got = last_number(text if text is not None else completion)
        return float(got is not None and got == example.answer)


MIN_TRAIN_PROBLEMS = 20  # fewer distinct training problems than this is no RL task (one prompt repeated, found here)


class ReasoningGymTask(Task):
    """A reasoning-gym dataset; test and train come from different generator seeds, train minus test questions.

    Scored by the dataset's `score_answer` on the <answer> text, else the best of the whole completion, its last
    line and its last number (models that ignore the tag instruction)."""
    max_new_tokens = 256
    instruction = "\nGive only the final answer inside <answer> </answer> tags."

    def __init__(self, dataset: str, args: dict | None = None, test_size: int = 1000, train_size: int = 10000,
                 test_seed: int = 1, train_seed: int = 2):
        if dataset not in DATASETS:
            raise RlcastError(f"unknown reasoning-gym dataset {dataset!r}; known: {', '.join(sorted(DATASETS))}")
        self.name, self.dataset, self.args = f"rg:{dataset}", dataset, dict(args or {})
        self.sizes = {"test": (test_size, test_seed), "train": (train_size, train_seed)}
        self._cache: dict[str, list[Example]] = {}
        try:
            self._scorer = reasoning_gym.create_dataset(dataset, size=1, seed=0, **self.args)
        except (TypeError, ValueError, AssertionError) as err:
            raise RlcastError(f"task {self.name}: bad config {self.args}: {err}") from err

    def _build(self, split: str) -> list[Example]:
        if split not in self._cache:
            size, seed = self.sizes[split]
            data = reasoning_gym.create_dataset(self.dataset, size=size, seed=seed, **self.args)
            items = [Example(e["question"] + self.instruction, str(e["answer"]),
                             {"entry": e}) for e in data]
            if split == "train":
                held_out = {e.prompt for e in self._build("test")}
                items = [e for e in items if e.prompt not in held_out]
                distinct = len({e.prompt for e in items})
                if distinct < MIN_TRAIN_PROBLEMS:  # a small problem space: the test split took nearly all of it
                    raise RlcastError(
                        f"task {self.name} {self.args}: only {distinct} distinct training problem(s) left after "
                        f"holding out the {len(held_out)} distinct test problems; the problem space is too small "
                        f"for disjoint splits: widen the config (e.g. more digits or terms)")
            self._cache[split] = items
        return self._cache[split]

    def examples(self, split: str, n: int | None, seed: int = 0) -> list[Example]:
        if split not in self.sizes:
            return self._take([], split, n, seed)
        return self._take(self._build(split), split, n, seed)

    def score(self, completion: str, example: Example) -> float:
        tagged = extract_tagged(completion)
        lines = [ln.strip() for ln in completion.strip().splitlines() if ln.strip()]
        number = last_number(completion)
        plain = [completion.strip()] + lines[-1:] + ([number] if number else [])
        candidates = [tagged] if tagged is not None else plain
        best = 0.0
        for cand in candidates:
            try:
                best = max(best, float(self._scorer.score_answer(cand, example.meta["entry"]) or 0.0))
            except Exception:  # a dataset scorer choking on junk output scores it 0
                continue
        return min(max(best, 0.0), 1.0)


class JsonlTask(Task):
    """Question/answer pairs from a JSONL file (the test split); train is the same file unless `test_path` is set."""
    max_new_tokens = 512

    def __init__(self, path: str, question_field: str = "question", answer_field: str = "answer",
                 test_path: str | None = None):
        self.name = f"jsonl:{path}"
        self.fields = (question_field, answer_field)
        train = self._read(Path(path))
        self.splits = {"train": train, "test": self._read(Path(test_path)) if test_path else train}

    def _read(self, path: Path) -> list[Example]:
        q, a = self.fields
        if not path.is_file():
            raise RlcastError(f"{path}: no such JSONL file")
        out = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise RlcastError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
            if not isinstance(row, dict) or q not in row or a not in row:
                missing = q if not isinstance(row, dict) or q not in row else a
                raise RlcastError(f"{path}:{lineno}: missing field {missing!r}")
            out.append(Example(str(row[q]), str(row[a]), {"line": lineno}))
        if not out:
            raise RlcastError(f"{path}: empty dataset (no JSON lines)")
        return out

    def examples(self, split: str, n: int | None, seed: int = 0) -> list[Example]:
        return self._take(self.splits.get(split, []), split, n, seed)

    def score(self, completion: str, example: Example) -> float:
        tagged = extract_tagged(completion)
        return float(math_equal(example.answer, tagged if tagged is not None else completion))


def math_equal(gold: str, prediction: str) -> bool:
    """math-verify with the gold first, timeouts off (they use SIGALRM, main thread only); numeric fallback."""
    try:
        g, p = parse(gold, parsing_timeout=None), parse(prediction, parsing_timeout=None)
        if g and p and verify(g, p, timeout_seconds=None):
            return True
    except Exception:  # math-verify raising on odd LaTeX: fall through to the numeric check
        pass
    want, got = last_number(gold), last_number(prediction)
    if want is None or got is None:
        return False
    return math.isclose(float(want), float(got), rel_tol=1e-6, abs_tol=1e-9)


KNOWN_TASKS = ("arith", "rg:<reasoning-gym dataset>", "jsonl:<path>")


def get_task(spec: str, args: dict | None = None) -> Task:
    """'arith', 'rg:<dataset>' (args = dataset config) or 'jsonl:<path>' (args: question_field, answer_field,
    test_path)."""
    args = dict(args or {})
    if spec == "arith":
        unknown = set(args) - {"ops"}
        if unknown:
            raise RlcastError(f"task arith: unknown argument(s) {', '.join(sorted(unknown))} (known: ops)")
        task = ArithTask(**args)
    elif spec.startswith("rg:") and spec[3:]:
        task = ReasoningGymTask(spec[3:], args)
    elif spec.startswith("jsonl:") and spec[6:]:
        unknown = set(args) - {"question_field", "answer_field", "test_path"}
        if unknown:
            raise RlcastError(f"task jsonl: unknown argument(s) {', '.join(sorted(unknown))} "
                              "(known: question_field, answer_field, test_path)")
        task = JsonlTask(spec[6:], **args)
    else:
        raise RlcastError(f"unknown task {spec!r}; known: {', '.join(KNOWN_TASKS)}")
    task.args = args
    return task


def task_variant(spec: str, args: dict | None) -> str:
    """'arith' or 'arith (ops=+)': a task and the arguments that make it one variant of it."""
    shown = ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in sorted((args or {}).items()))
    return f"{spec} ({shown})" if shown else spec


def run_task_spec(manifest: Manifest | None, task: str | None = None,
                  args: dict | None = None) -> tuple[str | None, dict]:
    """(task, arguments) to score a run's models on: the run's own (its run.json `manifest`) unless told otherwise.

    No `task`: the run's task, with `args` when given, else the run's arguments. The run's task named again: its
    arguments unless `args` are given. Another task: `args` (or none). (None, {}) when neither names a task.
    """
    own, own_args = (manifest.task, dict(manifest.task_args)) if manifest is not None else (None, {})
    if task is None or task == own:
        return own, dict(args) if args is not None else own_args
    return task, dict(args or {})

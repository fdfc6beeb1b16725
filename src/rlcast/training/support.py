"""Helpers shared by `runs` and `accelerate`: typed configs from JSON or KEY=VALUE text, and RNG-neutral evaluation.

Both configs (`TrainConfig`, `AccelerateConfig`) are frozen dataclasses of JSON-able fields. `config_from_dict`
rebuilds one from JSON (an unknown key is an error, not silently dropped), `parse_overrides` turns the CLI's
repeatable KEY=VALUE options (`--hp`, `--accel`: typed against the dataclass's annotations; `--task-arg`, `--param`:
free-form) into values.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers.trainer_pt_utils import safe_globals

from rlcast.errors import RlcastError
from rlcast.io.tensors import load_pickle


def config_from_dict(cls, data: dict, where: str):
    """`cls(**data)`; a key `cls` does not have is a one-line error naming `where` (a file or an option)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RlcastError(f"{where}: unknown {cls.__name__} field(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return cls(**data)


def parse_overrides(cls, items: Iterable[str] | None, allowed: Iterable[str] | None, option: str) -> dict:
    """`["key=value", ...]` -> {key: value}: the one KEY=VALUE parser of every repeatable option (`--hp`, `--accel`,
    `--task-arg`, `--param`, the benchmarks' too).

    With a dataclass `cls`, keys (`-` read as `_`) must be in `allowed` and values parse as the field's type: int
    fields take integers, float fields numbers, bool fields true/false, `X | None` fields also `none`; dict fields take
    JSON, list fields JSON or a, b, c. With `cls` None (free-form arguments: a task's, a method's), keys are kept as
    given (any key when `allowed` is None) and values are JSON when they parse (numbers, booleans), else strings.
    Every problem is a one-line RlcastError naming `option` and the item.
    """
    allowed = None if allowed is None else list(allowed)
    hints = typing.get_type_hints(cls) if cls is not None else {}
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_") if cls is not None else key.strip()
        if not sep or not key:
            raise RlcastError(f"{option} {item!r}: expected KEY=VALUE")
        if allowed is not None and key not in allowed:
            raise RlcastError(f"{option} {item!r}: unknown key {key!r}; known: {', '.join(allowed)}")
        try:
            out[key] = _parse(hints[key], text.strip()) if cls is not None else _json_or_text(text)
        except ValueError as err:
            raise RlcastError(f"{option} {item!r}: {err}") from None
    return out


def _json_or_text(text: str):
    """A free-form value: JSON when it parses (3, 0.5, true, [1, 2]), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse(hint, text: str):
    """`text` as a value of the annotation `hint` (int, float, bool, str, dict, list, or a union with None)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    if type(None) in options and text.lower() in ("none", "null"):
        return None
    for kind in (t for t in options if t is not type(None)):
        base = typing.get_origin(kind) or kind
        if base is bool:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
        elif base is int:
            try:
                return int(text)
            except ValueError:
                pass
        elif base is float:
            try:
                return float(text)
            except ValueError:
                pass
        elif base is dict:
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
        elif base in (list, tuple):  # a JSON list or comma-separated strings
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = [x.strip() for x in text.split(",") if x.strip()]
            if isinstance(value, list):
                return value
        elif base is str:
            return text
    names = " or ".join(getattr(t, "__name__", str(t)) for t in options)
    raise ValueError(f"{text!r} is not a valid {names}")


def check_unsharded(model, who: str) -> None:
    """A callback that edits the weights in place needs whole parameters: a model sharded by FSDP (FlatParameter,
    DTensor, an FSDP module) or DeepSpeed ZeRO-3 (parameters carrying `ds_id` / `ds_numel`) is a one-line error
    naming `who` and the first sharded parameter. (TRL's SyncRefModelCallback gathers ZeRO-3 shards instead; a jump or
    a reposition of a shard would need the whole tensor: its SVD, its rank-1 direction.)"""
    wrapper = next((type(m).__name__ for m in model.modules()
                    if "FSDP" in type(m).__name__ or type(m).__name__ == "FullyShardedDataParallel"), None)
    if wrapper is not None:
        raise RlcastError(f"{who}: the model is sharded by FSDP ({wrapper}); this callback edits whole weights in "
                          f"place: train it without parameter sharding (DDP, DeepSpeed ZeRO-1/2)")
    for name, param in model.named_parameters():
        kind = ("DeepSpeed ZeRO-3" if hasattr(param, "ds_id") or hasattr(param, "ds_numel")
                else "FSDP" if type(param).__name__ in ("FlatParameter", "DTensor") else None)
        if kind is not None:
            raise RlcastError(f"{who}: parameter {name} is sharded ({kind}); this callback edits whole weights in "
                              f"place: train it without parameter sharding (DDP, DeepSpeed ZeRO-1/2)")


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore torch's global CPU and CUDA RNG states on exit.

    `evaluate` seeds the global RNG for reproducible prompts and sampling; an evaluation in the middle of training
    (a checkpoint's held-out score, a jump's check) must not change the rollouts that follow it, or a resumed run
    (which restores the RNG saved *before* the evaluation) would diverge from an uninterrupted one.
    """
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


RESUME_PICKLES = re.compile(r"^(rng_state.*\.pth|optimizer\.pt|scheduler\.pt|scaler\.pt)$")  # what a resume unpickles


def check_resume_state(checkpoint: Path) -> None:
    """Load every pickle the Trainer loads when it resumes from `checkpoint` the way it does (weights_only=True, with
    transformers' allowed globals), memory-mapped: one it would refuse (a malicious pickle) or cannot read is a
    one-line error naming the file before any work, not a traceback from inside the training loop."""
    for path in sorted(Path(checkpoint).iterdir()) if Path(checkpoint).is_dir() else ():
        if RESUME_PICKLES.match(path.name):
            with safe_globals():
                load_pickle(path, "trainer state file")

"""The one KEY=VALUE parser of rlcast's repeatable options: `--hp`, `--accel` (typed against a config's fields),
`--task-arg`, `--param` (free-form), in the CLI and the benchmarks alike. Standard library only, so the CLI checks an
option's values before it imports torch.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterable

from rlcast.errors import RlcastError


def parse_overrides(fields, items: Iterable[str] | None, allowed: Iterable[str] | None, option: str) -> dict:
    """`["key=value", ...]` -> {key: value}: the one KEY=VALUE parser of every repeatable option (`--hp`, `--accel`,
    `--task-arg`, `--param`, the benchmarks' too).

    `fields`: a dataclass, or {key: type annotation} (what the CLI checks before it imports the dataclass's module),
    or None. With fields, keys (`-` read as `_`) must be in `allowed` and values parse as the field's type: int
    fields take integers, float fields numbers, bool fields true/false, `X | None` fields also `none`; dict fields take
    JSON, list fields JSON or a, b, c. With `fields` None (free-form arguments: a task's, a method's), keys are kept as
    given (any key when `allowed` is None) and values are JSON when they parse (numbers, booleans), else strings.
    Every problem is a one-line RlcastError naming `option` and the item.
    """
    allowed = None if allowed is None else list(allowed)
    hints = {} if fields is None else dict(fields) if isinstance(fields, dict) else typing.get_type_hints(fields)
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_") if fields is not None else key.strip()
        if not sep or not key:
            raise RlcastError(f"{option} {item!r}: expected KEY=VALUE")
        if allowed is not None and key not in allowed:
            raise RlcastError(f"{option} {item!r}: unknown key {key!r}; known: {', '.join(allowed)}")
        try:
            out[key] = _parse(hints[key], text.strip()) if fields is not None else _json_or_text(text)
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
    words = (WORDS.get(typing.get_origin(t) or t, getattr(t, "__name__", str(t))) for t in options)
    raise ValueError(f"{text!r} is not " + " or ".join(words))


WORDS = {int: "an integer", float: "a number", bool: "true or false", dict: "a JSON object", list: "a list",
         tuple: "a list", str: "a string", type(None): "none"}  # what a value of each type is called in a message

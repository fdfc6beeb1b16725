"""Module selections: which tensors of a model an analysis or a method touches, by name and shape."""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from rlcast.errors import RlcastError

SELECTIONS = ("blocks", "all-2d", "all")
_BLOCK = re.compile(r"(^|\.)(layers|h|blocks|layer)\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """The transformer block index in a tensor name, or None outside the blocks."""
    match = _BLOCK.search(name)
    return int(match.group(3)) if match else None


def parse_name(name: str) -> tuple[int | None, str]:
    """(layer, module type): 'model.layers.3.mlp.up_proj.weight' -> (3, 'mlp.up_proj'); (None, stem) outside blocks."""
    match = _BLOCK.search(name)
    stem = name.removesuffix(".weight")
    return (int(match.group(3)), stem[match.end():]) if match else (None, stem)


def check_selection(selection: str) -> str:
    """`selection` itself, or a one-line error naming the choices (call before any expensive work)."""
    if selection not in SELECTIONS:
        raise RlcastError(f"unknown module selection {selection!r} (choose {', '.join(SELECTIONS)})")
    return selection


def select_names(names: Sequence[str], shapes: Mapping[str, Sequence[int]] | Sequence[Sequence[int]],
                 selection: str = "blocks") -> list[str]:
    """Names in `selection`: "blocks" (2-D weights inside transformer blocks), "all-2d" or "all"."""
    check_selection(selection)
    if not isinstance(shapes, Mapping):
        shapes = dict(zip(names, shapes))
    if selection == "all":
        return list(names)
    if selection == "all-2d":
        return [n for n in names if len(shapes[n]) == 2]
    return [n for n in names if len(shapes[n]) == 2 and layer_of(n) is not None and n.endswith(".weight")]

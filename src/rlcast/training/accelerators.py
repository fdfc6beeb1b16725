"""The live accelerators by name, and the one factory that builds them: `rlcast train --accelerate`, `rlcast demo`
and bench/acceleration.py all call `make_accelerator`.

`jumps` is `AccelerateCallback` (weights extrapolated ahead, checked, kept or rolled back: rlcast.training.accelerate);
`sfpo`, `gxpo` and `rank1` are the lookahead methods of `rlcast.training.lookahead` (each sets TRL's num_iterations).
Settings are the fields of the method's dataclass (`AccelerateConfig` for jumps), given as a dict or as the CLI's
KEY=VALUE items (typed by `support.parse_overrides`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from rlcast.errors import RlcastError
from rlcast.training.accelerate import AccelerateCallback, AccelerateConfig
from rlcast.training.lookahead import LOOKAHEAD, Lookahead
from rlcast.io.options import parse_overrides

ACCELERATORS = ("jumps", *LOOKAHEAD)


def accelerator_class(name: str, what: str = "--accelerate") -> type:
    """The settings dataclass of accelerator `name` (AccelerateConfig for jumps); an unknown name is a one-line error
    naming `what` (the option or setting that gave it)."""
    if name == "jumps":
        return AccelerateConfig
    if name in LOOKAHEAD:
        return LOOKAHEAD[name]
    raise RlcastError(f"{what} {name!r}: known: {', '.join(ACCELERATORS)}")


def accelerator_settings(name: str, items: Iterable[str], option: str = "--accel") -> dict:
    """KEY=VALUE items as the typed settings of accelerator `name` (an unknown key or a bad value: one line naming
    `option` and the item)."""
    cls = accelerator_class(name)
    return parse_overrides(cls, items, [f.name for f in dataclasses.fields(cls)], option)


def make_accelerator(name: str, settings: dict | Iterable[str] = (), *, task: str | None = None,
                     task_args: dict | None = None, what: str = "--accelerate",
                     option: str = "--accel") -> AccelerateCallback | Lookahead:
    """A fresh callback of accelerator `name` with `settings` (a dict of fields, or KEY=VALUE items parsed against
    them). `task` / `task_args`: the run's task, which jumps check on unless `settings` name another (the lookahead
    methods take no task). Bad names and settings fail here, before any training."""
    cls = accelerator_class(name, what)
    if not isinstance(settings, dict):
        settings = accelerator_settings(name, settings, option)
    if cls is AccelerateConfig:
        run_task = {k: v for k, v in (("task", task), ("task_args", task_args or None)) if v is not None}
        return AccelerateCallback(AccelerateConfig(**(run_task | settings)))
    return cls(**settings)

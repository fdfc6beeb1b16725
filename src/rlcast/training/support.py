"""Helpers shared by `train`, `accelerate` and `lookahead`: typed configs from JSON, the check that a model's parameters
are whole, and RNG-neutral evaluation.

Both configs (`TrainConfig`, `AccelerateConfig`) are frozen dataclasses of JSON-able fields. `config_from_dict`
rebuilds one from JSON (an unknown key is an error, not silently dropped); the CLI's KEY=VALUE options are parsed by
`rlcast.io.options.parse_overrides`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
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

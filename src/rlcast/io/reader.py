"""Per-tensor views of a whole run: base weights, weights at a step, deltas `W_t - W_0` formed one tensor at a time."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable

import torch

from rlcast.errors import RlcastError
from rlcast.io.checkpoints import Checkpoint, Run
from rlcast.io.files import read_json
from rlcast.io.lora import Adapter, Delta, LowRankDelta
from rlcast.io.selections import select_names
from rlcast.io.tensors import TensorReader
from rlcast.io.verl import VerlShards, shard_files

_TIED = re.compile(r"(^|\.)lm_head\.weight$")
_EMBED = re.compile(r"(^|\.)(embed_tokens|wte|embed_in|word_embeddings)\.weight$")


def _tied(folder: Path) -> bool:
    try:
        return bool(read_json(folder / "config.json", "model config").get("tie_word_embeddings"))
    except (RlcastError, AttributeError):
        return False


def _finite(tensor: torch.Tensor) -> bool:
    """No NaN/Inf in `tensor`: they propagate through a float64 sum, without a mask the size of the tensor."""
    return not tensor.dtype.is_floating_point or math.isfinite(tensor.sum(dtype=torch.float64).item())


def _subtract(out: torch.Tensor, other: torch.Tensor, chunk: int = 1 << 20) -> None:
    """out -= other, in chunks: a lower-precision `other` (the mapped base) is promoted one chunk at a time."""
    flat_out, flat_other = out.view(-1), other.reshape(-1)
    for i in range(0, flat_out.numel(), chunk):
        flat_out[i:i + chunk].sub_(flat_other[i:i + chunk])


class RunReader:
    """Per-tensor views of a run: base weights, weights at a step, deltas. Keeps readers open, never whole models.

    Tensors are read onto `device` (None: the CPU) unless a call names its own.
    """

    def __init__(self, run: Run, device: torch.device | None = None):
        self.run = run
        self.device = device
        self.base_reader = TensorReader(run.base)
        self._readers: dict[int, TensorReader | VerlShards | Adapter] = {}
        self._tied: dict[int, bool] = {}  # step -> lm_head may be read from the tied embedding

    def __reduce__(self):
        """Pickled as its Run and device: a reader sent to another process (a Ray task) reopens the headers there,
        never ships tensors (a `.bin` checkpoint's state dict is held open here)."""
        return RunReader, (self.run, self.device)

    def names(self) -> list[str]:
        return self.base_reader.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base_reader.shape(name)

    def base(self, name: str, device: torch.device | None = None) -> torch.Tensor:
        return self.base_reader.get(name, torch.float32, self._on(device))

    def _on(self, device: torch.device | None) -> torch.device | None:
        """The device a read goes to: the call's, else the reader's."""
        return self.device if device is None else device

    def reader(self, step: int) -> TensorReader | VerlShards | Adapter:
        """The opened checkpoint (validated once against the base's tensor names, shapes and dtypes)."""
        if step not in self._readers:
            ckpt = self.run.checkpoint(step)
            if ckpt.kind == "lora":
                self._readers[step] = Adapter(ckpt.path, self.names())
            else:
                self._readers[step] = self._check_full(ckpt)
        return self._readers[step]

    def _check_full(self, ckpt: Checkpoint) -> TensorReader | VerlShards:
        reader = VerlShards(ckpt.path) if shard_files(ckpt.path) else TensorReader(ckpt.path)
        base = self.base_reader
        base_names = set(base.names())
        tied = self._tied[ckpt.step] = _tied(ckpt.path) or _tied(self.run.base)
        for name in reader.names():
            if name not in base_names and not (_TIED.search(name) and tied):
                raise RlcastError(f"{reader.file(name)}: tensor {name} is in the checkpoint (step {ckpt.step}) but "
                                  f"not in the base {self.run.base}")
        for name in base.names():
            src = self._source_name(reader, name, tied)
            if src is None:
                raise RlcastError(f"{ckpt.path}: tensor {name} is in the base but not in the checkpoint "
                                  f"(step {ckpt.step})")
            if reader.shape(src) != base.shape(name):
                raise RlcastError(f"{reader.file(src)}: tensor {name} has shape {list(reader.shape(src))} at step "
                                  f"{ckpt.step} but {list(base.shape(name))} in the base")
            d_ckpt, d_base = reader.dtype(src), base.dtype(name)
            if d_ckpt != d_base and not (d_ckpt.is_floating_point and d_base.is_floating_point
                                         and torch.finfo(d_ckpt).eps < torch.finfo(d_base).eps):
                raise RlcastError(f"{reader.file(src)}: tensor {name} is {d_ckpt} at step {ckpt.step} but {d_base} "
                                  "in the base (a lower-precision checkpoint would bury the update in rounding)")
        return reader

    @staticmethod
    def _source_name(reader: TensorReader | VerlShards, name: str, tied: bool) -> str | None:
        """The checkpoint's name for a base tensor; lm_head falls back to the tied embedding."""
        if name in reader:
            return name
        if tied and _TIED.search(name):
            return next((n for n in reader.names() if _EMBED.search(n)), None)
        return None

    def delta(self, step: int, name: str, device: torch.device | None = None) -> Delta:
        """W_step - W_0 in float32 (on `device`, read straight there); LoRA-adapted modules give a LowRankDelta;
        untouched tensors give zeros."""
        device = self._on(device)
        reader = self.reader(step)
        if isinstance(reader, Adapter):
            if name in reader.factors:
                return reader.low_rank(name, device)
            if name in reader.full:
                delta = reader.reader.get(reader.full[name], torch.float32, device) - self.base(name, device)
                return self._checked(delta, reader.reader.file(reader.full[name]), name, step)
            return torch.zeros(self.shape(name), device=device)
        src = self._source_name(reader, name, self._tied[step])
        delta = reader.get(src, torch.float32, device)
        base = self.base_reader.view(name)
        _subtract(delta, base if delta.device == base.device else base.to(delta.device))
        return self._checked(delta, reader.file(src), name, step)

    def _checked(self, delta: torch.Tensor, file: Path, name: str, step: int) -> torch.Tensor:
        if not _finite(delta):
            self._finite_base(name)  # the base's NaN/Inf, named as such
            raise RlcastError(f"{file}: NaN/Inf in tensor {name} at step {step}")
        return delta

    def _finite_base(self, name: str) -> None:
        if not _finite(self.base_reader.view(name)):
            raise RlcastError(f"{self.base_reader.file(name)}: NaN/Inf in tensor {name} of the base")

    def open(self, steps: Iterable[int]) -> None:
        """Open the checkpoints `steps`: their headers, tensor names, shapes and dtypes checked against the base
        (no tensor data read), so a bad file fails before the work that reads them."""
        for step in steps:
            self.reader(step)

    def check(self, steps: Iterable[int]) -> None:
        """Read every tensor of the base and of the checkpoints `steps` once, before expensive work on them (scoring
        a model): a corrupt file, or NaN/Inf in any weight, is a one-line error naming the file, tensor and step."""
        steps = list(steps)
        self.open(steps)
        for name in self.names():
            self._finite_base(name)
            for step in steps:
                self.delta(step, name)

    def weight(self, step: int, name: str, device: torch.device | None = None) -> torch.Tensor:
        """The float32 weight at a step (0 = base), on `device`."""
        device = self._on(device)
        if step == 0:
            return self.base(name, device)
        delta = self.delta(step, name, device)
        return self.base(name, device) + (delta.dense() if isinstance(delta, LowRankDelta) else delta)

    def selected(self, selection: str, two_d: bool = False) -> list[str]:
        """Names in the module `selection` that some checkpoint changes, in base order (`two_d`: 2-D only)."""
        names = self.names()
        shapes = {n: tuple(self.shape(n)) for n in names}
        changed = set(self.changed_names())
        return [n for n in select_names(names, shapes, selection)
                if n in changed and (len(shapes[n]) == 2 or not two_d)]

    def changed_names(self) -> list[str]:
        """Base names any checkpoint can change, in base order (all for full checkpoints, adapted ones for LoRA)."""
        if any(c.kind == "full" for c in self.run.checkpoints):
            return self.names()
        changed = set()
        for c in self.run.checkpoints:
            changed.update(self.reader(c.step).changed_names())
        return [n for n in self.names() if n in changed]


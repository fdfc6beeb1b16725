"""verl FSDP checkpoints read in place: the per-rank shards reassembled one tensor at a time, no merge step.

verl's FSDPCheckpointManager (verl/utils/checkpoint/fsdp_checkpoint_manager.py) writes, in `global_step_N/actor/`
(or `global_step_N/` for the SFT trainer):
    model_world_size_W_rank_R.pt   rank R's `state_dict()` under SHARDED_STATE_DICT, for R < W: {HF key: DTensor placed
                                   Shard(0) on an ("fsdp",) or ("ddp", "fsdp") mesh}, whose local part on rank R is
                                   `torch.chunk(full, W, 0)[R]`; plain tensors when FSDP1 ran on one rank
    fsdp_config.json               {"FSDP_version": 1 | 2, "world_size": W}
    lora_train_meta.json           {"r", "lora_alpha", "task_type"} of a LoRA run
    huggingface/                   config and tokenizer (the full model only with `hf_model` in save_contents)
A LoRA model keeps PEFT's names (`base_model.model.X.q_proj.lora_A.default.weight`, `X.q_proj.base_layer.weight`);
with `checkpoint.save_lora_only` only the `lora_` keys are saved.

The rank files are loaded with `torch.load(weights_only=True, mmap=True)` (importing torch.distributed.tensor puts
DTensor and its mesh and placements on the weights_only allow-list), so only the requested tensor's pages are read.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor, Replicate, Shard

from rlcast.errors import RlcastError
from rlcast.io.files import read_json, regular_file

SHARD_FILE = re.compile(r"^model_world_size_(\d+)_rank_(\d+)\.pt$")
_WRAPPER_PREFIX = re.compile(r"(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")


def shard_files(folder: Path) -> list[Path]:
    """The `model_world_size_W_rank_R.pt` files directly in `folder` (empty when it is no verl FSDP checkpoint)."""
    folder = Path(folder)
    return sorted(p for p in folder.glob("model_world_size_*_rank_*.pt") if SHARD_FILE.match(p.name))


def is_lora_key(key: str) -> bool:
    """A tensor a PEFT LoRA model trains (factors, modules_to_save copies); every other key is the frozen base."""
    return "lora_" in key or ".modules_to_save." in key


def lora_config(folder: Path) -> dict:
    """{"r", "lora_alpha"} of a verl LoRA checkpoint, from its lora_train_meta.json (the shards hold no alpha)."""
    path = Path(folder) / "lora_train_meta.json"
    if not path.exists():
        raise RlcastError(f"{path}: missing; verl LoRA shards need it for the LoRA scale lora_alpha / r")
    meta = read_json(path, "LoRA metadata")
    try:
        r, alpha = int(meta["r"]), float(meta["lora_alpha"])
    except (OverflowError, ValueError, KeyError, TypeError) as err:
        raise RlcastError(f"{path}: unreadable LoRA metadata ({err})") from None
    if r <= 0 or alpha <= 0:
        raise RlcastError(f"{path}: r={r}, lora_alpha={alpha} (both must be positive; verl writes 0 when "
                          "model.lora_alpha was unset)")
    return {"r": r, "lora_alpha": alpha}


@contextlib.contextmanager
def _quiet_device_mesh():
    """Unpickling a DeviceMesh outside its process group logs a torch.compile warning per file; not ours to show."""
    logger = logging.getLogger("torch.distributed.device_mesh")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load_rank(path: Path) -> dict[str, torch.Tensor]:
    """One rank's state dict, memory-mapped, weights_only; wrapper prefixes stripped from the keys."""
    regular_file(path, "shard file")  # a FIFO would block torch.load
    try:
        with _quiet_device_mesh():
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad input file
        raise RlcastError(f"{path}: cannot load with torch.load(weights_only=True): "
                          f"{str(err).strip().splitlines()[0]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RlcastError(f"{path}: not a state dict of tensors")
    return {_WRAPPER_PREFIX.sub("", k): v for k, v in state.items()}


@dataclass(frozen=True)
class _Layout:
    """Where one tensor lives: the ranks whose local parts, concatenated along dim 0 in this order, give it."""
    shape: tuple[int, ...]
    dtype: torch.dtype
    ranks: tuple[int, ...]


class VerlShards:
    """Lazy access to the tensors of a verl FSDP checkpoint folder, like TensorReader (names, shape, dtype, get).

    All rank files stay open as memory maps; `get` materialises only the requested tensor. `lora=True` shows only
    the tensors a PEFT model trains (the factors a LoRA adapter would hold), hiding the frozen base copies.
    """

    def __init__(self, folder: str | Path, lora: bool = False):
        self.folder = Path(folder)
        self.world_size = self._world_size()
        self.rank_files = [self.folder / f"model_world_size_{self.world_size}_rank_{r}.pt"
                           for r in range(self.world_size)]
        self._states = [_load_rank(path) for path in self.rank_files]
        self._layouts = {name: self._layout(name) for name in self._common_names()
                         if not lora or is_lora_key(name)}
        if not self._layouts:
            raise RlcastError(f"{self.rank_files[0]}: no {'LoRA ' if lora else ''}tensors found")

    def _world_size(self) -> int:
        """W, checked against every file name and fsdp_config.json; every rank file 0..W-1 must be there."""
        files = shard_files(self.folder)
        if not files:
            raise RlcastError(f"{self.folder}: no verl FSDP shards (model_world_size_W_rank_R.pt)")
        sizes = sorted({int(SHARD_FILE.match(p.name)[1]) for p in files})
        if len(sizes) > 1:
            raise RlcastError(f"{self.folder}: shard files of different world sizes "
                              f"({', '.join(map(str, sizes))}) in one checkpoint")
        (world,) = sizes
        config = self.folder / "fsdp_config.json"
        if config.is_file():
            fsdp = read_json(config, "FSDP config")
            try:
                declared = int(fsdp["world_size"])
            except (OverflowError, ValueError, KeyError, TypeError) as err:
                raise RlcastError(f"{config}: unreadable FSDP config ({err})") from None
            if declared != world:
                raise RlcastError(f"{config}: world_size {declared} does not match the shard files "
                                  f"(model_world_size_{world}_rank_*.pt)")
        ranks = {int(SHARD_FILE.match(p.name)[2]) for p in files}
        missing = [r for r in range(world) if r not in ranks]
        if missing:
            raise RlcastError(f"{self.folder / f'model_world_size_{world}_rank_{missing[0]}.pt'}: missing "
                              f"(world size {world} needs ranks 0..{world - 1})")
        extra = sorted(r for r in ranks if r >= world)
        if extra:
            raise RlcastError(f"{self.folder / f'model_world_size_{world}_rank_{extra[0]}.pt'}: rank {extra[0]} "
                              f"is beyond world size {world}")
        return world

    def _common_names(self) -> list[str]:
        """Rank 0's keys, in its order; every rank must hold exactly the same keys."""
        names = list(self._states[0])
        for rank, state in enumerate(self._states[1:], start=1):
            if set(state) != set(names):
                name = sorted(set(names) ^ set(state))[0]
                where = self.rank_files[0 if name in self._states[0] else rank]
                other = self.rank_files[rank if name in self._states[0] else 0]
                raise RlcastError(f"{other}: tensor {name} is missing (it is in {where.name})")
        return names

    def _layout(self, name: str) -> _Layout:
        """The tensor's global shape, dtype and part order, with every rank's part checked against them."""
        values = [state[name] for state in self._states]
        first = values[0]
        if not all(isinstance(v, DTensor) == isinstance(first, DTensor) for v in values):
            raise RlcastError(f"{self.folder}: tensor {name} is a DTensor on some ranks and a plain tensor on others")
        dtypes = {v.dtype for v in values}
        if len(dtypes) > 1:
            raise RlcastError(f"{self.folder}: ranks disagree on the dtype of tensor {name} ({sorted(map(str, dtypes))})")
        if not isinstance(first, DTensor):  # one rank, or a buffer every rank holds whole
            for rank, v in enumerate(values):
                if v.shape != first.shape:
                    raise RlcastError(f"{self.rank_files[rank]}: tensor {name} has shape {list(v.shape)} but "
                                      f"{list(first.shape)} on rank 0")
            return _Layout(tuple(first.shape), first.dtype, (0,))
        for rank, v in enumerate(values):
            if v.shape != first.shape or v.placements != first.placements:
                raise RlcastError(f"{self.rank_files[rank]}: tensor {name} has shape {list(v.shape)} "
                                  f"{list(v.placements)} but {list(first.shape)} {list(first.placements)} on rank 0")
        ranks, shape = self._part_ranks(name, first), tuple(first.shape)
        parts = [tuple(values[rank].to_local().shape) for rank in ranks]
        if parts != [shape] and not (all(p[1:] == shape[1:] for p in parts) and sum(p[0] for p in parts) == shape[0]):
            raise RlcastError(f"{self.folder}: tensor {name} of shape {list(shape)} is not tiled by its local parts "
                              f"{[list(p) for p in parts]} on ranks {list(ranks)}")
        return _Layout(shape, first.dtype, ranks)

    def _part_ranks(self, name: str, tensor: DTensor) -> tuple[int, ...]:
        """The ranks holding consecutive Shard(0) parts of one full copy (the first replica on HSDP meshes)."""
        mesh = tensor.device_mesh.mesh
        if sorted(mesh.flatten().tolist()) != list(range(self.world_size)):
            raise RlcastError(f"{self.rank_files[0]}: tensor {name} lives on a device mesh of ranks "
                              f"{mesh.flatten().tolist()}, not the {self.world_size} ranks of the file names")
        sharded = [d for d, p in enumerate(tensor.placements) if p != Replicate()]
        if any(tensor.placements[d] != Shard(0) for d in sharded) or len(sharded) > 1:
            raise RlcastError(f"{self.rank_files[0]}: tensor {name} has placements {list(tensor.placements)}; "
                              "only Shard(0) on one mesh dimension (FSDP, HSDP) is supported")
        index = [0] * mesh.dim()
        if sharded:
            index[sharded[0]] = slice(None)
        return tuple(torch.as_tensor(mesh[tuple(index)]).flatten().tolist())

    def names(self) -> list[str]:
        return list(self._layouts)

    def __contains__(self, name: str) -> bool:
        return name in self._layouts

    def _locate(self, name: str) -> _Layout:
        if name not in self._layouts:
            raise RlcastError(f"{self.folder}: tensor {name} not found")
        return self._layouts[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._locate(name).shape

    def dtype(self, name: str) -> torch.dtype:
        return self._locate(name).dtype

    def file(self, name: str) -> Path:
        """The shard set the tensor comes from (its parts are spread over every rank file)."""
        self._locate(name)
        return self.folder / f"model_world_size_{self.world_size}_rank_*.pt"

    def get(self, name: str, dtype: torch.dtype | None = None, device: torch.device | None = None) -> torch.Tensor:
        """The full tensor, each rank's part copied (and converted to `dtype`) straight from its mapped pages, on
        `device` (default the CPU)."""
        layout = self._locate(name)
        out = torch.empty(layout.shape, dtype=dtype or layout.dtype, device=device)
        if len(layout.ranks) == 1:  # a plain or replicated tensor (possibly 0-d): one rank holds it whole
            return out.copy_(self._local(layout.ranks[0], name))
        row = 0
        for rank in layout.ranks:
            part = self._local(rank, name)
            out[row:row + part.shape[0]].copy_(part)
            row += part.shape[0]
        return out

    def _local(self, rank: int, name: str) -> torch.Tensor:
        value = self._states[rank][name]
        return value.to_local() if isinstance(value, DTensor) else value

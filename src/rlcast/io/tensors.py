"""Lazy, validated access to the tensors of one model folder or weights file, one tensor at a time.

safetensors files are read through a per-tensor memory map of just that tensor's bytes (so resident memory stays one
tensor, not the whole file), after their header has been checked against the file; `.bin`/`.pt` files through
`torch.load(weights_only=True, mmap=True)`.
"""

from __future__ import annotations

import json
import math
import mmap
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlcast.errors import RlcastError

WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                "pytorch_model.bin")
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
NOT_WEIGHTS = re.compile(r"^(optimizer|scheduler|rng_state.*|training_args|model_world_size_.*|scaler|"
                          r"extra_state.*)\.(pt|pth|bin)$")


@dataclass
class _SafetensorsFile:
    """Header of one safetensors file: {name: (dtype, shape, begin, end)} with absolute byte offsets."""
    path: Path
    entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> "_SafetensorsFile":
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if size < 8 or n <= 0 or 8 + n > size:
                    raise ValueError("truncated header")
                header = json.loads(f.read(n))
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise RlcastError(f"{path}: corrupt or truncated safetensors file ({err})") from None
        entries = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype = _ST_DTYPES[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
                begin, end = (8 + n + int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise RlcastError(f"{path}: corrupt safetensors header entry for tensor {name}") from None
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if end > size or end - begin != nbytes:
                raise RlcastError(f"{path}: tensor {name} is truncated or corrupt ({end} > file size {size} or "
                                  f"{end - begin} bytes for {nbytes})")
            entries[name] = (dtype, shape, begin, end)
        return cls(path, entries)

    def view(self, name: str) -> torch.Tensor:
        """The tensor as a view of its own mapped pages (copy-on-write: the file is never modified).

        The tensor holds the only reference to the mapping, so the pages are unmapped as soon as it is freed:
        resident memory stays at the tensors in use, not the whole file.
        """
        dtype, shape, begin, end = self.entries[name]
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        start = begin - begin % mmap.ALLOCATIONGRANULARITY
        with open(self.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), end - start, access=mmap.ACCESS_COPY, offset=start)
        return torch.frombuffer(mm, dtype=torch.uint8, count=end - begin, offset=begin - start).view(dtype).reshape(
            shape)


class TensorReader:
    """Lazy access to the tensors of one model folder (or one weights file), one tensor at a time."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._where: dict[str, object] = {}  # name -> _SafetensorsFile | Path (torch pickle)
        self._pickles: dict[Path, dict] = {}
        self.files = self._weight_files()
        for path in self.files:
            if path.suffix == ".safetensors":
                st = _SafetensorsFile.open(path)
                for name in st.entries:
                    self._where[name] = st
            else:
                for name in self._load_pickle(path):
                    self._where[name] = path
        if not self._where:
            raise RlcastError(f"{self.folder}: no tensors found")

    def _weight_files(self) -> list[Path]:
        if self.folder.is_file():
            return [self.folder]
        if not self.folder.is_dir():
            raise RlcastError(f"{self.folder}: not found")
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = self.folder / index_name
            if index.is_file():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                except (OSError, ValueError, KeyError, TypeError) as err:
                    raise RlcastError(f"{index}: unreadable shard index ({err})") from None
                files = list(dict.fromkeys(weight_map.values()))
                missing = [f for f in files if not (self.folder / f).is_file()]
                if missing:
                    raise RlcastError(f"{index}: shard {missing[0]} is missing")
                return [self.folder / f for f in files]
        for single in ("model.safetensors", "adapter_model.safetensors"):
            if (self.folder / single).is_file():
                return [self.folder / single]
        files = sorted(self.folder.glob("*.safetensors"))
        if files:
            return files
        for single in ("pytorch_model.bin", "adapter_model.bin"):
            if (self.folder / single).is_file():
                return [self.folder / single]
        files = [p for p in sorted(self.folder.glob("*.bin")) + sorted(self.folder.glob("*.pt"))
                 if not NOT_WEIGHTS.match(p.name)]
        if not files:
            raise RlcastError(f"{self.folder}: no weight files (*.safetensors, *.bin, *.pt)")
        return files

    def _load_pickle(self, path: Path) -> dict:
        if path not in self._pickles:
            try:
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as err:  # legacy (non-zip) pickles cannot be memory-mapped
                    if "mmap" not in str(err):
                        raise
                    state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad input file
                raise RlcastError(f"{path}: cannot load with torch.load(weights_only=True): "
                                  f"{str(err).splitlines()[0]}") from None
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise RlcastError(f"{path}: not a state dict of tensors")
            self._pickles[path] = state
        return self._pickles[path]

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def _locate(self, name: str):
        if name not in self._where:
            raise RlcastError(f"{self.folder}: tensor {name} not found")
        return self._where[name]

    def shape(self, name: str) -> tuple[int, ...]:
        src = self._locate(name)
        if isinstance(src, _SafetensorsFile):
            return src.entries[name][1]
        return tuple(self._pickles[src][name].shape)

    def dtype(self, name: str) -> torch.dtype:
        src = self._locate(name)
        if isinstance(src, _SafetensorsFile):
            return src.entries[name][0]
        return self._pickles[src][name].dtype

    def file(self, name: str) -> Path:
        src = self._locate(name)
        return src.path if isinstance(src, _SafetensorsFile) else src

    def view(self, name: str) -> torch.Tensor:
        """The stored tensor, memory-mapped (safetensors: only its own pages; writes never reach the file)."""
        src = self._locate(name)
        return src.view(name) if isinstance(src, _SafetensorsFile) else self._pickles[src][name]

    def get(self, name: str, dtype: torch.dtype | None = None, device: torch.device | None = None) -> torch.Tensor:
        """A fresh copy (callers may modify it), converted straight from the mapped pages to `dtype` if given.

        On a `device` other than the CPU, the stored bytes cross first (bf16 at half the size of float32) and are
        converted there.
        """
        view = self.view(name)
        if device is not None and torch.device(device).type != "cpu":
            view = view.to(device)
        return view.to(dtype or self.dtype(name), copy=True)


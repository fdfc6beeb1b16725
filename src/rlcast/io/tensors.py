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
import reprlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlcast.errors import RlcastError
from rlcast.io.files import read_json, regular_file

WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                "pytorch_model.bin")
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
MAX_HEADER = 100_000_000  # bytes: the safetensors library refuses longer headers
NOT_WEIGHTS = re.compile(r"^(optimizer|scheduler|rng_state.*|training_args|model_world_size_.*|scaler|"
                          r"extra_state.*)\.(pt|pth|bin)$")


@dataclass
class _SafetensorsFile:
    """Header of one safetensors file: {name: (dtype, shape, begin, end)} with absolute byte offsets."""
    path: Path
    entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> _SafetensorsFile:
        """Read and check the header: a JSON object of tensors whose byte ranges tile the data exactly (as the
        safetensors library requires), so that anything this accepts, transformers loads."""
        size = regular_file(path, "weights file").stat().st_size
        try:
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if size < 8 or n < 2 or 8 + n > size:
                    raise ValueError(f"header length {n} does not fit the file's {size} bytes")
                if n > MAX_HEADER:
                    raise ValueError(f"header length {n} is above the safetensors limit of {MAX_HEADER}")
                header = json.loads(f.read(n))
        except (OSError, ValueError, UnicodeDecodeError, RecursionError) as err:
            reason = "header nested too deeply" if isinstance(err, RecursionError) else str(err).splitlines()[0]
            raise RlcastError(f"{path}: corrupt or truncated safetensors file ({reason})") from None
        if not isinstance(header, dict):
            raise RlcastError(f"{path}: corrupt safetensors file (the header is a JSON {type(header).__name__}, not "
                              "an object)")
        entries = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            entries[name] = cls._entry(path, name, info, 8 + n)
        at = 8 + n  # the data must be tiled without gaps or overlaps, up to the end of the file
        for name, (_, _, begin, end) in sorted(entries.items(), key=lambda e: (e[1][2], e[1][3])):
            if begin != at:
                raise RlcastError(f"{path}: tensor {name} starts at byte {begin - 8 - n} of the data, expected "
                                  f"{at - 8 - n} (overlapping or corrupt header)")
            if end > size:
                raise RlcastError(f"{path}: tensor {name} is truncated (it ends at byte {end}, the file has {size})")
            at = end
        if at != size:
            raise RlcastError(f"{path}: truncated or corrupt safetensors file (the header describes "
                              f"{at - 8 - n} bytes of data, the file holds {size - 8 - n})")
        return cls(path, entries)

    @staticmethod
    def _entry(path: Path, name: str, info, data: int) -> tuple[torch.dtype, tuple[int, ...], int, int]:
        """(dtype, shape, begin, end) of one header entry, checked: known dtype, shape and offsets of the right
        size."""
        def whole(values, length=None) -> bool:
            return isinstance(values, list) and (length is None or len(values) == length) and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)

        if not (isinstance(info, dict) and info.get("dtype") in _ST_DTYPES and whole(info.get("shape"))
                and whole(info.get("data_offsets"), 2) and info["data_offsets"][0] <= info["data_offsets"][1]):
            raise RlcastError(f"{path}: corrupt safetensors header entry for tensor {name} "
                              f"({reprlib.repr(info)})")
        dtype, shape = _ST_DTYPES[info["dtype"]], tuple(info["shape"])
        begin, end = (data + o for o in info["data_offsets"])
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if end - begin != nbytes:
            raise RlcastError(f"{path}: tensor {name} is corrupt ({end - begin} bytes for shape {list(shape)} "
                              f"{info['dtype']}, which needs {nbytes})")
        return dtype, shape, begin, end

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


def read_model_config(folder: Path) -> dict:
    """The config.json of a Hugging Face model folder: missing or unreadable is a one-line error naming the folder
    (transformers cannot load the folder, nor a model written from it, without one)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise RlcastError(f"{folder}: no config.json (not a Hugging Face model folder: transformers cannot load it, "
                          "nor a model written from it)")
    config = read_json(path, "model config")
    if not isinstance(config, dict):
        raise RlcastError(f"{path}: unreadable model config (a JSON {type(config).__name__}, not an object)")
    return config


def _reason(err: Exception) -> str:
    """The informative line of a torch.load failure (weights_only=True names the refused global or opcode after a
    paragraph of advice)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return f"refused a non-tensor object ({lines[i + 1]}); rlcast never unpickles code"
    return lines[0][:200] if lines else type(err).__name__


def load_pickle(path: Path, what: str = "file"):
    """`torch.load(path, weights_only=True)`, memory-mapped where the format allows: a regular file only, and a pickle
    it refuses (code, an unknown global) or cannot read is a one-line error naming the file, never a traceback."""
    regular_file(path, what)
    try:
        with warnings.catch_warnings():  # a refused pickle also warns about its protocol: one line only
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:  # legacy (non-zip) pickles cannot be memory-mapped
                if "mmap" not in str(err):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad input file
        raise RlcastError(f"{path}: cannot load with torch.load(weights_only=True): {_reason(err)}") from None


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
                weight_map = read_json(index, "shard index")
                try:
                    weight_map = weight_map["weight_map"]
                    if not (isinstance(weight_map, dict) and all(isinstance(f, str) for f in weight_map.values())):
                        raise ValueError("weight_map is not an object of file names")
                except (ValueError, KeyError, TypeError) as err:
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
            state = load_pickle(path, "weights file")
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in state.items()):
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


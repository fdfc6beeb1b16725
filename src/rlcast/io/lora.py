"""PEFT LoRA adapters as factors: the update of an adapted module is `scale * B @ A`, never densified here."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from rlcast.errors import RlcastError
from rlcast.io.files import read_json
from rlcast.io.tensors import TensorReader
from rlcast.io.verl import VerlShards, lora_config, shard_files

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def read_adapter_config(folder: Path) -> dict:
    """Parse adapter_config.json; an unreadable or unsupported adapter is a one-line error."""
    path = Path(folder) / "adapter_config.json"
    config = read_json(path, "adapter config")
    if not isinstance(config, dict):
        raise RlcastError(f"{path}: unreadable adapter config (not a JSON object)")
    if config.get("use_dora"):
        raise RlcastError(f"{path}: DoRA adapters are not supported (the update is not a low-rank product)")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise RlcastError(f"{path}: PEFT type {peft_type} is not supported (only LoRA)")
    return config


@dataclass
class LowRankDelta:
    """delta = scale * B @ A, kept as factors (B: m x r, A: r x n)."""
    B: torch.Tensor
    A: torch.Tensor
    scale: float

    @property
    def shape(self) -> tuple[int, int]:
        return (self.B.shape[0], self.A.shape[1])

    def dense(self) -> torch.Tensor:
        return self.scale * (self.B @ self.A)


Delta = torch.Tensor | LowRankDelta

_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<which>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                       r"(\.[^.]+)?(\.weight)?$")


def _strip_peft(key: str) -> str:
    """`base_model.model.X.modules_to_save.default.weight` -> `X.weight` (the base model's name)."""
    key = re.sub(r"^base_model\.model\.", "", key)
    key = re.sub(r"\.modules_to_save(\.[^.]+)?\.", ".", key)
    return key


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches when it is a (regex) suffix of the module name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


class Adapter:
    """A PEFT LoRA adapter mapped onto base tensor names: LowRankDelta factors and full replacement tensors.

    The adapter is a PEFT folder, or the verl FSDP shards of a PEFT model (io.verl: the same keys, with `.default`).
    """

    def __init__(self, folder: Path, base_names: Iterable[str]):
        self.folder = Path(folder)
        self.reader: TensorReader | VerlShards
        if shard_files(self.folder):  # verl FSDP shards of a PEFT model: PEFT's keys, r and alpha on the side
            self.config, self.reader = lora_config(self.folder), VerlShards(self.folder, lora=True)
        else:
            self.config, self.reader = read_adapter_config(self.folder), TensorReader(self.folder)
        base_names = set(base_names)
        r0, alpha0 = self.config.get("r", 8), self.config.get("lora_alpha", 8)
        rslora, fan_in_fan_out = bool(self.config.get("use_rslora")), bool(self.config.get("fan_in_fan_out"))
        parts: dict[str, dict[str, str]] = {}
        self.full: dict[str, str] = {}  # base name -> adapter key holding the trained tensor (modules_to_save)
        for key in self.reader.names():
            if "lora_magnitude_vector" in key:
                raise RlcastError(f"{self.reader.file(key)}: DoRA adapters are not supported ({key})")
            match = _LORA_KEY.match(key)
            if match:
                parts.setdefault(_strip_peft(match["module"]), {})[match["which"]] = key
                continue
            name = _strip_peft(key)
            if name not in base_names:
                raise RlcastError(f"{self.reader.file(key)}: adapter tensor {key} maps to {name}, which the base "
                                  "model does not have")
            self.full[name] = key
        self.factors: dict[str, tuple[str, str, float, bool]] = {}  # base name -> (A key, B key, scale, transpose)
        for module, keys in parts.items():
            name = module + ".weight"
            if name not in base_names:
                raise RlcastError(f"{self.folder}: adapter module {module} has no base tensor {name}")
            embedding = "lora_embedding_A" in keys or "lora_embedding_B" in keys
            a_key = keys.get("lora_embedding_A" if embedding else "lora_A")
            b_key = keys.get("lora_embedding_B" if embedding else "lora_B")
            if a_key is None or b_key is None:
                raise RlcastError(f"{self.folder}: adapter module {module} lacks its "
                                  f"{'A' if a_key is None else 'B'} factor")
            r = self.reader.shape(a_key)[0]
            r_cfg = _pattern_value(self.config.get("rank_pattern"), module, r0)
            if r_cfg != r:
                raise RlcastError(f"{self.reader.file(a_key)}: tensor {a_key} has rank {r} but the adapter config "
                                  f"says r={r_cfg}")
            alpha = _pattern_value(self.config.get("alpha_pattern"), module, alpha0)
            scale = alpha / math.sqrt(r) if rslora else alpha / r
            # Embeddings and fan_in_fan_out (Conv1D) layers store delta^T = (B @ A).
            self.factors[name] = (a_key, b_key, float(scale), embedding or fan_in_fan_out)

    def changed_names(self) -> list[str]:
        return list(self.factors) + [n for n in self.full if n not in self.factors]

    def low_rank(self, name: str, device: torch.device | None = None) -> LowRankDelta:
        a_key, b_key, scale, transpose = self.factors[name]
        A, B = self.reader.get(a_key, torch.float32, device), self.reader.get(b_key, torch.float32, device)
        if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
            raise RlcastError(f"{self.reader.file(a_key)}: NaN/Inf in the LoRA factors of {name}")
        if transpose:  # delta = (B @ A)^T = A^T @ B^T
            A, B = B.T.contiguous(), A.T.contiguous()
        return LowRankDelta(B=B, A=A, scale=scale)


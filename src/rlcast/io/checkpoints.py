"""Finding the checkpoints of an RL run and reading their weights one tensor at a time.

Layouts understood by `load_run`:
    TRL / HF Trainer   ROOT/checkpoint-N/                  full weights or a PEFT adapter
    verl               ROOT/global_step_N/actor/huggingface/  full weights
                       ROOT/global_step_N/actor/lora_adapter/ PEFT adapter
                       ROOT/global_step_N/actor/              FSDP shards model_world_size_W_rank_R.pt (io.verl),
                                                              full or LoRA, read in place (no merge step)
    OpenRLHF           ROOT/global_stepN_hf/               full weights
    rlcast train       ROOT/run.json                        manifest: base, checkpoints, accuracies
    explicit           {step: path}
The base model is `base=`, else the manifest's base, else a local `base_model_name_or_path` of the adapters, else a
step-0 folder (checkpoint-0, global_step_0, global_step0_hf), else ROOT/base.

Tensors are read lazily: safetensors through a per-tensor memory map of just that tensor's bytes (so resident memory
stays one tensor, not the whole file), `.bin`/`.pt` through `torch.load(weights_only=True, mmap=True)`.
A delta `W_t - W_0` is formed per tensor; a LoRA adapter gives `scale * B @ A` as factors, never densified here.
"""

from __future__ import annotations

import json
import math
import mmap
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from rlcast.errors import RlcastError
from rlcast.io.verl import VerlShards, lora_config, shard_files

# ----------------------------------------------------------------------------------------------------------------------
# Run discovery


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path  # folder holding weights (full) or a PEFT adapter (lora)
    kind: str  # "full" | "lora"


@dataclass
class Run:
    base: Path
    checkpoints: list[Checkpoint]
    root: Path | None = None
    manifest: dict | None = None

    @property
    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints]

    def checkpoint(self, step: int) -> Checkpoint:
        for c in self.checkpoints:
            if c.step == step:
                return c
        raise RlcastError(f"step {step} is not a checkpoint of this run (steps: {self.steps})")

    def window(self, until: int) -> "Run":
        """The same run cut to the checkpoints with step <= until."""
        return Run(self.base, [c for c in self.checkpoints if c.step <= until], self.root, self.manifest)

    @property
    def accuracy(self) -> dict[int, float]:
        """{0: base accuracy, step: accuracy, ...} from the run.json manifest; {} without one."""
        if not self.manifest:
            return {}
        acc = {}
        if self.manifest.get("base_accuracy") is not None:
            acc[0] = float(self.manifest["base_accuracy"])
        for entry in self.manifest.get("checkpoints", []):
            if entry.get("accuracy") is not None:
                acc[int(entry["step"])] = float(entry["accuracy"])
        return acc


WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                "pytorch_model.bin")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_STEP_PATTERNS = [  # (step folder directly under ROOT, sub-folders holding the weights): TRL, verl, OpenRLHF
    (re.compile(r"^checkpoint-(.+)$"), ("",)),
    (re.compile(r"^global_step_(.+)$"), ("actor/huggingface", "actor/lora_adapter", "huggingface", "lora_adapter")),
    (re.compile(r"^global_step(.+)_hf$"), ("",)),
]


def _is_weights_folder(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    return any((folder / f).is_file() for f in WEIGHT_FILES + ADAPTER_FILES + ("adapter_config.json",)) or any(
        folder.glob("*.safetensors"))


def read_adapter_config(folder: Path) -> dict:
    """Parse adapter_config.json; an unreadable or unsupported adapter is a one-line error."""
    path = Path(folder) / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise RlcastError(f"{path}: unreadable adapter config ({err})") from None
    if config.get("use_dora"):
        raise RlcastError(f"{path}: DoRA adapters are not supported (the update is not a low-rank product)")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise RlcastError(f"{path}: PEFT type {peft_type} is not supported (only LoRA)")
    return config


def _kind(folder: Path) -> str:
    """'lora' when the folder holds a PEFT adapter, 'full' when it holds model weights."""
    if (folder / "adapter_config.json").is_file():
        read_adapter_config(folder)  # fail early on DoRA / unreadable configs
        return "lora"
    if shard_files(folder) and not _is_weights_folder(folder):  # verl FSDP shards, all ranks validated up front
        if any("lora_" in name for name in VerlShards(folder).names()):
            lora_config(folder)
            return "lora"
        return "full"
    pickles = [p for p in list(folder.glob("*.bin")) + list(folder.glob("*.pt")) if not NOT_WEIGHTS.match(p.name)]
    if _is_weights_folder(folder) or pickles:
        return "full"
    raise RlcastError(f"{folder}: no model weights or PEFT adapter found")


def _find_step_folder(child: Path, subdirs: Sequence[str]) -> Path:
    """The folder with weights inside one step directory of a run (verl nests them under actor/)."""
    for sub in subdirs:
        folder = child / sub if sub else child
        if _is_weights_folder(folder):
            return folder
    for folder in (child / "actor", child):  # verl FSDP shards (PPO trainer: actor/, SFT trainer: the step folder)
        if shard_files(folder):
            return folder
    raise RlcastError(f"{child}: no model weights or PEFT adapter found")


def _parse_step(text: str, where: str) -> int:
    if not re.fullmatch(r"\d+", str(text).strip()):
        raise RlcastError(f"{where}: step name {text!r} is not a number")
    return int(text)


def _discover(root: Path) -> dict[int, Path]:
    """{step: weights folder} for every step directory directly under `root`, with duplicates reported."""
    found: dict[int, list[Path]] = {}
    bad = []
    for child in sorted(root.iterdir()):
        if not child.is_dir():
            continue
        for pattern, _ in _STEP_PATTERNS:
            match = pattern.match(child.name)
            if not match:
                continue
            if not re.fullmatch(r"\d+", match.group(1)):
                bad.append(child.name)
                break
            found.setdefault(int(match.group(1)), []).append(child)
            break
    if bad:
        raise RlcastError(f"{root}: non-numeric step folder names: {', '.join(bad)}")
    dups = {s: p for s, p in found.items() if len(p) > 1}
    if dups:
        listing = "; ".join(f"step {s}: {', '.join(x.name for x in p)}" for s, p in sorted(dups.items()))
        raise RlcastError(f"{root}: duplicate steps ({listing})")
    out = {}
    for step, (child,) in sorted(found.items()):
        subdirs = next(sub for pat, sub in _STEP_PATTERNS if pat.match(child.name))
        out[step] = _find_step_folder(child, subdirs)
    return out


def _resolve(path: str | Path, root: Path | None) -> Path:
    path = Path(path).expanduser()
    if not path.is_absolute() and root is not None and (root / path).exists():
        path = root / path
    return path.resolve()


def load_run(path: str | Path | None = None, base: str | Path | None = None,
             checkpoints: Mapping[int | str, str | Path] | None = None) -> Run:
    """Find the base model and the checkpoints (sorted by step) of a run folder and/or an explicit {step: path}."""
    root = Path(path).expanduser().resolve() if path is not None else None
    if root is not None and not root.is_dir():
        raise RlcastError(f"{root}: run folder not found")
    manifest = None
    folders: dict[int, Path] = {}
    if root is not None and (root / "run.json").is_file():
        try:
            manifest = json.loads((root / "run.json").read_text())
            entries = manifest.get("checkpoints", [])
            for entry in entries:
                step = _parse_step(entry["step"], f"{root / 'run.json'}")
                if step in folders:
                    raise RlcastError(f"{root / 'run.json'}: duplicate step {step}")
                folders[step] = _resolve(entry["path"], root)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise RlcastError(f"{root / 'run.json'}: unreadable run manifest ({err})") from None
        if base is None and manifest.get("base"):
            base = _resolve(manifest["base"], root)
    elif root is not None:
        folders = _discover(root)
    for step, p in (checkpoints or {}).items():
        step = _parse_step(step, f"--checkpoint {step}={p}")
        if step in folders:
            raise RlcastError(f"duplicate step {step}: {folders[step]} and {p}")
        p = _resolve(p, root)
        if not p.is_dir():
            raise RlcastError(f"{p}: checkpoint folder for step {step} not found")
        if not _is_weights_folder(p):
            p = _find_step_folder(p, ("actor/huggingface", "actor/lora_adapter", "huggingface", "lora_adapter"))
        folders[step] = p
    if root is None and not folders:
        raise RlcastError("no run folder and no --checkpoint given")

    step0 = folders.pop(0, None)
    ckpts = []
    for step, folder in sorted(folders.items()):
        if not folder.is_dir():
            raise RlcastError(f"{folder}: checkpoint folder for step {step} not found")
        ckpts.append(Checkpoint(step, folder, _kind(folder)))
    if not ckpts:
        raise RlcastError(f"{root}: no checkpoints found (looked for checkpoint-N, global_step_N, global_stepN_hf, "
                          "run.json)")

    if base is None:
        base = _base_from_adapters(ckpts, root)
    if base is None and step0 is not None:
        base = step0
    if base is None and root is not None and _is_weights_folder(root / "base"):
        base = root / "base"
    if base is None:
        raise RlcastError(f"{root or ckpts[0].path}: base model not found; pass --base PATH (no step-0 folder and no "
                          "local base_model_name_or_path in the adapters)")
    base = _resolve(base, root)
    if not base.is_dir() or not _is_weights_folder(base):
        raise RlcastError(f"{base}: base model folder not found or holds no weights")
    if _kind(base) != "full":
        raise RlcastError(f"{base}: the base must hold full model weights, not an adapter")
    return Run(base=base, checkpoints=ckpts, root=root, manifest=manifest)


def _base_from_adapters(ckpts: list[Checkpoint], root: Path | None) -> Path | None:
    for c in ckpts:
        if c.kind != "lora" or shard_files(c.path):  # verl LoRA shards name no base
            continue
        name = read_adapter_config(c.path).get("base_model_name_or_path")
        if not name:
            continue
        for candidate in (Path(name).expanduser(), c.path / name, (root or c.path) / name):
            if candidate.is_dir() and _is_weights_folder(candidate):
                return candidate.resolve()
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Lazy tensor access

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


# ----------------------------------------------------------------------------------------------------------------------
# LoRA adapters as factors


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


# ----------------------------------------------------------------------------------------------------------------------
# Per-tensor access to a whole run

_TIED = re.compile(r"(^|\.)lm_head\.weight$")
_EMBED = re.compile(r"(^|\.)(embed_tokens|wte|embed_in|word_embeddings)\.weight$")


def _tied(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / "config.json").read_text()).get("tie_word_embeddings"))
    except (OSError, ValueError, AttributeError):
        return False


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
                return self._finite(delta, reader.reader.file(reader.full[name]), name, step)
            return torch.zeros(self.shape(name), device=device)
        src = self._source_name(reader, name, self._tied[step])
        delta = reader.get(src, torch.float32, device)
        base = self.base_reader.view(name)
        _subtract(delta, base if delta.device == base.device else base.to(delta.device))
        return self._finite(delta, reader.file(src), name, step)

    @staticmethod
    def _finite(delta: torch.Tensor, file: Path, name: str, step: int) -> torch.Tensor:
        if not math.isfinite(delta.sum().item()):  # NaN/Inf propagate through the sum, without a mask allocation
            raise RlcastError(f"{file}: NaN/Inf in the delta of tensor {name} at step {step}")
        return delta

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


# ----------------------------------------------------------------------------------------------------------------------
# Module selection

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

"""Finding the base model and the checkpoints of an RL run.

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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from rlcast.errors import RlcastError
from rlcast.io.lora import ADAPTER_FILES, read_adapter_config
from rlcast.io.manifest import Manifest
from rlcast.io.tensors import NOT_WEIGHTS, WEIGHT_FILES, read_model_config
from rlcast.io.verl import VerlShards, lora_config, shard_files


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
    manifest: Manifest | None = None  # run.json, when the run has one

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

    def base_config(self) -> dict:
        """The base's config.json, which every model written from the run copies (predictions, rank-k models):
        commands that write models read it before any work, so a base without one fails naming the base."""
        return read_model_config(self.base)

    @property
    def accuracy(self) -> dict[int, float]:
        """{0: base accuracy, step: accuracy, ...} from the run.json manifest; {} without one."""
        return self.manifest.accuracy if self.manifest else {}


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


def step_folders(root: str | Path) -> dict[int, Path]:
    """{step: weights folder} of the step folders directly under `root` (TRL, verl, OpenRLHF names), whatever its
    run.json lists: `rlcast eval` adds the checkpoints a run wrote since to a run.json of its own."""
    return _discover(Path(root))


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
    if root is not None and (root / "run.json").exists():  # a FIFO or a device is refused there
        manifest = Manifest.read(root / "run.json")
        for i, entry in enumerate(manifest.checkpoints):
            if entry.path is None:
                raise RlcastError(f"{manifest.path}: checkpoints[{i}].path is missing (the folder of step "
                                  f"{entry.step})")
            folders[entry.step] = _resolve(entry.path, root)
        if base is None and manifest.base:
            base = _resolve(manifest.base, root)
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


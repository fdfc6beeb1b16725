"""The snapshot window: the trainable tensors at recent steps, on disk, read back as a `Run` for the extrapolators.

The window lives in a folder of its own (FOLDER, inside `--accel snapshot_dir` or the run's output folder) that it
creates with a record (io.records' MARKER, naming the run it serves), and it deletes only that folder and the marked
snapshot folders in it: whatever snapshot_dir points at, nothing the window did not create is ever removed.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from rlcast.errors import RlcastError
from rlcast.io.atomic import atomic_folder, write_text_atomic
from rlcast.io.checkpoints import Run, load_run
from rlcast.io.records import MARKER, output_record, read_record

SNAPSHOT_FILE = "model.safetensors"
FOLDER = ".rlcast-accelerate"  # the window's own folder
COMMAND = "accelerate snapshots"  # the command in its record


def trainable(model) -> dict[str, torch.nn.Parameter]:
    """The tensors a jump moves: full fine-tuning, the model's weights; peft LoRA, the adapter's A and B."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _write(folder: Path, model) -> None:
    """Trainable tensors of `model` -> folder/model.safetensors (+ config.json), written atomically."""
    # CPU parameters are written from their own storage (no copy); GPU ones come over to the CPU for the write
    tensors = {n: p.detach().cpu().contiguous() for n, p in trainable(model).items()}
    with atomic_folder(folder) as tmp:
        save_file(tensors, str(tmp / SNAPSHOT_FILE), metadata={"format": "pt"})
        config = getattr(model, "config", None)
        if config is not None:
            (tmp / "config.json").write_text(config.to_json_string())


def _ours(folder: Path, owner: str | None = None) -> bool:
    """Is `folder` a snapshot folder this module created (for the run `owner`, when given)?"""
    record = read_record(folder) if folder.is_dir() and not folder.is_symlink() else None
    return record is not None and record["command"] == COMMAND and (
        owner is None or (record.get("settings") or {}).get("run") == owner)


def _remove(folder: Path) -> None:
    """Delete a folder this module created and marked (a snapshot step-V carries atomic_folder's MARKER); anything
    else stays."""
    if folder.is_dir() and not folder.is_symlink() and (folder / MARKER).is_file():
        shutil.rmtree(folder, ignore_errors=True)


class SnapshotWindow:
    """At most `size` snapshots under `root` (folder `step-V` for virtual step V), oldest first: the first is the
    anchor. `steps` ([global_step, virtual_step] per snapshot) is what a resumed run needs to find them again."""

    def __init__(self, size: int):
        self.size = size
        self.root: Path | None = None  # set by `open` when training begins: PARENT/FOLDER
        self.owner: str | None = None  # the run's output folder, recorded in the root's MARKER
        self.steps: list[list[int]] = []

    def open(self, parent: Path, owner: str, option: str = "--accel snapshot_dir=DIR") -> None:
        """Use PARENT/FOLDER for the run `owner`, creating it with its record. An existing one must be this module's
        for the same run (a folder of an older rlcast, holding only step-N snapshot folders, is adopted); anything
        else there is refused in one line, and left alone."""
        root, owner = Path(parent) / FOLDER, str(Path(owner).resolve())
        record = output_record(COMMAND, {"run": owner})
        if root.is_symlink() or root.exists() and not root.is_dir():
            raise RlcastError(f"{root}: exists and is not a snapshot folder; remove it or set {option}")
        if root.is_dir() and not _ours(root, owner):
            legacy = read_record(root) is None and all(  # marked snapshots, their caches and temporaries only
                re.fullmatch(r"step-\d+", p.name) and (p / MARKER).is_file() or p.name == ".rlcast-cache"
                or re.match(r"\.step-\d+\.rlcast-", p.name) for p in root.iterdir())
            if not legacy:
                used = (read_record(root) or {}).get("settings", {}).get("run") if _ours(root) else None
                why = f"holds the snapshots of the run {used}" if used else "was not created by rlcast"
                raise RlcastError(f"{root}: {why}; it is left alone: set {option} elsewhere")
        root.mkdir(parents=True, exist_ok=True)
        if not _ours(root, owner):
            write_text_atomic(root / MARKER, json.dumps(record) + "\n")
        self.root, self.owner = root, owner

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def virtual(self) -> list[int]:
        return [v for _, v in self.steps]

    def folder(self, virtual: int) -> Path:
        return self.root / f"step-{virtual}"

    def add(self, model, global_step: int, virtual: int) -> None:
        """Snapshot `model` at `virtual` (replacing one already there), then drop the oldest beyond `size`."""
        _write(self.folder(virtual), model)
        self.steps = [s for s in self.steps if s[1] != virtual] + [[global_step, virtual]]
        while len(self.steps) > self.size:
            _, old = self.steps.pop(0)
            _remove(self.folder(old))

    def restart(self, model, global_step: int, virtual: int) -> None:
        """A new window anchored at `model` (after a kept jump): the write, the only step that may fail, comes first."""
        _write(self.folder(virtual), model)
        for _, old in self.steps:
            if old != virtual:
                _remove(self.folder(old))
        self.steps = [[global_step, virtual]]

    def resume(self, global_step: int) -> None:
        """Forget the snapshots taken after `global_step` (the interrupted future) and those whose folder is gone."""
        kept = [s for s in self.steps if s[0] <= global_step and self.folder(s[1]).exists()]
        for s in self.steps:
            if s not in kept:
                _remove(self.folder(s[1]))
        self.steps = kept

    def clear(self) -> None:
        """Remove every snapshot of an earlier start from the window's folder (a fresh run begins empty)."""
        for child in self.root.iterdir() if self.root is not None and self.root.is_dir() else ():
            if re.fullmatch(r"step-\d+", child.name):
                _remove(child)

    def delete(self) -> None:
        """Remove the window's folder from disk, only when it is the one `open` created for this run (`steps` stays:
        the record of the run)."""
        if self.root is not None and _ours(self.root, self.owner):
            shutil.rmtree(self.root, ignore_errors=True)

    def run(self, virtual_steps: list[int]) -> Run:
        """The snapshots at `virtual_steps` as a Run: base = the first (the anchor), steps counted from it."""
        anchor = virtual_steps[0]
        run = load_run(base=self.folder(anchor), checkpoints={v - anchor: self.folder(v) for v in virtual_steps[1:]})
        run.root = self.root  # caches (rank-1 factors) go inside the snapshot folder and leave with it
        return run

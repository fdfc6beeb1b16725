"""The snapshot window: the trainable tensors at recent steps, on disk, read back as a `Run` for the extrapolators."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from rlcast.io.runs import Run, load_run
from rlcast.io.writer import atomic_folder

SNAPSHOT_FILE = "model.safetensors"


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


class SnapshotWindow:
    """At most `size` snapshots under `root` (folder `step-V` for virtual step V), oldest first: the first is the
    anchor. `steps` ([global_step, virtual_step] per snapshot) is what a resumed run needs to find them again."""

    def __init__(self, size: int):
        self.size = size
        self.root: Path | None = None  # set when training begins: it defaults to a folder in the trainer's output
        self.steps: list[list[int]] = []

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
            shutil.rmtree(self.folder(old), ignore_errors=True)

    def restart(self, model, global_step: int, virtual: int) -> None:
        """A new window anchored at `model` (after a kept jump): the write, the only step that may fail, comes first."""
        _write(self.folder(virtual), model)
        for _, old in self.steps:
            if old != virtual:
                shutil.rmtree(self.folder(old), ignore_errors=True)
        self.steps = [[global_step, virtual]]

    def resume(self, global_step: int) -> None:
        """Forget the snapshots taken after `global_step` (the interrupted future) and those whose folder is gone."""
        kept = [s for s in self.steps if s[0] <= global_step and self.folder(s[1]).exists()]
        for s in self.steps:
            if s not in kept:
                shutil.rmtree(self.folder(s[1]), ignore_errors=True)
        self.steps = kept

    def delete(self) -> None:
        """Remove the snapshot folder from disk (`steps` stays: the record of the run)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def run(self, virtual_steps: list[int]) -> Run:
        """The snapshots at `virtual_steps` as a Run: base = the first (the anchor), steps counted from it."""
        anchor = virtual_steps[0]
        run = load_run(base=self.folder(anchor), checkpoints={v - anchor: self.folder(v) for v in virtual_steps[1:]})
        run.root = self.root  # caches (rank-1 factors) go inside the snapshot folder and leave with it
        return run

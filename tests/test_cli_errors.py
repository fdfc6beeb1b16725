"""What a user who types something wrong sees: usage errors with the usage line (exit 2), bad values and names as one
line naming them (exit 1) before any work, wrong folders with the way out, and help without Python types."""

import dataclasses
import json
import math
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from rich.progress import Progress
from typer.main import get_command
from typer.testing import CliRunner

from rlcast.apps import cli
from rlcast.errors import RlcastError
from rlcast.io.synthetic import planted_run


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Two tiny planted runs side by side in one folder (the layout of `rlcast demo`'s output)."""
    holder = tmp_path_factory.mktemp("holder")
    for name in ("plain", "accel"):
        planted_run(holder / name, steps=[10, 20, 30], hidden=32, layers=1)
    return holder


def _usage_error(result, *words):
    code, out, err = result
    assert code == 2, (code, out, err)
    assert "Usage: " in err and "[OPTIONS]" in err and "Traceback" not in err, err
    for word in words:
        assert word in err, err


def _one_line(result, *words):
    code, out, err = result
    assert code == 1, (code, out, err)
    message = err.strip()
    assert message.startswith("error:") and "\n" not in message, message
    for word in words:
        assert word in message, message


# --- usage errors: click's usage line, exit 2, no traceback ---

def test_usage_errors_print_the_usage_line(run_cli, planted):
    run = planted / "plain"
    _usage_error(run_cli("nosuchcmd"), "No such command 'nosuchcmd'")
    _usage_error(run_cli("analyze", run, "--foo"), "No such option: --foo")
    _usage_error(run_cli("extrapolate", run, "-m", "relex", "--until", "abc", "--target", "30", "--out", "x"),
                 "'--until'", "valid integer")
    _usage_error(run_cli("analyze", planted / "nonexistent"), "'RUN'", "does not exist")


def test_every_typed_name_is_checked_with_the_known_names_listed(run_cli, planted, tmp_path):
    run = planted / "plain"
    _usage_error(run_cli("extrapolate", run, "-m", "weight_linear", "--until", "20", "--target", "30", "--out",
                         tmp_path / "x"), "'weight_linear' is not one of", "'weight-linear'", "'rre'")
    _usage_error(run_cli("compare", run, "--methods", "relex,weight_linear"), "'weight_linear' is not one of",
                 "'weight-linear'")
    _usage_error(run_cli("compare", run, "--param", "relx.rank=2"), "'relx' is not one of", "'relex'")
    _usage_error(run_cli("analyze", run, "--selection", "block"), "'block' is not one of", "'all-2d'")
    _usage_error(run_cli("train", "--out", tmp_path / "t", "--preset", "stedy"), "'stedy' is not one of", "'steady'")
    _usage_error(run_cli("train", "--out", tmp_path / "t", "--algo", "ppo"), "'ppo' is not one of", "'dr-grpo'")
    _usage_error(run_cli("continue", run, "--at", "20", "--steps", "30", "--out", tmp_path / "c", "--optimizer",
                         "new"), "'new' is not one of", "'fresh'")
    assert not any(tmp_path.iterdir())


def test_cli_names_are_the_registries(tmp_path):
    """The names the CLI checks while parsing are exactly the registries' (which need torch or TRL to import)."""
    from typing import get_args

    from rlcast.core.backend import BACKENDS
    from rlcast.extrapolation import METHODS
    from rlcast.io.selections import SELECTIONS
    from rlcast.training.accelerate import AccelerateConfig
    from rlcast.training.continuation import OPTIMIZERS
    from rlcast.training.lookahead import LOOKAHEAD
    from rlcast.training.train import ALGOS, HYPERPARAMETERS, PRESETS, TrainConfig

    assert cli.METHOD_NAMES == tuple(METHODS)
    assert get_args(cli.Selection) == SELECTIONS and get_args(cli.BackendName) == BACKENDS
    assert get_args(cli.Preset) == tuple(PRESETS) and get_args(cli.Algo) == tuple(ALGOS)
    assert get_args(cli.Optimizer) == OPTIMIZERS
    assert cli.HP_KEYS.split(", ") == list(HYPERPARAMETERS)
    hints = typing.get_type_hints(TrainConfig)
    assert cli.HP_TYPES == {name: hints[name] for name in HYPERPARAMETERS}  # the types --hp is checked against
    assert get_args(cli.Accelerator) == ("jumps", *LOOKAHEAD)
    assert cli.ACCEL_KEYS.split(", ") == [f.name for f in dataclasses.fields(AccelerateConfig)]


CHEAP_CHECKS = r"""
import sys, time
from rlcast.apps.cli import main
codes = []
for args in sys.argv[1:]:
    sys.argv = ["rlcast", *args.split("|")]
    start = time.perf_counter()
    try:
        main()
    except SystemExit as exit_:
        codes.append(exit_.code)
print(codes, [m for m in ("torch", "transformers", "trl") if m in sys.modules])
"""


@pytest.mark.slow
def test_paths_and_names_are_checked_before_heavy_imports(planted, tmp_path):
    run = planted / "plain"
    checks = [f"analyze|{planted / 'nonexistent'}", f"extrapolate|{run}|-m|weight_linear|--until|1|--target|2|--out|x",
              f"compare|{run}|--methods|nope", f"dominance|{run}|--selection|every", f"eval|{planted / 'missing'}"]
    done = subprocess.run([sys.executable, "-c", CHEAP_CHECKS, *checks], capture_output=True, text=True)
    assert done.stdout.strip() == "[2, 2, 2, 2, 1] []", done.stdout + done.stderr


@pytest.mark.slow  # a subprocess
def test_bad_option_values_are_usage_errors_before_torch_loads(tmp_path):
    """Values of the wrong type or name exit 2 while parsing, without importing torch (that took 8-14 s)."""
    out = tmp_path / "t"
    checks = [f"train|--out|{out}|--accelerate|rank-1", f"train|--out|{out}|--hp|learning_rate=abc",
              f"train|--out|{out}|--hp|nosuch=1", f"train|--out|{out}|--hp|max_completion_length=4.5",
              f"train|--out|{out}|--steps|0", "eval|testbed|-n|0", "eval|testbed|--split|dev",
              "eval|testbed|--task|aritm"]
    done = subprocess.run([sys.executable, "-c", CHEAP_CHECKS, *checks], capture_output=True, text=True)
    assert done.stdout.strip() == "[2, 2, 2, 2, 2, 2, 2, 2] []", done.stdout + done.stderr
    for words in (["'rank-1' is not one of 'jumps', 'sfpo', 'gxpo', 'rank1'"],
                  ["'--hp'", "'learning_rate=abc': 'abc' is not a number or none"],
                  ["unknown key 'nosuch'", "known: learning_rate, "], ["'4.5' is not an integer or none"],
                  ["'--steps'", "greater than or equal to 1"], ["'-n'", "greater than or equal to 1"],
                  ["'dev' is not one of 'test', 'train'"],
                  ["'--task'", "'aritm' is not arith, rg:<reasoning-gym dataset> or jsonl:<path>"]):
        assert all(word in done.stderr for word in words), (words, done.stderr)
    assert "Value error" not in done.stderr and "NoneType" not in done.stderr  # no pydantic / typing reprs
    assert not out.exists()


def test_accelerator_settings_of_the_wrong_type_or_key_are_usage_errors(run_cli, tmp_path):
    out = tmp_path / "t"
    _usage_error(run_cli("train", "--out", out, "--accelerate", "rank1", "--accel", "boost=x"), "'--accel'",
                 "'boost=x': 'x' is not a number")
    _usage_error(run_cli("train", "--out", out, "--accelerate", "sfpo", "--accel", "boots=2"), "'--accel'",
                 "unknown key 'boots'")
    assert not out.exists()


@pytest.mark.parametrize("spec", ["arith", "aritm", "rg:", "rg:chain_sum", "jsonl:", "jsonl:x.jsonl", "gsm8k", ""])
def test_the_task_forms_checked_while_parsing_are_get_tasks(spec):
    """What --task refuses while parsing is exactly what get_task calls an unknown task."""
    import typer

    from rlcast.evaluation.tasks import get_task

    try:
        cli._task_spec(spec)
        parsed = True
    except typer.BadParameter:
        parsed = False
    try:
        get_task(spec)
        known = True
    except RlcastError as err:
        known = "unknown task" not in str(err)
    assert parsed == known, spec


def test_debug_goes_before_or_after_the_command_and_version_prints(run_cli, tmp_path):
    from importlib.metadata import version

    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"rlcast {version('rlcast')}"
    for args in (["--debug", "eval", tmp_path / "missing"], ["eval", tmp_path / "missing", "--debug"]):
        with pytest.raises(RlcastError, match="no such model folder"):  # --debug: the traceback, not one line
            run_cli(*args)
    code, _, err = run_cli("eval", tmp_path / "missing")
    assert code == 1 and err.startswith("error:")


def test_override_types_say_none_not_nonetype():
    from rlcast.io.options import parse_overrides
    from rlcast.training.train import TrainConfig

    with pytest.raises(RlcastError, match=r"'abc' is not a number or none$"):
        parse_overrides(TrainConfig, ["learning_rate=abc"], ["learning_rate"], "--hp")


# --- bad values: one line naming the setting, before any work ---

@pytest.mark.parametrize("hp, message", [
    ("learning_rate=0", "learning_rate must be > 0 (got 0)"), ("learning_rate=-1", "learning_rate must be > 0"),
    ("learning_rate=nan", "learning_rate must be a finite number (got nan)"),
    ("max_completion_length=0", "max_completion_length must be >= 1 (got 0)"),
    ("temperature=-1", "temperature must be > 0"), ("lora_r=0", "lora_r must be >= 1 (got 0)"),
    ("lr_scheduler_type=cosin", "unknown lr_scheduler_type 'cosin'; known: linear, cosine"),
])
def test_train_rejects_bad_hyper_parameters_without_leaving_a_run(run_cli, tmp_path, hp, message):
    out = tmp_path / "run"
    _one_line(run_cli("train", "--out", out, "--hp", hp), message)
    assert not (out / "run.json").exists()


def test_derived_settings_are_filled_only_when_unset():
    from rlcast.evaluation.tasks import get_task
    from rlcast.training.train import DEFAULT_LR, TrainConfig

    task = get_task("arith")
    assert TrainConfig().resolve(task).learning_rate == DEFAULT_LR[("rl", False)]
    assert TrainConfig().resolve(task).max_completion_length == task.max_new_tokens
    given = TrainConfig(learning_rate=2e-6, max_completion_length=1).resolve(task)
    assert (given.learning_rate, given.max_completion_length) == (2e-6, 1)


@pytest.mark.parametrize("method, params, message", [
    ("relex", {"rank": "abc"}, "relex: rank must be an integer (got 'abc')"),
    ("relex", {"rank": 0}, "relex: rank must be >= 1 (got 0)"),
    ("next", {"epochs": -1}, "next: epochs must be >= 1 (got -1)"),
    ("next", {"lr": math.nan}, "next: lr must be a finite number"),
    ("next", {"c": -1.5}, "next: c must be > 0"),
    ("next", {"task": "arithmetic"}, "unknown task 'arithmetic'"),
    ("drift", {"damping": "x"}, "drift: damping must be a finite number"),
    ("rre", {"iterates": 2}, "rre: iterates must be >= 3 (got 2)"),
    ("alpharl", {"target_accuracy": 1.5}, "alpharl: target_accuracy must be <= 1"),
])
def test_methods_check_their_parameters_on_construction(method, params, message):
    from rlcast.extrapolation import make_extrapolator

    with pytest.raises(RlcastError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_extrapolator(method, **params)


def test_bad_values_fail_before_any_output(run_cli, planted, tmp_path):
    run = planted / "plain"
    _usage_error(run_cli("eval", run / "checkpoint-10", "-n", "-1"), "'-n'", "greater than or equal to 1")
    _one_line(run_cli("extrapolate", run, "-m", "next", "--epochs", "-1", "--until", "20", "--target", "30",
                      "--out", tmp_path / "pred"), "next: epochs must be >= 1 (got -1)")
    compare = ["compare", run, "--task", "arith", "--n-prompts", "2", "--out", tmp_path / "cmp"]
    _one_line(run_cli(*compare, "--cutoffs", ""), "--cutoffs ''", "at least one fraction")
    _one_line(run_cli(*compare, "--methods", "relex", "--param", "relex.nosuch=1"),
              "method relex has no parameter 'nosuch'")
    _one_line(run_cli(*compare, "--methods", "relex", "--param", "relex.rank=abc"),
              "relex: rank must be an integer (got 'abc')")
    _one_line(run_cli(*compare, "--methods", "relex", "--param", "next.epochs=3"),
              "parameters for 'next': not among the compared methods (relex)")
    _one_line(run_cli("analyze", run, "--workers", "0"), "--workers must be >= 1")
    assert not any(tmp_path.iterdir()) and not (run / "rlcast").exists()


# --- wrong folders name the way out ---

def test_a_folder_of_runs_and_a_checkpoint_name_the_run_to_give(run_cli, planted):
    _one_line(run_cli("analyze", planted), "no checkpoints found", "holds 2 run(s)", str(planted / "accel"),
              str(planted / "plain"))
    _one_line(run_cli("analyze", planted / "plain" / "checkpoint-20"), "no checkpoints found",
              f"the checkpoint of step 20 of the run {planted / 'plain'}: give that run folder")
    _one_line(run_cli("analyze", planted / "plain" / "base"), "no checkpoints found")  # no run near: no hint
    assert not (planted / "rlcast").exists() and not (planted / "plain" / "checkpoint-20" / "rlcast").exists()


# --- a checkpoint inside a run is scored on the run's task variant ---

@pytest.fixture(scope="module")
def plus_run(tmp_path_factory, tiny_model):
    """An rlcast run trained on `arith` with ops=+ whose checkpoint-1 is the testbed base."""
    base = tiny_model
    run = tmp_path_factory.mktemp("plus") / "run"
    (run / "checkpoint-1").mkdir(parents=True)
    for f in base.iterdir():
        (run / "checkpoint-1" / f.name).symlink_to(f)
    (run / "run.json").write_text(json.dumps({"format": 2, "config": {}, "base": str(base), "task": "arith",
                                              "task_args": {"ops": "+"}, "checkpoints": [{"step": 1}]}))
    return run


@pytest.mark.slow
def test_eval_scores_a_checkpoint_on_its_runs_task_variant(run_cli, plus_run, tmp_path, torch_single_thread):
    ckpt = plus_run / "checkpoint-1"
    for i, (args, ops) in enumerate(((["--task", "arith"], "+"), ([], "+"), (["--task-arg", "ops=+-"], "+-"))):
        code, out, err = run_cli("eval", ckpt, "-n", "16", "--json", tmp_path / f"eval-{i}.json", *args)
        assert code == 0, err
        saved = json.loads((tmp_path / f"eval-{i}.json").read_text())
        signs = {sign for row in saved["details"] for sign in "+-" if sign in row["prompt"]}
        assert signs == set(ops) and saved["task_args"] == {"ops": ops}  # the prompts of that variant
        assert json.loads(out)["accuracy"] == saved["accuracy"]
        assert f"arith (ops={ops})" in err and (("the task of the run" in err) == (ops == "+")), err


def test_every_scoring_command_takes_task_arguments():
    command = get_command(cli.app)
    for name in ("compare", "dominance", "dynamics", "report", "eval", "extrapolate"):
        options = {opt for p in command.commands[name].params for opt in p.opts}
        assert {"--task", "--task-arg"} <= options, name


def test_run_task_spec_keeps_the_runs_arguments_unless_told_otherwise():
    from rlcast.evaluation.tasks import run_task_spec, task_variant
    from rlcast.io.manifest import Manifest

    manifest = Manifest(task="arith", task_args={"ops": "+"})
    assert run_task_spec(manifest) == run_task_spec(manifest, "arith") == ("arith", {"ops": "+"})
    assert run_task_spec(manifest, None, {"ops": "-"}) == ("arith", {"ops": "-"})
    assert run_task_spec(manifest, "rg:chain_sum") == ("rg:chain_sum", {})
    assert run_task_spec(None) == (None, {})
    assert task_variant("arith", {"ops": "+"}) == "arith (ops=+)" and task_variant("arith", {}) == "arith"


# --- continue: the way out of a missing optimizer state, and a bar of the steps it runs ---

def test_continue_without_optimizer_state_names_the_fresh_optimizer(run_cli, tmp_path):
    from rlcast.training.train import TrainConfig

    run = tmp_path / "run"
    (run / "checkpoint-20").mkdir(parents=True)
    (run / "checkpoint-20" / "trainer_state.json").write_text("{}")
    (run / "run.json").write_text(json.dumps({"format": 2, "config": TrainConfig().to_json(), "base": "b",
                                              "checkpoints": [{"step": 20}]}))
    (tmp_path / "weights").mkdir()
    _one_line(run_cli("continue", run, "--at", "20", "--steps", "30", "--out", tmp_path / "out", "--weights",
                      tmp_path / "weights"), "checkpoint-20: no optimizer.pt", "--optimizer fresh")
    assert not (tmp_path / "out").exists()


def test_progress_counts_the_steps_this_invocation_runs():
    from transformers import TrainerState

    from rlcast.io.manifest import Manifest
    from rlcast.training.train import RichProgress

    bar = Progress(disable=True)
    progress = RichProgress(bar, "GRPO", Manifest(base_accuracy=0.5), total=70)
    progress.on_train_begin(None, TrainerState(global_step=60), None)
    progress.on_step_end(None, TrainerState(global_step=63), None)
    task = bar.tasks[0]
    assert (task.completed, task.total) == (3, 10) and "steps 60-70" in task.description


# --- help: every option described, values by name, no cut lists ---

def test_help_has_no_python_types_and_describes_every_option():
    command = get_command(cli.app)
    runner = CliRunner(env={"COLUMNS": "80"})
    for name, sub in command.commands.items():
        for param in sub.params:
            assert param.help, f"{name} {param.name}: no help text"
        page = runner.invoke(cli.app, [name, "--help"]).output
        for python_type in ("<str>", "<int>", "<float>", "<bool>", "list[", "…"):
            assert python_type not in page, f"rlcast {name} --help shows {python_type}"
    page = runner.invoke(cli.app, ["train", "--help"]).output
    for key in cli.HP_KEYS.split(", ") + cli.ACCEL_KEYS.split(", "):
        assert key in page, key
    assert "..." not in cli.HP_KEYS + cli.ACCEL_KEYS


# --- seams: one placement value everywhere; extrapolate without TRL ---

def test_every_app_takes_one_compute_value():
    import inspect

    from rlcast.apps.analysis import analyze
    from rlcast.apps.compare import compare
    from rlcast.apps.dominance import dominance
    from rlcast.core.backend import Compute
    from rlcast.extrapolation.base import write_prediction

    for fn in (analyze, compare, dominance, write_prediction):
        params = inspect.signature(fn).parameters
        assert "compute" in params and not {"device", "backend", "ray_address", "workers"} & set(params), fn
    with pytest.raises(RlcastError, match="--backend 'spark'"):
        Compute(backend="spark")
    with pytest.raises(RlcastError, match="--ray-address needs --backend ray"):
        Compute(ray_address="auto")
    with pytest.raises(RlcastError, match="--device 'tpu'"):
        Compute(device="tpu")


EXTRAPOLATE = r"""
import sys
from rlcast.apps.cli import main
try:
    main()
except SystemExit as exit_:
    print(exit_.code, "trl" in sys.modules)
"""


@pytest.mark.slow
def test_extrapolate_does_not_import_trl(planted, tmp_path):
    out = tmp_path / "pred"
    args = ["extrapolate", str(planted / "plain"), "-m", "weight-linear", "--until", "20", "--target", "30", "--out",
            str(out), "--device", "cpu"]
    done = subprocess.run([sys.executable, "-c", EXTRAPOLATE, *args], capture_output=True, text=True)
    assert done.stdout.strip().splitlines()[-1] == "0 False", done.stdout + done.stderr
    assert (out / "config.json").exists()


# --- result tables piped or logged: no column cut off ---

def test_compare_table_keeps_its_gain_column_when_piped(tmp_path):
    import io

    from rich.console import Console

    from rlcast.apps.compare import Comparison, Row, print_table

    long = "/very/long/path/of/a/run/" * 6
    result = Comparison(run=long, task="arith", target=300, n_prompts=200, seed=0, cutoffs=[60], params={},
                        rows=[Row("real", 0, 300, 0.5, 0.45, 0.55), Row("real", 60, 300, 0.55, 0.5, 0.6),
                              Row("real", 300, 300, 0.6, 0.55, 0.65, 100.0),
                              Row("weight-linear", 60, 300, 0.58, 0.53, 0.63, 96.7, 0.03)],
                        forecasts=[{"cutoff": 60, "target": 300, "median": 0.59, "low": 0.5, "high": 0.66}])
    piped = io.StringIO()  # not a terminal: rich would give it 80 columns
    print_table(result, Console(file=piped))
    text = piped.getvalue()
    assert "+0.030" in text and "96.7%" in text and "gain" in text and "…" not in text, text


# --- the first hour: make targets ---

@pytest.mark.slow  # a subprocess
@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_demo_installs_no_test_extras_and_make_test_does():
    root = Path(__file__).resolve().parent.parent
    plan = lambda target: subprocess.run(["make", "-n", "-B", "-C", str(root), target], capture_output=True,  # noqa: E731
                                         text=True, check=True).stdout
    demo, test = plan("demo"), plan("test")
    assert "pip install -q -e .\n" in demo and "[test]" not in demo and "rlcast demo" in demo
    assert '-e ".[test]"' in test and "pytest" in test
    assert "rlcast-demo/" in (root / ".gitignore").read_text().splitlines()  # `rlcast demo`'s default output


def test_no_python_reprs_in_user_messages():
    """What a user reads names options and values, not Python: no `resume=True`, `NoneType`, pydantic's "Value error,"."""
    import re

    src = Path(__file__).resolve().parent.parent / "src" / "rlcast"
    call = re.compile(r"RlcastError\((?:[^()]|\((?:[^()]|\([^()]*\))*\))*\)", re.S)
    found = [(path.name, message[:80]) for path in src.rglob("*.py") for message in call.findall(path.read_text())
             if any(word in message for word in ("resume=True", "NoneType", "Value error"))]
    assert found == []

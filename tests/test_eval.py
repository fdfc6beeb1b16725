"""`rlcast eval RUN`: every checkpoint of a run scored on held-out prompts as `rlcast train` scores them and recorded in
RUN/run.json (created for a run rlcast did not train), nothing scored twice, an interrupted call resumed."""

import json
import shutil
from pathlib import Path

import pytest

from rlcast.training.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    """A 2-step run of the tiny testbed model (checkpoints 1 and 2) whose run.json holds train's own held-out
    accuracies (16 prompts)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield train(tmp_path_factory.mktemp("trained") / "run",
                    TrainConfig(eval_prompts=16, batch_size=16, num_generations=4, steps=2, save_every=1,
                                model=str(tiny_model)), progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture()
def foreign(trained, tmp_path):
    """The same checkpoint folders without run.json: a run rlcast did not train."""
    return shutil.copytree(trained, tmp_path / "foreign", ignore=shutil.ignore_patterns("run.json", ".rlcast*"))


def _one_line(result, code, *words):
    got, out, err = result
    assert got == code, (got, out, err)
    if code == 1:
        assert err.strip().startswith("error:") and "\n" not in err.strip(), err
    for word in words:
        assert word in err, err


@pytest.mark.slow  # trains the tiny model for 2 steps, scores 16 prompts per model
def test_a_run_without_run_json_is_scored_as_train_scores_it(run_cli, trained, foreign):
    base = json.loads((trained / "run.json").read_text())["base"]
    _one_line(run_cli("forecast", foreign, "--base", base), 1, "rlcast eval")  # the error names the way out
    _one_line(run_cli("eval", foreign, "--base", base), 1, "no task", "pass --task")
    assert not (foreign / "run.json").exists()

    code, out, err = run_cli("eval", foreign, "--base", base, "--task", "arith", "--prompts", "16")
    assert code == 0, err
    assert "3 of 3 models to score" in err and f"wrote {foreign / 'run.json'}" in err
    made, own = (json.loads((folder / "run.json").read_text()) for folder in (foreign, trained))
    assert made["rlcast"] == {"command": "eval", "settings": {"n_prompts": 16, "seed": 0, "task": "arith",
                                                              "task_args": {}}}
    assert made["base"] == base and made["eval"] == "greedy, test split"
    # the same prompts, greedy, as train scored its in-memory models: the same accuracies and intervals
    assert made["base_accuracy"] == own["base_accuracy"] and made["base_ci"] == own["base_ci"]
    assert [(e["step"], e["path"], e["accuracy"], e["ci"]) for e in made["checkpoints"]] == \
        [(e["step"], e["path"], e["accuracy"], e["ci"]) for e in own["checkpoints"]]
    assert f"{own['base_accuracy']:.3f}" in out and f"{own['checkpoints'][-1]['accuracy']:.3f}" in out  # the table

    from rlcast.io.checkpoints import load_run

    assert load_run(foreign).accuracy == load_run(trained).accuracy  # what forecast and compare read


@pytest.mark.slow  # trains the tiny model for 2 steps, scores 16 prompts per model
def test_a_checkpoint_already_scored_is_not_scored_again_and_an_interrupted_call_resumes(run_cli, trained, foreign,
                                                                                        monkeypatch):
    from rlcast.apps import evaluate

    base = json.loads((trained / "run.json").read_text())["base"]
    scored = []
    real = evaluate.scored_checkpoints

    def interrupted(*args, **kwargs):
        for step, score in real(*args, **kwargs):
            scored.append(step)
            yield step, score
            if len(scored) == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "scored_checkpoints", interrupted)
    code, _, err = run_cli("eval", foreign, "--base", base, "-t", "arith", "-n", "16")
    assert code == 130 and "interrupted" in err and scored == [0, 1]
    half = json.loads((foreign / "run.json").read_text())
    assert [e.get("accuracy") is not None for e in half["checkpoints"]] == [True, False]  # base and step 1 kept
    _one_line(run_cli("forecast", foreign), 1, "1 checkpoint(s) with a held-out accuracy",
              f"`rlcast eval {foreign}` scores every checkpoint")  # the error names the way out

    code, _, err = run_cli("eval", foreign, "--base", base, "-t", "arith", "-n", "16")
    assert code == 0 and "1 of 3 models to score (2 already scored" in err, err
    assert scored == [0, 1, 2]  # only step 2 scored
    before = (foreign / "run.json").read_bytes()
    code, _, err = run_cli("eval", foreign, "-n", "16")  # the run.json now names base and task
    assert code == 0 and "0 of 3 models to score" in err and "unchanged" in err, err
    assert (foreign / "run.json").read_bytes() == before and scored == [0, 1, 2]

    shutil.copytree(foreign / "checkpoint-2", foreign / "checkpoint-3")  # the run wrote another checkpoint since
    code, _, err = run_cli("eval", foreign)
    assert code == 0 and "1 of 4 models to score (3 already scored" in err and scored == [0, 1, 2, 3], err
    steps = {e["step"]: e for e in json.loads((foreign / "run.json").read_text())["checkpoints"]}
    assert steps[3]["path"] == "checkpoint-3" and steps[3]["accuracy"] == steps[2]["accuracy"]  # the same weights


@pytest.mark.slow  # trains the tiny model for 2 steps, scores 16 prompts per model
def test_a_run_of_rlcast_train_is_updated_in_place_only_for_new_settings(run_cli, trained, tmp_path):
    run = shutil.copytree(trained, tmp_path / "run")
    before = (run / "run.json").read_bytes()
    code, _, err = run_cli("eval", run)  # train's own settings: 16 prompts of its task, seed 0
    assert code == 0 and "0 of 3 models to score" in err, err
    assert (run / "run.json").read_bytes() == before
    _one_line(run_cli("eval", run, "-n", "8"), 1, "with 16 prompts", "with 8 prompts", "--force")
    assert (run / "run.json").read_bytes() == before
    code, _, err = run_cli("eval", run, "-n", "8", "--force")
    assert code == 0 and "3 of 3 models to score" in err, err
    old, new = json.loads(before), json.loads((run / "run.json").read_text())
    assert new["rlcast"]["settings"]["n_prompts"] == 8
    assert {k: v for k, v in new.items() if k not in ("rlcast", "base_accuracy", "base_ci", "checkpoints")} == \
        {k: v for k, v in old.items() if k not in ("base_accuracy", "base_ci", "checkpoints")}  # the rest kept
    assert [e["generation_batches"] for e in new["checkpoints"]] == [e["generation_batches"] for e in
                                                                      old["checkpoints"]]
    assert not list(run.glob(".run.json*"))  # written atomically: no temporary left


@pytest.mark.slow  # trains the tiny model for 2 steps, scores 16 prompts per model
def test_a_hand_written_run_json_and_one_model_options_are_refused(run_cli, trained, tmp_path):
    run = shutil.copytree(trained, tmp_path / "run")
    own = json.loads((run / "run.json").read_text())
    hand = {"base": own["base"], "task": "arith", "checkpoints": [{"step": 1, "path": "checkpoint-1"},
                                                                   {"step": 2, "path": "checkpoint-2"}]}
    (run / "run.json").write_text(json.dumps(hand))
    _one_line(run_cli("eval", run), 1, "written by hand", "--force")
    assert json.loads((run / "run.json").read_text()) == hand
    _one_line(run_cli("eval", run, "--samples", "4", "--json", tmp_path / "x.json"), 2, "--samples, --json",
              "for one model")
    _one_line(run_cli("eval", run / "checkpoint-1", "--base", own["base"]), 2, "--base", "run folder")


# --- the README's walk-through as written ---

def _walk_through() -> str:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    return readme[readme.index("## Walk-through on your own run"):readme.index("## Weight extrapolation methods")]


def test_every_walk_through_command_parses(tmp_path, monkeypatch):
    """Every `rlcast ...` of the walk-through names real options with values of the right type."""
    import re

    from typer.main import get_command

    from rlcast.apps import cli

    monkeypatch.chdir(tmp_path)
    for folder in ("RUN", "runs/steady"):
        (tmp_path / folder).mkdir(parents=True)
    commands = [" ".join(c.split()) for c in re.findall(r"`(rlcast [^`]+)`", _walk_through())]
    commands = [c for c in commands if len(c.split()) > 2 or c.split()[1] in ("forecast",)]
    assert any(c.startswith("rlcast continue") for c in commands) and any("--until" in c for c in commands)
    group = get_command(cli.app)
    for line in commands:
        name, *args = line.split()[1:]
        group.commands[name].make_context(name, [a for a in args if not a.startswith("#")])
    cont = next(c for c in commands if c.startswith("rlcast continue"))
    # a run of `rlcast train` keeps the optimizer state of its newest checkpoint only: cutoff would fail at --at
    assert "--optimizer fresh" in cont and "--preset steady" in _walk_through()


def test_the_in_python_snippet_fits_a_window_and_predicts_a_later_step(tmp_path, monkeypatch):
    from rlcast.extrapolation import relex
    from rlcast.io.synthetic import planted_run

    planted_run(tmp_path / "runs" / "steady", steps=[30, 60, 90, 120, 150], hidden=32, layers=1)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## In Python"):]
    code = section[section.index("```python") + len("```python"):section.index("```\n", section.index("```python"))]
    fitted = []
    real_fit = relex.Relex.fit

    def fit(self, run, *args, **kwargs):
        fitted.append(run.steps)
        return real_fit(self, run, *args, **kwargs)

    monkeypatch.setattr(relex.Relex, "fit", fit)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert fitted == [[30, 60]]  # the window up to step 60, not every checkpoint
    assert (tmp_path / "pred-150" / "config.json").exists()  # a later step than the window's

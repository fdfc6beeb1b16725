"""`rlcast train` interrupted at any moment (while a checkpoint is written, while one is scored, while the base is
scored) resumes to the same weights and the same run.json as an uninterrupted run; what cannot be resumed is a
one-line refusal before any model is loaded (issue 27, items 4 and 8)."""

import json
import os
import shutil
import signal
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer

from rlcast.apps.cli import _state
from rlcast.errors import RlcastError
from rlcast.training import train as train_module
from rlcast.training.accelerate import AccelerateCallback, AccelerateConfig
from rlcast.training.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("torch_single_thread")

RUN = TrainConfig(eval_prompts=16, batch_size=16, num_generations=4, steps=4, save_every=2)
# the same run as `rlcast train` options
ARGS = ["--steps", "4", "--save-every", "2", "--eval-prompts", "16", "--hp", "batch_size=16", "--hp",
        "num_generations=4"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """RUN, uninterrupted: what every interrupted and resumed run must end up as."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield train(tmp_path_factory.mktemp("straight") / "run", RUN, progress=False)
    finally:
        torch.set_num_threads(threads)


def manifest(run) -> dict:
    return json.loads((run / "run.json").read_text())


def same_run(run, straight) -> None:
    """Same weights at every checkpoint, and the same run.json (but its timestamps)."""
    for step in (2, 4):
        a = load_file(straight / f"checkpoint-{step}" / "model.safetensors")
        b = load_file(run / f"checkpoint-{step}" / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), step
    got, want = manifest(run), manifest(straight)
    for key in ("started", "finished"):
        got.pop(key), want.pop(key)
    assert got == want and got["status"] == "finished"


def copy(run, tmp_path, name="copy"):
    return shutil.copytree(run, tmp_path / name)


def edit(run, change) -> None:
    data = manifest(run)
    change(data)
    (run / "run.json").write_text(json.dumps(data))


def cut_save_at(monkeypatch, step):
    """Ctrl-C inside the Trainer's save of checkpoint `step`: its weights and optimizer written, not the rest."""
    save_rng = Trainer._save_rng_state

    def cut(self, output_dir):
        if self.state.global_step == step:
            raise KeyboardInterrupt
        return save_rng(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", cut)


def cut_scoring_at(monkeypatch, call):
    """Ctrl-C inside the `call`-th held-out scoring of the run (1: the base, 2: checkpoint-2, 3: checkpoint-4)."""
    evaluate, calls = train_module.evaluate, []

    def cut(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", cut)


@pytest.mark.slow
@pytest.mark.parametrize("where,at,recorded", [("save", 4, [2]), ("scoring", 2, []), ("scoring", 3, [2]),
                                               ("scoring", 1, [])])
def test_an_interrupt_anywhere_resumes_to_the_uninterrupted_run(straight, tmp_path, monkeypatch, where, at, recorded):
    out = tmp_path / "run"
    (cut_save_at if where == "save" else cut_scoring_at)(monkeypatch, at)
    with pytest.raises(KeyboardInterrupt):
        train(out, RUN, progress=False)
    monkeypatch.undo()
    state = manifest(out)
    assert state["status"] == "interrupted"
    assert [c["step"] for c in state["checkpoints"]] == recorded
    if where == "save":  # no half-written checkpoint-4, no temporary left behind
        assert not (out / "checkpoint-4").exists() and (out / "checkpoint-2").is_dir()
        assert not [p for p in out.iterdir() if p.name.startswith(".checkpoint-")]
    train(out, resume=True, progress=False)
    same_run(out, straight)


@pytest.mark.slow
def test_resume_scores_a_complete_checkpoint_that_run_json_does_not_record(straight, tmp_path):
    """An older rlcast resumed past a checkpoint whose scoring was interrupted: run.json lacked it for good."""
    run = copy(straight, tmp_path)
    edit(run, lambda m: m.update(status="interrupted", checkpoints=m["checkpoints"][1:]))
    train(run, resume=True, progress=False)
    same_run(run, straight)


@pytest.mark.slow
def test_a_run_interrupted_under_an_older_rlcast_resumes(straight, tmp_path, monkeypatch):
    """Its checkpoints carry no generation count (ManifestCallback's saved state, which the Trainer's save expects
    once the callback is stateful), and an interrupt while checkpoint-2 was scored lost its record."""
    out = tmp_path / "run"
    cut_scoring_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(out, RUN, progress=False)
    monkeypatch.undo()
    edit(out, lambda m: m.update(status="running"))
    state_file = out / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["stateful_callbacks"]["ManifestCallback"]
    state_file.write_text(json.dumps(state))
    train(out, resume=True, progress=False)
    # the completion tokens an older rlcast generated are unknown: not recorded from then on (its completions are)
    assert all("tokens" not in c for c in manifest(out)["checkpoints"])
    tokens = [c["tokens"] for c in manifest(straight)["checkpoints"]]
    edit(out, lambda m: [c.update(tokens=t) for c, t in zip(m["checkpoints"], tokens)])
    same_run(out, straight)


@pytest.fixture()
def no_model(monkeypatch):
    """Refusals come before any model is loaded."""
    def load_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(train_module, "load_model", load_model)


def refused(run, match, callbacks=()):
    before = (run / "run.json").read_bytes()
    with pytest.raises(RlcastError, match=match) as err:
        train(run, resume=True, callbacks=callbacks, progress=False)
    assert "\n" not in str(err.value) and (run / "run.json").read_bytes() == before


def test_resume_refuses_a_run_whose_checkpoints_are_gone(straight, tmp_path, no_model):
    run = copy(straight, tmp_path)
    shutil.rmtree(run / "checkpoint-4")
    refused(run, "records checkpoints up to step 4 but checkpoint-4 is missing or incomplete .newest complete: 2.")
    shutil.rmtree(run / "checkpoint-2")
    refused(run, "up to step 4 .* .newest complete: none.; resuming would train those steps again")


def test_resume_refuses_an_incomplete_checkpoint_in_the_way_and_keeps_it(straight, tmp_path, no_model):
    """A save cut short by an rlcast without atomic checkpoints: checkpoint-4 without trainer_state.json."""
    run = copy(straight, tmp_path)
    (run / "checkpoint-4" / "trainer_state.json").unlink()
    edit(run, lambda m: m.update(checkpoints=m["checkpoints"][:1]))
    refused(run, "checkpoint-4: incomplete checkpoint .* move it out of the run to resume from checkpoint-2")
    assert (run / "checkpoint-4" / "model.safetensors").is_file()
    (run / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4, "log_hist')  # cut mid-write
    refused(run, "checkpoint-4: incomplete checkpoint")
    (run / "checkpoint-4" / "trainer_state.json").unlink()
    os.mkfifo(run / "checkpoint-4" / "trainer_state.json")  # read as it is, it would hang the resume
    refused(run, "checkpoint-4/trainer_state.json: the trainer state is a FIFO")


def jumps(every):
    return AccelerateCallback(AccelerateConfig(every=every, eval_prompts=8))


@pytest.mark.slow
def test_resume_refuses_another_accelerator(straight, tmp_path, no_model):
    run = copy(straight, tmp_path)
    refused(run, "checkpoint-4: was trained with no accelerator; this resume has AccelerateCallback; resume with the "
                 "--accelerate and --accel settings", [jumps(2)])
    state_file = run / "checkpoint-4" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["stateful_callbacks"]["AccelerateCallback"] = jumps(2).state()
    state_file.write_text(json.dumps(state))
    refused(run, "was trained with AccelerateCallback; this resume has no accelerator")
    refused(run, "was trained with other AccelerateCallback settings",
            [jumps(3)])
    with pytest.raises(AssertionError, match="a model was loaded"):  # the same accelerator passes the checks
        train(run, resume=True, callbacks=[jumps(2)], progress=False)


@pytest.mark.slow
def test_cli_resume_accepts_the_same_command_line(straight, tmp_path, run_cli):
    run = copy(straight, tmp_path)
    code, _, err = run_cli("train", "--out", run, *ARGS, "--resume")
    assert code == 0, err
    assert manifest(run)["checkpoints"] == manifest(straight)["checkpoints"]
    code, _, err = run_cli("train", "--out", run, *ARGS, "--seed", "3", "--resume")
    assert code == 1 and "only steps may change (differs: seed)" in err


def test_cli_interrupt_prints_the_resume_command(straight, tmp_path, run_cli, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted)
    run = copy(straight, tmp_path, "my run")
    code, _, err = run_cli("train", "--out", run, *ARGS, "--accelerate", "jumps", "--accel", "every=2")
    assert code == 130
    assert f"interrupted; resume with: rlcast train --out '{run}' --resume --accelerate jumps --accel every=2" in \
        " ".join(err.split())
    assert "hint" not in _state

    def terminated(*args, **kwargs):  # SIGTERM: the CLI turns it into the same interrupt
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setattr(train_module, "train", terminated)
    code, _, err = run_cli("train", "--out", run, "--resume")
    assert code == 143 and f"terminated; resume with: rlcast train --out '{run}' --resume" in " ".join(err.split())

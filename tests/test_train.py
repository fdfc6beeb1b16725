"""`rlcast train`: the run layout, every algorithm's TRL loss fields, configs and presets, resume, and the CLI;
`rlcast continue`: RL continued from other weights at a checkpoint of a run."""

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback
from typer.testing import CliRunner

from rlcast.apps.cli import app
from rlcast.errors import RlcastError
from rlcast.io import atomic
from rlcast.io.manifest import FORMAT
from rlcast.io.checkpoints import load_run
from rlcast.training import continuation, train as train_module
from rlcast.training.continuation import continue_from
from rlcast.training.train import ALGOS, HYPERPARAMETERS, TrainConfig, read_manifest, train
from rlcast.io.options import parse_overrides
from rlcast.training.support import config_from_dict
from rlcast.training.testbed import base_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FAST = dict(eval_prompts=16, batch_size=16, num_generations=4)


def config(**kw) -> TrainConfig:
    return TrainConfig(**(FAST | kw))


class RecordArgs(TrainerCallback):
    """Keeps the TrainingArguments the trainer was built with."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.args = args


@pytest.mark.slow
def test_grpo_run_layout_and_manifest(tmp_path):
    out = train(tmp_path / "run", config(steps=4, save_every=2, seed=1, learning_rate=1e-3), progress=False)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["format"] == FORMAT and manifest["base"] == str(base_model())
    assert (manifest["algo"], manifest["task"]) == ("grpo", "arith")
    stored = TrainConfig(**manifest["config"])
    assert (stored.seed, stored.learning_rate, stored.max_completion_length) == (1, 1e-3, 6)  # resolved
    assert manifest["status"] == "finished"
    assert [c["step"] for c in manifest["checkpoints"]] == [2, 4]
    assert [c["path"] for c in manifest["checkpoints"]] == ["checkpoint-2", "checkpoint-4"]
    for c in manifest["checkpoints"] + [{"accuracy": manifest["base_accuracy"]}]:
        assert 0.0 <= c["accuracy"] <= 1.0
    # only the newest checkpoint keeps the optimizer state needed to resume
    assert not (out / "checkpoint-2" / "optimizer.pt").exists()
    assert (out / "checkpoint-4" / "optimizer.pt").exists()
    w0 = load_file(base_model() / "model.safetensors")
    w4 = load_file(out / "checkpoint-4" / "model.safetensors")
    assert w0.keys() == w4.keys()
    assert any(not torch.equal(w0[k], w4[k]) for k in w0)
    with pytest.raises(RlcastError, match="not empty"):
        train(out, config(steps=2, save_every=2), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("algo,loss_type,epsilon_high,scale_rewards", [
    ("grpo", "grpo", 0.2, "group"), ("dr-grpo", "dr_grpo", 0.2, "none"), ("dapo", "dapo", 0.28, "group"),
    ("bnpo", "bnpo", 0.2, "group"), ("rloo", None, 0.2, None)])
def test_every_rl_algorithm_sets_its_trl_loss_fields(tmp_path, algo, loss_type, epsilon_high, scale_rewards):
    seen = RecordArgs()
    out = train(tmp_path / algo, config(algo=algo, steps=2, save_every=2), callbacks=[seen], progress=False)
    assert [c["step"] for c in json.loads((out / "run.json").read_text())["checkpoints"]] == [2]
    assert seen.args.epsilon == 0.2 and seen.args.epsilon_high == epsilon_high
    assert getattr(seen.args, "loss_type", None) == loss_type
    assert getattr(seen.args, "scale_rewards", None) == scale_rewards
    assert seen.args.num_iterations == 1


@pytest.mark.slow
def test_rollouts_reused_num_iterations_times(tmp_path):
    """num_iterations = 2: each generation batch serves two optimizer steps (4 steps, 2 generation rounds, counted in
    run.json)."""
    seen = RecordArgs()
    out = train(tmp_path / "mu2", config(steps=4, save_every=2, num_iterations=2), callbacks=[seen], progress=False)
    assert seen.args.num_iterations == 2
    manifest, stored = read_manifest(out)
    assert stored.num_iterations == 2
    assert [(c.step, c.generation_batches) for c in manifest.checkpoints] == [(2, 1), (4, 2)]
    with pytest.raises(RlcastError, match="num_iterations 2: rollouts are reused by RL algorithms, not sft"):
        TrainConfig(algo="sft", num_iterations=2)
    with pytest.raises(RlcastError, match="num_iterations must be >= 1"):
        TrainConfig(num_iterations=0)


@pytest.mark.slow
def test_lora_and_sft_runs(tmp_path):
    lora = train(tmp_path / "lora", config(algo="dapo", lora=True, steps=2, save_every=2, lora_r=4), progress=False)
    assert (lora / "checkpoint-2" / "adapter_model.safetensors").exists()
    assert json.loads((lora / "checkpoint-2" / "adapter_config.json").read_text())["r"] == 4
    assert read_manifest(lora)[1].lora is True
    sft = train(tmp_path / "sft", config(algo="sft", steps=2, save_every=1), progress=False)
    assert [c["step"] for c in json.loads((sft / "run.json").read_text())["checkpoints"]] == [1, 2]
    assert set(ALGOS) == {"grpo", "dr-grpo", "dapo", "bnpo", "rloo", "sft"}


def test_config_is_validated_and_overrides_are_typed():
    with pytest.raises(RlcastError, match="unknown algorithm"):
        TrainConfig(algo="ppo2")
    with pytest.raises(RlcastError, match="multiple of num_generations"):
        TrainConfig(batch_size=10, num_generations=4)
    with pytest.raises(RlcastError, match="not rloo"):
        TrainConfig(algo="rloo", loss_type="dapo")
    parse = lambda *items: parse_overrides(TrainConfig, items, HYPERPARAMETERS, "--hp")  # noqa: E731
    assert parse("learning_rate=3e-6", "num-generations=4", "epsilon_high=none", "loss_type=dr_grpo") == {
        "learning_rate": 3e-6, "num_generations": 4, "epsilon_high": None, "loss_type": "dr_grpo"}
    with pytest.raises(RlcastError, match="unknown key 'lr'"):
        parse("lr=1")
    with pytest.raises(RlcastError, match="'1.5' is not an integer"):
        parse("num_generations=1.5")
    with pytest.raises(RlcastError, match="expected KEY=VALUE"):
        parse("beta")
    with pytest.raises(RlcastError, match="unknown key 'steps'"):  # run settings have their own options
        parse("steps=3")
    assert parse("keep_optimizer=all", "schedule_steps=300") == {"keep_optimizer": "all", "schedule_steps": 300}
    with pytest.raises(RlcastError, match="keep_optimizer 'first': expected last or all"):
        TrainConfig(keep_optimizer="first")
    # a format-2 run.json written before these fields existed still loads, with the old behaviour
    older = {k: v for k, v in TrainConfig().to_json().items()
             if k not in ("keep_optimizer", "schedule_steps", "num_iterations")}
    assert config_from_dict(TrainConfig, older, "run.json") == TrainConfig()


class Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    run = config(steps=4, save_every=2)  # default lr: the rollouts keep mattering (at 1e-3 the rewards hit 0)
    straight = train(tmp_path / "straight", run, progress=False)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(out, run, callbacks=[Crash()], progress=False)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "interrupted" and [c["step"] for c in manifest["checkpoints"]] == [2]
    assert (out / "checkpoint-2" / "optimizer.pt").exists()
    with pytest.raises(RlcastError, match="only steps may change .differs: seed"):
        train(out, config(steps=4, save_every=2, seed=5), resume=True, progress=False)
    train(out, resume=True, progress=False)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "finished" and [c["step"] for c in manifest["checkpoints"]] == [2, 4]
    # same seed, same data order, RNG restored from the checkpoint, and the held-out evaluation at every checkpoint
    # leaves the RNG as it found it (else the uninterrupted run samples from the evaluation's reseeded RNG after
    # step 2 and the runs differ at step 4): the same weights, bit for bit
    a = load_file(straight / "checkpoint-4" / "model.safetensors")
    b = load_file(out / "checkpoint-4" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((straight / "run.json").read_text())["checkpoints"] == manifest["checkpoints"]


def test_resume_refuses_an_old_or_unreadable_manifest_in_one_line(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "run.json").write_text(json.dumps({"base": "x", "task": "arith", "hparams": {}, "checkpoints": []}))
    with pytest.raises(RlcastError, match=r"run.json: run.json format 1, this rlcast resumes format 2"):
        train(old, resume=True, progress=False)
    result = CliRunner().invoke(app, ["train", "--out", str(old), "--resume"])
    assert result.exit_code == 1 and isinstance(result.exception, RlcastError)
    assert str(old / "run.json") in str(result.exception) and "\n" not in str(result.exception)
    (old / "run.json").write_text("{broken")
    with pytest.raises(RlcastError, match="unreadable"):
        train(old, resume=True, progress=False)


@pytest.mark.slow
def test_cli_train_with_preset_hp_and_accelerate(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--preset", "default", "--algo", "dapo", "--steps", "4", "--save-every", "2",
            "--eval-prompts", "16", "--hp", "batch_size=16", "--hp", "num_generations=4", "--hp",
            "learning_rate=1e-3", "--accelerate", "jumps", "--accel", "method=weight-linear", "--accel", "every=2",
            "--accel", "horizon=2", "--accel", "window=3", "--accel", "snapshot_every=1", "--accel",
            "eval_prompts=8", "--accel", "max_backtest_error=none", "--accel", "verbose=false"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "run.json").read_text())
    stored = manifest["config"]
    assert (stored["algo"], stored["batch_size"], stored["learning_rate"], stored["epsilon_high"]) == \
        ("dapo", 16, 1e-3, 0.28)
    assert [c["step"] for c in manifest["checkpoints"]] == [2, 4]
    assert "accelerate: 1/1 jumps kept" in result.output or "accelerate: 0/1 jumps kept" in result.output
    bad = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "x"), "--hp", "num_generations=four"])
    assert bad.exit_code == 2 and "'four' is not an integer" in bad.output  # a usage error, before torch loads
    bad = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "x"), "--preset", "nope"])
    assert bad.exit_code == 2 and "'nope' is not one of" in bad.output


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 4-step run that keeps every checkpoint's optimizer state: the run the continuations start from. Its learning
    rate decays linearly over the 4 steps, so a continuation must keep the source's schedule to reproduce it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield train(tmp_path_factory.mktemp("source") / "run",
                    config(steps=4, save_every=2, keep_optimizer="all", lr_scheduler_type="linear"), progress=False)
    finally:
        torch.set_num_threads(threads)


def files(folder):
    """{path: (size, mtime)} of every file under `folder`: to check that a continuation wrote nothing there."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def weights(folder):
    return load_file(folder / "model.safetensors")


@pytest.mark.slow
def test_continuing_from_the_cutoffs_own_weights_reproduces_the_run(source, tmp_path):
    assert (source / "checkpoint-2" / "optimizer.pt").exists()  # keep_optimizer="all"
    mask = atomic._umask()  # the Trainer's safetensors are 0600: rlcast gives them the umask's mode
    assert (source / "checkpoint-2" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
    before = files(source)
    # stop at 3 (before the source's schedule ends), then resume to 4: still the source run, bit for bit
    out = continue_from(tmp_path / "cutoff", source, 2, 3, weights=source / "checkpoint-2", progress=False)
    manifest = json.loads((out / "run.json").read_text())
    assert [c["step"] for c in manifest["checkpoints"]] == [2, 3] and manifest["status"] == "finished"
    assert (manifest["config"]["steps"], manifest["config"]["schedule_steps"]) == (3, 4)
    assert manifest["continued_from"] == {"run": str(source.resolve()), "step": 2, "optimizer": "cutoff",
                                          "weights": str((source / "checkpoint-2").resolve())}
    continue_from(out, source, 2, 4, resume=True, progress=False)
    a, b = weights(source / "checkpoint-4"), weights(out / "checkpoint-4")
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = {c["step"]: c["accuracy"] for c in json.loads((source / "run.json").read_text())["checkpoints"]}
    manifest = json.loads((out / "run.json").read_text())
    assert {c["step"]: c["accuracy"] for c in manifest["checkpoints"] if c["step"] != 3} == plain  # same prompts
    assert manifest["base_accuracy"] == json.loads((source / "run.json").read_text())["base_accuracy"]
    run = load_run(out)
    assert run.steps == [2, 3, 4] and run.accuracy[4] == plain[4] and run.base == load_run(source).base
    # RL-Extra's restart: same weights, step counter, data and RNG, but new Adam moments and schedule
    fresh = continue_from(tmp_path / "fresh", source, 2, 4, weights=source / "checkpoint-2", optimizer="fresh",
                          progress=False)
    assert not (fresh / "checkpoint-2" / "optimizer.pt").exists()
    c = weights(fresh / "checkpoint-4")
    assert any(not torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(RlcastError, match="continues .* from step 2 .fresh optimizer., not .* .cutoff."):
        continue_from(fresh, source, 2, 6, resume=True, progress=False)
    assert files(source) == before  # nothing of the source run was written


@pytest.mark.slow
def test_continue_checks_its_inputs_before_loading_a_model(source, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(continuation, "load_model", no_model)
    monkeypatch.setattr(train_module, "load_model", no_model)
    out, start = tmp_path / "out", source / "checkpoint-2"

    def fails(match, run=source, step=2, steps=4, **kw):
        with pytest.raises(RlcastError, match=match) as err:
            continue_from(out, run, step, steps, **({"weights": start} | kw), progress=False)
        assert "\n" not in str(err.value) and not out.exists()

    fails("checkpoint-3: not a checkpoint of the run .* lists steps 2, 4", step=3)
    fails("steps 2: the continuation must end after its start step 2", steps=2)
    fails("optimizer 'adam'", optimizer="adam")
    fails("either a weights folder or a method", method="weight-linear", target=4)
    fails("unknown method 'spline'", weights=None, method="spline", target=4)
    fails("nothing to continue .no run.json.", run=tmp_path)
    fails("missing: no such model folder", weights=tmp_path / "missing")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.json").write_text("{}")
    fails("notes: not a Hugging Face model folder", weights=tmp_path / "notes")
    adapter = shutil.copytree(start, tmp_path / "adapter")
    (adapter / "adapter_config.json").write_text("{}")
    fails("adapter: a PEFT adapter", weights=adapter)
    tensors = weights(start)
    name = next(iter(tensors))
    for label, changed, match in (
            ("narrow", {name: tensors[name][..., :-1].clone()}, f"tensor {name} has shape"),
            ("extra", {"extra.weight": tensors[name].clone()}, "tensor extra.weight is not in the run's base")):
        bad = shutil.copytree(start, tmp_path / label)
        save_file(tensors | changed, bad / "model.safetensors")
        fails(f"{label}: {match}", weights=bad)
    dropped = shutil.copytree(source, tmp_path / "dropped")  # a checkpoint without its optimizer state
    (dropped / "checkpoint-2" / "optimizer.pt").unlink()
    fails("checkpoint-2: no optimizer.pt .* keep_optimizer=all", run=dropped)
    lora = tmp_path / "lora"
    lora.mkdir()
    manifest = json.loads((source / "run.json").read_text())
    manifest["config"]["lora"] = True
    (lora / "run.json").write_text(json.dumps(manifest))
    fails("lora: a LoRA run; a prediction is a merged dense model", run=lora)
    out.mkdir()
    (out / "x").write_text("")
    with pytest.raises(RlcastError, match="exists and is not empty"):
        continue_from(out, source, 2, 4, weights=start, progress=False)


@pytest.mark.slow
def test_cli_continue_predicts_then_trains(source, tmp_path):
    out = tmp_path / "next"
    args = ["continue", str(source), "--method", "weight-linear", "--at", "2", "--target", "4", "--steps", "4",
            "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "run.json").read_text())
    assert [c["step"] for c in manifest["checkpoints"]] == [2, 4]
    assert manifest["continued_from"]["prediction"] == {"method": "weight-linear", "target": 4, "params": {}}
    assert "accuracy" in result.output and "the plain run" in result.output
    predicted = weights(out / "checkpoint-2")  # W0 + (4/2)(W2 - W0), in the base's float32
    w0, w2 = load_file(base_model() / "model.safetensors"), weights(source / "checkpoint-2")
    assert all(torch.allclose(predicted[k], w0[k] + 2 * (w2[k] - w0[k]), atol=1e-6) for k in w0)
    bad = CliRunner().invoke(app, ["continue", str(source), "--at", "2", "--steps", "4", "--out", str(tmp_path / "x"),
                                   "--target", "4", "--weights", str(source / "checkpoint-2")])
    assert bad.exit_code == 1 and "--target and --param go with --method" in str(bad.exception)

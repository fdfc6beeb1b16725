"""Issue 27's red-team cases: nothing of the user's is deleted or overwritten, special files and hostile values are
one-line errors before any work.

Everything here runs in-process on tiny planted runs (tiny Llama, no training): the accelerator's snapshot folder,
`forecast --json` against every file a run holds, FIFOs and devices where files are expected, and hostile numbers in
settings, run.json, trainer_state.json and weights.
"""

import json
import os
import pickle
import signal
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlcast.errors import RlcastError
from rlcast.io.synthetic import planted_run, tiny_llama
from rlcast.training.testbed import char_tokenizer

pytestmark = pytest.mark.usefixtures("torch_single_thread")

STEPS = (10, 20, 30, 40, 50, 60)
TINY_TRAIN = ("--steps", "2", "--save-every", "2", "--eval-prompts", "4", "--hp", "batch_size=8", "--hp",
              "num_generations=4")  # bounds the work a command that should have failed at once would do


def files(folder):
    """{path: (size, mtime)} of everything under `folder`: to check that a command left it alone."""
    return {p: (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def one_line(result, *fragments):
    code, _, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert str(fragment) in lines[0], lines[0]
    return lines[0]


@contextmanager
def no_hang(seconds=20):
    """Fail (instead of hanging the suite) when the block blocks on a FIFO."""
    def alarm(signum, frame):
        raise TimeoutError("blocked: read a FIFO or a device without limit")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture()
def run(tmp_path):
    """A tiny run with held-out accuracies, train rewards and a trainer_state.json log in its last checkpoint."""
    root = planted_run(tmp_path / "run", steps=list(STEPS), hidden=32, layers=1)
    accuracy = [0.30, 0.36, 0.40, 0.45, 0.47, 0.50]
    (root / "run.json").write_text(json.dumps({
        "format": 2, "base": "base", "task": "arith", "base_accuracy": 0.2, "base_ci": [0.17, 0.23],
        "config": {"steps": 120, "eval_prompts": 500, "task": "arith"},
        "checkpoints": [{"step": s, "path": f"checkpoint-{s}", "accuracy": a, "train_reward": a - 0.05}
                        for s, a in zip(STEPS, accuracy)]}))
    log = [{"step": s, "reward": 0.2 + s / 200, "loss": 0.0} for s in range(5, 65, 5)]
    (root / "checkpoint-60" / "trainer_state.json").write_text(json.dumps({"log_history": log}))
    return root


def edit_manifest(root, change):
    manifest = json.loads((root / "run.json").read_text())
    change(manifest)
    (root / "run.json").write_text(json.dumps(manifest))


# --- 1. the snapshot window deletes only the folder it created

def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def test_the_snapshot_window_deletes_only_what_it_created_and_marked(tmp_path):
    from rlcast.training.accelerate.snapshots import FOLDER, SnapshotWindow

    mine = tmp_path / "scratch"
    (mine / "keep").mkdir(parents=True)
    (mine / "notes.txt").write_text("the user's")
    window = SnapshotWindow(2)
    window.open(mine, tmp_path / "run")
    for step in range(4):
        window.add(tiny_model(), step, step)
    assert sorted(p.name for p in (mine / FOLDER).glob("step-*")) == ["step-2", "step-3"]
    window.delete()
    assert not (mine / FOLDER).exists() and (mine / "keep").is_dir()
    assert (mine / "notes.txt").read_text() == "the user's"

    # a folder of that name that rlcast did not create, or the snapshots of another run: refused, left alone
    (mine / FOLDER).mkdir()
    (mine / FOLDER / "data.bin").write_bytes(b"x")
    with pytest.raises(RlcastError, match="was not created by rlcast; it is left alone"):
        SnapshotWindow(2).open(mine, tmp_path / "run")
    (mine / FOLDER / "data.bin").unlink()
    (mine / FOLDER).rmdir()
    other = SnapshotWindow(2)
    other.open(mine, tmp_path / "other-run")
    other.add(tiny_model(), 0, 0)
    with pytest.raises(RlcastError, match="holds the snapshots of the run .*other-run"):
        SnapshotWindow(2).open(mine, tmp_path / "run")
    assert (mine / FOLDER / "step-0" / "model.safetensors").is_file()

    # an older rlcast's folder (marked step-N snapshots, no record of its own) is adopted, so its run resumes
    legacy = tmp_path / "legacy"
    old = SnapshotWindow(2)
    old.root = legacy / FOLDER
    old.add(tiny_model(), 0, 0)
    window = SnapshotWindow(2)
    window.open(legacy, tmp_path / "run")
    window.delete()
    assert not (legacy / FOLDER).exists() and legacy.is_dir()


def test_training_begins_and_ends_without_touching_a_users_snapshot_dir(tmp_path):
    """--accel snapshot_dir=DIR used to delete DIR recursively at the start and at the end of training."""
    from rlcast.training.accelerate import AccelerateCallback, AccelerateConfig

    mine = tmp_path / "scratch"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    cb = AccelerateCallback(AccelerateConfig(method="weight-linear", window=3, eval_prompts=8,
                                             snapshot_dir=str(mine), verbose=False))
    args = SimpleNamespace(output_dir=str(tmp_path / "run"))
    state = SimpleNamespace(global_step=0, stateful_callbacks={})
    cb.on_train_begin(args, state, None, model=tiny_model())
    assert (mine / "notes.txt").is_file() and (mine / ".rlcast-accelerate" / "step-0" / "model.safetensors").is_file()
    cb.on_train_end(args, state, None)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("where, fragment", [
    ("{out}", "is the run's output folder, an input"), ("{out}/snapshots", "is inside the run's output folder"),
    ("{out}/..", "contains the run's output folder"), ("{model}", "is the model, an input"),
    ("{model}/snapshots", "is inside the model"),
])
def test_a_snapshot_dir_on_the_run_or_the_model_is_refused(tmp_path, where, fragment):
    from rlcast.training.accelerate import AccelerateCallback, AccelerateConfig

    out, model = tmp_path / "work" / "run", tmp_path / "model"
    out.mkdir(parents=True)
    model.mkdir()
    cb = AccelerateCallback(AccelerateConfig(snapshot_dir=where.format(out=out, model=model), eval_prompts=8))
    before = files(tmp_path)
    with pytest.raises(RlcastError, match=fragment.replace("'", ".")):
        cb.check_run(out, model)
    assert files(tmp_path) == before


def test_train_refuses_a_snapshot_dir_on_its_model_before_any_work(tmp_path, run_cli, capsys):
    base = tiny_llama(tmp_path / "base", hidden=32, layers=1, vocab=99)
    char_tokenizer().save_pretrained(base)
    capsys.readouterr()  # the writer's progress bar
    before = files(base)
    out = tmp_path / "run"
    for target, fragment in ((base, "is the model"), (out, "is the run's output folder")):
        one_line(run_cli("train", "--out", out, "--model", base, "--accelerate", "jumps", "--accel",
                         f"snapshot_dir={target}", *TINY_TRAIN), fragment)
        assert files(base) == before and not out.exists()


# --- 2. forecast --json never writes inside or over anything the run holds

@pytest.mark.parametrize("target, force", [
    ("checkpoint-60/model.safetensors", True), ("base/model.safetensors", True),
    ("checkpoint-60/trainer_state.json", True),
    ("checkpoint-60/forecast.json", False), ("base/forecast.json", False), ("run.json", True), (".", True),
])
def test_forecast_json_never_writes_into_what_it_reads(run, run_cli, target, force):
    before = files(run)
    one_line(run_cli("forecast", run, "--no-weights", "--json", run / target, *(["--force"] if force else [])),
             "an input of this command")
    assert files(run) == before


def test_forecast_json_spares_the_folders_of_a_run_known_by_its_run_json(run, run_cli):
    (run / "base" / "model.safetensors").unlink()  # the weights cannot be read: forecast reads run.json and the logs
    before = files(run)
    one_line(run_cli("forecast", run, "--json", run / "checkpoint-60" / "trainer_state.json", "--force"),
             "inside checkpoint 60")
    assert files(run) == before
    code, _, err = run_cli("forecast", run, "--json", run / "forecast.json")  # inside the run folder: fine
    assert code == 0, err


def test_a_temp_dir_inside_the_run_is_refused_before_any_work(run, run_cli, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(run / "checkpoint-30"))  # TMPDIR=RUN/checkpoint-30
    before = files(run)
    one_line(run_cli("compare", run, "--methods", "weight-linear", "--cutoffs", "0.5", "--n-prompts", "4",
                     "--device", "cpu", "--out", run.parent / "cmp"), "is inside checkpoint 30", "TMPDIR=DIR")
    assert files(run) == before


# --- 5. special files: regular files only, JSON with a size limit

def test_a_fifo_or_a_device_for_run_json_is_one_line(run, run_cli, tmp_path):
    out = tmp_path / "resumable"
    out.mkdir()
    os.mkfifo(out / "run.json")
    with no_hang():
        one_line(run_cli("train", "--out", out, "--resume"), "run.json: the run manifest is a FIFO")
    (out / "run.json").unlink()
    (out / "run.json").symlink_to("/dev/zero")
    with no_hang():
        one_line(run_cli("train", "--out", out, "--resume"), "run.json: the run manifest is a device")
        one_line(run_cli("continue", out, "--at", "10", "--steps", "20", "--weights", run / "checkpoint-10",
                         "--optimizer", "fresh", "--out", tmp_path / "cont"),
                 "run.json: the run manifest is a device")


def test_a_run_json_that_is_a_device_is_never_skipped(run, run_cli):
    (run / "run.json").unlink()
    (run / "run.json").symlink_to("/dev/zero")
    with no_hang():
        one_line(run_cli("analyze", run, "--device", "cpu"), "run.json: the run manifest is a device")
    assert not (run / "rlcast").exists()


def test_a_fifo_for_weights_is_one_line(run, run_cli):
    weights = run / "checkpoint-30" / "model.safetensors"
    weights.unlink()
    os.mkfifo(weights)
    with no_hang():
        one_line(run_cli("analyze", run, "--device", "cpu"), f"{weights}: the weights file is a FIFO")


def test_json_inputs_have_a_size_limit(run, monkeypatch):
    from rlcast.io import files as bounded
    from rlcast.io.manifest import Manifest

    monkeypatch.setattr(bounded, "MAX_JSON_MB", 1e-4)  # ~100 bytes
    with pytest.raises(RlcastError, match="unreadable run manifest .larger than 0.0001 MB"):
        Manifest.read(run / "run.json")


# --- 6 / 7. hostile numbers: every setting checked where it enters, one line, before any work

@pytest.mark.parametrize("setting, message", [
    ({"tolerance": float("nan")}, "tolerance must be a finite number"),
    ({"eval_batch_size": 0}, "eval_batch_size must be >= 1"),
    ({"grow": float("inf")}, "grow must be a finite number"),
    ({"horizon": 10**20}, "horizon must be <= 1000000000"),
    ({"every": "3"}, "every must be an integer"),
    ({"collapse": 0.0}, "collapse must be > 0"),
    ({"method_params": {"drift": {"no_such": 1}}}, "method drift has no parameter 'no_such'"),
])
def test_accelerate_settings_are_checked_at_construction(setting, message):
    from rlcast.training.accelerate import AccelerateConfig

    with pytest.raises(RlcastError, match=message):
        AccelerateConfig(**setting)


@pytest.mark.parametrize("method, setting, message", [
    ("gxpo", {"alpha": -1e6}, "alpha must be >= 0"), ("sfpo", {"alpha": float("nan")}, "alpha must be a finite"),
    ("rank1", {"boost": float("inf")}, "boost must be a finite"), ("rank1", {"boost": 1e30}, "boost must be <= 100"),
    ("sfpo", {"K": 10**20}, "K must be <= 100"), ("gxpo", {"K": 10**20}, "K must be <= 100"),
    ("gxpo", {"tau": float("nan")}, "tau must be a finite"), ("rank1", {"rank": 2.5}, "rank must be an integer"),
])
def test_lookahead_settings_are_checked_at_construction(method, setting, message):
    from rlcast.training.lookahead import LOOKAHEAD

    with pytest.raises(RlcastError, match=f"lookahead {method}: {message}"):
        LOOKAHEAD[method](**setting)


@pytest.mark.parametrize("args, message", [
    (["--accelerate", "jumps", "--accel", "task=no-such-task"], "unknown task 'no-such-task'"),
    (["--accelerate", "jumps", "--accel", "eval_batch_size=0"], "eval_batch_size must be >= 1"),
    (["--accelerate", "jumps", "--accel", "tolerance=nan"], "tolerance must be a finite number"),
    (["--accelerate", "gxpo", "--accel", "alpha=-1e6"], "alpha must be >= 0"),
    (["--accelerate", "rank1", "--accel", "boost=1e30"], "boost must be <= 100"),
    (["--hp", "learning_rate=1e308"], "learning_rate must be <= 1"),
    (["--hp", f"num_iterations={10**20}"], "num_iterations must be <= 1000000000"),
])
def test_train_refuses_hostile_settings_before_any_work(run_cli, tmp_path, args, message):
    out = tmp_path / "run"
    one_line(run_cli("train", "--out", out, *args, *TINY_TRAIN), message)
    assert not out.exists()


@pytest.mark.parametrize("change, fragment", [
    (lambda m: m["config"].update(steps="120"), "config.steps must be an integer >= 1, not str '120'"),
    (lambda m: m["config"].update(steps=2**63), "config.steps must be an integer in 1 .. 2^63 - 1"),
    (lambda m: m["config"].update(num_iterations=1e20), "config.num_iterations must be an integer >= 1, not float"),
    (lambda m: m["config"].update(eval_prompts=-3), "config.eval_prompts must be an integer in 1 .. 2^63 - 1"),
    (lambda m: m["checkpoints"][-1].update(step=2**63), "checkpoints[5].step must be a step number below 2^63"),
    (lambda m: m["checkpoints"][2].update(train_reward=1e308), "checkpoints[2].train_reward must be a finite number"),
    (lambda m: m["checkpoints"][2].update(train_reward=-1e308), "checkpoints[2].train_reward must be a finite number"),
])
def test_forecast_names_a_hostile_run_json_field(run, run_cli, change, fragment):
    edit_manifest(run, change)
    one_line(run_cli("forecast", run, "--no-weights"), f"{run / 'run.json'}: {fragment}")


@pytest.mark.parametrize("content, fragment", [
    ("[" * 100_000 + "]" * 100_000, "{state}: unreadable trainer state (nested too deeply)"),
    ('{"log_history": [{"step": "x", "reward": 0.3}]}', "{state}: log_history[0].step must be"),
    ('{"log_history": [{"step": Infinity, "reward": 0.3}]}', "{state}: log_history[0].step must be"),
    ('{"log_history": [{"step": 5, "reward": 0.3}, {"step": 10, "reward": NaN}]}',
     "{run}: reward is nan at step 10, not a finite number"),
    ('{"log_history": [{"step": 5, "reward": -1e308}]}', "{run}: reward is -1e+308 at step 5, not a finite number"),
])
def test_forecast_names_a_hostile_trainer_state(run, run_cli, content, fragment):
    state = run / "checkpoint-60" / "trainer_state.json"
    state.write_text(content)
    one_line(run_cli("forecast", run, "--no-weights"), fragment.format(state=state, run=run))


def test_finite_but_huge_weights_name_the_tensor(run, run_cli):
    path = run / "checkpoint-40" / "model.safetensors"
    tensors = load_file(path)
    name = "model.layers.0.mlp.up_proj.weight"
    tensors[name] = torch.full_like(tensors[name], 1e38)  # finite in float32; its norm is not
    save_file(tensors, path, metadata={"format": "pt"})
    one_line(run_cli("analyze", run, "--device", "cpu"), f"tensor {name} at step 40: its SVD failed",
             "largest entry is 1e+38")


class Exploit:
    def __reduce__(self):
        return (print, ("this ran code from a checkpoint",))


def test_a_malicious_resume_pickle_is_one_line(run_cli, tmp_path, capsys):
    """A run to resume (run.json + a complete checkpoint) whose rng_state.pth runs code when unpickled."""
    from rlcast.evaluation.tasks import get_task
    from rlcast.training.train import TrainConfig

    out = tmp_path / "run"
    checkpoint = tiny_llama(out / "checkpoint-2", hidden=32, layers=1, vocab=99)
    config = TrainConfig(steps=4, save_every=2, eval_prompts=4, batch_size=8, num_generations=4)
    (out / "run.json").write_text(json.dumps({
        "format": 2, "config": config.resolve(get_task("arith")).to_json(), "task": "arith", "status": "running",
        "checkpoints": [{"step": 2, "path": "checkpoint-2", "accuracy": 0.2}]}))
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": []}))
    (checkpoint / "rng_state.pth").write_bytes(pickle.dumps(Exploit()))
    capsys.readouterr()  # the writer's progress bar
    code, out_text, err = run_cli("train", "--out", out, "--resume")
    assert "this ran code" not in out_text + err
    one_line((code, out_text, err), f"{checkpoint / 'rng_state.pth'}: cannot load with torch.load(weights_only=True): "
                                    "refused")

"""run.json: the on-disk format round-trips unchanged, format 1 stays readable, every bad field is one line."""

import json

import pytest

from rlcast.errors import RlcastError
from rlcast.io.checkpoints import load_run
from rlcast.io.manifest import FORMAT, Entry, Manifest

FORMAT2 = {  # as `rlcast train` and `rlcast continue` write it
    "format": 2, "config": {"task": "arith", "lora": False, "max_completion_length": 6, "steps": 4},
    "base": "/models/base", "task": "arith", "task_args": {"ops": "+"}, "algo": "grpo", "eval": "greedy, test split",
    "base_accuracy": 0.25, "base_ci": [0.2, 0.3],
    "checkpoints": [{"step": 2, "path": "checkpoint-2", "accuracy": 0.5, "ci": [0.4, 0.6], "train_reward": 0.45},
                    {"step": 4, "path": "checkpoint-4", "accuracy": 0.75, "ci": [0.7, 0.8]}],
    "steps_done": 4, "status": "finished", "started": "2026-01-01T00:00:00", "finished": "2026-01-01T00:10:00",
    "continued_from": {"run": "/runs/plain", "step": 2, "optimizer": "cutoff", "weights": "/models/pred"},
}


def test_format_2_round_trips_unchanged(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(FORMAT2))
    manifest = Manifest.read(path)
    assert manifest.format == FORMAT == 2 and manifest.path == path
    assert manifest.to_json() == FORMAT2
    assert list(manifest.to_json()) == list(FORMAT2)  # the same key order as before
    assert manifest.accuracy == {0: 0.25, 2: 0.5, 4: 0.75}
    assert manifest.task_spec() == ("arith", {"ops": "+"})
    assert manifest.completion_budget == 6 and manifest.lora is False
    manifest.write(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == FORMAT2


def test_format_1_readable_with_its_loose_settings_kept(tmp_path):
    old = {"base": "base", "task": "arith", "task_args": {}, "algo": "grpo", "lora": True, "seed": 1,
           "hparams": {"learning_rate": 1e-5}, "base_accuracy": 0.1,
           "checkpoints": [{"step": "20", "path": "checkpoint-20", "accuracy": 0.3, "note": "kept"}]}
    manifest = Manifest.parse(old, tmp_path / "run.json")
    assert manifest.format == 1 and manifest.config is None and manifest.completion_budget is None
    assert manifest.lora is True and manifest.extra["hparams"] == {"learning_rate": 1e-5}
    assert manifest.accuracy == {0: 0.1, 20: 0.3}
    assert manifest.task_spec() == ("arith", None)
    assert manifest.to_json() == old | {"checkpoints": [{"step": 20, "path": "checkpoint-20", "accuracy": 0.3,
                                                         "note": "kept"}]}


def test_record_keeps_the_checkpoints_sorted():
    manifest = Manifest(config={}, checkpoints=[Entry(4, "checkpoint-4", 0.5)])
    manifest.record(Entry(2, "checkpoint-2", 0.4))
    manifest.record(Entry(4, "checkpoint-4", 0.6))
    assert [(e.step, e.accuracy) for e in manifest.checkpoints] == [(2, 0.4), (4, 0.6)]
    assert manifest.steps_done == 4


@pytest.mark.parametrize("data, message", [
    ([1, 2], "the manifest must be a JSON object, not list [1, 2]"),
    ({"format": 3}, "format int 3 is not one this rlcast reads"),
    ({"format": 2}, "config is missing"),
    ({"base": 123}, "base must be a string, not int 123"),
    ({"task": ["arith"]}, "task must be a string, not list ['arith']"),
    ({"task_args": "x"}, "task_args must be a JSON object, not str 'x'"),
    ({"base_accuracy": True}, "base_accuracy must be a number in [0, 1], not bool True"),
    ({"base_accuracy": 75}, "base_accuracy must be a number in [0, 1], not int 75"),
    ({"base_ci": [0.1]}, "base_ci must be a pair of numbers (low, high), not list [0.1]"),
    ({"checkpoints": {}}, "checkpoints must be a list of checkpoint entries, not dict {}"),
    ({"checkpoints": [5]}, "checkpoints[0] must be a JSON object, not int 5"),
    ({"checkpoints": [{"path": "checkpoint-1"}]}, "checkpoints[0].step is missing"),
    ({"checkpoints": [{"step": -1}]}, "checkpoints[0].step must be a step number (an integer >= 0), not int -1"),
    ({"checkpoints": [{"step": 1, "accuracy": "high"}]}, "checkpoints[0].accuracy must be a number in [0, 1], "
                                                         "not str 'high'"),
    ({"checkpoints": [{"step": 1, "path": 1}]}, "checkpoints[0].path must be a string, not int 1"),
    ({"checkpoints": [{"step": 1}, {"step": 1}]}, "checkpoints lists step 1 twice"),
    ({"format": 2, "config": {"max_completion_length": "6"}}, "config.max_completion_length must be an integer"),
    ({"format": 2, "config": []}, "config must be a JSON object, not list []"),
    ({"continued_from": {"run": "x"}}, "continued_from needs run, step and optimizer"),
    ({"status": 1}, "status must be a string, not int 1"),
])
def test_every_bad_field_is_one_line_naming_file_and_field(tmp_path, data, message):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RlcastError) as err:
        Manifest.read(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)



class _CountingStep(int):
    """A step number that counts the comparisons and hashes made with it (the duplicate check's cost)."""
    calls = 0

    def __eq__(self, other):
        _CountingStep.calls += 1
        return int.__eq__(self, other)

    def __hash__(self):
        _CountingStep.calls += 1
        return int.__hash__(self)


def test_duplicate_step_check_is_linear_in_the_entries():
    """2 x 10^4 entries (a reward logged every step) took 8.8 s with a quadratic check (issue 27): counted, not
    timed, the check touches each step a bounded number of times; a duplicate at the end is still found."""
    n = 2_000
    entries = [{"step": _CountingStep(s), "accuracy": 0.5} for s in range(n)]
    _CountingStep.calls = 0
    assert len(Manifest.parse({"checkpoints": entries}).checkpoints) == n
    assert _CountingStep.calls <= 4 * n  # the quadratic check made n^2 = 4 x 10^6
    with pytest.raises(RlcastError, match=f"checkpoints lists step {n - 1} twice"):
        Manifest.parse({"checkpoints": entries + [{"step": n - 1}]})
    many = [{"step": s, "accuracy": 0.5} for s in range(10 * n)]  # 2 x 10^4: 8.8 s before, milliseconds now
    assert Manifest.parse({"checkpoints": many}).checkpoints[-1].step == 10 * n - 1

@pytest.mark.parametrize("raw, message", [
    (b"{broken", "unreadable run manifest (Expecting"),
    (b"[" * 100_000 + b"]" * 100_000, "unreadable run manifest (nested too deeply)"),
    (b"\xff\xfe{}", "unreadable run manifest"),
])
def test_unreadable_json_is_one_line(tmp_path, raw, message):
    path = tmp_path / "run.json"
    path.write_bytes(raw)
    with pytest.raises(RlcastError) as err:
        Manifest.read(path)
    assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value)


def test_task_spec_without_a_task_names_the_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"base_accuracy": 0.2}))
    with pytest.raises(RlcastError, match=f"^{path}: no task in the run manifest; pass --task$"):
        Manifest.read(path).task_spec()


def test_load_run_needs_the_folder_of_every_entry(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"checkpoints": [{"step": 3, "accuracy": 0.5}]}))
    with pytest.raises(RlcastError, match=r"run.json: checkpoints\[0\].path is missing \(the folder of step 3\)"):
        load_run(tmp_path)

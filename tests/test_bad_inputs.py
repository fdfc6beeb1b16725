"""Every command on broken inputs: one line naming the file and the field or tensor, before any model is scored.

Each case breaks a copy of one small run (tiny Llama, char tokenizer: its base and checkpoints are loadable HF folders,
as TRL writes them, so a command would hand them to transformers as they are).
"""

import json
import pickle
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlcast.io.synthetic import planted_run, tiny_llama
from rlcast.training.testbed import char_tokenizer

pytestmark = pytest.mark.usefixtures("torch_single_thread")

DOMINANCE = ("--ranks", "1", "--n-prompts", "4", "--device", "cpu")
COMPARE = ("--methods", "weight-linear", "--cutoffs", "0.5", "--n-prompts", "4", "--device", "cpu")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good") / "run"
    base = tiny_llama(root / "base", hidden=32, layers=1, vocab=99, seed=3)
    char_tokenizer().save_pretrained(base)
    planted_run(root, steps=[5, 10], base=base)
    for step in (5, 10):
        char_tokenizer().save_pretrained(root / f"checkpoint-{step}")
    (root / "run.json").write_text(json.dumps({
        "base": "base", "task": "arith", "base_accuracy": 0.1,
        "checkpoints": [{"step": s, "path": f"checkpoint-{s}", "accuracy": 0.2} for s in (5, 10)]}))
    return root


@pytest.fixture()
def run(good, tmp_path):
    return shutil.copytree(good, tmp_path / "run")


def fails(run_cli, *args) -> str:
    """The command's error: exit code 1 and exactly one line on stderr (no traceback)."""
    code, _, err = run_cli(*map(str, args))
    line = err.strip()
    assert code == 1 and line.startswith("error:") and "\n" not in line, err
    return line


def edit_manifest(run, **changes):
    manifest = json.loads((run / "run.json").read_text())
    for key, value in changes.items():
        if key == "accuracy10":
            manifest["checkpoints"][1]["accuracy"] = value
        else:
            manifest[key] = value
    (run / "run.json").write_text(json.dumps(manifest))


def write_header(path, header: bytes, length: int | None = None, data: bytes = b""):
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)


# --- 1. files reach transformers only after rlcast's reader has checked them

@pytest.mark.parametrize("which", ["base", "checkpoint-10"])
def test_dominance_names_a_truncated_file(run, run_cli, which):
    path = run / which / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    line = fails(run_cli, "dominance", run, *DOMINANCE)
    assert f"{path}: tensor" in line and "is truncated" in line


def test_dominance_names_a_huge_header_length(run, run_cli):
    path = run / "checkpoint-10" / "model.safetensors"
    write_header(path, path.read_bytes()[8:], length=10 * 2**30)
    line = fails(run_cli, "dominance", run, *DOMINANCE)
    assert f"{path}: corrupt or truncated safetensors file (header length {10 * 2**30} does not fit" in line


def test_dominance_names_a_garbage_header(run, run_cli):
    path = run / "checkpoint-10" / "model.safetensors"
    write_header(path, b"{garbage}", data=bytes(64))
    assert f"{path}: corrupt or truncated safetensors file" in fails(run_cli, "dominance", run, *DOMINANCE)


class Exploit:
    def __reduce__(self):
        return (print, ("this ran code from a checkpoint",))


def test_dominance_refuses_a_malicious_bin(run, run_cli):
    folder = run / "checkpoint-10"
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Exploit()))
    code, out, err = run_cli("dominance", str(run), *DOMINANCE)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "this ran code" not in out + err
    assert f"{folder / 'pytorch_model.bin'}: cannot load with torch.load(weights_only=True): refused" in err


def test_eval_checks_the_model_folder_first(run, run_cli):
    path = run / "checkpoint-5" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    assert f"{path}: tensor" in fails(run_cli, "eval", run / "checkpoint-5", "--n-prompts", "2")


def test_load_model_checks_an_adapter_first(run):
    """Scoring (compare, dominance, eval) loads through load_model, which checks adapters too."""
    from rlcast.errors import RlcastError
    from rlcast.evaluation.generation import load_model

    adapter = run / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2,
                                                             "base_model_name_or_path": str(run / "base")}))
    write_header(adapter / "adapter_model.safetensors", b"[]")
    with pytest.raises(RlcastError, match="adapter_model.safetensors: corrupt safetensors file .the header is a "
                                          "JSON list"):
        load_model(adapter)


# --- 2. headers and manifests of the wrong shape

def test_a_list_header_and_a_deep_header(run, run_cli):
    path = run / "checkpoint-10" / "model.safetensors"
    write_header(path, b"[1, 2]")
    assert f"{path}: corrupt safetensors file (the header is a JSON list" in fails(run_cli, "analyze", run)
    assert not list(run.rglob("step-5-*"))  # failed before the first spectrum (of the good checkpoint 5)
    write_header(path, b"[" * 100_000 + b"]" * 100_000)
    assert f"{path}: corrupt or truncated safetensors file (header nested too deeply)" in fails(
        run_cli, "analyze", run)


@pytest.mark.parametrize("command", [("analyze",), ("dominance", *DOMINANCE), ("compare", *COMPARE),
                                     ("extrapolate", "--method", "weight-linear", "--until", "5", "--target", "10",
                                      "--out", "PRED")])
def test_a_manifest_base_that_is_not_a_path(run, run_cli, command):
    edit_manifest(run, base=123)
    args = [a.replace("PRED", str(run / "pred")) for a in command[1:]]
    line = fails(run_cli, command[0], run, *args)
    assert f"{run / 'run.json'}: base must be a string, not int 123" in line


def test_a_manifest_accuracy_that_is_not_a_number(run, run_cli):
    edit_manifest(run, accuracy10="high")
    line = fails(run_cli, "analyze", run)
    assert f"{run / 'run.json'}: checkpoints[1].accuracy must be a number in [0, 1], not str 'high'" in line


@pytest.mark.parametrize("command", [("dominance", *DOMINANCE), ("compare", *COMPARE)])
def test_manifest_task_args_that_are_not_an_object(run, run_cli, command):
    edit_manifest(run, task_args="x")
    line = fails(run_cli, command[0], run, *command[1:])
    assert f"{run / 'run.json'}: task_args must be a JSON object, not str 'x'" in line


# --- 3. inputs that would give models nobody can load, or scores of broken weights

@pytest.mark.parametrize("command", [("extrapolate", "--method", "weight-linear", "--until", "5", "--target", "10",
                                      "--out", "PRED"), ("compare", *COMPARE), ("dominance", *DOMINANCE)])
def test_a_base_without_config_json(run, run_cli, command):
    (run / "base" / "config.json").unlink()
    args = [a.replace("PRED", str(run / "pred")) for a in command[1:]]
    line = fails(run_cli, command[0], run, *args)
    assert f"error: {run / 'base'}: no config.json" in line
    assert not (run / "pred").exists()


@pytest.mark.parametrize("where", ["checkpoint-10", "base"])
def test_dominance_refuses_non_finite_weights(run, run_cli, where):
    path = run / where / "model.safetensors"
    state = load_file(path)
    state["model.embed_tokens.weight"][3, 4] = float("inf")
    save_file(state, path)
    line = fails(run_cli, "dominance", run, *DOMINANCE)
    at = "at step 10" if where != "base" else "of the base"
    assert f"{path}: NaN/Inf in tensor model.embed_tokens.weight {at}" in line
    assert not (run / "rlcast").exists()

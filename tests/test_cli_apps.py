"""The analysis commands end to end through the CLI, on a run whose models can generate (the testbed base + planted
rank-1 updates), and the bad inputs that must fail in one line before any expensive work."""

import json
import subprocess
import sys
import time

import pytest
import torch

from rlcast.io.reader import RunReader
from rlcast.io.runs import load_run
from rlcast.io.writer import write_model
from rlcast.training.testbed import base_model

STEPS = [10, 20, 30, 40]
CLI = [sys.executable, "-m", "rlcast.apps.cli"]


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    """The testbed base and 4 checkpoints that move every block matrix along a fixed rank-1 direction."""
    base = base_model(cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    root = tmp_path_factory.mktemp("run") / "run"
    root.mkdir()
    reader = RunReader(load_run(base=base, checkpoints={1: base}))
    gen = torch.Generator().manual_seed(0)
    directions = {n: (torch.randn(reader.shape(n)[0], generator=gen), torch.randn(reader.shape(n)[1], generator=gen))
                  for n in reader.selected("blocks")}
    for step in STEPS:
        def tensors():
            for name in reader.names():
                w = reader.base(name)
                if name in directions:
                    u, v = directions[name]
                    w = w + 1e-4 * step / STEPS[-1] * torch.outer(u, v)
                yield name, w
        write_model(base, root / f"checkpoint-{step}", tensors())
    entries = [{"step": s, "path": f"checkpoint-{s}", "accuracy": 0.45 + 0.001 * s} for s in STEPS]
    (root / "run.json").write_text(json.dumps({"base": str(base), "task": "arith", "task_args": {}, "algo": "grpo",
                                               "lora": False, "base_accuracy": 0.45, "checkpoints": entries}))
    return root


def _run(*args):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True)


def _one_line_error(result, *words):
    assert result.returncode == 1, result.stdout + result.stderr
    message = result.stderr.strip()
    assert message.count("\n") == 0 and message.startswith("error:"), message
    for word in words:
        assert word in message, message


def test_dominance_then_report_through_the_cli(run_root, tmp_path):
    out = tmp_path / "dominance.json"
    done = _run("dominance", run_root, "--ranks", "1", "--n-prompts", "24", "--json", out, "--task-arg", "ops=+")
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert [r["k"] for r in data["recovery"]] == [1] and data["n_prompts"] == 24
    assert data["task_args"] == {"ops": "+"} and "arith (ops=+)" in done.stdout  # the variant scored, named
    assert len(data["base"]["per_prompt"]) == 24 and "rank-1" in done.stdout
    # the report reads the saved dominance.json from RUN/rlcast/
    (run_root / "rlcast").mkdir(exist_ok=True)
    (run_root / "rlcast" / "dominance.json").write_text(out.read_text())
    page_path = tmp_path / "report.html"
    done = _run("report", run_root, "--out", page_path, "--rank", "2")
    assert done.returncode == 0, done.stderr
    page = page_path.read_text()
    assert "rlcast dominance RUN" not in page and f"{data['recovery'][0]['recovery']:.3f}" in page


def test_bad_selection_fails_before_any_evaluation(run_root, tmp_path):
    start = time.time()
    bad = _run("dominance", run_root, "--selection", "typo", "--json", tmp_path / "d.json")
    assert bad.returncode == 2 and "Usage:" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    assert "'typo' is not one of" in bad.stderr and "'blocks'" in bad.stderr
    assert not (tmp_path / "d.json").exists() and time.time() - start < 30


def test_compare_target_must_be_a_step(run_root, tmp_path):
    _one_line_error(_run("compare", run_root, "--target", "abc", "--out", tmp_path / "c"), "--target", "abc")
    assert not (tmp_path / "c").exists()


def test_adapter_without_base_name_is_one_line(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = base_model(cache_dir=tmp_path / "cache", progress=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["q_proj"]))
    adapter = tmp_path / "run" / "checkpoint-5"
    model.save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.pop("base_model_name_or_path", None)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    _one_line_error(_run("analyze", tmp_path / "run"), "base model not found", "--base")
    _one_line_error(_run("eval", adapter, "-n", "2"), "base_model_name_or_path")


def test_dynamics_scores_the_task_variant_it_is_given(run_root, tmp_path):
    out = tmp_path / "dynamics.json"
    done = _run("dynamics", run_root, "--task-arg", "ops=-", "--n-prompts", "4", "--json", out)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["accuracy_source"] == "task:arith (ops=-)" and "arith (ops=-)" in done.stdout

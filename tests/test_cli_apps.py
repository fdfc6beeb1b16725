"""The analysis commands end to end through the CLI (in-process, `run_cli`), on a run whose models can generate (the
testbed base + planted rank-1 updates), the bad inputs that must fail in one line before any expensive work, and the
one cache root ($RLCAST_CACHE)."""

import json
from pathlib import Path

import pytest
import torch

from rlcast.apps import dominance
from rlcast.apps.analysis import example_run
from rlcast.core import trajectory
from rlcast.core.trajectory import default_cache_dir
from rlcast.io.cache import cache_root
from rlcast.io.checkpoints import load_run
from rlcast.io.reader import RunReader
from rlcast.io.writer import write_model
from rlcast.training.testbed import base_model

STEPS = [10, 20, 30, 40]


@pytest.fixture(scope="module")
def run_root(tmp_path_factory, tiny_model):
    """The testbed base and 4 checkpoints that move every block matrix along a fixed rank-1 direction."""
    base = tiny_model
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


def _one_line_error(result, *words):
    code, out, err = result
    assert code == 1, out + err
    message = err.strip()
    assert message.count("\n") == 0 and message.startswith("error:"), message
    for word in words:
        assert word in message, message


@pytest.mark.slow  # scores 4 models on 24 prompts
def test_dominance_then_report_through_the_cli(run_root, tmp_path, run_cli):
    out = tmp_path / "dominance.json"
    code, stdout, err = run_cli("dominance", run_root, "--ranks", "1", "--n-prompts", "24", "--json", out,
                                "--task-arg", "ops=+")
    assert code == 0, err
    data = json.loads(out.read_text())
    assert [r["k"] for r in data["recovery"]] == [1] and data["n_prompts"] == 24
    assert data["task_args"] == {"ops": "+"} and "arith (ops=+)" in stdout  # the variant scored, named
    assert len(data["base"]["per_prompt"]) == 24 and "rank-1" in stdout
    # the report reads the saved dominance.json from RUN/rlcast/
    (run_root / "rlcast").mkdir(exist_ok=True)
    (run_root / "rlcast" / "dominance.json").write_text(out.read_text())
    page_path = tmp_path / "report.html"
    code, _, err = run_cli("report", run_root, "--out", page_path, "--rank", "2")
    assert code == 0, err
    page = page_path.read_text()
    assert "rlcast dominance RUN" not in page and f"{data['recovery'][0]['recovery']:.3f}" in page


def test_bad_selection_fails_before_any_evaluation(run_root, tmp_path, run_cli, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("dominance ran before the bad --selection was refused")

    monkeypatch.setattr(dominance, "dominance", no_work)  # "before any work", without a clock
    code, _, err = run_cli("dominance", run_root, "--selection", "typo", "--json", tmp_path / "d.json")
    assert code == 2 and "Usage:" in err and "Traceback" not in err, err
    assert "'typo' is not one of" in err and "'blocks'" in err
    assert not (tmp_path / "d.json").exists()


def test_compare_target_must_be_a_step(run_root, tmp_path, run_cli):
    _one_line_error(run_cli("compare", run_root, "--target", "abc", "--out", tmp_path / "c"), "--target", "abc")
    assert not (tmp_path / "c").exists()


def test_adapter_without_base_name_is_one_line(tmp_path, tiny_model, run_cli):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=2, target_modules=["q_proj"]))
    adapter = tmp_path / "run" / "checkpoint-5"
    model.save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.pop("base_model_name_or_path", None)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    _one_line_error(run_cli("analyze", tmp_path / "run"), "base model not found", "--base")
    _one_line_error(run_cli("eval", adapter, "-n", "2"), "base_model_name_or_path")


@pytest.mark.slow  # scores every checkpoint
def test_dynamics_scores_the_task_variant_it_is_given(run_root, tmp_path, run_cli):
    out = tmp_path / "dynamics.json"
    code, stdout, err = run_cli("dynamics", run_root, "--task-arg", "ops=-", "--n-prompts", "4", "--json", out)
    assert code == 0, err
    assert json.loads(out.read_text())["accuracy_source"] == "task:arith (ops=-)" and "arith (ops=-)" in stdout


def test_rlcast_cache_is_the_one_cache_root(tmp_path, monkeypatch, tiny_model):
    """Testbed bases, spectra of read-only runs and the example run all go under $RLCAST_CACHE (default
    ~/.cache/rlcast)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "rlcast"
    monkeypatch.setenv("RLCAST_CACHE", str(tmp_path / "cache"))
    assert cache_root() == tmp_path / "cache"
    assert base_model(progress=False).parent == tmp_path / "cache"
    run = load_run(base=tiny_model, checkpoints={10: tiny_model})
    assert default_cache_dir(run).parent == tmp_path / "cache"
    monkeypatch.setattr(trajectory, "is_writable", lambda folder: False)  # a read-only run folder
    assert default_cache_dir(load_run(base=tiny_model, checkpoints={10: tiny_model})).parent == tmp_path / "cache"
    assert example_run() == tmp_path / "cache" / "example-run" and (tmp_path / "cache" / "example-run").is_dir()
    assert not (tmp_path / "home").exists() and Path(tiny_model).exists()

"""`rlcast analyze`: analysis.json content on planted runs, the CLI paths, and one-line errors for every bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlcast.apps.analysis import analyze
from rlcast.io.checkpoints import load_run
from rlcast.io.synthetic import planted_run, schedule, tiny_llama

pytestmark = pytest.mark.usefixtures("torch_single_thread")

UP = "model.layers.1.mlp.up_proj.weight"
STEPS = [10, 20, 30]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_run(tmp_path_factory.mktemp("analysis") / "run", steps=STEPS, kind="saturating", hidden=32,
                       layers=2)




def test_analysis_of_planted_run(planted, tmp_path):
    result = analyze(load_run(planted), rank=2, cache_dir=tmp_path / "cache", progress=False)
    data = json.loads(result.save(tmp_path / "out").read_text())
    assert data["steps"] == STEPS and data["selection"] == "blocks" and data["rank"] == 2
    assert len(data["modules"]) == 14 and all(".layers." in n for n in data["modules"])
    c = [schedule("saturating", s, 30) for s in STEPS]
    mod = data["modules"][UP]
    assert mod["shape"] == [64, 32] and mod["layer"] == 1 and mod["type"] == "mlp.up_proj"
    for t, step in enumerate(STEPS):
        entry = mod["steps"][str(step)]
        assert entry["sigma"][0] == pytest.approx(0.05 * c[t], rel=1e-4) and entry["sigma"][1] < 1e-5
        assert entry["fro"] == pytest.approx(0.05 * c[t], rel=1e-4)
        assert entry["rank1_energy"] == pytest.approx(1.0, abs=1e-4) and entry["well_defined"]
        assert entry["cos_last"] == pytest.approx(1.0, abs=1e-5)
    assert mod["steps"]["10"]["cos_prev"] is None and mod["steps"]["20"]["cos_prev"] == pytest.approx(1.0, abs=1e-5)
    rows = {(r["layer"], r["kind"]): r for r in data["summary"]}
    assert rows[(1, "mlp.up_proj")]["growth"] == pytest.approx(c[-1] / c[0], rel=1e-4)
    assert rows[(None, "mlp.up_proj")]["n"] == 2 and len(rows) == 7 * 3
    everything = analyze(load_run(planted), selection="all", cache_dir=tmp_path / "cache", progress=False)
    norm = everything.modules["model.norm.weight"]
    assert norm["layer"] is None and norm["steps"]["30"]["rank1_energy"] == pytest.approx(1.0)
    assert len(everything.modules) == 2 * 9 + 3


def test_cli_analyze_fast_vs_exact_and_explicit(planted, tmp_path, run_cli):
    code, out, err = run_cli("analyze", planted, "--rank", "2", "--out", tmp_path / "fast",
                             "--cache-dir", tmp_path / "cache")
    assert code == 0 and "mlp.up_proj" in out and "analysis.json" in err
    code, _, _ = run_cli("analyze", "--base", planted / "base", "--checkpoint",
                         f"20={planted / 'checkpoint-20'}", "--checkpoint", f"10={planted / 'checkpoint-10'}",
                         "--exact", "--rank", "2", "--out", tmp_path / "exact", "--cache-dir", tmp_path / "cache")
    assert code == 0
    fast = json.loads((tmp_path / "fast" / "analysis.json").read_text())
    exact = json.loads((tmp_path / "exact" / "analysis.json").read_text())
    assert exact["steps"] == [10, 20] and exact["exact"] is True
    for name, mod in exact["modules"].items():
        for step, entry in mod["steps"].items():
            assert entry["method"] == "exact"
            assert torch.allclose(torch.tensor(entry["sigma"]), torch.tensor(fast["modules"][name]["steps"][step]
                                                                               ["sigma"]), rtol=1e-4, atol=1e-7)


def test_cli_example(tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv("HOME", str(tmp_path))
    code, out, err = run_cli("analyze", "--example")
    assert code == 0, err
    data = json.loads((tmp_path / ".cache/rlcast/example-run/rlcast/analysis.json").read_text())
    assert data["steps"] == list(range(10, 101, 10)) and len(data["modules"]) == 14
    assert all(0.5 < m["steps"]["100"]["rank1_energy"] < 1 for m in data["modules"].values())  # planted + noise


def _corrupt(kind: str, tmp_path):
    """A run with one kind of bad input; returns (CLI args, expected error fragment)."""
    base = tiny_llama(tmp_path / "base", hidden=32, layers=1)
    ckpt = tmp_path / "run" / "checkpoint-10"
    ckpt.mkdir(parents=True)
    state = load_file(base / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    state = {n: t + 0.01 for n, t in state.items()}
    if kind == "missing_base":
        save_file(state, ckpt / "model.safetensors")
        return [tmp_path / "run"], "base model not found; pass --base"
    if kind == "shape":
        state[q] = torch.zeros(32, 16)
        save_file(state, ckpt / "model.safetensors")
        return [tmp_path / "run", "--base", base], f"tensor {q} has shape [32, 16] at step 10"
    if kind == "missing_tensor":
        del state[q]
        save_file(state, ckpt / "model.safetensors")
        return [tmp_path / "run", "--base", base], f"tensor {q} is in the base but not in the checkpoint"
    if kind == "nan":
        state[q][0, 0] = float("inf")
        save_file(state, ckpt / "model.safetensors")
        return [tmp_path / "run", "--base", base], f"NaN/Inf in tensor {q} at step 10"
    if kind == "truncated":
        save_file(state, ckpt / "model.safetensors")
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
        return [tmp_path / "run", "--base", base], "checkpoint-10/model.safetensors: tensor"
    if kind == "adapter_config":
        save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 32)},
                  ckpt / "adapter_model.safetensors")
        (ckpt / "adapter_config.json").write_text('{"r": 2, "lora_alpha": ')
        return [tmp_path / "run", "--base", base], "adapter_config.json: unreadable adapter config"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing_base", "shape", "missing_tensor", "nan", "truncated", "adapter_config"])
def test_cli_bad_input_one_line(kind, tmp_path, run_cli):
    args, fragment = _corrupt(kind, tmp_path)
    out_dir = tmp_path / "out"
    code, _, err = run_cli("analyze", *args, "--out", out_dir)
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip() and "Writing model shards" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert "Traceback" not in err and not out_dir.exists()  # no partial output


def test_cli_usage_errors(planted, run_cli):
    code, _, err = run_cli("analyze", planted, "--checkpoint", "ten")
    assert code == 1 and "expected STEP=PATH" in err
    code, _, err = run_cli("analyze", planted, "--selection", "attention")  # a name: checked while parsing
    assert code == 2 and "'attention' is not one of 'blocks', 'all-2d', 'all'" in err and "Usage:" in err

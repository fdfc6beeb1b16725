"""Trajectories recover planted spectra; the on-disk cache is hit, resumed after an interruption, and invalidated."""

import json
import os
import shutil

import pytest
import torch

from rlcast.core import spectra as linalg
from rlcast.core import trajectory
from rlcast.io.checkpoints import load_run
from rlcast.io.synthetic import planted_deltas, planted_run, schedule
from rlcast.core.trajectory import build_trajectory, default_cache_dir

pytestmark = pytest.mark.usefixtures("torch_single_thread")

UP = "model.layers.0.mlp.up_proj.weight"
NORM = "model.layers.0.input_layernorm.weight"
STEPS = [10, 20, 30, 40]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_run(tmp_path_factory.mktemp("traj") / "run", steps=STEPS, rank=2, kind="saturating",
                       hidden=32, layers=1)


@pytest.fixture()
def run_copy(planted, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(planted, root, ignore=shutil.ignore_patterns(".rlcast-cache"))
    return root


class CountingTopK:
    """Wraps linalg.top_k to count calls, optionally failing on call number `fail_at` (an interruption)."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at, self.inner = 0, fail_at, linalg.top_k

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.inner(*args, **kwargs)


def test_recovers_planted_spectra(run_copy):
    traj = build_trajectory(load_run(run_copy), rank=2, progress=False)
    assert traj.steps == STEPS and traj.accuracy == {}
    w0 = load_run(run_copy).base
    from safetensors.torch import load_file
    shapes = {n: tuple(t.shape) for n, t in load_file(w0 / "model.safetensors").items()}
    factors = planted_deltas(shapes, rank=2, seed=1)
    c = torch.tensor([schedule("saturating", s, 40) for s in STEPS])
    mt = traj.modules[UP]
    assert mt.shape == (64, 32) and mt.u.shape == (4, 64, 2) and mt.v.shape == (4, 32, 2) and mt.vector is None
    assert torch.allclose(mt.sigma, c[:, None] * torch.tensor([0.05, 0.025]), rtol=1e-4)
    assert torch.allclose(mt.rank1_energy, torch.full((4,), 0.8), rtol=1e-4)  # 1 / (1 + 0.25)
    u_true = factors[UP][0][1]
    assert (torch.einsum("tm,m->t", mt.u[:, :, 0], u_true).abs() > 0.9999).all()
    assert mt.well_defined.all() and mt.method == ["exact"] * 4  # tiny matrices take the exact path
    vec = traj.modules[NORM]
    assert vec.u is None and vec.vector.shape == (4, 32)
    assert torch.allclose(vec.vector, c[:, None] * 0.05 * factors[NORM][0][1], atol=1e-6)
    assert torch.allclose(vec.sigma[:, 0], vec.fro) and torch.allclose(vec.rank1_energy, torch.ones(4))
    win = traj.window(20)
    assert win.steps == [10, 20] and win.modules[UP].u.shape == (2, 64, 2) and win.modules[UP].steps == [10, 20]


def test_cache_hit_resume_and_invalidation(run_copy, monkeypatch):
    run = load_run(run_copy)
    n_names = 12  # tensors in a 1-layer tiny Llama (untied lm_head)
    counter = CountingTopK(fail_at=n_names + 3)  # interrupted inside the second checkpoint
    monkeypatch.setattr(linalg, "top_k", counter)
    with pytest.raises(KeyboardInterrupt):
        build_trajectory(run, progress=False)
    cache = run_copy / ".rlcast-cache"
    assert len(list(cache.glob("step-10-*.json"))) == 1 and not list(cache.glob("step-20-*"))
    assert not list(cache.glob(".*.tmp"))  # no partial file left behind

    counter = CountingTopK()
    monkeypatch.setattr(linalg, "top_k", counter)
    first = build_trajectory(run, progress=False)  # resumes: only the 3 missing checkpoints are computed
    assert counter.calls == 3 * n_names

    counter = CountingTopK()
    monkeypatch.setattr(linalg, "top_k", counter)
    again = build_trajectory(run, progress=False)
    assert counter.calls == 0
    for name, mt in first.modules.items():
        assert torch.equal(mt.sigma, again.modules[name].sigma) and mt.method == again.modules[name].method
        if mt.u is not None:
            assert torch.equal(mt.u, again.modules[name].u)

    # rewriting one checkpoint's weights (new mtime) invalidates only that checkpoint
    weights = run_copy / "checkpoint-30" / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    counter = CountingTopK()
    monkeypatch.setattr(linalg, "top_k", counter)
    build_trajectory(run, progress=False)
    assert counter.calls == n_names
    # a different rank is a different cache entry; a names subset of a cached build is free
    counter = CountingTopK()
    monkeypatch.setattr(linalg, "top_k", counter)
    assert build_trajectory(run, names=[UP], progress=False).modules[UP].sigma.shape == (4, 1)
    assert counter.calls == 0
    build_trajectory(run, rank=2, names=[UP], progress=False)
    assert counter.calls == 4


def test_corrupt_cache_is_recomputed(run_copy, monkeypatch):
    run = load_run(run_copy)
    build_trajectory(run, names=[UP], progress=False)
    (meta,) = (run_copy / ".rlcast-cache").glob("step-10-*.json")
    meta.write_text("{broken")
    counter = CountingTopK()
    monkeypatch.setattr(linalg, "top_k", counter)
    build_trajectory(run, names=[UP], progress=False)
    assert counter.calls == 1


def test_default_cache_dir(run_copy, tmp_path, monkeypatch):
    run = load_run(run_copy)
    assert default_cache_dir(run) == run_copy / ".rlcast-cache"
    monkeypatch.setattr(trajectory, "is_writable", lambda folder: False)  # a read-only run folder
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = default_cache_dir(run)
    assert folder.parent == tmp_path / "home" / ".cache" / "rlcast" and len(folder.name) == 16
    traj = build_trajectory(run, names=[UP], progress=False)
    assert list(folder.glob("step-*.json")) and traj.modules[UP].steps == STEPS


def test_lora_run_and_manifest_accuracy(tmp_path):
    from safetensors.torch import save_file

    from rlcast.io.synthetic import tiny_llama

    base = tiny_llama(tmp_path / "base", hidden=32, layers=1)
    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(64, 4, generator=g), torch.randn(4, 32, generator=g)
    for step in (5, 10):
        folder = tmp_path / "run" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file({f"base_model.model.{UP[:-7]}.lora_A.weight": A,
                   f"base_model.model.{UP[:-7]}.lora_B.weight": B * step}, folder / "adapter_model.safetensors")
        (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA"}))
    (tmp_path / "run" / "run.json").write_text(json.dumps({
        "base": str(base), "base_accuracy": 0.25,
        "checkpoints": [{"step": 5, "path": "checkpoint-5", "accuracy": 0.5},
                        {"step": 10, "path": "checkpoint-10", "accuracy": 0.75}]}))
    traj = build_trajectory(load_run(tmp_path / "run"), rank=2, progress=False)
    assert list(traj.modules) == [UP] and traj.accuracy == {0: 0.25, 5: 0.5, 10: 0.75}
    mt = traj.modules[UP]
    ref = torch.linalg.svdvals(2 * B @ A)
    assert torch.allclose(mt.sigma, torch.stack([5 * ref[:2], 10 * ref[:2]]), rtol=1e-4)
    assert mt.method == ["lora", "lora"]
    assert traj.window(5).accuracy == {0: 0.25, 5: 0.5}

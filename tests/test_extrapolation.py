"""Extrapolators on planted runs with a known answer, the estimator contract, the written model, streaming memory,
and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from rlcast.io.manifest import Entry, Manifest
from rlcast.io.reader import RunReader
from rlcast.io.checkpoints import Run, load_run
from rlcast.io.selections import select_names
from rlcast.apps.cli import app
from rlcast.errors import RlcastError
from rlcast.core.numerics import row_chunks
from rlcast.extrapolation import METHODS, Extrapolator, make_extrapolator, register
from rlcast.extrapolation.next import train_net
from rlcast.io.synthetic import planted_run, tiny_llama

STEPS = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]


def accuracy_manifest(steps, a0=0.2, slope=0.005) -> Manifest:
    """A run.json-style manifest whose accuracy is exactly linear in the step (like the planted deltas)."""
    return Manifest(base_accuracy=a0, checkpoints=[Entry(s, accuracy=a0 + slope * s) for s in steps])


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Run:
    """Exactly linear rank-1 updates W_t = W0 + (t/100) s u v^T on every tensor, with linear accuracies."""
    run = load_run(planted_run(tmp_path_factory.mktemp("planted") / "run", steps=STEPS))
    run.manifest = accuracy_manifest(STEPS)
    return run


@pytest.fixture(scope="module")
def lora(tmp_path_factory) -> Run:
    """A LoRA run: every block projection gets scale * B(t) @ A with B(t) = (t/100) b e1^T (rank 1, linear)."""
    root = tmp_path_factory.mktemp("lora") / "run"
    base = tiny_llama(root / "base", hidden=32, layers=2)
    reader = RunReader(Run(base, []))
    names = select_names(reader.names(), {n: reader.shape(n) for n in reader.names()}, "blocks")
    gen = torch.Generator().manual_seed(0)
    factors = {}
    for name in names:
        m, n = reader.shape(name)
        B = torch.zeros(m, 2)
        B[:, 0] = torch.randn(m, generator=gen) * 0.05
        factors[name] = (torch.randn(2, n, generator=gen) / n ** 0.5, B)
    for step in STEPS:
        folder = root / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        tensors = {}
        for name, (A, B) in factors.items():
            module = name[: -len(".weight")]
            tensors[f"base_model.model.{module}.lora_A.weight"] = A.contiguous()
            tensors[f"base_model.model.{module}.lora_B.weight"] = (step / 100 * B).contiguous()
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "base_model_name_or_path": str(base),
             "target_modules": ["q_proj"]}))
    run = load_run(root, base=base)
    run.manifest = accuracy_manifest(STEPS)
    return run


def delta_error(ex, run: Run, target: int, names=None, stream=None) -> float:
    """||W_pred - W_target||_F / ||W_target - W0||_F over `names` (default: every tensor)."""
    reader = RunReader(run)
    num = den = 0.0
    for name, w in stream or ex.predict(target):
        if names is None or name in names:
            truth, base = reader.weight(target, name), reader.base(name)
            num += float((w - truth).pow(2).sum())
            den += float((truth - base).pow(2).sum())
    return (num / den) ** 0.5


@pytest.mark.parametrize("method,params", [("weight-linear", {}), ("relex", {}), ("relex", {"rank": 2}),
                                           ("alpharl-step", {"selection": "all"}), ("drift", {}),
                                           ("drift", {"include_base": False}), ("drift", {"origin": "fit"})])
def test_planted_linear_reproduced_from_30_percent(planted, method, params):
    ex = make_extrapolator(method, **params).fit(planted.window(30))
    assert ex.targets_ == RunReader(planted).names()
    assert delta_error(ex, planted, 100) < 0.01


def test_alpharl_step_default_blocks_only(planted):
    ex = make_extrapolator("alpharl-step").fit(planted.window(30))
    blocks = set(ex.targets_)
    assert blocks and all(".layers." in n for n in blocks)
    assert delta_error(ex, planted, 100, names=blocks) < 0.01
    for name, w in ex.predict(100):  # everything else stays at the base
        if name not in blocks:
            assert torch.equal(w, RunReader(planted).base(name))


def test_alpharl_pls_inverted_at_target_accuracy(planted):
    ex = make_extrapolator("alpharl", target_accuracy=0.7).fit(planted.window(40))  # 0.7 = accuracy at step 100
    assert delta_error(ex, planted, 100, names=set(ex.targets_)) < 0.01
    forecast = make_extrapolator("alpharl").fit(planted.window(40))  # target from the accuracy-vs-step line
    assert forecast.target(100) == pytest.approx(0.7)
    assert delta_error(forecast, planted, 100, names=set(ex.targets_)) < 0.01
    halfway = make_extrapolator("alpharl", target_accuracy=0.45).fit(planted.window(40))  # accuracy at step 50
    assert delta_error(halfway, planted, 50, names=set(ex.targets_)) < 0.01


def test_alpharl_anchor_last_adds_onto_last_checkpoint(planted):
    ex = make_extrapolator("alpharl-step", anchor="last").fit(planted.window(30))
    name = ex.targets_[0]
    reader = RunReader(planted)
    w = dict(ex.predict(100))[name]
    # released-code behaviour: W_30 + a(100) v^T, i.e. the delta of step 100 counted on top of step 30's
    assert torch.allclose(w - reader.weight(30, name), reader.delta(100, name), atol=1e-5)


@pytest.mark.slow
def test_relex_chunked_gram_matches_single_chunk(planted):
    whole = make_extrapolator("relex").fit(planted.window(50))
    tiny = make_extrapolator("relex", chunk_mb=0).fit(planted.window(50))  # one row per chunk
    name = "model.layers.1.mlp.down_proj.weight"
    assert len(row_chunks(RunReader(planted).shape(name), 5, tiny.chunk_mb)) == RunReader(planted).shape(name)[0]
    assert torch.allclose(whole.weights(name, 100), tiny.weights(name, 100), rtol=1e-4, atol=1e-6)
    assert torch.allclose(dict(whole.predict(100))[name], dict(tiny.predict(100))[name], atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["weight-linear", "relex", "alpharl-step", "alpharl"])
def test_lora_run_factors(lora, method):
    params = {"target_accuracy": 0.7} if method == "alpharl" else {}
    ex = make_extrapolator(method, **params).fit(lora.window(40))
    assert len(ex.targets_) == 14  # 7 projections x 2 layers; the rest is untouched by the adapters
    assert delta_error(ex, lora, 100, names=set(ex.targets_)) < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["planted", "lora"])
def test_next_learns_the_planted_update(request, fixture):
    run = request.getfixturevalue(fixture)
    ex = make_extrapolator("next", epochs=80, c=1.0, horizon=3).fit(run.window(60))
    names = set(ex.targets_)
    err = delta_error(ex, run, 100, names)
    reader = RunReader(run)
    stop = ((name, reader.weight(60, name)) for name in reader.names())
    baseline = delta_error(None, run, 100, names, stream=stop)  # stopping at the cutoff: 40 % of the update missing
    assert baseline == pytest.approx(0.4, rel=1e-3)
    print(fixture, "next error", err)
    assert err < 0.5 * baseline


@pytest.mark.slow
def test_next_default_scale_and_anchor(lora):
    ex = make_extrapolator("next", epochs=5, horizon=2).fit(lora.window(40))
    stream = ex.predict(40)  # target at the cutoff: predict-extend by zero steps = the last checkpoint
    reader = RunReader(lora)
    for name, w in stream:
        assert torch.allclose(w, reader.weight(40, name))
    assert ex.c_ == 1.5 and ex.summary()["c"] == 1.5


@pytest.mark.slow
def test_next_nets_train_concurrently_and_reproducibly(planted):
    """NExt trains its MLPs one per core at a time: each net draws from its own seeded generator, never the global
    RNG, so two fits agree exactly whatever the other threads (or the caller) did with the global RNG."""
    g, l, y = torch.randn(6, 8), torch.randn(6, 8), torch.randn(6, 8)
    torch.manual_seed(1)
    net_a, _ = train_net(g, l, y, epochs=5, lr=1e-3, seed=3)
    torch.manual_seed(2)
    net_b, _ = train_net(g, l, y, epochs=5, lr=1e-3, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(net_a.state_dict().values(), net_b.state_dict().values()))
    fits = [make_extrapolator("next", epochs=20, c=1.0, horizon=3).fit(planted.window(60)) for _ in range(2)]
    first, second = (dict(ex.predict(100)) for ex in fits)
    assert all(torch.equal(first[name], second[name]) for name in first)


def snapshot(value):
    """A deep copy of an estimator's state to compare against: tensors cloned, nets as state dicts, other objects by id."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, torch.nn.Module):
        return snapshot(value.state_dict())
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return ("object", id(value))


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


SLOW = pytest.mark.slow  # one Gram row chunk per row, NExt's MLP training: seconds each
ESTIMATORS = [("weight-linear", {}), ("alpharl", {"target_accuracy": 0.7, "selection": "all"}), ("alpharl", {}),
              ("alpharl-step", {"anchor": "last"}), pytest.param("relex", {"rank": 2, "chunk_mb": 0}, marks=SLOW),
              pytest.param("next", {"epochs": 5, "horizon": 2}, marks=SLOW),
              pytest.param("next", {"epochs": 5, "c": 0.5}, marks=SLOW), ("drift", {"damping": 0.5}),
              ("rre", {"iterates": 3})]


@pytest.mark.parametrize("method,params", ESTIMATORS)
def test_predict_is_pure(planted, method, params):
    """predict twice: identical tensors, and the estimator's state (every attribute, deeply) is unchanged."""
    ex = make_extrapolator(method, **params).fit(planted.window(40))
    before = snapshot(vars(ex))
    first = dict(ex.predict(100))
    assert same(snapshot(vars(ex)), before)
    second = dict(ex.predict(100))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert same(snapshot(vars(ex)), before)
    assert ex.summary()["tensors"] == len(ex.targets_)


@pytest.mark.parametrize("method,params", ESTIMATORS)
def test_get_params_round_trips(planted, method, params):
    ex = make_extrapolator(method, **params)
    assert ex.get_params() == {**METHODS[method]().get_params(), **params}
    again = type(ex)(**ex.get_params())
    assert again.get_params() == ex.get_params()
    fitted = ex.fit(planted.window(40))
    copy = make_extrapolator(fitted)  # an unfitted copy, parameters kept
    assert copy is not fitted and not hasattr(copy, "run_") and copy.get_params() == fitted.get_params()
    assert make_extrapolator(fitted, progress=True).get_params() == {**fitted.get_params(), "progress": True}
    with pytest.raises(RlcastError, match="has no parameter 'colour'"):
        make_extrapolator(fitted, colour=1)


class Halfway(Extrapolator):
    """A user method: half of weight-linear's jump (W0 + (T / 2t) dW_t), with a parameter of its own."""

    def __init__(self, share: float = 0.5, selection: str = "all", progress: bool = False):
        super().__init__(selection, progress)
        self.share = share

    def _fit(self) -> None:
        self.factor_ = self.share / self.last_

    def _tensor(self, name, step):
        return self.reader_.base(name) + self.factor_ * step * self.reader_.delta(self.last_, name)


def test_user_extrapolator_registers_and_builds(planted):
    assert "halfway" not in METHODS
    register("halfway")(Halfway)
    try:
        ex = make_extrapolator("halfway", share=1.0).fit(planted.window(30))
        assert ex.label() == "halfway" and ex.get_params() == {"share": 1.0, "selection": "all", "progress": False}
        assert delta_error(ex, planted, 100) < 1e-5  # share 1: weight-linear, exact on the planted run
        half = make_extrapolator(Halfway(), selection="blocks").fit(planted.window(30))
        assert half.targets_ == RunReader(planted).selected("blocks")
    finally:
        del METHODS["halfway"]
    with pytest.raises(RlcastError, match="not an Extrapolator subclass"):
        register("bad")(dict)


@pytest.mark.slow
def test_cli_writes_a_model_that_loads_and_generates(tmp_path):
    from transformers import AutoModelForCausalLM

    root = planted_run(tmp_path / "run", steps=[10, 20, 30], hidden=32, layers=1, dtype=torch.bfloat16)
    out = tmp_path / "pred"
    res = CliRunner().invoke(app, ["extrapolate", str(root), "--method", "relex", "--until", "20", "--target",
                                   "30", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the temp folder was renamed away
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    tokens = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert tokens.shape == (1, 7)
    reader = RunReader(load_run(root))
    w = model.state_dict()["model.layers.0.mlp.up_proj.weight"].float()
    truth = reader.weight(30, "model.layers.0.mlp.up_proj.weight")
    assert torch.allclose(w, truth.bfloat16().float(), atol=1e-2)


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path):
    root = planted_run(tmp_path / "run", steps=[10, 20, 30], hidden=32, layers=1)
    cmd = [sys.executable, "-c", "from rlcast.apps.cli import main; main()", "extrapolate", str(root), "--method",
           "alpharl-step", "--until", "10", "--target", "30", "--out", str(tmp_path / "x")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 1
    assert "needs at least 2 checkpoints" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_bad_input(planted):
    with pytest.raises(RlcastError, match="needs at least 3 checkpoints.*up to step 20 has 2"):
        make_extrapolator("alpharl", target_accuracy=0.5).fit(planted.window(20))
    with pytest.raises(RlcastError, match="has 0"):
        make_extrapolator("relex").fit(planted.window(5))
    with pytest.raises(RlcastError, match="target step 20 is before the cutoff step 30"):
        make_extrapolator("weight-linear").fit(planted.window(30)).predict(20)
    ex = make_extrapolator("alpharl", target_accuracy=0.99).fit(planted.window(40))
    with pytest.raises(RlcastError, match=r"target accuracy 0.990 is outside the PLS range \[0.000, 0.850\]"):
        ex.predict(100)
    no_acc = Run(planted.base, planted.checkpoints, planted.root, None)
    with pytest.raises(RlcastError, match="no accuracy for step 10"):
        make_extrapolator("alpharl").fit(no_acc.window(40))
    with pytest.raises(RlcastError, match="unknown method"):
        make_extrapolator("spline")
    with pytest.raises(RlcastError, match="has no parameter 'rank'"):
        make_extrapolator("weight-linear", rank=2)
    with pytest.raises(RlcastError, match="call fit"):
        make_extrapolator("relex").predict(10)
    with pytest.raises(RlcastError, match="horizon 4 checkpoints"):
        make_extrapolator("next", horizon=4).fit(planted.window(40))
    assert set(METHODS) == {"weight-linear", "alpharl", "alpharl-step", "relex", "next", "drift", "rre"}


MEMORY_PROBE = r"""
import json, sys, threading, time
from rlcast.core.backend import Backend
from rlcast.extrapolation import make_extrapolator
from rlcast.io.checkpoints import load_run

def anon():  # anonymous resident memory: excludes the memory-mapped checkpoint files
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("RssAnon:"))

run = load_run(sys.argv[1])
out = {}
for method in sys.argv[2:]:
    ex = make_extrapolator(method).fit(run)
    start = peak = anon()
    done = False
    def sample():
        global peak
        while not done:
            peak = max(peak, anon())
            time.sleep(0.0005)
    thread = threading.Thread(target=sample)
    thread.start()
    total = largest = 0
    for name, w in ex.predict(100, Backend("local", workers=1)):  # memory grows with the workers: bound one
        total += w.numel() * 4
        largest = max(largest, w.numel() * 4)
        peak = max(peak, anon())
        del w
    done = True
    thread.join()
    out[method] = {"growth": peak - start, "model": total, "largest": largest}
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="anonymous resident memory read from Linux's /proc")
def test_stream_holds_one_tensor_at_a_time(tmp_path):
    """On a ~220 MB model, streaming a prediction grows anonymous memory by a few tensors per worker, never by a
    model."""
    root = planted_run(tmp_path / "big", steps=[10, 20], hidden=1024, layers=6)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # freed large buffers go back to the OS at once
    res = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(root), "weight-linear", "relex"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    for method, m in json.loads(res.stdout.strip().splitlines()[-1]).items():
        print(method, m)
        assert m["model"] > 200 * 2**20
        assert m["growth"] < m["model"] / 2.5, method
        assert m["growth"] < 16 * m["largest"], method


def test_drift_averages_the_noise_that_weight_linear_amplifies(tmp_path):
    """Linear drift + independent noise at every checkpoint: the fitted velocity lands closer than the last point."""
    base = tiny_llama(tmp_path / "base", hidden=32, layers=1)
    reader = RunReader(Run(base, []))
    gen = torch.Generator().manual_seed(3)
    drift = {n: torch.randn(reader.shape(n), generator=gen) * 1e-3 for n in reader.names()}
    truth = {}
    for step in range(1, 9):
        weights = {n: reader.base(n) + step * drift[n] + 2e-3 * torch.randn(reader.shape(n), generator=gen)
                   for n in reader.names()}
        save_file(weights, str(tmp_path / f"w{step}.safetensors"))
        (tmp_path / f"checkpoint-{step}").mkdir()
        os.replace(tmp_path / f"w{step}.safetensors", tmp_path / f"checkpoint-{step}" / "model.safetensors")
    for n in reader.names():
        truth[n] = reader.base(n) + 16 * drift[n]
    run = load_run(base=base, checkpoints={s: tmp_path / f"checkpoint-{s}" for s in range(1, 9)})

    def error(method, **params):
        pred = dict(make_extrapolator(method, **params).fit(run).predict(16))
        return sum(float((pred[n] - truth[n]).pow(2).sum()) for n in truth) ** 0.5

    # expected rms error ratio for 8 points + base, horizon 8: sqrt(2.85) / 2 = 0.84 (the last point's noise stays)
    assert error("drift") < 0.9 * error("weight-linear")
    # origin="fit" also drops the last point's noise: at T = t the line's error is sqrt(1/9 + 16/60) = 0.61 of the
    # last checkpoint's (which drift's default origin returns as is)
    now = {n: reader.base(n) + 8 * drift[n] for n in truth}

    def error_now(**params):
        pred = dict(make_extrapolator("drift", **params).fit(run).predict(8))
        return sum(float((pred[n] - now[n]).pow(2).sum()) for n in now) ** 0.5

    assert error_now(origin="fit") < 0.7 * error_now()


def test_rre_finds_the_fixed_point_of_a_geometric_sequence(tmp_path):
    """x_j = x* + r^j (W0 - x*): RRE (no damping, no cap) returns x*; the cap bounds the move by max_move ||W||."""
    base = tiny_llama(tmp_path / "base", hidden=32, layers=1)
    reader = RunReader(Run(base, []))
    gen = torch.Generator().manual_seed(4)
    limit = {n: reader.base(n) + 1e-2 * torch.randn(reader.shape(n), generator=gen) for n in reader.names()}
    for j in range(1, 4):
        folder = tmp_path / f"checkpoint-{j}"
        folder.mkdir()
        save_file({n: limit[n] + 0.5 ** j * (reader.base(n) - limit[n]) for n in reader.names()},
                  str(folder / "model.safetensors"))
    run = load_run(base=base, checkpoints={j: tmp_path / f"checkpoint-{j}" for j in range(1, 4)})
    pred = dict(make_extrapolator("rre", damping=1.0, max_move=1.0, ridge=0.0).fit(run).predict(3))
    err = sum(float((pred[n] - limit[n]).pow(2).sum()) for n in limit) ** 0.5
    scale = sum(float((reader.base(n) - limit[n]).pow(2).sum()) for n in limit) ** 0.5
    assert err < 1e-4 * scale
    capped = make_extrapolator("rre", max_move=1e-4).fit(run)
    last_norm = sum(float(RunReader(run).weight(3, n).double().pow(2).sum()) for n in limit) ** 0.5
    assert capped.move_norm_ == pytest.approx(0.875 * 1e-4 * last_norm, rel=1e-6)


def test_with_task_gives_next_the_task_target_and_budget_once():
    from rlcast.extrapolation.base import with_task

    assert with_task("weight-linear", {}, "arith", None, 50, 4) == {}
    assert with_task("next", {"epochs": 5}, "arith", {"ops": "+"}, 50, 4) == {
        "epochs": 5, "task": "arith", "task_args": {"ops": "+"}, "target_step": 50, "max_new_tokens": 4}
    assert with_task("next", {"task": "rg:leg_counting"}, "arith", None, 50, 4) == {"task": "rg:leg_counting"}
    # an instance's own budget is kept: only what is missing is added
    assert "max_new_tokens" not in with_task(make_extrapolator("next", max_new_tokens=8), {}, "arith", None, 50, 4)
    assert with_task("next", {}, None, None, 50, 4) == {}

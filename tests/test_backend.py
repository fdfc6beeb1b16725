"""Backends and devices: --device resolution, Ray on a local 2-worker cluster giving exactly the local results
(spectra, rank-k models, every extrapolator's predictions), and one-line errors (unknown backend, unreachable cluster,
missing CUDA) before any output is written."""

import json
import pickle
from functools import partial

import pytest
import ray
import torch
from safetensors import safe_open

from rlcast.apps.analysis import analyze
from rlcast.apps.compare import compare
from rlcast.apps.dominance import write_rank_k
from rlcast.core.backend import Backend, Compute, connect, map_tensors, resolve_device
from rlcast.core.trajectory import spectrum_entry
from rlcast.errors import RlcastError
from rlcast.extrapolation import METHODS, make_extrapolator
from rlcast.io.checkpoints import load_run
from rlcast.io.manifest import Manifest
from rlcast.io.reader import RunReader
from rlcast.io.synthetic import planted_run

pytestmark = pytest.mark.usefixtures("torch_single_thread")
UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: connection refused at once


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """64-wide Llama (large enough for the randomized path), rank-2 planted updates with noise, 3 checkpoints."""
    return planted_run(tmp_path_factory.mktemp("backend") / "run", steps=[10, 20, 30], rank=2, kind="saturating",
                       noise=0.02, hidden=64, layers=2)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 worker CPUs, shared by this module's tests (connect() joins it)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _square(x):
    return x * x


def assert_same_weights(a, b):
    """Two written models hold byte-identical tensors and the same metadata (safetensors orders the header's metadata
    at random, so the files themselves may differ)."""
    a, b = (safe_open(folder / "model.safetensors", "pt") for folder in (a, b))
    assert b.metadata() == a.metadata() and sorted(b.keys()) == sorted(a.keys())
    for name in a.keys():
        assert torch.equal(b.get_tensor(name).view(torch.uint8), a.get_tensor(name).view(torch.uint8)), name


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(RlcastError, match="--device 'tpu': expected auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RlcastError, match="--device cuda: no CUDA device here"):
            resolve_device("cuda")


def test_local_map_and_connect_errors():
    with connect("local") as backend:
        assert backend == Backend("local") and list(map_tensors(_square, [3, 1, 2], backend)) == [9, 1, 4]
    with pytest.raises(RlcastError, match="--backend 'spark': expected local or ray"):
        with connect("spark"):
            pass
    with pytest.raises(RlcastError, match="--workers must be >= 1"):
        with connect("local", workers=0):
            pass
    with pytest.raises(RlcastError, match="--ray-address needs --backend ray"):
        with connect("local", address="auto"):
            pass
    with pytest.raises(RlcastError, match=f"--ray-address {UNREACHABLE}: no Ray cluster reachable"):
        with connect("ray", address=UNREACHABLE):
            pass


def test_run_reader_pickles_as_its_run(planted):
    reader = RunReader(load_run(planted), torch.device("cpu"))
    name = "model.layers.0.mlp.up_proj.weight"
    before = reader.delta(20, name)
    copy = pickle.loads(pickle.dumps(reader))
    assert copy._readers == {} and copy.device == reader.device and torch.equal(copy.delta(20, name), before)


@pytest.mark.slow
def test_ray_gives_the_local_results(planted, tmp_path, ray_cluster):
    run = load_run(planted)
    local = analyze(run, rank=2, selection="all", cache_dir=tmp_path / "local", progress=False,
                    compute=Compute(device="cpu"))
    remote = analyze(run, rank=2, selection="all", cache_dir=tmp_path / "ray", progress=False,
                     compute=Compute(device="cpu", backend="ray"))
    assert {e["method"] for m in local.modules.values() for e in m["steps"].values()} >= {"fast", "vector"}
    assert json.dumps(remote.to_dict()) == json.dumps(local.to_dict())
    for backend in ("local", "ray"):
        with connect(backend) as workers:
            write_rank_k(run, 30, 2, tmp_path / f"rank2-{backend}", selection="all", backend=workers)
    assert_same_weights(tmp_path / "rank2-local", tmp_path / "rank2-ray")


FAST = {"next": {"epochs": 5}}  # a few epochs: the MLPs' quality is not what is tested here


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_predicts_the_same_tensors_on_ray(planted, method, ray_cluster):
    """The fitted estimator pickles to the Ray tasks (its fitted state with it) and they compute the local tensors."""
    run = load_run(planted)
    run.manifest = Manifest.parse({"base_accuracy": 0.2,
                                   "checkpoints": [{"step": s, "accuracy": 0.2 + 0.005 * s} for s in run.steps]})
    ex = make_extrapolator(method, **FAST.get(method, {})).fit(run, device="cpu")
    with connect("local", workers=2) as workers:
        local = list(ex.predict(40, workers))
    with connect("ray") as workers:
        remote = list(ex.predict(40, workers))
    assert [n for n, _ in remote] == [n for n, _ in local] == RunReader(run).names()
    for (name, a), (_, b) in zip(local, remote):
        assert b.device.type == "cpu" and b.dtype == torch.float32 and torch.equal(a, b), name


@pytest.mark.slow
@pytest.mark.parametrize("method", ["weight-linear", "relex", "drift"])
def test_cli_extrapolate_on_ray_writes_the_local_model(planted, tmp_path, run_cli, method, ray_cluster):
    for backend in ("local", "ray"):
        code, _, err = run_cli("extrapolate", planted, "--method", method, "--until", "20", "--target", "40",
                               "--out", tmp_path / backend, "--device", "cpu", "--backend", backend)
        assert code == 0, err
    assert_same_weights(tmp_path / "local", tmp_path / "ray")


@pytest.mark.slow
def test_compare_on_ray_evaluates_the_local_predictions(tmp_path, ray_cluster, tiny_model):
    """compare passes its backend to the methods' predictions: the models it evaluates are the local ones."""
    base = tiny_model
    run = load_run(planted_run(tmp_path / "run", steps=[10, 20], base=base), base=base)
    run.manifest = Manifest(task="arith")
    rows = {}
    for backend in ("local", "ray"):
        result = compare(run, [0.5], methods=["weight-linear", "drift"], n_prompts=2, progress=False,
                         keep=tmp_path / backend, compute=Compute(device="cpu", backend=backend))
        rows[backend] = [(r.method, r.cutoff, r.accuracy, r.reason) for r in result.rows]
    assert rows["ray"] == rows["local"] and all(reason is None for *_, reason in rows["local"])
    for model in ("weight-linear-10", "drift-10"):
        assert_same_weights(tmp_path / "local" / model, tmp_path / "ray" / model)


def test_ray_task_errors_are_one_line(planted, ray_cluster):
    task = partial(spectrum_entry, RunReader(load_run(planted)), rank=1, exact=False, seed=0)
    with connect("ray") as workers:
        with pytest.raises(RlcastError, match="^step 7 is not a checkpoint of this run"):
            list(map_tensors(task, [(7, "model.norm.weight")], workers))


@pytest.mark.parametrize("args, fragment", [
    (["--backend", "ray", "--ray-address", UNREACHABLE], f"--ray-address {UNREACHABLE}: no Ray cluster reachable"),
    (["--device", "cuda"], "--device cuda: no CUDA device here"),
])
def test_cli_settings_fail_in_one_line_before_any_output(planted, tmp_path, run_cli, args, fragment):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device exists here")
    for command in (["analyze", planted, "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache"],
                    ["dominance", planted, "--task", "arith", "--json", tmp_path / "out" / "d.json", "--keep-models",
                     tmp_path / "m"],
                    ["extrapolate", planted, "--method", "relex", "--until", "20", "--target", "40", "--out",
                     tmp_path / "out"],
                    ["compare", planted, "--task", "arith", "--out", tmp_path / "out", "--keep"]):
        code, _, err = run_cli(*command, *args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
        assert not any(tmp_path.iterdir())


def test_cli_backend_name_is_a_usage_error(planted, run_cli):
    code, _, err = run_cli("analyze", planted, "--backend", "spark")
    assert code == 2 and "'spark' is not one of 'local', 'ray'" in err and "Usage:" in err

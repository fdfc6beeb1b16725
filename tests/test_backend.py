"""Backends and devices: --device resolution, Ray on a local 2-worker cluster giving exactly the local results, and
one-line errors (unknown backend, unreachable cluster, missing CUDA) before any output is written."""

import json
import pickle
from functools import partial

import pytest
import ray
import torch
from safetensors import safe_open

from rlcast.apps.analysis import analyze
from rlcast.apps.dominance import write_rank_k
from rlcast.core.backend import Backend, connect, map_tensors, resolve_device
from rlcast.core.trajectory import spectrum_entry
from rlcast.errors import RlcastError
from rlcast.io.checkpoints import RunReader, load_run
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
    reader = RunReader(load_run(planted))
    name = "model.layers.0.mlp.up_proj.weight"
    before = reader.delta(20, name)
    copy = pickle.loads(pickle.dumps(reader))
    assert copy._readers == {} and torch.equal(copy.delta(20, name), before)


def test_ray_gives_the_local_results(planted, tmp_path, ray_cluster):
    run = load_run(planted)
    local = analyze(run, rank=2, selection="all", cache_dir=tmp_path / "local", progress=False, device="cpu")
    remote = analyze(run, rank=2, selection="all", cache_dir=tmp_path / "ray", progress=False, device="cpu",
                     backend="ray")
    assert {e["method"] for m in local.modules.values() for e in m["steps"].values()} >= {"fast", "vector"}
    assert json.dumps(remote.to_dict()) == json.dumps(local.to_dict())
    for backend in ("local", "ray"):
        with connect(backend) as workers:
            write_rank_k(run, 30, 2, tmp_path / backend, selection="all", backend=workers)
    local, remote = (safe_open(tmp_path / b / "model.safetensors", "pt") for b in ("local", "ray"))
    assert remote.metadata() == local.metadata() and sorted(remote.keys()) == sorted(local.keys())
    for name in local.keys():  # byte-identical weights (safetensors orders the header's metadata at random)
        assert torch.equal(remote.get_tensor(name).view(torch.uint8), local.get_tensor(name).view(torch.uint8))


def test_ray_task_errors_are_one_line(planted, ray_cluster):
    task = partial(spectrum_entry, RunReader(load_run(planted)), rank=1, exact=False, seed=0)
    with connect("ray") as workers:
        with pytest.raises(RlcastError, match="^step 7 is not a checkpoint of this run"):
            list(map_tensors(task, [(7, "model.norm.weight")], workers))


@pytest.mark.parametrize("args, fragment", [
    (["--backend", "ray", "--ray-address", UNREACHABLE], f"--ray-address {UNREACHABLE}: no Ray cluster reachable"),
    (["--backend", "spark"], "--backend 'spark': expected local or ray"),
    (["--device", "cuda"], "--device cuda: no CUDA device here"),
])
def test_cli_settings_fail_in_one_line_before_any_output(planted, tmp_path, run_cli, args, fragment):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device exists here")
    for command in (["analyze", planted, "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache"],
                    ["dominance", planted, "--json", tmp_path / "out" / "d.json", "--keep-models", tmp_path / "m"]):
        code, _, err = run_cli(*command, *args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
        assert not any(tmp_path.iterdir())

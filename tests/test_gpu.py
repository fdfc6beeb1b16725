"""--device cuda: tensors read straight onto the GPU, spectra, rank-k and extrapolation arithmetic there, CPU results
that agree with the CPU path. Runs only where CUDA exists."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rlcast.apps.analysis import analyze
from rlcast.apps.dominance import write_rank_k
from rlcast.core.backend import Compute, resolve_device
from rlcast.core.spectra import top_k
from rlcast.io.checkpoints import load_run
from rlcast.io.lora import LowRankDelta
from rlcast.io.reader import RunReader
from rlcast.io.synthetic import planted_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here (torch.cuda.is_available() is False)")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_run(tmp_path_factory.mktemp("gpu") / "run", steps=[10, 20, 30], rank=2, kind="saturating",
                       noise=0.02, hidden=64, layers=2)


def test_auto_picks_cuda():
    assert resolve_device("auto").type == "cuda" and resolve_device("cuda:0") == torch.device("cuda:0")


def test_deltas_are_read_onto_the_device(planted):
    reader = RunReader(load_run(planted))
    name = "model.layers.0.self_attn.q_proj.weight"
    on_gpu = reader.delta(20, name, CUDA)
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), reader.delta(20, name))


@pytest.mark.parametrize("shape, sigmas", [((512, 768), [1.0, 0.5, 0.3]), ((300, 200), [1.0, 1 / 1.006, 0.9])])
def test_spectra_on_cuda_match_the_cpu(shape, sigmas):
    g = torch.Generator().manual_seed(0)
    m, n = shape
    U, _ = torch.linalg.qr(torch.randn(m, len(sigmas), generator=g))
    V, _ = torch.linalg.qr(torch.randn(n, len(sigmas), generator=g))
    d = (U * torch.tensor(sigmas)) @ V.T + 0.01 * torch.randn(m, n, generator=g) / (m * n) ** 0.5
    cpu, gpu = top_k(d, k=2), top_k(d.to(CUDA), k=2)
    assert gpu.u.device.type == "cuda" and gpu.method == cpu.method
    assert torch.allclose(gpu.s.cpu(), cpu.s, rtol=1e-4)
    if cpu.well_defined:  # s1/s2 = 1.006 leaves u1 undefined: only the values must agree there
        assert (gpu.u[:, 0].cpu() @ cpu.u[:, 0]).item() > 0.999  # same direction, same sign convention
    lora = LowRankDelta(B=torch.randn(m, 4, generator=g), A=torch.randn(4, n, generator=g), scale=0.5)
    on_gpu = top_k(LowRankDelta(lora.B.to(CUDA), lora.A.to(CUDA), lora.scale), k=6)
    assert torch.allclose(on_gpu.s.cpu(), top_k(lora, k=6).s, rtol=1e-4)


def test_analysis_and_rank_k_on_cuda_match_the_cpu(planted, tmp_path):
    run = load_run(planted)
    results = {d: analyze(run, rank=2, selection="all", cache_dir=tmp_path / d, progress=False,
                         compute=Compute(device=d)).to_dict()
               for d in ("cpu", "cuda")}
    for name, mod in results["cpu"]["modules"].items():
        for step, entry in mod["steps"].items():
            other = results["cuda"]["modules"][name]["steps"][step]
            assert other["sigma"] == pytest.approx(entry["sigma"], rel=1e-4, abs=1e-7)
            assert other["rank1_energy"] == pytest.approx(entry["rank1_energy"], rel=1e-4, abs=1e-6)
    cached = json.loads(next((tmp_path / "cuda").glob("step-10-*.json")).read_text())
    assert cached["modules"]  # written from CPU tensors
    for d in ("cpu", "cuda"):
        write_rank_k(run, 30, 2, tmp_path / f"rank2-{d}", selection="all", device=torch.device(d))
    cpu, gpu = (load_file(tmp_path / f"rank2-{d}" / "model.safetensors") for d in ("cpu", "cuda"))
    assert cpu.keys() == gpu.keys()
    for name in cpu:
        assert torch.allclose(gpu[name].float(), cpu[name].float(), atol=1e-3), name


# next is left out: its MLPs train on the CPU from the GPU's triplets, and Adam turns float noise into larger steps
@pytest.mark.parametrize("method", ["weight-linear", "alpharl-step", "relex", "drift", "rre"])
def test_extrapolate_on_cuda_matches_the_cpu(planted, tmp_path, run_cli, method):
    for device in ("cpu", "cuda"):
        code, _, err = run_cli("extrapolate", planted, "--method", method, "--until", "20", "--target", "40",
                               "--out", tmp_path / device, "--device", device)
        assert code == 0, err
    cpu, gpu = (load_file(tmp_path / d / "model.safetensors") for d in ("cpu", "cuda"))
    assert cpu.keys() == gpu.keys()
    for name in cpu:
        assert torch.allclose(gpu[name], cpu[name], rtol=1e-5, atol=1e-5), name

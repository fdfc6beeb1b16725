"""How fast is rlcast's rank-1 path on realistic shapes, against the full SVD the published code runs per matrix?

Builds a synthetic bf16 base and one checkpoint with Llama-7B-shaped layers (q/k/v/o 4096x4096, gate/up 11008x4096,
down 4096x11008), whose updates are RL-like: a top direction holding about half of ||dW||_F^2, a decaying tail of
15 more directions, dense noise, and the rounding of W0 + dW to bf16. Then, each in its own process (so that each
peak RSS is its own):
    (a) full  read both tensors, subtract, torch.linalg.svd (what the published code does)
    (b) fast  rlcast: RunReader.delta + linalg.top_k (randomized subspace iteration with its convergence check)
    (c) read  RunReader.delta only (read both tensors, subtract, NaN check)
(a) runs on the first --full-svd matrices of each shape (default 1: the full SVD of a 4096x11008 matrix takes minutes
on 2 shared cores); the model's full-SVD time is the per-shape mean times the number of matrices of that shape.
(b) and (c) run on every matrix. The first line names the CPU, the BLAS torch was built with and the load; the last:
    speedup_vs_full_svd=X read_overhead=Y peak_rss_mb=Z model_mb=W
with X = (a) / (b), Y = (b) / (c), Z = peak RSS of the (b) process, W = size of one model file.

    .venv/bin/python bench/rank1_speed.py [--layers 4] [--full-svd 1] [--threads 1] [--dir /tmp/rlcast-bench]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HIDDEN, INTERMEDIATE = 4096, 11008
SHAPES = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, HIDDEN),
          "self_attn.v_proj": (HIDDEN, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
          "mlp.gate_proj": (INTERMEDIATE, HIDDEN), "mlp.up_proj": (INTERMEDIATE, HIDDEN),
          "mlp.down_proj": (HIDDEN, INTERMEDIATE)}


def names_and_shapes(layers: int) -> dict[str, tuple[int, int]]:
    return {f"model.layers.{i}.{kind}.weight": shape for i in range(layers) for kind, shape in SHAPES.items()}


def rl_like_delta(m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """||dW||_F ~ 2 (entries ~3e-4, a few bf16 ulps of 0.02-scale weights); s1^2 holds about half of it."""
    k = 16
    sig = torch.tensor([1.4] + [0.5 * 0.8 ** i for i in range(1, k)])
    u = torch.randn(m, k, generator=gen) / math.sqrt(m)
    v = torch.randn(n, k, generator=gen) / math.sqrt(n)
    return (u * sig) @ v.T + 1.0 * torch.randn(m, n, generator=gen) / math.sqrt(m * n)


def bf16_header(shapes: dict[str, tuple[int, int]]) -> bytes:
    """The 8-byte length and JSON header of a safetensors file holding `shapes` in bf16, in order: the tensor bytes
    can then be streamed after it one tensor at a time."""
    header, offset = {}, 0
    for name, (m, n) in shapes.items():
        header[name] = {"dtype": "BF16", "shape": [m, n], "data_offsets": [offset, offset + 2 * m * n]}
        offset += 2 * m * n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_models(folder: Path, layers: int, seed: int) -> None:
    """Stream base/model.safetensors and ckpt/model.safetensors, one tensor at a time (header first, then data)."""
    shapes = names_and_shapes(layers)
    raw = bf16_header(shapes)
    gen = torch.Generator().manual_seed(seed)
    files = {}
    for which in ("base", "ckpt"):
        (folder / which).mkdir(parents=True, exist_ok=True)
        (folder / which / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": HIDDEN}))
        files[which] = open(folder / which / "model.safetensors", "wb")
        files[which].write(raw)
    for name, (m, n) in shapes.items():
        w0 = (0.02 * torch.randn(m, n, generator=gen)).to(torch.bfloat16)
        w1 = (w0.float() + rl_like_delta(m, n, gen)).to(torch.bfloat16)
        files["base"].write(w0.view(torch.uint8).numpy().tobytes())
        files["ckpt"].write(w1.view(torch.uint8).numpy().tobytes())
    for f in files.values():
        f.close()


def machine() -> str:
    """CPU model, BLAS / LAPACK and SIMD level of this torch build, and the 1-minute load: what the timings depend on."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    lib = re.search(r"(Intel\(R\) oneAPI Math Kernel Library Version [\w.]+|OpenBLAS [\w.]*)", config)
    simd = re.search(r"CPU capability usage: (\w+)", config)
    return (f"cpu: {cpu} ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}); blas: "
            f"{blas.group(1) if blas else '?'} ({lib.group(1) if lib else 'version unknown'}), "
            f"{simd.group(1) if simd else '?'}; torch {torch.__version__}")


def phase(folder: Path, which: str, layers: int, full_svd: int) -> dict:
    """Run one measurement in this process and return its timings and peak RSS."""
    from rlcast.io.reader import RunReader
    from rlcast.io.runs import load_run
    from rlcast.core.spectra import top_k

    reader = RunReader(load_run(checkpoints={1: folder / "ckpt"}, base=folder / "base"))
    shapes = names_and_shapes(layers)
    names = list(shapes)
    if which == "full":
        per_shape: dict[str, list[str]] = {}
        for name, shape in shapes.items():
            per_shape.setdefault(str(shape), []).append(name)
        names = [n for group in per_shape.values() for n in group[:full_svd]]
    out = {"names": names, "seconds": [], "s1": [], "u1": [], "iterations": [], "method": [], "energy": []}
    for name in names:
        start = time.perf_counter()
        delta = reader.delta(1, name)
        if which == "full":
            U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
            out["s1"].append(S[0].item())
            out["u1"].append(U[:, 0].tolist())
            del U, Vh
        elif which == "fast":
            spec = top_k(delta, k=1)
            out["s1"].append(spec.s[0].item())
            out["u1"].append(spec.u[:, 0].tolist() if name in set(names[:7]) else None)
            out["iterations"].append(spec.iterations)
            out["method"].append(spec.method)
            out["energy"].append(spec.rank1_energy)
        del delta
        out["seconds"].append(time.perf_counter() - start)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def peak_rss_mb() -> float:
    """Peak RSS of this process image: VmHWM (ru_maxrss would carry over the parent's peak across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_phase(folder: Path, which: str, args) -> dict:
    cmd = [sys.executable, __file__, "--phase", which, "--dir", str(folder), "--layers", str(args.layers),
           "--full-svd", str(args.full_svd), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"phase {which} failed:\n{proc.stderr}")
    return json.loads((folder / f"{which}.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4, help="Llama-7B-shaped layers (7 matrices each)")
    parser.add_argument("--full-svd", type=int, default=1, help="matrices of each shape timed with the full SVD")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder, removed)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every phase (default 1: rlcast computes "
                                                               "every tensor on one thread; 0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.phase:  # child process: one measurement
        (args.dir / f"{args.phase}.json").write_text(json.dumps(phase(args.dir, args.phase, args.layers,
                                                                      args.full_svd)))
        return

    print(machine())
    folder = args.dir or Path(tempfile.mkdtemp(prefix="rlcast-bench-"))
    try:
        t0 = time.perf_counter()
        write_models(folder, args.layers, args.seed)
        model_mb = (folder / "base" / "model.safetensors").stat().st_size / 2 ** 20
        print(f"wrote base + checkpoint: {args.layers} layers x 7 bf16 matrices, {model_mb:.0f} MB per model "
              f"({time.perf_counter() - t0:.1f} s); torch threads {torch.get_num_threads()}")
        read = run_phase(folder, "read", args)
        fast = run_phase(folder, "fast", args)
        full = run_phase(folder, "full", args)
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)

    shapes = names_and_shapes(args.layers)
    full_by_shape: dict[tuple, list[float]] = {}
    for name, sec in zip(full["names"], full["seconds"]):
        full_by_shape.setdefault(shapes[name], []).append(sec)
    full_total = sum(sum(full_by_shape[s]) / len(full_by_shape[s]) for s in shapes.values())
    fast_total, read_total = sum(fast["seconds"]), sum(read["seconds"])
    for shape, secs in full_by_shape.items():
        idx = [i for i, n in enumerate(fast["names"]) if shapes[n] == shape]
        print(f"{shape[0]}x{shape[1]}: full SVD {sum(secs) / len(secs):.2f} s/matrix ({len(secs)} timed), "
              f"fast {sum(fast['seconds'][i] for i in idx) / len(idx):.3f} s, "
              f"read {sum(read['seconds'][i] for i in idx) / len(idx):.3f} s  (x{len(idx)} matrices)")
    fast_pos = {n: i for i, n in enumerate(fast["names"])}
    for name, s1, u1 in zip(full["names"], full["s1"], full["u1"]):
        i = fast_pos[name]
        if fast["u1"][i] is not None:
            cos = abs(torch.tensor(u1) @ torch.tensor(fast["u1"][i])).item()
            print(f"  {name}: |cos(u1 fast, u1 full)| = {cos:.6f}, s1 rel. error {abs(fast['s1'][i] - s1) / s1:.1e}")
    methods = {m: fast["method"].count(m) for m in sorted(set(fast["method"]))}
    print(f"fast path: iterations {min(fast['iterations'])}..{max(fast['iterations'])}, methods {methods}, "
          f"rank-1 energy {min(fast['energy']):.2f}..{max(fast['energy']):.2f}")
    print(f"model totals: full SVD {full_total:.1f} s (per-shape mean x matrices), fast {fast_total:.1f} s, "
          f"read+subtract {read_total:.1f} s; peak RSS read {read['peak_rss_mb']:.0f} MB, fast "
          f"{fast['peak_rss_mb']:.0f} MB, full SVD {full['peak_rss_mb']:.0f} MB")
    print(f"load at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min) on {os.cpu_count()} cores")
    print(f"speedup_vs_full_svd={full_total / fast_total:.1f} read_overhead={fast_total / read_total:.2f} "
          f"peak_rss_mb={fast['peak_rss_mb']:.0f} model_mb={model_mb:.0f}")


if __name__ == "__main__":
    main()

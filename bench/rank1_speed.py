"""How fast is rlcast's rank-1 path on realistic shapes, against the full SVD the published code runs per matrix?

Builds a synthetic bf16 base and one checkpoint with Llama-7B-shaped layers (q/k/v/o 4096x4096, gate/up 11008x4096,
down 4096x11008), whose updates are RL-like: a top direction holding about half of ||dW||_F^2, a decaying tail of
15 more directions, dense noise, and the rounding of W0 + dW to bf16. Then, each in its own process (so that each
peak RSS is its own):
    (a) full  read both tensors, subtract, torch.linalg.svd (what the published code does)
    (b) fast  rlcast: RunReader.delta + linalg.top_k (randomized subspace iteration with its convergence check)
    (c) read  RunReader.delta only (read both tensors, subtract, NaN check)
(a) runs on the first --full-svd matrices of each shape (the full SVD is the slow part); the model's full-SVD time is
the per-shape mean times the number of matrices of that shape. (b) and (c) run on every matrix. The first line names
the CPU, the BLAS torch was built with and the load; one row per shape goes to OUT/rank1_speed.json; the last line:
    speedup_vs_full_svd=X read_overhead=Y peak_rss_mb=Z model_mb=W
with X = (a) / (b), Y = (b) / (c), Z = peak RSS of the (b) process, W = size of one model file.

    .venv/bin/python bench/rank1_speed.py [--layers 4] [--full-svd 1] [--threads 1] [--dir /tmp/rlcast-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import (HIDDEN_7B, Results, add_out, bf16_header, machine, names_and_shapes, new_parser,
                    rl_like_delta)

DURATION = "~5 min (4 layers, 2 CPU cores; the full SVDs take most of it)"


def write_models(folder: Path, layers: int, seed: int) -> None:
    """Stream base/model.safetensors and ckpt/model.safetensors, one tensor at a time (header first, then data)."""
    shapes = names_and_shapes(layers)
    raw = bf16_header(shapes)
    gen = torch.Generator().manual_seed(seed)
    files = {}
    for which in ("base", "ckpt"):
        (folder / which).mkdir(parents=True, exist_ok=True)
        (folder / which / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": HIDDEN_7B}))
        files[which] = open(folder / which / "model.safetensors", "wb")
        files[which].write(raw)
    for name, (m, n) in shapes.items():
        w0 = (0.02 * torch.randn(m, n, generator=gen)).to(torch.bfloat16)
        w1 = (w0.float() + rl_like_delta(m, n, gen)).to(torch.bfloat16)
        files["base"].write(w0.view(torch.uint8).numpy().tobytes())
        files["ckpt"].write(w1.view(torch.uint8).numpy().tobytes())
    for f in files.values():
        f.close()


def phase(folder: Path, which: str, layers: int, full_svd: int) -> dict:
    """Run one measurement in this process and return its timings and peak RSS."""
    from rlcast.io.reader import RunReader
    from rlcast.io.checkpoints import load_run
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
    parser = new_parser(__doc__)
    parser.add_argument("--layers", type=int, default=4, help="Llama-7B-shaped layers (7 matrices each)")
    parser.add_argument("--full-svd", type=int, default=1, help="matrices of each shape timed with the full SVD")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder, removed)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every phase (default 1: rlcast "
                        "computes every tensor on one thread; 0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    add_out(parser, "the result file")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.phase:  # child process: one measurement
        (args.dir / f"{args.phase}.json").write_text(json.dumps(phase(args.dir, args.phase, args.layers,
                                                                      args.full_svd)))
        return

    results = Results(__file__, args, {"machine": machine()})
    print(results.settings["machine"])
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
    fast_pos = {n: i for i, n in enumerate(fast["names"])}
    agreement = {}
    for name, s1, u1 in zip(full["names"], full["s1"], full["u1"]):
        i = fast_pos[name]
        if fast["u1"][i] is not None:
            agreement[name] = (abs(torch.tensor(u1) @ torch.tensor(fast["u1"][i])).item(),
                               abs(fast["s1"][i] - s1) / s1)
    for shape, secs in full_by_shape.items():
        idx = [i for i, n in enumerate(fast["names"]) if shapes[n] == shape]
        row = {"shape": list(shape), "matrices": len(idx), "full_svd_timed": len(secs),
               "full_svd_seconds": sum(secs) / len(secs),
               "fast_seconds": sum(fast["seconds"][i] for i in idx) / len(idx),
               "read_seconds": sum(read["seconds"][i] for i in idx) / len(idx),
               "agreement": {name: {"cos_u1": cos, "s1_rel_error": err} for name, (cos, err) in agreement.items()
                             if shapes[name] == shape}}
        results.add(row)
        print(f"{shape[0]}x{shape[1]}: full SVD {row['full_svd_seconds']:.2f} s/matrix ({len(secs)} timed), "
              f"fast {row['fast_seconds']:.3f} s, read {row['read_seconds']:.3f} s  (x{len(idx)} matrices)")
    for name, (cos, err) in agreement.items():
        print(f"  {name}: |cos(u1 fast, u1 full)| = {cos:.6f}, s1 rel. error {err:.1e}")
    methods = {m: fast["method"].count(m) for m in sorted(set(fast["method"]))}
    print(f"fast path: iterations {min(fast['iterations'])}..{max(fast['iterations'])}, methods {methods}, "
          f"rank-1 energy {min(fast['energy']):.2f}..{max(fast['energy']):.2f}")
    print(f"model totals: full SVD {full_total:.1f} s (per-shape mean x matrices), fast {fast_total:.1f} s, "
          f"read+subtract {read_total:.1f} s; peak RSS read {read['peak_rss_mb']:.0f} MB, fast "
          f"{fast['peak_rss_mb']:.0f} MB, full SVD {full['peak_rss_mb']:.0f} MB")
    load = os.getloadavg()
    print(f"load at the end: {' '.join(f'{x:.1f}' for x in load)} (1, 5, 15 min) on {os.cpu_count()} cores")
    summary = {"speedup_vs_full_svd": full_total / fast_total, "read_overhead": fast_total / read_total,
               "seconds": {"full_svd": full_total, "fast": fast_total, "read": read_total},
               "peak_rss_mb": {"read": read["peak_rss_mb"], "fast": fast["peak_rss_mb"], "full": full["peak_rss_mb"]},
               "model_mb": model_mb, "iterations": [min(fast["iterations"]), max(fast["iterations"])],
               "methods": methods, "load_at_end": list(load)}
    results.finish(summary, f"speedup_vs_full_svd={full_total / fast_total:.1f} read_overhead="
                            f"{fast_total / read_total:.2f} peak_rss_mb={fast['peak_rss_mb']:.0f} "
                            f"model_mb={model_mb:.0f}")


if __name__ == "__main__":
    main()

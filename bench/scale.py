"""How does `rlcast analyze` scale? Throughput locally and on Ray against the read speed, and a 70B projection.

What would a 70B run with 30 checkpoints cost?

Writes a 7B-shaped synthetic TRL run to a temp folder (removed at the end): --layers Llama-7B layers (q/k/v/o
4096x4096, gate/up 11008x4096, down 4096x11008, bf16), a base and --checkpoints checkpoints whose updates grow along a
fixed RL-like direction (`common.rl_like_delta`, as in bench/rank1_speed.py: s1^2 holds about half of ||dW||_F^2),
~0.8 GB per model at 2 layers. Then:
    plain read   every weight file read with plain file reads, cold (pages evicted with posix_fadvise DONTNEED,
                 for these files only) and warm (from the page cache): the machine's physical limits
    local        build_trajectory (the spectra of `rlcast analyze`) on the local backend: one tensor per core at a
                 time in threads of this process, one torch thread each
    ray 1, ray 2 the same on a fresh local Ray instance with 1 and 2 worker CPUs (one task per tensor and checkpoint,
                 each reading its own tensors, one torch thread each); Ray and worker start-up are not timed
Each configuration starts from an empty spectra cache with the files warm and must give exactly the local numbers;
the configurations run interleaved --repeat times and the best time of each is kept (other jobs' load varies).
Bytes read per (checkpoint, tensor) are the checkpoint's tensor plus the base's. The projection for a Llama-2-70B run
(80 layers: q/o 8192x8192, k/v 1024x8192, gate/up 28672x8192, down 8192x28672) with 30 checkpoints scales the best
measured rate in matrix elements per second (the fast path's cost is linear in m*n at a fixed iteration count), bounded
below by reading the bytes at the cold read speed, on one node like this one and on N such nodes (assuming the shared
filesystem keeps up). The last line:
    ray_speedup_2_workers=X io_fraction_of_limit=Y projection_70b_30ckpt_hours_1node=Z
X = local time / Ray-with-2-workers time, Y = the best configuration's bytes/s over the warm plain read speed; one row
per configuration goes to OUT/scale.json.

    .venv/bin/python bench/scale.py [--layers 2] [--checkpoints 3] [--repeat 2] [--dir DIR] [--seed 0]
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from rich.progress import TimeRemainingColumn, TransferSpeedColumn

from common import (Results, add_out, bf16_header, console, machine, names_and_shapes, new_parser, progress,
                    rl_like_delta)
from rlcast.core.backend import connect, map_tensors
from rlcast.core.trajectory import build_trajectory
from rlcast.io.checkpoints import load_run

LLAMA_70B = {"q_proj": (8192, 8192), "k_proj": (1024, 8192), "v_proj": (1024, 8192), "o_proj": (8192, 8192),
             "gate_proj": (28672, 8192), "up_proj": (28672, 8192), "down_proj": (8192, 28672)}
LAYERS_70B, CHECKPOINTS_70B = 80, 30
CHUNK = 64 * 2**20
DURATION = "~15 min (2 layers, 3 checkpoints, 2 repeats, 2 CPU cores; ~3 GB of temporary files)"


def write_run(root: Path, layers: int, checkpoints: int, seed: int) -> list[Path]:
    """base/ and checkpoint-N/ (N = 100, 200, ...): W_t = W0 + sqrt(t / T) dW, one tensor at a time; returns the files."""
    shapes = names_and_shapes(layers)
    raw = bf16_header(shapes)
    folders = [root / "base"] + [root / f"checkpoint-{100 * t}" for t in range(1, checkpoints + 1)]
    files = []
    for folder in folders:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
        files.append(open(folder / "model.safetensors", "wb"))
        files[-1].write(raw)
    gen = torch.Generator().manual_seed(seed)
    with progress(TimeRemainingColumn()) as bar:
        job = bar.add_task(f"writing {len(folders)} models", total=len(shapes))
        for m, n in shapes.values():
            w0 = (0.02 * torch.randn(m, n, generator=gen)).to(torch.bfloat16)
            delta = rl_like_delta(m, n, gen)
            for t, f in enumerate(files):
                w = w0 if t == 0 else (w0.float() + math.sqrt(t / checkpoints) * delta).to(torch.bfloat16)
                f.write(w.view(torch.uint8).numpy().tobytes())
            bar.advance(job)
    for f in files:
        f.close()
    return [folder / "model.safetensors" for folder in folders]


def evict(files: list[Path]) -> None:
    """Drop these files' pages from the page cache (the next read is cold), leaving every other file alone."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def plain_read(files: list[Path], label: str) -> float:
    """Bytes per second of reading every file start to end with plain reads into one reused buffer."""
    total = sum(p.stat().st_size for p in files)
    buffer = bytearray(CHUNK)
    start = time.perf_counter()
    with progress(TransferSpeedColumn(), TimeRemainingColumn()) as bar:
        job = bar.add_task(f"plain read, {label}", total=total)
        for path in files:
            with open(path, "rb", buffering=0) as f:
                while size := f.readinto(buffer):
                    bar.advance(job, size)
    return total / (time.perf_counter() - start)


def spectra(run, backend: str, workers: int | None, cache: Path) -> tuple[float, dict]:
    """Seconds to build the rank-1 trajectory from an empty cache, and its numbers (for the equality check)."""
    shutil.rmtree(cache, ignore_errors=True)
    with connect(backend, workers=workers) as where:
        if backend == "ray":  # start every worker (Python, torch, rlcast imports) before the clock
            list(map_tensors(time.sleep, [0.5] * 2 * where.workers, where))
        start = time.perf_counter()
        traj = build_trajectory(run, rank=1, cache_dir=cache, progress=True, backend=where)
        seconds = time.perf_counter() - start
    numbers = {name: (m.sigma, m.u, m.v, m.fro) for name, m in traj.modules.items()}
    return seconds, numbers


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(all(torch.equal(x, y) for x, y in zip(a[k], b[k])) for k in a)


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--layers", type=int, default=2, help="Llama-7B-shaped layers (7 matrices, ~0.4 GB each)")
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder, removed)")
    parser.add_argument("--repeat", type=int, default=2, help="timings per configuration (the best is kept)")
    parser.add_argument("--seed", type=int, default=0)
    add_out(parser, "the result file")
    args = parser.parse_args()

    results = Results(__file__, args, {"machine": machine()})
    console.print(results.settings["machine"])
    root = Path(tempfile.mkdtemp(prefix="rlcast-scale-", dir=args.dir))
    try:
        files = write_run(root / "run", args.layers, args.checkpoints, args.seed)
        run = load_run(root / "run")
        shapes = names_and_shapes(args.layers)
        tasks = len(shapes) * args.checkpoints
        elements = sum(m * n for m, n in shapes.values()) * args.checkpoints
        read_bytes = 2 * 2 * elements  # bf16 checkpoint tensor + bf16 base tensor per (checkpoint, tensor)
        disk = sum(p.stat().st_size for p in files)
        console.print(f"run: {args.layers} layers x {len(shapes) // args.layers} bf16 matrices, base + "
                      f"{args.checkpoints} checkpoints, {disk / 2**30:.2f} GiB on disk; {tasks} (checkpoint, tensor) "
                      f"tasks reading {read_bytes / 2**30:.2f} GiB")

        evict(files)
        cold = plain_read(files, "cold (pages evicted)")
        warm = plain_read(files, "warm (page cache)")
        timings = {}
        for attempt in range(1, args.repeat + 1):  # interleaved, best of --repeat: the load of other jobs varies
            for label, backend, workers in (("local", "local", None), ("ray 1 worker", "ray", 1),
                                            ("ray 2 workers", "ray", 2)):
                console.print(f"[bold]{label}[/] ({attempt}/{args.repeat})")
                seconds, numbers = spectra(run, backend, workers, root / "cache")
                if label not in timings or seconds < timings[label][0]:
                    timings[label] = (seconds, numbers)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    reference = timings["local"][1]
    console.print(f"plain read: cold {cold / 2**30:.2f} GiB/s, warm {warm / 2**30:.2f} GiB/s (torch threads "
                  f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.1f})")
    for label, (seconds, numbers) in timings.items():
        row = {"configuration": label, "seconds": seconds, "tensors_per_second": tasks / seconds,
               "gib_per_second": read_bytes / seconds / 2**30, "elements_per_second": elements / seconds,
               "same_numbers_as_local": same(numbers, reference)}
        results.add(row)
        console.print(f"{label:14s} {seconds:6.1f} s  {row['tensors_per_second']:5.2f} tensors/s  "
                      f"{row['gib_per_second']:5.2f} GiB/s read ({read_bytes / seconds / warm:.0%} of warm, "
                      f"{read_bytes / seconds / cold:.0%} of cold)  {elements / seconds / 1e9:.2f} G elements/s  "
                      f"same numbers as local: {'yes' if row['same_numbers_as_local'] else 'NO'}")
    best = min(timings, key=lambda k: timings[k][0])
    rate = elements / timings[best][0]
    speedup = timings["local"][0] / timings["ray 2 workers"][0]
    console.print(f"ray 2 workers vs 1 worker: {timings['ray 1 worker'][0] / timings['ray 2 workers'][0]:.2f}x; vs "
                  f"local: {speedup:.2f}x")

    elements_70b = LAYERS_70B * CHECKPOINTS_70B * sum(m * n for m, n in LLAMA_70B.values())
    bytes_70b = 2 * 2 * elements_70b
    compute_h, io_h = elements_70b / rate / 3600, bytes_70b / cold / 3600
    hours = max(compute_h, io_h)
    console.print(f"projection, Llama-2-70B blocks x {CHECKPOINTS_70B} checkpoints: {elements_70b / 1e12:.2f} T "
                  f"elements, {bytes_70b / 1e12:.1f} TB read (checkpoint + base tensor per task); one node like this "
                  f"one ({best}, {rate / 1e9:.2f} G elements/s): {compute_h:.1f} h compute, {io_h:.1f} h reading at "
                  f"the cold speed -> {hours:.1f} h")
    console.print("  on N nodes: " + ", ".join(f"N={n}: {max(compute_h / n, io_h / n):.2f} h" for n in (4, 16, 64))
                  + " (if the shared filesystem serves N x the cold speed)")
    io_fraction = read_bytes / timings[best][0] / warm
    summary = {"read_gib_per_second": {"cold": cold / 2**30, "warm": warm / 2**30}, "best": best,
               "ray_speedup_2_workers": speedup, "io_fraction_of_limit": io_fraction,
               "projection_70b": {"elements": elements_70b, "bytes": bytes_70b, "compute_hours": compute_h,
                                  "io_hours": io_h, "hours_1node": hours}}
    results.finish(summary, f"ray_speedup_2_workers={speedup:.2f} io_fraction_of_limit={io_fraction:.3f} "
                            f"projection_70b_30ckpt_hours_1node={hours:.1f}")


if __name__ == "__main__":
    main()

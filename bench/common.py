"""What the benchmarks share: argument conventions, reused plain runs, goal metrics with their seed spread, progress
bars, synthetic 7B-shaped updates and the one result file.

A benchmark is a script `bench/NAME.py` whose docstring's first line says what it measures, with a `DURATION` string
(how long its defaults take; `bench/run.py --list` shows both) and a `main()`. It parses its arguments with
`new_parser(__doc__)` and the `add_*` helpers, opens `Results(__file__, args)`, adds one row per seed or run
(`results.add(row)` rewrites the file, so an interrupted benchmark keeps what it measured) and ends with
`results.finish(summary, line)`, which prints `line` last and writes OUT/NAME.json:

    {"bench": NAME, "argv": [...], "settings": {...}, "rows": [...], "summary": {...}, "line": LINE, "seconds": S}

Conventions: `--seeds` is a count N (seeds 0..N-1), a list (100,101) or a range (100-104); seeds from 100 on are
for tuning, the benchmarks report seeds 0..N-1. `--out` keeps the runs and the result file (default: a new temporary
folder). A finished plain run found in --out is reused, an interrupted one resumed (`plain_run`). Speed is counted
with `rlcast.evaluation.speedup` (steps to 98 % of the reference run's final held-out accuracy, a goal crossed and
lost by the end not counting), on the
generation-batch axis when rollouts are reused (`reuse_rollouts`, `per_batch`), and summarised over seeds by
`spread` (median, min, max).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rlcast.errors import RlcastError
from rlcast.evaluation.speedup import outcome
from rlcast.io.manifest import Manifest
from rlcast.io.atomic import write_text_atomic
from rlcast.io.records import json_safe

# The training helpers import rlcast.training (TRL, ~0.5 GB and many seconds) inside the functions that need it:
# the spectra benchmarks import this module too and measure their own memory and start-up.

console = Console(soft_wrap=True, highlight=False)  # result lines stay whole when piped to a file
TUNING = 100  # seeds from here on choose settings; the benchmarks report seeds below it


# ----------------------------------------------------------------------------- arguments

def new_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the first line of a benchmark's docstring."""
    return argparse.ArgumentParser(description=doc.strip().splitlines()[0])


def parse_seeds(text: str) -> list[int]:
    """'3' -> [0, 1, 2]; '100,101' -> [100, 101]; '100-102' -> [100, 101, 102] (one seed s: 's-s')."""
    try:
        if re.fullmatch(r"\d+", text.strip()):
            if int(text) == 0:  # not "no seeds, so the default ones": one seed 0 is written 0-0
                raise ValueError
            return list(range(int(text)))
        seeds = []
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            seeds += list(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a count >= 1 (3), a list (100,101) or a range (100-104; "
                                         f"seed 0 alone: 0-0)")
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: no seeds, or a seed twice")
    return seeds


def add_seeds(parser: argparse.ArgumentParser, default: str | None, shown: str | None = None) -> None:
    """--seeds, parsed to a list of seeds; `shown` describes a default that depends on other options (then None)."""
    parser.add_argument("--seeds", type=parse_seeds, default=None if default is None else parse_seeds(default),
                        help=f"a count N (seeds 0..N-1), a list 100,101 or a range 100-104 "
                             f"(default: {shown or default})")


def add_out(parser: argparse.ArgumentParser, what: str = "the runs and the result file") -> None:
    parser.add_argument("--out", type=Path, help=f"keep {what} here (default: a temporary folder)")


def add_preset(parser: argparse.ArgumentParser, default: str = "steady") -> None:
    """--preset NAME and repeatable --hp KEY=VALUE (a TrainConfig hyper-parameter on top of the preset)."""
    parser.add_argument("--preset", default=default, help="a preset of rlcast.training.train.PRESETS")
    parser.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                        help="TrainConfig hyper-parameter on top of the preset; repeatable")


def train_config(args: argparse.Namespace, **fields):
    """The TrainConfig of --preset with the --hp overrides, then `fields` (run settings such as seed, steps)."""
    from rlcast.training.train import HYPERPARAMETERS, TrainConfig, preset
    from rlcast.io.options import parse_overrides

    config = dataclasses.replace(preset(args.preset), **parse_overrides(TrainConfig, args.hp, HYPERPARAMETERS, "--hp"))
    return dataclasses.replace(config, **fields)


def quiet_transformers() -> None:
    """No transformers progress bars or warnings between the benchmark's own lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def progress(*columns) -> Progress:
    """A rich bar (description, bar, done/total, elapsed, then `columns`) printing through `console`."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    *columns, console=console)


# ----------------------------------------------------------------------------- plain runs

def finished(out: Path) -> bool:
    """Whether `out` holds a finished run (run.json with status finished)."""
    manifest = Path(out) / "run.json"
    return manifest.exists() and Manifest.read(manifest).status == "finished"


def plain_run(out: Path, config) -> Path:
    """The finished run of the TrainConfig `config` in `out`: reused when finished (with exactly this config),
    resumed when interrupted, else trained."""
    from rlcast.evaluation.tasks import get_task
    from rlcast.training.train import TrainConfig, read_manifest, train

    out = Path(out)
    if finished(out):
        _, stored = read_manifest(out)
        wanted = config.resolve(get_task(config.task, config.task_args or None))
        changed = [f.name for f in dataclasses.fields(TrainConfig)
                   if getattr(stored, f.name) != getattr(wanted, f.name)]
        if changed:
            raise RlcastError(f"{out}: a finished run with other settings ({', '.join(changed)}); use another --out")
        return out
    return train(out, config, progress=False, resume=(out / "run.json").exists())


def run_name(seed: int, learning_rate: float, mu: int) -> str:
    """The folder name of a plain run in --out and in the curve library (bench/curves.py)."""
    return f"seed{seed}-lr{learning_rate:g}-mu{mu}"


def library_run(library: Path, config, mu: int) -> Path:
    """The finished run of `config` (a plain run at reuse `mu`) in the committed curve library `library`
    (docs/results/curves/PRESET), checked to hold exactly this config; a one-line error when it is not there."""
    folder = Path(library) / run_name(config.seed, config.learning_rate, mu)
    if not finished(folder):
        raise SystemExit(f"{folder}: not in the curve library; train it with bench/curves.py")
    return plain_run(folder, config)


def reuse_rollouts(config, mu: int):
    """`config` with every generation batch serving `mu` optimizer steps (TRL's num_iterations): steps and the
    checkpoint interval scale by mu, so the run sees the same generation batches and is scored after the same ones."""
    return dataclasses.replace(config, num_iterations=mu, steps=config.steps * mu, save_every=config.save_every * mu)


def per_batch(curve: dict[int, float], mu: int) -> dict[int, float]:
    """A curve over optimizer steps as a curve over generation batches (`mu` steps per batch)."""
    return {step // mu: accuracy for step, accuracy in curve.items()}


# ----------------------------------------------------------------------------- metrics

def goal_metrics(reference: dict[int, float], run: dict[int, float], overhead: float = 0.0) -> dict:
    """Steps (or batches) to 98 % of the reference's final accuracy for both curves (`rlcast.evaluation.speedup.outcome`:
    a run that crosses the goal and ends below it has not reached it; `crossed` keeps that crossing), and what they give:

        speedup            reference steps / run steps to the goal (0.0 when either never reaches it)
        effective_speedup  the same with `overhead` step-equivalents added to the run's steps
        retained           run's final accuracy / reference's final accuracy
    """
    result = outcome(reference, run)
    n_ref, n_run = result["plain"]["steps_to_98"], result["accelerated"]["steps_to_98"]
    return {"goal": result["target"], "reference_final": result["plain"]["final_accuracy"],
            "final": result["accelerated"]["final_accuracy"], "reference_steps": n_ref, "steps": n_run,
            "crossed": result["accelerated"]["crossed"],
            "speedup": result["speedup"] or 0.0,
            "effective_speedup": n_ref / (n_run + overhead) if n_ref and n_run else 0.0,
            "retained": result["retained"]}


def implied_wall(share: float, speedup: float, passes: int, reference_passes: int) -> float:
    """Wall-clock speed-up of a run needing `speedup` x fewer generation batches at `passes` optimizer passes per
    batch, against a run at `reference_passes`, when generating is `share` of a one-pass step."""
    return speedup * (share + reference_passes * (1 - share)) / (share + passes * (1 - share))


def spread(values) -> dict:
    """Median, min and max of the values that are numbers (None and NaN left out), and how many there were."""
    kept = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not kept:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(kept), "min": min(kept), "max": max(kept), "n": len(kept)}


def spreads(rows: list[dict], keys) -> dict[str, dict]:
    """`spread` of each key over the rows (e.g. per seed)."""
    return {key: spread(row.get(key) for row in rows) for key in keys}


def fmt(value, spec: str = ".3f") -> str:
    """A number for a result line; 'nan' for None (no value, e.g. a spread of nothing)."""
    return "nan" if value is None else format(value, spec)


# ----------------------------------------------------------------------------- machine and 7B-shaped updates

def machine() -> str:
    """CPU model, BLAS / LAPACK and SIMD level of this torch build, the GPU and the 1-minute load: what the timings
    depend on."""
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
    gpu = f"; gpu: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"cpu: {cpu} ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}); blas: "
            f"{blas.group(1) if blas else '?'} ({lib.group(1) if lib else 'version unknown'}), "
            f"{simd.group(1) if simd else '?'}; torch {torch.__version__}{gpu}")


HIDDEN_7B, INTERMEDIATE_7B = 4096, 11008
LLAMA_7B = {"self_attn.q_proj": (HIDDEN_7B, HIDDEN_7B), "self_attn.k_proj": (HIDDEN_7B, HIDDEN_7B),
            "self_attn.v_proj": (HIDDEN_7B, HIDDEN_7B), "self_attn.o_proj": (HIDDEN_7B, HIDDEN_7B),
            "mlp.gate_proj": (INTERMEDIATE_7B, HIDDEN_7B), "mlp.up_proj": (INTERMEDIATE_7B, HIDDEN_7B),
            "mlp.down_proj": (HIDDEN_7B, INTERMEDIATE_7B)}


def names_and_shapes(layers: int, shapes: dict[str, tuple[int, int]] = LLAMA_7B) -> dict[str, tuple[int, int]]:
    """Tensor name -> shape of the 2-D block weights of `layers` Llama layers (Llama-7B shapes by default)."""
    return {f"model.layers.{i}.{kind}.weight": shape for i in range(layers) for kind, shape in shapes.items()}


def rl_like_delta(m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """An RL-like update: a top direction holding about half of ||dW||_F^2 (||dW||_F ~ 2, entries ~3e-4, a few bf16
    ulps of 0.02-scale weights), a decaying tail of 15 more directions and dense noise."""
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


# ----------------------------------------------------------------------------- the result file

PACKAGES = ("rlcast", "torch", "transformers", "trl", "peft", "accelerate", "numpy")


def provenance(argv: list[str], script: str = "") -> dict:
    """What a result depends on: this machine, the commit of the code (+dirty with uncommitted changes to tracked
    files), the package versions and the command line."""
    from importlib.metadata import PackageNotFoundError, version

    here = str(Path(__file__).resolve().parent)
    git = lambda *a: subprocess.run(["git", "-C", here, *a], capture_output=True, text=True).stdout.strip()  # noqa: E731
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    dirty = "+dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
    return {"machine": machine(), "commit": git("rev-parse", "HEAD") + dirty, "versions": versions,
            "command": [f"bench/{Path(script).name}" if script else "", *argv]}


class Results:
    """OUT/NAME.json of one benchmark run: rows as they come, then the summary and the last line; `provenance`
    records the machine, commit, package versions and command line."""

    def __init__(self, script: str, args: argparse.Namespace, settings: dict | None = None):
        self.name = Path(script).stem
        self.out = Path(args.out) if getattr(args, "out", None) else Path(
            tempfile.mkdtemp(prefix=f"rlcast-bench-{self.name}-"))
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / f"{self.name}.json"
        self.settings = {**vars(args), **(settings or {})}
        self.argv = sys.argv[1:]
        self.provenance = provenance(self.argv, script)
        self.rows: list[dict] = []
        self.started = time.perf_counter()

    def add(self, row: dict) -> None:
        """Record one row (a seed, a run, a configuration) and rewrite the file."""
        self.rows.append(row)
        self.save()

    def save(self, summary: dict | None = None, line: str | None = None) -> Path:
        record = {"bench": self.name, "argv": self.argv, "provenance": self.provenance, "settings": self.settings,
                  "rows": self.rows,
                  "summary": summary or {}, "line": line, "seconds": time.perf_counter() - self.started}
        return write_text_atomic(self.path, json.dumps(json_safe(record), indent=1, default=str) + "\n")

    def finish(self, summary: dict, line: str) -> Path:
        """Write the file with `summary` and `line`, then print where it is and `line`, the benchmark's last line."""
        self.save(summary, line)
        print(f"results in {self.path}", flush=True)
        print(line, flush=True)
        return self.path

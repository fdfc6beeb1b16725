"""The rank-k trajectory of a run: per checkpoint and tensor, the top-k (u, s, v) of dW_t = W_t - W_0, cached on disk.

Cache layout (one pair of files per checkpoint, under RUN/.rlcast-cache or $RLCAST_CACHE/<hash>,
$RLCAST_CACHE defaulting to ~/.cache/rlcast: `rlcast.io.cache`):
    step-<N>-<key>.safetensors   tensors "<name>/u" (m, k), "<name>/s" (k,), "<name>/v" (n, k), or "<name>/vector" (n,)
    step-<N>-<key>.json          per tensor: shape, fro, s_next, well_defined, method; written last = the commit mark
`key` hashes the checkpoint's weight files and the base's (resolved path + size + mtime), the rank, exactness, seed
and CACHE_VERSION. Each checkpoint's pair is renamed into place as soon as it is computed, so an interrupted build
resumes at the first missing checkpoint and a second build reads everything back without touching the weights.
The missing spectra are computed one task per (checkpoint, tensor) (`spectrum_entry`) through core.backend: in this
process or on Ray, with the tensors read onto the chosen device; the entries come back in order, on the CPU.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file

from rlcast.core import spectra
from rlcast.core.backend import LOCAL, Backend, map_tensors
from rlcast.errors import RlcastError
from rlcast.io.atomic import atomic_file, write_text_atomic
from rlcast.io.cache import cache_root
from rlcast.io.checkpoints import Run
from rlcast.io.outputs import is_writable
from rlcast.io.reader import RunReader
from rlcast.io.tensors import NOT_WEIGHTS

CACHE_VERSION = 1


@dataclass
class ModuleTrajectory:
    name: str
    shape: tuple[int, ...]
    steps: list[int]
    sigma: torch.Tensor  # (T, k); for 1-D tensors (T, 1) holding the delta norm
    u: torch.Tensor | None  # (T, m, k), sign convention of linalg (not time-aligned)
    v: torch.Tensor | None  # (T, n, k)
    fro: torch.Tensor  # (T,)
    well_defined: torch.Tensor  # (T,) bool
    vector: torch.Tensor | None  # (T, n) full delta for 1-D tensors, else None
    s_next: torch.Tensor | None = None  # (T,) s_{k+1} (0 when the rank is exhausted)
    method: list[str] = field(default_factory=list)  # per step: how the spectrum was computed (spectra.Spectrum.method)

    @property
    def rank1_energy(self) -> torch.Tensor:
        fro2 = self.fro.double() ** 2
        return torch.where(fro2 > 0, self.sigma[:, 0].double() ** 2 / fro2.clamp_min(1e-300), 0.0).float()

    def select(self, mask: torch.Tensor) -> "ModuleTrajectory":
        idx = mask.nonzero().flatten()
        pick = (lambda x: None if x is None else x[idx])
        return ModuleTrajectory(self.name, self.shape, [self.steps[i] for i in idx.tolist()], self.sigma[idx],
                                pick(self.u), pick(self.v), self.fro[idx], self.well_defined[idx], pick(self.vector),
                                pick(self.s_next), [self.method[i] for i in idx.tolist()] if self.method else [])


@dataclass
class Trajectory:
    steps: list[int]
    modules: dict[str, ModuleTrajectory]
    accuracy: dict[int, float]

    def window(self, until: int) -> "Trajectory":
        """The trajectory cut to the checkpoints with step <= until."""
        mask = torch.tensor([s <= until for s in self.steps])
        return Trajectory([s for s in self.steps if s <= until],
                          {n: m.select(mask) for n, m in self.modules.items()},
                          {s: a for s, a in self.accuracy.items() if s <= until})


# ----------------------------------------------------------------------------------------------------------------------
# Fingerprints and cache location


def weight_files(folder: Path) -> list[Path]:
    """The files of a model/adapter folder that determine its weights (not optimizer, scheduler or RNG state)."""
    keep = []
    for p in sorted(Path(folder).iterdir()):
        if not p.is_file() or NOT_WEIGHTS.match(p.name):
            continue
        if p.suffix in (".safetensors", ".bin", ".pt", ".pth") or p.name.endswith(".index.json") or p.name in (
                "adapter_config.json", "config.json"):
            keep.append(p)
    return keep


def fingerprint(folder: Path) -> list[list]:
    """[resolved path, size, mtime_ns] of every weight file of a folder."""
    out = []
    for p in weight_files(folder):
        st = p.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


def default_cache_dir(run: Run) -> Path:
    """RUN/.rlcast-cache when the run folder is writable (tried for real), else the cache root (`io.cache`:
    $RLCAST_CACHE or ~/.cache/rlcast)/<hash of the run's paths>."""
    if run.root is not None and is_writable(run.root):
        return run.root / ".rlcast-cache"
    ident = str(run.root) if run.root is not None else json.dumps([str(run.base)] + [str(c.path) for c in
                                                                                     run.checkpoints])
    return cache_root() / hashlib.sha256(ident.encode()).hexdigest()[:16]


def _cache_key(run: Run, step: int, rank: int, exact: bool, seed: int) -> str:
    ident = {"version": CACHE_VERSION, "checkpoint": fingerprint(run.checkpoint(step).path),
             "base": fingerprint(run.base), "rank": rank, "exact": exact, "seed": seed}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


class _StepCache:
    """The cached spectra of one checkpoint: {name: (meta dict, {field: tensor})}."""

    def __init__(self, folder: Path, step: int, key: str):
        self.tensors_path = folder / f"step-{step}-{key}.safetensors"
        self.meta_path = folder / f"step-{step}-{key}.json"
        self.entries: dict[str, tuple[dict, dict[str, torch.Tensor]]] = {}
        if self.meta_path.is_file() and self.tensors_path.is_file():
            try:
                meta = json.loads(self.meta_path.read_text())["modules"]
                tensors = load_file(self.tensors_path)
                for name, m in meta.items():
                    self.entries[name] = (m, {f: tensors[f"{name}/{f}"] for f in m["fields"]})
            except Exception:  # noqa: BLE001 - an unreadable cache is recomputed, never trusted
                self.entries = {}

    def save(self, step: int) -> None:
        self.tensors_path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"{n}/{f}": t.contiguous() for n, (_, fields) in self.entries.items() for f, t in fields.items()}
        meta = {"version": CACHE_VERSION, "step": step, "modules": {n: m for n, (m, _) in self.entries.items()}}
        with atomic_file(self.tensors_path) as tmp:
            save_file(tensors, str(tmp))
        write_text_atomic(self.meta_path, json.dumps(meta))


def _entry(spec: spectra.Spectrum, shape: tuple[int, ...], vector: torch.Tensor | None) -> tuple[dict, dict]:
    """The cache entry of one tensor at one checkpoint, on the CPU whatever device computed it."""
    fields = {"vector": vector, "s": spec.s} if vector is not None else {"u": spec.u, "s": spec.s, "v": spec.v}
    fields = {f: t.float().cpu() for f, t in fields.items()}
    meta = {"shape": list(shape), "fro": spec.fro, "s_next": spec.s_next, "well_defined": spec.well_defined,
            "method": spec.method, "iterations": spec.iterations, "fields": sorted(fields)}
    return meta, fields


def spectrum_entry(reader: RunReader, item: tuple[int, str], rank: int, exact: bool, seed: int,
                   device: torch.device | None = None) -> tuple[dict, dict]:
    """One backend task: read the delta of (step, name) onto `device`, and return its cache entry on the CPU."""
    step, name = item
    delta = reader.delta(step, name, device)
    spec = spectra.top_k(delta, k=rank, exact=exact, seed=seed, name=f"{name} at step {step}")
    vector = delta if isinstance(delta, torch.Tensor) and delta.dim() == 1 else None
    return _entry(spec, reader.shape(name), vector)


# ----------------------------------------------------------------------------------------------------------------------
# Building


def build_trajectory(run: Run, rank: int = 1, exact: bool = False, cache_dir: str | Path | None = None,
                     progress: bool = True, names: list[str] | None = None, seed: int = 0,
                     backend: Backend = LOCAL, device: torch.device | None = None) -> Trajectory:
    """Top-`rank` spectra of every delta (names default to the tensors the run changes), from the cache when fresh.

    The missing ones are computed one task per (checkpoint, tensor) on `backend` (tensors read onto `device`).
    """
    if rank < 1:
        raise RlcastError(f"--rank must be >= 1 (got {rank})")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(run)
    reader = RunReader(run)
    names = list(names) if names is not None else reader.changed_names()
    unknown = [n for n in names if n not in reader.base_reader]
    if unknown:
        raise RlcastError(f"{run.base}: tensor {unknown[0]} not in the base model")
    caches, todo = {}, []
    for step in run.steps:
        caches[step] = _StepCache(cache_dir, step, _cache_key(run, step, rank, exact, seed))
        todo += [(step, n) for n in names if n not in caches[step].entries]
    if todo:
        reader.open(dict.fromkeys(step for step, _ in todo))  # a bad file fails before the first spectrum
        task = partial(spectrum_entry, reader, rank=rank, exact=exact, seed=seed, device=device)
        _compute(map_tensors(task, todo, backend, device), todo, caches, progress)
    return _assemble(run, names, caches)


def _compute(entries: Iterator[tuple[dict, dict]], todo: list[tuple[int, str]], caches: dict, progress: bool) -> None:
    """Store the entries of every (step, name), in order; save each checkpoint's cache as soon as its last is in."""
    columns = (TextColumn("[bold]spectra[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    last = {step: i for i, (step, _) in enumerate(todo)}
    with Progress(*columns, disable=not progress, transient=False) as bar:
        job = bar.add_task("", total=len(todo))
        for i, ((step, name), entry) in enumerate(zip(todo, entries)):
            caches[step].entries[name] = entry
            bar.update(job, advance=1, description=f"step {step}: {name}")
            if i == last[step]:
                caches[step].save(step)  # an interruption loses at most the checkpoint in progress


def _assemble(run: Run, names: list[str], caches: dict) -> Trajectory:
    steps = run.steps
    modules = {}
    for name in names:
        metas = [caches[s].entries[name][0] for s in steps]
        fields = [caches[s].entries[name][1] for s in steps]
        is_vector = "vector" in fields[0]
        modules[name] = ModuleTrajectory(
            name=name, shape=tuple(metas[0]["shape"]), steps=list(steps),
            sigma=torch.stack([f["s"] for f in fields]),
            u=None if is_vector else torch.stack([f["u"] for f in fields]),
            v=None if is_vector else torch.stack([f["v"] for f in fields]),
            fro=torch.tensor([m["fro"] for m in metas], dtype=torch.float32),
            well_defined=torch.tensor([bool(m["well_defined"]) for m in metas]),
            vector=torch.stack([f["vector"] for f in fields]) if is_vector else None,
            s_next=torch.tensor([m["s_next"] for m in metas], dtype=torch.float32),
            method=[m["method"] for m in metas])
    return Trajectory(list(steps), modules, run.accuracy)

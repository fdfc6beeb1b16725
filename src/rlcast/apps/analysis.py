"""`rlcast analyze`: how rank-1 dominated each weight update is, how it grows, and how stable its top direction is.

Per tensor and checkpoint t (dW_t = W_t - W_0, top-k SVD from rlcast.core.trajectory):
    rank1_energy  s1^2 / ||dW_t||_F^2
    growth        ||dW_T||_F / ||dW_t1||_F       (last over first checkpoint)
    cos_prev      |cos(u1(t), u1(t-1))|           (consecutive checkpoints; |.| because singular vectors have no sign)
    cos_last      |cos(u1(t), u1(T))|             (to the last checkpoint)
The summary averages these per (layer, module type) and per module type over all layers. 1-D tensors (selection
"all") are plain vectors: their "u1" is the normalised delta and their rank-1 energy is 1.
The spectra run on the `compute` device (auto: CUDA when present) and backend (local, or one Ray task per tensor and
checkpoint); analysis.json holds the same numbers either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich import box
from rich.table import Table

from rlcast.core.backend import Compute
from rlcast.core.trajectory import ModuleTrajectory, Trajectory, build_trajectory
from rlcast.errors import RlcastError
from rlcast.io.atomic import atomic_folder, write_json_atomic
from rlcast.io.cache import cache_root
from rlcast.io.checkpoints import Run
from rlcast.io.reader import RunReader
from rlcast.io.records import json_safe, output_record
from rlcast.io.selections import check_selection, parse_name
from rlcast.io.synthetic import planted_run

RESULTS = "rlcast"  # default output folder inside the run: RUN/rlcast/analysis.json


@dataclass
class SummaryRow:
    layer: int | None  # None: all layers (or a tensor outside the blocks)
    kind: str  # module type, e.g. "mlp.up_proj"
    n: int  # tensors averaged
    rank1_energy: float  # mean over tensors and checkpoints
    rank1_energy_last: float  # mean over tensors, last checkpoint
    growth: float  # mean ||dW_T||_F / ||dW_first||_F
    cos_prev: float  # mean |cos(u1(t), u1(t-1))|
    cos_last: float  # mean |cos(u1(t), u1(T))| over t < T
    ill_defined: int  # (tensor, checkpoint) pairs whose s1/s2 < 1.01


@dataclass
class Analysis:
    steps: list[int]
    selection: str
    rank: int
    exact: bool
    modules: dict[str, dict]  # the analysis.json "modules" entries
    summary: list[SummaryRow]
    run: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # what the numbers depend on (`settings`), recorded in the JSON

    def to_dict(self) -> dict:
        methods: dict[str, int] = {}
        for m in self.modules.values():
            for entry in m["steps"].values():
                methods[entry["method"]] = methods.get(entry["method"], 0) + 1
        return json_safe({"steps": self.steps, "selection": self.selection, "rank": self.rank, "exact": self.exact,
                        "run": self.run, "spectrum_methods": methods,
                        "summary": [row.__dict__ for row in self.summary], "modules": self.modules})

    def save(self, out: str | Path) -> Path:
        """Write OUT/analysis.json atomically (temp file renamed into place); returns its path."""
        return write_json_atomic(Path(out) / "analysis.json", self.to_dict(), indent=1,
                                 record=output_record("analyze", self.settings))


def settings(run: Run, rank: int = 1, exact: bool = False, selection: str = "blocks", seed: int = 0) -> dict:
    """What an analysis depends on (not where it ran): a saved one with other settings is not replaced silently."""
    return {"run": str(run.root or run.base), "rank": rank, "exact": exact, "selection": selection, "seed": seed}


def _top_direction(mt: ModuleTrajectory) -> torch.Tensor:
    """(T, d) unit top direction per checkpoint: u1 for matrices, the normalised delta for vectors."""
    x = mt.vector if mt.vector is not None else mt.u[:, :, 0]
    norm = torch.linalg.vector_norm(x.double(), dim=1, keepdim=True)
    return torch.where(norm > 0, x.double() / norm.clamp_min(1e-300), 0.0)


def module_entry(mt: ModuleTrajectory) -> dict:
    """The analysis.json entry of one tensor: shape, layer, type and per-step spectra and cosines."""
    u = _top_direction(mt)
    cos_prev = [None] + (u[1:] * u[:-1]).sum(1).abs().tolist()
    cos_last = (u * u[-1]).sum(1).abs().tolist()
    energy = mt.rank1_energy.tolist()
    layer, kind = parse_name(mt.name)
    steps = {}
    for t, step in enumerate(mt.steps):
        steps[str(step)] = {"sigma": mt.sigma[t].tolist(), "s_next": float(mt.s_next[t]) if mt.s_next is not None
                            else None, "fro": float(mt.fro[t]), "rank1_energy": energy[t],
                            "well_defined": bool(mt.well_defined[t]), "method": mt.method[t] if mt.method else None,
                            "cos_prev": cos_prev[t], "cos_last": cos_last[t]}
    return {"shape": list(mt.shape), "layer": layer, "type": kind, "steps": steps}


def summarize(modules: dict[str, dict]) -> list[SummaryRow]:
    """Rows per (layer, type), then per type over all layers (when a type spans several layers)."""
    groups: dict[tuple, list[dict]] = {}
    for entry in modules.values():
        groups.setdefault((entry["layer"], entry["type"]), []).append(entry)
        if entry["layer"] is not None:
            groups.setdefault((None, entry["type"]), []).append(entry)
    rows = []
    for (layer, kind), entries in groups.items():
        if layer is None and all(e["layer"] is not None for e in entries) and len({e["layer"] for e in entries}) < 2:
            continue  # an "all layers" row equal to its single layer row
        per_step = [list(e["steps"].values()) for e in entries]
        mean = (lambda xs: sum(xs) / len(xs) if xs else float("nan"))
        growth = [s[-1]["fro"] / s[0]["fro"] for s in per_step if s[0]["fro"] > 0]
        rows.append(SummaryRow(
            layer=layer, kind=kind, n=len(entries),
            rank1_energy=mean([x["rank1_energy"] for s in per_step for x in s]),
            rank1_energy_last=mean([s[-1]["rank1_energy"] for s in per_step]),
            growth=mean(growth),
            cos_prev=mean([x["cos_prev"] for s in per_step for x in s[1:]]),
            cos_last=mean([x["cos_last"] for s in per_step for x in s[:-1]]),
            ill_defined=sum(not x["well_defined"] for s in per_step for x in s)))
    order = lambda r: (r.layer is None, -1 if r.layer is None else r.layer, r.kind)  # noqa: E731
    return sorted(rows, key=order)


def analyze(run: Run, rank: int = 1, exact: bool = False, selection: str = "blocks",
            cache_dir: str | Path | None = None, progress: bool = True, seed: int = 0,
            compute: Compute = Compute()) -> Analysis:
    """Spectra of the selected tensors at every checkpoint (cached), per-tensor entries and the summary table.

    Bad settings (selection, device, an unreachable Ray cluster) fail before anything is computed or cached.
    """
    check_selection(selection)
    chosen = RunReader(run).selected(selection)
    if not chosen:
        raise RlcastError(f"{run.root or run.base}: no tensors to analyse with selection {selection!r}")
    with compute.open() as (where, workers):
        traj: Trajectory = build_trajectory(run, rank=rank, exact=exact, cache_dir=cache_dir, progress=progress,
                                            names=chosen, seed=seed, backend=workers, device=where)
    modules = {name: module_entry(traj.modules[name]) for name in chosen}
    info = {"root": str(run.root) if run.root else None, "base": str(run.base),
            "checkpoints": {str(c.step): str(c.path) for c in run.checkpoints},
            "kind": sorted({c.kind for c in run.checkpoints}), "accuracy": {str(k): v for k, v in
                                                                           traj.accuracy.items()}}
    return Analysis(traj.steps, selection, rank, exact, modules, summarize(modules), info,
                    settings(run, rank, exact, selection, seed))


def print_summary(analysis: Analysis, console) -> None:
    """The summary as a rich table: one row per (layer, module type), then one per type over all layers."""
    steps = analysis.steps
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0),
                  title=f"rank-1 structure of dW = W_t - W_0: {len(analysis.modules)} tensors ({analysis.selection}), "
                        f"{len(steps)} checkpoints, steps {steps[0]}..{steps[-1]}",
                  caption="E1 = s1^2/||dW||_F^2 (mean over checkpoints, and at the last one); growth = ||dW||_F last "
                          "/ first; cos = |cos u1| to the previous / the last checkpoint; ill = checkpoints with "
                          "s1/s2 < 1.01 (u1 not well defined)")
    table.add_column("layer", justify="right", no_wrap=True, min_width=5)
    table.add_column("module", no_wrap=True, min_width=max(len(r.kind) for r in analysis.summary))
    for col in ("n", "E1", "E1 last", "growth", "cos prev", "cos last", "ill"):
        width = max(len(col), 0 if col in ("n", "ill") else 5) + 1  # numbers print as 0.123
        table.add_column(col, justify="right", no_wrap=True, min_width=width)
    fmt = lambda v: "-" if v is None or v != v else f"{v:.3f}"  # noqa: E731
    rows = analysis.summary
    for i, row in enumerate(rows):
        last_of_layers = row.layer is not None and (i + 1 == len(rows) or rows[i + 1].layer is None)
        table.add_row("all" if row.layer is None else str(row.layer), row.kind, str(row.n), fmt(row.rank1_energy),
                      fmt(row.rank1_energy_last), fmt(row.growth), fmt(row.cos_prev), fmt(row.cos_last),
                      str(row.ill_defined), end_section=last_of_layers)
    console.print(table)


def default_out(run: Run) -> Path:
    """RUN/rlcast, or ./rlcast for runs given only as explicit checkpoints."""
    return (run.root if run.root else Path.cwd()) / RESULTS


def example_run(folder: str | Path | None = None) -> Path:
    """A small planted run (tiny Llama, 10 checkpoints, saturating rank-1 update + noise), built once and cached."""
    folder = Path(folder) if folder else cache_root() / "example-run"
    if (folder / "planted.json").is_file():
        return folder
    if folder.exists():
        raise RlcastError(f"{folder}: exists and is not an rlcast example run")
    with atomic_folder(folder) as tmp:
        planted_run(tmp, rank=1, kind="saturating", noise=0.02, hidden=64, layers=2, seed=0)
    return folder

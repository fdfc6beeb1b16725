"""Rank-1 linear dynamics: how linearly each module's top singular direction moves during training.

Per 2-D module, on the sign-aligned rank-1 trajectory a(t) = s1(t) u1(t) (T checkpoints x m):
- step R^2: a(t) ~ c0 + c1 * t, fitted per coordinate by least squares. In-sample on all T checkpoints, and held out:
  fitted on the first 2/3 of the checkpoints, scored on the rest.
- PLS R^2 (AlphaRL's measure): one-component PLS of accuracy on a(t), then OLS of accuracy on the PLS score.
  In-sample (the paper's number, optimistic when m >> T) and leave-later-out (fit early, predict later accuracies).
- cosine of u1(t) and v1(t) to the last checkpoint's (absolute value: singular vectors have no sign).
- RELEX's temporal explained variance: lambda_1 / sum(lambda) of the T x T Gram matrix of the flattened deltas.

R^2 is always 1 - SSE / SST with both sums over every coordinate of the scored vectors (or accuracies), and SST taken
around the mean of the scored set itself: for held-out scores that is the mean of the held-out vectors, so a
prediction no better than "the later checkpoints sit at their own average" scores 0, and a worse one is negative.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from rich.console import Console
from rich.progress import Progress

from rlcast.core.numerics import gram, line_fit, r2
from rlcast.core.trajectory import build_trajectory
from rlcast.errors import RlcastError
from rlcast.evaluation.generation import check_prompts
from rlcast.evaluation.scoring import checkpoint_accuracies, run_task
from rlcast.extrapolation.alpharl import pls_r2, rank1_path
from rlcast.extrapolation.relex import temporal_explained
from rlcast.io.atomic import write_json_atomic
from rlcast.io.reader import RunReader
from rlcast.io.records import output_record
from rlcast.io.selections import parse_name

HOLDOUT_FIT = 2 / 3  # fraction of the checkpoints the held-out fits see
R2_THRESHOLD = 0.9


def split(n: int) -> int:
    """Number of checkpoints the held-out fits see: the first 2/3, leaving at least 2 to score and 2 to fit."""
    n_fit = min(round(HOLDOUT_FIT * n), n - 2)
    if n_fit < 2:
        raise RlcastError(f"held-out fits need at least 4 checkpoints, the run has {n}")
    return n_fit


def step_r2(a: torch.Tensor, steps: list[int]) -> tuple[float, float, float]:
    """(in-sample R^2, held-out R^2, held-out relative error) of the rows of `a` (T, d) against a line in the step.

    The relative error ||a - pred|| / ||a|| over the held-out rows complements R^2: when the later checkpoints barely
    move, their SST is tiny and R^2 is very negative even for a prediction that lands close to them.
    """
    t = torch.tensor(steps, dtype=torch.float64)[:, None]
    c0, c1 = line_fit(t[:, 0], a)
    in_sample = r2(a, c0 + c1 * t)
    n_fit = split(len(steps))
    later = a[n_fit:].double()
    c0, c1 = line_fit(t[:n_fit, 0], a[:n_fit])
    pred = c0 + c1 * t[n_fit:]
    relerr = float((later - pred).norm() / later.norm().clamp_min(1e-300))
    return in_sample, r2(later, pred), relerr


# --- per module and per run ---

@dataclass
class ModuleDynamics:
    name: str
    layer: int | None
    kind: str                  # module type, e.g. "mlp.up_proj"
    step_r2: float             # in-sample R^2 of s1*u1 against a line in the step
    step_r2_heldout: float     # fitted on the first 2/3 of the checkpoints, scored on the rest
    step_relerr_heldout: float # ||a - pred|| / ||a|| over the held-out checkpoints
    pls_r2: float | None       # in-sample PLS R^2 against accuracy (AlphaRL's measure); None without accuracies
    pls_r2_heldout: float | None
    pls_mae_heldout: float | None
    cos_u_last: list[float]    # |cos(u1(t), u1(T))| per checkpoint
    cos_v_last: list[float]
    relex_explained: float | None  # temporal explained variance of the top direction of the stacked deltas
    rank1_energy_last: float
    fro_last: float            # ||dW||_F at the last checkpoint (RL updates are small, SFT ones large)
    well_defined: float        # share of checkpoints where s1/s2 separates u1 from u2 (linalg.Spectrum.well_defined)


@dataclass
class DynamicsResult:
    steps: list[int]
    accuracy_steps: list[int]      # checkpoints whose accuracy entered the PLS fits
    accuracy_source: str           # "manifest", "task:<spec>" or "none"
    selection: str
    holdout_fit: int               # checkpoints used by the held-out fits
    modules: list[ModuleDynamics]
    summary: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # what the numbers depend on (`settings`), recorded in the JSON

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, path: Path) -> Path:
        body = self.to_json()
        return write_json_atomic(Path(path), body, record=output_record("dynamics", body.pop("settings")))


def settings(run, task: str | None = None, n_prompts: int = 200, selection: str = "blocks", relex: bool = True,
             seed: int = 0, task_args: dict | None = None) -> dict:
    """What a dynamics result depends on: a saved one with other settings is not replaced silently."""
    scored = task is not None or task_args is not None
    return {"run": str(run.root or run.base), "task": task, "task_args": task_args or {},
            "n_prompts": n_prompts if scored else None, "selection": selection, "relex": relex,
            "seed": seed if scored else None}


def module_dynamics(mt, accuracy: dict[int, float], g: torch.Tensor | None) -> ModuleDynamics:
    """All dynamics measures of one 2-D module trajectory (its first singular triplet)."""
    layer, kind = parse_name(mt.name)
    u = mt.u[:, :, 0].double()
    v = mt.v[:, :, 0].double()
    a, _ = rank1_path(mt)  # the sign-aligned rank-1 trajectory s1(t) u1(t), as AlphaRL extrapolates it
    in_r2, out_r2, relerr = step_r2(a, mt.steps)
    pls = (None, None, None)
    acc_steps = [s for s in mt.steps if s in accuracy]
    if len(acc_steps) >= 4:
        rows = [mt.steps.index(s) for s in acc_steps]
        pls = pls_r2(a[rows], torch.tensor([accuracy[s] for s in acc_steps], dtype=torch.float64), split(len(rows)))
    cos = lambda x: (x @ x[-1]).abs() / (x.norm(dim=1) * x[-1].norm()).clamp_min(1e-300)  # noqa: E731
    return ModuleDynamics(
        name=mt.name, layer=layer, kind=kind, step_r2=in_r2, step_r2_heldout=out_r2, step_relerr_heldout=relerr,
        pls_r2=pls[0], pls_r2_heldout=pls[1], pls_mae_heldout=pls[2],
        cos_u_last=cos(u).tolist(), cos_v_last=cos(v).tolist(),
        relex_explained=temporal_explained(g) if g is not None else None,
        rank1_energy_last=float(mt.rank1_energy[-1]), fro_last=float(mt.fro[-1]), well_defined=float(mt.well_defined.float().mean()))


SCALARS = ("step_r2", "step_r2_heldout", "step_relerr_heldout", "pls_r2", "pls_r2_heldout", "relex_explained",
           "rank1_energy_last", "fro_last")


def _mean(values) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def _share(values, threshold: float) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(v > threshold for v in values) / len(values) if values else math.nan


def summarize(modules: list[ModuleDynamics]) -> dict:
    """Means per layer and per module type, and the headline shares over all modules."""
    groups = {"by_layer": defaultdict(list), "by_kind": defaultdict(list)}
    for m in modules:
        groups["by_layer"][str(m.layer)].append(m)
        groups["by_kind"][m.kind].append(m)
    order = lambda g: (not g.isdigit(), int(g) if g.isdigit() else 0, g)  # noqa: E731  layers 0, 1, ..., then None
    out = {key: {g: {"n": len(ms), **{f: _mean(getattr(m, f) for m in ms) for f in SCALARS}}
                 for g, ms in sorted(group.items(), key=lambda kv: order(kv[0]))}
           for key, group in groups.items()}
    out["overall"] = {
        "n_modules": len(modules),
        **{f"mean_{f}": _mean(getattr(m, f) for m in modules) for f in SCALARS},
        "share_step_r2_heldout_gt_0.9": _share((m.step_r2_heldout for m in modules), R2_THRESHOLD),
        "share_step_r2_heldout_lt_0": _share((-m.step_r2_heldout for m in modules), 0.0),
        "share_step_r2_gt_0.9": _share((m.step_r2 for m in modules), R2_THRESHOLD),
        "share_pls_r2_gt_0.9": _share((m.pls_r2 for m in modules), R2_THRESHOLD),
        "share_pls_r2_heldout_gt_0.9": _share((m.pls_r2_heldout for m in modules), R2_THRESHOLD),
        "mean_cos_u_first_to_last": _mean(m.cos_u_last[0] for m in modules),
        "mean_cos_v_first_to_last": _mean(m.cos_v_last[0] for m in modules),
        "mean_well_defined": _mean(m.well_defined for m in modules),
    }
    return out


def analyze_dynamics(run, trajectory=None, task: str | None = None, n_prompts: int = 200,
                     selection: str = "blocks", relex: bool = True, seed: int = 0, progress: bool = True,
                     cache_dir: Path | None = None, chunk_mb: int = 256,
                     task_args: dict | None = None) -> DynamicsResult:
    """Dynamics of every selected 2-D module of `run`; accuracies from the manifest, or evaluated on `task` (with
    `task_args`; the run's task named again keeps the run's arguments unless they are given).

    `trajectory` (any rank >= 1, e.g. the report's) is reused when given, else built at rank 1 (cached on disk).
    `chunk_mb` bounds the memory of RELEX's streamed Gram matrices (rlcast.core.numerics.gram).
    """
    reader = RunReader(run)
    names = dynamics_names(reader, selection)
    if len(run.checkpoints) < 4:
        raise RlcastError(f"{run.root or run.base}: dynamics need at least 4 checkpoints, "
                          f"found {len(run.checkpoints)}")
    scored = None
    if task or task_args is not None:
        check_prompts(n_prompts)
        scored = run_task(run, task, task_args)
    if trajectory is None:
        trajectory = build_trajectory(run, rank=1, cache_dir=cache_dir, progress=progress, names=names)
    if scored is not None:
        accuracy = checkpoint_accuracies(run, scored, n_prompts, seed=seed, progress=progress)
        source = f"task:{scored.variant}"
    else:
        accuracy, source = dict(trajectory.accuracy), "manifest" if trajectory.accuracy else "none"
    modules = []
    console = Console(stderr=True)  # transient bar: nothing left behind in a log file
    with Progress(console=console, disable=not (progress and console.is_terminal), transient=True) as bar:
        job = bar.add_task("dynamics", total=len(names))
        for name in names:
            g = gram(reader, name, trajectory.steps, chunk_mb) if relex else None
            modules.append(module_dynamics(trajectory.modules[name], accuracy, g))
            bar.update(job, advance=1)
    return DynamicsResult(steps=list(trajectory.steps), accuracy_steps=[s for s in trajectory.steps if s in accuracy],
                          accuracy_source=source, selection=selection, holdout_fit=split(len(trajectory.steps)),
                          modules=modules, summary=summarize(modules),
                          settings=settings(run, task, n_prompts, selection, relex, seed, task_args))


def dynamics_names(reader, selection: str) -> list[str]:
    """The 2-D tensors of the selection that the run changes (LoRA: the adapted ones)."""
    return reader.selected(selection, two_d=True)

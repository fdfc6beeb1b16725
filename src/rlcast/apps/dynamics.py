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

from rlcast.core.spectra import align_signs
from rlcast.core.trajectory import build_trajectory
from rlcast.errors import RlcastError
from rlcast.evaluation.scoring import checkpoint_accuracies, run_task
from rlcast.io.checkpoints import LowRankDelta, RunReader, parse_name
from rlcast.io.writer import write_json_atomic

HOLDOUT_FIT = 2 / 3  # fraction of the checkpoints the held-out fits see
R2_THRESHOLD = 0.9


# --- the maths, on plain tensors ---

def r2(target: torch.Tensor, pred: torch.Tensor) -> float:
    """1 - SSE/SST over all entries; SST around the mean over the first axis (time). nan when SST is 0."""
    target, pred = target.double(), pred.double()
    sst = (target - target.mean(0, keepdim=True)).pow(2).sum()
    if sst <= 0:
        return math.nan
    return float(1 - (target - pred).pow(2).sum() / sst)


def split(n: int) -> int:
    """Number of checkpoints the held-out fits see: the first 2/3, leaving at least 2 to score and 2 to fit."""
    n_fit = min(round(HOLDOUT_FIT * n), n - 2)
    if n_fit < 2:
        raise RlcastError(f"held-out fits need at least 4 checkpoints, the run has {n}")
    return n_fit


def line_fit(steps: torch.Tensor, a: torch.Tensor):
    """Least-squares line per coordinate: returns f(steps) -> predicted rows."""
    x = torch.stack([torch.ones_like(steps), steps], 1).double()
    coef = torch.linalg.lstsq(x, a.double()).solution  # (2, d)
    return lambda s: (torch.stack([torch.ones_like(s), s], 1).double() @ coef)


def step_r2(a: torch.Tensor, steps: list[int]) -> tuple[float, float, float]:
    """(in-sample R^2, held-out R^2, held-out relative error) of the rows of `a` (T, d) against a line in the step.

    The relative error ||a - pred|| / ||a|| over the held-out rows complements R^2: when the later checkpoints barely
    move, their SST is tiny and R^2 is very negative even for a prediction that lands close to them.
    """
    t = torch.tensor(steps, dtype=torch.float64)
    in_sample = r2(a, line_fit(t, a)(t))
    n_fit = split(len(steps))
    later = a[n_fit:].double()
    pred = line_fit(t[:n_fit], a[:n_fit])(t[n_fit:])
    relerr = float((later - pred).norm() / later.norm().clamp_min(1e-300))
    return in_sample, r2(later, pred), relerr


def pls1(x: torch.Tensor, y: torch.Tensor):
    """One-component PLS of y on x, then OLS of y on the score: returns f(x) -> predicted y."""
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean()
    w = (x - mx).T @ (y - my)
    w = w / w.norm().clamp_min(1e-300)
    z = (x - mx) @ w
    b = (z @ (y - my)) / (z @ z).clamp_min(1e-300)
    return lambda x_new: my + b * ((x_new.double() - mx) @ w)


def pls_r2(a: torch.Tensor, acc: torch.Tensor) -> tuple[float, float, float]:
    """(in-sample R^2, held-out R^2, held-out mean absolute error) of accuracy predicted from the rows of `a`."""
    in_sample = r2(acc, pls1(a, acc)(a))
    n_fit = split(len(acc))
    pred = pls1(a[:n_fit], acc[:n_fit])(a[n_fit:])
    return in_sample, r2(acc[n_fit:], pred), float((pred - acc[n_fit:].double()).abs().mean())


def temporal_explained(gram: torch.Tensor) -> float:
    """RELEX: share of the stacked deltas' energy on their top temporal direction, lambda_1 / trace of M M^T."""
    eig = torch.linalg.eigvalsh(gram.double())
    total = float(eig.clamp_min(0).sum())
    return float(eig[-1]) / total if total > 0 else math.nan


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

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, path: Path) -> Path:
        return write_json_atomic(Path(path), self.to_json())


def inner(a, b) -> float:
    """Frobenius inner product of two deltas, dense or low-rank (scale * B @ A, never densified)."""
    if isinstance(a, LowRankDelta) and isinstance(b, LowRankDelta):
        return float(a.scale * b.scale * ((a.B.T @ b.B) * (a.A @ b.A.T)).sum())
    if isinstance(a, LowRankDelta):
        a, b = b, a
    if isinstance(b, LowRankDelta):  # <D, s B A> = s * sum((B^T D) * A)
        return float(b.scale * ((b.B.T @ a) * b.A).sum())
    return float((a.double() * b.double()).sum())


def relex_gram(reader, name: str, steps: list[int]) -> torch.Tensor:
    """T x T Gram matrix of the flattened deltas of one tensor, reading that tensor at every step (only it)."""
    deltas = [reader.delta(step, name) for step in steps]
    n = len(steps)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i, n):
            gram[i, j] = gram[j, i] = inner(deltas[i], deltas[j])
    return gram


def module_dynamics(mt, accuracy: dict[int, float], gram: torch.Tensor | None) -> ModuleDynamics:
    """All dynamics measures of one 2-D module trajectory (its first singular triplet)."""
    layer, kind = parse_name(mt.name)
    u = mt.u[:, :, 0].double()
    v = mt.v[:, :, 0].double()
    s1 = mt.sigma[:, 0].double()
    a = s1[:, None] * align_signs(u)  # the sign-aligned rank-1 trajectory s1(t) u1(t)
    in_r2, out_r2, relerr = step_r2(a, mt.steps)
    pls = (None, None, None)
    acc_steps = [s for s in mt.steps if s in accuracy]
    if len(acc_steps) >= 4:
        rows = [mt.steps.index(s) for s in acc_steps]
        pls = pls_r2(a[rows], torch.tensor([accuracy[s] for s in acc_steps], dtype=torch.float64))
    cos = lambda x: (x @ x[-1]).abs() / (x.norm(dim=1) * x[-1].norm()).clamp_min(1e-300)  # noqa: E731
    return ModuleDynamics(
        name=mt.name, layer=layer, kind=kind, step_r2=in_r2, step_r2_heldout=out_r2, step_relerr_heldout=relerr,
        pls_r2=pls[0], pls_r2_heldout=pls[1], pls_mae_heldout=pls[2],
        cos_u_last=cos(u).tolist(), cos_v_last=cos(v).tolist(),
        relex_explained=temporal_explained(gram) if gram is not None else None,
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
                     cache_dir: Path | None = None) -> DynamicsResult:
    """Dynamics of every selected 2-D module of `run`; accuracies from the manifest, or evaluated with `task`.

    `trajectory` (any rank >= 1, e.g. the report's) is reused when given, else built at rank 1 (cached on disk).
    """
    reader = RunReader(run)
    names = dynamics_names(reader, selection)
    if len(run.checkpoints) < 4:
        raise RlcastError(f"{run.root or run.base}: dynamics need at least 4 checkpoints, "
                          f"found {len(run.checkpoints)}")
    if trajectory is None:
        trajectory = build_trajectory(run, rank=1, cache_dir=cache_dir, progress=progress, names=names)
    if task:
        accuracy = checkpoint_accuracies(run, run_task(run, task), n_prompts, seed=seed, progress=progress)
        source = f"task:{task}"
    else:
        accuracy, source = dict(trajectory.accuracy), "manifest" if trajectory.accuracy else "none"
    modules = []
    console = Console(stderr=True)  # transient bar: nothing left behind in a log file
    with Progress(console=console, disable=not (progress and console.is_terminal), transient=True) as bar:
        job = bar.add_task("dynamics", total=len(names))
        for name in names:
            gram = relex_gram(reader, name, trajectory.steps) if relex else None
            modules.append(module_dynamics(trajectory.modules[name], accuracy, gram))
            bar.update(job, advance=1)
    return DynamicsResult(steps=list(trajectory.steps), accuracy_steps=[s for s in trajectory.steps if s in accuracy],
                          accuracy_source=source, selection=selection, holdout_fit=split(len(trajectory.steps)),
                          modules=modules, summary=summarize(modules))


def dynamics_names(reader, selection: str) -> list[str]:
    """The 2-D tensors of the selection that the run changes (LoRA: the adapted ones)."""
    return reader.selected(selection, two_d=True)

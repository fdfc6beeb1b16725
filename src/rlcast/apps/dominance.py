"""Rank-1 dominance: does the top-k part of the RL update recover the full checkpoint's accuracy?

Rank-k model of checkpoint t, per selected 2-D tensor (AlphaRL, see METHODS.md section 1):

    W = W0 + a * dW_(k),   dW_(k) = sum_{i<=k} s_i u_i v_i^T,   a = ||dW||_F / ||dW_(k)||_F  (or a = 1, no rescale)

Selection `blocks` (the paper's) touches only the 2-D weights inside transformer blocks, `all-2d` every 2-D weight,
`all` also gives 1-D tensors their full delta. Unselected tensors stay at the base. Base, full checkpoint and each
rank-k model are scored on the same prompts, so the recovery figures get paired bootstrap intervals over prompts:

    recovery = acc_k / acc_full            gain recovery = (acc_k - acc_base) / (acc_full - acc_base)
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from rlcast.errors import RlcastError

SELECTIONS = ("blocks", "all-2d", "all")
RESAMPLES = 2000


# --- rank-k models ---

def rank_k_tensors(reader, step: int, k: int, rescale: bool = True, selection: str = "blocks",
                   exact: bool = False, seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Every base tensor, in base order, as it is in the rank-k model of checkpoint `step` (float32)."""
    from rlcast.io.checkpoints import select_names
    from rlcast.core.spectra import top_k

    if selection not in SELECTIONS:
        raise RlcastError(f"unknown selection {selection!r} (expected one of {', '.join(SELECTIONS)})")
    if k < 1:
        raise RlcastError(f"rank must be >= 1 (got {k})")
    names = reader.names()
    shapes = {n: tuple(reader.shape(n)) for n in names}
    chosen = set(select_names(names, shapes, selection)) & set(reader.changed_names())
    for name in names:
        w0 = reader.base(name)
        if name not in chosen:
            yield name, w0
        elif len(shapes[name]) != 2:  # `all`: 1-D (and other non-matrix) tensors take their full delta
            yield name, reader.weight(step, name)
        else:
            spec = top_k(reader.delta(step, name), k=k, exact=exact, seed=seed)
            low = (spec.u * spec.s) @ spec.v.T
            norm = float(spec.s.norm())
            scale = spec.fro / norm if rescale and norm > 0 else 1.0
            yield name, w0 + scale * low


def write_rank_k(run, step: int, k: int, out: Path, rescale: bool = True, selection: str = "blocks",
                 exact: bool = False, seed: int = 0, dtype: torch.dtype | None = None) -> Path:
    """Write the rank-k model of checkpoint `step` as a Hugging Face folder (streamed, one tensor at a time)."""
    from rlcast.io.checkpoints import RunReader
    from rlcast.io.writer import write_model

    run.checkpoint(step)  # RlcastError naming the step if absent
    how = {"method": "rank-k", "step": step, "k": k, "rescale": rescale, "selection": selection, "exact": exact,
           "seed": seed, "run": str(run.root or run.base)}
    tensors = rank_k_tensors(RunReader(run), step, k, rescale=rescale, selection=selection, exact=exact, seed=seed)
    return write_model(run.base, out, tensors, dtype=dtype, metadata={"rlcast": how})


def checkpoint_folder(run, step: int, workdir: Path) -> Path:
    """A loadable HF folder for checkpoint `step`: the checkpoint itself when it is one, else a merged copy."""
    from rlcast.io.checkpoints import RunReader
    from rlcast.evaluation.evaluate import TOKENIZER_FILES
    from rlcast.io.writer import write_model

    ckpt = run.checkpoint(step)
    if ckpt.kind == "full" and (ckpt.path / "config.json").exists() and any(
            (ckpt.path / f).exists() for f in TOKENIZER_FILES):
        return ckpt.path
    reader = RunReader(run)
    out = Path(workdir) / f"checkpoint-{step}"
    return write_model(run.base, out, ((n, reader.weight(step, n)) for n in reader.names()),
                       metadata={"rlcast": {"method": "merged", "step": step}})


# --- evaluation and recovery ---

@dataclass
class Score:
    label: str                 # "base", "full" or "rank-k"
    k: int | None
    accuracy: float
    ci_low: float
    ci_high: float
    per_prompt: list[float]    # fraction of fully correct samples per prompt, in prompt order


def score(path: Path, task, label: str, k: int | None, n_prompts: int, seed: int, progress: bool) -> Score:
    """Evaluate one model folder and keep the per-prompt results (for paired intervals)."""
    from rlcast.evaluation.evaluate import evaluate

    result = evaluate(path, task, n_prompts=n_prompts, seed=seed, progress=progress)
    per_prompt: dict[int, list[float]] = {}
    for row in result.details:
        per_prompt.setdefault(row["index"], []).append(float(row["reward"] >= 1.0))
    return Score(label, k, result.accuracy, result.ci_low, result.ci_high,
                 [sum(v) / len(v) for _, v in sorted(per_prompt.items())])


@dataclass
class Recovery:
    k: int
    recovery: float            # acc_k / acc_full
    recovery_ci: tuple[float, float]
    gain_recovery: float       # (acc_k - acc_base) / (acc_full - acc_base)
    gain_recovery_ci: tuple[float, float]


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), torch.nan)


def recovery(base: Score, full: Score, rank: Score, seed: int = 0, resamples: int = RESAMPLES) -> Recovery:
    """Both recovery figures with 95 % percentile intervals from a paired bootstrap over prompts.

    Resamples where a denominator is 0 are dropped from that interval (nan when all are).
    """
    x = torch.tensor([base.per_prompt, full.per_prompt, rank.per_prompt], dtype=torch.float64)
    idx = torch.randint(x.shape[1], (resamples, x.shape[1]), generator=torch.Generator().manual_seed(seed))
    acc = x[:, idx].mean(-1)  # (3, resamples)
    point = x.mean(-1)

    def interval(values: torch.Tensor) -> tuple[float, float]:
        values = values[torch.isfinite(values)]
        if len(values) == 0:
            return math.nan, math.nan
        return float(values.quantile(0.025)), float(values.quantile(0.975))

    ratio = lambda a: _ratio(a[2], a[1])  # noqa: E731
    gain = lambda a: _ratio(a[2] - a[0], a[1] - a[0])  # noqa: E731
    return Recovery(rank.k, float(ratio(point)), interval(ratio(acc)), float(gain(point)), interval(gain(acc)))


@dataclass
class DominanceResult:
    run: str
    step: int
    task: str
    n_prompts: int
    selection: str
    rescale: bool
    seed: int
    base: Score
    full: Score
    ranks: list[Score]
    recovery: list[Recovery] = field(default_factory=list)

    def to_json(self) -> dict:
        from rlcast.apps.dynamics import finite

        return finite(asdict(self))

    def save(self, path: Path) -> Path:
        from rlcast.io.writer import write_text_atomic

        return write_text_atomic(Path(path), json.dumps(self.to_json(), indent=2))


def run_task(run, task=None):
    """The Task to score with: the one given (spec or Task), else the run manifest's (with its task_args)."""
    from rlcast.evaluation.evaluate import Task, get_task

    if isinstance(task, Task):
        return task
    if task:
        return get_task(task)
    manifest = run.manifest or {}
    if not manifest.get("task"):
        raise RlcastError(f"{run.root or run.base}: no task in the run manifest (run.json); pass --task")
    return get_task(manifest["task"], manifest.get("task_args") or None)


def dominance(run, step: int | None = None, ranks=(1, 2, 4), task=None, n_prompts: int = 200,
              selection: str = "blocks", rescale: bool = True, exact: bool = False, seed: int = 0,
              models_dir: Path | None = None, progress: bool = True) -> DominanceResult:
    """Score base, full checkpoint and each rank-k model of `step` (default: the last) on the same prompts."""
    if not run.checkpoints:
        raise RlcastError(f"{run.root or run.base}: the run has no checkpoints")
    step = run.steps[-1] if step is None else step
    run.checkpoint(step)
    task = run_task(run, task)
    with tempfile.TemporaryDirectory(prefix="rlcast-dominance-") as tmp:
        work = Path(models_dir) if models_dir else Path(tmp)
        base = score(run.base, task, "base", None, n_prompts, seed, progress)
        full = score(checkpoint_folder(run, step, work), task, "full", None, n_prompts, seed, progress)
        scores = []
        for k in ranks:
            folder = write_rank_k(run, step, k, work / f"rank{k}-step{step}", rescale=rescale, selection=selection,
                                  exact=exact, seed=seed)
            scores.append(score(folder, task, f"rank-{k}", k, n_prompts, seed, progress))
    return DominanceResult(run=str(run.root or run.base), step=step, task=task.name, n_prompts=len(base.per_prompt),
                           selection=selection, rescale=rescale, seed=seed, base=base, full=full, ranks=scores,
                           recovery=[recovery(base, full, s, seed=seed) for s in scores])


def checkpoint_accuracies(run, task, n_prompts: int = 200, seed: int = 0,
                          progress: bool = True) -> dict[int, float]:
    """{0: base accuracy, step: accuracy, ...} of every checkpoint of `run` on `task` (same prompts for all)."""
    with tempfile.TemporaryDirectory(prefix="rlcast-acc-") as tmp:
        acc = {0: score(run.base, task, "base", None, n_prompts, seed, progress).accuracy}
        for step in run.steps:
            folder = checkpoint_folder(run, step, Path(tmp))
            acc[step] = score(folder, task, "full", None, n_prompts, seed, progress).accuracy
            if folder.parent == Path(tmp):  # a merged copy: only one on disk at a time
                shutil.rmtree(folder)
    return acc

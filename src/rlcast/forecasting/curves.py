"""The learning curves of a run that the forecasters fit: held-out accuracy, training reward, rank-1 weight paths.

Built from the curve object every log reader returns (`Curve.from_log(rlcast.io.logs.read_log(path))`: run folders,
TRL folders, verl console logs, TensorBoard, CSV exports): this layer never opens a log itself. `read_curve(run)` is
the same for a loaded run (`rlcast.io.checkpoints.Run`: run.json's accuracies and the trainer_state.json reward log)
and, with `weights=True`, adds the rank-1 coefficient a(t) = s1 u1 of every 2-D block tensor at the checkpoints
(`rlcast.core.trajectory`, spectra cached under RUN/.rlcast-cache).
Everything is on the run's own step axis (optimizer steps); `Curve.generation_axis()` puts a run that reuses every
generation batch for several optimizer steps (TRL's num_iterations) on the generation-batch axis.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from rlcast.core.trajectory import Trajectory, build_trajectory
from rlcast.errors import RlcastError
from rlcast.extrapolation.alpharl import rank1_path
from rlcast.io.checkpoints import Run
from rlcast.io.logs import LogCurve
from rlcast.io.logs.runfolder import from_manifest
from rlcast.io.manifest import Manifest
from rlcast.io.reader import RunReader


@dataclass(frozen=True)
class Curve:
    """One run's curves up to its last checkpoint (or a cutoff: `window`). Step 0 is the base when it was scored.

    `sd` is each accuracy's own noise (standard deviation of one evaluation; nan when unknown). `weights` maps each
    2-D block tensor to its sign-aligned rank-1 coefficients a(t) at `weight_steps` (None when not read).
    """

    run: str
    steps: np.ndarray                 # checkpoint steps with a held-out accuracy (int)
    accuracy: np.ndarray
    sd: np.ndarray
    reward_steps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    reward: np.ndarray = field(default_factory=lambda: np.zeros(0))
    task: str | None = None
    planned: int | None = None        # the run's planned last step (run.json config `steps`)
    eval_prompts: int | None = None   # prompts per held-out evaluation (for the noise of a future checkpoint)
    mu: int = 1                       # optimizer steps per generation batch (TRL num_iterations)
    batches: dict = field(default_factory=dict)  # {step: generation batches} when run.json records them
    weight_steps: tuple = ()
    weights: dict | None = None

    @classmethod
    def from_log(cls, log: LogCurve) -> "Curve":
        """The curve of a log as `rlcast.io.logs.read_log` reads it (any format), named by its source."""
        return cls(log.source, log.steps, log.accuracy, log.sd, log.reward_steps, log.reward, log.task, log.planned,
                   log.eval_size, log.mu, dict(log.batches))

    @property
    def last(self) -> int:
        return int(self.steps[-1])

    def window(self, until: int) -> "Curve":
        """The curves cut to the steps <= until: nothing after the cutoff survives."""
        keep, rkeep = self.steps <= until, self.reward_steps <= until
        wkeep = [i for i, s in enumerate(self.weight_steps) if s <= until]
        return dataclasses.replace(
            self, steps=self.steps[keep], accuracy=self.accuracy[keep], sd=self.sd[keep],
            reward_steps=self.reward_steps[rkeep], reward=self.reward[rkeep],
            batches={s: b for s, b in self.batches.items() if s <= until},
            weight_steps=tuple(self.weight_steps[i] for i in wkeep),
            weights=None if self.weights is None else {n: a[wkeep] for n, a in self.weights.items()})

    def noise(self, accuracy: np.ndarray) -> np.ndarray:
        """Standard deviation of a future checkpoint's score around the trend at `accuracy`: one held-out
        evaluation's binomial noise (0 when the prompt count is unknown), or the run's own `swing` where that is
        larger (an unstable run's checkpoints scatter more than their evaluation does)."""
        binomial, swing = self.evaluation_noise(accuracy), self.swing()
        return np.maximum(binomial, swing) if np.isfinite(swing) else binomial

    def evaluation_noise(self, accuracy: np.ndarray) -> np.ndarray:
        """Standard deviation of one held-out evaluation scoring `accuracy` (0 when the prompt count is unknown)."""
        n = self.eval_prompts or self._prompts_from_ci()
        p = np.clip(np.asarray(accuracy, dtype=float), 0.0, 1.0)
        return np.sqrt(p * (1 - p) / n) if n else np.zeros_like(p)

    def swing(self) -> float:
        """How far the scores after the base scatter from checkpoint to checkpoint beyond their trend: the standard
        deviation of their successive differences (mean removed) / sqrt 2; nan with fewer than 4 such scores. Under
        evaluation noise alone it is at most that noise (less when checkpoints share prompts)."""
        diffs = np.diff(self.accuracy[self.steps > 0])
        return float(np.std(diffs - diffs.mean()) / np.sqrt(2)) if len(diffs) >= 3 else float("nan")

    def _prompts_from_ci(self) -> float | None:
        ok = np.isfinite(self.sd) & (self.sd > 0)
        if not ok.any():
            return None
        p = self.accuracy[ok]
        return float(np.median(p * (1 - p) / self.sd[ok] ** 2))

    def generation_axis(self) -> "Curve":
        """The same curves with steps counted in generation batches: run.json's `generation_batches` where recorded,
        else step // mu."""
        if self.mu == 1 and not self.batches:
            return self
        to = lambda s: int(self.batches.get(int(s), int(s) // self.mu))  # noqa: E731
        return dataclasses.replace(
            self, steps=np.array([to(s) for s in self.steps]), reward_steps=self.reward_steps / self.mu,
            planned=None if self.planned is None else self.planned // self.mu, mu=1, batches={},
            weight_steps=tuple(to(s) for s in self.weight_steps))


def read_curve(run: Run, weights: bool = False, progress: bool = False) -> Curve:
    """The curves of `run` as its run folder's reader gives them (`io.logs.runfolder`: run.json's held-out
    accuracies, the reward log of the newest checkpoint's trainer_state.json); with `weights`, also the rank-1 paths
    of the checkpoints that have an accuracy (reads every checkpoint once)."""
    folders = [c.path for c in reversed(run.checkpoints)] + ([run.root] if run.root else [])
    log = from_manifest(run.manifest or Manifest(), str(run.root or run.base), folders)
    curve = Curve.from_log(log)
    return with_weights(curve, run, progress) if weights else curve


def with_weights(curve: Curve, run: Run, progress: bool = False, trajectory: Trajectory | None = None) -> Curve:
    """`curve` with the rank-1 coefficients a(t) = s1 u1 of every changed 2-D block tensor at the checkpoints (steps
    > 0) that have an accuracy: from `trajectory` (any rank, e.g. the report's) or from the cached rank-1 spectra."""
    wanted = [s for s in run.steps if s in set(curve.steps.tolist()) and s > 0]
    if not wanted:
        return curve
    if trajectory is None:
        window = Run(run.base, [run.checkpoint(s) for s in wanted], run.root, run.manifest)
        names = RunReader(window).selected("blocks", two_d=True)
        if not names:
            raise RlcastError(f"{curve.run}: no 2-D block tensors changed: nothing for the weight-based forecaster")
        trajectory = build_trajectory(window, rank=1, names=names, progress=progress)
    else:
        mask = torch.tensor([s in wanted for s in trajectory.steps])
        trajectory = Trajectory([s for s in trajectory.steps if s in wanted],
                                {n: m.select(mask) for n, m in trajectory.modules.items()}, {})
    paths = {n: rank1_path(m)[0].float().numpy() for n, m in trajectory.modules.items() if m.u is not None}
    return dataclasses.replace(curve, weight_steps=tuple(trajectory.steps), weights=paths)


def checked(curve: Curve, min_checkpoints: int = 3) -> Curve:
    """`curve` itself, or a one-line error naming the run: too few checkpoints with accuracies, or a constant curve."""
    n = int((curve.steps > 0).sum())
    if n < min_checkpoints:
        where = f" up to step {curve.last}" if len(curve.steps) else ""
        raise RlcastError(f"{curve.run}: {n} checkpoint(s) with a held-out accuracy{where}; forecasting needs at "
                          f"least {min_checkpoints} (run.json `accuracy` entries: `rlcast eval {curve.run}` scores "
                          f"every checkpoint and records them)")
    if np.ptp(curve.accuracy) < 1e-9:
        raise RlcastError(f"{curve.run}: the held-out accuracy is constant ({curve.accuracy[0]:.3f}) up to step "
                          f"{curve.last}: no curve to fit")
    return curve


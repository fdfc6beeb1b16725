"""Forecast the weights of a later RL step from the checkpoints of an early window, behind one interface.

Every method is a scikit-learn-like object: hyper-parameters in `__init__`, `fit(run)` on a run already windowed to
the cutoff (`run.window(cutoff)`), then `predict(step)` streams `(base name, predicted float32 weight)` for every base
tensor in base order, one tensor at a time, so `rlcast.io.writer.write_model` can consume it without ever holding a model.

Notation (METHODS.md): W0 base, W_t weights after step t, dW_t = W_t - W0, t the last window step, T the target step.

    weight-linear  W0 + (T/t) dW_t                                    (ExPO / RL-Extra)
    alpharl        W0 + a* v1^T, a* from PLS(a(t) -> accuracy) inverted at a target accuracy   (AlphaRL)
    alpharl-step   W0 + a(T) v1^T, a(t) = s1 u1 extrapolated linearly in the step
    relex          W0 + sum_i c_i(T) p_i, temporal PCA of the stacked deltas, coefficients linear in the step (RELEX)
    next           W_t + c * s* u* v*^T, an MLP predicting the next rank-1 update from the global and local ones (NExt)

Tensors outside the method's module selection, or that no checkpoint changes, are returned at the anchor (the base,
or the last window checkpoint for anchor="last" and for `next`).
"""

from __future__ import annotations

import inspect
import math
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
from rich.progress import track
from torch import nn

from rlcast.io.checkpoints import LowRankDelta, Run, RunReader, select_names
from rlcast.errors import RlcastError

SELECTIONS = ("blocks", "all-2d", "all")


def line_fit(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares line y ~ a + b x along the first axis of y (x: (T,), y: (T, ...)); returns (a, b)."""
    x = x.double()
    y = y.double()
    xc = x - x.mean()
    shape = (-1,) + (1,) * (y.dim() - 1)
    b = (xc.view(shape) * (y - y.mean(0))).sum(0) / xc.pow(2).sum()
    a = y.mean(0) - b * x.mean()
    return a, b


def dense(delta) -> torch.Tensor:
    """A delta as a dense float32 tensor (one tensor: LoRA factors are multiplied out only for writing)."""
    return delta.dense() if isinstance(delta, LowRankDelta) else delta


def difference(later, earlier):
    """later - earlier for two deltas of one tensor; LoRA factors stay factors (stacked, rank r1 + r2)."""
    if isinstance(later, LowRankDelta) and isinstance(earlier, LowRankDelta):
        return LowRankDelta(B=torch.cat([later.scale * later.B, -earlier.scale * earlier.B], dim=1),
                            A=torch.cat([later.A, earlier.A], dim=0), scale=1.0)
    return dense(later) - dense(earlier)


class Extrapolator:
    """Base class: window checks, module selection and the streaming loop. Subclasses implement `_fit`/`_tensor`.

    After `fit`: `run_`, `reader_`, `last_` (last window step) and `targets_` (names the method predicts).
    """

    name = ""
    min_checkpoints = 2
    anchor = "base"

    def __init__(self, selection: str = "all", progress: bool = False):
        if selection not in SELECTIONS:
            raise RlcastError(f"unknown module selection {selection!r}: choose from {', '.join(SELECTIONS)}")
        self.selection = selection
        self.progress = progress

    def fit(self, run: Run) -> "Extrapolator":
        """Fit on every checkpoint of `run` (already windowed to the cutoff)."""
        n = len(run.checkpoints)
        if n < self.min_checkpoints:
            until = f"up to step {run.steps[-1]}" if n else "(empty)"
            raise RlcastError(f"{self.name}: needs at least {self.min_checkpoints} checkpoints, the window {until} "
                              f"has {n}")
        self.run_ = run
        self.reader_ = RunReader(run)
        self.last_ = run.steps[-1]
        names = self.reader_.names()
        self.shapes_ = {k: tuple(self.reader_.shape(k)) for k in names}
        selected = set(select_names(names, self.shapes_, self.selection))
        changed = set(self.reader_.changed_names())
        self.targets_ = [k for k in names if k in selected and k in changed]
        self._fit()
        return self

    def predict(self, step: int) -> Iterator[tuple[str, torch.Tensor]]:
        """Stream (name, predicted float32 weight at `step`) for every base tensor, in base order."""
        if not hasattr(self, "run_"):
            raise RlcastError(f"{self.name}: call fit(run) before predict(step)")
        if step < self.last_:
            raise RlcastError(f"{self.name}: target step {step} is before the cutoff step {self.last_}")
        self._prepare(step)
        return self._stream(step)

    def _stream(self, step: int) -> Iterator[tuple[str, torch.Tensor]]:
        targets = set(self.targets_)
        for name in self.reader_.names():
            if name in targets:
                yield name, self._tensor(name, step)
            else:
                yield name, self._anchor(name)

    def summary(self) -> dict:
        """What the fit chose (for reports): module selection, number of predicted tensors, anchor, window."""
        return {"selection": self.selection, "tensors": len(self.targets_), "anchor": self.anchor,
                "window": list(self.run_.steps)}

    def _anchor(self, name: str) -> torch.Tensor:
        return self.reader_.base(name) if self.anchor == "base" else self.reader_.weight(self.last_, name)

    def _fit(self) -> None:
        """Method-specific fitting on self.run_ (override)."""

    def _prepare(self, step: int) -> None:
        """Work needed once per target step before streaming (override when needed)."""

    def _tensor(self, name: str, step: int) -> torch.Tensor:
        raise NotImplementedError


class WeightLinear(Extrapolator):
    """ExPO / RL-Extra: W0 + (T/t) (W_t - W0). Touches the selected tensors (default all); anchored at the base.

    Uses only the last window checkpoint; exact when every delta grows linearly in the step from the base.
    """

    name = "weight-linear"
    min_checkpoints = 1

    def _tensor(self, name: str, step: int) -> torch.Tensor:
        return self.reader_.base(name) + (step / self.last_) * dense(self.reader_.delta(self.last_, name))


class AlphaRLStep(Extrapolator):
    """AlphaRL's rank-1 trajectory, extrapolated in the step: W0 + a(T) v1^T with a(t) = s1(t) u1(t).

    Per selected 2-D tensor (default "blocks": attention and MLP projections inside transformer blocks, as the
    released AlphaRL code), a(t) is sign-aligned over the window, fitted by a least-squares line in the step and read
    at the target; v1 comes from the last window checkpoint. 1-D tensors (selection "all") use their whole delta as
    a(t). Anchored at the base (anchor="last" adds the predicted update onto the last window checkpoint instead, as
    the released code does).
    """

    name = "alpharl-step"
    min_checkpoints = 2

    def __init__(self, selection: str = "blocks", anchor: str = "base", progress: bool = False):
        super().__init__(selection, progress)
        if anchor not in ("base", "last"):
            raise RlcastError(f"{self.name}: anchor must be 'base' or 'last', got {anchor!r}")
        self.anchor = anchor

    def _fit(self) -> None:
        from rlcast.core.trajectory import build_trajectory

        traj = build_trajectory(self.run_, rank=1, progress=self.progress, names=self.targets_)
        self.steps_ = traj.steps
        self.a_, self.v_ = {}, {}
        for name in self.targets_:
            self.a_[name], self.v_[name] = self._rank1_path(traj.modules[name])

    @staticmethod
    def _rank1_path(mod) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(a(t) sign-aligned (T, m), v1 of the last checkpoint with the matching sign); 1-D: (deltas, None)."""
        from rlcast.core.spectra import align_signs

        if mod.vector is not None:
            return mod.vector.float(), None
        a = mod.sigma[:, :1].float() * mod.u[:, :, 0].float()
        aligned = align_signs(a)
        flip = 1.0 if float((aligned[-1] * a[-1]).sum()) >= 0 else -1.0
        return aligned, flip * mod.v[-1, :, 0].float()

    def _a_star(self, name: str, step: int) -> torch.Tensor:
        a, b = line_fit(torch.tensor(self.steps_, dtype=torch.float64), self.a_[name])
        return (a + b * step).float()

    def _tensor(self, name: str, step: int) -> torch.Tensor:
        a_star, v = self._a_star(name, step), self.v_[name]
        update = a_star if v is None else torch.outer(a_star, v)
        return self._anchor(name) + update


class AlphaRL(AlphaRLStep):
    """AlphaRL: per module, one-component PLS of accuracy on a(t) = s1 u1, inverted at a target accuracy.

    Touches the selected tensors (default "blocks", as the released code); prediction W0 + a* v1^T, v1 from the last
    window checkpoint; anchored at the base (anchor="last": the released code's choice, onto the last checkpoint).
    The accuracies come from the run manifest (every window checkpoint needs one). `target_accuracy=None` forecasts
    the accuracy at the target step from a least-squares line of accuracy against the step, clipped to [0, 1].
    PLS is linear in its score, so the target must lie in the PLS range: the window's observed accuracy range
    widened by `max_extrapolation` times its width on each side, within [0, 1]; outside it the inversion is an error.
    PLS here is unscaled (no per-coordinate standardisation: it would amplify the noise of tiny coordinates).
    """

    name = "alpharl"
    min_checkpoints = 3

    def __init__(self, target_accuracy: float | None = None, selection: str = "blocks", anchor: str = "base",
                 max_extrapolation: float = 3.0, progress: bool = False):
        super().__init__(selection, anchor, progress)
        self.target_accuracy = target_accuracy
        self.max_extrapolation = max_extrapolation

    def _fit(self) -> None:
        missing = [s for s in self.run_.steps if s not in self.run_.accuracy]
        if missing:
            raise RlcastError(f"alpharl: no accuracy for step {missing[0]} in the run manifest "
                              f"(alpharl needs an evaluated accuracy for every window checkpoint)")
        super()._fit()
        self.y_ = torch.tensor([self.run_.accuracy[s] for s in self.steps_], dtype=torch.float64)
        low, high = float(self.y_.min()), float(self.y_.max())
        if high - low < 1e-9:
            raise RlcastError(f"alpharl: accuracy is constant ({low:.3f}) over the window up to step {self.last_}, "
                              f"PLS cannot be fitted")
        width = high - low
        self.range_ = (max(0.0, low - self.max_extrapolation * width), min(1.0, high + self.max_extrapolation * width))
        self.pls_ = {name: self._pls(self.a_[name]) for name in self.targets_}

    def _pls(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """One-component PLS + OLS on the score: returns (x_mean, loading p, y_mean, slope b) with y ~ y_mean + b z."""
        x = x.double()
        x_mean, y_mean = x.mean(0), self.y_.mean()
        xc, yc = x - x_mean, self.y_ - y_mean
        w = xc.T @ yc
        w = w / w.norm().clamp_min(1e-30)
        z = xc @ w
        zz = float(z @ z)
        if zz <= 0:
            return x_mean, torch.zeros_like(x_mean), float(y_mean), 0.0
        p = xc.T @ z / zz
        b = float(z @ yc) / zz
        return x_mean, p, float(y_mean), b

    def target(self, step: int) -> float:
        """The accuracy the prediction is inverted at: `target_accuracy`, else the step forecast (clipped)."""
        if self.target_accuracy is not None:
            return float(self.target_accuracy)
        a, b = line_fit(torch.tensor(self.steps_, dtype=torch.float64), self.y_)
        return min(1.0, max(0.0, float(a + b * step)))

    def _prepare(self, step: int) -> None:
        y_star = self.target(step)
        low, high = self.range_
        if not low <= y_star <= high:
            raise RlcastError(f"alpharl: target accuracy {y_star:.3f} is outside the PLS range [{low:.3f}, {high:.3f}]"
                              f" of the window up to step {self.last_} (max_extrapolation={self.max_extrapolation})")
        self.y_star_ = y_star

    def summary(self) -> dict:
        out = {**super().summary(), "pls_range": list(self.range_)}
        if hasattr(self, "y_star_"):
            out["target_accuracy"] = self.y_star_
        return out

    def _a_star(self, name: str, step: int) -> torch.Tensor:
        x_mean, p, y_mean, b = self.pls_[name]
        if b == 0.0:  # accuracy does not vary along this module's score: keep its last position
            return self.a_[name][-1].float()
        z_star = (self.y_star_ - y_mean) / b
        return (x_mean + z_star * p).float()


class Relex(Extrapolator):
    """RELEX: per tensor, temporal PCA of the stacked window deltas M (T x d), coefficients extrapolated linearly.

    The Gram matrix G = M M^T (T x T) is accumulated over row chunks of at most `chunk_mb` MB of M (each chunk reads
    one checkpoint's delta at a time; LoRA deltas give their rows straight from the factors). With G = E L E^T, the
    coefficients c_i(t) = sqrt(l_i) E[t, i] of the top `rank` directions are fitted by a line in the step and read at
    the target, so delta* = sum_i c_i(T) p_i = M^T w with w = sum_i c_i(T) E[:, i] / sqrt(l_i): a second streamed pass.
    Touches the selected tensors (default all); anchored at the base.
    """

    name = "relex"
    min_checkpoints = 2

    def __init__(self, rank: int = 1, selection: str = "all", chunk_mb: int = 256, progress: bool = False):
        super().__init__(selection, progress)
        if rank < 1:
            raise RlcastError(f"relex: rank must be >= 1, got {rank}")
        self.rank = rank
        self.chunk_mb = chunk_mb

    def _rows(self, name: str) -> list[tuple[int, int]]:
        """Row ranges of the tensor such that T checkpoints x rows fit in chunk_mb (1-D tensors: one range)."""
        shape = self.shapes_[name]
        rows = shape[0]
        row_bytes = 4 * len(self.run_.steps) * max(1, math.prod(shape[1:]))
        per = max(1, (self.chunk_mb * 2**20) // row_bytes)
        return [(r, min(rows, r + per)) for r in range(0, rows, per)]

    def _chunk(self, r0: int, r1: int, name: str) -> torch.Tensor:
        """M restricted to rows r0:r1 of the tensor, flattened: (T, rows * cols), read one checkpoint at a time."""
        out = []
        for s in self.run_.steps:
            delta = self.reader_.delta(s, name)
            piece = delta.scale * delta.B[r0:r1] @ delta.A if isinstance(delta, LowRankDelta) else delta[r0:r1]
            out.append(piece.reshape(-1).float().clone())
            del delta
        return torch.stack(out)

    def weights(self, name: str, step: int) -> torch.Tensor:
        """w (T,) with delta*(step) = M^T w, from the Gram matrix of the tensor's stacked deltas."""
        steps = self.run_.steps
        gram = torch.zeros(len(steps), len(steps), dtype=torch.float64)
        for r0, r1 in self._rows(name):
            m = self._chunk(r0, r1, name)
            gram += (m @ m.T).double()
            del m
        lam, vecs = torch.linalg.eigh(gram)
        lam, vecs = lam.flip(0), vecs.flip(1)
        w = torch.zeros(len(steps), dtype=torch.float64)
        x = torch.tensor(steps, dtype=torch.float64)
        for i in range(min(self.rank, len(steps))):
            if lam[i] <= 1e-12 * max(float(lam[0]), 1e-300):
                break
            coef = lam[i].sqrt() * vecs[:, i]
            a, b = line_fit(x, coef)
            w += (a + b * step) * vecs[:, i] / lam[i].sqrt()
        return w

    def _tensor(self, name: str, step: int) -> torch.Tensor:
        w = self.weights(name, step)
        base = self.reader_.base(name)
        flat = base.reshape(-1).clone()
        cols = max(1, math.prod(base.shape[1:]))
        for r0, r1 in self._rows(name):
            flat[r0 * cols:r1 * cols] += w.float() @ self._chunk(r0, r1, name)
        return flat.view(base.shape)


# --- NExt ---

class Branch(nn.Module):
    """One NExt branch: d -> 256 -> d -> ReLU -> 256 -> d."""

    def __init__(self, d: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.Linear(hidden, d), nn.ReLU(),
                                 nn.Linear(d, hidden), nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class NExtNet(nn.Module):
    """NExt predictor for vectors of size d: global and local branches, concatenated and mapped back to d."""

    def __init__(self, d: int, hidden: int = 256):
        super().__init__()
        self.global_branch, self.local_branch = Branch(d, hidden), Branch(d, hidden)
        self.head = nn.Sequential(nn.Linear(2 * d, hidden), nn.ReLU(), nn.Linear(hidden, d))

    def forward(self, g: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.global_branch(g), self.local_branch(l)], dim=-1))


def train_net(g: torch.Tensor, l: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int) -> tuple:
    """Full-batch L1 training of one NExtNet, AdamW with cosine decay to 0.1 lr; inputs scaled by one scalar.

    Returns (net, scale): predictions are net(g / scale, l / scale) * scale.
    """
    scale = float(y.abs().mean().clamp_min(1e-12))
    torch.manual_seed(seed)
    net = NExtNet(g.shape[1])
    opt = torch.optim.AdamW(net.parameters(), lr=lr, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=0.1 * lr)
    loss_fn = nn.L1Loss()
    g, l, y = g / scale, l / scale, y / scale
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these nets are tiny: thread hand-offs cost more than the maths (10x on 2 cores)
    try:
        for _ in range(epochs):
            opt.zero_grad()
            loss = loss_fn(net(g, l), y)
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    return net, scale


class NExt(Extrapolator):
    """NExt: predict the next rank-1 update of every tensor from its global and local rank-1 updates with MLPs.

    For window checkpoint i (W_0 = base): global W_i - W_0, local W_i - W_{i-1}, target W_{i+k} - W_i, k = `horizon`
    checkpoints (default: half the window). For 2-D tensors, each delta gives its rank-1 triplet (u, s, v) (LoRA
    deltas by QR of the factors, never densified); the vectors sqrt(s) u and sqrt(s) v are the features, so one MLP
    per tensor shape for the u side and one for the v side predict sqrt(s*) u* and sqrt(s*) v*; their outer product is
    s* u* v*^T. 1-D tensors are used whole (one MLP per length). Training pairs: every i with i + k in the window.
    Predict-extend from the last window checkpoint (anchor: last): W = W_t + c * ((T - t) / (k steps)) * s* u* v*^T.
    c: given, else chosen on a validation split (the task's train split, `n_val` prompts) over `c_grid` when `task`
    is given, else 1.5 (the paper's default). Touches the selected tensors (default all). Deviations from the paper:
    features are scaled by one scalar per MLP, and the default lr is 1e-3 (2e-5 barely moves in a few hundred epochs).
    """

    name = "next"
    min_checkpoints = 3
    anchor = "last"

    def __init__(self, horizon: int | None = None, epochs: int = 300, lr: float = 1e-3, c: float | None = None,
                 task: str | None = None, c_grid: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0, 2.5), n_val: int = 64,
                 selection: str = "all", seed: int = 0, progress: bool = False):
        super().__init__(selection, progress)
        self.horizon, self.epochs, self.lr, self.c = horizon, epochs, lr, c
        self.task, self.c_grid, self.n_val, self.seed = task, tuple(c_grid), n_val, seed

    def _triplet(self, delta) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(s) u, sqrt(s) v) of a 2-D delta's top singular triplet."""
        from rlcast.core.spectra import top_k

        spec = top_k(delta, k=1, seed=self.seed)
        root = float(spec.s[0]).__abs__() ** 0.5
        return root * spec.u[:, 0].float(), root * spec.v[:, 0].float()

    def _fit(self) -> None:
        steps = self.run_.steps
        n = len(steps)
        k = self.horizon if self.horizon is not None else max(1, n // 2)
        if not 1 <= k < n:
            raise RlcastError(f"next: horizon {k} checkpoints needs a window of more than {k} checkpoints, "
                              f"the window up to step {self.last_} has {n}")
        self.k_ = k
        gaps = [b - a for a, b in zip([0] + steps[:-1], steps)]
        self.k_steps_ = k * sorted(gaps)[len(gaps) // 2]
        features: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        self.inputs_ = {}
        for name in track(self.targets_, description="next: rank-1 triplets", disable=not self.progress):
            self._features(name, features)
        self.nets_ = {}
        for j, (key, f) in enumerate(sorted(features.items(), key=lambda kv: str(kv[0]))):
            if f["g"]:
                self.nets_[key] = train_net(torch.stack(f["g"]), torch.stack(f["l"]), torch.stack(f["y"]),
                                            self.epochs, self.lr, self.seed + j)
        self.update_ = {}
        with torch.no_grad():
            for name, parts in self.inputs_.items():
                self.update_[name] = [self._apply(key, g, l) for key, g, l in parts]
        del self.inputs_

    def _features(self, name: str, features) -> None:
        """Collect (global, local, target) features of one tensor: training pairs and the last checkpoint's input.

        Holds at most three deltas of this one tensor at a time (W_i, W_{i-1}, W_{i+k}); LoRA deltas stay factors.
        """
        steps, reader, shape = self.run_.steps, self.reader_, self.shapes_[name]
        two_d = len(shape) == 2
        keys = [("u", shape), ("v", shape)] if two_d else [("vec", shape)]

        def vectors(delta) -> list[torch.Tensor]:
            return list(self._triplet(delta)) if two_d else [dense(delta).float().reshape(-1)]

        def aligned(ref: list[torch.Tensor], vecs: list[torch.Tensor]) -> list[torch.Tensor]:
            if two_d and float(ref[0] @ vecs[0]) < 0:  # a rank-1 triplet has no sign: match the global one
                return [-x for x in vecs]
            return vecs

        previous = None
        for i, step in enumerate(steps):
            current = reader.delta(step, name)
            g = vectors(current)
            l = g if previous is None else aligned(g, vectors(difference(current, previous)))
            if i + self.k_ < len(steps):
                y = aligned(g, vectors(difference(reader.delta(steps[i + self.k_], name), current)))
                for key, gi, li, yi in zip(keys, g, l, y):
                    features[key]["g"].append(gi)
                    features[key]["l"].append(li)
                    features[key]["y"].append(yi)
            previous = current
        self.inputs_[name] = list(zip(keys, g, l))

    def _apply(self, key, g: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
        net, scale = self.nets_[key]
        return net(g[None] / scale, l[None] / scale)[0] * scale

    def _delta(self, name: str) -> torch.Tensor:
        parts = self.update_[name]
        return torch.outer(parts[0], parts[1]) if len(parts) == 2 else parts[0].view(self.reader_.base(name).shape)

    def _prepare(self, step: int) -> None:
        if self.c is not None:
            self.c_ = float(self.c)
        elif self.task is None:
            self.c_ = 1.5
        else:
            self.c_ = self._choose_c(step)

    def _choose_c(self, step: int) -> float:
        """Pick c on the validation split: write the model for each c in c_grid, evaluate, keep the best."""
        from rlcast.evaluation.generation import evaluate
        from rlcast.evaluation.tasks import get_task
        from rlcast.io.writer import write_model

        task = get_task(self.task)
        self.c_scores_ = {}
        tmp = Path(tempfile.mkdtemp(prefix="rlcast-next-"))
        try:
            for c in self.c_grid:
                self.c_ = c
                folder = write_model(self.run_.base, tmp / f"c{c}", self._stream(step))
                self.c_scores_[c] = evaluate(folder, task, n_prompts=self.n_val, split="train", seed=self.seed,
                                             progress=False).accuracy
                shutil.rmtree(folder, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return max(self.c_grid, key=lambda c: (self.c_scores_[c], -abs(c - 1.5)))

    def summary(self) -> dict:
        out = {**super().summary(), "horizon_steps": self.k_steps_}
        if hasattr(self, "c_"):
            out["c"] = self.c_
        if hasattr(self, "c_scores_"):
            out["c_scores"] = {str(c): a for c, a in self.c_scores_.items()}
        return out

    def _tensor(self, name: str, step: int) -> torch.Tensor:
        mult = self.c_ * (step - self.last_) / self.k_steps_
        return self.reader_.weight(self.last_, name) + mult * self._delta(name)


METHODS: dict[str, type[Extrapolator]] = {
    "weight-linear": WeightLinear,
    "alpharl": AlphaRL,
    "alpharl-step": AlphaRLStep,
    "relex": Relex,
    "next": NExt,
}


def make_extrapolator(name: str, **params) -> Extrapolator:
    """Build METHODS[name](**params); unknown methods or parameters are one-line errors."""
    if name not in METHODS:
        raise RlcastError(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
    cls = METHODS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for key in params:
        if key not in accepted:
            raise RlcastError(f"method {name} has no parameter {key!r} (it takes {', '.join(sorted(accepted))})")
    return cls(**params)

"""NExt (arXiv 2604.11446): MLPs predict the next rank-1 update of every tensor from its global and local ones.

For window checkpoint i (W_0 = base): global W_i - W_0, local W_i - W_{i-1}, target W_{i+k} - W_i, k = `horizon`
checkpoints. Each 2-D delta gives its rank-1 triplet (u, s, v) (LoRA deltas by QR of the factors, never densified);
the vectors sqrt(s) u and sqrt(s) v are the features, so one MLP per tensor shape for the u side and one for the v
side predict sqrt(s*) u* and sqrt(s*) v*, whose outer product is s* u* v*^T. 1-D tensors are used whole (one MLP per
length). Predict-extend from the last window checkpoint t:

    W(T) = W_t + c * ((T - t) / k_steps) * s* u* v*^T        (k_steps: the horizon in steps)

c scales the jump: given, else chosen on the task's TRAIN split by `select_c` during `fit`, else 1.5 (the paper's).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from rich.progress import track
from torch import nn

from rlcast.core.backend import map_tensors
from rlcast.core.numerics import dense, difference
from rlcast.core.spectra import top_k
from rlcast.errors import RlcastError, check_int, check_number
from rlcast.evaluation.generation import evaluate, load_model
from rlcast.evaluation.tasks import get_task
from rlcast.extrapolation.base import Extrapolator, register
from rlcast.io.writer import base_layout


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
    generator = torch.Generator().manual_seed(seed)  # not the global RNG: nets train concurrently in threads
    net = NExtNet(g.shape[1])
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Linear):  # nn.Linear's own initialisation, drawn from this net's generator
                bound = 1 / module.in_features ** 0.5
                module.weight.uniform_(-bound, bound, generator=generator)
                module.bias.uniform_(-bound, bound, generator=generator)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, fused=True)  # one kernel per step: 1.4x faster on the CPU
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=0.1 * lr)
    loss_fn = nn.L1Loss()
    g, l, y = g / scale, l / scale, y / scale
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(net(g, l), y)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    return net, scale


@register("next")
class NExt(Extrapolator):
    """NExt on the selected tensors (default all), anchored at the last window checkpoint.

    horizon: k in checkpoints (default half the window); training pairs are every i with i + k in the window.
    c: the predict-extend scale. When c is None and `task` is given, `fit` calls `select_c(target_step)` (default
    target: one horizon past the cutoff), which scores candidates of the sorted `c_grid` on `n_val` prompts of the
    task's train split and keeps the best (ties: closest to 1.5), generating at most `max_new_tokens` tokens (None:
    the task's budget; compare and `rlcast continue` pass the run's training completion length, which the policy was
    trained to answer within: on SmolLM2 the task's 256 tokens made the choice 6 x 64 long generations).
    `c_search` "local" (default) climbs the grid from the point nearest the paper's 1.5: it scores that point and its
    neighbours and moves to the best while it is strictly better, so a score that is unimodal in c gets the grid's
    choice from 3-4 candidates instead of all (each one a generation over `n_val` prompts); "grid" scores them all.
    Without a task c = 1.5. Learns `k_`, `k_steps_`, `nets_`, `update_` (the predicted s* u* v*^T factors per tensor),
    `c_` and, when chosen, `c_scores_` (the candidates scored).
    Deviations from the paper: features are scaled by one scalar per MLP, and the default lr is 1e-3 (2e-5 barely
    moves in a few hundred epochs).
    """

    reference = "NExt, arXiv 2604.11446"
    min_checkpoints = 3
    anchor = "last"

    def __init__(self, horizon: int | None = None, epochs: int = 300, lr: float = 1e-3, c: float | None = None,
                 task: str | None = None, task_args: dict | None = None, target_step: int | None = None,
                 c_grid: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0, 2.5), c_search: str = "local",
                 n_val: int = 64, max_new_tokens: int | None = None, selection: str = "all", seed: int = 0,
                 progress: bool = False):
        super().__init__(selection, progress)
        if c_search not in ("local", "grid"):
            raise RlcastError(f"next: c_search {c_search!r}: expected local or grid")
        for name, value in (("horizon", horizon), ("max_new_tokens", max_new_tokens)):
            if value is not None:
                check_int(value, f"next: {name}", 1)
        if target_step is not None:
            check_int(target_step, "next: target_step", 0)
        if c is not None:
            check_number(c, "next: c", 0, above=True)
        if not isinstance(c_grid, (list, tuple)) or not c_grid:
            raise RlcastError(f"next: c_grid must be a non-empty list of scales (got {c_grid!r})")
        for value in c_grid:
            check_number(value, "next: every c_grid value", 0, above=True)
        if task is not None:
            get_task(task, task_args)  # an unknown task or bad arguments fail here, not after the nets are trained
        self.horizon, self.c, self.target_step, self.max_new_tokens = horizon, c, target_step, max_new_tokens
        self.epochs = check_int(epochs, "next: epochs", 1)
        self.lr = check_number(lr, "next: lr", 0, above=True)
        self.n_val = check_int(n_val, "next: n_val", 1)
        self.seed = check_int(seed, "next: seed", 0)
        self.task, self.task_args = task, task_args
        self.c_grid, self.c_search = tuple(c_grid), c_search

    def _fit(self) -> None:
        steps = self.run_.steps
        n = len(steps)
        k = self.horizon if self.horizon is not None else max(1, n // 2)
        if not 1 <= k < n:
            raise RlcastError(f"next: horizon {k} checkpoints needs a window of more than {k} checkpoints, "
                              f"the window up to step {self.last_} has {n}")
        if self.target_step is not None and self.target_step < self.last_:
            raise RlcastError(f"next: target_step {self.target_step} is before the cutoff step {self.last_}")
        self.k_ = k
        gaps = [b - a for a, b in zip([0] + steps[:-1], steps)]
        self.k_steps_ = k * sorted(gaps)[len(gaps) // 2]
        features: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        inputs = {name: self._features(name, features)
                  for name in track(self.targets_, description="next: rank-1 triplets", disable=not self.progress)}
        ordered = sorted(features.items(), key=lambda kv: str(kv[0]))
        jobs = [(key, [torch.stack(f[part]) for part in ("g", "l", "y")], self.seed + j)
                for j, (key, f) in enumerate(ordered) if f["g"]]
        # one net per core at a time, one torch thread each (these nets are tiny: thread hand-offs inside one net
        # cost more than its maths); every net has its own seed, so the result does not depend on the core count
        nets = map_tensors(lambda job: train_net(*job[1], self.epochs, self.lr, job[2]), jobs)
        self.nets_ = {key: net for (key, _, _), net in zip(jobs, nets)}
        with torch.no_grad():
            self.update_ = {name: [self._apply(key, g, l) for key, g, l in parts] for name, parts in inputs.items()}
        if self.c is not None:
            self.c_ = float(self.c)
        elif self.task is None:
            self.c_ = 1.5
        else:
            self.select_c(self.target_step if self.target_step is not None else self.last_ + self.k_steps_)

    def _triplet(self, delta) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(s) u, sqrt(s) v) of a 2-D delta's top singular triplet, on the CPU (the MLPs train there)."""
        spec = top_k(delta, k=1, seed=self.seed)
        root = abs(float(spec.s[0])) ** 0.5
        return root * spec.u[:, 0].float().cpu(), root * spec.v[:, 0].float().cpu()

    def _features(self, name: str, features) -> list:
        """Add one tensor's (global, local, target) training pairs to `features`; return the last checkpoint's input.

        Holds at most three deltas of this one tensor at a time (W_i, W_{i-1}, W_{i+k}); LoRA deltas stay factors.
        """
        steps, reader, shape = self.run_.steps, self.reader_, tuple(self.reader_.shape(name))
        two_d = len(shape) == 2
        keys = [("u", shape), ("v", shape)] if two_d else [("vec", shape)]

        def vectors(delta) -> list[torch.Tensor]:
            return list(self._triplet(delta)) if two_d else [dense(delta).float().reshape(-1).cpu()]

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
        return list(zip(keys, g, l))

    def _apply(self, key, g: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
        net, scale = self.nets_[key]
        return net(g[None] / scale, l[None] / scale)[0] * scale

    def _extend(self, name: str, step: int, c: float) -> torch.Tensor:
        """W_t + c ((T - t) / k_steps) s* u* v*^T for one target tensor."""
        parts = self.update_[name]
        update = torch.outer(parts[0], parts[1]) if len(parts) == 2 else parts[0].view(self.reader_.shape(name))
        last = self.reader_.weight(self.last_, name)
        return last + c * (step - self.last_) / self.k_steps_ * update.to(last.device)

    def _tensor(self, name: str, step: int) -> torch.Tensor:
        return self._extend(name, step, self.c_)

    def select_c(self, step: int) -> float:
        """Choose c for predicting `step` on the task's train split; sets `c_scores_` and `c_` (part of fitting).

        The base model is loaded once; each candidate's predicted tensors are copied into it in place (rounded to the
        base's dtype, exactly as a written model would hold them) and it is evaluated on the same `n_val` train prompts.
        """
        task = get_task(self.task, self.task_args)
        model, tokenizer = load_model(self.run_.base)
        params, layout, targets = model.state_dict(), base_layout(self.run_.base), set(self.targets_)

        def put(name: str, tensor: torch.Tensor) -> None:
            if name not in params:
                raise RlcastError(f"next: tensor {name} of {self.run_.base} is not in the loaded model")
            params[name].copy_(tensor.to(layout[name][1]))

        def score(c: float) -> None:
            if c not in self.c_scores_:
                for name in self.targets_:
                    put(name, self._extend(name, step, c))
                self.c_scores_[c] = evaluate(model, task, tokenizer=tokenizer, n_prompts=self.n_val, split="train",
                                             seed=self.seed, max_new_tokens=self.max_new_tokens,
                                             progress=False).accuracy

        def best() -> float:
            return max(self.c_scores_, key=lambda c: (self.c_scores_[c], -abs(c - 1.5)))

        grid = sorted(self.c_grid)
        self.c_scores_ = {}
        with torch.no_grad():
            for name in self.reader_.names():
                if name not in targets:
                    put(name, self._anchor(name))
            if self.c_search == "grid":
                for c in grid:
                    score(c)
            else:  # climb from the candidate nearest 1.5 while a neighbour is strictly better
                i = min(range(len(grid)), key=lambda j: abs(grid[j] - 1.5))
                while True:
                    for c in grid[max(0, i - 1):i + 2]:
                        score(c)
                    if best() == grid[i]:
                        break
                    i = grid.index(best())
        self.c_ = best()
        return self.c_

    def summary(self) -> dict:
        out = {**super().summary(), "horizon_steps": self.k_steps_, "c": self.c_}
        if hasattr(self, "c_scores_"):
            out["c_scores"] = {str(c): a for c, a in self.c_scores_.items()}
        return out

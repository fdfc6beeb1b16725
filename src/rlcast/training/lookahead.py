"""Optimizer-side lookahead inside TRL's GRPO / RLOO trainers: SFPO, GXPO and the rank-1 boost (ours).

Each method reuses a generation batch for a few optimizer steps and, between two of them, moves the weights to a point
the ordinary steps would not reach (a *reposition*), then takes one more ordinary step from there. The rollouts are
paid for once; the repositioning costs no backward pass. Notation per generation batch: theta0 the weights that
generated it, theta_k after k optimizer steps on it, g_k the gradient of step k + 1 (at theta_k).

SFPO, Slow-Fast Policy Optimization (arXiv 2510.04072). Published recipe: K fast updates on the batch (theta0 ->
    thetaK), reposition theta~ = theta0 + alpha (thetaK - theta0), one slow update from theta~; K = 3, alpha = 0.8.
    An entropy gate switches it off for good: after every batch the mean token entropy of the last update is
    appended to a list; once it holds `gate_window` (30) values, z = (e_last - mean) / (std + 1e-9) over the last
    30 values (the newest included, population std); z >= `gate_threshold` (1.0), an upward entropy spike, turns
    SFPO into plain GRPO for the rest of the run. Checked against the released code (a patch of verl's
    ray_trainer.py and fsdp_workers.py): every update, fast or slow, takes its PPO ratio against the log-probs
    computed once at theta0 before the updates; Adam's moments and step count run on through the fast steps and are
    never rolled back; the released trainer's second variant gates on a fixed step instead of the entropy (we keep
    the z-score); "plain" after the gate is verl's ordinary update, one pass over each batch (`after_gate` 1; set it
    to the tuned plain run's reuse, so that a gated run does not drop below the best plain setting: published SFPO
    on steady seed 0 fell from 0.45 to 0.37 within 15 batches of its gate; on steady, plain GRPO with 4 steps per
    batch matched SFPO while SFPO was on, so the reposition itself bought nothing measurable there). Differences we
    keep: verl's update is a pass over the batch in `ppo_mini_batch_size` mini-batches (4 optimizer steps per pass in
    the paper's scripts) and its lr scheduler steps once per batch; here a pass is one optimizer step (TRL's
    default, `steps_per_generation == gradient_accumulation_steps`) and TRL's scheduler steps per optimizer step,
    so a warmup of W steps ends after W / (K + 1) batches while SFPO is on.
GXPO, Gradient Extrapolation-Based Policy Optimization (arXiv 2605.06755; its code is a later fork of the SFPO
    patch). Published recipe: g0 at theta0 -> step to theta1, g1 at theta1 -> step to theta2; per coordinate
    r = g1 / g0 (1 where |g0| <= 1e-8) clamped to [-2, 3], q = S_K(r) / S_2(r) with S_n = 1 + r + ... + r^(n-1)
    (1 where |S_2| <= 1e-8 or not finite) clamped to [1, K/2 + 1]: a geometric series' estimate of how much
    further K steps of the same contraction would go; theta~ = theta0 + alpha q (theta2 - theta0); one corrective
    step with the true gradient at theta~; K in {3, 5, 10}, alpha 0.5. Gate: the pre-clip norm of the corrective
    gradient, scored against the `gate_window` (30) observations before it, z >= tau (0.5) switches to
    single-pass GRPO for good (the paper's Algorithm 1; the code went through an EMA version and later defaults to
    SFPO's entropy gate). As in the code: three backward passes and three Adam steps per batch, no rollback, the
    PPO ratio against theta0. Difference we keep: r uses the gradients the optimizer steps used, after the
    Trainer's clipping (the code's latest version uses exactly these, c1 g1 / (c0 g0); earlier ones the raw g).
Rank-1 boost (ours; `Rank1Boost`). What rlcast measures (`rlcast analyze`, `dominance`): the top singular direction
    of each 2-D update since training began carries most of the RL gain and moves smoothly. Inside a batch it is a
    small part of the movement: on the steady preset at 4x its learning rate, 2 steps per batch (seed 0, 60
    batches), the run's update keeps ~0.55 of its energy in its top direction; a batch's displacement is low-rank
    too (~0.5 in its own top direction), but after the warmup that direction is only within cos 0.3-0.45 of the
    run's, and 3-12 % of the batch's energy lies along the run's top direction (0.3-0.46 during the warmup). A
    tuned learning rate is the largest the batch-specific movement tolerates, so the persistent direction, where
    the gain is, is under-stepped. Recipe: `fast_steps` ordinary steps (theta0 -> thetaK), then per 2-D tensor
    theta~ = thetaK + (boost - 1) U U^T (thetaK - theta0) V V^T, [U, V] the top-`rank` singular subspace of the
    run's update thetaK - theta_start (tracked by one warm-started block power iteration per batch, seeded); the
    rest of the displacement and every other tensor stay as the steps left them; one ordinary step from theta~.
    The boost is sized by the batch's own component along the run's direction, so it adds little step norm and
    follows the batch's sign. With fast_steps = 1 it costs what plain GRPO with 2 steps per batch (the best plain
    setting in wall time on the steady preset) costs, plus two thin matmuls and QRs per tensor; boost = 1 is that
    plain run. fast_steps = 3 matches 4 steps per batch, the best plain setting in generation batches there.
    No gate. Memory: theta_start. Resume: the subspace restarts from the resumed weights. With LoRA the trainable
    2-D tensors are the adapter factors A and B, so the boost follows each factor's own update, not the top direction
    of B A. Measured (docs/RESULTS.md): on steady, 1.19x fewer generation batches than mu 2 (5 seeds), none against
    mu 4 (0.93x; fast_steps = 3: 1.04x on the tuning seeds, 0.68x on seeds 0 and 4); on SmolLM2 with LoRA (one seed) it
    pushed the completions to the token cap first and its greedy accuracy collapsed to 0, where plain mu 1 and mu 2
    did not: do not use it on LoRA runs that drift in length. (The other candidate,
    an adaptive rollout-reuse controller, is not here: TRL's sampler yields each prompt batch `num_iterations`
    times, so a callback that regenerates early samples new completions for the same prompts and still takes
    `num_iterations` steps per prompt batch: it cannot spend fewer backward passes on a batch that stopped
    paying; that needs a trainer subclass with its own sampler and generation schedule.)

Integration. Each method is a `transformers.TrainerCallback` (a dataclass of its hyper-parameters) that needs TRL's
`num_iterations` = `method.num_iterations` (K + 1, 3, fast_steps + 1): TRL then generates every num_iterations
steps and computes `old_per_token_logps` at theta0, so every step's ratio is against theta0, exactly as in the
papers. The callback snapshots theta0 (and GXPO's g0, g1) in `on_pre_optimizer_step` (gradients after clipping),
repositions in `on_optimizer_step` after the last fast step, and reads the gate after the batch's last step. The
model comes with the callback arguments (TRL passes `model` to every event); the trainer does not, so it is given as
an explicit handle, `method.bind(trainer)` (`rlcast train` binds it), and three of its attributes are used:
`_buffered_inputs` (a new object = a new generation batch; set to None after every step once the gate has fired, so
TRL generates a batch per step), `_metrics` (our `lookahead/*` metrics go through TRL's logging; SFPO's gate reads
TRL's `entropy`) and `args`. After the gate a regenerated batch samples new completions for the prompts TRL's sampler
hands it (the same prompt batch num_iterations times), one optimizer step each.

    from rlcast.training.lookahead import SFPO
    sfpo = SFPO(K=3, alpha=0.8)
    trainer = GRPOTrainer(..., args=GRPOConfig(..., num_iterations=sfpo.num_iterations), callbacks=[sfpo])
    sfpo.bind(trainer)  # its generation buffer and metrics; unbound, training stops at the start with one line
    trainer.train()

`rlcast train --accelerate sfpo|gxpo|rank1 --accel KEY=VALUE` sets the fields and num_iterations.

Safety. Parameters change only in place under torch.no_grad(), one tensor at a time: before a tensor is overwritten
its current value is copied to CPU memory, and any exception (or a non-finite target) restores every tensor already
written, so a failed reposition leaves the weights as the fast steps left them (logged, counted as
`lookahead/failed`) and training goes on. Memory: theta0 (and rank-1's theta_start), theta0 + g0 + g1 (GXPO) on the
parameters' device, in their dtype; targets are computed in float32. Resume: the gate's history and state are saved
with the trainer checkpoint (`ExportableState`) and restored in `on_train_begin`; TRL regenerates at the first
resumed step, so a resumed run starts a new batch. One process (DDP works, as its gradients are all-reduced); a model
sharded by FSDP or DeepSpeed ZeRO-3 is refused at the start in one line (a reposition needs whole tensors).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from rlcast.errors import RlcastError, check_int, check_number
from rlcast.training.support import check_unsharded

log = logging.getLogger("rlcast.lookahead")

MAX_STEPS = 100  # fast / virtual steps per generation batch (the papers use 3-10)
MAX_WINDOW = 10**6  # batches in a gate's window
RATIO_RANGE = (-2.0, 3.0)  # GXPO: per-coordinate gradient ratio r = g1 / g0 is clamped to this range
DELTA = 1e-8  # GXPO: |g0| and |S_2| at or below this count as zero


# ---------------------------------------------------------------------------------------------------- the maths

def sfpo_point(theta0: torch.Tensor, theta: torch.Tensor, alpha: float) -> torch.Tensor:
    """theta0 + alpha (theta - theta0), in float32 (torch.lerp: alpha = 1 gives theta bit for bit)."""
    return torch.lerp(theta0.float(), theta.float(), alpha)


def geometric_sum(r: torch.Tensor, n: int) -> torch.Tensor:
    """S_n(r) = 1 + r + ... + r^(n-1), by Horner's rule."""
    out = torch.ones_like(r)
    for _ in range(n - 1):
        out = out * r + 1
    return out


def gxpo_scale(g0: torch.Tensor, g1: torch.Tensor, K: int) -> torch.Tensor:
    """GXPO's per-coordinate q = S_K(r) / S_2(r), r = g1 / g0 clamped to RATIO_RANGE, q clamped to [1, K/2 + 1]."""
    g0, g1 = g0.float(), g1.float()
    active = g0.abs() > DELTA
    r = torch.where(active, g1 / torch.where(active, g0, 1.0), 1.0).clamp(*RATIO_RANGE).nan_to_num(1.0)
    s2 = geometric_sum(r, 2)
    q = torch.where(s2.abs() > DELTA, geometric_sum(r, K) / torch.where(s2.abs() > DELTA, s2, 1.0), 1.0)
    return torch.where(active, q.nan_to_num(1.0, 1.0, 1.0).clamp(1.0, K / 2 + 1), 1.0)


def gxpo_point(theta0: torch.Tensor, theta2: torch.Tensor, g0: torch.Tensor, g1: torch.Tensor, K: int,
               alpha: float) -> torch.Tensor:
    """theta0 + alpha q (theta2 - theta0), in float32 (alpha q = 1 gives theta2 bit for bit)."""
    return torch.lerp(theta0.float(), theta2.float(), alpha * gxpo_scale(g0, g1, K))


def zscore(history: list[float], value: float, window: int, include_value: bool) -> float | None:
    """(value - mean) / (std + 1e-9) over the last `window` observations (population std), or None before there are
    enough. SFPO's window ends with `value` itself (include_value); GXPO's is the window before it."""
    past = (history + [value] if include_value else history)[-window:]
    if len(past) < window:
        return None
    mean = sum(past) / window
    std = math.sqrt(sum((x - mean) ** 2 for x in past) / window)
    return (value - mean) / (std + 1e-9)


# ---------------------------------------------------------------------------------------------- the callback

class _PreClipNorm:
    """The norm of the gradients of the coming backward pass before the Trainer clips them (a post-accumulate hook
    per parameter records its gradient's squared norm; with gradient accumulation the last record is the total)."""

    def __init__(self, params: list[torch.Tensor]):
        self.squares: dict[torch.Tensor, torch.Tensor] = {}
        self.handles = [p.register_post_accumulate_grad_hook(self._record) for p in params]

    def _record(self, p: torch.Tensor) -> None:
        self.squares[p] = p.grad.detach().float().square().sum()

    def close(self) -> float:
        for h in self.handles:
            h.remove()
        return math.sqrt(sum(float(s) for s in self.squares.values()))


class Lookahead(TrainerCallback, ExportableState):
    """What every method shares: batch bookkeeping, the safe in-place reposition, the gate, metrics, resume state.

    A method sets `fast_steps` (optimizer steps before the reposition) and `name`, and implements `_targets()` (the
    reposition: (name, parameter, target) triples, computed one at a time); optionally `_capture(step)` (what it
    needs from the gradients of a step) and `_gate_value()` / `_gate_z()` (the gate's observation and its z-score;
    None: no gate) with a `gate_threshold`.
    """

    name = ""
    fast_steps: int
    after_gate = 1  # optimizer steps per generation batch once the gate has fired (a field of the gated methods)
    BOUNDS: dict[str, tuple] = {}  # field -> (low, high): ints for integer fields, floats for real ones

    @property
    def num_iterations(self) -> int:
        """TRL's num_iterations this method needs: the fast steps and the slow step on each generation batch."""
        return self.fast_steps + 1

    @property
    def batch_done(self) -> bool:
        """After a step (on_step_end): did it finish its generation batch (the next step generates a new one)?"""
        return self.step_ == self.num_iterations if self.on_ else self.step_ % self.after_gate == 0

    def __post_init__(self):
        self.trainer_ = None
        self.params_: list[tuple[str, torch.Tensor]] = []
        self.batch_ = None  # TRL's buffered generation batch the last step used
        self.step_ = 0  # optimizer steps taken on that batch
        self.theta0_: list[torch.Tensor] | None = None
        self.on_ = True  # False once the gate has fired: plain GRPO, `after_gate` steps per generation batch
        self.off_at_: int | None = None  # generation batches when the gate fired
        self.batches_ = 0  # generation batches seen
        self.history_: list[float] = []  # gate observations
        self.repositions_ = 0
        self.failed_ = 0
        self._numbers()
        self._check(self.after_gate >= 1 and self.num_iterations % self.after_gate == 0,
                    f"after_gate must be >= 1 and divide the {self.num_iterations} steps per batch while on (TRL "
                    f"regenerates on that schedule), got {self.after_gate}")

    def _check(self, condition: bool, message: str) -> None:
        if not condition:
            raise RlcastError(f"lookahead {self.name}: {message}")

    def _numbers(self) -> None:
        """Every hyper-parameter's type, finiteness and range (BOUNDS), checked where it enters: a NaN alpha or an
        infinite boost would make every reposition fail silently, a huge K overflow TRL's step counts."""
        for name, (low, high) in self.BOUNDS.items():
            value, where = getattr(self, name), f"lookahead {self.name}: {name}"
            if isinstance(low, int) and isinstance(high, int):
                check_int(value, where, low, high)
            else:
                check_number(value, where, low, high)

    # ------------------------------------------------------------------ method hooks

    def _capture(self, step: int) -> None:
        """Called before the optimizer step `step` (0-based) of a batch while the method is on."""

    def _targets(self):
        raise NotImplementedError

    def _gate_value(self) -> float | None:
        return None

    def _gate_z(self, value: float) -> float | None:
        return None

    # ------------------------------------------------------------------ trainer events

    def bind(self, trainer) -> "Lookahead":
        """Give the method its trainer (TRL's callback events pass the model, not the trainer): a GRPOTrainer or
        RLOOTrainer, whose generation buffer tells a new batch and whose metrics carry `lookahead/*`. Returns self."""
        self._check(isinstance(trainer, Trainer) and hasattr(trainer, "_buffered_inputs"),
                    f"bind: needs TRL's GRPOTrainer or RLOOTrainer (its generation buffer), got "
                    f"{type(trainer).__name__}")
        self.trainer_ = trainer
        return self

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._check(self.trainer_ is not None, f"not bound to its trainer: call {self.name}.bind(trainer) once "
                                               f"GRPOTrainer(..., callbacks=[{self.name}]) is built (rlcast "
                                               f"train does)")
        check_unsharded(model, f"lookahead {self.name}")
        self._check(args.num_iterations == self.num_iterations,
                    f"needs num_iterations={self.num_iterations} (GRPOConfig(num_iterations=...), rlcast --hp "
                    f"num_iterations=...), got {args.num_iterations}")
        self._check(args.steps_per_generation == args.gradient_accumulation_steps,
                    f"needs one optimizer step per pass over a generation batch (steps_per_generation "
                    f"{args.steps_per_generation} == gradient_accumulation_steps {args.gradient_accumulation_steps})")
        self.params_ = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if state.global_step > 0 and isinstance(saved, dict) and "attributes" in saved:
            for key, value in saved["attributes"].items():
                setattr(self, key, value)
        self.batch_, self.step_, self.theta0_ = None, 0, None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer_._buffered_inputs is not self.batch_:  # TRL generated a new batch for this step
            self.batch_, self.step_ = self.trainer_._buffered_inputs, 0
            self.batches_ += 1
            if self.on_:
                self.theta0_ = [p.detach().clone() for _, p in self.params_]
        if self.on_:
            self._capture(self.step_)

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.on_ and self.step_ == self.fast_steps - 1 and self.theta0_ is not None:
            self._reposition()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ += 1
        metrics = self.trainer_._metrics["train"]
        if self.on_ and self.step_ == self.num_iterations:  # the batch's slow step is done
            self.theta0_ = None
            value = self._gate_value()
            z = None if value is None else self._gate_z(value)
            if value is not None:
                self.history_.append(value)
            if z is not None:
                metrics["lookahead/gate_z"].append(z)
                if z >= self.gate_threshold:
                    self.on_, self.off_at_ = False, self.batches_
                    log.info("lookahead %s: gate fired at step %d (z %.2f >= %s): plain GRPO from now on, %d "
                             "step(s) per batch", self.name, state.global_step, z, self.gate_threshold,
                             self.after_gate)
        if not self.on_ and self.batch_done:
            self.trainer_._buffered_inputs = None  # TRL generates a new batch for the next step
        metrics["lookahead/on"].append(float(self.on_))

    # ------------------------------------------------------------------ the reposition

    def _reposition(self) -> None:
        """Write `_targets()` into the parameters, all or nothing; a failure is logged and training goes on."""
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        moved = 0.0
        try:
            with torch.no_grad():
                for name, p, target in self._targets():
                    if not torch.isfinite(target).all():
                        raise FloatingPointError(f"non-finite target for {name}")
                    saved.append((p, p.detach().to("cpu", copy=True)))
                    moved += float((target - p.float()).square().sum())
                    p.copy_(target)
        except BaseException as err:  # also on KeyboardInterrupt: never leave a half-written reposition behind
            with torch.no_grad():
                for p, old in saved:
                    p.copy_(old)
            if not isinstance(err, Exception):
                raise
            self.failed_ += 1  # the user's training must survive any failure of ours
            self.trainer_._metrics["train"]["lookahead/failed"].append(1.0)
            log.warning("lookahead %s: reposition failed (%s: %s); weights left as the fast steps left them",
                        self.name, type(err).__name__, err)
            return
        self.repositions_ += 1
        self.trainer_._metrics["train"]["lookahead/moved"].append(math.sqrt(moved))

    # ------------------------------------------------------------------ resume

    def state(self) -> dict:
        return {"args": {f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                "attributes": {"on_": self.on_, "off_at_": self.off_at_, "batches_": self.batches_,
                               "history_": list(self.history_), "repositions_": self.repositions_,
                               "failed_": self.failed_}}


# ------------------------------------------------------------------------------------------------- the methods

@dataclass(eq=False)
class SFPO(Lookahead):
    """SFPO (module docstring): K fast steps, theta~ = theta0 + alpha (thetaK - theta0), one slow step; the entropy
    z-score gate (`gate_window` 0: no gate).

    Args:
        K: fast steps on each generation batch before the reposition (TRL's num_iterations is K + 1).
        alpha: reposition weight: 0 back to theta0, 1 plain GRPO, the paper's 0.8.
        gate_window: entropy values the gate's z-score is taken over (0: never gated).
        gate_threshold: z-score at or above which the gate switches SFPO off for good.
        after_gate: optimizer steps per generation batch once gated (a divisor of K + 1).

    Usage:
        sfpo = SFPO(K=3, alpha=0.8)
        trainer = GRPOTrainer(..., args=GRPOConfig(..., num_iterations=sfpo.num_iterations), callbacks=[sfpo])
        sfpo.bind(trainer); trainer.train()
    """

    K: int = 3
    alpha: float = 0.8
    gate_window: int = 30
    gate_threshold: float = 1.0
    after_gate: int = 1
    name = "sfpo"
    # alpha 0 restarts from theta0, 1 is plain GRPO, above 1 extrapolates: far beyond the published 0.8 it diverges
    BOUNDS = {"K": (1, MAX_STEPS), "alpha": (0.0, 10.0), "gate_window": (0, MAX_WINDOW),
              "gate_threshold": (-math.inf, math.inf), "after_gate": (1, MAX_STEPS + 1)}

    @property
    def fast_steps(self) -> int:
        return self.K

    def _targets(self):
        for (name, p), theta0 in zip(self.params_, self.theta0_):
            yield name, p, sfpo_point(theta0, p.detach(), self.alpha).to(p.dtype)

    def _gate_value(self) -> float | None:
        """The mean token entropy TRL measured in the slow step (at theta~, the released code's gate signal)."""
        if not self.gate_window:
            return None
        values = self.trainer_._metrics["train"].get("entropy", [])[-self.trainer_.args.gradient_accumulation_steps:]
        return sum(values) / len(values) if values else None

    def _gate_z(self, value: float) -> float | None:
        return zscore(self.history_, value, self.gate_window, include_value=True)


@dataclass(eq=False)
class GXPO(Lookahead):
    """GXPO (module docstring): two fast steps, theta~ = theta0 + alpha q (theta2 - theta0) with q from the gradient
    ratio g1 / g0 extrapolated to K steps, one corrective step; the corrective-gradient-norm gate (`tau`;
    `gate_window` 0: no gate).

    Args:
        K: virtual steps the gradient ratio is extrapolated to (>= 2; TRL's num_iterations is 3).
        alpha: reposition weight on q (theta2 - theta0), the paper's 0.5.
        tau: the gate's threshold on the corrective gradient norm's z-score.
        gate_window: corrective norms the gate's z-score is taken over (0: never gated).
        after_gate: optimizer steps per generation batch once gated (a divisor of 3).

    Usage:
        gxpo = GXPO(K=5, alpha=0.5)
        trainer = GRPOTrainer(..., args=GRPOConfig(..., num_iterations=gxpo.num_iterations), callbacks=[gxpo])
        gxpo.bind(trainer); trainer.train()
    """

    K: int = 5
    alpha: float = 0.5
    tau: float = 0.5
    gate_window: int = 30
    after_gate: int = 1
    name = "gxpo"
    fast_steps = 2
    # alpha q scales theta2 - theta0 (q in [1, K/2 + 1]): negative moves against the steps (alpha -1e6 zeroed the
    # accuracy); K virtual steps cost K multiplications per coordinate and batch
    BOUNDS = {"K": (2, MAX_STEPS), "alpha": (0.0, 10.0), "tau": (-math.inf, math.inf),
              "gate_window": (0, MAX_WINDOW), "after_gate": (1, 3)}

    def __post_init__(self):
        super().__post_init__()
        self.grads_: list[list[torch.Tensor]] = []  # g0, g1 of the current batch
        self.meter_: _PreClipNorm | None = None
        self.corrective_norm_: float | None = None

    @property
    def gate_threshold(self) -> float:
        return self.tau

    def _grads(self) -> list[torch.Tensor]:
        return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for _, p in self.params_]

    def on_step_begin(self, args, state, control, **kwargs):
        if self.on_ and self.step_ == self.fast_steps and self.gate_window:  # the corrective step comes next
            self.meter_ = _PreClipNorm([p for _, p in self.params_])

    def _capture(self, step: int) -> None:
        if step < self.fast_steps:
            self.grads_ = [*self.grads_[:step], self._grads()]
        elif self.meter_ is not None:
            self.corrective_norm_, self.meter_ = self.meter_.close(), None

    def _targets(self):
        for (name, p), theta0, g0, g1 in zip(self.params_, self.theta0_, *self.grads_):
            yield name, p, gxpo_point(theta0, p.detach(), g0, g1, self.K, self.alpha).to(p.dtype)

    def _reposition(self) -> None:
        super()._reposition()
        self.grads_ = []

    def _gate_value(self) -> float | None:
        value, self.corrective_norm_ = self.corrective_norm_, None
        return value if self.gate_window else None

    def _gate_z(self, value: float) -> float | None:
        return zscore(self.history_, value, self.gate_window, include_value=False)


@dataclass(eq=False)
class Rank1Boost(Lookahead):
    """Ours (module docstring): `fast_steps` ordinary steps, then per 2-D tensor theta~ = thetaK + (boost - 1)
    U U^T (thetaK - theta0) V V^T, [U, V] the tracked top-`rank` singular subspace of the run's update since training
    began; one ordinary step from theta~. boost = 1 is plain GRPO with fast_steps + 1 steps per batch.

    Args:
        fast_steps: ordinary steps on each generation batch before the boost (TRL's num_iterations is fast_steps + 1).
        boost: factor on the batch's update within the tracked subspace (1: plain GRPO).
        rank: dimension of the tracked top singular subspace of the run's update.
        seed: seed of the subspace tracking's random start.

    Usage:
        boost = Rank1Boost(boost=2.0)
        trainer = GRPOTrainer(..., args=GRPOConfig(..., num_iterations=boost.num_iterations), callbacks=[boost])
        boost.bind(trainer); trainer.train()
    """

    fast_steps: int = 1
    boost: float = 2.0
    rank: int = 1
    seed: int = 0
    name = "rank1"
    # boost 1 is plain GRPO, 0 removes the batch's component along the run's direction; an infinite boost made every
    # reposition non-finite (silently skipped), 1e30 overflowed float32
    BOUNDS = {"fast_steps": (1, MAX_STEPS), "boost": (0.0, 100.0), "rank": (1, 1024), "seed": (0, 2**63 - 1)}

    def __post_init__(self):
        super().__post_init__()
        self.start_: dict[str, torch.Tensor] = {}  # the 2-D trainable tensors when training began
        self.basis_: dict[str, torch.Tensor] = {}  # per 2-D tensor: V, its tracked right singular vectors (n x rank)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        super().on_train_begin(args, state, control, model=model, **kwargs)
        self.start_ = {n: p.detach().clone() for n, p in self.params_ if p.dim() == 2}
        self.basis_ = {}

    def _subspace(self, name: str, update: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One block power iteration on the run's update, warm-started from the last batch's V (seeded at first): the
        update moves smoothly, so one iteration per batch tracks its top singular subspace."""
        if name not in self.basis_:
            gen = torch.Generator(device=update.device).manual_seed(self.seed)
            self.basis_[name] = torch.randn(update.shape[1], min(self.rank, *update.shape), generator=gen,
                                            device=update.device)
        U = torch.linalg.qr(update @ self.basis_[name]).Q
        V = torch.linalg.qr((U.T @ update).T).Q  # = update^T U; MKL is slow on a transposed big left operand
        self.basis_[name] = V
        return torch.linalg.qr(update @ V).Q, V

    def _targets(self):
        along = total = 0.0
        for (name, p), theta0 in zip(self.params_, self.theta0_):
            if name in self.start_:
                theta = p.detach().float()
                U, V = self._subspace(name, theta - self.start_[name].float())
                delta = theta - theta0.float()
                core = U.T @ delta @ V  # the batch's displacement in the run's top subspace
                along, total = along + float(core.square().sum()), total + float(delta.square().sum())
                yield name, p, (theta + (self.boost - 1) * (U @ core @ V.T)).to(p.dtype)
        self.trainer_._metrics["train"]["lookahead/along"].append(along / total if total else 0.0)


LOOKAHEAD: dict[str, type[Lookahead]] = {"sfpo": SFPO, "gxpo": GXPO, "rank1": Rank1Boost}


def settings(method: str) -> list[str]:
    """The hyper-parameters (dataclass fields) of a lookahead method, by name."""
    if method not in LOOKAHEAD:
        raise RlcastError(f"unknown lookahead method {method!r}; known: {', '.join(LOOKAHEAD)}")
    return [f.name for f in dataclasses.fields(LOOKAHEAD[method])]

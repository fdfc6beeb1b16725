"""Which rollouts a GRPO run generates, and how far it may reuse them, inside TRL's GRPOTrainer: selective rollouts
(GRESO), adaptive generations (Reinforce-Ada) and an M2PO trust region.

In GRPO a group whose completions all score the same has zero advantage and adds no policy gradient; TRL logs its
share as `frac_reward_zero_std` (0.4-0.75 of the steady preset's best plain run). Each such completion is still
generated in full.

`SkipRollouts` (`--rollouts skip`; GRESO, arXiv 2506.02177). Before a generation batch is generated, a prompt whose
    group was zero-variance in its last z consecutive epochs (the times it was generated) is skipped with
    probability 1 - p^z; p, the exploration probability, moves by `step` after every batch (up when the batch's skip
    rate is above `target`, down when below; within [`min_explore`, 1]) to hold the skip rate near `target`. A
    prompt skipped `max_skips` epochs in a row is generated the next time, so none is starved forever. The batch
    shrinks by the skipped groups (fewer completions per optimizer step), keeping at least one group (and a whole
    number of TRL's `steps_per_generation` slices); with `refill` each skipped prompt is replaced instead by a
    prompt drawn at random from the train set that passes its own skip draw (GRESO's batch of predicted-informative
    prompts: the plain run's completions per batch, more of them with signal; candidates a draw skips count as
    skipped). Draws come from a numpy generator seeded by (seed, batch), never torch's RNG: `target=0` never skips
    and trains bit-identically to the plain run. A shrunk batch would take bigger steps: TRL's losses average over
    the rows (or tokens) present, and the skipped zero-variance groups, which add nothing to the gradient, no longer
    dilute it (on steady at target 0.5: grad norm 1.4 -> 2.2, 1.5x the clipped tokens, final 0.445 against the plain
    run's 0.527). With `rescale` (default) the advantages of a shrunk batch are scaled by the share of its prompts
    generated, so a step is the size the full batch would have given (exact for the clipped losses with rows of
    equal length; the KL term, beta > 0, is not scaled). Differences from the paper: one exploration probability for
    all-correct and all-wrong groups (GRESO keeps one per side), the refill one draw per slot before generating
    (GRESO generates, filters and samples more until the batch is full, as DAPO's dynamic sampling does), and the
    rescaling (GRESO's steps grow with the informative share; its learning rate was tuned with that).
`AdaptiveRollouts` (`--rollouts adaptive`; Reinforce-Ada, arXiv 2510.04996). Each prompt of a generation batch is
    sampled in rounds of `round_size` completions until its pool holds at least the group size G
    (`num_generations`) and has signal (two different rewards: a success and a failure for a 0/1 reward), or
    `budget` completions are spent; TRL's group of G is then formed from the pool, half successes (rewards above
    the pool's midpoint) and half failures where the pool allows (`balance`; Reinforce-Ada's balanced group), else
    the first G. Every generated completion is scored once: the rewards of the rounds are reused for the formed
    group (the reward function is not called again), and the advantages are TRL's, from the formed group (the
    paper normalises with the whole pool's statistics). It costs at least the plain run's completions.
`M2POTrainer` (`--hp m2po_threshold=T`; M2PO, arXiv 2510.01161). Instead of epsilon-clipping the importance ratio
    r = pi_theta / pi_old, mask the tokens with the largest (log r)^2 until the mean of (log r)^2 over the tokens
    left, the batch's second moment, is at most T (the paper: 0.04). A masked token keeps its place in the loss's
    normaliser with a constant ratio (no gradient), as a clipped token does in PPO. With one optimizer step per
    generation batch TRL's ratio is identically 1 and nothing is masked; it matters with rollout reuse
    (`num_iterations` > 1), where clipping may be what stops reuse from paying past ~4 steps per batch.

Integration. `SkipRollouts` and `AdaptiveRollouts` are TrainerCallbacks given their trainer as an explicit handle
(`rollouts.bind(trainer)`, like the lookahead methods), not a GRPOTrainer subclass or a sampler, because (1) their
state (the per-prompt history, the exploration probability, the counts) must be saved with every checkpoint and
restored on resume, which the Trainer does for callbacks (ExportableState in trainer_state.json); (2) they compose
with any GRPOTrainer subclass, a user's or `M2POTrainer`; (3) a sampler decides one batch ahead (accelerate's
dataloader prefetches), before the previous batch's rewards are known. `bind` wraps three of the trainer's methods
on the instance: `_generate_and_score_completions` (the skip happens on its input rows, before generation),
`_generate` (the adaptive rounds; counting completions and tokens) and `_calculate_rewards` (the groups' rewards;
the rounds' rewards reused). One process only (the gathered rewards assume every process generates the same
number). Metrics go through TRL's logs, per generation batch: `rollouts/skip_rate`, `rollouts/explore`,
`rollouts/signal` (share of generated groups with signal), `rollouts/completions`, `rollouts/tokens` (completion
tokens). A reward function sees a `rollout_round` column in adaptive rounds (0 for the first round of a batch).
M2PO is a loss, hence the trainer's: a subclass overriding `_compute_loss` minimally.

    from rlcast.training.rollouts import SkipRollouts
    skip = SkipRollouts(target=0.5)
    trainer = GRPOTrainer(..., callbacks=[skip])
    skip.bind(trainer)  # unbound, training stops at the start with one line
    trainer.train()

`rlcast train --rollouts skip|adaptive --rollout KEY=VALUE` builds them (`make_rollouts`); run.json records every
checkpoint's `completions` and `tokens` (counted by the run's reward function, for every RL run).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from collections.abc import Iterable

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from trl import GRPOTrainer

from rlcast.errors import RlcastError, check_int, check_number
from rlcast.io.options import parse_overrides

CLIPPED_LOSSES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")  # TRL's losses that clip the ratio at epsilon
MAX_INT = 10**9


def prompt_key(prompt) -> str:
    """A short stable key of a prompt (text or chat messages): what the skip history is indexed by."""
    text = json.dumps(prompt, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def has_signal(rewards) -> bool:
    """Whether a group's rewards differ (TRL's zero-std test: a nonzero standard deviation)."""
    values = [float(r) for r in rewards]
    return bool(values) and not math.isclose(max(values), min(values), rel_tol=0.0, abs_tol=1e-8)


class Rollouts(TrainerCallback, ExportableState):
    """What both rollout methods share: the bind, the wrapped trainer methods, counts, metrics and resume state. A
    method sets `name` and `BOUNDS`, and implements `_generation_batch(groups)` (the rows TRL hands one generation
    batch as groups of G rows of one prompt -> TRL's output for it)."""

    name = ""
    BOUNDS: dict[str, tuple] = {}  # field -> (low, high): ints for integer fields, floats for real ones

    def __post_init__(self):
        for name, (low, high) in self.BOUNDS.items():
            value, where = getattr(self, name), f"rollouts {self.name}: {name}"
            if value is None:
                continue
            if isinstance(low, int) and isinstance(high, int):
                check_int(value, where, low, high)
            else:
                check_number(value, where, low, high)
        self.trainer_ = None
        self.original_: dict = {}
        self.batches_ = 0  # generation batches generated
        self.completions_ = 0  # completions generated (every round's)
        self.tokens_ = 0  # completion tokens generated
        self.rewards_ = None  # the last scored batch's rewards per completion and reward function
        self.batch_counts_ = [0, 0]  # completions, tokens of the batch being generated

    def _fail(self, message: str):
        raise RlcastError(f"rollouts {self.name}: {message}")

    # ------------------------------------------------------------------ the trainer

    def bind(self, trainer) -> Rollouts:
        """Give the method its trainer (a GRPOTrainer, one process) and wrap its generation and scoring. Returns
        self."""
        if not isinstance(trainer, GRPOTrainer):
            self._fail(f"bind: needs TRL's GRPOTrainer (the GRPO family), got {type(trainer).__name__}")
        if self.trainer_ is not None:
            self._fail("bind: already bound to a trainer")
        if trainer.accelerator.num_processes != 1:
            self._fail(f"{trainer.accelerator.num_processes} processes: one process only (the rewards TRL gathers "
                       f"assume every process generates as many completions)")
        self._check_trainer(trainer)
        self.trainer_ = trainer
        for method in ("_generate_and_score_completions", "_generate", "_calculate_rewards"):
            self.original_[method] = getattr(trainer, method)
        trainer._generate_and_score_completions = self._generate_and_score
        trainer._generate = self._generate
        trainer._calculate_rewards = self._calculate_rewards
        return self

    def _check_trainer(self, trainer) -> None:
        """A method's checks of the trainer's settings, at bind."""
        self.check_group(trainer.num_generations)

    def check_group(self, group: int) -> None:
        """A method's checks against the run's group size (num_generations): at bind, and by `rlcast train` before
        any work."""

    def _training(self) -> bool:
        return self.trainer_.model.training

    def _generate_and_score(self, inputs):
        if not self._training():  # TRL's evaluation: as it is
            return self.original_["_generate_and_score_completions"](inputs)
        self.batch_counts_ = [0, 0]
        output = self._generation_batch(self._groups(inputs))
        self.batches_ += 1
        metrics = self.trainer_._metrics["train"]
        metrics["rollouts/completions"].append(float(self.batch_counts_[0]))
        metrics["rollouts/tokens"].append(float(self.batch_counts_[1]))
        return output

    def _generate(self, prompts):
        """TRL's generation, counting what it generated (training only)."""
        result = self.original_["_generate"](prompts)
        if self._training():
            ids = result[1]
            tokens = sum(len(x) for x in ids)
            self.completions_ += len(ids)
            self.tokens_ += tokens
            self.batch_counts_[0] += len(ids)
            self.batch_counts_[1] += tokens
        return result

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = self.original_["_calculate_rewards"](inputs, prompts, completions, completion_ids_list)
        if self._training():
            self.rewards_ = rewards
        return rewards

    def _total(self, rewards: torch.Tensor) -> list[float]:
        """Each completion's reward: the weighted sum over reward functions, as TRL's advantages use it."""
        weights = self.trainer_.reward_weights.to(rewards.device)
        return (rewards * weights.unsqueeze(0)).nansum(dim=1).tolist()

    def _groups(self, rows: list) -> list[list]:
        """TRL's rows of a generation batch as groups of G consecutive rows of one prompt (its RepeatSampler)."""
        size = self.trainer_.num_generations
        if len(rows) % size:
            self._fail(f"a generation batch of {len(rows)} rows is not whole groups of num_generations {size}")
        groups = [rows[i:i + size] for i in range(0, len(rows), size)]
        for group in groups:
            if any(row["prompt"] != group[0]["prompt"] for row in group):
                self._fail("a generation batch's rows are not groups of one prompt (TRL's RepeatSampler makes them)")
        return groups

    def _generation_batch(self, groups: list[list]):
        raise NotImplementedError

    # ------------------------------------------------------------------ resume state and events

    def settings(self) -> dict:
        return dataclasses.asdict(self)

    def attributes(self) -> dict:
        return {"batches": self.batches_, "completions": self.completions_, "tokens": self.tokens_}

    def restore(self, attributes: dict) -> None:
        for key, attr in (("batches", "batches_"), ("completions", "completions_"), ("tokens", "tokens_")):
            value = attributes.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(self, attr, value)

    def state(self) -> dict:
        return {"args": self.settings(), "attributes": self.attributes()}

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer_ is None:
            self._fail(f"not bound to its trainer: call rollouts.bind(trainer) once GRPOTrainer(..., "
                       f"callbacks=[rollouts]) is built (rlcast train does)")
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        saved = saved[0] if isinstance(saved, list) and saved else saved
        if state.global_step and isinstance(saved, dict) and isinstance(saved.get("attributes"), dict):
            self.restore(saved["attributes"])  # a resume continues the history and the counts

    def summary(self) -> dict:
        return {"rollouts": self.name, "generation_batches": self.batches_, "completions": self.completions_,
                "tokens": self.tokens_}


@dataclass
class SkipRollouts(Rollouts):
    """GRESO's selective rollouts (module docstring): skip prompts predicted zero-variance before generating."""

    target: float = 0.5        # skip rate (share of a batch's prompts) the exploration probability holds; 0: none
    explore: float = 0.5       # initial exploration probability p (a prompt zero-variance z times: kept w.p. p^z)
    step: float = 0.01         # change of p after each batch
    min_explore: float = 0.05  # floor of p
    max_skips: int = 8         # epochs in a row a prompt may be skipped; then it is generated
    seed: int = 0              # of the skip draws (numpy, never torch's RNG)
    rescale: bool = True       # scale a shrunk batch's advantages by the share generated: the plain run's step size
    refill: bool = False       # replace each skipped prompt by one drawn from the train set that passes the skip test
    refill_tries: int = 8      # candidates drawn per skipped prompt at most; short of them, skipped prompts come back

    name = "skip"
    BOUNDS = {"target": (0.0, 0.99), "explore": (0.0, 1.0), "step": (0.0, 1.0), "min_explore": (0.0, 1.0),
              "max_skips": (1, MAX_INT), "seed": (0, 2**32 - 1), "refill_tries": (1, MAX_INT)}

    def __post_init__(self):
        super().__post_init__()
        if self.min_explore > self.explore:
            self._fail(f"min_explore {self.min_explore:g} must be <= explore {self.explore:g}")
        for name in ("rescale", "refill"):
            if not isinstance(getattr(self, name), bool):
                self._fail(f"{name} must be true or false (got {getattr(self, name)!r:.40})")
        self.explore_ = float(self.explore)
        self.history_: dict[str, list[int]] = {}  # prompt key -> [zero-variance streak, skips in a row]

    def skip_probability(self, key: str) -> float:
        """1 - p^z for a prompt zero-variance its last z epochs (0: never seen, last time with signal, skipped
        `max_skips` times in a row, or `target` 0)."""
        streak, skips = self.history_.get(key, (0, 0))
        if self.target == 0 or streak == 0 or skips >= self.max_skips:
            return 0.0
        return 1.0 - self.explore_ ** streak

    def select(self, keys: list[str], unit: int = 1) -> list[bool]:
        """Which of a batch's prompts (by key, in order) to skip: seeded draws against `skip_probability`; at least
        one and a multiple of `unit` prompts kept (the skipped prompts with the shortest streak generated first)."""
        rng = np.random.default_rng([self.seed, self.batches_])
        draws = rng.random(len(keys))
        skip = [self.skip_probability(k) > u for k, u in zip(keys, draws)]
        kept = len(keys) - sum(skip)
        need = min(len(keys), max(unit, -(-kept // unit) * unit)) - kept
        for i in sorted((i for i, s in enumerate(skip) if s), key=lambda i: self.history_[keys[i]][0])[:need]:
            skip[i] = False
        return skip

    def refill_rows(self, present: set[str], need: int) -> tuple[list[dict], list[str], list[bool]]:
        """Up to `need` replacement prompts for a batch whose prompts are `present`: train-set rows drawn at random
        (seeded by (seed, batch)), each taken unless its own skip draw skips it; at most `refill_tries` x `need`
        draws. Returns (the rows taken, every candidate's key, whether each was skipped), in draw order."""
        dataset = self.trainer_.train_dataset
        rng = np.random.default_rng([self.seed, self.batches_, 1])
        rows, keys, skipped = [], [], []
        for _ in range(self.refill_tries * need):
            if len(rows) == need:
                break
            row = dataset[int(rng.integers(len(dataset)))]
            key = prompt_key(row["prompt"])
            if key in present:
                continue
            present.add(key)
            skip = self.skip_probability(key) > rng.random()
            keys.append(key)
            skipped.append(skip)
            if not skip:
                rows.append(dict(row))
        return rows, keys, skipped

    def observe(self, keys: list[str], skipped: list[bool], zero: dict[str, bool]) -> float:
        """Record a batch: the skipped prompts' skip counts, the generated ones' streaks (`zero`: key -> whether its
        group was zero-variance); move p toward the target. Returns the batch's skip rate."""
        for key, skip in zip(keys, skipped):
            streak, skips = self.history_.get(key, [0, 0])
            self.history_[key] = [streak, skips + 1] if skip else [streak + 1 if zero[key] else 0, 0]
        rate = sum(skipped) / len(keys) if keys else 0.0
        move = self.step if rate > self.target else -self.step
        self.explore_ = min(1.0, max(self.min_explore, self.explore_ + move))
        return rate

    def _check_trainer(self, trainer) -> None:
        super()._check_trainer(trainer)
        if self.refill and not (hasattr(trainer.train_dataset, "__len__") and len(trainer.train_dataset)):
            self._fail("refill draws replacement prompts from the train set: it needs a sized, non-empty dataset")

    def _generation_batch(self, groups):
        keys = [prompt_key(g[0]["prompt"]) for g in groups]
        size = self.trainer_.num_generations
        spg = self.trainer_.args.steps_per_generation  # TRL splits the batch into this many equal slices
        skipped = self.select(keys, 1 if self.refill else spg // math.gcd(spg, size))
        extra, extra_keys, extra_skipped = [], [], []
        if self.refill and any(skipped):
            extra, extra_keys, extra_skipped = self.refill_rows(set(keys), sum(skipped))
            short = sum(skipped) - len(extra)  # too few replacements passed: skipped prompts come back instead
            for i in sorted((i for i, s in enumerate(skipped) if s), key=lambda i: self.history_[keys[i]][0])[:short]:
                skipped[i] = False
        rows = [row for group, skip in zip(groups, skipped) if not skip for row in group]
        rows += [dict(row) for row in extra for _ in range(size)]
        self.rewards_ = None
        output = self.original_["_generate_and_score_completions"](rows)
        if self.rescale and len(rows) < len(keys) * size:
            output["advantages"] = output["advantages"] * (len(rows) / (len(keys) * size))
        total = self._total(self.rewards_)
        generated = [k for k, s in zip(keys, skipped) if not s] + [k for k, s in zip(extra_keys, extra_skipped)
                                                                   if not s]
        zero = {k: not has_signal(total[i * size:(i + 1) * size]) for i, k in enumerate(generated)}
        rate = self.observe(keys + extra_keys, skipped + extra_skipped, zero)
        metrics = self.trainer_._metrics["train"]
        if self.refill:
            metrics["rollouts/refilled"].append(len(extra) / len(keys))
        metrics["rollouts/skip_rate"].append(rate)
        metrics["rollouts/explore"].append(self.explore_)
        metrics["rollouts/signal"].append(1.0 - sum(zero.values()) / len(zero))
        return output

    def attributes(self) -> dict:
        return super().attributes() | {"explore": self.explore_, "history": self.history_}

    def restore(self, attributes: dict) -> None:
        super().restore(attributes)
        explore, history = attributes.get("explore"), attributes.get("history")
        if isinstance(explore, (int, float)) and math.isfinite(explore):
            self.explore_ = float(explore)
        if isinstance(history, dict):
            self.history_ = {str(k): [int(v[0]), int(v[1])] for k, v in history.items()
                             if isinstance(v, list) and len(v) == 2}

    def summary(self) -> dict:
        return super().summary() | {"explore": self.explore_, "prompts_seen": len(self.history_)}


@dataclass
class AdaptiveRollouts(Rollouts):
    """Reinforce-Ada's adaptive generations (module docstring): rounds per prompt until its group has signal."""

    round_size: int | None = None  # completions per prompt per round; None: num_generations
    budget: int | None = None      # completions per prompt at most (a multiple of round_size); None: 4 rounds
    balance: bool = True           # the group half successes, half failures where the pool allows

    name = "adaptive"
    BOUNDS = {"round_size": (1, MAX_INT), "budget": (1, MAX_INT)}

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.balance, bool):
            self._fail(f"balance must be true or false (got {self.balance!r:.40})")
        self.pending_ = None  # the formed groups' rewards, handed to TRL's scoring instead of scoring them again
        self.rows_: list = []
        self.extra_rounds_ = 0

    def sizes(self, group: int) -> tuple[int, int]:
        """(round size, budget) for TRL's group size `group`."""
        size = self.round_size or group
        budget = self.budget if self.budget is not None else 4 * size * -(-group // size)
        return size, budget

    def check_group(self, group: int) -> None:
        size, budget = self.sizes(group)
        if budget < group or budget % size:
            self._fail(f"budget {budget} must be a multiple of round_size {size} and >= num_generations {group} "
                       f"(the group GRPO needs)")

    def _check_trainer(self, trainer) -> None:
        super()._check_trainer(trainer)
        if trainer.tools or trainer.rollout_func is not None or trainer.environment_factories is not None:
            self._fail("text prompts only: not with tools, environments or a rollout_func")

    def form_group(self, totals: list[float], group: int) -> list[int]:
        """Indices (into the pool, in generation order) of the `group` completions TRL trains on: with signal and
        `balance`, successes (above the pool's midpoint reward) and failures as evenly as the pool allows."""
        if not (self.balance and has_signal(totals)):
            return list(range(group))
        mid = (max(totals) + min(totals)) / 2
        high = [i for i, r in enumerate(totals) if r > mid]
        low = [i for i, r in enumerate(totals) if r <= mid]
        take = min(len(high), max(group - len(low), group // 2))
        return sorted(high[:take] + low[:group - take])

    def done(self, totals: list[float], group: int, budget: int) -> bool:
        return len(totals) >= budget or (len(totals) >= group and has_signal(totals))

    def _generation_batch(self, groups):
        self.rows_ = [row for g in groups for row in g]
        self.pending_ = None
        return self.original_["_generate_and_score_completions"](self.rows_)

    def _generate(self, prompts):
        if not self._training():
            return super()._generate(prompts)
        trainer, group = self.trainer_, self.trainer_.num_generations
        size, budget = self.sizes(group)
        n = len(prompts) // group
        pools: list[list] = [[] for _ in range(n)]  # per prompt: (prompt_ids, completion_ids, completion, logprobs)
        scores: list[list] = [[] for _ in range(n)]  # per prompt: (reward per function, total)
        active, round_ = list(range(n)), 0
        while active:
            order = [g for g in active for _ in range(size)]
            batch_prompts = [prompts[g * group] for g in order]
            rows = [dict(self.rows_[g * group], rollout_round=round_) for g in order]
            saved, trainer.num_generations = trainer.num_generations, size  # TRL's vLLM path groups by it
            try:
                prompt_ids, ids, tool_mask, completions, logprobs, extra, images, _ = super()._generate(batch_prompts)
            finally:
                trainer.num_generations = saved
            if tool_mask is not None or extra or images is not None:
                self._fail("text prompts only: not with tools, images or a rollout_func")
            rewards = self.original_["_calculate_rewards"](rows, batch_prompts, completions, ids)
            for j, (g, total) in enumerate(zip(order, self._total(rewards))):
                pools[g].append((prompt_ids[j], ids[j], completions[j], logprobs[j] if logprobs else None))
                scores[g].append((rewards[j], total))
            active = [g for g in active if not self.done([t for _, t in scores[g]], group, budget)]
            round_ += 1
        self.extra_rounds_ += round_ - 1
        chosen = [(g, i) for g in range(n) for i in self.form_group([t for _, t in scores[g]], group)]
        self.pending_ = torch.stack([scores[g][i][0] for g, i in chosen])
        metrics = trainer._metrics["train"]
        metrics["rollouts/signal"].append(sum(has_signal([t for _, t in s]) for s in scores) / n)
        metrics["rollouts/rounds"].append(float(round_))
        logprobs = [pools[g][i][3] for g, i in chosen]
        return ([pools[g][i][0] for g, i in chosen], [pools[g][i][1] for g, i in chosen], None,
                [pools[g][i][2] for g, i in chosen], None if logprobs[0] is None else logprobs, {}, None, [])

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        if self._training() and self.pending_ is not None:  # the formed groups: scored in their rounds already
            rewards, self.pending_ = self.pending_, None
            return rewards
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def summary(self) -> dict:
        return super().summary() | {"extra_rounds": self.extra_rounds_}


ROLLOUTS: dict[str, type[Rollouts]] = {"skip": SkipRollouts, "adaptive": AdaptiveRollouts}


def rollout_settings(name: str, items: Iterable[str], option: str = "--rollout") -> dict:
    """KEY=VALUE items as the typed settings of rollout method `name` (one line naming `option` and the item)."""
    cls = ROLLOUTS[name]
    return parse_overrides(cls, items, [f.name for f in dataclasses.fields(cls)], option)


def make_rollouts(name: str, settings: dict | Iterable[str] = (), what: str = "--rollouts",
                  option: str = "--rollout") -> Rollouts:
    """A fresh rollout method `name` (skip | adaptive) with `settings` (a dict of fields, or KEY=VALUE items); bad
    names and values fail here, in one line, before any training."""
    if name not in ROLLOUTS:
        raise RlcastError(f"{what} {name!r}: known: {', '.join(ROLLOUTS)}")
    if not isinstance(settings, dict):
        settings = rollout_settings(name, settings, option)
    return ROLLOUTS[name](**settings)


# ---------------------------------------------------------------------------------------------- M2PO


def m2po_mask(log_ratio: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """M2PO's token mask (True: kept): of the tokens in `mask`, drop those with the largest (log r)^2, as few as
    needed for the mean (log r)^2 of the rest (the batch's second moment) to be <= `threshold` (all dropped when
    even the smallest exceeds it)."""
    keep = mask.bool().clone()
    squares = log_ratio.detach().double().pow(2)[keep]
    n = squares.numel()
    if n == 0 or squares.mean().item() <= threshold:
        return keep
    values, order = squares.sort(descending=True)
    rest = values.sum() - values.cumsum(0)  # rest[k - 1]: the sum once the top k are dropped
    count = torch.arange(n - 1, -1, -1, dtype=torch.float64)
    ok = (rest[:-1] / count[:-1] <= threshold).nonzero()
    drop = int(ok[0]) + 1 if ok.numel() else n
    positions = keep.nonzero()[order[:drop]]
    keep[tuple(positions.T)] = False
    return keep


class M2POTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with M2PO's second-moment trust region in place of epsilon-clipping (module docstring).

    `_compute_loss` is TRL's, with the policy's per-token log-probs of the masked tokens replaced by the rollout's
    (`old_per_token_logps`, a constant): their ratio is exactly 1 and they carry no gradient; the clip range is
    opened (epsilon_low = epsilon_high = inf). Metric `m2po/masked`: the share of completion tokens masked.
    """

    def __init__(self, *args, m2po_threshold: float, **kwargs):
        check_number(m2po_threshold, "m2po_threshold", 0, above=True)
        super().__init__(*args, **kwargs)
        if self.loss_type not in CLIPPED_LOSSES:
            raise RlcastError(f"m2po_threshold replaces the ratio clipping of the {', '.join(CLIPPED_LOSSES)} "
                              f"losses, not {self.loss_type}")
        self.m2po_threshold = m2po_threshold
        self.epsilon_low = self.epsilon_high = math.inf

    def _compute_loss(self, model, inputs):
        old = inputs.get("old_per_token_logps")
        if old is None:  # TRL takes the ratio against the policy itself (one step per batch): nothing to mask
            return super()._compute_loss(model, inputs)
        mask = inputs["completion_mask"] * inputs["tool_mask"] if "tool_mask" in inputs else inputs["completion_mask"]
        forward = self._get_per_token_logps_and_entropies
        mode = "train" if self.model.training else "eval"

        def masked(*args, **kwargs):
            logps, entropies, aux = forward(*args, **kwargs)
            keep = m2po_mask(logps.detach() - old, mask, self.m2po_threshold)
            self._metrics[mode]["m2po/masked"].append(1.0 - keep.sum().item() / max(mask.sum().item(), 1))
            return torch.where(keep, logps, old), entropies, aux

        self._get_per_token_logps_and_entropies = masked
        try:
            return super()._compute_loss(model, inputs)
        finally:
            del self._get_per_token_logps_and_entropies

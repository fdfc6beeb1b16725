"""RL (GRPO, RLOO) and SFT runs through TRL, with checkpoints rlcast can analyse and a manifest it can trust.

A run folder is TRL's normal layout plus a manifest:

    OUT/checkpoint-20/ ... OUT/checkpoint-300/   full weights (model.safetensors) or a PEFT adapter
    OUT/run.json                                 base, task, algorithm, hyper-parameters, held-out accuracy per step

run.json is rewritten atomically after every checkpoint (a TrainerCallback on_save evaluates the in-memory model
greedily on the task's test split), so an interrupted run leaves its finished checkpoints and a valid manifest.
Only the newest checkpoint keeps the optimizer and scheduler state: enough to resume, without tripling the disk.
`algo="sft"` (TRL's SFTTrainer on the task's train split) gives the negative control of the rank-1 analysis: a run of
the same size and layout whose updates are not low-rank.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import warnings
from pathlib import Path

import torch

from rlcast.errors import RlcastError

ALGOS = ("grpo", "rloo", "sft")

# Defaults from an lr sweep of 300-step GRPO on the testbed (full: 3e-6 / 1e-5 / 3e-5 / 1e-4 / 3e-4 / 1e-3,
# LoRA: 3e-5 / 1e-4 / 3e-4 / 1e-3). Full fine-tuning at >= 1e-4 and LoRA at 1e-3 fell below the base.
DEFAULTS = {
    "learning_rate": None,           # None: 1e-5 full / 3e-5 lora for RL, 1e-4 full / 1e-3 lora for SFT
    "num_generations": 8,            # completions per prompt (GRPO/RLOO group size)
    "batch_size": 64,                # completions (RL) or sequences (SFT) per optimizer step
    "temperature": 1.0,
    "max_completion_length": None,   # None: the task's own budget (arith: 6 tokens)
    "beta": 0.0,                     # KL to the reference model (0 = no reference model kept)
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
}
DEFAULT_LR = {("rl", False): 1e-5, ("rl", True): 3e-5, ("sft", False): 1e-4, ("sft", True): 1e-3}


def _write_json(path: Path, data: dict) -> None:
    """Write JSON through a temp file in the same folder and rename it into place (never a half-written file)."""
    from rlcast.io.writer import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _checkpoints(out: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in out.glob("checkpoint-*") if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))


def _manifest_callback(out: Path, manifest: dict, task, tokenizer, eval_prompts: int, progress: bool):
    """on_save: score the in-memory model on held-out prompts, record the checkpoint, drop older optimizer states."""
    from transformers import TrainerCallback

    from rlcast.evaluation.generation import evaluate

    class ManifestCallback(TrainerCallback):
        def on_save(self, args, state, control, model=None, **kwargs):
            step = state.global_step
            result = evaluate(model, task, n_prompts=eval_prompts, tokenizer=tokenizer, progress=False)
            rewards = [h["reward"] for h in state.log_history if "reward" in h]
            entry = {"step": step, "path": f"checkpoint-{step}", "accuracy": result.accuracy,
                     "ci": [result.ci_low, result.ci_high]}
            if rewards:
                entry["train_reward"] = rewards[-1]
            manifest["checkpoints"] = [c for c in manifest["checkpoints"] if c["step"] != step] + [entry]
            manifest["checkpoints"].sort(key=lambda c: c["step"])
            manifest["steps_done"] = step
            _write_json(out / "run.json", manifest)
            for older in _checkpoints(out):
                if older < step:
                    for name in ("optimizer.pt", "scheduler.pt"):
                        (out / f"checkpoint-{older}" / name).unlink(missing_ok=True)
            if progress:
                from rich.console import Console

                Console(stderr=True).print(f"step {step}: held-out accuracy {result.accuracy:.3f} "
                                           f"[{result.ci_low:.3f}, {result.ci_high:.3f}]", highlight=False)

    return ManifestCallback()


def _progress_callback(bar, label: str, manifest: dict):
    """One rich bar for the run: optimizer steps, the latest train reward (loss for SFT) and held-out accuracy.

    Replaces the Trainer's tqdm bar and its printed log dicts; the metrics stay in state.log_history.
    """
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        job = None
        metric = ""

        def on_train_begin(self, args, state, control, **kwargs):
            self.job = bar.add_task(label, total=state.max_steps, completed=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            bar.update(self.job, completed=state.global_step, description=self.describe())

        def on_log(self, args, state, control, logs=None, **kwargs):
            key = next((k for k in ("reward", "loss") if isinstance((logs or {}).get(k), (int, float))), None)
            if key:
                self.metric = f"{key} {logs[key]:.3f}"
            bar.update(self.job, description=self.describe())

        def on_save(self, args, state, control, **kwargs):  # after the manifest callback has scored the checkpoint
            bar.update(self.job, description=self.describe())

        def describe(self) -> str:
            done = manifest["checkpoints"]
            held_out = f"held-out {done[-1]['accuracy']:.3f}" if done else f"base {manifest['base_accuracy']:.3f}"
            return " | ".join(x for x in (label, self.metric, held_out) if x)

    return RichProgress()


def _checkpointing_arg() -> str:
    """transformers 5 renamed `gradient_checkpointing` to `activation_checkpointing` (the old name warns)."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


def _prepare_base(model, out: Path, progress: bool) -> Path:
    """The base as an HF folder: the testbed by default, a folder as given, a GGUF file converted into OUT/base."""
    from rlcast.evaluation.generation import load_model
    from rlcast.training.testbed import base_model

    if model is None:
        return base_model(progress=progress)
    path = Path(model)
    if path.suffix == ".gguf":
        target = out / "base"
        if not (target / "config.json").exists():
            loaded, tok = load_model(path)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-base-", dir=out))
            loaded.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            os.replace(tmp, target)
        return target.resolve()
    if not (path.is_dir() and (path / "config.json").exists()):
        raise RlcastError(f"{path}: not a Hugging Face model folder or .gguf file")
    return path.resolve()


def train(out, task="arith", algo: str = "grpo", steps: int = 300, save_every: int = 20, model=None,
          lora: bool = False, seed: int = 0, callbacks=(), eval_prompts: int = 200, task_args: dict | None = None,
          resume: bool = False, progress: bool = True, **hparams) -> Path:
    """Run GRPO / RLOO / SFT on `task` from `model` (default: the testbed base) and return the run folder `out`.

    hparams (see DEFAULTS): learning_rate, num_generations, batch_size, temperature, max_completion_length, beta,
    lr_scheduler_type, warmup_steps, weight_decay, lora_r, lora_alpha, lora_dropout.
    resume=True continues an interrupted run in `out` from its newest checkpoint.
    """
    from datasets import Dataset

    from rlcast.evaluation.generation import evaluate, load_model, render_prompt

    from rlcast.evaluation.tasks import get_task

    out = Path(out)
    done = _checkpoints(out) if out.exists() else []
    manifest = None
    if resume:
        # an interrupted run continues with its own settings; only the step budget may change
        if not (out / "run.json").exists():
            raise RlcastError(f"{out}: nothing to resume (no run.json)")
        manifest = json.loads((out / "run.json").read_text())
        task, task_args, algo, lora, seed = (manifest[k] for k in ("task", "task_args", "algo", "lora", "seed"))
        model, save_every, eval_prompts, hparams = (manifest["base"], manifest["save_every"],
                                                    manifest["eval_prompts"], manifest["hparams"])
    elif out.exists() and any(out.iterdir()):
        raise RlcastError(f"{out}: exists and is not empty (pass resume=True / --resume, or another --out)")

    algo = algo.lower()
    if algo not in ALGOS:
        raise RlcastError(f"unknown algorithm {algo!r}; known: {', '.join(ALGOS)}")
    unknown = set(hparams) - set(DEFAULTS)
    if unknown:
        raise RlcastError(f"unknown hyper-parameter(s) {', '.join(sorted(unknown))}; known: {', '.join(DEFAULTS)}")
    if steps < 1 or save_every < 1:
        raise RlcastError(f"steps and save_every must be >= 1 (got {steps}, {save_every})")
    hp = {**DEFAULTS, **{k: v for k, v in hparams.items() if v is not None}}
    kind = "sft" if algo == "sft" else "rl"
    hp["learning_rate"] = hp["learning_rate"] or DEFAULT_LR[(kind, lora)]
    task_obj = get_task(task, task_args) if isinstance(task, str) else task
    hp["max_completion_length"] = hp["max_completion_length"] or task_obj.max_new_tokens
    if kind == "rl" and hp["batch_size"] % hp["num_generations"]:
        raise RlcastError(f"batch_size {hp['batch_size']} must be a multiple of num_generations "
                          f"{hp['num_generations']}")
    out.mkdir(parents=True, exist_ok=True)

    base = _prepare_base(model, out, progress)
    net, tokenizer = load_model(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(seed)

    if manifest is not None:
        manifest.update(status="running", steps=steps)
    else:
        if progress:
            from rich.console import Console

            Console(stderr=True).print(f"evaluating the base on {eval_prompts} held-out {task_obj.name} prompts",
                                       highlight=False)
        base_result = evaluate(net, task_obj, n_prompts=eval_prompts, tokenizer=tokenizer, progress=progress)
        manifest = {"base": str(base), "task": task_obj.name, "task_args": dict(task_args or {}), "algo": algo,
                    "lora": lora, "seed": seed, "steps": steps, "save_every": save_every,
                    "eval_prompts": eval_prompts, "eval": "greedy, test split",
                    "hparams": hp, "base_accuracy": base_result.accuracy,
                    "base_ci": [base_result.ci_low, base_result.ci_high], "checkpoints": [],
                    "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_json(out / "run.json", manifest)

    chat = bool(getattr(tokenizer, "chat_template", None))
    examples = task_obj.examples("train", None, seed=seed)

    def as_prompt(ex):
        return [{"role": "user", "content": ex.prompt}] if chat else render_prompt(tokenizer, ex.prompt)

    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=hp["lora_r"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    cuda = torch.cuda.is_available()
    common = dict(output_dir=str(out), max_steps=steps, save_strategy="steps", save_steps=save_every,
                  learning_rate=hp["learning_rate"], lr_scheduler_type=hp["lr_scheduler_type"],
                  warmup_steps=hp["warmup_steps"], weight_decay=hp["weight_decay"], seed=seed, data_seed=seed,
                  use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(), save_only_model=False,
                  report_to="none", logging_steps=min(10, save_every), disable_tqdm=True, dataloader_num_workers=0,
                  gradient_accumulation_steps=1)
    common[_checkpointing_arg()] = False
    cbs = [_manifest_callback(out, manifest, task_obj, tokenizer, eval_prompts, progress), *callbacks]

    if kind == "rl":
        from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

        data = Dataset.from_dict({"prompt": [as_prompt(ex) for ex in examples], "idx": list(range(len(examples)))})

        def reward(prompts, completions, idx, **_):
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            return [task_obj.score(t, examples[i]) for t, i in zip(texts, idx)]

        rl = dict(per_device_train_batch_size=hp["batch_size"], num_generations=hp["num_generations"],
                  max_completion_length=hp["max_completion_length"], temperature=hp["temperature"],
                  beta=hp["beta"])
        config_cls, trainer_cls = (GRPOConfig, GRPOTrainer) if algo == "grpo" else (RLOOConfig, RLOOTrainer)
        trainer = trainer_cls(model=net, reward_funcs=reward, args=config_cls(**common, **rl), train_dataset=data,
                              processing_class=tokenizer, callbacks=cbs, peft_config=peft_config)
    else:
        from trl import SFTConfig, SFTTrainer

        completion = (lambda ex: [{"role": "assistant", "content": ex.answer}]) if chat else (lambda ex: ex.answer)
        data = Dataset.from_dict({"prompt": [as_prompt(ex) for ex in examples],
                                  "completion": [completion(ex) for ex in examples]})
        config = SFTConfig(**common, per_device_train_batch_size=hp["batch_size"], completion_only_loss=True)
        trainer = SFTTrainer(model=net, args=config, train_dataset=data, processing_class=tokenizer, callbacks=cbs,
                             peft_config=peft_config)

    # the Trainer prints every log dict (PrinterCallback) or draws a tqdm bar; the rich bar below replaces both
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True), disable=not progress)
    trainer.add_callback(_progress_callback(bar, f"{algo.upper()}{' LoRA' if lora else ''}", manifest))
    last = max(done) if done else None
    with bar, warnings.catch_warnings():
        # TRL reads the model's deprecated `is_gradient_checkpointing` alias on every generation: not ours to fix
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        trainer.train(resume_from_checkpoint=str(out / f"checkpoint-{last}") if resume and last else None)
    manifest["status"] = "finished"
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    _write_json(out / "run.json", manifest)
    return out

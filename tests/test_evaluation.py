import json
import shutil
import threading

import pytest

from rlcast.errors import RlcastError
from rlcast.evaluation.generation import evaluate, load_model
from rlcast.evaluation.intervals import wilson
from rlcast.evaluation.tasks import Example, get_task, math_equal
from rlcast.io.options import parse_overrides


def test_arith_splits_are_disjoint_and_fixed():
    task = get_task("arith")
    train = {e.prompt for e in task.examples("train", None)}
    test = {e.prompt for e in task.examples("test", None)}
    assert len(test) == 1000 and len(train) == 16200 - 1000
    assert not train & test
    # the seed picks a subset of the fixed split, never crosses it
    assert {e.prompt for e in task.examples("test", 50, seed=7)} <= test
    assert [e.prompt for e in task.examples("test", 5)] == [e.prompt for e in get_task("arith").examples("test", 5)]


def test_arith_scoring():
    task = get_task("arith")
    ex = Example("23+45=", "68")
    assert task.score("68", ex) == 1.0
    assert task.score("23+45=68", ex) == 1.0
    assert task.score("<answer>68</answer>", ex) == 1.0
    assert task.score("67", ex) == 0.0
    assert task.score("", ex) == 0.0
    assert task.score("<answer>67</answer> 68", ex) == 0.0  # the tag wins over the plain fallback
    neg = Example("12-45=", "-33")
    assert task.score("-33", neg) == 1.0 and task.score("33", neg) == 0.0


def test_reasoning_gym_task_scores_with_dataset_scorer():
    task = get_task("rg:chain_sum", {"max_terms": 2, "min_digits": 1, "max_digits": 2})
    test = task.examples("test", 20)
    train = task.examples("train", 200)
    assert not {e.prompt for e in train} & {e.prompt for e in task.examples("test", None)}
    ex = test[0]
    assert "<answer>" in ex.prompt
    assert task.score(f"I think <answer>{ex.answer}</answer>", ex) == 1.0
    assert task.score(f"{ex.answer}", ex) == 1.0  # plain fallback
    assert task.score(f"<answer>{int(ex.answer) + 1}</answer>", ex) == 0.0


def test_reasoning_gym_task_too_small_for_disjoint_splits_is_an_error():
    # 2 one-digit terms: ~200 distinct problems, nearly all of them in the 1000-item test split
    task = get_task("rg:chain_sum", {"max_terms": 2, "min_digits": 1, "max_digits": 1})
    assert len(task.examples("test", None)) == 1000
    with pytest.raises(RlcastError, match="distinct training problem"):
        task.examples("train", None)


def test_unknown_tasks_list_known_ones():
    with pytest.raises(RlcastError, match="known: arith"):
        get_task("gsm9k")
    with pytest.raises(RlcastError, match="chain_sum"):
        get_task("rg:no_such_dataset")
    with pytest.raises(RlcastError, match="--task-arg 'oops': expected KEY=VALUE"):
        parse_overrides(None, ["oops"], None, "--task-arg")
    assert parse_overrides(None, ["max_terms=3", "name=x"], None, "--task-arg") == {"max_terms": 3, "name": "x"}


def test_jsonl_task_math_verify_and_errors(tmp_path):
    good = tmp_path / "q.jsonl"
    good.write_text('{"q": "half?", "a": "\\\\frac{1}{2}"}\n\n{"q": "two?", "a": "2"}\n')
    task = get_task(f"jsonl:{good}", {"question_field": "q", "answer_field": "a"})
    half = next(e for e in task.examples("test", None) if e.prompt == "half?")
    two = next(e for e in task.examples("test", None) if e.prompt == "two?")
    assert task.score("The answer is $\\boxed{0.5}$", half) == 1.0
    assert task.score("<answer>1/3</answer>", half) == 0.0
    assert task.score("so 2.0", two) == 1.0  # numeric fallback or math-verify, either way right
    assert task.score("so 3", two) == 0.0

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "1"}\n{"question": "b"}\n')
    with pytest.raises(RlcastError, match=r"bad.jsonl:2: missing field 'answer'"):
        get_task(f"jsonl:{bad}")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(RlcastError, match="empty dataset"):
        get_task(f"jsonl:{empty}")


def test_math_verify_works_off_the_main_thread():
    results = {}

    def work():
        try:
            results["right"] = math_equal("\\frac{1}{2}", "$\\boxed{\\frac{2}{4}}$")
            results["wrong"] = math_equal("\\frac{1}{2}", "$\\boxed{3}$")
        except Exception as err:  # pragma: no cover - the failure this test guards against
            results["error"] = repr(err)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert results == {"right": True, "wrong": False}


def test_wilson_interval():
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert wilson(0, 10)[0] == 0.0


def test_load_model_errors(tmp_path, tiny_model):
    base = tiny_model
    no_weights = tmp_path / "no_weights"
    shutil.copytree(base, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(RlcastError, match="no weights"):
        load_model(no_weights)
    no_tok = tmp_path / "no_tok"
    shutil.copytree(base, no_tok, ignore=shutil.ignore_patterns("tokenizer*"))
    with pytest.raises(RlcastError, match="no tokenizer"):
        load_model(no_tok)
    with pytest.raises(RlcastError, match="not a model folder"):
        load_model(tmp_path / "missing")


@pytest.mark.slow
def test_evaluate_testbed_greedy_and_sampled(tiny_model):
    base = tiny_model
    recorded = json.loads((base / "testbed.json").read_text())
    model, tok = load_model(base)
    greedy = evaluate(model, "arith", n_prompts=recorded["eval_prompts"], tokenizer=tok, progress=False)
    # the same weights, prompts and greedy decoding give the accuracy recorded when the asset was built
    assert greedy.accuracy == pytest.approx(recorded["greedy_accuracy"], abs=0.01)
    assert greedy.ci_low < greedy.accuracy < greedy.ci_high
    assert len(greedy.details) == greedy.n_prompts

    a = evaluate(model, "arith", n_prompts=16, samples=4, seed=3, tokenizer=tok, progress=False)
    b = evaluate(model, "arith", n_prompts=16, samples=4, seed=3, tokenizer=tok, progress=False)
    assert [d["completion"] for d in a.details] == [d["completion"] for d in b.details]
    assert len(a.details) == 64 and a.samples == 4
    assert 0.0 <= a.ci_low <= a.accuracy <= a.ci_high <= 1.0
    with pytest.raises(RlcastError, match="tokenizer"):
        evaluate(model, "arith", n_prompts=4, progress=False)


def test_cli_eval_writes_json(tmp_path):
    from typer.testing import CliRunner

    from rlcast.apps.cli import app

    data = tmp_path / "sums.jsonl"
    data.write_text('{"question": "12+30=", "answer": "42"}\n{"question": "50-8=", "answer": "42"}\n')
    out = tmp_path / "res" / "eval.json"
    result = CliRunner().invoke(app, ["eval", "testbed", "--task", f"jsonl:{data}", "-n", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["n_prompts"] == 2 and len(saved["details"]) == 2 and saved["task"] == f"jsonl:{data}"
    bad = CliRunner().invoke(app, ["eval", "testbed", "--task", "nope"])  # a usage error, while parsing
    shown = " ".join(bad.output.replace("│", " ").split())  # the message as one line, out of rich's wrapped box
    assert bad.exit_code == 2 and "'nope' is not arith, rg:<reasoning-gym dataset> or jsonl:<path>" in shown


@pytest.mark.slow
def test_shared_prompt_prefix_is_encoded_once_with_the_same_completions(tmp_path, monkeypatch, tiny_model):
    """Greedy batches whose prompts share a long prefix (a chat template's system turn) encode it once; the
    completions are those of the plain batched generation."""
    import rlcast.evaluation.generation as generation

    lines = [json.dumps({"question": f"Add the two numbers and give only the digits of the sum: {a}+{b}=",
                         "answer": str(a + b)}) for a, b in [(12, 30), (5, 7), (48, 51), (3, 96), (60, 6), (77, 1)]]
    data = tmp_path / "sums.jsonl"
    data.write_text("\n".join(lines) + "\n")
    model, tok = load_model(tiny_model)
    task = get_task(f"jsonl:{data}")
    used = []
    original = generation._with_shared_prefix
    monkeypatch.setattr(generation, "_with_shared_prefix", lambda *a: used.append(original(*a)) or used[-1])
    shared = evaluate(model, task, n_prompts=None, tokenizer=tok, max_new_tokens=6, progress=False)
    assert used and used[0] is not None and used[0]["past_key_values"].get_seq_length() >= 16
    monkeypatch.setattr(generation, "MIN_SHARED_PREFIX", 10**9)
    plain = evaluate(model, task, n_prompts=None, tokenizer=tok, max_new_tokens=6, progress=False)
    assert [d["completion"] for d in shared.details] == [d["completion"] for d in plain.details]
    assert len(shared.details) == 6

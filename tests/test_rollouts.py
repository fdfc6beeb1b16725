"""Selective rollouts (GRESO), adaptive generations (Reinforce-Ada) and M2PO's trust region inside TRL's GRPOTrainer
(issue 31 items 1 and 2): what is skipped comes back, skipping off changes nothing, run.json's completions are what
the reward function scored, adaptive rounds stop at signal, bad settings are one line, M2PO masks the right tokens."""

import dataclasses
import json
import math
import types
from collections import defaultdict

import pytest
import torch
from safetensors.torch import load_file
from trl import GRPOTrainer

from rlcast.errors import RlcastError
from rlcast.evaluation.tasks import get_task
from rlcast.evaluation.generation import load_model
from rlcast.training import train as train_module
from rlcast.training.rollouts import AdaptiveRollouts, SkipRollouts, m2po_mask, make_rollouts, prompt_key
from rlcast.training.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("torch_single_thread")

IMPOSSIBLE = "100000"  # an answer 4 completion tokens cannot hold: its group always scores 0


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    """Four arith prompts as a JSONL task, one of them with an answer no completion reaches."""
    examples = get_task("arith", None).examples("train", 3, seed=0)
    rows = [{"question": e.prompt, "answer": e.answer} for e in examples]
    rows.append({"question": "11+11=", "answer": IMPOSSIBLE})
    path = tmp_path_factory.mktemp("task") / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(questions, steps=8) -> TrainConfig:
    # 2 prompts x 4 completions per step: an epoch of the 4 prompts every 2 steps
    return TrainConfig(task=f"jsonl:{questions}", eval_prompts=4, batch_size=8, num_generations=4, steps=steps,
                       save_every=steps, max_completion_length=4)


class Scored:
    """Counts what TRL's reward scoring (one call of the run's reward function each) is handed."""

    def __init__(self, monkeypatch):
        self.completions = self.tokens = self.calls = 0
        original = GRPOTrainer._calculate_rewards

        def counting(trainer, inputs, prompts, completions, completion_ids_list):
            if trainer.model.training:
                self.calls += 1
                self.completions += len(completions)
                self.tokens += sum(len(ids) for ids in completion_ids_list)
            return original(trainer, inputs, prompts, completions, completion_ids_list)

        monkeypatch.setattr(GRPOTrainer, "_calculate_rewards", counting)


class RecordingSkip(SkipRollouts):
    """SkipRollouts that keeps every batch's decisions: [{prompt key: skipped}]."""

    def __post_init__(self):
        super().__post_init__()
        self.decisions = []

    def observe(self, keys, skipped, zero):
        self.decisions.append(dict(zip(keys, skipped)))
        return super().observe(keys, skipped, zero)


def last_entry(run) -> dict:
    return json.loads((run / "run.json").read_text())["checkpoints"][-1]


def logged(run, step, key) -> list:
    state = json.loads((run / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return [h[key] for h in state["log_history"] if key in h]


# --- skip ---

def test_a_prompt_whose_group_always_scores_the_same_is_skipped_and_still_revisited():
    skip = SkipRollouts(target=0.5, seed=3)
    keys = ["always-the-same"] + [f"signal-{i}" for i in range(7)]
    epochs = []  # per epoch: was the always-the-same prompt skipped
    for _ in range(300):
        skipped = skip.select(keys)
        skip.observe(keys, skipped, {k: k == keys[0] for k, s in zip(keys, skipped) if not s})
        skip.batches_ += 1
        assert not any(skipped[1:])  # a prompt with signal is never skipped
        epochs.append(skipped[0])
    in_a_row = [len(r) for r in "".join("s" if s else "g" for s in epochs).split("g") if r]
    assert sum(epochs) > 200  # skipped most epochs ...
    assert max(in_a_row) <= skip.max_skips and not all(epochs[-50:])  # ... and never starved
    assert skip.explore_ == skip.min_explore  # one prompt in eight cannot reach the 0.5 target: p went down


def on_a_fake_trainer(skip: SkipRollouts, dataset=None) -> list:
    """Bind `skip` to a stand-in for TRL's trainer (groups of 2, one generation batch per step) whose generation
    scores each group one failure and one success; returns the list each batch's generated prompts go to."""
    generated = []

    def generate_and_score(rows):
        generated.append([r["prompt"] for r in rows])
        skip.rewards_ = torch.tensor([[0.0], [1.0]] * (len(rows) // 2))
        return {"advantages": torch.tensor([-1.0, 1.0] * (len(rows) // 2))}

    skip.original_ = {"_generate_and_score_completions": generate_and_score}
    skip.trainer_ = types.SimpleNamespace(args=types.SimpleNamespace(steps_per_generation=1), num_generations=2,
                                          reward_weights=torch.ones(1), _metrics={"train": defaultdict(list)},
                                          train_dataset=dataset)
    return generated


@pytest.mark.parametrize("rescale", [True, False])
def test_a_shrunk_batch_keeps_the_step_size_of_the_full_one(rescale):
    """Two of four prompts skipped: with rescale the advantages TRL trains on are halved, so the loss's average over
    the rows present weighs the informative groups as the full batch (zero-variance groups, zero advantage) did."""
    skip = SkipRollouts(explore=0.0, min_explore=0.0, rescale=rescale)
    groups = [[{"prompt": f"p{i}"}] * 2 for i in range(4)]
    skip.history_ = {prompt_key("p0"): [3, 0], prompt_key("p1"): [3, 0]}  # zero-variance 3 epochs, p = 0: skipped
    generated = on_a_fake_trainer(skip)
    output = skip._generation_batch(groups)
    assert generated == [["p2", "p2", "p3", "p3"]]
    assert output["advantages"].tolist() == ([-0.5, 0.5] * 2 if rescale else [-1.0, 1.0] * 2)


def test_refill_replaces_each_skipped_prompt_by_one_that_passes_its_own_skip_draw():
    """Two of four prompts skipped: two train-set prompts take their places (a candidate predicted zero-variance is
    skipped too, and counted), the batch stays whole, so nothing is rescaled."""
    skip = SkipRollouts(explore=0.0, min_explore=0.0, refill=True, seed=5)
    groups = [[{"prompt": f"p{i}"}] * 2 for i in range(4)]
    zero = {prompt_key(p): [3, 0] for p in ("p0", "p1", "q0")}  # zero-variance 3 epochs, p = 0: always skipped
    skip.history_ = dict(zero)
    dataset = [{"prompt": p, "idx": i} for i, p in enumerate(["p0", "p2", "q0", "q1", "q2", "q3"])]
    generated = on_a_fake_trainer(skip, dataset)
    recorded = []
    observe = skip.observe
    skip.observe = lambda keys, skipped, zero_: recorded.append((keys, skipped)) or observe(keys, skipped, zero_)
    output = skip._generation_batch(groups)
    prompts = generated[0]
    assert len(prompts) == 8 and prompts[:4] == ["p2", "p2", "p3", "p3"]  # kept, then two replacements
    replacements = prompts[4::2]
    assert set(replacements) <= {"q1", "q2", "q3"} and len(set(replacements)) == 2 and prompts[4] == prompts[5]
    assert output["advantages"].tolist() == [-1.0, 1.0] * 4  # a whole batch: not rescaled
    keys, skipped = recorded[0]
    assert keys[:4] == [prompt_key(f"p{i}") for i in range(4)] and skipped[:4] == [True, True, False, False]
    assert all(s == (k == prompt_key("q0")) for k, s in zip(keys[4:], skipped[4:]))  # q0 drawn: skipped
    assert skip.trainer_._metrics["train"]["rollouts/refilled"] == [0.5]
    # no candidate passes: the skipped prompts come back, the batch is whole again
    skip.batches_, skip.history_ = 1, dict(zero)
    skip.trainer_.train_dataset = [{"prompt": "q0"}]
    skip._generation_batch(groups)
    assert sorted(generated[1]) == sorted(p for p in ("p0", "p1", "p2", "p3") for _ in range(2))


def test_rescale_is_a_checked_setting():
    with pytest.raises(RlcastError, match="rescale must be true or false"):
        SkipRollouts(rescale="yes")
    assert make_rollouts("skip", ["rescale=false"]).rescale is False


@pytest.mark.slow
def test_skipping_in_a_run_skips_the_zero_variance_prompt_and_revisits_it(questions, tmp_path, monkeypatch):
    scored = Scored(monkeypatch)
    skip = RecordingSkip(explore=0.0, min_explore=0.0, step=0.0, max_skips=1)  # skip every time it may
    run = train(tmp_path / "skip", config(questions), callbacks=[skip], progress=False)
    key = prompt_key(next(d for d in map(json.loads, questions.read_text().splitlines())
                          if d["answer"] == IMPOSSIBLE)["question"])
    seen = [d[key] for d in skip.decisions if key in d]  # True: skipped that epoch
    assert True in seen and False in seen[seen.index(True):]  # skipped, then generated again
    assert not any(a and b for a, b in zip(seen, seen[1:]))  # max_skips=1: never two epochs in a row
    entry = last_entry(run)
    assert entry["completions"] == scored.completions < 8 * 8  # what the reward function scored: fewer than plain
    assert entry["tokens"] == scored.tokens and entry["generation_batches"] == 8
    rates = logged(run, 8, "rollouts/skip_rate")
    assert rates and max(rates) > 0 and logged(run, 8, "rollouts/completions")


@pytest.mark.slow
def test_refill_in_a_run_keeps_the_plain_completions_per_batch(questions, tmp_path, monkeypatch):
    scored = Scored(monkeypatch)
    skip = RecordingSkip(explore=0.0, min_explore=0.0, step=0.0, max_skips=1, refill=True)
    run = train(tmp_path / "refill", config(questions), callbacks=[skip], progress=False)
    assert any(any(d.values()) for d in skip.decisions)  # the impossible prompt was skipped ...
    assert last_entry(run)["completions"] == scored.completions == 8 * 8  # ... and replaced: plain's completions
    assert max(logged(run, 8, "rollouts/refilled")) > 0


@pytest.mark.slow
def test_with_skipping_off_the_run_is_bit_identical_to_the_plain_one(questions, tmp_path, monkeypatch):
    scored = Scored(monkeypatch)
    plain = train(tmp_path / "plain", config(questions, steps=6), progress=False)
    plain_scored = (scored.completions, scored.tokens)
    off = train(tmp_path / "off", config(questions, steps=6), callbacks=[SkipRollouts(target=0)], progress=False)
    a, b = (load_file(r / "checkpoint-6" / "model.safetensors") for r in (plain, off))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert last_entry(plain) == last_entry(off)
    assert last_entry(plain)["completions"] == plain_scored[0] == 6 * 8  # a plain run records them too
    assert last_entry(plain)["tokens"] == plain_scored[1]


@pytest.mark.slow
def test_resume_keeps_the_counts_and_the_skip_history(questions, tmp_path):
    def run(out, steps, resume=False):
        cfg = dataclasses.replace(config(questions, steps=steps), save_every=4)
        return train(out, cfg, callbacks=[SkipRollouts(explore=0.2, seed=1)], resume=resume, progress=False)

    straight = run(tmp_path / "straight", 12)
    resumed = run(run(tmp_path / "half", 8), 12, resume=True)
    counts = ("completions", "tokens", "generation_batches")
    assert {k: last_entry(resumed)[k] for k in counts} == {k: last_entry(straight)[k] for k in counts}
    assert last_entry(straight)["completions"] < 12 * 8  # prompts were skipped after the resume point too


# --- adaptive ---

def test_adaptive_stops_a_group_once_it_has_signal():
    """Three prompts, scripted rewards: A gains signal in its second round, B has it at once, C never (budget)."""
    script = {"A": [0, 0, 0, 0, 1, 0, 0, 0], "B": [1, 0, 1, 1], "C": [0] * 12}
    ada = AdaptiveRollouts(round_size=4, budget=12)
    generated = {p: 0 for p in script}
    trainer = types.SimpleNamespace(num_generations=4, model=types.SimpleNamespace(training=True),
                                    _metrics={"train": defaultdict(list)},
                                    reward_weights=torch.ones(1))

    def generate(prompts):
        ids = []  # each completion is its number (from 1) in its prompt's pool
        for p in prompts:
            generated[p] += 1
            ids.append([generated[p]])
        return [[0]] * len(prompts), ids, None, [str(i) for i in ids], None, {}, None, []

    def rewards(rows, prompts, completions, ids):
        return torch.tensor([[float(script[p][i[0] - 1])] for p, i in zip(prompts, ids)])

    ada.trainer_, ada.original_ = trainer, {"_generate": generate, "_calculate_rewards": rewards}
    prompts = [p for p in "ABC" for _ in range(4)]
    ada.rows_ = [{"prompt": p} for p in prompts]
    _, ids, _, _, _, _, _, _ = ada._generate(prompts)
    assert generated == {"A": 8, "B": 4, "C": 12}  # A: 2 rounds, B: 1, C: until its budget
    chosen = {p: [script[p][i[0] - 1] for i in ids[k * 4:(k + 1) * 4]] for k, p in enumerate("ABC")}
    assert sorted(chosen["A"]) == [0, 0, 0, 1] and 1 in chosen["B"] and 0 in chosen["B"]  # the group has signal
    assert chosen["C"] == [0, 0, 0, 0]
    assert ada.pending_.tolist() == [[float(r)] for p in "ABC" for r in chosen[p]]  # scored once, reused
    assert ada.completions_ == 24 and trainer._metrics["train"]["rollouts/rounds"] == [3.0]
    assert ada.form_group([1, 1, 1, 1, 1, 0], 4) == [0, 1, 2, 5]  # balanced: half successes where possible


@pytest.mark.slow
def test_adaptive_run_counts_every_round(questions, tmp_path, monkeypatch):
    scored = Scored(monkeypatch)
    ada = AdaptiveRollouts()
    run = train(tmp_path / "ada", config(questions, steps=4), callbacks=[ada], progress=False)
    entry = last_entry(run)
    assert entry["completions"] == scored.completions == ada.completions_ > 4 * 8  # every round, the impossible one
    assert entry["tokens"] == scored.tokens and entry["generation_batches"] == 4  # rounds are no new batch
    assert scored.calls > 4


# --- settings ---

@pytest.mark.parametrize("args, words", [
    (["--rollouts", "skip", "--rollout", "target=2"], ["target", "<= 0.99"]),
    (["--rollouts", "skip", "--rollout", "target=nan"], ["target", "finite"]),
    (["--rollouts", "skip", "--rollout", "max_skips=0"], ["max_skips", ">= 1"]),
    (["--rollouts", "skip", "--rollout", "explore=0.1", "--rollout", "min_explore=0.5"], ["min_explore"]),
    (["--rollouts", "adaptive", "--rollout", "budget=-4"], ["budget", ">= 1"]),
    (["--rollouts", "adaptive", "--rollout", "budget=4", "--hp", "num_generations=8"],
     ["budget 4", ">= num_generations 8"]),
    (["--rollout", "target=0.5"], ["--rollout settings need --rollouts"]),
    (["--rollouts", "skip", "--algo", "rloo"], ["GRPO family", "rloo"]),
    (["--hp", "m2po_threshold=-1"], ["m2po_threshold", "> 0"]),
    (["--hp", "m2po_threshold=0.04", "--algo", "rloo"], ["m2po_threshold", "rloo"]),
])
def test_bad_rollout_values_are_one_line(run_cli, tmp_path, args, words):
    code, out, err = run_cli("train", "--out", tmp_path / "run", *args)
    message = err.strip()
    assert code == 1 and message.startswith("error:") and "\n" not in message, (code, err)
    assert all(w in message for w in words), message
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize("item, words", [("speed=3", "unknown key 'speed'"), ("target", "expected KEY=VALUE"),
                                         ("balance=maybe", "'maybe' is not true or false")])
def test_rollout_settings_of_the_wrong_key_or_type_are_usage_errors(run_cli, tmp_path, item, words):
    method = "adaptive" if item.startswith("balance") else "skip"
    code, out, err = run_cli("train", "--out", tmp_path / "run", "--rollouts", method, "--rollout", item)
    assert code == 2 and "Usage: " in err and "'--rollout'" in err and words in err, (code, err)
    assert not (tmp_path / "run").exists()


def test_an_adaptive_budget_must_hold_the_group():
    with pytest.raises(RlcastError, match="budget 2 must be a multiple of round_size 2 and >= num_generations 4"):
        make_rollouts("adaptive", ["round_size=2", "budget=2"]).check_group(4)
    with pytest.raises(RlcastError, match="budget 10 must be a multiple of round_size 4"):
        make_rollouts("adaptive", {"round_size": 4, "budget": 10}).check_group(4)
    assert make_rollouts("adaptive").sizes(8) == (8, 32)


# --- M2PO ---

def test_m2po_masks_the_largest_contributions_until_the_second_moment_is_below_the_threshold():
    log_ratio = torch.tensor([[0.01, -0.9, 0.02, 0.0], [0.5, -0.03, 0.04, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])  # the 7.0 is padding: not a token
    keep = m2po_mask(log_ratio, mask, 0.04)
    assert keep.tolist() == [[True, False, True, False], [False, True, True, False]]  # -0.9, then 0.5
    left = log_ratio[keep]
    assert left.pow(2).mean() <= 0.04
    assert torch.equal(m2po_mask(log_ratio, mask, 1.0), mask.bool())  # nothing above the threshold: all kept
    assert not m2po_mask(torch.full((1, 3), 2.0), torch.ones(1, 3), 0.04).any()  # every token above it


@pytest.fixture(scope="module")
def loss_inputs(tiny_model):
    """A planted batch for `_compute_loss`: 2 completions of 3 tokens, old log-probs near the policy's."""
    net, tokenizer = load_model(tiny_model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompt_ids = torch.tensor([[5, 6, 7], [5, 8, 7]])
    completion_ids = torch.tensor([[9, 10, 11], [12, 9, 10]])
    return net, tokenizer, {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids),
                            "completion_ids": completion_ids, "completion_mask": torch.ones_like(completion_ids),
                            "advantages": torch.tensor([1.0, -1.0]), "num_items_in_batch": torch.tensor(6)}


def loss(tmp_path, net, tokenizer, inputs, **hp):
    cfg = TrainConfig(steps=1, batch_size=2, num_generations=2, **hp).resolve(get_task("arith", None))
    trainer = train_module._trainer(cfg, tmp_path, net, tokenizer, get_task("arith", None), [])
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop
    value = trainer._compute_loss(trainer.model, inputs)
    return value, trainer


@pytest.mark.slow
def test_m2po_equals_the_plain_loss_when_nothing_exceeds_the_threshold_and_masks_a_planted_outlier(loss_inputs,
                                                                                                    tmp_path):
    net, tokenizer, inputs = loss_inputs
    with torch.no_grad():
        _, trainer = loss(tmp_path / "p", net, tokenizer, inputs)
        logps = trainer._get_per_token_logps_and_entropies(trainer.model, torch.cat([inputs["prompt_ids"],
                                                           inputs["completion_ids"]], 1), torch.ones(2, 6), 3)[0]
    near = dict(inputs, old_per_token_logps=logps + 0.01)  # ratios within the clip range, second moment 1e-4
    plain, _ = loss(tmp_path / "p1", net, tokenizer, near)
    m2po, m2 = loss(tmp_path / "m", net, tokenizer, near, m2po_threshold=0.04)
    assert torch.equal(plain, m2po) and m2._metrics["train"]["m2po/masked"] == [0.0]
    outlier = logps + 0.01
    outlier[1, 2] -= 3.0  # one token 3 nats off: (log r)^2 ~ 9 alone
    m2po, m2 = loss(tmp_path / "m2", net, tokenizer, dict(inputs, old_per_token_logps=outlier), m2po_threshold=0.04)
    assert m2._metrics["train"]["m2po/masked"] == [pytest.approx(1 / 6)]
    fixed = logps + 0.01
    fixed[1, 2] = logps[1, 2]  # the masked token's ratio is exactly 1 (no gradient); the others as planted
    unclipped, _ = loss(tmp_path / "m3", net, tokenizer, dict(inputs, old_per_token_logps=fixed))
    clipped, _ = loss(tmp_path / "p2", net, tokenizer, dict(inputs, old_per_token_logps=outlier))
    assert torch.allclose(m2po, unclipped, atol=1e-6) and not math.isclose(m2po.item(), clipped.item())


def test_m2po_threshold_is_a_checked_train_config_field():
    assert TrainConfig(m2po_threshold=0.04).m2po_threshold == 0.04
    for bad, words in ((0.0, "> 0"), (math.inf, "finite")):
        with pytest.raises(RlcastError, match=words):
            TrainConfig(m2po_threshold=bad)
    with pytest.raises(RlcastError, match="not algo grpo / loss_type cispo"):
        TrainConfig(m2po_threshold=0.04, loss_type="cispo")

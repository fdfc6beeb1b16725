"""AccelerateCallback inside real TRL GRPO (and RLOO) runs on a tiny character-level Llama (hidden 32, one layer).

The GRPO reward is "fraction of digits in the completion", which a random model learns within a few steps, so the
weights really move and the extrapolators have a trajectory to extend.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers.trainer
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from rlcast.errors import RlcastError
from rlcast.evaluation.tasks import get_task
from rlcast.extrapolation import METHODS, WeightLinear, register
from rlcast.training.accelerate import AccelerateCallback, AccelerateConfig, CheckSet, backtest
from rlcast.training.accelerate.jumps import apply, restore
from rlcast.training.accelerate.snapshots import SnapshotWindow
from rlcast.training.testbed import char_tokenizer

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _digits(completions, **kwargs):
    return [sum(c.isdigit() for c in s) / max(1, len(s)) for s in completions]


def _model(lora: bool = False):
    tok = char_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                                                 init_lora_weights=True))
    return model, tok


def _trainer(out, callbacks, steps=12, lora=False, save_steps=500, algo="grpo", logging_steps=100):
    model, tok = _model(lora)
    if algo == "rloo":  # RLOOTrainer reads the generation config from the model's folder
        model.save_pretrained(out.parent / "tiny-base")
        model = type(model).from_pretrained(out.parent / "tiny-base")
    rows = [{"prompt": e.prompt} for e in get_task("arith").examples("train", 128, seed=0)]
    config, trainer = (GRPOConfig, GRPOTrainer) if algo == "grpo" else (RLOOConfig, RLOOTrainer)
    cfg = config(output_dir=str(out), per_device_train_batch_size=8, num_generations=4, max_completion_length=4,
                     max_steps=steps, learning_rate=2e-2 if lora else 1e-2, lr_scheduler_type="constant",
                     logging_steps=logging_steps, save_steps=save_steps, report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    return trainer(model=model, reward_funcs=_digits, args=cfg, train_dataset=Dataset.from_list(rows),
                       processing_class=tok, callbacks=list(callbacks))


def _config(**kw) -> AccelerateConfig:
    params = dict(method="weight-linear", every=4, horizon=3, window=3, eval_prompts=8, tolerance=1.0, verbose=False,
                  max_backtest_error=None)
    return AccelerateConfig(**(params | kw))


def _callback(**kw):
    return AccelerateCallback(_config(**kw))


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class Recording(AccelerateCallback):
    """Records weights and Adam moments around every jump attempt."""

    def jump(self, step, model, tokenizer, optimizer=None):
        inner = optimizer.optimizer
        moments = lambda: {id(p): {k: v.clone() for k, v in inner.state[p].items()}
                           for p in model.parameters() if p in inner.state}
        self.before = getattr(self, "before", []) + [(_weights(model), moments())]
        entry = super().jump(step, model, tokenizer, optimizer)
        self.after = getattr(self, "after", []) + [(_weights(model), moments())]
        return entry


def test_misconfiguration_is_an_error_at_construction():
    with pytest.raises(RlcastError, match="horizon must be >= 1"):
        AccelerateConfig(horizon=0)
    with pytest.raises(RlcastError, match="window 1 is shorter than method relex needs"):
        AccelerateConfig(method="relex", window=1)
    with pytest.raises(RlcastError, match="window 3 is shorter than method relex needs .4 snapshots"):
        AccelerateConfig(method="relex", window=3)  # back-tested by default: one snapshot more
    with pytest.raises(RlcastError, match="window 1 is shorter than auto needs"):
        AccelerateConfig(method="auto", window=1)
    with pytest.raises(RlcastError, match="alpharl needs an evaluated accuracy"):
        AccelerateConfig(method="alpharl")
    with pytest.raises(RlcastError, match="unknown method"):
        AccelerateConfig(method="magic")
    with pytest.raises(RlcastError, match="optimizer_state"):
        AccelerateConfig(optimizer_state="rescale")
    with pytest.raises(RlcastError, match="neither a name nor an Extrapolator"):
        AccelerateConfig(method=object())
    # serialisable: the saved args rebuild the same callback (transformers' restore_callback_states_from_checkpoint)
    cb = AccelerateCallback(AccelerateConfig(method="relex", every=6, window=4, task_args={"digits": 2}))
    args = json.loads(json.dumps(cb.state()["args"]))
    assert AccelerateCallback(**args).config == cb.config and cb.config.snapshot_interval == 2


@pytest.mark.slow
@pytest.mark.parametrize("algo,lora", [("grpo", False), ("grpo", True), ("rloo", False)])
def test_accelerated_rl_jumps_and_keeps_adam_moments(tmp_path, algo, lora):
    cb = Recording(_config())
    trainer = _trainer(tmp_path / "run", [cb], steps=9, lora=lora, algo=algo)
    trainer.train()
    kept = [j for j in cb.jumps if j["kept"]]
    assert [j["step"] for j in cb.jumps] == [4, 8] and len(kept) == 2
    assert cb.offset == 3 + 4  # horizon 3 kept, then grown by 1.5x to 4 (rounded)
    # the jump is the weight-linear prediction: W0 + (T/t) (W_t - W0) on every trainable tensor, nothing else
    base = {n: t for n, t in _model(lora)[0].named_parameters() if t.requires_grad}
    weights_before, moments_before = cb.before[0]
    weights_after, moments_after = cb.after[0]
    assert weights_before.keys() == base.keys()
    if lora:
        assert all("lora_" in n for n in base)
    for name, w in weights_before.items():
        expected = base[name].detach() + (7 / 4) * (w - base[name].detach())
        torch.testing.assert_close(weights_after[name], expected, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(weights_after[n], weights_before[n]) for n in weights_before)
    # optimizer_state="keep": Adam's moments and step counts are untouched by the jump
    assert moments_before.keys() == moments_after.keys() and moments_before
    for key, state in moments_before.items():
        for k, v in state.items():
            assert torch.equal(v, moments_after[key][k])
    logged = [h for h in trainer.state.log_history if "accelerate/kept" in h]
    assert [h["step"] for h in logged] == [4, 8]  # one entry per attempt, with TRL's own metrics of that step
    assert logged[0]["accelerate/kept"] == 1.0 and logged[0]["accelerate/horizon"] == 3 and "loss" in logged[0]
    assert "accelerate/reward_before" in logged[0] and "accelerate/reward_after" in logged[0]
    assert not (tmp_path / "run" / ".rlcast-accelerate").exists()  # snapshots cleaned at the end
    summary = cb.summary()
    assert summary["kept"] == 2 and summary["steps_gained"] == 7 and summary["cost_step_equivalents"] > 0


@pytest.mark.slow
def test_optimizer_reset_clears_adam_moments_after_a_kept_jump(tmp_path):
    cb = Recording(_config(optimizer_state="reset"))
    _trainer(tmp_path / "run", [cb], steps=5).train()
    assert cb.jumps[0]["kept"]
    assert cb.before[0][1] and not cb.after[0][1]


class BadPrediction(AccelerateCallback):
    """Injects broken jumps: NaN weights, then finite garbage with a reward drop, then a collapse within tolerance."""

    def predict(self, method, target):
        bad = float("nan") if len(self.jumps) == 0 else 50.0
        for name, tensor in super().predict(method, target):
            yield name, torch.full_like(tensor, bad)

    def _reward(self, model, tokenizer):
        real = super()._reward(model, tokenizer)  # the check's generation really runs (and must not touch RNG)
        jumped = next(model.parameters()).abs().max() >= 50
        if len(self.jumps) == 2:  # a drop of 0.05 (within tolerance) that loses 60 % of the reward: a collapse
            return torch.full_like(real, 0.03 if jumped else 0.08)
        return real * 0.0 if jumped else torch.ones_like(real)


@pytest.mark.slow
def test_forced_rollbacks_restore_the_exact_run(tmp_path):
    cb = BadPrediction(_config(tolerance=0.05))
    accelerated = _trainer(tmp_path / "acc", [cb], steps=13)
    accelerated.train()
    assert [j["kept"] for j in cb.jumps] == [False, False, False]
    assert all(j["rolled_back"] for j in cb.jumps)
    assert cb.jumps[0]["reason"] == "rejected: lm_head.weight has non-finite weights (in torch.float32)"
    assert cb.jumps[0]["rejected"] and not any(j["rejected"] for j in cb.jumps[1:])
    assert "dropped" in cb.jumps[1]["reason"] and cb.jumps[1]["reward_after"] == 0.0
    assert "collapsed (0.0800 -> 0.0300)" in cb.jumps[2]["reason"]
    assert cb.offset == 0 and cb.current_horizon == 1  # 3 -> 1 -> 1 -> 1 after the rollbacks
    _same_as_plain(tmp_path, accelerated, steps=13)


def _same_as_plain(tmp_path, accelerated, steps):
    """A rolled-back jump leaves training exactly as if it had never been tried: the same weights, bit for bit."""
    plain = _trainer(tmp_path / "plain", [], steps=steps)
    plain.train()
    for (name, a), (_, b) in zip(accelerated.model.named_parameters(), plain.model.named_parameters()):
        assert torch.equal(a, b), name


class FailingApply(Recording):
    """The prediction stream raises after two tensors have been written into the model: a half-applied jump."""

    def predict(self, method, target):
        for i, item in enumerate(super().predict(method, target)):
            if i == 2:
                raise RuntimeError("injected failure")
            yield item


@pytest.mark.slow
def test_an_exception_inside_apply_restores_the_exact_weights_and_training_goes_on(tmp_path):
    cb = FailingApply(_config())
    accelerated = _trainer(tmp_path / "acc", [cb], steps=9)
    accelerated.train()
    assert accelerated.state.global_step == 9
    assert [j["reason"] for j in cb.jumps] == ["failed: RuntimeError: injected failure"] * 2
    assert all(j["rolled_back"] and not j["kept"] for j in cb.jumps)
    for (before, _), (after, _) in zip(cb.before, cb.after):
        assert all(torch.equal(before[n], after[n]) for n in before)
    logged = [h for h in accelerated.state.log_history if "accelerate/rolled_back" in h]
    assert [h["accelerate/rolled_back"] for h in logged] == [1.0, 1.0]
    _same_as_plain(tmp_path, accelerated, steps=9)


class Faulty(WeightLinear):
    """A user's extrapolator gone wrong: the true weight-linear jump, with one fault at its fourth tensor (the first
    three, in the snapshot's sorted order, are in the model by then: a half-applied jump if nothing catches it)."""

    def __init__(self, fault: str = "shape", selection: str = "all", progress: bool = False):
        super().__init__(selection, progress)
        self.fault = fault

    def predict(self, step, backend=None):
        stream = list(super().predict(step))
        (first, first_tensor), (name, tensor) = stream[0], stream[3]
        bad = {"shape": [(name, tensor[:1])],  # (1, 32) for (16, 32): broadcastable
               "name": [(name + ".extra", tensor)],
               "dtype": [(name, tensor.round().long())],
               "inf": [(name, tensor.index_fill(1, torch.tensor([3]), float("inf")))],
               "array": [(name, tensor.numpy())],
               "twice": [(first, first_tensor), (name, tensor * float("nan"))],  # then a failure: restore from where?
               }
        if self.fault == "raise":
            raise RuntimeError("no prediction [/oops]")  # rich markup in a message must not crash the printed line
        return iter(stream[:3] + bad[self.fault] + stream[4:])


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """The weights of a plain 9-step run, to compare rejected runs with bit for bit."""
    trainer = _trainer(tmp_path_factory.mktemp("plain") / "run", [], steps=9)
    trainer.train()
    return _weights(trainer.model)


@pytest.fixture
def registered_faulty():
    register("faulty")(Faulty)
    yield "faulty"
    del METHODS["faulty"]
    Faulty.name = ""


DOWN = "model.layers.0.mlp.down_proj.weight"


@pytest.mark.slow
@pytest.mark.parametrize("fault,reason", [
    ("shape", f"rejected: {DOWN} predicted with shape (1, 64), the parameter has (32, 64)"),
    ("name", f"rejected: {DOWN}.extra is not a trainable parameter"),
    ("dtype", f"rejected: {DOWN} predicted as torch.int64, not a floating-point tensor"),
    ("inf", f"rejected: {DOWN} has non-finite weights (in torch.float32)"),
    ("array", f"rejected: {DOWN} predicted as a ndarray, not a tensor"),
    ("twice", "rejected: lm_head.weight predicted twice"),
    ("raise", "failed: RuntimeError: no prediction [/oops]"),
    ("registered", f"rejected: {DOWN} predicted with shape (1, 64), the parameter has (32, 64)"),
])
def test_a_faulty_user_extrapolator_never_changes_the_run(tmp_path, capsys, plain_run, registered_faulty, fault,
                                                           reason):
    method = registered_faulty if fault == "registered" else Faulty(fault)
    cb = AccelerateCallback(_config(method=method, verbose=True))  # tolerance 1: the check would keep any jump
    trainer = _trainer(tmp_path / "run", [cb], steps=9)
    trainer.train()
    assert trainer.state.global_step == 9
    assert [j["reason"] for j in cb.jumps] == [reason] * 2
    assert all(j["rolled_back"] and not j["kept"] for j in cb.jumps)
    key = "accelerate/failed" if fault == "raise" else "accelerate/rejected"
    logged = [h for h in trainer.state.log_history if "accelerate/kept" in h]
    assert [(h[key], h["accelerate/kept"], h["accelerate/rolled_back"]) for h in logged] == [(1.0, 0.0, 1.0)] * 2
    printed = capsys.readouterr().err
    assert printed.count(f"rolled back ({reason})") == 2
    for name, weight in _weights(trainer.model).items():  # as if no jump had been tried: bit for bit
        assert torch.equal(weight, plain_run[name]), name


def test_a_prediction_is_checked_in_the_parameters_dtype_and_restored_bit_for_bit():
    params = {"a": torch.nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.float16).reshape(2, 3)),
              "b": torch.nn.Parameter(torch.full((3,), 0.1))}
    before = {n: p.detach().clone() for n, p in params.items()}
    backup = {}
    # 7e4 is finite in float32 and inf in float16: the check must look at the value the parameter would hold
    stream = [("b", torch.full((3,), 2.0)), ("a", torch.full((2, 3), 7e4)), ("b", torch.full((3,), 3.0))]
    assert apply(iter(stream), params, backup) == "a has non-finite weights (in torch.float16)"
    assert torch.equal(params["b"], torch.full((3,), 2.0)) and torch.equal(params["a"], before["a"])
    assert set(backup) == {"b"} and torch.equal(backup["b"], before["b"])  # nothing after the bad tensor
    restore(params, backup)
    assert all(torch.equal(params[n], before[n]) for n in params)


def test_auto_picks_the_best_back_test_survives_failures_and_skips_useless_jumps(monkeypatch):
    config = _config(method="auto", methods=["weight-linear", "alpharl-step", "relex"], window=4)
    methods = {m: m for m in config.candidates}
    window = SnapshotWindow(4)
    window.steps = [[s, s] for s in range(4)]
    errors = {"weight-linear": 0.8, "alpharl-step": ValueError("no trajectory"), "relex": 0.4}

    def backtest_error(method, window, method_params):
        if isinstance(errors[method], Exception):
            raise errors[method]
        return errors[method]

    monkeypatch.setattr(backtest, "backtest_error", backtest_error)
    entry = {"backtest": {}, "backtest_failed": {}, "backtest_error": None, "reason": ""}
    assert backtest.choose(methods, window, config, entry) == "relex" and entry["backtest_error"] == 0.4
    assert entry["backtest"] == {"weight-linear": 0.8, "relex": 0.4}
    assert entry["backtest_failed"] == {"alpharl-step": "ValueError: no trajectory"}
    config = _config(method="auto", window=4, max_backtest_error=1.0)
    errors.update({"weight-linear": 1.3, "relex": 1.0})  # no better than standing still
    assert backtest.choose(methods, window, config, entry) is None
    assert entry["reason"] == "best back-test error 1.000 (relex) >= max_backtest_error 1.0"
    errors.update({"weight-linear": TypeError("x"), "relex": KeyError("y")})
    assert backtest.choose(methods, window, config, entry) is None and entry["reason"] == "every back-test failed"


class Reporter(TrainerCallback):
    """Stands in for a report_to integration (wandb, tensorboard): records every logs dict when it receives it."""

    def __init__(self):
        self.sent = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.sent.append(dict(logs))


@pytest.mark.slow
def test_metrics_reach_report_to_loggers_and_log_history(tmp_path, monkeypatch):
    # registered exactly as report_to registers its integrations: by the Trainer, before the user's callbacks
    monkeypatch.setattr(transformers.trainer, "get_reporting_integration_callbacks", lambda report_to: [Reporter])
    user_method = WeightLinear()
    cb = AccelerateCallback(_config(method="auto", methods=[user_method, "relex"], window=4, every=6,
                                    snapshot_every=2, max_backtest_error=100.0))
    trainer = _trainer(tmp_path / "run", [cb], steps=7, logging_steps=5)
    cb.bind(trainer)  # ahead of the report_to integrations
    reporter = next(c for c in trainer.callback_handler.callbacks if isinstance(c, Reporter))
    trainer.train()
    assert len(cb.jumps) == 1 and cb.jumps[0]["step"] == 6
    entry = cb.jumps[0]
    assert set(entry["backtest"]) == {"weight-linear", "relex"}
    assert entry["method"] == min(entry["backtest"], key=entry["backtest"].get)  # auto: the best back-test
    assert not hasattr(user_method, "run_")  # the user's instance is copied before every fit, never fitted itself
    sent = [logs for logs in reporter.sent if "accelerate/horizon" in logs]
    assert len(sent) == 1 and "loss" in sent[0] and "reward" in sent[0]  # next to TRL's metrics, at the jump step
    assert sent[0]["accelerate/backtest/relex"] == entry["backtest"]["relex"]
    history = [h for h in trainer.state.log_history if "accelerate/horizon" in h]
    assert len(history) == 1 and history[0]["step"] == 6 and "reward" in history[0]
    assert [h["step"] for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h] == [5, 6]


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_resume_after_interruption_restores_the_callback_state(tmp_path):
    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 11:
                raise Interrupt

    out = tmp_path / "run"
    cb = _callback()
    with pytest.raises(Interrupt):
        _trainer(out, [cb, StopAt()], steps=13, save_steps=9).train()
    saved = json.loads((out / "checkpoint-9" / "trainer_state.json").read_text())["stateful_callbacks"]
    saved = saved["AccelerateCallback"]["attributes"]
    assert [j["step"] for j in saved["jumps"]] == [4, 8] and saved["offset"] == 7
    assert saved["snapshots"] == [[8, 15]]  # the jumped weights of step 8 (virtual 8 + 7) anchor the window
    snapshots = out / ".rlcast-accelerate"
    assert sorted(p.name for p in snapshots.iterdir()) == [".rlcast-output", "step-15", "step-17"]  # they survive
    # the interruption, in the folder the window created and marked (the only one it ever deletes)

    fresh = _callback()
    trainer = _trainer(out, [fresh], steps=13, save_steps=9)
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-9"))
    restored = next(c for c in trainer.callback_handler.callbacks if isinstance(c, AccelerateCallback))
    assert [j["step"] for j in restored.jumps] == [4, 8, 12]
    assert restored.jumps[2]["virtual_step"] == 12 + 7 and restored.jumps[2]["horizon"] == 6
    assert restored.offset == 7 + 6 and trainer.state.global_step == 13


def test_check_prompts_come_from_the_train_split_only():
    task = get_task("arith", {"ops": "+"})
    check = CheckSet(task, 500)
    test = {e.prompt for e in task.examples("test", None)}
    assert len({e.prompt for e in check.pool}) == 500 and not test & {e.prompt for e in check.pool}
    with pytest.raises(RlcastError, match="train split"):
        CheckSet(task, 10**6)

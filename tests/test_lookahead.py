"""Optimizer-side lookahead (SFPO, GXPO, the rank-1 boost) inside real TRL GRPO runs on a tiny character-level Llama.

The reward is "fraction of digits in the completion", which a random model learns within a few steps, so the
gradients are real and the repositions move the weights.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from typer.testing import CliRunner

from rlcast.apps.cli import app
from rlcast.errors import RlcastError
from rlcast.evaluation.tasks import get_task
from rlcast.training.lookahead import GXPO, SFPO, Rank1Boost, gxpo_point, gxpo_scale, sfpo_point, zscore
from rlcast.training.testbed import char_tokenizer
from rlcast.training.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class Digits:
    """The reward function; counts its calls (TRL calls it once per generation batch)."""

    __name__ = "digits"

    def __init__(self):
        self.calls = 0

    def __call__(self, completions, **kwargs):
        self.calls += 1
        return [sum(c.isdigit() for c in s) / max(1, len(s)) for s in completions]


def _trainer(out, callbacks, steps, num_iterations, max_grad_norm=1.0, reward=None):
    tok = char_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    rows = [{"prompt": e.prompt} for e in get_task("arith").examples("train", 128, seed=0)]
    args = GRPOConfig(output_dir=str(out), per_device_train_batch_size=8, num_generations=4, max_completion_length=4,
                      max_steps=steps, learning_rate=1e-2, lr_scheduler_type="constant", num_iterations=num_iterations,
                      max_grad_norm=max_grad_norm, logging_steps=100, save_strategy="no", report_to=[], use_cpu=True,
                      seed=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=reward or Digits(), args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tok, callbacks=list(callbacks))
    for callback in callbacks:  # the explicit handle on the trainer, as rlcast.training.train.train gives it
        if hasattr(callback, "bind"):
            callback.bind(trainer)
    return trainer


def _train(tmp_path, name, callbacks=(), steps=6, num_iterations=1, **kw) -> dict[str, torch.Tensor]:
    trainer = _trainer(tmp_path / name, callbacks, steps, num_iterations, **kw)
    trainer.train()
    assert trainer.state.global_step == steps
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_maths_on_hand_made_tensors():
    g0 = torch.tensor([1.0, 1.0, 1.0, 0.0, -1.0, 1.0, 1.0])
    g1 = torch.tensor([1.0, 0.5, -1.0, 1.0, 1.0, 10.0, -5.0])
    # r = 1: S_5 / S_2 = 5 / 2; r = 0.5: 1.9375 / 1.5; r = -1: S_2 = 0 -> 1; g0 = 0 -> 1; r = 10 -> 3 -> 121/4
    # clamped to K/2 + 1 = 3.5; r = -5 -> -2: S_5 = 11, S_2 = -1 -> -11 clamped to 1
    assert torch.allclose(gxpo_scale(g0, g1, 5), torch.tensor([2.5, 1.9375 / 1.5, 1, 1, 1, 3.5, 1]))
    assert torch.equal(gxpo_scale(g0, g1, 2), torch.ones(7))  # K = 2: no extrapolation at all
    torch.manual_seed(0)  # seeded: allclose's relative tolerance is tight for an element near zero
    theta0, theta2 = torch.randn(7), torch.randn(7)
    assert torch.equal(gxpo_point(theta0, theta2, g0, g1, 2, 1.0), theta2)
    assert torch.allclose(gxpo_point(theta0, theta2, g0, g1, 5, 0.5), theta0 + 0.5 * gxpo_scale(g0, g1, 5) *
                          (theta2 - theta0))
    theta = theta0 + 1e-3 * torch.randn(7)
    assert torch.equal(sfpo_point(theta0, theta, 1.0), theta)
    assert torch.allclose(sfpo_point(theta0, theta, 0.8), theta0 + 0.8 * (theta - theta0))
    # SFPO scores the newest value inside its window, GXPO against the window before it
    assert zscore([1.0, 2.0], 3.0, 3, include_value=True) == pytest.approx(1 / math.sqrt(2 / 3), rel=1e-6)
    assert zscore([1.0, 2.0], 3.0, 3, include_value=False) is None
    assert zscore([1.0, 2.0, 3.0], 4.0, 3, include_value=False) == pytest.approx(2 / math.sqrt(2 / 3), rel=1e-6)


def test_rank1_tracks_the_runs_top_direction():
    """One warm-started power iteration per batch finds the planted top direction of a slowly growing update."""
    torch.manual_seed(1)
    u, v = torch.nn.functional.normalize(torch.randn(12), dim=0), torch.nn.functional.normalize(torch.randn(9), dim=0)
    boost = Rank1Boost()
    for t in range(1, 6):
        update = t * torch.outer(u, v) + 0.2 * torch.randn(12, 9)
        U, V = boost._subspace("w", update)
    assert abs(float(U[:, 0] @ u)) > 0.98 and abs(float(V[:, 0] @ v)) > 0.98


@pytest.mark.slow
@pytest.mark.parametrize("plain_mu,method,identity", [
    (3, lambda: SFPO(K=2, alpha=1.0), lambda: SFPO(K=2, alpha=0.5)),
    (3, lambda: GXPO(K=2, alpha=1.0), lambda: GXPO(K=5, alpha=0.5)),
    (2, lambda: Rank1Boost(fast_steps=1, boost=1.0), lambda: Rank1Boost(fast_steps=1, boost=3.0)),
])
def test_each_method_reduces_exactly_to_plain_reuse(tmp_path, plain_mu, method, identity):
    """alpha = 1 (SFPO), K = 2 with alpha = 1 (GXPO: q = 1), boost = 1 (ours): the reposition is the identity and the
    run is TRL's plain run with the same num_iterations, bit for bit; any other setting moves the weights."""
    plain = _train(tmp_path, "plain", num_iterations=plain_mu)
    same = method()
    assert same.num_iterations == plain_mu
    assert _same(_train(tmp_path, "same", [same], num_iterations=plain_mu), plain)
    assert same.repositions_ == same.batches_ == 6 // plain_mu and same.failed_ == 0
    other = identity()
    moved = _train(tmp_path, "other", [other], steps=6, num_iterations=other.num_iterations)
    assert other.repositions_ == 6 // other.num_iterations and not _same(moved, plain)


@pytest.mark.slow
def test_sfpo_gate_fires_and_training_goes_on_as_plain_grpo(tmp_path):
    """The z-score gate on TRL's entropy switches SFPO off after a batch; from then on no reposition and one optimizer
    step per generation batch (the reward function, called once per batch, counts them)."""
    sfpo, reward = SFPO(K=1, alpha=0.5, gate_window=2, gate_threshold=-1e9), Digits()
    _train(tmp_path, "gated", [sfpo], steps=8, num_iterations=2, reward=reward)
    # batches 1 and 2 (2 steps each, repositioned); the gate has 2 entropies after batch 2 and fires; 4 batches of 1
    assert (sfpo.on_, sfpo.repositions_, sfpo.batches_, reward.calls) == (False, 2, 6, 6)
    assert len(sfpo.history_) == 2 and all(0 < h < math.log(len(char_tokenizer())) for h in sfpo.history_)
    never, reward = SFPO(K=1, alpha=0.5, gate_window=2, gate_threshold=1e9), Digits()
    _train(tmp_path, "open", [never], steps=8, num_iterations=2, reward=reward)
    assert (never.on_, never.repositions_, never.batches_, reward.calls) == (True, 4, 4, 4)
    # after_gate 2: the gate fires after batch 2 (steps 1-8), then 2 steps per batch (steps 9-12), never 1 or 4
    reuse, reward = SFPO(K=3, alpha=0.5, gate_window=2, gate_threshold=-1e9, after_gate=2), Digits()
    counted = BatchCount(reuse)
    _train(tmp_path, "reuse", [reuse, counted], steps=12, num_iterations=4, reward=reward)
    assert (reuse.on_, reuse.off_at_, reuse.repositions_, reuse.batches_, reward.calls) == (False, 2, 2, 4, 4)
    assert counted.done_at == [4, 8, 10, 12]
    with pytest.raises(RlcastError, match="after_gate must be >= 1 and divide the 4 steps per batch while on .* got 3"):
        SFPO(K=3, after_gate=3)


class BatchCount(TrainerCallback):
    """The steps at which a lookahead method says its generation batch is done (what BatchBudget counts)."""

    def __init__(self, method):
        self.method, self.done_at = method, []

    def on_step_end(self, args, state, control, **kwargs):
        if self.method.batch_done:
            self.done_at.append(state.global_step)


@pytest.mark.slow
def test_gxpo_gate_reads_the_corrective_gradient_before_clipping(tmp_path):
    """GXPO's gate scores the corrective step's gradient norm before the Trainer clips it (here to 1e-4)."""
    gxpo, reward = GXPO(K=5, alpha=0.5, tau=-1e9, gate_window=2), Digits()
    _train(tmp_path, "gated", [gxpo], steps=12, num_iterations=3, max_grad_norm=1e-4, reward=reward)
    # the window needs 2 earlier observations: batches 1-3 run GXPO, the gate fires after batch 3, then 3 of 1 step
    assert (gxpo.on_, gxpo.repositions_, gxpo.batches_, reward.calls) == (False, 3, 6, 6)
    assert len(gxpo.history_) == 3 and min(gxpo.history_) > 1e-3  # pre-clip norms, far above the clip at 1e-4


class Failing(SFPO):
    """Writes the first tensor of its reposition, then fails; records the weights around every reposition."""

    def _targets(self):
        first = next(iter(super()._targets()))
        yield first
        raise RuntimeError("boom")

    def _reposition(self):
        before = {n: p.detach().clone() for n, p in self.params_}
        super()._reposition()
        self.pairs = getattr(self, "pairs", []) + [(before, {n: p.detach().clone() for n, p in self.params_})]


@pytest.mark.slow
def test_a_failed_reposition_leaves_the_weights_as_they_were(tmp_path):
    failing = Failing(K=1, alpha=0.5, gate_window=0)
    _train(tmp_path, "failing", [failing], steps=4, num_iterations=2)
    assert (failing.failed_, failing.repositions_, failing.batches_) == (2, 0, 2)
    assert all(_same(before, after) for before, after in failing.pairs)
    # and then it is plain GRPO with 2 steps per batch, to the bit
    assert _same(_train(tmp_path, "plain", steps=4, num_iterations=2),
                 {n: p for n, p in failing.trainer_.model.named_parameters()})


def test_misconfiguration_is_a_one_line_error(tmp_path):
    with pytest.raises(RlcastError, match="lookahead sfpo: K must be >= 1"):
        SFPO(K=0)
    with pytest.raises(RlcastError, match="lookahead gxpo: K must be >= 2"):
        GXPO(K=1)
    with pytest.raises(RlcastError, match="lookahead rank1: rank must be >= 1"):
        Rank1Boost(rank=0)
    with pytest.raises(RlcastError, match=r"lookahead sfpo: needs num_iterations=4 .* got 2"):
        _trainer(tmp_path / "x", [SFPO()], steps=2, num_iterations=2).train()
    # the saved state is JSON and rebuilds the same hyper-parameters
    saved = json.loads(json.dumps(GXPO(K=3).state()))
    assert GXPO(**saved["args"]).K == 3 and saved["attributes"]["on_"] is True


@pytest.mark.slow
def test_cli_train_with_a_lookahead_method_records_generation_batches(tmp_path):
    """rlcast train --accelerate sfpo sets num_iterations = K + 1; run.json counts the generation batches paid for:
    one per 2 steps while SFPO is on, one per step after its gate fired (after step 4)."""
    out = tmp_path / "run"
    common = ["--preset", "default", "--steps", "6", "--save-every", "2", "--eval-prompts", "16", "--hp",
              "batch_size=16", "--hp", "num_generations=4"]
    result = CliRunner().invoke(app, ["train", "--out", str(out), *common, "--accelerate", "sfpo", "--accel", "K=1",
                                      "--accel", "gate_window=2", "--accel", "gate_threshold=-1e9"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["config"]["num_iterations"] == 2
    assert [(c["step"], c["generation_batches"]) for c in manifest["checkpoints"]] == [(2, 1), (4, 2), (6, 4)]
    assert ("lookahead sfpo: 2 repositions (0 failed) over 4 generation batches; the gate switched it off after "
            "batch 2, then 1 step(s) per batch") in \
        result.output
    for extra, message in [(["--accelerate", "magic"], "'magic' is not one of 'jumps', 'sfpo', 'gxpo', 'rank1'"),
                           (["--accelerate", "gxpo", "--accel", "beta=1"], "unknown key 'beta'; known: K, alpha, tau")]:
        bad = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "bad"), *common, *extra])  # usage errors
        assert bad.exit_code == 2 and message in " ".join(bad.output.replace("│", " ").split())
    bad = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "bad"), *common, "--accelerate", "rank1", "--hp",
                                   "num_iterations=3"])
    message = "--accelerate rank1 takes 2 optimizer steps per generation batch; --hp num_iterations=3"
    assert bad.exit_code == 1 and message in str(bad.exception) and "\n" not in str(bad.exception)


class Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 5:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_a_resumed_run_keeps_the_gate_and_the_generation_count(tmp_path):
    """The gate fired before the checkpoint: the resumed run goes on as plain GRPO (one batch per step), and run.json
    counts the batches across the interruption as an uninterrupted run does."""
    config = TrainConfig(eval_prompts=16, batch_size=16, num_generations=4, steps=8, save_every=2, num_iterations=2)
    gated = dict(K=1, gate_window=2, gate_threshold=-1e9)
    straight = train(tmp_path / "straight", config, callbacks=[SFPO(**gated)], progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed", config, callbacks=[SFPO(**gated), Crash()], progress=False)
    resumed = SFPO(**gated)
    train(tmp_path / "resumed", config, callbacks=[resumed], resume=True, progress=False)
    assert (resumed.on_, resumed.off_at_, resumed.repositions_, resumed.batches_) == (False, 2, 2, 6)
    counts = [[(c["step"], c["generation_batches"]) for c in json.loads((run / "run.json").read_text())["checkpoints"]]
              for run in (straight, tmp_path / "resumed")]
    assert counts[0] == counts[1] == [(2, 1), (4, 2), (6, 4), (8, 6)]

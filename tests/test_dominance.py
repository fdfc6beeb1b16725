import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from rlcast.io.reader import RunReader
from rlcast.io.checkpoints import load_run
from rlcast.apps.dominance import Score, rank_k_tensors, recovery, write_rank_k
from rlcast.errors import RlcastError
from rlcast.evaluation.tasks import ArithTask
from rlcast.io.synthetic import planted_deltas, planted_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Rank-2 planted updates (sigmas 0.05 and 0.025, linear schedule) on a 32-wide, 1-layer Llama."""
    root = planted_run(tmp_path_factory.mktemp("planted") / "run", steps=[5, 10], rank=2, hidden=32, layers=1)
    return load_run(root)


def _planted(run):
    reader = RunReader(run)
    shapes = {n: tuple(reader.shape(n)) for n in reader.names()}
    return reader, planted_deltas(shapes, rank=2, seed=1)  # planted_run uses seed + 1 for the factors


@pytest.mark.parametrize("rescale", [True, False])
def test_rank1_model_keeps_the_top_triplet_with_the_right_scale(run, rescale):
    reader, factors = _planted(run)
    tensors = dict(rank_k_tensors(reader, 5, k=1, rescale=rescale, selection="blocks", exact=True))
    assert list(tensors) == reader.names()
    c = 0.5  # linear schedule at step 5 of 10
    for name, w in tensors.items():
        w0 = reader.base(name)
        if ".layers." not in name or w.dim() != 2:
            assert torch.equal(w, w0), name  # embeddings, lm_head and norms stay at the base
            continue
        (s1, u1, v1), (s2, _, _) = factors[name]
        a = math.hypot(s1, s2) / s1 if rescale else 1.0
        expected = w0 + c * a * s1 * torch.outer(u1, v1)
        assert torch.allclose(w, expected, atol=1e-5), name
        assert (w - w0).norm() == pytest.approx(c * (math.hypot(s1, s2) if rescale else s1), rel=1e-4)


def test_selections_and_full_rank(run):
    reader, _ = _planted(run)
    embed, norm = "model.embed_tokens.weight", "model.norm.weight"
    every = dict(rank_k_tensors(reader, 10, k=2, selection="all", exact=True))
    for name, w in every.items():  # the planted update has rank 2: k = 2 gives the checkpoint back
        assert torch.allclose(w, reader.weight(10, name), atol=1e-5), name
    all2d = dict(rank_k_tensors(reader, 10, k=1, selection="all-2d", exact=True))
    assert not torch.equal(all2d[embed], reader.base(embed)) and torch.equal(all2d[norm], reader.base(norm))
    with pytest.raises(RlcastError, match="selection"):
        next(rank_k_tensors(reader, 10, k=1, selection="mlp"))


def test_write_rank_k_round_trips_through_transformers(run, tmp_path):
    from transformers import AutoModelForCausalLM

    out = write_rank_k(run, 10, 1, tmp_path / "rank1", exact=True)
    reader = RunReader(run)
    expected = dict(rank_k_tensors(reader, 10, k=1, exact=True))
    model = AutoModelForCausalLM.from_pretrained(out)
    for name, param in model.state_dict().items():
        assert torch.allclose(param, expected[name], atol=1e-6), name
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert '"k": 1' in f.metadata()["rlcast"]
    with pytest.raises(RlcastError, match="step 7"):
        write_rank_k(run, 7, 1, tmp_path / "nope")


def _score(label, k, values):
    return Score(label, k, sum(values) / len(values), 0.0, 1.0, [float(v) for v in values])


def test_recovery_point_values_and_paired_intervals():
    base = _score("base", None, [0] * 6 + [1] * 4)      # 0.4
    full = _score("full", None, [0] * 2 + [1] * 8)      # 0.8
    rank = _score("rank-1", 1, [0] * 3 + [1] * 7)       # 0.7
    r = recovery(base, full, rank, seed=0)
    assert r.recovery == pytest.approx(0.7 / 0.8)
    assert r.gain_recovery == pytest.approx(0.3 / 0.4)
    assert r.recovery_ci[0] <= r.recovery <= r.recovery_ci[1] and r.recovery_ci[1] <= 1.0 + 1e-12
    assert r.gain_recovery_ci[0] <= r.gain_recovery <= r.gain_recovery_ci[1]
    assert recovery(base, full, rank, seed=0) == r  # seeded
    same = recovery(base, full, _score("rank-2", 2, full.per_prompt), seed=0)
    assert same.recovery == 1.0 and same.recovery_ci == (1.0, 1.0)  # paired: identical answers, no spread
    flat = recovery(base, base, rank, seed=0)
    assert math.isnan(flat.gain_recovery)


class ParityTask(ArithTask):
    """arith prompts scored by the parity of the completion's character codes: any change of a completion flips
    its score half of the time, so even random tiny models get accuracies that differ between base and checkpoint."""
    name = "parity"
    max_new_tokens = 3

    def score(self, completion, example):
        return float(sum(map(ord, completion)) % 2 == 0)


@pytest.mark.slow
def test_dominance_end_to_end_on_a_rank2_run(tmp_path):
    from rlcast.apps.dominance import dominance
    from rlcast.io.synthetic import tiny_llama
    from rlcast.training.testbed import char_tokenizer

    base = tiny_llama(tmp_path / "base", hidden=32, layers=1, vocab=99, seed=3)
    char_tokenizer().save_pretrained(base)
    root = planted_run(tmp_path / "run", steps=[5, 10], rank=2, base=base, seed=3)
    result = dominance(load_run(root, base=base), ranks=(1, 2), task=ParityTask(), n_prompts=40, exact=True,
                       selection="all", progress=False, models_dir=tmp_path / "models")
    assert result.step == 10 and result.n_prompts == 40 and [s.k for s in result.ranks] == [1, 2]
    assert result.base.accuracy != result.full.accuracy
    rank2 = result.ranks[1]
    assert rank2.per_prompt == result.full.per_prompt  # planted rank 2, selection all: the same model
    r2 = result.recovery[1]
    assert r2.recovery == 1.0 and r2.recovery_ci == (1.0, 1.0) and r2.gain_recovery == 1.0
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [".rlcast-output", "checkpoint-10",
                                                                      "rank1-step10", "rank2-step10"]
    saved = result.save(tmp_path / "dominance.json")
    assert '"gain_recovery_ci"' in saved.read_text()


# --- the verdict in words ---

def test_verdict_holds_does_not_hold_and_not_measurable():
    from rlcast.apps.dominance import dominance_verdict

    holds = dominance_verdict(0.72, (0.54, 0.89))
    assert holds.state == "holds"
    assert "holds on this run (72 % of the gain [54 %, 89 %]): weight extrapolation may work" in holds.text
    edge = dominance_verdict(0.49, (0.2, 0.8))  # below 50 % of the gain: the premise is taken not to hold
    assert edge.state == "does not hold" and "not expected to help this run" in edge.text
    assert dominance_verdict(0.5, (0.2, 0.8)).state == "holds"
    wide = dominance_verdict(0.6, (-0.45, 0.7))  # 115 points wide
    assert wide.state == "not measurable" and "--n-prompts" in wide.text
    below = dominance_verdict(-1.82, (-3.13, -1.17))  # 196 points wide, but all of it far below 50 %
    assert below.state == "does not hold" and "(-182 % of the gain [-313 %, -117 %])" in below.text
    assert dominance_verdict(math.nan, (math.nan, math.nan)).state == "not measurable"  # no gain over the base
    assert dominance_verdict(0.3, None).state == "not measurable"


def _weight_scorer(run, base_acc=0.3, full_acc=0.7):
    """A scorer reading the model instead of generating: f = <W - W0, dW> / ||dW||^2 over the 2-D block tensors (dW the
    last checkpoint's update) is the share of the update the model carries, and prompt i of n is right when
    (i + 0.5) / n < base_acc + f (full_acc - base_acc). The full checkpoint scores full_acc, the base base_acc."""
    reader = RunReader(run)
    names = reader.selected("blocks", two_d=True)
    update = {n: reader.delta(run.steps[-1], n) for n in names}
    norm2 = sum(float((d * d).sum()) for d in update.values())

    def score(path, task, label, k, n_prompts, seed, progress):
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            share = sum(float(((f.get_tensor(n).float() - reader.base(n)) * update[n]).sum()) for n in names) / norm2
        right = [float((i + 0.5) / n_prompts < base_acc + share * (full_acc - base_acc)) for i in range(n_prompts)]
        return Score(label, k, sum(right) / n_prompts, 0.0, 1.0, right)

    return score


@pytest.mark.slow
@pytest.mark.parametrize("noise, state", [(0.0, "holds"), (1.0, "does not hold")])
def test_verdict_on_planted_runs(tmp_path, monkeypatch, noise, state):
    """A planted rank-1 update: its rank-1 model is the checkpoint, so dominance holds; the same update under dense
    noise 20x its size: the top direction carries a third of the update, so it does not."""
    import rlcast.apps.dominance as dom

    run = load_run(planted_run(tmp_path / "run", steps=[5, 10], rank=1, hidden=32, layers=1, noise=noise))
    monkeypatch.setattr(dom, "score", _weight_scorer(run))
    result = dom.dominance(run, ranks=(1,), task=ArithTask(), n_prompts=400, exact=True, progress=False)
    assert (result.base.accuracy, result.full.accuracy) == (0.3, 0.7)
    said = result.verdict()
    assert said.state == state, said.text
    gain = result.recovery[0].gain_recovery
    assert (gain == pytest.approx(1.0)) if noise == 0 else (0.1 < gain < 0.5)
    assert f"({gain:.0%}".replace("%", " %") in said.text
    assert dom.rank1_verdict(result.to_json()) == said  # what `rlcast report` reads back from dominance.json


def test_cli_prints_the_verdict(tmp_path, monkeypatch, run_cli):
    import rlcast.apps.dominance as dom

    root = planted_run(tmp_path / "run", steps=[5, 10], rank=1, hidden=32, layers=1)
    monkeypatch.setattr(dom, "score", _weight_scorer(load_run(root)))
    code, out, err = run_cli("dominance", root, "--ranks", "1", "--task", "arith", "--n-prompts", "100", "--exact",
                             "--json", tmp_path / "d.json")
    assert code == 0, err
    assert "Rank-1 dominance holds on this run (100 % of the gain [100 %, 100 %]): weight extrapolation may work" \
        in " ".join(out.split())


def test_report_states_the_verdict():
    from rlcast.apps.report import verdict

    dom = {"step": 300, "n_prompts": 1000, "ranks": [{"k": 1, "label": "rank-1"}],
           "recovery": [{"recovery": 0.5, "recovery_ci": [0.4, 0.6], "gain_recovery": -0.04,
                         "gain_recovery_ci": [-0.41, 0.22]}]}
    said, _ = verdict({}, dom, {})
    assert any(s.startswith("Rank-1 dominance does not hold on this run (-4 % of the gain [-41 %, 22 %])")
               for s in said), said


def test_bench_half_recovery_is_interpolated_in_log_lr(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "bench"))
    from dominance import crossing, summarize

    assert crossing([(6e-5, 0.28), (3e-5, 0.72), (1.2e-4, -0.04)]) == pytest.approx(3e-5 * math.sqrt(2))
    assert crossing([(3e-5, 0.4), (6e-5, 0.9)]) == -math.inf  # already below at the smallest lr
    assert crossing([(3e-5, 0.9), (6e-5, 0.6), (1.2e-4, math.nan)]) == math.inf  # never below (nan left out)

    def row(seed, lr, gain, ci=(0.1, 0.9)):
        return {"seed": seed, "learning_rate": lr, "mu": 1, "step_r2_heldout": 0.0, "median_step_r2_heldout": 0.0,
                "rank1_energy_last": 0.5, "share_step_r2_heldout_lt_0": 0.5,
                "ranks": {"1": {"gain_recovery": gain, "gain_recovery_ci": list(ci)}}}

    summary, _ = summarize([{**row(100, 3e-5, 0.15), "mu": 2}, {**row(100, 6e-5, -0.3), "mu": 2}], [3e-5, 6e-5])
    assert summary["lr_half_recovery"]["mu2"]["median"] == "<3e-05"  # below at the smallest lr: not 0
    lrs = [3e-5, 6e-5, 1.2e-4]
    _, one = summarize([row(100, 3e-5, 0.72, (0.54, 0.89)), row(100, 6e-5, 0.28), row(100, 1.2e-4, -0.04)], lrs)
    assert one == ("lr_half_recovery=4.2e-05 (0.35x best) [4.2e-05..4.2e-05 = 0.35x..0.35x] recovery_at_min_lr=72% "
                   "[54%, 89%] "
                   "recovery_at_best_lr=-4% [10%, 90%] seeds=100 mu=1")
    rows = [row(0, 3e-5, 0.9), row(0, 6e-5, 0.1), row(1, 3e-5, 0.9), row(1, 6e-5, 0.7), row(1, 1.2e-4, 0.1)]
    summary, two = summarize(rows, lrs)
    assert summary["lr_half_recovery"]["mu1"]["per_seed"] == {"0": "4.2e-05", "1": "7.6e-05"}
    # median of two seeds in log lr: their geometric mean; one seed at 1.2e-4, so its interval is shown
    assert two == ("lr_half_recovery=5.7e-05 (0.47x best) [4.2e-05..7.6e-05 = 0.35x..0.63x] recovery_at_min_lr=90% "
                   "(seeds 90%..90%) recovery_at_best_lr=10% [10%, 90%] seeds=0,1 mu=1")
    # a collapsed run (final checkpoint at or below the base) has no gain to share: left out, not read as 94 %
    collapsed = {**row(1, 1.2e-4, 0.94, (0.9, 0.98)), "base": 0.258, "full": 0.013}
    summary, _ = summarize([row(1, 3e-5, 0.9), row(1, 6e-5, 0.7), collapsed], lrs)
    assert summary["lr_half_recovery"]["mu1"]["per_seed"] == {"1": ">6e-05"}  # its own largest rate, not the grid's
    assert summary["grid"]["lr0.00012-mu1"]["collapsed_seeds"] == [1]
    _, below = summarize([{**row(100, 3e-5, 0.15), "mu": 1}], lrs)
    assert below.startswith("lr_half_recovery=<3e-05 (<0.25x best) [<3e-05..<3e-05 = <0.25x..<0.25x] ")


def test_the_testbed_relation_quotes_the_committed_bench_result():
    """The verdict's "stops holding above ~Nx the tuned learning rate" is bench/dominance.py's committed figure."""
    import json
    import re

    from rlcast.apps.dominance import TESTBED_RELATION

    record = json.loads((Path(__file__).resolve().parent.parent / "docs/results/dominance/dominance.json").read_text())
    half = record["summary"]["lr_half_recovery"]["mu1"]
    x, seeds, lo, hi, *gains = re.search(r"~([\d.]+)x the tuned .* (\d+) seeds: ([\d.]+x) to ([\d.]+x); (-?\d+) to "
                                         r"(-?\d+) % of the gain at 0.25x, (-?\d+) to (-?\d+) % at 1x",
                                         TESTBED_RELATION).groups()
    assert x == f"{half['median_x_best']:.2g}" and int(seeds) == len(half["per_seed"])
    assert f"{lo}..{hi}" == half["range_x_best"]  # the seeds' range of the half-recovery learning rate
    plain = [r for r in record["rows"] if r["mu"] == 1]
    gain = lambda lr: [round(100 * r["ranks"]["1"]["gain_recovery"]) for r in plain if r["learning_rate"] == lr]  # noqa: E731
    assert [min(gain(3e-5)), max(gain(3e-5)), min(gain(1.2e-4)), max(gain(1.2e-4))] == [int(g) for g in gains]

"""The contracts users can run: `check_extrapolator` / `check_forecaster` on every registered class (a class another
module registers is picked up from the registry) and on a user's own subclass, each rule seen failing on a class that
breaks it; every class's paper `reference`, and the README's method table against the registry."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from rlcast.errors import RlcastError
from rlcast.extrapolation import METHODS, Extrapolator, check_extrapolator
from rlcast.extrapolation.checks import planted
from rlcast.forecasting import FORECASTERS, Forecaster, check_forecaster

README = Path(__file__).resolve().parent.parent / "README.md"
FAST = {"next": {"epochs": 5}}  # NExt trains its MLPs at every fit: fewer epochs keep the check in seconds


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The checks' own planted run, built once for the module."""
    return planted(tmp_path_factory.mktemp("contract"))


@pytest.mark.parametrize("name", list(METHODS))
def test_every_registered_extrapolator_keeps_the_contract(name, run, torch_single_thread):
    assert "a fitted estimator pickles" in check_extrapolator(METHODS[name], run, params=FAST.get(name))


@pytest.mark.parametrize("name", list(FORECASTERS))
def test_every_registered_forecaster_keeps_the_contract(name):
    assert "predict is deterministic" in check_forecaster(FORECASTERS[name])


def test_every_registered_class_names_its_reference():
    missing = [name for name, cls in {**METHODS, **FORECASTERS}.items() if not cls.reference.strip()]
    assert missing == []
    assert METHODS["next"].reference == "NExt, arXiv 2604.11446"


def test_the_readme_method_table_is_the_registry():
    """One row per registered method, and each `source` cell equal to the class's `reference`."""
    text = README.read_text()
    section = text[text.index("## Weight extrapolation methods"):]
    section = section[:section.index("\n## ", 1)]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| `")]
    table = {re.fullmatch(r"`([^`]+)`", row[0])[1]: row[1] for row in rows}
    assert len(table) == len(rows) and table == {name: cls.reference for name, cls in METHODS.items()}


# ----------------------------------------------------------------------------- a user's own extrapolators


class Halfway(Extrapolator):
    """A user's method: the base plus `share` of the last delta, whatever the step."""

    reference = "a user's"
    min_checkpoints = 1

    def __init__(self, share: float = 0.5, selection: str = "all", progress: bool = False):
        super().__init__(selection, progress)
        self.share = share

    def _tensor(self, name, step):
        return self.reader_.base(name) + self.share * self.reader_.delta(self.last_, name)


class Doubled(Halfway):
    def __init__(self, share: float = 0.5, selection: str = "all", progress: bool = False):
        super().__init__(selection=selection, progress=progress)
        self.share = 2 * share  # not stored as given: get_params() lies


class Learns(Halfway):
    def _fit(self):
        self.direction = self.last_  # learned, but without the trailing underscore


class Counts(Halfway):
    def _fit(self):
        self.calls_ = 0

    def _tensor(self, name, step):
        self.calls_ += 1  # predict changes the estimator
        return super()._tensor(name, step)


class Noisy(Halfway):
    def _tensor(self, name, step):
        return super()._tensor(name, step) + 1e-3 * torch.randn(self.reader_.shape(name))  # unseeded


class Required(Halfway):
    def __init__(self, share: float, selection: str = "all", progress: bool = False):
        super().__init__(share, selection, progress)


def test_a_users_own_extrapolator_is_checked_without_registering_it(run):
    assert "predict is pure" in check_extrapolator(Halfway, run)
    assert Halfway.name == "" and "Halfway" not in METHODS


@pytest.mark.parametrize("cls, rule", [(Doubled, "parameters stored unchanged"), (Learns, "learned state ends in _"),
                                       (Counts, "predict is pure"), (Noisy, "predict is deterministic"),
                                       (Required, "has no default")])
def test_each_broken_rule_is_named_in_one_line(cls, rule, run):
    with pytest.raises(RlcastError) as err:
        check_extrapolator(cls, run)
    assert rule in str(err.value) and cls.__name__ in str(err.value) and "\n" not in str(err.value)


def test_a_class_that_is_no_extrapolator_is_refused():
    with pytest.raises(RlcastError, match="not a subclass of rlcast.extrapolation.base.Extrapolator"):
        check_extrapolator(Forecaster)


# ----------------------------------------------------------------------------- a user's own forecasters


class Level(Forecaster):
    """A user's forecaster: the last score, forever."""

    reference = "a user's"

    def _fit(self, curve):
        self.level_ = float(curve.accuracy[-1])

    def _curves(self, steps):
        center = np.full(len(steps), self.level_)
        return center, np.repeat(center[None], self.samples, axis=0)


class Drifting(Level):
    def _curves(self, steps):
        self.level_ += 0.01  # predict moves the forecaster
        return super()._curves(steps)


class Ragged(Level):
    def _curves(self, steps):
        center, paths = super()._curves(steps)
        return center[:-1], paths[:, :-1]  # one step short


def test_a_users_own_forecaster_is_checked_and_broken_ones_named():
    assert "fit returns self" in check_forecaster(Level)
    for cls, rule in ((Drifting, "predict is pure"), (Ragged, "at the steps asked")):
        with pytest.raises(RlcastError) as err:
            check_forecaster(cls)
        assert rule in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- TRL's conventions for the callbacks


def _tiny(hidden: int = 16):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))


def _args(**kw):
    from types import SimpleNamespace

    return SimpleNamespace(**({"num_iterations": 2, "steps_per_generation": 1, "gradient_accumulation_steps": 1,
                               "output_dir": "unused"} | kw))


def test_a_lookahead_method_is_given_its_trainer_never_finds_it_on_the_stack():
    from types import SimpleNamespace

    from rlcast.training.lookahead import Rank1Boost

    boost = Rank1Boost()
    state = SimpleNamespace(global_step=0, stateful_callbacks={})
    with pytest.raises(RlcastError, match=r"not bound to its trainer: call rank1.bind\(trainer\)") as err:
        boost.on_train_begin(_args(), state, None, model=_tiny())
    assert "\n" not in str(err.value)
    with pytest.raises(RlcastError, match="bind: needs TRL's GRPOTrainer or RLOOTrainer"):
        boost.bind(SimpleNamespace(_buffered_inputs=None))  # not a Trainer


@pytest.mark.parametrize("shard", ["ds_id", "ds_numel"])
def test_callbacks_that_edit_weights_refuse_deepspeed_zero3_parameters(shard, tmp_path):
    from types import SimpleNamespace

    from rlcast.training.accelerate import AccelerateCallback, AccelerateConfig
    from rlcast.training.lookahead import SFPO

    model = _tiny()
    setattr(model.model.layers[0].mlp.up_proj.weight, shard, 7)  # what ZeRO-3 leaves on a partitioned parameter
    state = SimpleNamespace(global_step=0, stateful_callbacks={})
    sfpo = SFPO(K=1)
    sfpo.trainer_ = object()  # bound (the trainer is not used before the check)
    jumps = AccelerateCallback(AccelerateConfig(method="weight-linear", window=3, eval_prompts=8, verbose=False))
    for callback, who in ((sfpo, "lookahead sfpo"), (jumps, "accelerate")):
        with pytest.raises(RlcastError) as err:
            callback.on_train_begin(_args(output_dir=str(tmp_path / "run")), state, None, model=model)
        message = str(err.value)
        assert message.startswith(f"{who}: parameter model.layers.0.mlp.up_proj.weight is sharded (DeepSpeed ZeRO-3)")
        assert "\n" not in message
    assert not (tmp_path / "run").exists()  # refused before any snapshot was written


def test_callbacks_that_edit_weights_refuse_an_fsdp_model():
    from torch import nn

    from rlcast.training.support import check_unsharded

    class FullyShardedDataParallel(nn.Module):  # what torch's FSDP wraps a model in (matched by name, no import)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

    with pytest.raises(RlcastError, match="sharded by FSDP"):
        check_unsharded(FullyShardedDataParallel(_tiny()), "lookahead rank1")
    check_unsharded(_tiny(), "lookahead rank1")  # whole parameters: no error


def test_the_public_callbacks_document_args_and_usage():
    from rlcast.training.accelerate import AccelerateCallback
    from rlcast.training.lookahead import LOOKAHEAD

    for cls in (AccelerateCallback, *LOOKAHEAD.values()):
        doc = cls.__doc__ or ""
        assert "Args:" in doc and "Usage:" in doc and "bind(trainer)" in doc, cls.__name__


def test_one_factory_builds_every_accelerator_from_a_name_and_settings():
    from rlcast.training.accelerate import AccelerateCallback
    from rlcast.training.accelerators import ACCELERATORS, make_accelerator
    from rlcast.training.lookahead import SFPO

    assert ACCELERATORS == ("jumps", "sfpo", "gxpo", "rank1")
    sfpo = make_accelerator("sfpo", ["K=2", "alpha=0.5"])
    assert isinstance(sfpo, SFPO) and (sfpo.K, sfpo.alpha, sfpo.num_iterations) == (2, 0.5, 3)
    jumps = make_accelerator("jumps", {"every": 5}, task="arith", task_args={"ops": "+"})
    assert isinstance(jumps, AccelerateCallback) and jumps.config.task_args == {"ops": "+"}
    assert make_accelerator("jumps", ["task=rg:chain_sum"], task="arith").config.task == "rg:chain_sum"
    with pytest.raises(RlcastError, match="--accelerate 'magic': known: jumps, sfpo, gxpo, rank1"):
        make_accelerator("magic")
    with pytest.raises(RlcastError, match="--accel 'beta=1': unknown key 'beta'"):
        make_accelerator("gxpo", ["beta=1"])

"""The contracts users can run: `check_extrapolator` / `check_forecaster` on every registered class (a class another
module registers is picked up from the registry) and on a user's own subclass, each rule seen failing on a class that
breaks it; every class's paper `reference`, and the README's method table against the registry."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from rlcast.errors import RlcastError
from rlcast.forecasting import FORECASTERS, Forecaster, check_forecaster
from rlcast.methods import METHODS, Extrapolator, check_extrapolator
from rlcast.methods.checks import planted

README = Path(__file__).resolve().parent.parent / "README.md"
FAST = {"next": {"epochs": 20}}  # NExt trains its MLPs at every fit: fewer epochs keep the check in seconds


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
    section = text[text.index("## Forecasting methods"):]
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
    with pytest.raises(RlcastError, match="not a subclass of rlcast.methods.base.Extrapolator"):
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

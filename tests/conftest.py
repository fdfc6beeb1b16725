"""Shared test fixtures: one tiny model, one way to drive the CLI, one torch thread; each area adds its own, clearly
named. Tests that train or start a subprocess are marked `slow` (`make test-fast` leaves them out)."""

import sys

import pytest
import torch

from rlcast.apps.cli import main
from rlcast.training.testbed import base_model


@pytest.fixture(autouse=True)
def no_user_cache(monkeypatch):
    """The tests choose their cache folders (HOME, cache_dir): a developer's RLCAST_CACHE must not leak into them."""
    monkeypatch.delenv("RLCAST_CACHE", raising=False)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The shipped testbed base (a ~1M-parameter character-level Llama) as an HF folder, copied once per session
    into a temporary cache: tests may read it, never write into it."""
    return base_model(cache_dir=tmp_path_factory.mktemp("testbed-cache"), progress=False)


@pytest.fixture()
def torch_single_thread():
    """Run a test with one torch thread: on 2 shared cores, OpenMP threads of concurrent jobs thrash (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def run_cli(monkeypatch, capsys):
    """Run `rlcast ARGS` in-process, as the `rlcast` script does: run_cli(*args) -> (exit code, stdout, stderr)."""
    def run(*args):
        monkeypatch.setattr(sys, "argv", ["rlcast", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err
    return run

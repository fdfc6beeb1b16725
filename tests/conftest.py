"""Shared test fixtures (each area adds its own, clearly named)."""

import sys

import pytest
import torch

from rlcast.apps.cli import main


@pytest.fixture()
def torch_single_thread():
    """Run a test with one torch thread: on 2 shared cores, OpenMP threads of concurrent jobs thrash (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def run_cli(monkeypatch, capsys):
    """Run `rlcast ARGS` in-process: run_cli(*args) -> (exit code, stdout, stderr)."""
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

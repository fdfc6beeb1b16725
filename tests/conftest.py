"""Shared test fixtures (each area adds its own, clearly named)."""

import pytest
import torch


@pytest.fixture()
def torch_single_thread():
    """Run a test with one torch thread: on 2 shared cores, OpenMP threads of concurrent jobs thrash (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""The suite's shared fixtures (``tests/conftest.py``): one torch thread per module, restored afterwards."""

from __future__ import annotations

import pytest
import torch

from conftest import torch_threads


@pytest.fixture(scope="module")
def threads_in_a_module_fixture() -> int:
    return torch.get_num_threads()  # module fixtures are set up after the autouse one_thread


def test_tests_and_module_fixtures_run_on_one_thread(threads_in_a_module_fixture: int) -> None:
    assert torch.get_num_threads() == 1
    assert threads_in_a_module_fixture == 1


def test_torch_threads_restores_the_old_count_also_on_an_error() -> None:
    assert torch.get_num_threads() == 1
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1
    with pytest.raises(RuntimeError, match="inside"), torch_threads(2):
        assert torch.get_num_threads() == 2
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 1

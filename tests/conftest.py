"""Test hygiene: every test seeded, a fresh param store, Pyro validation on."""

import pyro
import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _pyro_hygiene():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    torch.set_num_threads(2)
    yield
    pyro.clear_param_store()


@pytest.fixture
def float64_default():
    """float64 as torch's default dtype for the test, where exact math is asserted."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)

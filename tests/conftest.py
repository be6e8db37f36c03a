"""Fixtures shared by the tests (helpers that tests import are in helpers.py)."""
import os

import pytest
import torch

import gltrans_plugin  # noqa: F401  (compat first)
from helpers import write_tiny_market

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_market(tmp_path_factory):
    return write_tiny_market(str(tmp_path_factory.mktemp("tiny_market")))

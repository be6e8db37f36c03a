"""Fixtures shared by the tests (helpers that tests import are in helpers.py), and how the
suite shares the machine's cores.

The default run (setup.cfg) is ``pytest -n auto --dist loadfile``: one pytest-xdist worker per
core, each running whole test modules (module fixtures are built once; test_readme.py's blocks,
which build on each other, stay in one process).  Each worker and every process a test starts
gets cores / workers torch threads (OMP_NUM_THREADS, set here before torch is imported and
inherited by the subprocesses): two processes of two OpenMP threads each on two cores run many
times slower than one, never at half speed.  ``-n 0`` runs in this process (at most 2 threads:
the tests' models are tiny).
"""
import os

import pytest

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
if _WORKERS > 1:
    # before torch is imported: the OpenMP pool is sized from it, and the tests' subprocesses
    # inherit it
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import torch  # noqa: E402

import gltrans_plugin  # noqa: E402,F401  (compat first)
from helpers import write_tiny_market  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]) if _WORKERS > 1
                      else max(1, min(2, os.cpu_count() or 1)))


# The longest modules, longest first (2026-12-04, 2 workers on 2 cores: seconds per module,
# about): they start first so that no long module runs alone at the end while the other core
# idles.  Out of date, it only costs time; the other modules follow by their count of slow tests.
LONGEST_FIRST = ["distributed/test_distributed.py", "engine/test_training.py",
                 "gpu/test_gpu_check.py", "engine/test_failures.py",
                 "modeling/test_speed_features.py", "patches/test_patches.py", "test_readme.py",
                 "reproduce/test_reproduce.py", "patches/test_fastreid_scripts.py",
                 "engine/test_run_control.py", "reproduce/test_protocol.py"]


@pytest.hookimpl(trylast=True)  # after -m has deselected
def pytest_collection_modifyitems(config, items):
    """Modules in LONGEST_FIRST order, then the others with the most ``slow`` tests first; each
    module's tests together and in their order (``--dist loadfile`` runs a module on one
    worker, its module fixtures built once)."""
    slow = {}
    for item in items:
        slow.setdefault(item.module, 0)
        slow[item.module] += item.get_closest_marker("slow") is not None

    def cost(module):
        rel = os.path.relpath(module.__file__, os.path.dirname(__file__)).replace(os.sep, "/")
        first = LONGEST_FIRST.index(rel) if rel in LONGEST_FIRST else len(LONGEST_FIRST)
        return first, -slow[module]

    rank = {m: i for i, m in enumerate(sorted(slow, key=cost))}
    items.sort(key=lambda item: rank[item.module])


@pytest.fixture(scope="session")
def tiny_market(tmp_path_factory):
    return write_tiny_market(str(tmp_path_factory.mktemp("tiny_market")))


@pytest.fixture(autouse=True)
def _grad_mode_left_as_found():
    """A test that ends with gradients switched off (say, a generator suspended inside
    ``torch.no_grad()`` whose consumer raised) would break every later test of its worker
    that trains: fail it, and switch them back on for the next."""
    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("the test left gradients switched off (torch.is_grad_enabled() is False)",
                    pytrace=False)

"""fastreid 1.4.0 importable on today's stack, and the registry of the runtime patches.

Importing this module installs the import-time shims fastreid needs on Python 3.11 / torch 2
(``collections.Mapping``, ``torch._six``), so ``import fastreid`` works; it must run before
anything imports fastreid (``import gltrans_plugin`` imports it first).  The runtime patches of
fastreid live in ``gltrans_plugin/patches/``, register here with ``fix`` and are applied once by
``apply()`` (``import gltrans_plugin`` calls it after importing them); ``APPLIED`` lists them by
name and env ``GLTRANS_COMPAT_SKIP=name,...`` skips some (for debugging and for the tests that
show each patch is needed).
"""
import collections
import collections.abc
import os
import sys
import types

__all__ = ["APPLIED", "apply", "fix", "require_fastreid"]

APPLIED = []  # names of the fixes applied, in order
_FIXES = []


def fix(fn):
    """Register a runtime patch of fastreid (a function that patches it in memory, named after
    what it makes work); ``apply()`` runs each once, unless named in env ``GLTRANS_COMPAT_SKIP``."""
    _FIXES.append(fn)
    return fn


# --------------------------------------------------------------------------- import-time shims
def _preimport_shims():
    # fastreid/evaluation/testing.py and data/build.py: `from collections import Mapping`
    # (removed in Python 3.10) -> ImportError on `import fastreid.data` / `.evaluation`.
    for name in ("Mapping", "MutableMapping", "Sequence", "Iterable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    # fastreid/data/build.py: `from torch._six import string_classes` (torch._six removed in 2.0).
    import torch

    if "torch._six" not in sys.modules and not hasattr(torch, "_six"):
        six = types.ModuleType("torch._six")
        six.string_classes = (str, bytes)
        sys.modules["torch._six"] = six
        torch._six = six


_preimport_shims()


_preimport_shims()


def require_fastreid():
    """Import fastreid or fail with one message that says how to install it."""
    try:
        import fastreid  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name != "fastreid":
            raise
        raise ImportError(
            "gltrans_plugin needs fast-reid, which is not installed. Install it without its "
            "torch-1.13 pins:  pip install --no-deps fastreid==1.4.0  (README, 'Set-up')."
        ) from None


def apply():
    """Apply every fix once (idempotent). Called by ``import gltrans_plugin``."""
    require_fastreid()
    skip = set(filter(None, os.environ.get("GLTRANS_COMPAT_SKIP", "").split(",")))  # debugging
    for f in _FIXES:
        if f.__name__ not in APPLIED and f.__name__ not in skip:
            f()
            APPLIED.append(f.__name__)
    return list(APPLIED)

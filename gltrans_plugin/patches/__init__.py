"""Every runtime patch of PyPI's fastreid 1.4.0, one module per part of fast-reid it patches: it
runs on today's stack (Python 3.11, torch 2.x, numpy 2, Pillow 11+), its runs fail clearly
instead of hanging or corrupting files, and its own scripts (``tools/train_net.py``: get_cfg,
default_setup, DefaultTrainer) run GLTrans configs as the plugin's ``Trainer`` does.

Each patch is one small function registered with ``compat.fix``, whose comment names the fastreid
file and the failure it removes; ``import gltrans_plugin`` imports this package above every
room the patches use and then applies them all, once (``compat.apply``).  ``compat.APPLIED``
lists them by name, env ``GLTRANS_COMPAT_SKIP=name,...`` skips some, and ``tests/`` has a test
for each that fails without it.  Nothing in site-packages is edited and no fastreid code is
copied: every patch wraps or replaces one call.  The plugin's own classes never re-implement a
patch: its ``Trainer`` inherits the patched ``DefaultTrainer``.
"""
from . import checkpoint, config, data, engine, evaluation, solver  # noqa: F401  (register)

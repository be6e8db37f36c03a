"""GLTrans for fast-reid.

``import gltrans_plugin`` (1) makes fastreid 1.4.0 work on today's stack (``compat``), and
(2) registers GLTrans' backbone, heads and meta-architecture, the built-in datasets and the
evaluator into fastreid's registries, so fastreid's own trainer, scripts and configs can use them.
"""
from . import compat

compat.apply()

from . import data, evaluation, modeling  # noqa: E402,F401  (register into fastreid)
from . import reliability, tools_lib  # noqa: E402,F401  (tools_lib registers GLTransDistiller)

reliability.install()  # atomic checkpoints, finite-loss check, loader errors surfaced
from .config import add_gltrans_config  # noqa: E402

__all__ = ["add_gltrans_config", "compat"]
__version__ = "0.1.0"

"""GLTrans for fast-reid.

``import gltrans_plugin`` (1) makes fastreid 1.4.0 importable on today's stack (``compat``),
(2) registers GLTrans' backbone, heads and meta-architecture, the built-in datasets, the evaluator
and ``GLTransDistiller`` into fastreid's registries, so fastreid's own trainer, scripts and
configs can use them, and (3) applies every runtime patch of fastreid (``patches``) once.
"""
from . import compat  # first: fastreid importable

compat.require_fastreid()  # else one message saying how to install it

from . import data, distill, evaluation, modeling  # noqa: E402,F401  (register into fastreid)
from . import patches  # noqa: E402,F401  (register the runtime patches of fastreid)

compat.apply()
from .config import add_gltrans_config  # noqa: E402
from .extractor import FeatureExtractor  # noqa: E402

__all__ = ["FeatureExtractor", "add_gltrans_config", "compat"]
__version__ = "0.1.0"

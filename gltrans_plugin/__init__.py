"""GLTrans for fast-reid.

``import gltrans_plugin`` (1) makes fastreid 1.4.0 work on today's stack and its runs fail
clearly (``compat``), and (2) registers GLTrans' backbone, heads and meta-architecture, the
built-in datasets, the evaluator and ``GLTransDistiller`` into fastreid's registries, so fastreid's
own trainer, scripts and configs can use them.
"""
from . import compat

compat.apply()

from . import data, distill, evaluation, modeling  # noqa: E402,F401  (register into fastreid)
from . import engine  # noqa: E402,F401  (registers its fixes of fast-reid's DefaultTrainer)

compat.apply()  # the fixes the data modules and the engine registered
from .config import add_gltrans_config  # noqa: E402
from .extractor import FeatureExtractor  # noqa: E402  (imports the engine on first use only)

__all__ = ["FeatureExtractor", "add_gltrans_config", "compat"]
__version__ = "0.1.0"

"""GLTrans' model: backbone, GAE / PTF / GMA / PTL modules, heads, losses, meta-architecture,
weights and checkpoint converters (importing registers them into fast-reid)."""
from . import heads, meta_arch  # noqa: F401,E402  (registers GLTransHead and GLTrans)
from . import backbone  # noqa: F401,E402  (registers build_gltrans_backbone / build_gltrans_vit_backbone)

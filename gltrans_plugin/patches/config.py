"""Runtime patch of fast-reid's config defaults: the plugin's keys in ``get_cfg()``."""
from ..compat import fix


@fix
def gltrans_keys_in_defaults():
    # fastreid/config/defaults.py: get_cfg() copies fast-reid's defaults, which lack this
    # plugin's keys -> `KeyError: 'Non-existent config key: DATALOADER.EPOCH_SAMPLER'` when a
    # fast-reid script (tools/train_net.py's get_cfg + merge_from_file) reads a GLTrans config.
    # The keys (add_gltrans_config) are added to those defaults once, so get_cfg() has them.
    from fastreid.config import defaults

    from ..config import add_gltrans_config

    add_gltrans_config(defaults._C)

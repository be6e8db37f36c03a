"""Runtime patches of fast-reid's checkpointer: checked, weights-only reads and atomic writes."""
from ..compat import fix


@fix
def checkpoint_weights_only():
    # fastreid/utils/checkpoint.py: Checkpointer._load_file is a bare torch.load call; since
    # torch 2.6 it defaults to weights_only=True and refuses fastreid's own checkpoints, which
    # hold numpy scalars (the metric saved by PeriodicCheckpointer).  Load through
    # checkpoint.load_file: weights-only with numpy scalars allowed, legacy pickles need
    # GLTRANS_ALLOW_PICKLE=1, a damaged file is named with the key that pointed at it.
    from fastreid.utils import checkpoint

    from ..checkpoint import load_file

    def _load_file(self, f):  # the plugin's trainer names --resume itself (engine.checked_loads)
        return load_file(f, key="MODEL.WEIGHTS")

    checkpoint.Checkpointer._load_file = _load_file


@fix
def atomic_checkpoints():
    # fastreid/utils/checkpoint.py writes model_*.pth and last_checkpoint in place
    # (PathManager.open(path, "wb")); a kill during the write leaves a truncated file, and
    # model_best / model_final are overwritten in place.  Every write of the checkpointer now
    # goes through checkpoint.atomic_open (a temporary file, fsync'ed and renamed over the
    # target), so a file is either the old one or the complete new one, and last_checkpoint
    # (written after the checkpoint) never names a partial file.
    from fastreid.utils import checkpoint

    from ..checkpoint import AtomicPathManager

    # Checkpointer.save and tag_last_checkpoint write through this module-level name
    checkpoint.PathManager = AtomicPathManager(checkpoint.PathManager)

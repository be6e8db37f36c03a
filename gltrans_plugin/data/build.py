"""Building a registered dataset from the config, with one directory listing per start-up, and
the camera layout of the training datasets.

fast-reid's readers list their folders in ``__init__``; the trainer needs the training set for
the loader, the camera count (``MODEL.BACKBONE.NUM_CAMERAS 0``) and the set-up checks, and the
test sets for the checks and every evaluation.  ``build_dataset`` keeps one instance per
(dataset, root, reader arguments); ``clear_dataset_cache`` (called when a trainer is built)
starts a new listing, so files added between two runs of one process are seen.
``camera_layout`` places the training datasets' cameras in one SIE table (``CameraLayout``).
"""
import logging
import os

from fastreid.data.datasets import DATASET_REGISTRY

from .cameras import CameraLayout, camera_index, unseen_camera
from .checks import check_dataset_root
from .datasets import synthetic_kwargs
from .folder import folder_kwargs
from .veri import veri_kwargs

logger = logging.getLogger(__name__)

__all__ = ["build_dataset", "camera_layout", "clear_dataset_cache", "dataset_root",
           "fill_num_cameras", "reader_kwargs", "test_camera_map"]

# dataset name -> its reader's keyword arguments from the config
_READER_KWARGS = {
    "SyntheticReID": synthetic_kwargs,
    "ReIDFolder": lambda cfg: folder_kwargs(cfg, "FOLDER"),
    "ReIDFolder2": lambda cfg: folder_kwargs(cfg, "FOLDER2"),
    "VeRiViews": veri_kwargs,
}

_CACHE = {}


def dataset_root(cfg):
    """The dataset root: DATASETS.ROOT, else env FASTREID_DATASETS, else "datasets"."""
    return cfg.DATASETS.ROOT or os.getenv("FASTREID_DATASETS", "datasets")


def clear_dataset_cache():
    """Forget every listed dataset (the next ``build_dataset`` lists its folders again)."""
    _CACHE.clear()


def build_dataset(cfg, name):
    """Instantiate a registered dataset under the configured root (once per start-up); an
    unknown name or a missing folder fails here, before training, with the expected layout in
    the message."""
    root = dataset_root(cfg)
    kwargs = reader_kwargs(cfg, name)
    key = (name, os.path.abspath(root), tuple(sorted(kwargs.items())))
    if key not in _CACHE:
        check_dataset_root(name, root)
        _CACHE[key] = DATASET_REGISTRY.get(name)(root=root, combineall=False, **kwargs)
    return _CACHE[key]


def reader_kwargs(cfg, name):
    """The keyword arguments ``build_dataset`` gives dataset ``name``'s reader (besides root)."""
    make = _READER_KWARGS.get(name)
    return make(cfg) if make else {}


def camera_layout(cfg):
    """The ``CameraLayout`` of the training datasets (DATASETS.NAMES, in that order)."""
    return CameraLayout([(name, build_dataset(cfg, name).train) for name in cfg.DATASETS.NAMES])


def test_camera_map(cfg, name):
    """camera id of test set ``name`` -> its SIE row (``CameraLayout.test_index``).  Lists the
    training sets only when several are merged: one training dataset keeps its own camera
    numbers, a test set not in DATASETS.NAMES gets ``unseen_camera`` for every camera."""
    names = list(cfg.DATASETS.NAMES)
    if name not in names:
        return unseen_camera
    if len(names) == 1:
        return camera_index
    layout = camera_layout(cfg)
    return lambda camid: layout.test_index(name, camid)


def fill_num_cameras(cfg):
    """MODEL.BACKBONE.NUM_CAMERAS = 0 means 'from the training data': max camera index + 1 of
    each training dataset, summed (each dataset its own rows: ``CameraLayout``).  Returns ``cfg``
    itself when it is set, else a filled clone (frozen if ``cfg`` was)."""
    if cfg.MODEL.BACKBONE.NUM_CAMERAS > 0:
        return cfg
    layout = camera_layout(cfg)
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.MODEL.BACKBONE.NUM_CAMERAS = layout.total
    logger.info(f"Auto-scaling MODEL.BACKBONE.NUM_CAMERAS={layout.total}"
                + (" (" + ", ".join(f"{n}: rows {layout.offsets[n]}.."
                                    f"{layout.offsets[n] + layout.spans[n] - 1}"
                                    for n in layout.names) + ")"
                   if len(layout.names) > 1 else ""))
    if frozen:
        cfg.freeze()
    return cfg

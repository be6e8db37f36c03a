"""Building a registered dataset from the config, with one directory listing per start-up.

fast-reid's readers list their folders in ``__init__``; the trainer needs the training set for
the loader, the camera count (``MODEL.BACKBONE.NUM_CAMERAS 0``) and the set-up checks, and the
test sets for the checks and every evaluation.  ``build_dataset`` keeps one instance per
(dataset, root, reader arguments); ``clear_dataset_cache`` (called when a trainer is built)
starts a new listing, so files added between two runs of one process are seen.
"""
import os

from fastreid.data.datasets import DATASET_REGISTRY

from .datasets import check_dataset_root, synthetic_kwargs

__all__ = ["build_dataset", "clear_dataset_cache", "dataset_root"]

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
    kwargs = synthetic_kwargs(cfg) if name == "SyntheticReID" else {}
    key = (name, os.path.abspath(root), tuple(sorted(kwargs.items())))
    if key not in _CACHE:
        check_dataset_root(name, root)
        _CACHE[key] = DATASET_REGISTRY.get(name)(root=root, combineall=False, **kwargs)
    return _CACHE[key]

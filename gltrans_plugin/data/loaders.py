"""The train and test loaders of a config: fast-reid's loader builders fed with the configured
datasets (root, synthetic sizes, one listing per start-up), the same camera index in training and
test, unreadable images named (or skipped), a sampler deterministic per epoch, and batches on
cfg.MODEL.DEVICE.

With ``DATASETS.VAL.IDS`` the held-out identities leave the training set and form the
validation loader (``build_val_loader``, data/validation.py).

fast-reid's ``DefaultTrainer`` builds its loaders with these (the plugin's runtime patches point
its ``build_train_loader`` / ``build_test_loader`` here), and so does the plugin's ``Trainer``,
which inherits them; the tools build a test loader with ``build_test_loader`` without a trainer.
"""
from fastreid.data import build as fr_build
from fastreid.data.build import _train_loader_from_config
from fastreid.data.transforms import build_transforms
from fastreid.utils import comm

from ..devices import loader_device
from .build import build_dataset, camera_layout, test_camera_map
from .checks import check_identities, check_test_set
from .common import RobustCommDataset
from .checks import check_train_set
from .samplers import wrap_sampler
from .validation import split_validation, val_enabled

__all__ = ["build_test_loader", "build_train_loader", "build_val_loader"]


def build_train_loader(cfg):
    """fast-reid's train loader over every DATASETS.NAMES training set (relabelled, each set its
    own SIE rows), with the configured sampler made deterministic per epoch."""
    items = []
    for name in cfg.DATASETS.NAMES:
        data = build_dataset(cfg, name)
        check_train_set(name, data)  # an empty folder is named, before fast-reid's tables
        if comm.is_main_process():
            data.show_train()
        items.extend(data.train)
    if val_enabled(cfg):  # held-out identities leave the training set
        items = _validation(cfg, items).train
    layout = camera_layout(cfg)  # identities of merged sets apart, each its own SIE rows
    train_set = RobustCommDataset(items, build_transforms(cfg, is_train=True), relabel=True,
                                  skip_corrupt=cfg.DATALOADER.SKIP_CORRUPT)
    # Same camera index in training as in test (see camera_index, CameraLayout).
    train_set.cam_dict = {c: layout.train_index(c) for c in train_set.cams}
    check_identities(cfg, train_set)  # else the identity sampler never completes a batch
    sampler = _train_loader_from_config(cfg, train_set=train_set)["sampler"]
    # deterministic per epoch, so a resumed run sees the same batches (data/samplers.py)
    sampler = wrap_sampler(cfg, sampler, len(train_set))
    with loader_device(cfg.MODEL.DEVICE):  # CUDA copies / pinned memory for a CUDA model only
        return fr_build.build_reid_train_loader(cfg, train_set=train_set, sampler=sampler)


def _validation(cfg, items=None):
    if items is None:
        items = [it for name in cfg.DATASETS.NAMES for it in build_dataset(cfg, name).train]
    return split_validation(items, int(cfg.DATASETS.VAL.IDS), int(cfg.DATASETS.VAL.SEED))


def build_val_loader(cfg):
    """(loader over the validation query + gallery, number of queries): the identities
    DATASETS.VAL.IDS holds out of the training sets (data/validation.py), camera ids as in
    training."""
    split = _validation(cfg)
    layout = camera_layout(cfg)
    items = [(it[0], it[1], layout.train_index(it[2])) + tuple(it[3:])
             for it in split.query + split.gallery]
    val_set = RobustCommDataset(items, build_transforms(cfg, is_train=False), relabel=False,
                                skip_corrupt=cfg.DATALOADER.SKIP_CORRUPT)
    with loader_device(cfg.MODEL.DEVICE):
        return fr_build.build_reid_test_loader(cfg, test_set=val_set, num_query=len(split.query))


def build_test_loader(cfg, dataset_name):
    """(loader over query + gallery of ``dataset_name``, number of queries); camera ids mapped
    to the training's SIE rows, a camera the training never saw gets a negative id."""
    data = build_dataset(cfg, dataset_name)
    if comm.is_main_process():
        data.show_test()
    check_test_set(dataset_name, data)
    cam = test_camera_map(cfg, dataset_name)
    items = [(item[0], item[1], cam(item[2])) + tuple(item[3:])
             for item in data.query + data.gallery]
    test_set = RobustCommDataset(items, build_transforms(cfg, is_train=False), relabel=False,
                                 skip_corrupt=cfg.DATALOADER.SKIP_CORRUPT)
    with loader_device(cfg.MODEL.DEVICE):
        return fr_build.build_reid_test_loader(cfg, test_set=test_set, num_query=len(data.query))

"""Datasets the plugin registers into fast-reid's ``DATASET_REGISTRY``.

- ``SyntheticReID``: the built-in synthetic set (see ``synthetic/``), read with fast-reid's
  Market-1501 reader from ``<root>/synthetic_reid`` and generated there on first use.
- ``MSMT17TrainVal``: MSMT17 trained on list_train + list_val (the protocol of TransReID and
  the GLTrans paper); query / gallery as fast-reid's ``MSMT17``.

(Own folders: ``folder.py``; VeRi-776 with views: ``veri.py``; camera ids: ``cameras.py``;
Market-style names: ``names.py``; dataset checks: ``checks.py``.)
"""
import logging
import os.path as osp

from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.market1501 import Market1501
from fastreid.data.datasets.bases import ImageDataset
from fastreid.data.datasets.msmt17 import MSMT17

from .checks import check_dataset_root
from .synthetic import DEFAULTS, generate_synthetic_reid

logger = logging.getLogger(__name__)

__all__ = ["MSMT17TrainVal", "SyntheticReID", "synthetic_kwargs"]


def synthetic_kwargs(cfg):
    """``SyntheticReID`` keyword arguments from ``cfg.DATASETS.SYNTHETIC`` (add_gltrans_config)."""
    s = cfg.DATASETS.SYNTHETIC
    return dict(num_train_ids=s.NUM_TRAIN_IDS, num_test_ids=s.NUM_TEST_IDS,
                num_cameras=s.NUM_CAMERAS, images_per_id_cam=s.IMAGES_PER_ID_CAM,
                height=s.HEIGHT, width=s.WIDTH, seed=s.SEED)


@DATASET_REGISTRY.register()
class SyntheticReID(Market1501):
    """Built-in synthetic person Re-ID set in Market-1501 layout, generated on first use.

    Lives in ``<root>/synthetic_reid`` (``bounding_box_train``, ``query``, ``bounding_box_test``,
    ``manifest.json``); read with fast-reid's ``Market1501.process_dir`` (pid 0 = distractor,
    as Market-1501's background class). Generated when missing, or regenerated when its manifest
    differs from the requested sizes; generation is atomic and locked, so DDP ranks may build
    the dataset at the same time. Sizes are keyword arguments (the trainer passes
    ``synthetic_kwargs(cfg)``), defaulting to ``DATASETS.SYNTHETIC.*``'s defaults.
    """
    dataset_dir = "synthetic_reid"
    dataset_name = "synthetic_reid"

    def __init__(self, root="datasets", num_train_ids=DEFAULTS["num_train_ids"],
                 num_test_ids=DEFAULTS["num_test_ids"], num_cameras=DEFAULTS["num_cameras"],
                 images_per_id_cam=DEFAULTS["images_per_id_cam"], height=DEFAULTS["height"],
                 width=DEFAULTS["width"], seed=DEFAULTS["seed"], **kwargs):
        self.root = root
        self.dataset_dir = osp.join(root, type(self).dataset_dir)
        self.data_dir = self.dataset_dir
        self.market1501_500k = False
        self.params = dict(num_train_ids=num_train_ids, num_test_ids=num_test_ids,
                           num_cameras=num_cameras, images_per_id_cam=images_per_id_cam,
                           height=height, width=width, seed=seed)
        self.manifest = generate_synthetic_reid(self.dataset_dir, **self.params)
        self.train_dir = osp.join(self.data_dir, "bounding_box_train")
        self.query_dir = osp.join(self.data_dir, "query")
        self.gallery_dir = osp.join(self.data_dir, "bounding_box_test")
        self.check_before_run([self.data_dir, self.train_dir, self.query_dir, self.gallery_dir])

        train = lambda: self.process_dir(self.train_dir)  # noqa: E731  (lazy, as Market1501)
        query = lambda: self.process_dir(self.query_dir, is_train=False)  # noqa: E731
        gallery = lambda: self.process_dir(self.gallery_dir, is_train=False)  # noqa: E731
        ImageDataset.__init__(self, train, query, gallery, **kwargs)

    def process_dir(self, dir_path, is_train=True):
        # Market1501's reader, in file-name order (glob order is file-system dependent, which
        # would make the sampler's index -> image mapping differ between machines).
        return sorted(super().process_dir(dir_path, is_train=is_train))


# ---------------------------------------------------------------- MSMT17 train+val

@DATASET_REGISTRY.register()
class MSMT17TrainVal(MSMT17):
    """MSMT17 with the train+val training protocol (TransReID, GLTrans paper).

    MSMT17's training identities (1041) come with two lists, ``list_train.txt`` (30,248 images)
    and ``list_val.txt`` (2,373 images of the same identities). fast-reid's ``MSMT17`` trains on
    ``list_train`` only, and adds ``list_val`` only under ``combineall=True`` -- which also adds
    the whole query and gallery to training. The published numbers the paper compares with
    train on list_train + list_val (32,621 images) and test on the usual query / gallery: that is
    this class. ``combineall=True`` still means "also add query + gallery", on top of that.

    Layout (the root itself holds the version folder, as fast-reid's ``MSMT17``)::

        <root>/MSMT17_V2/{mask_train_v2/, mask_test_v2/, list_train.txt, list_val.txt,
                          list_query.txt, list_gallery.txt}      (or MSMT17_V1/{train/, test/, ...})
    """
    dataset_name = "msmt17"  # same pid / camid prefix as MSMT17

    def __init__(self, root="datasets", **kwargs):
        check_dataset_root("MSMT17TrainVal", root)
        combineall = bool(kwargs.pop("combineall", False))
        super().__init__(root=root, **kwargs)  # train = list_train only
        val = self.process_dir(self.train_dir, self.list_val_path)
        train_paths = {item[0] for item in self._train}
        val = [item for item in val if item[0] not in train_paths]
        train_ids = {item[1] for item in self._train}
        new_ids = {item[1] for item in val} - train_ids
        logger.info("MSMT17TrainVal: %d list_train + %d list_val images (%d val identities not in "
                    "list_train).", len(self._train), len(val), len(new_ids))
        self._train = self._train + val
        self.combineall = combineall
        if combineall:
            self.combine_all()
        if self.mode == "train":
            self.data = self.train

"""VeRi-776 with viewpoint labels: the dataset ``VeRiViews`` and ``fill_num_views``.

``VeRiViews`` (``DATASETS.NAMES ("VeRiViews",)``) reads the folder fast-reid's ``VeRi`` reads,
``<DATASETS.ROOT>/veri/{image_train, image_query, image_test}/`` with images named
``<vehicle id>_c<camera, 3 digits>_...jpg`` (``0002_c002_00030600_0.jpg``; cameras 1-based in
the names, 0-based in the items; the same ``veri_`` training prefixes as fast-reid's reader,
so camera and identity labels agree with it), sorted by file name.

With ``views`` (the trainer passes ``MODEL.BACKBONE.SIE_VIEW``) each item also carries the
image's view id, ``(path, pid, camid, viewid)``, read from the VeRi-776 keypoint and
orientation annotations in ``DATASETS.VERI.VIEW_DIR`` (default: the dataset folder):

- ``keypoint_train.txt`` for ``image_train/``, ``keypoint_test.txt`` for ``image_query/`` and
  ``image_test/`` (the query images are test images, listed there under ``image_test``);
- one image a line, ``img_path x1 y1 ... x20 y20 orientation`` (42 fields separated by white
  space; ``VeRi/image_train/0190_c014_00051260_1.jpg -1 -1 ... 6``): the 20 key points (-1 =
  not visible) are not used, the orientation 0..7 (front, rear, left, left front, left rear,
  right, right front, right rear) is the view id.  Images are matched by base name, as
  TransReID's reader does; a line repeated with the same orientation is fine (the released
  files repeat some).

Without ``views`` no keypoint file is read: the items are fast-reid's triples (cameras only).
Checked when the dataset is built (``DatasetError`` naming the folder, the file or
``file:line`` and the fix): a missing keypoint file, a line without 42 fields or with an
orientation that is not 0..7, one image given two orientations, and -- by
``DATASETS.VERI.UNLABELED`` -- an image without a view label ("error": an error, as is a line
naming an image the folders lack; "drop": the image is left out; "unseen": it keeps view id -1,
which ``MODEL.BACKBONE.SIE_UNSEEN`` handles).  Whatever the policy, a split none of whose images
has a label is an error (the files belong to another copy of the data).

``fill_num_views(cfg)``: ``MODEL.BACKBONE.NUM_VIEWS 0`` ("from the data") -> the largest view id
of the training datasets + 1; with a fixed ``NUM_VIEWS``, a training or test view id outside the
table fails there, before the model is built; with ``SIE_VIEW`` on, a training set without any
view id fails there too.
"""
import logging
import os
import os.path as osp
import re

from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.bases import ImageDataset
from fastreid.data.datasets.veri import VeRi

from .checks import DatasetError, check_dataset_root

logger = logging.getLogger(__name__)

__all__ = ["KEYPOINT_FILES", "UNLABELED_POLICIES", "VeRiViews", "fill_num_views",
           "read_keypoint_views", "read_veri_folder", "veri_kwargs"]

NUM_KEYPOINTS = 20      # key points of the annotation, an x and a y each (-1 = not visible)
NUM_ORIENTATIONS = 8    # orientation classes 0..7 of the annotation
KEYPOINT_FIELDS = 1 + 2 * NUM_KEYPOINTS + 1  # image path, x1 y1 ... x20 y20, orientation
KEYPOINT_FILES = {"train": "keypoint_train.txt", "test": "keypoint_test.txt"}
SPLIT_DIRS = {"train": "image_train", "query": "image_query", "gallery": "image_test"}
_FILE_SPLITS = {"train": ("train",), "test": ("query", "gallery")}  # keypoint file -> splits
UNLABELED_POLICIES = ("error", "drop", "unseen")
VERI_NAME = re.compile(r"^(\d+)_c(\d{3})")  # <vehicle id>_c<camera>_...
_SHOWN = 3

_FORMAT = (f"one image a line: img_path x1 y1 ... x{NUM_KEYPOINTS} y{NUM_KEYPOINTS} orientation "
           f"({KEYPOINT_FIELDS} fields, orientation 0..{NUM_ORIENTATIONS - 1})")
_FILES_FIX = ("point DATASETS.VERI.VIEW_DIR at the folder holding the VeRi-776 keypoint files "
              "(keypoint_train.txt, keypoint_test.txt), or set MODEL.BACKBONE.SIE_VIEW False "
              "(camera SIE only, no keypoint file is read)")


def veri_kwargs(cfg):
    """``VeRiViews`` keyword arguments from the config (VIEW_DIR made absolute)."""
    view_dir = cfg.DATASETS.VERI.VIEW_DIR
    return dict(views=bool(cfg.MODEL.BACKBONE.SIE_VIEW),
                view_dir=osp.abspath(osp.expanduser(view_dir)) if view_dir else "",
                unlabeled=str(cfg.DATASETS.VERI.UNLABELED))


def read_veri_folder(split_dir):
    """[(absolute path, vehicle id, 0-based camera)] of the ``*.jpg`` images of a VeRi-776
    folder, sorted by file name (other files are ignored, as fast-reid's reader does).  A
    badly named image is a DatasetError."""
    items = []
    for fname in sorted(os.listdir(split_dir)):
        path = osp.abspath(osp.join(split_dir, fname))
        if not fname.endswith(".jpg") or not osp.isfile(path):
            continue
        m = VERI_NAME.match(fname)
        if m is None or int(m.group(2)) < 1:
            raise DatasetError(
                "image name does not follow the VeRi-776 naming <vehicle id>_c<camera, 3 digits "
                "from 001>_... (e.g. 0002_c002_00030600_0.jpg)", path,
                "rename it, or move it out of the folder (every *.jpg there is read)")
        items.append((path, int(m.group(1)), int(m.group(2)) - 1))
    return items


def read_keypoint_views(path):
    """{image base name: (view id, "file:line")} of a VeRi-776 keypoint file (the orientation,
    the last of the 42 fields of a line).  A malformed line, or an image given two different
    orientations, is a DatasetError naming ``file:line``; blank lines are skipped."""
    views = {}
    with open(path, "r", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}:{n}"
            if len(fields) != KEYPOINT_FIELDS:
                raise DatasetError(f"malformed keypoint line: {len(fields)} fields, expected "
                                   f"{_FORMAT}", where, _FILES_FIX)
            try:
                view = int(fields[-1])
            except ValueError:
                view = None
            if view is None or not 0 <= view < NUM_ORIENTATIONS:
                raise DatasetError(f"malformed keypoint line: orientation {fields[-1]!r} is not "
                                   f"an integer 0..{NUM_ORIENTATIONS - 1} ({_FORMAT})", where,
                                   _FILES_FIX)
            name = osp.basename(fields[0].replace("\\", "/"))
            seen = views.setdefault(name, (view, where))
            if seen[0] != view:
                raise DatasetError(f"image {name} has orientation {seen[0]} at {seen[1]} and "
                                   f"{view} here", where,
                                   "keep one line per image (or the same orientation)")
    return views


def _shown(values):
    values = list(values)
    return ", ".join(values[:_SHOWN]) + (f", ... ({len(values)} in all)"
                                         if len(values) > _SHOWN else "")


@DATASET_REGISTRY.register()
class VeRiViews(VeRi):
    """VeRi-776 with view ids from the keypoint files (see the module doc)."""
    dataset_dir = "veri"
    dataset_name = "veri"  # training pid / camera prefix, as fast-reid's VeRi

    def __init__(self, root="datasets", views=False, view_dir="", unlabeled="error", **kwargs):
        if unlabeled not in UNLABELED_POLICIES:
            raise DatasetError(f"DATASETS.VERI.UNLABELED {unlabeled!r} is not one of "
                               f"{UNLABELED_POLICIES}", "DATASETS.VERI.UNLABELED",
                               "use 'error', 'drop' or 'unseen'")
        self.root = root
        check_dataset_root("VeRi", root)  # the expected layout named when it is not there
        self.dataset_dir = self.data_dir = osp.join(root, type(self).dataset_dir)
        dirs = {s: osp.join(self.dataset_dir, d) for s, d in SPLIT_DIRS.items()}
        self.train_dir, self.query_dir, self.gallery_dir = (dirs[s] for s in SPLIT_DIRS)
        data = {s: read_veri_folder(d) for s, d in dirs.items()}
        self.views = bool(views)
        self.view_dir = (view_dir or self.dataset_dir) if self.views else ""
        if self.views:
            data = self._add_views(data, unlabeled)
        train = [(p, f"{self.dataset_name}_{pid}", f"{self.dataset_name}_{cam}") + tuple(rest)
                 for p, pid, cam, *rest in data["train"]]
        ImageDataset.__init__(self, train, data["query"], data["gallery"], **kwargs)

    def _add_views(self, data, unlabeled):
        """The items of each split with their view id (``unlabeled`` decides for the images
        the keypoint files do not label)."""
        out = {}
        for key, splits in _FILE_SPLITS.items():
            path = osp.join(self.view_dir, KEYPOINT_FILES[key])
            if not osp.isfile(path):
                raise DatasetError(f"VeRi-776 keypoint file {KEYPOINT_FILES[key]} not found",
                                   path, "MODEL.BACKBONE.SIE_VIEW reads the view ids from it: "
                                   + _FILES_FIX)
            labels = read_keypoint_views(path)
            folders = " or ".join(SPLIT_DIRS[s] + "/" for s in splits)
            names = {osp.basename(item[0]) for s in splits for item in data[s]}
            absent = [where for name, (_, where) in labels.items() if name not in names]
            if absent and unlabeled == "error":
                raise DatasetError(
                    f"the keypoint line names an image that is not in {folders} of "
                    f"{self.dataset_dir}", absent[0],
                    f"{_FILES_FIX}; or set DATASETS.VERI.UNLABELED 'drop' to ignore such lines")
            if absent:
                logger.warning("VeRiViews: %d line(s) of %s name images not in %s (first: %s); "
                               "ignored.", len(absent), path, folders, absent[0])
            for split in splits:
                out[split] = self._label(split, data[split], labels, path, unlabeled)
        return out

    def _label(self, split, items, labels, path, unlabeled):
        folder = osp.join(self.dataset_dir, SPLIT_DIRS[split])
        missing = [p for p, _, _ in items if osp.basename(p) not in labels]
        if items and len(missing) == len(items):
            raise DatasetError(f"none of the {len(items)} images of {folder} has a view label in "
                               f"the keypoint file (they belong to another copy of VeRi-776?)",
                               path, _FILES_FIX)
        if missing and unlabeled == "error":
            raise DatasetError(
                f"{len(missing)} image(s) of {folder} have no view label in the keypoint file "
                f"(first: {osp.basename(missing[0])})", path,
                f"{_FILES_FIX}; or set DATASETS.VERI.UNLABELED 'drop' (leave them out) or "
                f"'unseen' (view id -1: MODEL.BACKBONE.SIE_UNSEEN)")
        if missing:
            logger.warning("VeRiViews: %d of %d images of %s have no view label in %s (%s): %s "
                           "(DATASETS.VERI.UNLABELED %r).", len(missing), len(items), folder,
                           path, _shown(osp.basename(p) for p in missing),
                           "left out" if unlabeled == "drop" else "view id -1", unlabeled)
        out = []
        for p, pid, cam in items:
            label = labels.get(osp.basename(p))
            if label is None and unlabeled == "drop":
                continue
            out.append((p, pid, cam, -1 if label is None else label[0]))
        return out


def _view_ids(items):
    return {item[3] for item in items if len(item) > 3 and item[3] >= 0}


def fill_num_views(cfg):
    """``cfg`` with MODEL.BACKBONE.NUM_VIEWS filled (a clone; ``cfg`` itself when nothing
    changes).  0 means 'from the training data': the largest view id of the DATASETS.NAMES
    training sets + 1.  With NUM_VIEWS > 0 the view ids of the training and test sets must fit
    the table.  Either way some training set must give view ids (else every image would get
    the unseen-view policy, in training too).  Nothing to do without MODEL.BACKBONE.SIE_VIEW."""
    from .build import build_dataset  # build imports this module

    bb = cfg.MODEL.BACKBONE
    if not bb.SIE_VIEW:
        return cfg
    train = {name: _view_ids(build_dataset(cfg, name).train) for name in cfg.DATASETS.NAMES}
    total = max((max(v) + 1 for v in train.values() if v), default=0)
    if total == 0:
        raise DatasetError(
            f"MODEL.BACKBONE.SIE_VIEW is on but no training dataset ({', '.join(train)}) gives "
            f"view ids", "DATASETS.NAMES",
            "train on a dataset with view labels (VeRiViews with its keypoint files), or set "
            "MODEL.BACKBONE.SIE_VIEW False")
    if bb.NUM_VIEWS > 0:
        sources = [(f"training set {n}", v) for n, v in train.items()]
        for name in cfg.DATASETS.TESTS:
            data = build_dataset(cfg, name)
            sources.append((f"test set {name}", _view_ids(data.query + data.gallery)))
        for what, views in sources:
            bad = sorted(v for v in views if v >= bb.NUM_VIEWS)
            if bad:
                raise DatasetError(
                    f"view id(s) {bad} of the {what} are outside the SIE table of "
                    f"MODEL.BACKBONE.NUM_VIEWS={bb.NUM_VIEWS}", "MODEL.BACKBONE.NUM_VIEWS",
                    f"set it to {max(bad) + 1} or more (0 = from the training data)")
        return cfg
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.MODEL.BACKBONE.NUM_VIEWS = total
    if frozen:
        cfg.freeze()
    logger.info("Auto-scaling MODEL.BACKBONE.NUM_VIEWS=%d", total)
    return cfg

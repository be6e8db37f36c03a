r"""Datasets registered into fast-reid's ``DATASET_REGISTRY`` and dataset-root helpers.

- ``SyntheticReID``: the built-in synthetic set (see ``synthetic/``), read with fast-reid's
  Market-1501 reader from ``<root>/synthetic_reid`` and generated there on first use.
- ``MSMT17TrainVal``: MSMT17 trained on list_train + list_val (the protocol of TransReID and
  the GLTrans paper); query / gallery as fast-reid's ``MSMT17``.
- ``camera_index``: one integer camera index for fast-reid's two camera-id forms.
- ``CameraLayout`` / ``unseen_camera``: one SIE camera table for several training datasets
  (each its own rows), and the id of a test camera the training never saw.
- ``check_dataset_root``: a clear error for a dataset that is not where fast-reid looks.
- ``parse_market_name``: the one reader of Market-1501-style names ``<pid>_c<camera>...``,
  used by fast-reid's Market-1501 / DukeMTMC readers (``reader_names_checked``), ``ReIDFolder``
  and the tools' ``--camid-from-name``.  Any number of camera digits (``c10`` is camera 10;
  fast-reid's own pattern ``([-\d]+)_c(\d)`` reads it as camera 1); a name that breaks the rule
  or a camera / pid outside the set's range is a ``DatasetError`` naming the file.
- ``use_market_name_parser`` (applied by the runtime patch ``reader_names_checked``): fast-reid's
  Market-1501 / DukeMTMC readers parse names with ``parse_market_name`` (same items, same ranges and
  junk rule as fast-reid's), so a bad name is one line naming the file instead of ``AttributeError:
  'NoneType' object has no attribute 'groups'``, a bare ``AssertionError`` or a silently misread
  camera.
- ``check_train_set`` / ``check_image_headers``: an empty training folder, and test images
  that are not images, fail when the data is first read, naming the folder / file.
"""
import difflib
import functools
import glob
import logging
import numbers
import os.path as osp
import re

from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.bases import ImageDataset
from fastreid.data.datasets.market1501 import Market1501
from fastreid.data.datasets.msmt17 import MSMT17, TEST_DIR_KEY, TRAIN_DIR_KEY, VERSION_DICT

from ..errors import UserError
from .synthetic import DEFAULTS, generate_synthetic_reid

logger = logging.getLogger(__name__)

__all__ = [
    "SyntheticReID",
    "MSMT17TrainVal",
    "CameraLayout",
    "camera_index",
    "check_dataset_root",
    "check_image_headers",
    "check_train_set",
    "DatasetError",
    "MARKET_NAME",
    "parse_market_name",
    "read_reader_dir",
    "synthetic_kwargs",
    "use_market_name_parser",
    "unseen_camera",
]

class DatasetError(UserError, ValueError):
    """A dataset folder or file that the reader cannot use: names it, the rule and the fix."""


_ROOT_HINT = ("Set the dataset root with the config key DATASETS.ROOT (or the environment "
              "variable FASTREID_DATASETS, read by fast-reid when it is imported).")


# ---------------------------------------------------------------- camera ids

_TRAILING_INT = re.compile(r"(-?\d+)$")


def camera_index(camid):
    """One integer camera index for both forms fast-reid produces.

    fast-reid's readers give *training* camera ids as strings ``"{dataset_name}_{cam}"``
    (``"msmt17_10"``; ``"market1501_test_3"`` after ``combineall``) and ``CommDataset`` then
    relabels them by *sorted string order* ("msmt17_10" < "msmt17_2"), while *test* camera ids
    stay raw 0-based integers. With more than 10 cameras the relabelled training index and the
    test index of the same camera differ. This maps both forms to the dataset's own 0-based
    camera number: ``camera_index("msmt17_10") == camera_index(10) == 10``. Use it on the
    un-relabelled ids (the reader's), not on CommDataset's relabelled ones.
    """
    if isinstance(camid, bool):
        raise TypeError(f"camera id {camid!r} is a bool, not a camera id.")
    if isinstance(camid, numbers.Integral):
        return int(camid)
    if hasattr(camid, "item") and getattr(camid, "ndim", None) == 0:  # numpy / torch scalar
        return camera_index(camid.item())
    if isinstance(camid, str):
        m = _TRAILING_INT.search(camid.strip())
        if m:
            return int(m.group(1))
        raise ValueError(
            f"camera id {camid!r} does not end with an integer; expected an int or a string "
            "like 'msmt17_10' (fast-reid's '{dataset_name}_{cam}' training form)."
        )
    raise TypeError(f"camera id {camid!r} of type {type(camid).__name__}: expected int or str.")


def unseen_camera(camid):
    """The id of a test camera the training never saw: ``-1 - camera_index(camid)``.

    Negative, so the model treats it as "no camera id" (``MODEL.BACKBONE.SIE_UNSEEN``), and one
    per camera (camera 0 -> -1, camera 3 -> -4), so the evaluation still drops same-camera
    gallery matches as the protocol asks (with one id for all, no gallery match would count).
    """
    return -1 - camera_index(camid)


class CameraLayout:
    """The rows of one SIE camera table shared by the training datasets, in DATASETS.NAMES order.

    Dataset ``i`` spans ``c_i`` rows (its largest training camera index + 1) from the offset
    ``o_i = c_0 + ... + c_{i-1}``: its camera ``k`` is row ``o_i + k``, in training and in test,
    and ``total`` (the sum) is the table size ``MODEL.BACKBONE.NUM_CAMERAS 0`` asks for.  With
    one training dataset the offset is 0: the rows are its own camera numbers.

    A test camera whose row would fall into another dataset's rows (a camera of a training
    dataset beyond its training cameras, when more datasets follow it), or of a test set not in
    DATASETS.NAMES (cross-dataset), was never seen in training: it gets ``unseen_camera``.

    ``train_sets``: [(name, training items)] with fast-reid's training camera ids (strings
    ``"{dataset_name}_{cam}"``).  A dataset listed twice, or two datasets giving the same
    identity or camera labels (the same ``dataset_name`` prefix), are a DatasetError.
    """

    def __init__(self, train_sets):
        self.offsets, self.spans, self._train = {}, {}, {}
        owner = {}  # identity label -> dataset
        offset = 0
        for name, items in train_sets:
            if name in self.offsets:
                raise DatasetError(f"dataset {name} is listed twice", "DATASETS.NAMES",
                                   "list each training dataset once")
            cams = {item[2] for item in items}
            for pid in {item[1] for item in items}:
                other = owner.setdefault(pid, name)
                if other != name:
                    raise DatasetError(
                        f"training datasets {other} and {name} give the same identity label "
                        f"{pid!r} (the same dataset_name prefix): their identities would be "
                        f"merged", "DATASETS.NAMES",
                        "train on each dataset once (e.g. MSMT17TrainVal already holds MSMT17's "
                        "training set); for two sets of your own use ReIDFolder and ReIDFolder2")
            for c in cams:
                if c in self._train:  # a shared prefix, the identities apart
                    raise DatasetError(f"training datasets share the camera label {c!r}",
                                       "DATASETS.NAMES", "train on each dataset once")
                self._train[c] = offset + camera_index(c)
            span = max((camera_index(c) for c in cams), default=-1) + 1
            self.offsets[name], self.spans[name] = offset, span
            offset += span
        self.names = list(self.offsets)
        self.total = offset

    def train_index(self, camid):
        """Row of a training camera id (fast-reid's un-relabelled form)."""
        return self._train[camid]

    def test_index(self, name, camid):
        """Row of camera ``camid`` of test set ``name`` (``unseen_camera`` when not trained)."""
        if name not in self.offsets:
            return unseen_camera(camid)
        cam = camera_index(camid)
        if cam >= self.spans[name] and name != self.names[-1]:
            return unseen_camera(camid)
        return self.offsets[name] + cam


# ---------------------------------------------------------------- Market-1501-style names

MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")  # <pid>_c<camera>..., matched on the base name
_NAME_FIX = "rename it, or move it out of the folder"


def parse_market_name(path, *, cameras=(1, None), pids=None, naming="Market-1501",
                      example="0002_c1s1_000451_03.jpg", fix=_NAME_FIX):
    """(pid, 0-based camera) of a Market-1501-style image name ``<pid>_c<camera>...``, read
    from the base name of ``path``: ``0002_c1s1_000451_03.jpg`` -> (2, 0), ``0001_c10s1_...``
    -> (1, 9): every digit after ``_c`` is the camera number, cameras count from 1; pid -1
    (junk) is returned as it is.

    ``cameras`` / ``pids``: the (lo, hi) range of the set's 1-based camera numbers / person ids
    (hi None: no upper bound; ``pids`` None: not checked; -1 is always allowed).  A name that
    breaks the rule, or a number outside its range, is a ``DatasetError`` naming the file, the
    rule (``naming``, ``example``) and ``fix``."""
    lo, hi = cameras
    m = MARKET_NAME.match(osp.basename(path))
    if m is None:
        span = f"{lo}..{hi}" if hi is not None else f"from {lo}"
        raise DatasetError(f"image name does not follow the {naming} naming ({naming} names "
                           f"are <pid>_c<camera>..., e.g. {example}, with camera {span})", path,
                           fix)
    pid, cam = int(m.group(1)), int(m.group(2))
    if cam < lo:
        raise DatasetError(f"camera c{m.group(2)}: {naming} camera numbers start at {lo}", path,
                           fix)
    if hi is not None and cam > hi:
        raise DatasetError(f"camera {cam} is outside {naming}'s range {lo}..{hi} (every digit "
                           f"after _c is the camera number: c{m.group(2)} is camera {cam})",
                           path, fix)
    if pids and pid != -1 and (pid < pids[0] or (pids[1] is not None and pid > pids[1])):
        span = f"{pids[0]}..{pids[1]}" if pids[1] is not None else f"{pids[0]} or more"
        raise DatasetError(f"person id {pid} is outside {naming}'s range {span} (-1 = junk)",
                           path, fix)
    return pid, cam - 1


# ---------------------------------------------------------------- dataset roots

def _market_layouts(root):
    # fast-reid's Market1501 has dataset_dir '' and prefers a 'Market-1501-v15.09.15' sub-folder
    return [osp.join(root, "Market-1501-v15.09.15"), root], \
        ["bounding_box_train", "query", "bounding_box_test"]


def _msmt_required(main_dir):
    v = VERSION_DICT[main_dir]
    return [v[TRAIN_DIR_KEY], v[TEST_DIR_KEY], "list_train.txt", "list_val.txt",
            "list_query.txt", "list_gallery.txt"]


def _layouts(name, root):
    """[(dataset folder, [required entries])] accepted for ``name``; None = no fixed layout."""
    if name == "Market1501":
        dirs, req = _market_layouts(root)
        return [(d, req) for d in dirs]
    if name == "DukeMTMC":
        return [(osp.join(root, "DukeMTMC-reID"), ["bounding_box_train", "query",
                                                    "bounding_box_test"])]
    if name in ("MSMT17", "MSMT17TrainVal"):
        # fast-reid's MSMT17 takes the root itself and looks for MSMT17_V1 / MSMT17_V2 in it
        return [(osp.join(root, d), _msmt_required(d)) for d in VERSION_DICT]
    if name == "VeRi":
        return [(osp.join(root, "veri"), ["image_train", "image_query", "image_test"])]
    return None


_CHECKED = ("Market1501", "DukeMTMC", "MSMT17", "MSMT17TrainVal", "VeRi")


def check_dataset_root(name, root):
    """Raise FileNotFoundError naming the expected layout if dataset ``name`` is not under ``root``.

    Returns the dataset folder found (for ``SyntheticReID``: ``<root>/synthetic_reid``, which is
    generated on first use, so nothing is required). Names are fast-reid registry names (case is
    ignored for the known ones); an unregistered name is a ValueError. Registered datasets whose
    layout this helper does not know are not checked (None is returned).
    """
    if osp.exists(root) and not osp.isdir(root):
        raise DatasetError("the dataset root is a file, not a folder", osp.abspath(root),
                           "set DATASETS.ROOT (or the environment variable FASTREID_DATASETS) "
                           "to the folder that holds the datasets")
    canonical = {n.lower(): n for n in _CHECKED + ("SyntheticReID",)}.get(str(name).lower(), name)
    if canonical not in DATASET_REGISTRY._obj_map:  # fastreid's Registry has no __contains__
        known = sorted(DATASET_REGISTRY._obj_map, key=str.lower)
        close = [n for n in known if n.lower() == str(name).lower()] or \
            difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
        raise DatasetError(
            f"Unknown dataset {name!r}: not registered in fast-reid's DATASET_REGISTRY"
            + (f"; did you mean {close[0]!r}?" if close else ""),
            "DATASETS.NAMES / DATASETS.TESTS",
            f"use one of the {len(known)} registered names: {', '.join(known)}")
    if canonical == "SyntheticReID":
        return osp.join(root, SyntheticReID.dataset_dir)
    layouts = _layouts(canonical, root)
    if layouts is None:
        logger.debug("No layout check for dataset %s.", canonical)
        return None
    for folder, required in layouts:
        if osp.isdir(folder) and all(osp.exists(osp.join(folder, r)) for r in required):
            return folder
    lines = []
    for folder, required in layouts:
        missing = [r for r in required if not osp.exists(osp.join(folder, r))]
        state = f"(missing: {', '.join(missing)})" if osp.isdir(folder) else "(folder missing)"
        entries = ", ".join(r + ("/" if "." not in r else "") for r in required)
        lines.append(f"  {folder}/ with {entries}   {state}")
    raise FileNotFoundError(
        f"Dataset {canonical} not found under the dataset root '{root}' "
        f"(absolute: {osp.abspath(root)}). Expected one of:\n" + "\n".join(lines) + "\n"
        + _ROOT_HINT
    )


# ---------------------------------------------------------------- reader checks

# fast-reid reader -> its naming as fastreid/data/datasets/{market1501,dukemtmcreid}.py assert
# it: pid range (None: unchecked), camera range, junk pid -1 skipped, an example name
_NAMING = {
    "Market1501": ((0, 1501), (1, 6), True, "0002_c1s1_000451_03.jpg"),
    "DukeMTMC": (None, (1, 8), False, "0001_c2_f0046182.jpg"),
}
_READER_FIX = "rename it or move the file out of the folder (fast-reid reads every *.jpg there)"


def read_reader_dir(dataset, reader, dir_path, is_train=True):
    """fast-reid's ``process_dir`` of ``reader`` (a key of ``_NAMING``) with the names read by
    ``parse_market_name``: the same items (``*.jpg`` in glob order; training ids as
    ``"<dataset_name>_<id>"``), a bad name or number a ``DatasetError`` naming the file."""
    pids, cameras, skip_junk, example = _NAMING[reader]
    data = []
    for path in glob.glob(osp.join(dir_path, "*.jpg")):
        pid, camid = parse_market_name(path, cameras=cameras, pids=pids, naming=reader,
                                       example=example, fix=_READER_FIX)
        if skip_junk and pid == -1:
            continue  # junk images are ignored, as fast-reid does
        if is_train:
            pid = f"{dataset.dataset_name}_{pid}"
            camid = f"{dataset.dataset_name}_{camid}"
        data.append((path, pid, camid))
    return data


def use_market_name_parser():
    """Make fast-reid's Market-1501 / DukeMTMC readers read names with ``parse_market_name``
    (``Market1501.process_dir`` / ``DukeMTMC.process_dir``, and so every subclass,
    SyntheticReID included): fast-reid's own ``re.search(r"([-\\d]+)_c(\\d)", path)`` reads
    camera c10 as camera 1 (it trains silently), and a bad name fails with ``AttributeError``
    or a bare ``AssertionError``."""
    from fastreid.data.datasets.dukemtmcreid import DukeMTMC

    for reader, cls in (("Market1501", Market1501), ("DukeMTMC", DukeMTMC)):
        original = cls.process_dir

        def process_dir(self, dir_path, is_train=True, _reader=reader):
            return read_reader_dir(self, _reader, dir_path, is_train)

        functools.update_wrapper(process_dir, original)
        cls.process_dir = process_dir


def _folder_of(dataset, split):
    return getattr(dataset, {"train": "train_dir", "query": "query_dir",
                             "gallery": "gallery_dir"}[split], "") or ""


def check_train_set(name, dataset):
    """DatasetError naming the training folder when dataset ``name`` has no training image."""
    if dataset.train:
        return
    folder = _folder_of(dataset, "train")
    naming = _NAMING.get("Market1501" if isinstance(dataset, Market1501) else name)
    raise DatasetError(
        f"Dataset {name}: the training set is empty (no image the reader accepts)",
        folder or f"DATASETS.NAMES {name}",
        "put the training images there" + (f" (*.jpg named like {naming[3]})" if naming else "")
        + ", or set DATASETS.ROOT to the folder that holds them")


# the last bytes of a complete file, by format: a file that does not end so is decoded in full
_END_MARKERS = {"JPEG": (b"\xff\xd9",), "PNG": (b"IEND\xaeB`\x82",)}


def _check_image_file(path):
    from PIL import Image

    with Image.open(path) as img:  # the header only
        ends = _END_MARKERS.get(img.format)
        if ends:
            with open(path, "rb") as f:
                f.seek(max(0, osp.getsize(path) - 64))
                tail = f.read().rstrip(b"\x00\r\n ")
            if not tail.endswith(ends):
                img.load()  # maybe truncated (or trailing bytes): decode to be sure


def check_image_headers(name, dataset):
    """Open the header of every query / gallery image and look at its last bytes (cheap: only a
    file whose end marker is missing is decoded), so a file that is not an image, or is
    truncated, fails when the test set is first read, not at the first evaluation."""
    from PIL import UnidentifiedImageError

    from ..errors import CorruptImageError

    for split, items in (("query", dataset.query), ("gallery", dataset.gallery)):
        for item in items:
            path = item[0]
            try:
                _check_image_file(path)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
                raise CorruptImageError(
                    f"Cannot read {split} image {path} of dataset {name} ({type(e).__name__}: "
                    f"{e}). The file is corrupt, truncated or not an image: replace or delete "
                    f"it, or set DATALOADER.SKIP_CORRUPT True to skip unreadable images with a "
                    f"warning.") from e


# ---------------------------------------------------------------- synthetic set

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

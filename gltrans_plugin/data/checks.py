"""Checks of a dataset before it is used, one message each naming the file or folder and the fix:
a dataset that is not where fast-reid looks (``check_dataset_root``), an empty training folder
(``check_train_set``), test images that are not images (``check_image_headers``), too few
identities for the sampler (``check_identities``), a test set without query or gallery
(``check_test_set``)."""
import difflib
import logging
import os.path as osp

from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.market1501 import Market1501
from fastreid.data.datasets.msmt17 import TEST_DIR_KEY, TRAIN_DIR_KEY, VERSION_DICT

from ..errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["DatasetError", "check_dataset_root", "check_identities", "check_image_headers",
           "check_test_set", "check_train_set"]


class DatasetError(UserError, ValueError):
    """A dataset folder or file that the reader cannot use: names it, the rule and the fix."""


_ROOT_HINT = ("Set the dataset root with the config key DATASETS.ROOT (or the environment "
              "variable FASTREID_DATASETS, read by fast-reid when it is imported).")


def check_identities(cfg, train_set):
    """An identity sampler needs IMS_PER_BATCH / NUM_INSTANCE identities for one batch; with
    fewer it would loop forever without producing one."""
    num_pids = cfg.SOLVER.IMS_PER_BATCH // max(1, cfg.DATALOADER.NUM_INSTANCE)
    if "Identity" in cfg.DATALOADER.SAMPLER_TRAIN and len(train_set.pids) < num_pids:
        raise ValueError(
            f"The training set has {len(train_set.pids)} identities but a batch needs "
            f"{num_pids} (SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} / "
            f"DATALOADER.NUM_INSTANCE {cfg.DATALOADER.NUM_INSTANCE}): lower IMS_PER_BATCH.")


def check_test_set(name, data):
    """A test set with an empty query or gallery has nothing to evaluate: name its folders."""
    if data.query and data.gallery:
        return
    folders = [getattr(data, a) for a in ("query_dir", "gallery_dir") if hasattr(data, a)]
    raise ValueError(f"Dataset {name}: empty query ({len(data.query)} images) or gallery "
                     f"({len(data.gallery)} images); nothing to evaluate. Check its "
                     f"folders under the dataset root (DATASETS.ROOT)"
                     + (f": {', '.join(folders)}." if folders else "."))


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
        from .datasets import SyntheticReID  # (datasets.py uses these checks)

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



# fast-reid reader -> its naming as fastreid/data/datasets/{market1501,dukemtmcreid}.py assert
# it: pid range (None: unchecked), camera range, junk pid -1 skipped, an example name


def _folder_of(dataset, split):
    return getattr(dataset, {"train": "train_dir", "query": "query_dir",
                             "gallery": "gallery_dir"}[split], "") or ""


def check_train_set(name, dataset):
    """DatasetError naming the training folder when dataset ``name`` has no training image."""
    if dataset.train:
        return
    from .names import NAMING  # (names.py raises this module's DatasetError)

    folder = _folder_of(dataset, "train")
    naming = NAMING.get("Market1501" if isinstance(dataset, Market1501) else name)
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

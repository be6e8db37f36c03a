"""Your own Re-ID data as a registered dataset: a Market-1501-style folder anywhere, or lists.

``ReIDFolder`` (``DATASETS.NAMES ("ReIDFolder",)``, keys ``DATASETS.FOLDER.*``) reads either

- ``ROOT``: a folder holding ``bounding_box_train/``, ``query/`` and ``bounding_box_test/``
  whose images are named ``<pid>_c<camera>...`` (``0002_c1s1_000451_03.jpg``; camera numbers
  1-based as in Market-1501, any number of digits, read by ``names.parse_market_name`` as
  fast-reid's Market-1501 reader and the tools read them; pid -1 = junk, skipped as fast-reid
  does;
  ``.jpg`` / ``.jpeg`` / ``.png`` / ``.bmp``; other files are ignored), or
- ``TRAIN_LIST`` / ``QUERY_LIST`` / ``GALLERY_LIST``: text files with one image a line,
  ``path pid camid [viewid]`` separated by white space (paths without spaces; relative paths
  are relative to the list file's folder; camera and view ids 0-based integers; pid an integer,
  -1 = junk, skipped; blank lines and lines starting with ``#`` are ignored; UTF-8, a byte-order
  mark and CRLF line ends are fine).  A list left empty gives an empty split (e.g. a test-only
  set: query and gallery lists alone).  A line repeated (same image, same ids) is a warning in
  the training list (the image is sampled twice as often) and an error in the query and
  gallery lists (it would count twice in the metrics).

Relative ``ROOT`` / list paths are relative to the working directory.  Both forms give the same
items: training ``(path, "<name>_<pid>", "<name>_<camera>")`` as fast-reid's readers (the name
prefix keeps identities of merged datasets apart), test ``(path, pid, camera)``, paths
absolute.  View ids are read and checked; they are kept in ``view_ids`` ({path: id}) because
fast-reid's image sets carry no view field.

Checked when the dataset is built (``DatasetError`` naming the folder, file or ``file:line``
and the fix): a missing folder or list file, a listed image that does not exist, a line without
an integer pid or camera (or a non-integer view), a badly named image in a folder, and a query
identity with no gallery image.  A training identity with a single image is a warning, not an
error: fast-reid's identity sampler then repeats that image to fill its
``DATALOADER.NUM_INSTANCE`` slots (it does not hang), but the identity's triplet positives are
the same picture; a query whose identity is in the gallery only under the query's camera is a
warning too (it counts for nothing in the evaluation).

``ReIDFolder2`` is the same reader with keys ``DATASETS.FOLDER2.*`` and name prefix
``reidfolder2``, for training on two sets of your own at once.
"""
import logging
import os
import os.path as osp
from collections import Counter, defaultdict

from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.bases import ImageDataset

from .checks import DatasetError
from .names import parse_market_name

logger = logging.getLogger(__name__)

__all__ = ["ReIDFolder", "ReIDFolder2", "folder_kwargs", "read_list", "read_market_folder"]

SPLITS = ("train", "query", "gallery")
MARKET_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_NAME_FIX = ("rename it, or move it out of the folder; or describe the images with list files "
             "(DATASETS.FOLDER.TRAIN_LIST / QUERY_LIST / GALLERY_LIST)")
_JUNK_PID = -1
_SHOWN = 5  # identities / lines named in one message


def folder_kwargs(cfg, key="FOLDER"):
    """``ReIDFolder`` keyword arguments from ``cfg.DATASETS.<key>`` (paths made absolute)."""
    node = cfg.DATASETS[key]

    def path(value):
        return osp.abspath(osp.expanduser(value)) if value else ""

    return dict(folder=path(node.ROOT), train_list=path(node.TRAIN_LIST),
                query_list=path(node.QUERY_LIST), gallery_list=path(node.GALLERY_LIST))


def _shown(values):
    values = list(values)
    return ", ".join(str(v) for v in values[:_SHOWN]) + \
        (f", ... ({len(values)} in all)" if len(values) > _SHOWN else "")


def read_market_folder(split_dir):
    """[(absolute path, pid, 0-based camera)] of the images in a Market-1501-style folder,
    sorted by file name; junk (pid -1) skipped.  A badly named image is a DatasetError."""
    items = []
    for fname in sorted(os.listdir(split_dir)):
        path = osp.join(split_dir, fname)
        if not fname.lower().endswith(IMAGE_EXTENSIONS) or not osp.isfile(path):
            continue
        pid, cam = parse_market_name(osp.abspath(path), pids=(0, None), fix=_NAME_FIX)
        if pid == _JUNK_PID:
            continue
        items.append((osp.abspath(path), pid, cam))
    return items


def _int_field(text, what, where, line):
    try:
        return int(text)
    except ValueError:
        raise DatasetError(f"{what} {text!r} is not an integer in the line {line.strip()!r}",
                           where, "write each line as: path pid camid [viewid] (integers "
                           "after the path; paths without spaces)") from None


def read_list(list_file, split="train"):
    """([(absolute path, pid, camera)], {path: view id}, {path: "file:line"}) of a list file
    (``path pid camid [viewid]`` a line; UTF-8 with or without a byte-order mark, any line
    ends); junk (pid -1) skipped.  A bad line, or a listed image that does not exist, is a
    DatasetError naming ``file:line``; so is a repeated line in a query / gallery list
    (``split``), a warning in a training list."""
    base = osp.dirname(list_file)
    items, views, lines = [], {}, {}
    seen = {}  # (path, pid, camera, view) -> "file:line"
    with open(list_file, "r", encoding="utf-8-sig", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            where = f"{list_file}:{n}"
            if len(fields) < 3:
                missing = "the pid and the camera id" if len(fields) == 1 else "the camera id"
                raise DatasetError(f"line {line.strip()!r} lacks {missing}", where,
                                   "write each line as: path pid camid [viewid]")
            if len(fields) > 4:
                raise DatasetError(f"line {line.strip()!r} has {len(fields)} fields, at most "
                                   f"4 are read", where, "write each line as: path pid camid "
                                   "[viewid] (paths may not contain spaces)")
            pid = _int_field(fields[1], "pid", where, line)
            cam = _int_field(fields[2], "camera id", where, line)
            view = _int_field(fields[3], "view id", where, line) if len(fields) == 4 else None
            if pid == _JUNK_PID:
                continue
            if pid < 0:
                raise DatasetError(f"pid {pid} is negative (-1 = junk is the only negative id)",
                                   where, "renumber the identity from 0")
            if cam < 0 or (view is not None and view < 0):
                what = "camera" if cam < 0 else "view"
                raise DatasetError(f"{what} id {cam if cam < 0 else view} is negative", where,
                                   f"number the {what}s from 0")
            path = osp.abspath(osp.join(base, osp.expanduser(fields[0])))
            if not osp.isfile(path):
                raise DatasetError(f"listed image {fields[0]} does not exist (looked for "
                                   f"{path})", where, "fix the path (relative paths are "
                                   "relative to the list file's folder) or remove the line")
            first = seen.setdefault((path, pid, cam, view), where)
            if first != where:
                if split != "train":
                    raise DatasetError(
                        f"line {line.strip()!r} repeats line {first.rsplit(':', 1)[1]}: the "
                        f"image would count twice in the metrics", where,
                        f"remove one of the two lines from the {split} list")
                logger.warning("%s: line %r repeats line %s: the image is sampled twice as "
                               "often; remove one of them unless that is meant.", where,
                               line.strip(), first.rsplit(":", 1)[1])
            items.append((path, pid, cam))
            lines.setdefault(path, where)
            if view is not None:
                views[path] = view
    return items, views, lines


@DATASET_REGISTRY.register()
class ReIDFolder(ImageDataset):
    """Your own Re-ID data: a Market-1501-style folder or list files (see the module doc)."""
    config_key = "FOLDER"          # cfg.DATASETS.<config_key>: ROOT / *_LIST
    dataset_name = "reidfolder"    # training pid / camera prefix

    def __init__(self, root="datasets", folder="", train_list="", query_list="",
                 gallery_list="", **kwargs):
        self.root = root  # DATASETS.ROOT: not used, paths come from DATASETS.<config_key>
        key = f"DATASETS.{self.config_key}"
        lists = {"train": train_list, "query": query_list, "gallery": gallery_list}
        if folder and any(lists.values()):
            raise DatasetError(f"{type(self).__name__}: both a folder and list files are set",
                               f"{key}.ROOT and {key}.*_LIST",
                               "set either ROOT (a Market-1501-style folder) or the list files")
        if not folder and not any(lists.values()):
            raise DatasetError(
                f"{type(self).__name__}: no data given", f"{key}.ROOT / {key}.TRAIN_LIST",
                f"set {key}.ROOT to a folder with bounding_box_train/, query/ and "
                f"bounding_box_test/, or {key}.TRAIN_LIST / QUERY_LIST / GALLERY_LIST to "
                f"list files (path pid camid a line)")
        self.view_ids = {}
        self._lines = {}  # split -> {path: "file:line"} (list files)
        if folder:
            data = self._read_folder(folder, key)
        else:
            data = self._read_lists(lists, key)
        self._check(data)
        train = [(p, f"{self.dataset_name}_{pid}", f"{self.dataset_name}_{cam}")
                 for p, pid, cam in data["train"]]
        super().__init__(train, data["query"], data["gallery"], **kwargs)

    # ------------------------------------------------------------------ reading
    def _read_folder(self, folder, key):
        if not osp.isdir(folder):
            raise DatasetError(f"{type(self).__name__}: folder not found", folder,
                               f"set {key}.ROOT to the folder that holds bounding_box_train/, "
                               f"query/ and bounding_box_test/")
        self.dataset_dir = self.data_dir = folder
        dirs = {s: osp.join(folder, d) for s, d in MARKET_DIRS.items()}
        missing = [MARKET_DIRS[s] + "/" for s, d in dirs.items() if not osp.isdir(d)]
        if missing:
            raise DatasetError(f"{type(self).__name__}: the folder lacks {', '.join(missing)}",
                               folder, "a Market-1501-style folder holds bounding_box_train/, "
                               "query/ and bounding_box_test/ (an empty one for an unused "
                               "split); or use list files")
        self.train_dir, self.query_dir, self.gallery_dir = dirs["train"], dirs["query"], \
            dirs["gallery"]
        self._where = dirs
        return {s: read_market_folder(d) for s, d in dirs.items()}

    def _read_lists(self, lists, key):
        data, self._where = {}, {}
        for split in SPLITS:
            path = lists[split]
            self._where[split] = path or f"{key}.{split.upper()}_LIST (not set)"
            if not path:
                data[split] = []
                continue
            if not osp.isfile(path):
                raise DatasetError(f"{type(self).__name__}: {split} list file not found", path,
                                   f"set {key}.{split.upper()}_LIST to an existing file "
                                   f"(path pid camid [viewid] a line)")
            data[split], views, lines = read_list(path, split)
            self.view_ids.update(views)
            self._lines[split] = lines
        self.train_dir, self.query_dir, self.gallery_dir = (self._where[s] for s in SPLITS)
        return data

    # ------------------------------------------------------------------ checks
    def _check(self, data):
        name = type(self).__name__
        counts = Counter(pid for _, pid, _ in data["train"])
        single = sorted(pid for pid, n in counts.items() if n == 1)
        if single:
            logger.warning(
                "%s: %d of %d training identities have a single image (%s) in %s: fast-reid's "
                "identity sampler repeats it to fill DATALOADER.NUM_INSTANCE, so their triplet "
                "positives are the same picture. Add images of them or leave them out.",
                name, len(single), len(counts), _shown(single), self._where["train"])
        gallery_cams = defaultdict(set)
        for _, pid, cam in data["gallery"]:
            gallery_cams[pid].add(cam)
        absent, same_cam = {}, 0
        for path, pid, cam in data["query"]:
            if pid not in gallery_cams:
                absent.setdefault(pid, self._lines.get("query", {}).get(path, path))
            elif gallery_cams[pid] == {cam}:
                same_cam += 1
        if absent and data["gallery"]:
            ids = _shown(f"{pid} (first at {where})" for pid, where in absent.items())
            raise DatasetError(
                f"{name}: {len(absent)} query identit{'y has' if len(absent) == 1 else 'ies have'}"
                f" no gallery image: {ids}",
                self._where["gallery"],
                "add their gallery images, or remove them from the query (an identity absent "
                "from the gallery cannot be found)")
        if same_cam:
            logger.warning("%s: %d query images have gallery images of their identity under "
                           "their own camera only; the evaluation drops same-camera matches, so "
                           "they count for nothing.", name, same_cam)


@DATASET_REGISTRY.register()
class ReIDFolder2(ReIDFolder):
    """A second set of your own (keys ``DATASETS.FOLDER2.*``, prefix ``reidfolder2``)."""
    config_key = "FOLDER2"
    dataset_name = "reidfolder2"

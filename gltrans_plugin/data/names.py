r"""Market-1501-style file names ``<pid>_c<camera>...``: the one reader of them.

``parse_market_name`` serves fast-reid's Market-1501 / DukeMTMC readers (through
``use_market_name_parser``, which the runtime patch ``reader_names_checked`` applies),
``ReIDFolder`` and the tools' ``--camid-from-name``.  Any number of camera digits (``c10`` is
camera 10; fast-reid's own pattern ``([-\d]+)_c(\d)`` reads it as camera 1); a name that breaks
the rule, or a camera / pid outside the set's range, is a ``DatasetError`` naming the file
instead of ``AttributeError: 'NoneType' object has no attribute 'groups'``, a bare
``AssertionError`` or a silently misread camera.
"""
import functools
import glob
import os.path as osp
import re

from fastreid.data.datasets.market1501 import Market1501

from .checks import DatasetError

__all__ = ["MARKET_NAME", "NAMING", "parse_market_name", "read_reader_dir",
           "use_market_name_parser"]

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


NAMING = {
    "Market1501": ((0, 1501), (1, 6), True, "0002_c1s1_000451_03.jpg"),
    "DukeMTMC": (None, (1, 8), False, "0001_c2_f0046182.jpg"),
}
_READER_FIX = "rename it or move the file out of the folder (fast-reid reads every *.jpg there)"


def read_reader_dir(dataset, reader, dir_path, is_train=True):
    """fast-reid's ``process_dir`` of ``reader`` (a key of ``NAMING``) with the names read by
    ``parse_market_name``: the same items (``*.jpg`` in glob order; training ids as
    ``"<dataset_name>_<id>"``), a bad name or number a ``DatasetError`` naming the file."""
    pids, cameras, skip_junk, example = NAMING[reader]
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

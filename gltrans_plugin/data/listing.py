"""The images a tool works on: every image under a folder, a list file (with optional camera
ids), and camera ids read from Market-style file names.  ``tools/extract_features.py``,
``tools/search.py`` and ``search`` share them.
"""
import errno
import os
import re
from typing import List, Sequence

from ..errors import UserError
from .checks import DatasetError
from .names import parse_market_name
from .folder import IMAGE_EXTENSIONS

__all__ = ["CAMID_STYLES", "ImageInputError", "camids_from_names", "image_camids",
           "list_images", "read_image_list"]

CAMID_STYLES = ("market",)


class ImageInputError(UserError, ValueError):
    """An image given to the extractor or a tool that it cannot use as it is."""


def list_images(folder: str) -> List[str]:
    """Absolute paths of every image (``IMAGE_EXTENSIONS``, any case) under ``folder``,
    recursively, sorted."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(2, "image folder not found", folder)
    out = []
    for d, dirs, files in os.walk(folder):
        dirs.sort()
        out += [os.path.join(d, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    for p in out:
        _check_link(p)
    return sorted(os.path.abspath(p) for p in out)


def _check_link(path):
    """An image path that is a symbolic link must lead to a file."""
    if not os.path.islink(path):
        return
    try:
        os.stat(path)
    except OSError as e:
        why = ("loops (it leads back to itself)" if e.errno == errno.ELOOP
               else f"points to {os.readlink(path)}, which does not exist")
        raise ImageInputError(f"broken symbolic link: it {why}", os.path.abspath(path),
                              "fix its target or remove the link") from None


def read_image_list(list_file: str):
    """(absolute paths, camids or None per line) of a list file: one image path per line,
    optionally followed by whitespace (or a tab) and an integer camera id; blank lines and
    lines starting with ``#`` are skipped; relative paths are relative to the list file's
    folder.  UTF-8 with or without a byte-order mark, any line ends; bytes that are not UTF-8
    are kept (surrogate escapes), so such file names still open.  An image listed twice is a
    ``DatasetError`` naming both lines (its features would be counted twice)."""
    base = os.path.dirname(os.path.abspath(list_file))
    paths, cams, seen = [], [], {}
    with open(list_file, encoding="utf-8-sig", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            path, cam = line, None
            parts = line.rsplit("\t", 1) if "\t" in line else line.rsplit(None, 1)
            if len(parts) == 2 and re.fullmatch(r"-?\d+", parts[1].strip()):
                path, cam = parts[0].strip(), int(parts[1])
            path = os.path.normpath(os.path.join(base, os.path.expanduser(path)))
            first = seen.setdefault(path, n)
            if first != n:
                raise DatasetError(f"image {path} is listed twice, on lines {first} and {n}",
                                   f"{list_file}:{n}", "remove one of the two lines")
            paths.append(path)
            cams.append(cam)
    if not paths:
        raise ValueError(f"{list_file}: no image paths in the list file (one path per line, "
                         f"optionally followed by a camera id).")
    return paths, cams


def image_camids(paths, list_camids, camid=None, camid_from_name=None):
    """One camera id per image of ``paths`` (None = not known): the list file's
    (``list_camids``, or None), else ``camid``, else parsed from the name (``camid_from_name``
    a ``CAMID_STYLES`` style); None when no image has one."""
    n = len(paths)
    cams = list(list_camids) if list_camids is not None else [None] * n
    missing = [i for i, c in enumerate(cams) if c is None]
    if missing and camid is not None:
        for i in missing:
            cams[i] = int(camid)
    elif missing and camid_from_name:
        parsed = camids_from_names([paths[i] for i in missing], camid_from_name)
        for i, c in zip(missing, parsed):
            cams[i] = c
    return None if all(c is None for c in cams) else cams


def camids_from_names(paths: Sequence[str], style: str = "market") -> List[int]:
    """0-based camera ids parsed from file names: ``market`` = Market-1501 / DukeMTMC names
    ``<pid>_c<cam>...`` (camera 3 -> 2, c10 -> 9; ``names.parse_market_name``)."""
    if style not in CAMID_STYLES:
        raise ValueError(f"camera-id style {style!r}: use one of {CAMID_STYLES}.")
    fix = ("no camera id can be read from its name: give --camid N, or a list file with a "
           "camera-id column")
    return [parse_market_name(p, naming="Market-1501 / DukeMTMC", fix=fix)[1] for p in paths]

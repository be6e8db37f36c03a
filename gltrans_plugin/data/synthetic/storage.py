"""The synthetic Re-ID set on disk: its parameters, file layout, manifest, and a safe write.

``generate_synthetic_reid(root_dir, ...)`` writes

    root_dir/
      bounding_box_train/  {pid:04d}_c{cam}s1_{frame:06d}_00.jpg   (pids 1..num_train_ids)
      query/               one image per test identity for about half of the cameras
      bounding_box_test/   every other test image + pid-0 distractors (Market's "background")
      manifest.json        generator version, parameters and file counts

which fast-reid's own ``Market1501.process_dir`` parses (cam is 1-based in the name, <= 6); the
images come from ``draw``.  The set is written into a temporary sibling folder and renamed into
place under a file lock, so a half-written set is never read and concurrent callers (DDP ranks)
are safe; a set whose manifest differs from the requested parameters is replaced, and a set with
missing files gets them written again.  A file the generator did not write is never deleted:
it is kept (with a warning) beside a set of the same parameters, and a set of other parameters
that has such files is not replaced (FileExistsError naming them).
"""
import contextlib
import json
import logging
import os
import os.path as osp
import shutil
import time
import uuid

from ...config import SYNTHETIC_DEFAULTS
from . import draw
from .draw import GENERATOR_VERSION

try:  # POSIX advisory lock; without it (Windows) the atomic rename alone still protects readers
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

logger = logging.getLogger(__name__)

__all__ = ["DEFAULTS", "MANIFEST_NAME", "SPLIT_DIRS", "generate_synthetic_reid",
           "is_valid_synthetic_reid", "plan_files", "read_manifest", "set_differences",
           "synthetic_params"]

MANIFEST_NAME = "manifest.json"
SPLIT_DIRS = ("bounding_box_train", "query", "bounding_box_test")
# The generator's defaults are DATASETS.SYNTHETIC.* (config.SYNTHETIC_DEFAULTS), lower-cased.
DEFAULTS = {k.lower(): v for k, v in SYNTHETIC_DEFAULTS.items()}
_MAX_PID = 1501  # Market1501.process_dir asserts 0 <= pid <= 1501
_MAX_CAMERAS = 6  # Market1501.process_dir asserts 1 <= cam <= 6


def synthetic_params(**overrides):
    """The full, validated parameter dict (defaults overridden by ``overrides``)."""
    unknown = set(overrides) - set(DEFAULTS) - {"group_size", "num_distractors"}
    if unknown:
        raise ValueError(
            f"Unknown synthetic data set parameter(s) {sorted(unknown)}; known: "
            f"{sorted(DEFAULTS) + ['group_size', 'num_distractors']}."
        )
    p = dict(DEFAULTS)
    p["group_size"] = 4
    p["num_distractors"] = None
    p.update({k: v for k, v in overrides.items() if v is not None})
    if p["num_distractors"] is None:
        p["num_distractors"] = p["num_test_ids"] // 2
    for key in p:
        p[key] = int(p[key])
    if p["num_train_ids"] < 1 or p["num_test_ids"] < 1:
        raise ValueError(
            f"num_train_ids ({p['num_train_ids']}) and num_test_ids ({p['num_test_ids']}) must be "
            ">= 1 (DATASETS.SYNTHETIC.NUM_TRAIN_IDS / NUM_TEST_IDS)."
        )
    if p["num_train_ids"] + p["num_test_ids"] > _MAX_PID:
        raise ValueError(
            f"num_train_ids + num_test_ids = {p['num_train_ids'] + p['num_test_ids']} exceeds "
            f"{_MAX_PID}, the largest pid fast-reid's Market1501 reader accepts; use fewer ids."
        )
    if not 2 <= p["num_cameras"] <= _MAX_CAMERAS:
        raise ValueError(
            f"num_cameras={p['num_cameras']}: must be in 2..{_MAX_CAMERAS} (queries are matched "
            "across cameras; Market-1501 file names hold one camera digit, fast-reid accepts 1-6)."
        )
    if p["images_per_id_cam"] < 1:
        raise ValueError(f"images_per_id_cam={p['images_per_id_cam']}: must be >= 1.")
    if p["height"] < 32 or p["width"] < 16:
        raise ValueError(
            f"image size {p['height']}x{p['width']} is too small to draw a person; use at least "
            "32x16 (DATASETS.SYNTHETIC.HEIGHT / WIDTH)."
        )
    if p["group_size"] < 1:
        raise ValueError(f"group_size={p['group_size']}: must be >= 1.")
    if p["num_distractors"] < 0:
        raise ValueError(f"num_distractors={p['num_distractors']}: must be >= 0.")
    if p["seed"] < 0:
        raise ValueError(f"seed={p['seed']}: must be >= 0 (numpy SeedSequence entropy).")
    return p



# ---------------------------------------------------------------- layout + atomic write

def plan_files(p):
    """Every file of the set of parameters ``p``: (split, file name, pid, cam (1-based), the
    keys of its image's random stream)."""
    n_tr, n_te, n_cam, k = (p["num_train_ids"], p["num_test_ids"], p["num_cameras"],
                            p["images_per_id_cam"])
    items = []
    frame = 0

    def name(pid, cam):
        nonlocal frame
        frame += 1
        return f"{pid:04d}_c{cam}s1_{frame:06d}_00.jpg"

    for pid in range(1, n_tr + 1):
        for cam in range(1, n_cam + 1):
            for j in range(k):
                items.append(("bounding_box_train", name(pid, cam), pid, cam,
                              (draw.TAG_IMG, pid, cam, j)))
    n_query_cams = max(1, n_cam // 2)
    for pid in range(n_tr + 1, n_tr + n_te + 1):
        qcams = draw.query_cameras(p["seed"], pid, n_cam, n_query_cams)
        for cam in range(1, n_cam + 1):
            for j in range(k):
                split = "query" if (cam in qcams and j == 0) else "bounding_box_test"
                items.append((split, name(pid, cam), pid, cam, (draw.TAG_IMG, pid, cam, j)))
    for d in range(p["num_distractors"]):
        cam = d % n_cam + 1
        items.append(("bounding_box_test", name(0, cam), 0, cam, (draw.TAG_DISTRACTOR, d)))
    return items


def read_manifest(root_dir):
    """The manifest dict of a generated set, or None when there is none / it is unreadable."""
    path = osp.join(root_dir, MANIFEST_NAME)
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_valid_synthetic_reid(root_dir, **params):
    """True when ``root_dir`` holds a complete set generated with exactly these parameters
    (files the generator did not write may be there too: see ``set_differences``)."""
    p = synthetic_params(**params)
    m = read_manifest(root_dir)
    if not m or m.get("version") != GENERATOR_VERSION or m.get("params") != p:
        return False
    return not set_differences(root_dir, p)[0]


def _listing(root_dir):
    out = set()
    for split in SPLIT_DIRS:
        d = osp.join(root_dir, split)
        if osp.isdir(d):
            out.update((split, f) for f in os.listdir(d))
    return out


def set_differences(root_dir, params):
    """(generated files missing, files the generator did not write) of the set in ``root_dir``
    against the plan of ``params``; each a sorted list of (split folder, file name)."""
    planned = {(split, fname) for split, fname, *_ in plan_files(params)}
    present = _listing(root_dir)
    return sorted(planned - present), sorted(present - planned)


def _names(files, n=3):
    shown = ", ".join(f"{split}/{name}" if split else name for split, name in files[:n])
    return shown + (f", ... ({len(files)} in all)" if len(files) > n else "")


def _warn_foreign(root_dir, extra):
    if extra:
        logger.warning("The synthetic Re-ID set at %s holds %d files the generator did not "
                       "write (%s); they are kept (and read as part of the set when they "
                       "follow the naming).", root_dir, len(extra), _names(extra))


def _repair_or_check(root_dir, old, p, force):
    """A folder with a manifest: same parameters -> write the missing generated files in place
    and keep every other file (returns the manifest); other parameters -> None when the whole
    set may be replaced, FileExistsError when files the generator did not write are there
    (a new set would delete them)."""
    same = not force and old.get("version") == GENERATOR_VERSION and old.get("params") == p
    if same:
        missing, extra = set_differences(root_dir, p)
        _warn_foreign(root_dir, extra)
        if missing:
            logger.warning("The synthetic Re-ID set at %s lacks %d of its generated files (%s); "
                           "writing them again (the other files are kept).", root_dir,
                           len(missing), _names(missing))
            return _write_set(root_dir, p, only=set(missing))
        return old
    try:
        old_params = synthetic_params(**old.get("params", {}))
    except (TypeError, ValueError):
        old_params = None
    extra = set_differences(root_dir, old_params)[1] if old_params else sorted(_listing(root_dir))
    extra += sorted(("", f) for f in os.listdir(root_dir)
                    if f not in SPLIT_DIRS and f != MANIFEST_NAME)
    if extra:
        raise FileExistsError(
            f"{root_dir} holds {len(extra)} files the synthetic-set generator did not write "
            f"({_names(extra)}); making the set for other parameters would delete them. Move "
            f"them away, or choose another dataset root (DATASETS.ROOT / env FASTREID_DATASETS).")
    changed = {k: (old.get("params", {}).get(k), v) for k, v in p.items()
               if old.get("params", {}).get(k) != v}
    logger.warning("Regenerating the synthetic Re-ID set at %s for other parameters (%s).",
                   root_dir, ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items())
                   or f"generator version {old.get('version')} -> {GENERATOR_VERSION}")
    return None


@contextlib.contextmanager
def _lock(path):
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _write_set(tmp_dir, p, only=None):
    """Render the set of ``p`` into ``tmp_dir`` (only the (split, name) files in ``only`` when
    given, each through a temporary name) and write its manifest."""
    for split in SPLIT_DIRS:
        os.makedirs(osp.join(tmp_dir, split), exist_ok=only is not None)
    seed, h, w = p["seed"], p["height"], p["width"]
    cams = {c: draw.camera(seed, c, h, w) for c in range(1, p["num_cameras"] + 1)}
    ids = {}
    counts = dict.fromkeys(SPLIT_DIRS, 0)
    pids = {s: set() for s in SPLIT_DIRS}
    for split, fname, pid, cam, keys in plan_files(p):
        counts[split] += 1
        pids[split].add(pid)
        if only is not None and (split, fname) not in only:
            continue
        if pid and pid not in ids:
            ids[pid] = draw.identity(seed, pid, p["group_size"])
        data = draw.render_image(p, ids.get(pid), cams[cam], draw.random_stream(seed, *keys))
        target = osp.join(tmp_dir, split, fname)
        with open(target + ".part" if only is not None else target, "wb") as f:
            f.write(data)
        if only is not None:
            os.replace(target + ".part", target)
    manifest = dict(
        generator="gltrans_plugin.data.synthetic",
        version=GENERATOR_VERSION,
        params=p,
        counts=counts,
        num_ids={s: len(pids[s] - {0}) for s in SPLIT_DIRS},
        num_distractors=p["num_distractors"],
        layout="Market-1501: {pid:04d}_c{cam}s1_{frame:06d}_00.jpg; pid 0 = distractor",
    )
    with open(osp.join(tmp_dir, MANIFEST_NAME), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    return manifest


def generate_synthetic_reid(root_dir, *, num_train_ids=DEFAULTS["num_train_ids"],
                            num_test_ids=DEFAULTS["num_test_ids"],
                            num_cameras=DEFAULTS["num_cameras"],
                            images_per_id_cam=DEFAULTS["images_per_id_cam"],
                            height=DEFAULTS["height"], width=DEFAULTS["width"],
                            seed=DEFAULTS["seed"], group_size=4, num_distractors=None,
                            force=False):
    """Write the synthetic set into ``root_dir`` (the folder that will hold the split folders).

    Returns the manifest dict. Does nothing when ``root_dir`` already holds a complete set made
    with the same parameters (unless ``force``); replaces a set made with other parameters.
    Refuses (FileExistsError) to replace a non-empty folder that has no manifest: that is not
    a generated set. Safe to call from several processes at once.
    """
    p = synthetic_params(num_train_ids=num_train_ids, num_test_ids=num_test_ids,
                         num_cameras=num_cameras, images_per_id_cam=images_per_id_cam,
                         height=height, width=width, seed=seed, group_size=group_size,
                         num_distractors=num_distractors)
    root_dir = osp.abspath(root_dir)
    parent, base = osp.split(root_dir)
    os.makedirs(parent, exist_ok=True)
    with _lock(osp.join(parent, f".{base}.lock")):
        if not force and is_valid_synthetic_reid(root_dir, **p):
            logger.info("Synthetic Re-ID set already present at %s (seed %d).", root_dir, p["seed"])
            _warn_foreign(root_dir, set_differences(root_dir, p)[1])
            return read_manifest(root_dir)
        if osp.exists(root_dir) and read_manifest(root_dir) is None and os.listdir(root_dir):
            raise FileExistsError(
                f"{root_dir} exists, is not empty and has no {MANIFEST_NAME}: it is not a "
                "generated synthetic set, so it is not overwritten. Remove it or choose another "
                "dataset root (DATASETS.ROOT / env FASTREID_DATASETS)."
            )
        # we hold the lock: any leftover temporary sibling is from a crashed run
        for name in os.listdir(parent):
            if name.startswith(f".{base}.tmp-") or name.startswith(f".{base}.old-"):
                shutil.rmtree(osp.join(parent, name), ignore_errors=True)
        old = read_manifest(root_dir) if osp.exists(root_dir) else None
        if old is not None:
            repaired = _repair_or_check(root_dir, old, p, force)
            if repaired is not None:
                return repaired
        logger.info("Generating the synthetic Re-ID set at %s with %s ...", root_dir, p)
        t0 = time.perf_counter()
        tmp = osp.join(parent, f".{base}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            manifest = _write_set(tmp, p)
            if osp.exists(root_dir):
                old = osp.join(parent, f".{base}.old-{uuid.uuid4().hex[:8]}")
                os.rename(root_dir, old)
                os.rename(tmp, root_dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, root_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("Synthetic Re-ID set written to %s in %.1f s: %s images.", root_dir,
                    time.perf_counter() - t0, manifest["counts"])
        return manifest

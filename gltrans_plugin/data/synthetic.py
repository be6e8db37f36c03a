"""Built-in synthetic Re-ID data set: a generator that writes a real Market-1501 layout.

``generate_synthetic_reid(root_dir, ...)`` draws person-like figures and writes

    root_dir/
      bounding_box_train/  {pid:04d}_c{cam}s1_{frame:06d}_00.jpg   (pids 1..num_train_ids)
      query/               one image per test identity for about half of the cameras
      bounding_box_test/   every other test image + pid-0 distractors (Market's "background")
      manifest.json        generator version, parameters and file counts

which fast-reid's own ``Market1501.process_dir`` parses (cam is 1-based in the name, <= 6).

Why it is a retrieval problem and not a toy:
- identities come in groups (``group_size``) that share body build and the coarse colours of
  shirt, trousers, skin and hair; group members differ only in one or two local details (hat,
  bag, shoe colour, a torso stripe, a chest logo), and the coarse palettes are small, so
  different groups also collide;
- every camera has its own colour cast, brightness, textured background, blur, noise level and
  viewing scale; query and gallery are matched across cameras only (fast-reid removes
  same-camera matches), so the camera dominates raw pixels;
- every image has its own pose (stride, arm swing, facing), scale, translation, bounding-box
  crop jitter and, often, a partial occluder (a pole, a box, a side wall).

Everything is deterministic from ``seed``: each identity, camera and image draws from its own
``numpy.random.Generator`` keyed by (seed, kind, index...), drawing uses PIL, JPEG quality and
chroma subsampling are fixed, so the same parameters give byte-identical files regardless of
generation order. The set is written into a temporary sibling folder and renamed into place
under a file lock, so a half-written set is never read and concurrent callers (DDP ranks) are
safe; a set whose manifest differs from the requested parameters is replaced, and a set with
missing files gets them written again.  A file the generator did not write is never deleted:
it is kept (with a warning) beside a set of the same parameters, and a set of other parameters
that has such files is not replaced (FileExistsError naming them).
"""
import contextlib
import io
import json
import logging
import math
import os
import os.path as osp
import shutil
import time
import uuid

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..config import SYNTHETIC_DEFAULTS

try:  # POSIX advisory lock; without it (Windows) the atomic rename alone still protects readers
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

logger = logging.getLogger(__name__)

__all__ = [
    "GENERATOR_VERSION",
    "DEFAULTS",
    "SPLIT_DIRS",
    "MANIFEST_NAME",
    "generate_synthetic_reid",
    "synthetic_params",
    "read_manifest",
    "is_valid_synthetic_reid",
]

GENERATOR_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLIT_DIRS = ("bounding_box_train", "query", "bounding_box_test")
# The generator's defaults are DATASETS.SYNTHETIC.* (config.SYNTHETIC_DEFAULTS), lower-cased.
DEFAULTS = {k.lower(): v for k, v in SYNTHETIC_DEFAULTS.items()}
JPEG_QUALITY = 92
JPEG_SUBSAMPLING = 0  # 4:4:4: small coloured details (logo, shoes) survive the encoding
_SUPERSAMPLE = 2  # figures are drawn at 2x and downsampled (anti-aliasing)
_MAX_PID = 1501  # Market1501.process_dir asserts 0 <= pid <= 1501
_MAX_CAMERAS = 6  # Market1501.process_dir asserts 1 <= cam <= 6

# RNG stream tags: each kind of object draws from its own stream
_TAG_GROUP, _TAG_ID, _TAG_CAM, _TAG_IMG, _TAG_QUERY, _TAG_DISTRACTOR = range(1, 7)

# Coarse palettes (RGB). Kept small on purpose so that different groups collide.
_SHIRTS = np.array([
    (200, 40, 40), (40, 70, 170), (235, 235, 230), (30, 30, 35), (60, 140, 70),
    (230, 200, 60), (130, 130, 135), (150, 80, 150),
], dtype=np.float64)
_PANTS = np.array([
    (35, 40, 80), (25, 25, 28), (110, 110, 115), (150, 120, 80), (60, 90, 140), (200, 195, 180),
], dtype=np.float64)
_SKINS = np.array([(240, 205, 180), (205, 160, 120), (150, 105, 75), (95, 65, 45)], np.float64)
_HAIRS = np.array([(25, 20, 15), (90, 60, 30), (200, 170, 100), (130, 130, 130)], np.float64)
# Vivid colours of local details.
_DETAILS = np.array([
    (255, 0, 0), (0, 200, 0), (0, 90, 255), (255, 220, 0), (255, 120, 0), (0, 220, 220),
    (230, 0, 200), (255, 255, 255), (15, 15, 15), (120, 60, 20),
], dtype=np.float64)
_DETAIL_KINDS = ("hat", "bag", "shoes", "stripe", "logo")


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


def _rng(seed, *keys):
    return np.random.default_rng([seed, *keys])


def _pick(rng, palette, jitter=0.0):
    c = palette[rng.integers(len(palette))]
    if jitter:
        c = c + rng.normal(0.0, jitter, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _other_colour(rng, current):
    """A detail colour clearly different from ``current`` (None counts as different from all)."""
    cands = [i for i in range(len(_DETAILS))
             if current is None or np.abs(_DETAILS[i] - current).sum() > 120]
    return tuple(int(v) for v in _DETAILS[cands[rng.integers(len(cands))]])


# ---------------------------------------------------------------- identities and cameras

def _group_appearance(seed, group):
    """Coarse appearance shared by a group of identities, and its default local details."""
    rng = _rng(seed, _TAG_GROUP, group)
    g = dict(
        shirt=_pick(rng, _SHIRTS, 8), pants=_pick(rng, _PANTS, 8), skin=_pick(rng, _SKINS, 6),
        hair=_pick(rng, _HAIRS, 6), short_sleeves=bool(rng.random() < 0.4),
        height=float(rng.uniform(0.80, 0.92)), shoulder=float(rng.uniform(0.10, 0.14)),
        limb=float(rng.uniform(0.075, 0.095)),
    )
    g["hat"] = _pick(rng, _DETAILS) if rng.random() < 0.3 else None
    g["bag"] = ((_pick(rng, _DETAILS), int(rng.choice((-1, 1))), str(rng.choice(("side", "back"))))
                if rng.random() < 0.35 else None)
    g["shoes"] = _pick(rng, _DETAILS[[8, 9, 7]])  # plain black / brown / white by default
    g["stripe"] = ((_pick(rng, _DETAILS), float(rng.uniform(0.3, 0.7)))
                   if rng.random() < 0.3 else None)
    g["logo"] = ((_pick(rng, _DETAILS), str(rng.choice(("box", "dot"))))
                 if rng.random() < 0.3 else None)
    # the order in which members of this group change a detail
    g["order"] = [_DETAIL_KINDS[i] for i in rng.permutation(len(_DETAIL_KINDS))]
    return g


def _identity(seed, pid, group_size):
    """Group appearance with exactly one local detail changed (a different one per member)."""
    group, member = divmod(pid - 1, group_size)
    a = _group_appearance(seed, group)
    rng = _rng(seed, _TAG_ID, pid)
    kind = a["order"][member % len(_DETAIL_KINDS)]
    # members beyond len(_DETAIL_KINDS) change a second detail too, so members stay distinct
    kinds = [kind] if member < len(_DETAIL_KINDS) else [kind, a["order"][(member + 1) % 5]]
    for kind in kinds:
        if kind == "hat":
            a["hat"] = None if a["hat"] is not None else _other_colour(rng, None)
        elif kind == "bag":
            a["bag"] = (None if a["bag"] is not None else
                        (_other_colour(rng, None), int(rng.choice((-1, 1))),
                         str(rng.choice(("side", "back")))))
        elif kind == "shoes":
            a["shoes"] = _other_colour(rng, np.array(a["shoes"], np.float64))
        elif kind == "stripe":
            a["stripe"] = (None if a["stripe"] is not None else
                           (_other_colour(rng, None), float(rng.uniform(0.3, 0.7))))
        else:
            a["logo"] = (None if a["logo"] is not None else
                         (_other_colour(rng, None), str(rng.choice(("box", "dot")))))
    return a


def _camera(seed, cam, height, width):
    """Per-camera look: colour cast, brightness, blur, noise, scale and a textured background."""
    rng = _rng(seed, _TAG_CAM, cam)
    s = _SUPERSAMPLE
    bh, bw = int(height * s * 1.3), int(width * s * 1.8)
    yy, xx = np.mgrid[0:bh, 0:bw].astype(np.float64)
    c0 = rng.uniform(40, 220, 3)
    c1 = rng.uniform(40, 220, 3)
    ang = rng.uniform(0, 2 * math.pi)
    t = (np.cos(ang) * xx / bw + np.sin(ang) * yy / bh)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    bg = c0 + (c1 - c0) * t[..., None]  # bh x bw x 3 gradient
    kind = rng.integers(3)
    amp = rng.uniform(15, 40)
    if kind == 0:  # floor tiles / wall bricks
        ph, pw = rng.integers(10, 30), rng.integers(14, 40)
        off = (yy // ph % 2) * (pw // 2)
        lines = ((yy % ph) < 2) | (((xx + off) % pw) < 2)
        bg -= amp * lines[..., None]
    elif kind == 1:  # stripes at an angle
        f = rng.uniform(0.05, 0.2)
        a2 = rng.uniform(0, math.pi)
        bg += amp * np.sign(np.sin(f * (np.cos(a2) * xx + np.sin(a2) * yy)))[..., None] * 0.5
    else:  # blotchy low-frequency texture: upsampled coarse noise
        coarse = rng.normal(0, 1, (bh // 16 + 2, bw // 16 + 2, 3))
        up = np.asarray(Image.fromarray(((coarse - coarse.min()) / np.ptp(coarse) * 255)
                                        .astype(np.uint8)).resize((bw, bh), Image.BICUBIC),
                        np.float64)
        bg += (up - 127.5) / 127.5 * amp
    bg += rng.normal(0, 4, bg.shape)  # fine grain, fixed per camera
    return dict(
        background=np.clip(bg, 0, 255).astype(np.uint8),
        gain=rng.uniform(0.75, 1.25, 3) * rng.uniform(0.7, 1.2),  # colour cast x brightness
        offset=rng.uniform(-20, 20),
        blur=float(rng.uniform(0.0, 1.2)),
        noise=float(rng.uniform(2.0, 8.0)),
        scale=float(rng.uniform(0.9, 1.05)),
        occlusion=float(rng.uniform(0.2, 0.45)),
    )


# ---------------------------------------------------------------- drawing

def _draw_person(draw, a, rng, cx, top, fig_h, face):
    """Draws identity ``a`` with its feet near ``top + fig_h``; ``face`` = +1 / -1 mirrors x."""
    def X(dx):
        return cx + face * dx

    head_r = 0.075 * fig_h
    neck = top + 2 * head_r
    sy = neck + 0.02 * fig_h
    hy = top + 0.52 * fig_h
    sw = a["shoulder"] * fig_h
    hw = 0.8 * sw
    limb = a["limb"] * fig_h
    stride = math.radians(rng.uniform(-25, 25))
    swing = math.radians(rng.uniform(-30, 30))
    shoe_h = 0.04 * fig_h
    leg_len = fig_h - (hy - top) - shoe_h

    bag = a["bag"]
    if bag is not None and bag[2] == "back":  # backpack, seen behind the torso
        bx = 1.15 * sw
        draw.rectangle([min(X(-bx), X(bx)), sy + 0.03 * fig_h, max(X(-bx), X(bx)),
                        sy + 0.3 * fig_h], fill=bag[0])
    # legs and shoes
    for side, ang in ((-1, stride), (1, -0.8 * stride)):
        x0, y0 = X(side * 0.5 * hw), hy - 0.02 * fig_h
        x1, y1 = X(side * 0.5 * hw + math.sin(ang) * leg_len), y0 + math.cos(ang) * leg_len
        draw.line([x0, y0, x1, y1], fill=a["pants"], width=max(1, int(limb)))
        sx0, sx1 = sorted((X(side * 0.5 * hw + math.sin(ang) * leg_len - 0.6 * limb),
                           X(side * 0.5 * hw + math.sin(ang) * leg_len + 1.1 * limb)))
        draw.ellipse([sx0, y1 - shoe_h * 0.6, sx1, y1 + shoe_h * 0.6], fill=a["shoes"])
    # torso
    draw.polygon([(X(-sw), sy), (X(sw), sy), (X(hw), hy), (X(-hw), hy)], fill=a["shirt"])
    if a["stripe"] is not None:
        col, f = a["stripe"]
        y0 = sy + f * (hy - sy)
        y1 = y0 + 0.05 * fig_h
        w0, w1 = sw + (hw - sw) * f, sw + (hw - sw) * min(1.0, f + 0.1)
        draw.polygon([(X(-w0), y0), (X(w0), y0), (X(w1), y1), (X(-w1), y1)], fill=col)
    if a["logo"] is not None:
        col, shape = a["logo"]
        r = 0.035 * fig_h
        lx, ly = X(0.35 * sw), sy + 0.2 * (hy - sy)
        box = [lx - r, ly - r, lx + r, ly + r]
        (draw.rectangle if shape == "box" else draw.ellipse)(box, fill=col)
    if bag is not None and bag[2] == "side":  # shoulder bag: strap across the torso + bag at hip
        side = bag[1]
        draw.line([X(-side * 0.8 * sw), sy, X(side * 1.1 * hw), hy - 0.05 * fig_h], fill=bag[0],
                  width=max(1, int(0.02 * fig_h)))
        bx0, bx1 = sorted((X(side * 0.9 * hw), X(side * (0.9 * hw + 0.13 * fig_h))))
        draw.rectangle([bx0, hy - 0.1 * fig_h, bx1, hy + 0.06 * fig_h], fill=bag[0])
    # arms
    arm_len = 0.36 * fig_h
    for side, ang in ((-1, swing), (1, -swing)):
        x0, y0 = X(side * 0.95 * sw), sy + 0.3 * limb
        ang_out = ang + side * face * math.radians(8)
        x1 = x0 + face * math.sin(ang_out) * arm_len
        y1 = y0 + math.cos(ang_out) * arm_len
        draw.line([x0, y0, x1, y1], fill=a["shirt"], width=max(1, int(0.8 * limb)))
        if a["short_sleeves"]:
            xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
            draw.line([xm, ym, x1, y1], fill=a["skin"], width=max(1, int(0.65 * limb)))
        hr = 0.4 * limb
        draw.ellipse([x1 - hr, y1 - hr, x1 + hr, y1 + hr], fill=a["skin"])
    # head, hair, hat
    hb = [cx - 0.85 * head_r, top, cx + 0.85 * head_r, top + 2 * head_r]
    draw.ellipse(hb, fill=a["skin"])
    draw.chord(hb, 180, 360, fill=a["hair"])
    if a["hat"] is not None:
        draw.rectangle([cx - 0.9 * head_r, top - 0.2 * head_r, cx + 0.9 * head_r,
                        top + 0.55 * head_r], fill=a["hat"])
        bx0, bx1 = sorted((X(-0.9 * head_r), X(1.6 * head_r)))
        draw.rectangle([bx0, top + 0.45 * head_r, bx1, top + 0.7 * head_r], fill=a["hat"])


def _draw_occluder(draw, rng, hs, ws):
    col = tuple(int(v) for v in rng.integers(20, 236, 3))
    kind = rng.integers(3)
    if kind == 0:  # pole
        w = rng.uniform(0.08, 0.18) * ws
        x = rng.uniform(0.1, 0.9) * ws
        draw.rectangle([x - w / 2, 0, x + w / 2, hs], fill=col)
    elif kind == 1:  # box / bench / car in front of the legs
        y = rng.uniform(0.62, 0.82) * hs
        x0 = rng.uniform(-0.3, 0.3) * ws
        draw.rectangle([x0, y, x0 + rng.uniform(0.6, 1.2) * ws, hs], fill=col)
    else:  # side wall / another pedestrian's shoulder
        w = rng.uniform(0.2, 0.4) * ws
        x0 = 0 if rng.random() < 0.5 else ws - w
        draw.rectangle([x0, rng.uniform(0, 0.3) * hs, x0 + w, hs], fill=col)


def _finish(img, rng, cam, height, width):
    """Crop jitter + resize to the target size, camera blur, colour cast, noise -> JPEG bytes."""
    ws, hs = img.size
    m = rng.uniform(0.0, 0.07, 4)  # crop margins (left, top, right, bottom) as fractions
    box = (m[0] * ws, m[1] * hs, ws * (1 - m[2]), hs * (1 - m[3]))
    img = img.resize((width, height), Image.BILINEAR, box=box)
    if cam["blur"] > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(cam["blur"]))
    x = np.asarray(img, np.float32)
    x = x * cam["gain"].astype(np.float32) + np.float32(cam["offset"])
    x += rng.normal(0.0, cam["noise"], x.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8)).save(
        buf, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
    return buf.getvalue()


def _background(rng, cam, hs, ws):
    bg = cam["background"]
    y = int(rng.integers(0, bg.shape[0] - hs + 1))
    x = int(rng.integers(0, bg.shape[1] - ws + 1))
    return Image.fromarray(bg[y:y + hs, x:x + ws])


def render_image(p, a, cam, rng):
    """One image (JPEG bytes) of identity ``a`` (None: a distractor) seen by camera ``cam``."""
    s = _SUPERSAMPLE
    hs, ws = p["height"] * s, p["width"] * s
    img = _background(rng, cam, hs, ws)
    draw = ImageDraw.Draw(img)
    face = 1 if rng.random() < 0.5 else -1
    if a is not None:
        fig_h = hs * a["height"] * cam["scale"] * rng.uniform(0.88, 1.08)
        cx = ws / 2 + rng.normal(0, 0.06) * ws
        top = (hs - fig_h) / 2 + rng.normal(0, 0.03) * hs
        _draw_person(draw, a, rng, cx, top, fig_h, face)
        if rng.random() < cam["occlusion"]:
            _draw_occluder(draw, rng, hs, ws)
    else:  # distractor: background with a badly cropped stranger (or nothing) in it
        if rng.random() < 0.7:
            stranger = _identity(int(rng.integers(1 << 30)), 1, 1)
            fig_h = hs * rng.uniform(0.6, 1.6)
            cx = ws * rng.choice((-0.15, 0.5, 1.15)) + rng.normal(0, 0.1) * ws
            top = rng.uniform(-0.5, 0.4) * hs
            _draw_person(draw, stranger, rng, cx, top, fig_h, face)
        if rng.random() < 0.5:
            _draw_occluder(draw, rng, hs, ws)
    return _finish(img, rng, cam, p["height"], p["width"])


# ---------------------------------------------------------------- layout + atomic write

def _plan(p):
    """Every file to write: (split, file name, pid, cam (1-based), rng keys)."""
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
                              (_TAG_IMG, pid, cam, j)))
    n_query_cams = max(1, n_cam // 2)
    for pid in range(n_tr + 1, n_tr + n_te + 1):
        order = _rng(p["seed"], _TAG_QUERY, pid).permutation(n_cam)
        qcams = set((order[:n_query_cams] + 1).tolist())
        for cam in range(1, n_cam + 1):
            for j in range(k):
                split = "query" if (cam in qcams and j == 0) else "bounding_box_test"
                items.append((split, name(pid, cam), pid, cam, (_TAG_IMG, pid, cam, j)))
    for d in range(p["num_distractors"]):
        cam = d % n_cam + 1
        items.append(("bounding_box_test", name(0, cam), 0, cam, (_TAG_DISTRACTOR, d)))
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
    planned = {(split, fname) for split, fname, *_ in _plan(params)}
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
    cams = {c: _camera(seed, c, h, w) for c in range(1, p["num_cameras"] + 1)}
    ids = {}
    counts = dict.fromkeys(SPLIT_DIRS, 0)
    pids = {s: set() for s in SPLIT_DIRS}
    for split, fname, pid, cam, keys in _plan(p):
        counts[split] += 1
        pids[split].add(pid)
        if only is not None and (split, fname) not in only:
            continue
        if pid and pid not in ids:
            ids[pid] = _identity(seed, pid, p["group_size"])
        data = render_image(p, ids.get(pid), cams[cam], _rng(seed, *keys))
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

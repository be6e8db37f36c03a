"""Drawing the synthetic Re-ID set: person-like figures seen by cameras, as JPEG bytes.

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
``numpy.random.Generator`` keyed by (seed, kind, index...) (``random_stream``, ``TAG_*``),
drawing uses PIL, JPEG quality and chroma subsampling are fixed, so the same parameters give
byte-identical images regardless of generation order.  Change ``GENERATOR_VERSION`` with any
change of what is drawn: sets on disk of another version are then made again.
"""
import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["GENERATOR_VERSION", "JPEG_QUALITY", "JPEG_SUBSAMPLING", "TAG_DISTRACTOR", "TAG_IMG",
           "camera", "identity", "query_cameras", "random_stream", "render_image"]

GENERATOR_VERSION = 1
JPEG_QUALITY = 92
JPEG_SUBSAMPLING = 0  # 4:4:4: small coloured details (logo, shoes) survive the encoding
_SUPERSAMPLE = 2  # figures are drawn at 2x and downsampled (anti-aliasing)

# RNG stream tags: each kind of object draws from its own stream
_TAG_GROUP, TAG_ID, TAG_CAM, TAG_IMG, TAG_QUERY, TAG_DISTRACTOR = range(1, 7)

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


def random_stream(seed, *keys):
    """The random stream of one object: ``seed`` and its kind (``TAG_*``) and indices."""
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
    rng = random_stream(seed, _TAG_GROUP, group)
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


def identity(seed, pid, group_size):
    """Group appearance with exactly one local detail changed (a different one per member)."""
    group, member = divmod(pid - 1, group_size)
    a = _group_appearance(seed, group)
    rng = random_stream(seed, TAG_ID, pid)
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


def camera(seed, cam, height, width):
    """Per-camera look: colour cast, brightness, blur, noise, scale and a textured background."""
    rng = random_stream(seed, TAG_CAM, cam)
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
            stranger = identity(int(rng.integers(1 << 30)), 1, 1)
            fig_h = hs * rng.uniform(0.6, 1.6)
            cx = ws * rng.choice((-0.15, 0.5, 1.15)) + rng.normal(0, 0.1) * ws
            top = rng.uniform(-0.5, 0.4) * hs
            _draw_person(draw, stranger, rng, cx, top, fig_h, face)
        if rng.random() < 0.5:
            _draw_occluder(draw, rng, hs, ws)
    return _finish(img, rng, cam, p["height"], p["width"])



def query_cameras(seed, pid, num_cameras, num_query_cameras):
    """The 1-based cameras in which test identity ``pid`` has its query images."""
    order = random_stream(seed, TAG_QUERY, pid).permutation(num_cameras)
    return set((order[:num_query_cameras] + 1).tolist())

#!/usr/bin/env python
r"""Synthetic multi-person video sequences in MOTChallenge layout, for tracking with Re-ID.

The built-in set's people (``bench/scenes.py``: identities in groups that share build and
coarse colours and differ by one detail) walk on a camera background, with perspective (far
people are small), and the events that make appearance matter for a tracker:

* crossings: pairs of people at the same depth walk towards each other and pass, the nearer
  one fully hiding the other for several frames;
* turning back: a person reverses mid-frame (its motion model's prediction goes wrong);
* leaving and re-entering: a person walks out of the view and comes back after a gap, at
  another depth (a new track unless appearance links it);
* lookalikes: the identities of a sequence come from a few groups, so people who look alike
  share the scene.

``--preset hard`` makes the events that only appearance can resolve longer than a tracker's
track buffer (BoxMOT keeps a lost track 25-30 frames), as in real footage:

* pillars (``--occluders``): full-height foreground occluders that hide the people passing
  behind them (those less than 30 % visible are not detected);
* meetings (``--meet``): the two of a crossing pair (lookalikes) walk in a far lane, meet behind
  a pillar, stand there hidden for a while, then each walks on or turns back (so they may come
  out swapped with respect to their motion);
* exits (``--reenter-gap``, ``--reenter-side any``, ``--reentries``): people stay out of the
  view for longer, come back from either side, at another depth, more than once;
* walking speed (``--speed``, figure heights per frame): 0.5-1.2 m/s for a 1.7 m person at
  15 fps, a walking pace, instead of the default's 0.25-0.55 m/s stroll.

Options given explicitly override the preset's values.

    python bench/make_tracking_sequences.py --out datasets/synthetic_mot \
        [--sequences 3] [--frames 300] [--people 8] [--height 480] [--width 640] [--seed 0]
        [--det-jitter 0.03] [--det-miss 0.05] [--det-min-visibility 0.3] [--preset hard]
        [--occluders N] [--meet MIN,MAX] [--reenter-gap MIN,MAX] [--reenter-side same|any]
        [--reentries N] [--speed MIN,MAX]

Writes ``<out>/SYNTH-<k>/``: ``img1/<frame:06d>.jpg``, ``gt/gt.txt`` (frame, id, left, top,
width, height, 1, 1, visibility: MOT17's ground-truth columns; visibility = the fraction of the
box not covered by nearer people), ``det/det.txt`` (frame, -1, left, top, width, height,
confidence, -1, -1, -1: the ground-truth boxes with relative jitter, randomly missed ones and
none below --det-min-visibility, as a detector would give them) and ``seqinfo.ini``.
Frames are 1-based.  Deterministic from --seed.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scenes import Scene, person_box  # noqa: E402

FPS = 15
# the events of each preset (the defaults of today's sequences, and the harder ones)
PRESETS = {"default": {"occluders": 0, "meet": None, "reenter_gap": (15, 60),
                       "reenter_side": "same", "reentries": 1, "speed": (0.010, 0.022)},
           "hard": {"occluders": 2, "meet": (30, 70), "reenter_gap": (40, 91),
                    "reenter_side": "any", "reentries": 2, "speed": (0.020, 0.045)}}
PILLAR_WIDTH = 0.13  # of the frame width


class Walker:
    """One person's state: position (cx, foot_y), velocity, facing, visits left."""

    def __init__(self, pid, rng, height, width, start, lane=None, side=None, reenter=1,
                 gap=(15, 60), any_side=False, speed=(0.010, 0.022)):
        self.pid, self.rng, self.h, self.w = pid, rng, height, width
        self.start, self.reenter, self.gap, self.any_side = start, reenter, gap, any_side
        self.speed = speed
        self.turn_at = None
        self.hold = None  # (x, frame, turn): stand still from reaching x until frame
        self.wait_until = None
        self.present = False
        self._enter(lane, side)

    def fig_h(self):
        """Perspective: 0.18 H at the horizon lane, 0.62 H at the bottom of the frame."""
        t = (self.foot - 0.45 * self.h) / (0.53 * self.h)
        return (0.18 + 0.44 * float(np.clip(t, 0, 1))) * self.h

    def _enter(self, lane=None, side=None):
        rng = self.rng
        self.foot = float(lane if lane is not None else rng.uniform(0.47, 0.98) * self.h)
        side = side if side is not None else int(rng.choice((-1, 1)))  # -1: from the left
        margin = 0.35 * self.fig_h()
        self.cx = -margin if side < 0 else self.w + margin
        speed = rng.uniform(*self.speed) * self.fig_h()  # px / frame, scaled by nearness
        self.vx = speed if side < 0 else -speed
        self.face = 1 if self.vx > 0 else -1

    def step(self, frame):
        """Advance to ``frame``; returns True when the person is in the scene then."""
        if frame < self.start:
            return False
        if not self.present:
            if frame == self.start:
                self.present = True
            else:
                return False
        if self.wait_until is None or frame >= self.wait_until:
            self.cx += self.vx
        self.foot = float(np.clip(self.foot + self.rng.normal(0, 0.4), 0.45 * self.h,
                                  0.98 * self.h))
        if self.turn_at == frame:
            self.vx, self.face = -self.vx, -self.face
        if self.hold is not None and (self.cx - self.hold[0]) * self.vx >= 0:  # at the spot
            _, self.wait_until, turn = self.hold
            self.hold = None
            if turn:
                self.vx, self.face = -self.vx, -self.face
        margin = 0.36 * self.fig_h()
        if (self.vx < 0 and self.cx < -margin) or (self.vx > 0 and self.cx > self.w + margin):
            self.present = False
            if self.reenter > 0:  # back after a gap, from the side it left (or either side),
                self.reenter -= 1  # at another depth
                side = -1 if self.cx < 0 else 1
                self.start = frame + int(self.rng.integers(*self.gap))
                self._enter(None, None if self.any_side else side)
            else:
                self.start = 1 << 30
            return False
        return True

    def draw_args(self):
        fh = self.fig_h()
        return (self.pid, self.cx, self.foot - fh, fh, self.face)


def plan_walkers(rng, n, frames, height, width, group_size, pillars=(), meet=None,
                 reenter_gap=(15, 60), reenter_side="same", reentries=1, speed=(0.010, 0.022)):
    """``n`` walkers: pairs that cross at one depth, some that turn back, each re-entering
    ``reentries`` times; identities from as few groups as possible (lookalikes in one scene).
    With ``meet`` (MIN, MAX frames) and ``pillars`` (centre x of each), every other crossing
    pair walks in a far lane, meets behind the pillar nearest to where they would cross and
    stands there, then each walks on or turns back."""
    pids = [1 + int(g) * group_size + m for g in rng.permutation(max(1, n // group_size + 1))
            for m in range(group_size)][:n]
    meet = meet if len(pillars) else None
    kw = dict(reenter=reentries, gap=reenter_gap, any_side=reenter_side == "any", speed=speed)
    walkers = []
    for i, pid in enumerate(pids):
        start = int(rng.integers(1, max(2, frames // 3)))
        if i % 2 == 1 and walkers:  # cross the previous walker: same lane, other side
            prev = walkers[-1]
            w = Walker(pid, np.random.default_rng([int(rng.integers(1 << 30)), pid]), height,
                       width, prev.start, lane=prev.foot + rng.uniform(-0.02, 0.02) * height,
                       side=1 if prev.vx > 0 else -1, **kw)
        else:  # a meeting pair walks in a lane where a pillar hides a person entirely
            lane = rng.uniform(0.47, 0.70) * height if meet and i % 4 == 0 and i + 1 < n \
                else None
            w = Walker(pid, np.random.default_rng([int(rng.integers(1 << 30)), pid]), height,
                       width, start, lane=lane, **kw)
        if rng.random() < 0.35:  # turns back once, about a third of the way across
            w.turn_at = w.start + int(0.35 * width / max(abs(w.vx), 1e-3))
        if meet and i % 4 == 1:  # both reach the pillar at one frame, stand, then go on
            cross = prev.cx + prev.vx * (w.cx - prev.cx) / (prev.vx - w.vx)
            x = min(pillars, key=lambda p: abs(p - cross))
            arrive = [p.start + abs(x - p.cx) / abs(p.vx) for p in (prev, w)]
            late = max(arrive)
            for p, a in zip((prev, w), arrive):
                p.start += int(round(late - a))
                p.turn_at = None
                p.hold = (x, int(late) + int(rng.integers(*meet)), bool(rng.random() < 0.5))
        walkers.append(w)
    return walkers


def draw_pillars(frame, xs, seed):
    """Full-height pillars centred at ``xs`` drawn into the BGR ``frame``: a shaded column
    with joints; returns their xyxy boxes."""
    h, w = frame.shape[:2]
    half = 0.5 * PILLAR_WIDTH * w
    colour = np.random.default_rng([seed, 11]).uniform(70, 170, 3)
    boxes = []
    for x in xs:
        x1, x2 = int(round(max(0, x - half))), int(round(min(w, x + half)))
        shade = 0.55 + 0.45 * np.sin(np.linspace(0.15, np.pi - 0.15, x2 - x1))
        col = np.tile((shade[:, None] * colour)[None], (h, 1, 1))
        col[::40] *= 0.6  # joints between the blocks
        frame[:, x1:x2] = col.clip(0, 255).astype(np.uint8)
        boxes.append((x1, 0, x2, h))
    return np.array(boxes, np.float32).reshape(-1, 4)


def visibility(boxes, order):
    """Fraction of each box not covered by the boxes drawn after it (``order``: draw order)."""
    vis = np.ones(len(boxes))
    for rank, i in enumerate(order):
        x1, y1, x2, y2 = boxes[i]
        if x2 <= x1 or y2 <= y1:
            vis[i] = 0.0
            continue
        gx, gy = np.meshgrid(np.linspace(x1, x2, 24), np.linspace(y1, y2, 48))
        covered = np.zeros_like(gx, dtype=bool)
        for j in order[rank + 1:]:
            a1, b1, a2, b2 = boxes[j]
            covered |= (gx >= a1) & (gx <= a2) & (gy >= b1) & (gy <= b2)
        vis[i] = 1.0 - covered.mean()
    return vis


def make_sequence(out_dir, seed, frames, people, height, width, det_jitter, det_miss,
                  det_min_vis, group_size=4, occluders=0, meet=None, reenter_gap=(15, 60),
                  reenter_side="same", reentries=1, speed=(0.010, 0.022)):
    """Write one sequence; returns its summary (frames, ids, boxes, events)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    scene = Scene(seed=seed, height=height, width=width, camera=1 + seed % 6,
                  group_size=group_size)
    prng = np.random.default_rng([seed, 13])
    pillars = [((k + 0.5) / occluders + prng.uniform(-0.08, 0.08)) * width
               for k in range(occluders)]
    walkers = plan_walkers(rng, people, frames, height, width, group_size, pillars, meet,
                           reenter_gap, reenter_side, reentries, speed)
    os.makedirs(os.path.join(out_dir, "img1"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "gt"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "det"), exist_ok=True)
    gt_lines, det_lines = [], []
    drng = np.random.default_rng([seed, 7])
    for f in range(1, frames + 1):
        here = [w for w in walkers if w.step(f)]
        here.sort(key=lambda w: w.foot)  # far first: the nearer person is drawn on top
        frame, boxes = scene.frame([w.draw_args() for w in here], pose_seed=f // 2)
        front = draw_pillars(frame, pillars, seed)  # in front of everyone
        Image.fromarray(frame[..., ::-1]).save(os.path.join(out_dir, "img1", f"{f:06d}.jpg"),
                                               quality=92)
        raw = np.array([person_box(*w.draw_args()[1:4]) for w in here]).reshape(-1, 4)
        everything = np.concatenate([boxes, front])
        vis = visibility(everything, list(range(len(everything))))[:len(here)]
        inside = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) / np.maximum(
            (raw[:, 2] - raw[:, 0]) * (raw[:, 3] - raw[:, 1]), 1e-6)
        for w, b, v, fr in zip(here, boxes, vis, inside):
            bw, bh = b[2] - b[0], b[3] - b[1]
            if bw < 2 or bh < 2:
                continue
            gt_lines.append(f"{f},{w.pid},{b[0]:.1f},{b[1]:.1f},{bw:.1f},{bh:.1f},1,1,"
                            f"{v * fr:.3f}")
            if v * fr < det_min_vis or drng.random() < det_miss:
                continue
            j = drng.normal(0, det_jitter, 4) * [bw, bh, bw, bh]
            d = b + j
            conf = float(np.clip(0.55 + 0.4 * v * fr + drng.normal(0, 0.05), 0.3, 0.99))
            det_lines.append(f"{f},-1,{d[0]:.1f},{d[1]:.1f},{d[2] - d[0]:.1f},"
                             f"{d[3] - d[1]:.1f},{conf:.3f},-1,-1,-1")
    with open(os.path.join(out_dir, "gt", "gt.txt"), "w") as fh:
        fh.write("\n".join(gt_lines) + "\n")
    with open(os.path.join(out_dir, "det", "det.txt"), "w") as fh:
        fh.write("\n".join(det_lines) + "\n")
    name = os.path.basename(os.path.normpath(out_dir))
    with open(os.path.join(out_dir, "seqinfo.ini"), "w") as fh:
        fh.write(f"[Sequence]\nname={name}\nimDir=img1\nframeRate={FPS}\nseqLength={frames}\n"
                 f"imWidth={width}\nimHeight={height}\nimExt=.jpg\n")
    return {"name": name, "frames": frames, "ids": sorted({w.pid for w in walkers}),
            "gt_boxes": len(gt_lines), "detections": len(det_lines),
            "turn_backs": sum(w.turn_at is not None for w in walkers),
            "pillars": [round(float(x), 1) for x in pillars],
            "meetings": sum(w.wait_until is not None for w in walkers) // 2}


def pair(text):
    """``MIN,MAX`` -> (MIN, MAX): ints when both are whole numbers, else floats."""
    lo, hi = (float(v) for v in text.split(","))
    return (int(lo), int(hi)) if lo.is_integer() and hi.is_integer() else (lo, hi)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the sequences")
    p.add_argument("--sequences", type=int, default=3)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--people", type=int, default=8)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--det-jitter", type=float, default=0.03,
                   help="std of the detection box jitter, relative to the box size")
    p.add_argument("--det-miss", type=float, default=0.05, help="fraction of boxes missed")
    p.add_argument("--det-min-visibility", type=float, default=0.3,
                   help="boxes less visible than this are not detected")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="the events' defaults: today's sequences or the harder ones")
    p.add_argument("--occluders", type=int, help="full-height foreground pillars")
    p.add_argument("--meet", type=pair, help="MIN,MAX frames a crossing pair stands behind a "
                   "pillar (0,0: no meetings)")
    p.add_argument("--reenter-gap", type=pair, help="MIN,MAX frames out of view before "
                   "coming back (MAX excluded)")
    p.add_argument("--reenter-side", choices=("same", "any"),
                   help="come back from the side left, or from either")
    p.add_argument("--reentries", type=int, help="times each person comes back")
    p.add_argument("--speed", type=pair, help="MIN,MAX walking speed in figure heights per "
                   "frame")
    args = p.parse_args(argv)
    events = {k: v if getattr(args, k) is None else getattr(args, k)
              for k, v in PRESETS[args.preset].items()}
    if events["meet"] == (0, 0):
        events["meet"] = None
    out = []
    for k in range(args.sequences):
        out.append(make_sequence(os.path.join(args.out, f"SYNTH-{k + 1:02d}"), args.seed + k,
                                 args.frames, args.people, args.height, args.width,
                                 args.det_jitter, args.det_miss, args.det_min_visibility,
                                 **events))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()

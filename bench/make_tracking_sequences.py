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

    python bench/make_tracking_sequences.py --out datasets/synthetic_mot \
        [--sequences 3] [--frames 300] [--people 8] [--height 480] [--width 640] [--seed 0]
        [--det-jitter 0.03] [--det-miss 0.05] [--det-min-visibility 0.3]

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


class Walker:
    """One person's state: position (cx, foot_y), velocity, facing, visits left."""

    def __init__(self, pid, rng, height, width, start, lane=None, side=None, reenter=1):
        self.pid, self.rng, self.h, self.w = pid, rng, height, width
        self.start, self.reenter = start, reenter
        self.turn_at = None
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
        speed = rng.uniform(0.010, 0.022) * self.fig_h()  # px / frame, scaled by nearness
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
        self.cx += self.vx
        self.foot = float(np.clip(self.foot + self.rng.normal(0, 0.4), 0.45 * self.h,
                                  0.98 * self.h))
        if self.turn_at == frame:
            self.vx, self.face = -self.vx, -self.face
        margin = 0.36 * self.fig_h()
        if (self.vx < 0 and self.cx < -margin) or (self.vx > 0 and self.cx > self.w + margin):
            self.present = False
            if self.reenter > 0:  # back after a gap, from the side it left, at another depth
                self.reenter -= 1
                side = -1 if self.cx < 0 else 1
                self.start = frame + int(self.rng.integers(15, 60))
                self._enter(None, side)
            else:
                self.start = 1 << 30
            return False
        return True

    def draw_args(self):
        fh = self.fig_h()
        return (self.pid, self.cx, self.foot - fh, fh, self.face)


def plan_walkers(rng, n, frames, height, width, group_size):
    """``n`` walkers: pairs that cross at one depth, some that turn back, each re-entering once;
    identities from as few groups as possible (lookalikes in one scene)."""
    pids = [1 + int(g) * group_size + m for g in rng.permutation(max(1, n // group_size + 1))
            for m in range(group_size)][:n]
    walkers = []
    for i, pid in enumerate(pids):
        start = int(rng.integers(1, max(2, frames // 3)))
        if i % 2 == 1 and walkers:  # cross the previous walker: same lane, other side
            prev = walkers[-1]
            w = Walker(pid, np.random.default_rng([int(rng.integers(1 << 30)), pid]), height,
                       width, prev.start, lane=prev.foot + rng.uniform(-0.02, 0.02) * height,
                       side=1 if prev.vx > 0 else -1)
        else:
            w = Walker(pid, np.random.default_rng([int(rng.integers(1 << 30)), pid]), height,
                       width, start)
        if rng.random() < 0.35:  # turns back once, about a third of the way across
            w.turn_at = w.start + int(0.35 * width / max(abs(w.vx), 1e-3))
        walkers.append(w)
    return walkers


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
                  det_min_vis, group_size=4):
    """Write one sequence; returns its summary (frames, ids, boxes, events)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    scene = Scene(seed=seed, height=height, width=width, camera=1 + seed % 6,
                  group_size=group_size)
    walkers = plan_walkers(rng, people, frames, height, width, group_size)
    os.makedirs(os.path.join(out_dir, "img1"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "gt"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "det"), exist_ok=True)
    gt_lines, det_lines = [], []
    drng = np.random.default_rng([seed, 7])
    for f in range(1, frames + 1):
        here = [w for w in walkers if w.step(f)]
        here.sort(key=lambda w: w.foot)  # far first: the nearer person is drawn on top
        frame, boxes = scene.frame([w.draw_args() for w in here], pose_seed=f // 2)
        Image.fromarray(frame[..., ::-1]).save(os.path.join(out_dir, "img1", f"{f:06d}.jpg"),
                                               quality=92)
        raw = np.array([person_box(*w.draw_args()[1:4]) for w in here]).reshape(-1, 4)
        vis = visibility(boxes, list(range(len(here))))
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
            "turn_backs": sum(w.turn_at is not None for w in walkers)}


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
    args = p.parse_args(argv)
    out = []
    for k in range(args.sequences):
        out.append(make_sequence(os.path.join(args.out, f"SYNTH-{k + 1:02d}"), args.seed + k,
                                 args.frames, args.people, args.height, args.width,
                                 args.det_jitter, args.det_miss, args.det_min_visibility))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()

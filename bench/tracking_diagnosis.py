#!/usr/bin/env python
r"""Why Re-ID helps a tracker or not, on MOTChallenge-layout sequences: detection gaps, motion
across them, and appearance across them.

    R=logs/synthetic_demo/gltrans
    python bench/tracking_diagnosis.py --sequences datasets/synthetic_mot \
        [--reid trained=$R/config.yaml,$R/model_final.pth --reid untrained=$R/config.yaml] \
        [--buffer 30] [--group-size 4] [--clean-vis 0.7] [--max-gaps N] [--only SYNTH-01,...]
        [--json out.json]

Every sequence folder needs ``gt/gt.txt`` (frame, id, left, top, width, height, 1, 1,
visibility), ``det/det.txt`` (frame, -1, left, top, width, height, conf, ...) and
``img1/<frame:06d>.jpg``.  Each detection gets the identity (and visibility) of the ground-truth
box it overlaps most (IoU >= 0.5, one to one per frame).  A *gap*: frames in which an identity
has no detection between two frames in which it has one; an *exit* when the identity also has
no ground-truth box in some of them (it left the view), else an occlusion (or a miss).

* gaps: count, exits, median / max length, how many are longer than each of ``BUFFERS`` (a
  track lost for longer is dropped: only appearance can link the identity again), the mean
  visibility of the first detection after a gap;
* motion: the share of gaps where a constant-velocity prediction from the identity's last two
  detections before the gap (its last one when it has one) overlaps the first detection after
  the gap with IoU >= 0.3;
* appearance, per ``--reid NAME=CONFIG[,WEIGHTS]`` (no weights: the config's model untrained,
  seed 0): query = the first detection after the gap, gallery = the last detection before the
  query's frame of every identity detected before it.  Rank-1 (the own identity is the
  closest), mean cosine to the own identity and to the closest other; the same against the
  lookalikes only (identities of the query's group, ``(id - 1) // group_size``).  Over all
  gaps, the gaps of 1-2 frames (a control: the same person moments apart), the gaps longer
  than ``--buffer`` and the gaps motion misses; with ``boundary`` crops
  (as above) and with ``visible`` crops (query and gallery restricted to detections at least
  ``--clean-vis`` visible: what a tracker that keeps only unoccluded views could use).
"""
import argparse
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# frames a lost track is kept by BoxMOT 25's trackers built with their defaults at 30 fps:
# ByteTrack(track_buffer=25), BotSort(track_buffer=30), StrongSort / DeepOcSort(max_age=30)
BUFFERS = (25, 30)


def read_mot(path):
    a = np.loadtxt(path, delimiter=",", ndmin=2)
    return a if a.size else np.zeros((0, 10))


def iou(a, b):
    """IoU matrix of xyxy boxes ``a`` (N x 4) and ``b`` (M x 4)."""
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a, area_b = np.prod(a[:, 2:] - a[:, :2], axis=1), np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


def label_detections(gt, det, min_iou=0.5):
    """Rows (frame, id, x1, y1, x2, y2, IoU to its gt box, gt visibility) of the detections that
    match a gt box: greedy one-to-one by IoU per frame; sorted by frame."""
    xyxy = lambda r: np.c_[r[:, 2:4], r[:, 2:4] + r[:, 4:6]]  # noqa: E731
    out = []
    for f in np.unique(det[:, 0]):
        g, d = gt[gt[:, 0] == f], det[det[:, 0] == f]
        m = iou(xyxy(d), xyxy(g))
        used_d, used_g = set(), set()
        for i, j in zip(*np.unravel_index(np.argsort(-m, axis=None, kind="stable"), m.shape)):
            if m[i, j] < min_iou:
                break
            if i not in used_d and j not in used_g:
                used_d.add(i), used_g.add(j)
                out.append((f, g[j, 1], *xyxy(d[i:i + 1])[0], m[i, j], g[j, 8]))
    return np.array(out, dtype=np.float64).reshape(-1, 8)


def find_gaps(tracks, gt):
    """Gaps of the labelled detections ``tracks``: dicts of id, length, exit and the row indices
    ``prev2`` (-1 when none), ``prev`` (the last detection before) and ``next`` (first after)."""
    gaps = []
    for pid in np.unique(tracks[:, 1]):
        rows = np.flatnonzero(tracks[:, 1] == pid)
        seen = set(gt[gt[:, 1] == pid, 0].astype(int))
        for k in range(1, len(rows)):
            a, b = int(tracks[rows[k - 1], 0]), int(tracks[rows[k], 0])
            if b - a > 1:
                gaps.append({"id": int(pid), "length": b - a - 1,
                             "exit": any(f not in seen for f in range(a + 1, b)),
                             "prev2": int(rows[k - 2]) if k >= 2 else -1,
                             "prev": int(rows[k - 1]), "next": int(rows[k])})
    return gaps


def motion_bridges(tracks, gap, min_iou=0.3):
    """Whether the constant-velocity prediction of the gap's identity at the frame after the gap
    overlaps its detection there with IoU >= ``min_iou``."""
    f1, b1 = tracks[gap["prev"], 0], tracks[gap["prev"], 2:6]
    v = np.zeros(4)
    if gap["prev2"] >= 0:
        v = (b1 - tracks[gap["prev2"], 2:6]) / (f1 - tracks[gap["prev2"], 0])
    pred = b1 + v * (tracks[gap["next"], 0] - f1)
    return bool(iou(pred[None], tracks[gap["next"], 2:6][None])[0, 0] >= min_iou)


def gap_stats(gaps, tracks_of, buffers=BUFFERS):
    """Summary of ``gaps`` (each with "motion" and "seq"); ``tracks_of[seq]``: its tracks."""
    n, lengths = len(gaps), np.array([g["length"] for g in gaps], dtype=float)
    mean = lambda x: float(np.mean(x)) if len(x) else float("nan")  # noqa: E731
    out = {"gaps": n, "exits": sum(g["exit"] for g in gaps),
           "median": float(np.median(lengths)) if n else 0.0, "max": int(lengths.max(initial=0)),
           "next_vis": mean([tracks_of[g["seq"]][g["next"], 7] for g in gaps]),
           "motion": mean([g["motion"] for g in gaps])}
    for b in buffers:
        out[f">{b}"] = int((lengths > b).sum())
        out[f"motion>{b}"] = mean([g["motion"] for g in gaps if g["length"] > b])
    return out


def gallery(tracks, gap, min_vis=0.0):
    """(query row, gallery rows) of a gap, using only detections at least ``min_vis`` visible;
    None when the identity has no such detection after the gap or before the query."""
    ok, frames = tracks[:, 7] >= min_vis, tracks[:, 0]
    after = np.flatnonzero(ok & (tracks[:, 1] == gap["id"]) & (frames >= frames[gap["next"]]))
    if not len(after):
        return None
    last = {int(tracks[r, 1]): int(r) for r in np.flatnonzero(ok & (frames < frames[after[0]]))}
    return (int(after[0]), sorted(last.values())) if gap["id"] in last else None


def extract(reid, seq_dir, tracks, rows):
    """{row: L2-normalised feature} of the detection crops ``rows`` (one batched pass)."""
    from PIL import Image

    from gltrans_plugin.tracking import crops_from_boxes

    rows, crops = sorted(rows), []  # rows are in frame order
    for f in np.unique(tracks[rows, 0]).astype(int):
        rgb = np.asarray(Image.open(os.path.join(seq_dir, "img1", f"{f:06d}.jpg")).convert("RGB"))
        sel = [r for r in rows if tracks[r, 0] == f]
        crops += crops_from_boxes(tracks[sel, 2:6], np.ascontiguousarray(rgb[..., ::-1]))
    feats = reid.extractor(crops, bgr=True).numpy() if crops else np.zeros((0, 1))
    return dict(zip(rows, feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12)))


def appearance(tracks, q, gal, feats, group_size):
    """Rank-1 and cosines of one query against its gallery (lookalike entries None if none)."""
    pid = int(tracks[q, 1])
    cos = {int(tracks[r, 1]): float(feats[q] @ feats[r]) for r in gal}
    own = cos.pop(pid)
    look = [c for j, c in cos.items() if (j - 1) // group_size == (pid - 1) // group_size]
    return {"rank1": own > max(cos.values(), default=-2), "own": own, "gallery": len(gal),
            "other": max(cos.values(), default=None),
            "look_rank1": own > max(look) if look else None, "lookalike": max(look, default=None)}


def summarize(items):
    def mean(k):
        x = [i[k] for i in items if i[k] is not None]
        return float(np.mean(x)) if x else float("nan")
    return {"n": len(items), "n_look": sum(i["lookalike"] is not None for i in items),
            **{k: mean(k) for k in ("gallery", "rank1", "own", "other", "look_rank1", "lookalike")}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sequences", required=True, help="folder of MOTChallenge sequences")
    p.add_argument("--only", default="", help="comma-separated sequence names to use")
    p.add_argument("--reid", action="append", default=[], metavar="NAME=CONFIG[,WEIGHTS]")
    p.add_argument("--buffer", type=int, default=30, help="gaps longer than this are 'long'")
    p.add_argument("--group-size", type=int, default=4, help="lookalike group size of the ids")
    p.add_argument("--clean-vis", type=float, default=0.7, help="visibility of 'visible' crops")
    p.add_argument("--max-gaps", type=int, default=0,
                   help="appearance on at most N gaps per sequence, the longest (0: all)")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    seqs = sorted(d for d in glob.glob(os.path.join(args.sequences, "*"))
                  if os.path.isfile(os.path.join(d, "gt", "gt.txt")))
    seqs = [s for s in seqs if not args.only or os.path.basename(s) in args.only.split(",")]
    if not seqs:
        p.error(f"no sequences (folders with gt/gt.txt) under {args.sequences}")
    buffers = tuple(sorted(set(BUFFERS) | {args.buffer}))
    tracks_of, gaps_of, rows = {}, {}, []
    for seq in seqs:
        gt = read_mot(os.path.join(seq, "gt", "gt.txt"))
        det = read_mot(os.path.join(seq, "det", "det.txt"))
        tracks = tracks_of[seq] = label_detections(gt, det)
        gaps = gaps_of[seq] = find_gaps(tracks, gt)
        for g in gaps:
            g.update(seq=seq, motion=motion_bridges(tracks, g))
        rows.append({"sequence": os.path.basename(seq), "gt": len(gt), "det": len(det),
                     "det_iou": float(tracks[:, 6].mean()), **gap_stats(gaps, tracks_of, buffers)})
    rows.append({"sequence": "all", **{k: sum(r[k] for r in rows) for k in ("gt", "det")},
                 "det_iou": float(np.concatenate([t[:, 6] for t in tracks_of.values()]).mean()),
                 **gap_stats(sum(gaps_of.values(), []), tracks_of, buffers)})
    print("| sequence | gt boxes | detections | det IoU | gaps | exits | median | max | "
          + " | ".join(f"> {b}" for b in buffers) + " | vis after | motion bridges "
          f"(all / > {args.buffer}) |\n" + "|---" * (10 + len(buffers)) + "|")
    for r in rows:
        print(f"| {r['sequence']} | {r['gt']} | {r['det']} | {r['det_iou']:.2f} | {r['gaps']} | "
              f"{r['exits']} | {r['median']:.0f} | {r['max']} | "
              + " | ".join(str(r[f">{b}"]) for b in buffers) + f" | {r['next_vis']:.2f} | "
              f"{100 * r['motion']:.0f} % / {100 * r[f'motion>{args.buffer}']:.0f} % |")
    result = {"sequences": rows, "appearance": []}
    if args.reid:
        import tracking_metrics

        print("\n| features | crops | gaps | n | ids in gallery | rank-1 | cos own | cos closest "
              "other | n lookalike | rank-1 vs lookalikes | cos closest lookalike |\n"
              + "|---" * 11 + "|")
    for spec in args.reid:
        name, reid = tracking_metrics.make_reid(spec, "cpu")
        items = {"boundary": [], "visible": []}
        for seq, gaps in gaps_of.items():
            if args.max_gaps:
                gaps = sorted(gaps, key=lambda g: -g["length"])[:args.max_gaps]
            t = tracks_of[seq]
            found = {c: [(g, gallery(t, g, v)) for g in gaps]
                     for c, v in (("boundary", 0.0), ("visible", args.clean_vis))}
            feats = extract(reid, seq, t, {r for c in found.values() for _, qg in c if qg
                                           for r in [qg[0], *qg[1]]})
            for c, pairs in found.items():
                items[c] += [dict(appearance(t, *qg, feats, args.group_size),
                                  length=g["length"], motion=g["motion"]) for g, qg in pairs if qg]
        for c, its in items.items():
            for label, sel in (("all", its), ("1-2", [i for i in its if i["length"] <= 2]),
                               (f"> {args.buffer}", [i for i in its if i["length"] > args.buffer]),
                               ("motion misses", [i for i in its if not i["motion"]])):
                s = summarize(sel)
                result["appearance"].append({"features": name, "crops": c, "gaps": label, **s})
                print(f"| {name} | {c} | {label} | {s['n']} | {s['gallery']:.1f} | "
                      f"{100 * s['rank1']:.0f} % | "
                      f"{s['own']:.2f} | {s['other']:.2f} | {s['n_look']} | "
                      f"{100 * s['look_rank1']:.0f} % | {s['lookalike']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()

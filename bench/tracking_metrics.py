#!/usr/bin/env python
r"""Tracking measured: BoxMOT trackers on MOTChallenge-layout sequences, with and without
GLTrans features, scored with motmetrics (IDF1, MOTA, ID switches).

Runs in a Python that has boxmot, motmetrics and this project importable (a throw-away venv:
``python -m venv DIR; DIR/bin/pip install boxmot motmetrics`` plus the project's dependencies,
fastreid 1.4.0 with --no-deps, and the repository on its path, as tools/setup.sh installs them).

    python bench/make_tracking_sequences.py --out datasets/synthetic_mot
    R=logs/synthetic_demo/gltrans
    python bench/tracking_metrics.py --sequences datasets/synthetic_mot \
        --reid trained=$R/config.yaml,$R/model_final.pth --reid untrained=$R/config.yaml \
        [--trackers bytetrack,botsort,strongsort,deepocsort] [--device cpu] \
        [--json out/tracking.json] [--md out/tracking.md]

Every tracker gets the sequence's ``det/det.txt`` boxes (class 0) and the frames; ByteTrack
uses no appearance; BotSort, StrongSort and DeepOcSort get, per ``--reid NAME=CONFIG[,WEIGHTS]``,
a ``TrackerReID`` (``gltrans_plugin.tracking``) on that checkpoint, or on the config's model
untrained (seed 0) when no weights are given.  Camera motion compensation is off (the synthetic
camera is static).  Scores: motmetrics against ``gt/gt.txt`` (boxes matched at IoU >= 0.5),
summed over the sequences (the overall row of motmetrics), one row per tracker x features.
"""
import argparse
import glob
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TRACKERS = ("bytetrack", "botsort", "strongsort", "deepocsort")
METRICS = ["idf1", "mota", "num_switches", "num_fragmentations", "mostly_tracked",
           "num_false_positives", "num_misses"]


def make_reid(spec, device):
    """``NAME=CONFIG[,WEIGHTS]`` -> (name, TrackerReID)."""
    import torch

    from gltrans_plugin import FeatureExtractor
    from gltrans_plugin.tracking import TrackerReID

    name, _, rest = spec.partition("=")
    config, _, weights = rest.partition(",")
    if weights:
        return name, TrackerReID(config, weights, device=device)
    from fastreid.modeling import build_model

    from gltrans_plugin.config import setup_cfg

    cfg = setup_cfg(config, ["MODEL.DEVICE", "cpu" if device == "auto" else device])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    return name, TrackerReID.from_extractor(FeatureExtractor.from_model(cfg, model, bgr=True))


def make_tracker(kind, reid):
    import boxmot

    if kind == "bytetrack":
        return boxmot.ByteTrack()
    cls = {"botsort": boxmot.BotSort, "strongsort": boxmot.StrongSort,
           "deepocsort": boxmot.DeepOcSort}[kind]
    extra = {"use_cmc": False} if kind == "botsort" else {"cmc_off": True} \
        if kind == "deepocsort" else {}
    return cls(reid_model=reid, **extra)


def read_mot(path):
    """MOT text file -> N x 10 array (frame, id, left, top, width, height, ...)."""
    a = np.loadtxt(path, delimiter=",", ndmin=2)
    return a if a.size else np.zeros((0, 10))


def run_sequence(seq_dir, tracker):
    """Tracker output: rows (frame, id, left, top, width, height); seconds per frame."""
    import cv2

    dets = read_mot(os.path.join(seq_dir, "det", "det.txt"))
    out, t0 = [], time.perf_counter()
    frames = sorted(glob.glob(os.path.join(seq_dir, "img1", "*.jpg")))
    for f, path in enumerate(frames, 1):
        img = cv2.imread(path)
        d = dets[dets[:, 0] == f]
        boxes = np.c_[d[:, 2:4], d[:, 2:4] + d[:, 4:6], d[:, 6], np.zeros(len(d))]
        tracks = tracker.update(boxes.astype(np.float32).reshape(-1, 6), img)
        for x1, y1, x2, y2, tid in np.asarray(tracks).reshape(-1, 8)[:, :5]:
            out.append((f, int(tid), x1, y1, x2 - x1, y2 - y1))
    return np.array(out).reshape(-1, 6), (time.perf_counter() - t0) / max(1, len(frames))


def iou_distance(a, b, max_dist=0.5):
    """1 - IoU of ltwh boxes (rows of a x rows of b); NaN (no match) above ``max_dist``."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    a1, a2 = a[:, None, :2], a[:, None, :2] + a[:, None, 2:4]
    b1, b2 = b[None, :, :2], b[None, :, :2] + b[None, :, 2:4]
    inter = np.prod(np.clip(np.minimum(a2, b2) - np.maximum(a1, b1), 0, None), axis=2)
    union = np.prod(a[:, None, 2:4], 2) + np.prod(b[None, :, 2:4], 2) - inter
    d = 1 - inter / np.maximum(union, 1e-9)
    return np.where(d > max_dist, np.nan, d)


def accumulate(gt, hyp):
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=False)
    for f in np.unique(np.r_[gt[:, 0], hyp[:, 0]]).astype(int):
        g, h = gt[gt[:, 0] == f], hyp[hyp[:, 0] == f]
        dist = iou_distance(g[:, 2:6], h[:, 2:6])  # motmetrics' own needs numpy < 2
        acc.update(g[:, 1].astype(int).tolist(), h[:, 1].astype(int).tolist(), dist, frameid=f)
    return acc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sequences", required=True, help="folder of MOTChallenge sequences")
    p.add_argument("--reid", action="append", default=[], metavar="NAME=CONFIG[,WEIGHTS]")
    p.add_argument("--trackers", default=",".join(TRACKERS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default="")
    p.add_argument("--md", default="")
    args = p.parse_args(argv)
    import motmetrics as mm

    import gltrans_plugin  # noqa: F401

    seqs = sorted(d for d in glob.glob(os.path.join(args.sequences, "*"))
                  if os.path.isfile(os.path.join(d, "seqinfo.ini")))
    if not seqs:
        p.error(f"no sequences (folders with seqinfo.ini) under {args.sequences}")
    reids = [make_reid(s, args.device) for s in args.reid]
    runs = []
    for kind in args.trackers.split(","):
        for name, reid in ([("none", None)] if kind == "bytetrack" else reids):
            accs, names, secs = [], [], []
            for seq in seqs:
                hyp, spf = run_sequence(seq, make_tracker(kind, reid))
                accs.append(accumulate(read_mot(os.path.join(seq, "gt", "gt.txt")), hyp))
                names.append(os.path.basename(seq))
                secs.append(spf)
            mh = mm.metrics.create()
            summary = mh.compute_many(accs, metrics=METRICS, names=names,
                                      generate_overall=True)
            row = {k: float(summary.loc["OVERALL", k]) for k in METRICS}
            row.update(tracker=kind, features=name, s_per_frame=float(np.mean(secs)))
            runs.append(row)
            print(json.dumps(row))
    lines = ["| tracker | features | IDF1 | MOTA | ID switches | fragmentations | "
             "mostly tracked | s / frame |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['tracker']} | {r['features']} | {100 * r['idf1']:.1f} | "
                     f"{100 * r['mota']:.1f} | {r['num_switches']:.0f} | "
                     f"{r['num_fragmentations']:.0f} | {r['mostly_tracked']:.0f} | "
                     f"{r['s_per_frame']:.3f} |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sequences": [os.path.basename(s) for s in seqs], "runs": runs}, f,
                      indent=2)
    if args.md:
        with open(args.md, "w") as f:
            f.write("\n".join(lines) + "\n")
    return runs


if __name__ == "__main__":
    main()

"""The tracking diagnosis' numpy parts (bench/tracking_diagnosis.py) on a hand-made sequence:
labelling detections, gaps, the constant-velocity check, the gap summary, galleries and the
appearance ranking, against numbers worked out by hand."""
import os
from importlib.util import module_from_spec, spec_from_file_location

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def diag():
    spec = spec_from_file_location("tracking_diagnosis",
                                   os.path.join(REPO, "bench", "tracking_diagnosis.py"))
    mod = module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _box(f, pid, x, y, vis=1.0, w=10, h=20):
    return [f, pid, x, y, w, h, 1, 1, vis]


# id 1 walks right 10 px / frame, is hidden in frames 3-4 and 6-7 and has turned back at
# frame 8; id 2 stands still and is out of the view in frames 3-6; id 3 moves 5 px in 3 frames
GT = np.array([_box(f, 1, 10 * f, 0, 0.5 if f == 5 else 1.0) for f in range(1, 8)]
              + [_box(8, 1, 40, 0)]
              + [_box(f, 2, 100, 100, 0.8) for f in (1, 2, 7, 8)]
              + [_box(1, 3, 200, 0), _box(2, 3, 200, 0, 0.2), _box(3, 3, 200, 0, 0.2),
                 _box(4, 3, 205, 0, 0.4)], dtype=float)
DET = np.array([[f, -1, *GT[(GT[:, 0] == f) & (GT[:, 1] == p)][0, 2:6], 0.9, -1, -1, -1]
                for f, p in ((1, 1), (2, 1), (5, 1), (8, 1), (1, 2), (2, 2), (7, 2), (8, 2),
                             (1, 3), (4, 3))]
               + [[1, -1, 300, 300, 10, 20, 0.9, -1, -1, -1]], dtype=float)  # no gt box there
DET = DET[np.argsort(DET[:, 0], kind="stable")]


def test_labels_gaps_and_motion(diag):
    tracks = diag.label_detections(GT, DET)
    assert tracks.shape == (10, 8)  # the detection without a gt box is left out
    assert (tracks[:, 6] == 1).all() and list(tracks[:, 0]) == sorted(tracks[:, 0])
    gaps = diag.find_gaps(tracks, GT)
    got = [(g["id"], g["length"], g["exit"], g["prev2"] >= 0) for g in gaps]
    assert got == [(1, 2, False, True), (1, 2, False, True), (2, 4, True, True),
                   (3, 2, False, False)]
    # id 1: (10, 0) at 1, (20, 0) at 2 -> (50, 0) at 5, the detection: IoU 1; then from
    # (20, 0) at 2 and (50, 0) at 5 -> (80, 0) at 8, but it turned back to (40, 0): IoU 0;
    # id 2 stands: IoU 1; id 3, one detection before: (200, 0) stays, (205, 0) there: 100 /
    # (200 + 200 - 100) = 1/3
    assert [diag.motion_bridges(tracks, g) for g in gaps] == [True, False, True, True]
    assert not diag.motion_bridges(tracks, gaps[3], min_iou=0.34)
    for g in gaps:
        g.update(seq="s", motion=diag.motion_bridges(tracks, g))
    stats = diag.gap_stats(gaps, {"s": tracks}, buffers=(2, 3))
    assert stats == {"gaps": 4, "exits": 1, "median": 2.0, "max": 4,
                     "next_vis": pytest.approx((0.5 + 1.0 + 0.8 + 0.4) / 4),
                     "motion": 0.75, ">2": 1, "motion>2": 1.0, ">3": 1, "motion>3": 1.0}


def test_galleries_and_appearance(diag):
    tracks = diag.label_detections(GT, DET)
    gaps = diag.find_gaps(tracks, GT)
    row = {(int(f), int(p)): r for r, (f, p) in enumerate(tracks[:, :2])}
    q, gal = diag.gallery(tracks, gaps[3])  # id 3 at frame 4: everyone's last before it
    assert q == row[4, 3] and gal == sorted([row[2, 1], row[2, 2], row[1, 3]])
    assert diag.gallery(tracks, gaps[3], min_vis=0.7) is None  # not visible after the gap
    q, gal = diag.gallery(tracks, gaps[0], min_vis=0.7)  # id 1's frame 5 is half hidden
    assert q == row[8, 1] and gal == sorted([row[2, 1], row[7, 2], row[1, 3]])
    e = np.eye(3)
    feats = {row[4, 3]: e[0], row[1, 3]: 0.6 * e[0] + 0.8 * e[1],
             row[2, 2]: 0.8 * e[0] + 0.6 * e[2], row[2, 1]: e[1]}
    q, gal = diag.gallery(tracks, gaps[3])
    a = diag.appearance(tracks, q, gal, feats, group_size=4)  # ids 1-3: one group
    assert a == {"rank1": False, "own": pytest.approx(0.6), "gallery": 3,
                 "other": pytest.approx(0.8), "look_rank1": False,
                 "lookalike": pytest.approx(0.8)}
    a = diag.appearance(tracks, q, gal, feats, group_size=1)  # no lookalikes
    assert a["look_rank1"] is None and a["lookalike"] is None
    s = diag.summarize([a, dict(a, rank1=True, own=1.0)])
    assert s["n"] == 2 and s["rank1"] == 0.5 and s["own"] == pytest.approx(0.8)
    assert s["n_look"] == 0 and np.isnan(s["lookalike"])

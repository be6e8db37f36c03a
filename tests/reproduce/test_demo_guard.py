"""The demo recipe, guarded on a synthetic set it was not chosen on.

The demo's recipe (configs/GLTrans/synthetic_demo.yml) was decided on validation over the
synthetic sets 1-3 and 5-7 (the demo_* files of configs/GLTrans/protocol/), judged on sets 8-10
(demo_vs_baseline.yml) and is shown on set 0, the built-in one.  Here it trains, at the demo's
full size and budget, on set 4, which took part in none of these: GLTrans must beat its
untrained self and the ViT + SIE baseline (Table 5 Model-1, same recipe) there.  A recipe tuned
to one split would pass on that split and fail here.

Two trainings of the demo's size (about 8 minutes on 2 CPU cores), so outside the default run:

    .venv/bin/python -m pytest -q -m demo_size tests/reproduce/test_demo_guard.py
"""
import glob
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUARD_SET = 4          # DATASETS.SYNTHETIC.SEED: not the demo's (0), not the protocol's (1-3, 5-10)
# The protocol (2026-12-04), GLTrans minus baseline on every one of 9 runs: sets 1-3 with the
# old demo recipe, test mAP +5.9 to +10.3, Rank-1 +2.1 to +14.6; sets 8-10 with today's, test
# mAP +3.7 to +13.6, Rank-1 +3.1 to +16.7.  Margins: about half the smallest mAP gap; Rank-1
# ahead at all.
MAP_MARGIN, RANK1_MARGIN = 2.0, 0.0


def _results(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.slow
@pytest.mark.demo_size
def test_demo_recipe_beats_untrained_and_baseline_on_a_held_out_set(tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, os.path.join(REPO, "tools", "reproduce.py"), "--configs",
           os.path.join(REPO, "configs", "GLTrans", "synthetic_demo.yml"),
           os.path.join(REPO, "configs", "GLTrans", "ablations", "table5_model1.yml"),
           "--preset", "cpu", "--seeds", "0", "--output", str(out),
           "DATASETS.ROOT", str(tmp_path / "data"), "DATASETS.SYNTHETIC.SEED", str(GUARD_SET),
           "TEST.EVAL_BEFORE_TRAIN", "True"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    runs = {os.path.basename(os.path.dirname(os.path.dirname(p))): _results(p)
            for p in glob.glob(str(out / "*" / "seed0" / "results.json"))}
    assert set(runs) == {"synthetic_demo", "table5_model1"}, runs
    gltrans, baseline = runs["synthetic_demo"], runs["table5_model1"]
    before, after, base = gltrans["before"], gltrans["final"], baseline["final"]
    # the untrained model is near chance (mAP about 2 on this set's size); training multiplies it
    assert after["mAP"] > 5 * before["mAP"] and after["Rank-1"] > before["Rank-1"] + 10, \
        (before, after)
    # GLTrans ahead of its baseline under the same recipe (margins: see MAP_MARGIN)
    assert after["mAP"] > base["mAP"] + MAP_MARGIN, (after, base)
    assert after["Rank-1"] > base["Rank-1"] + RANK1_MARGIN, (after, base)

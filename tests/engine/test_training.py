"""End-to-end training through fast-reid's DefaultTrainer (our Trainer subclass) on the built-in
synthetic set: weights move and the loss falls, the model learns, train_net.py runs and resumes."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from helpers import gltrans_small_cfg

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synth"))


def _losses(output_dir):
    rows = [json.loads(line) for line in open(os.path.join(output_dir, "metrics.json"))]
    return [r["total_loss"] for r in rows if "total_loss" in r]


def _iterations(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line)["iteration"] for line in f]


def test_trainer_steps_change_weights_and_lower_loss(synth_root, tmp_path):
    from gltrans_plugin.engine import Trainer

    cfg = gltrans_small_cfg(synth_root, str(tmp_path), **{
        "SOLVER.MAX_EPOCH": 3, "TEST.EVAL_PERIOD": 100, "SOLVER.LOG_PERIOD": 1,
        "SOLVER.WARMUP_EPOCHS": 0, "SOLVER.WARMUP_ITERS": 0})
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    assert type(trainer.model).__name__ == "GLTrans"
    assert trainer.cfg.MODEL.BACKBONE.NUM_CAMERAS == 3  # from the data
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()
              if p.requires_grad}  # (the BNNecks' bias is frozen, as fast-reid's)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n])]
    assert not unchanged, f"parameters never updated: {unchanged[:5]}"
    losses = _losses(str(tmp_path))
    assert len(losses) == trainer.max_iter
    k = max(1, len(losses) // 4)
    assert sum(losses[-k:]) / k < sum(losses[:k]) / k


@pytest.mark.slow
def test_gltrans_learns_on_synthetic_set(tmp_path):
    from fastreid.utils.env import seed_all_rng

    from gltrans_plugin.engine import Trainer

    # 48 test identities, not the 16 of the small config: on 16 the untrained model's mAP is
    # 4.2 and the trained one's ranged 9.2-15.4 over augmentation draws (too noisy to judge)
    cfg = gltrans_small_cfg(str(tmp_path / "data"), str(tmp_path / "run"), **{
        "SOLVER.MAX_EPOCH": 40, "TEST.EVAL_PERIOD": 40, "SOLVER.CHECKPOINT_PERIOD": 40,
        "TEST.EVAL_BEFORE_TRAIN": True, "SOLVER.BASE_LR": 0.002, "SEED": 0,
        "DATASETS.SYNTHETIC.NUM_TEST_IDS": 48})
    # every RNG, python's too (augmentations draw from it): the result must not depend on
    # which tests ran before in this process
    seed_all_rng(0)
    trainer = Trainer(cfg)
    assert trainer.max_iter >= 300
    after = trainer.train()
    before = trainer._before_train_results
    # measured 2026-12-04 with the demo's augmentation (no random erasing), every RNG seeded 0,
    # 1, 2: mAP 1.40-1.41 untrained -> 12.54, 15.11, 8.91 after 360 iterations (6.4-10.8 times,
    # +7.5 to +13.7); with random erasing, seed 0: 10.03
    assert after["mAP"] > 3.5 * before["mAP"] and after["mAP"] > before["mAP"] + 4, (before, after)
    # the metric loss learns: with batch-hard mining its terms sat at ln 2 (collapsed features)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.json")]
    tri = [sum(v for k, v in r.items() if k.startswith("loss_triplet_")) for r in rows
           if "loss_triplet_global" in r]
    assert tri[-1] < 0.8 * math.log(2) < tri[0], tri
    last = [r for r in rows if "health/cls12/cos_neg" in r][-1]
    assert last["health/cls12/neg"] > last["health/cls12/pos"], last


@pytest.mark.slow
def test_train_net_trains_evaluates_checkpoints_and_resumes(synth_root, tmp_path):
    out = str(tmp_path / "run")
    base = [sys.executable, os.path.join(REPO, "projects", "train_net.py"), "--config-file",
            os.path.join(REPO, "configs", "GLTrans", "synthetic_demo.yml")]
    opts = ["DATASETS.ROOT", synth_root, "OUTPUT_DIR", out, "DATALOADER.NUM_WORKERS", "0",
            "DATASETS.SYNTHETIC.NUM_TRAIN_IDS", "16", "DATASETS.SYNTHETIC.NUM_TEST_IDS", "16",
            "DATASETS.SYNTHETIC.NUM_CAMERAS", "3", "DATASETS.SYNTHETIC.HEIGHT", "64",
            "DATASETS.SYNTHETIC.WIDTH", "32", "INPUT.SIZE_TRAIN", "[64, 32]",
            "INPUT.SIZE_TEST", "[64, 32]", "SOLVER.IMS_PER_BATCH", "16",
            "SOLVER.CHECKPOINT_PERIOD", "1", "TEST.EVAL_PERIOD", "1", "TEST.EVAL_BEFORE_TRAIN",
            "False", "SOLVER.LOG_PERIOD", "5"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run(base + opts + ["SOLVER.MAX_EPOCH", "2"], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "NaiveIdentitySampler" in log and "Rank-1" in log and "mAP" in log
    assert open(os.path.join(out, "last_checkpoint")).read().strip() == "model_final.pth"
    assert os.path.exists(os.path.join(out, "model_0000.pth"))
    last_iter = max(_iterations(out))
    # resume with a longer schedule: continues at epoch 2 from the last checkpoint
    r = subprocess.run(base + ["--resume"] + opts + ["SOLVER.MAX_EPOCH", "3"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "Starting training from epoch 2" in log
    assert max(_iterations(out)) == (last_iter + 1) * 3 // 2 - 1  # one more epoch
    # --eval-only on the final weights, with the run's saved config (auto-scaled values in it)
    saved = [sys.executable, base[1], "--config-file", os.path.join(out, "config.yaml")]
    final = os.path.join(out, "model_final.pth")
    r = subprocess.run(saved + ["--eval-only", "MODEL.WEIGHTS", final,
                                "DATALOADER.NUM_WORKERS", "0"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mAP" in r.stdout + r.stderr
    # ... and with the shipped leaf config: class / camera counts come from the checkpoint
    r = subprocess.run(base + ["--eval-only"] + opts + ["MODEL.WEIGHTS",
                       os.path.join(out, "model_final.pth")], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Missing key" not in r.stdout + r.stderr and "mAP" in r.stdout + r.stderr

"""fast-reid's own scripts with ``import gltrans_plugin`` added: a script shaped like fast-reid's
``tools/train_net.py`` (get_cfg, default_setup, the plain DefaultTrainer) reads, trains and
evaluates a GLTrans config on CPU; every evaluation's accuracy reaches metrics.json and
TensorBoard under ``<dataset>/<metric>`` keys, for that trainer and ours; plot_training lists it.
The DefaultTrainer fixes (compat ``cpu_without_cuda``, engine ``default_trainer_*``) each change
one property that a probe prints, with them and with them skipped (GLTRANS_COMPAT_SKIP)."""
import json
import os
import subprocess
import sys

import pytest

from helpers import DEMO_CONFIG, gltrans_small_cfg, opts_list

PY = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))

# the built-in synthetic set, tiny: 8 identities x 3 cameras x 3 images = 72 training images,
# 16 per batch -> 4 iterations per epoch
TINY = {
    "DATASETS.SYNTHETIC.NUM_TRAIN_IDS": 8, "DATASETS.SYNTHETIC.NUM_TEST_IDS": 8,
    "DATASETS.SYNTHETIC.NUM_CAMERAS": 3, "DATASETS.SYNTHETIC.IMAGES_PER_ID_CAM": 3,
    "DATASETS.SYNTHETIC.HEIGHT": 64, "DATASETS.SYNTHETIC.WIDTH": 32,
    "INPUT.SIZE_TRAIN": [64, 32], "INPUT.SIZE_TEST": [64, 32], "INPUT.PADDING.SIZE": 2,
    "DATALOADER.NUM_WORKERS": 0, "SOLVER.IMS_PER_BATCH": 16, "SOLVER.MAX_EPOCH": 2,
    "TEST.EVAL_PERIOD": 1, "SOLVER.CHECKPOINT_PERIOD": 1, "SOLVER.WARMUP_EPOCHS": 1,
}
ITERS = 4  # per epoch
ACCURACY = ("SyntheticReID/Rank-1", "SyntheticReID/mAP", "SyntheticReID/mINP")

# A training script as fast-reid's tools/train_net.py has it (config from get_cfg + the yaml +
# the options, default_setup, DefaultTrainer, resume_or_load, train), plus one line.
TRAIN_NET = '''
import gltrans_plugin  # noqa: F401  (the one line a fast-reid script needs)
from fastreid.config import get_cfg
from fastreid.engine import DefaultTrainer, default_argument_parser, default_setup


def setup(args):
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    main(default_argument_parser().parse_args())
'''


def _env(tmp_path, skip=""):
    """No GPU visible (MODEL.DEVICE stays fast-reid's "cuda"), fast-reid's own dataset root
    somewhere harmless, the plugin importable, the fixes in ``skip`` left out."""
    env = {k: v for k, v in os.environ.items() if k != "GLTRANS_COMPAT_SKIP"}
    env.update(CUDA_VISIBLE_DEVICES="", FASTREID_DATASETS=str(tmp_path / "fastreid_root"),
               PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    if skip:
        env["GLTRANS_COMPAT_SKIP"] = skip
    return env


def _rows(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.json"))]


def _accuracy_iterations(rows):
    """{key: [iterations]} of the accuracy scalars in metrics.json rows."""
    out = {}
    for r in rows:
        for k in ACCURACY:
            if k in r:
                out.setdefault(k, []).append(r["iteration"])
    return out


@pytest.mark.slow
def test_fastreid_train_net_trains_a_gltrans_config(tmp_path):
    script = tmp_path / "train_net.py"
    script.write_text(TRAIN_NET)
    out = tmp_path / "run"
    opts = dict(TINY, **{"DATASETS.ROOT": str(tmp_path / "data"), "OUTPUT_DIR": str(out)})
    r = subprocess.run([PY, str(script), "--config-file", DEMO_CONFIG, *opts_list(opts)],
                       cwd=str(tmp_path), env=_env(tmp_path), capture_output=True, text=True,
                       timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert "MODEL.DEVICE cuda -> cpu" in log  # no GPU: the CPU, said once
    # the config's keys were known to get_cfg(); the camera count came from the data
    from fastreid.config import CfgNode

    saved = CfgNode.load_cfg(open(out / "config.yaml"))
    assert saved.MODEL.BACKBONE.NUM_CAMERAS == 3 and saved.MODEL.DEVICE == "cpu"
    # the configured root and sizes were used, not fast-reid's ./datasets and default sizes
    assert os.path.isdir(tmp_path / "data" / "synthetic_reid")
    assert not os.path.exists(tmp_path / "fastreid_root")
    # it trained: a row per epoch end, finite losses
    rows = _rows(out)
    train = {r["iteration"]: r for r in rows if "total_loss" in r}
    assert sorted(train) == [ITERS - 1, 2 * ITERS - 1]
    # the warm-up lasted SOLVER.WARMUP_EPOCHS (1 epoch here), not the base config's 1000 iterations:
    # linear from 0.01 x BASE_LR, at the epoch's last step 0.01 + 0.99 x 3/4; then the cosine
    # over the one epoch left, which ends at ETA_MIN_LR
    base, eta_min = saved.SOLVER.BASE_LR, saved.SOLVER.ETA_MIN_LR
    assert train[ITERS - 1]["lr"] == pytest.approx(base * (0.01 + 0.99 * (ITERS - 1) / ITERS))
    assert train[2 * ITERS - 1]["lr"] == pytest.approx(eta_min)
    # each epoch's evaluation: printed, and in metrics.json at that epoch's last iteration
    assert log.count("| Dataset ") == 2 and "Rank-1" in log and "mAP" in log
    assert _accuracy_iterations(rows) == {k: [ITERS - 1, 2 * ITERS - 1] for k in ACCURACY}
    assert "Rank-1" not in train[ITERS - 1]  # one key form: <dataset>/<metric>
    assert os.path.isfile(out / "model_best.pth")  # chosen by SyntheticReID/metric


# Prints what each DefaultTrainer fix changes, one property per fix, independent of the others.
PROBE = '''
import json, os, sys
import torch
import gltrans_plugin  # noqa: F401
from fastreid.config import get_cfg
from fastreid.engine import DefaultTrainer, default_argument_parser, default_setup

cfg = get_cfg()
cfg.merge_from_file(sys.argv[1])
cfg.merge_from_list(sys.argv[2:])
out = {}
# cpu_without_cuda: MODEL.DEVICE "cuda" (fast-reid's default) without a GPU
dev = cfg.clone()
default_setup(dev, default_argument_parser().parse_args([]))
out["setup_device"] = dev.MODEL.DEVICE
sized = cfg.clone()
sized.MODEL.BACKBONE.NUM_CAMERAS, sized.MODEL.HEADS.NUM_CLASSES = 3, 8
try:
    out["model_device"] = next(DefaultTrainer.build_model(sized).parameters()).device.type
except Exception as e:
    out["model_device"] = type(e).__name__
cpu = cfg.clone()
cpu.MODEL.DEVICE = "cpu"
# default_trainer_reads_dataset_keys: DATASETS.ROOT and the synthetic sizes
out["train_images"] = len(DefaultTrainer.build_train_loader(cpu).dataset)
# default_trainer_fills_cameras: MODEL.BACKBONE.NUM_CAMERAS 0 = from the data
out["num_cameras"] = DefaultTrainer.auto_scale_hyperparams(cpu, 8).MODEL.BACKBONE.NUM_CAMERAS
# default_trainer_warmup_epochs: the scheduler's and the trainer's warm-up length
p = torch.nn.Parameter(torch.zeros(1))
sched = DefaultTrainer.build_lr_scheduler(cpu, torch.optim.SGD([p], lr=0.1), 4)
out["scheduler_warmup"] = sched["warmup_sched"].warmup_iters
cpu.MODEL.BACKBONE.NUM_CAMERAS = 3
out["trainer_warmup"] = DefaultTrainer(cpu).warmup_iters
print("PROBE " + json.dumps(out), flush=True)
os._exit(0)  # (the train loader's prefetch thread is still running)
'''

FIXED = {"setup_device": "cpu", "model_device": "cpu", "train_images": 72, "num_cameras": 3,
         "scheduler_warmup": ITERS, "trainer_warmup": ITERS}
DEFAULT_TRAINER_FIXES = ("cpu_without_cuda", "default_trainer_reads_dataset_keys",
                         "default_trainer_fills_cameras", "default_trainer_warmup_epochs")


@pytest.mark.slow
def test_default_trainer_fixes_are_registered_skippable_and_needed(tmp_path):
    from gltrans_plugin import compat

    assert set(DEFAULT_TRAINER_FIXES) <= set(compat.APPLIED)
    script = tmp_path / "probe.py"
    script.write_text(PROBE)

    def probe(skip):
        opts = dict(TINY, **{"DATASETS.ROOT": str(tmp_path / "data"),
                             "OUTPUT_DIR": str(tmp_path / f"out_{bool(skip)}")})
        r = subprocess.run([PY, str(script), DEMO_CONFIG, *opts_list(opts)], cwd=str(tmp_path),
                           env=_env(tmp_path, skip), capture_output=True, text=True, timeout=600)
        lines = [x for x in r.stdout.splitlines() if x.startswith("PROBE ")]
        assert r.returncode == 0 and lines, (r.stdout + r.stderr)[-4000:]
        return json.loads(lines[-1][len("PROBE "):])

    assert probe("") == FIXED
    broken = probe(",".join(DEFAULT_TRAINER_FIXES))
    # without them: the model goes to the missing GPU, the data to fast-reid's root at the
    # default sizes (48 x 4 x 3 images), no camera rows, the base config's 1000 warm-up steps
    assert broken["setup_device"] == "cuda" and broken["model_device"] != "cpu"
    assert broken["train_images"] == 48 * 4 * 3
    assert broken["num_cameras"] == 0
    assert broken["scheduler_warmup"] == broken["trainer_warmup"] == 1000


@pytest.mark.slow
def test_trainer_accuracy_curves_in_metrics_tensorboard_and_plot(tmp_path):
    from gltrans_plugin.engine import Trainer

    cfg = gltrans_small_cfg(str(tmp_path / "data"), str(tmp_path / "run"), **dict(
        TINY, **{"TEST.EVAL_BEFORE_TRAIN": True, "SOLVER.LOG_PERIOD": 1}))
    trainer = Trainer(cfg)
    assert trainer.iters_per_epoch == ITERS
    final = trainer.train()
    run = str(tmp_path / "run")
    rows = _rows(run)
    # before training (iteration 0) and after each epoch, in the rows of those iterations
    want = [0, ITERS - 1, 2 * ITERS - 1]
    assert _accuracy_iterations(rows) == {k: want for k in ACCURACY}
    last = [r for r in rows if r["iteration"] == 2 * ITERS - 1]
    assert len(last) == 1 and "total_loss" in last[0]  # one row: training and accuracy
    assert last[0]["SyntheticReID/mAP"] == pytest.approx(final["mAP"])
    # TensorBoard holds the same curves
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run)
    events.Reload()
    assert [e.step for e in events.Scalars("SyntheticReID/Rank-1")] == want
    # plot_training reads them from metrics.json
    import plot_training

    summary = plot_training.main([run, "--output", str(tmp_path / "curves.png")])
    assert os.path.getsize(tmp_path / "curves.png") > 0
    assert summary["eval_source"] == "metrics.json"
    assert set(ACCURACY) <= set(summary["accuracy"])
    assert summary["accuracy"]["SyntheticReID/mAP"]["iterations"] == want
    assert summary["accuracy"]["SyntheticReID/mAP"]["values"][-1] == pytest.approx(final["mAP"])
    assert summary["eval"]["mAP"][-1] == pytest.approx(final["mAP"])


def test_plot_training_reads_old_and_multi_set_keys(tmp_path):
    """metrics.json of older runs (one test set: bare `mAP`) and of runs with two test sets."""
    from gltrans_plugin.analysis.curves import training_curves

    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.json").write_text(
        '{"iteration": 3, "lr": 0.1, "total_loss": 2.0, "mAP": 10.0, "Rank-1": 20.0}\n')
    curves = training_curves(str(old))
    assert curves["eval"]["mAP"] == ([3], [10.0]) and curves["accuracy"]["mAP"] == ([3], [10.0])
    two = tmp_path / "two"
    two.mkdir()
    (two / "metrics.json").write_text(
        '{"iteration": 3, "lr": 0.1, "A/mAP": 10.0, "B/mAP": 30.0, "health/global/pos": 1.0}\n'
        '{"iteration": 7, "lr": 0.1, "A/mAP": 11.0, "B/mAP": 31.0}\n')
    curves = training_curves(str(two))
    assert curves["accuracy"] == {"A/mAP": ([3, 7], [10.0, 11.0]),
                                  "B/mAP": ([3, 7], [30.0, 31.0])}
    assert curves["eval"]["mAP"] == ([3, 7], [10.0, 11.0])  # the first test set
    assert curves["eval_source"] == "metrics.json"

"""One run per OUTPUT_DIR (a lock for the run's life, another run's checkpoints never trained
over silently) and a clean stop on SIGINT / SIGTERM (a checkpoint, one line, the conventional
exit code, ``--resume`` continues)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import gltrans_plugin  # noqa: F401
from gltrans_plugin.engine.run_dir import LOCK_FILE, OutputDirInUse, claim_output_dir
from gltrans_plugin.errors import Interrupted, format_error

from helpers import resnet_cfg

PY = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(REPO, "projects", "train_net.py")


def test_a_live_run_keeps_its_folder(tmp_path):
    lock = claim_output_dir(str(tmp_path))
    try:
        owner = json.loads((tmp_path / LOCK_FILE).read_text())
        assert owner["pid"] == os.getpid()
        with pytest.raises(OutputDirInUse) as e:  # flock: a second claim conflicts, any process
            claim_output_dir(str(tmp_path), resume=True)
        assert str(e.value).startswith(f"OUTPUT_DIR {tmp_path} is in use by a running training "
                                       f"(pid {os.getpid()} on ")
        assert "choose another OUTPUT_DIR" in str(e.value)
    finally:
        lock.release()
    claim_output_dir(str(tmp_path)).release()  # free again once released


def test_a_dead_runs_lock_is_taken_over_with_a_line(tmp_path, caplog):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 4194303, "host": "gone",
                                                  "started": "yesterday"}))
    with caplog.at_level("WARNING", logger="gltrans_plugin.engine.run_dir"):
        lock = claim_output_dir(str(tmp_path))
    lock.release()
    assert "no longer running" in caplog.text and "pid 4194303 on gone" in caplog.text
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_another_runs_checkpoints_need_resume_or_overwrite(tmp_path):
    (tmp_path / "model_0001.pth").write_bytes(b"x")
    with pytest.raises(OutputDirInUse) as e:
        claim_output_dir(str(tmp_path))
    msg = str(e.value)
    assert "holds another run's checkpoints (model_0001.pth)" in msg
    assert "--resume" in msg and "--overwrite" in msg and "another OUTPUT_DIR" in msg
    assert format_error(e.value)[1] == 2  # a user error, one line
    claim_output_dir(str(tmp_path), resume=True).release()
    claim_output_dir(str(tmp_path), overwrite=True).release()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_that_resume_continues(tiny_market, tmp_path, signum):
    from fastreid.engine import hooks

    from gltrans_plugin.engine import Trainer

    out = tmp_path / "run"
    cfg = resnet_cfg(tiny_market, str(out), **{"SOLVER.MAX_EPOCH": 3, "TEST.EVAL_PERIOD": 3})
    trainer = Trainer(cfg)
    per_epoch = trainer.iters_per_epoch
    stop_at = per_epoch + 1  # the second iteration of epoch 2 (0-based epoch 1)
    trainer.register_hooks([hooks.CallbackHook(before_step=lambda t: t.iter + 1 == stop_at and
                                               os.kill(os.getpid(), signum))])  # mid-step
    before = signal.getsignal(signum)
    with pytest.raises(Interrupted) as e:
        trainer.train()
    assert signal.getsignal(signum) is before  # handlers restored after the training
    assert e.value.signum == signum
    line, code = format_error(e.value)
    assert code == 128 + signum
    assert line.startswith(f"error: stopped by {signal.Signals(signum).name} at iteration "
                           f"{stop_at}; saved {out / 'model_interrupted.pth'}: --resume restarts "
                           f"epoch 2 from its first batch")
    assert (out / "last_checkpoint").read_text().strip() == "model_interrupted.pth"
    saved = torch.load(out / "model_interrupted.pth", weights_only=False)
    assert saved["epoch"] == 0  # the last finished epoch: resume starts at the next
    weights = trainer.model.state_dict()
    assert all(torch.equal(saved["model"][k], v) for k, v in weights.items())  # the stop's state
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_epoch == 1
    res = resumed.train()
    assert "mAP" in res and (out / "model_final.pth").exists()


@pytest.mark.slow
def test_train_net_one_run_per_folder_and_sigterm(tiny_market, tmp_path):
    """Real processes: a second start into a live run's folder stops with one line naming the
    first; SIGTERM ends the first with 143 after saving; a fresh start is refused, --resume
    finishes it."""
    cfg = resnet_cfg(tiny_market, str(tmp_path / "run"), **{"SOLVER.MAX_EPOCH": 200,
                                                            "TEST.EVAL_PERIOD": 200})
    yml = tmp_path / "run.yml"
    yml.write_text(cfg.dump())
    cmd = [PY, TRAIN_NET, "--config-file", str(yml)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.json"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.stat().st_size > 0):
        assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
        time.sleep(0.1)
    second = subprocess.run(cmd + ["SEED", "1"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1].startswith(
        f"error: OUTPUT_DIR {tmp_path / 'run'} is in use by a running training (pid {first.pid} ")
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 143, err[-2000:]
    assert "error: stopped by SIGTERM at iteration" in err.strip().splitlines()[-1]
    assert (tmp_path / "run" / "model_interrupted.pth").exists()
    fresh = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 2 and "holds another run's checkpoints" in fresh.stderr


def test_advice_follows_the_folders_state(tmp_path):
    from gltrans_plugin.errors import DiskFullError, nan_advice

    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    assert nan_advice(empty).startswith(f"No checkpoint was saved in {empty} yet: start again "
                                        f"(--overwrite) with a lower SOLVER.BASE_LR")
    assert "--overwrite" in str(DiskFullError(os.path.join(empty, "model_0000.pth")))
    assert "intact" not in str(DiskFullError(os.path.join(empty, "model_0000.pth")))
    run = tmp_path / "run"
    run.mkdir()
    (run / "model_0003.pth").write_bytes(b"x")
    (run / "last_checkpoint").write_text("model_0003.pth")
    assert f"MODEL.WEIGHTS {run / 'model_0003.pth'} without --resume" in nan_advice(str(run))
    msg = str(DiskFullError(str(run / "model_0004.pth")))
    assert "--resume (it continues from model_0003.pth, which is intact)" in msg


def test_resume_naming_a_deleted_checkpoint_is_one_line(tiny_market, tmp_path):
    from gltrans_plugin.engine import Trainer
    from gltrans_plugin.engine.trainer import MissingCheckpointError

    out = tmp_path / "run"
    out.mkdir()
    (out / "model_0001.pth").write_bytes(b"x")
    (out / "last_checkpoint").write_text("model_0002.pth")  # deleted since
    trainer = Trainer(resnet_cfg(tiny_market, str(out)))
    with pytest.raises(MissingCheckpointError) as e:
        trainer.resume_or_load(resume=True)
    line, code = format_error(e.value)
    assert code == 2 and "last_checkpoint names model_0002.pth, which does not exist" in line
    assert "(there: model_0001.pth)" in line and "--overwrite" in line

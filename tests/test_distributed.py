"""Several processes train as one: ``projects/train_net.py --num-gpus 2`` on a
CPU-only machine runs two gloo processes whose training equals a 1-process run on the same global
batch, and whose evaluation gathers the features of both processes.

Why the runs can be equal: the model has no batch statistics (fast-reid's Baseline on our ViT,
LayerNorm only, no BNNeck: a per-process batch of 4 is computed exactly like the same 4 images
inside a batch of 8), the loss is a per-image mean (cross-entropy; no triplet mining across the
batch), there is no random augmentation, and fast-reid's ``TrainingSampler`` (through our
``EpochSampler``) slices one global index stream per rank, so ranks 0 and 1 together see exactly
the 1-process batch.  DDP averages the two half-batch gradients, which equals the full-batch
mean gradient.  What remains is floating-point summation order (two partial means and an
all-reduce instead of one mean): about 1e-7 relative per step, hence the tolerances (1e-4
relative on losses and weights after 8 SGD steps with momentum).  With BatchNorm the runs differ
by design (per-process statistics); GroupNorm on ResNet-18's 2x1 last feature maps was tried
and is too ill-conditioned (1e-7 input differences gave 1% gradient differences after one step).
Evaluation: fast-reid's ``ReidEvaluator`` in the 1-process run, ours (``ChunkedReidEvaluator``) in
the 2-process run; both gather with ``comm.gather``, recorded per rank by a sitecustomize hook.
"""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import resnet_cfg

PY = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "projects", "train_net.py")

# Loaded by every python process started with this folder on PYTHONPATH (the launcher's spawned
# workers too): records what each rank gathers for evaluation, without touching train_net.py.
_SITECUSTOMIZE = r'''
import json, os


def _install():
    from fastreid.utils import comm

    original = comm.gather
    if getattr(original, "_recorded", False):
        return

    def gather(data, dst=0, group=None):
        out = original(data, dst=dst, group=group)
        if isinstance(data, list) and data and isinstance(data[0], dict) and "feats" in data[0]:
            import torch.distributed as dist

            rec = {"rank": comm.get_rank(), "world_size": comm.get_world_size(),
                   "backend": dist.get_backend(),
                   "local": sum(int(p["feats"].shape[0]) for p in data),
                   "gathered": sum(int(p["feats"].shape[0]) for part in out for p in part)}
            path = os.path.join(os.environ["GLTRANS_GATHER_RECORD"], f"rank{rec['rank']}.jsonl")
            with open(path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        return out

    gather._recorded = True
    comm.gather = gather

    from fastreid.engine import train_loop

    write_metrics = train_loop.SimpleTrainer._write_metrics

    def _write_metrics(self, loss_dict, data_time, *args, **kwargs):  # raw (unsmoothed) losses
        rec = {"rank": comm.get_rank(), "iter": self.iter,
               "loss": float(sum(v.detach() for v in loss_dict.values()))}
        path = os.path.join(os.environ["GLTRANS_GATHER_RECORD"], f"loss{rec['rank']}.jsonl")
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        return write_metrics(self, loss_dict, data_time, *args, **kwargs)

    train_loop.SimpleTrainer._write_metrics = _write_metrics


if os.environ.get("GLTRANS_GATHER_RECORD"):
    import builtins

    _real_import = builtins.__import__

    def _import(name, *args, **kwargs):  # install once fastreid.utils.comm is importable
        module = _real_import(name, *args, **kwargs)
        if name.startswith("gltrans_plugin.engine") or name == "gltrans_plugin":
            builtins.__import__ = _real_import
            _install()
        return module

    builtins.__import__ = _import
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(root, out, evaluator):
    cfg = resnet_cfg(root, out, **{
        # fast-reid's Baseline on our ViT (LayerNorm only: no batch statistics), no BNNeck
        "MODEL.BACKBONE.NAME": "build_gltrans_vit_backbone", "MODEL.BACKBONE.DEPTH": "tiny",
        "MODEL.BACKBONE.FEAT_DIM": 192, "MODEL.BACKBONE.STRIDE_SIZE": (16, 16),
        "MODEL.BACKBONE.SIE_CAMERA": False, "MODEL.BACKBONE.DROP_PATH_RATIO": 0.0,
        "MODEL.HEADS.WITH_BNNECK": False, "MODEL.PIXEL_MEAN": [127.5] * 3,
        "MODEL.PIXEL_STD": [127.5] * 3,
        "DATALOADER.SAMPLER_TRAIN": "TrainingSampler", "SOLVER.IMS_PER_BATCH": 8,
        "SOLVER.MAX_EPOCH": 2, "SOLVER.CHECKPOINT_PERIOD": 2, "TEST.EVAL_PERIOD": 2,
        "SOLVER.BASE_LR": 0.01, "TEST.IMS_PER_BATCH": 8, "TEST.EVALUATOR": evaluator,
        "MODEL.DEVICE": "cpu",
    })
    return cfg.dump()


def _rows(path):
    rows = {}
    for line in open(path):
        row = json.loads(line)
        if "total_loss" in row:
            rows[row["iteration"]] = row
    return rows


def _losses(record, rank):
    rows = [json.loads(line) for line in (record / f"loss{rank}.jsonl").read_text().splitlines()]
    return [r["loss"] for r in sorted(rows, key=lambda r: r["iter"])]


def _table(log):
    return [line.split("]:")[-1] for line in log.splitlines() if "| Market1501" in line]


@pytest.mark.slow
def test_two_processes_train_and_evaluate_as_one(tiny_market, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    runs = {}
    for name, gpus, evaluator in (("one", 1, "fastreid"), ("two", 2, "fast")):
        out = tmp_path / name
        config = tmp_path / f"{name}.yml"
        config.write_text(_config(tiny_market, str(out), evaluator))
        record = tmp_path / f"{name}_gather"
        record.mkdir()
        env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{REPO}",
                   GLTRANS_GATHER_RECORD=str(record), OMP_NUM_THREADS="1")
        cmd = [PY, TRAIN_NET, "--config-file", str(config), "--num-gpus", str(gpus),
               "--num-machines", "1", "--machine-rank", "0",
               "--dist-url", f"tcp://127.0.0.1:{_free_port()}"]
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-4000:]
        runs[name] = (out, record, r.stdout + r.stderr)

    (one, _, log1), (two, record, log2) = runs["one"], runs["two"]
    # two gloo processes; evaluation gathered both halves of the 6 query + 24 gallery images
    recs = {}
    for rank in (0, 1):
        lines = (record / f"rank{rank}.jsonl").read_text().splitlines()
        recs[rank] = json.loads(lines[-1])
    assert {r["backend"] for r in recs.values()} == {"gloo"}
    assert {r["world_size"] for r in recs.values()} == {2}
    assert recs[0]["local"] == recs[1]["local"] == 15
    assert recs[0]["gathered"] == 30  # = the test set size, evaluated on rank 0
    # same learning rate at every iteration, and the same loss: 1-process loss = mean of the
    # two ranks' half-batch losses (raw values; metrics.json holds running medians)
    a, b = _rows(one / "metrics.json"), _rows(two / "metrics.json")
    assert sorted(a) == sorted(b) == list(range(8))
    for it in a:
        assert b[it]["lr"] == pytest.approx(a[it]["lr"], rel=1e-9)
    loss1 = _losses(runs["one"][1], 0)
    loss2 = [(x + y) / 2 for x, y in zip(_losses(record, 0), _losses(record, 1))]
    assert len(loss1) == len(loss2) == 8
    print("losses 1 process:", loss1, "\nlosses 2 processes:", loss2)
    for it in range(8):
        assert loss2[it] == pytest.approx(loss1[it], rel=1e-4), it
    # same weights after training
    from gltrans_plugin.checkpoint import load_file

    wa = load_file(str(one / "model_final.pth"))["model"]
    wb = load_file(str(two / "model_final.pth"))["model"]
    assert sorted(wa) == sorted(wb)
    for k, v in wa.items():
        torch.testing.assert_close(wb[k], v, rtol=1e-4, atol=1e-6, msg=k)
    # ... and training did move them (the loss changed), so the equality is not trivial
    assert abs(loss1[7] - loss1[0]) > 1e-3
    # same retrieval result: fast-reid's evaluator (1 process) and ours over gathered features
    assert _table(log1) and _table(log1) == _table(log2)


# ============================================================================ no orphans
_LAUNCHED = r'''
import os, sys, time
sys.path.insert(0, os.environ["GLTRANS_REPO"])
import gltrans_plugin  # noqa: F401
from gltrans_plugin.distributed import broadcast_buffers, launch


def main(out, mode):
    import torch
    import torch.distributed as dist

    rank = dist.get_rank()
    if mode == "buffers":  # rank-dependent BatchNorm statistics, then rank 0's everywhere
        bn = torch.nn.BatchNorm1d(3)
        bn.running_mean.fill_(rank + 1.0)
        broadcast_buffers(bn)
        with open(os.path.join(out, f"mean{rank}.txt"), "w") as f:
            f.write(repr(bn.running_mean.tolist()))
        return
    with open(os.path.join(out, f"worker{rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)


if __name__ == "__main__":
    launch(main, 2, dist_url=sys.argv[3], args=(sys.argv[1], sys.argv[2]))
'''


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except OSError:
        return False


def _launch(tmp_path, mode):
    script = tmp_path / "launched.py"
    script.write_text(_LAUNCHED)
    env = dict(os.environ, GLTRANS_REPO=REPO, OMP_NUM_THREADS="1")
    return subprocess.Popen([PY, str(script), str(tmp_path), mode,
                             f"tcp://127.0.0.1:{_free_port()}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_launcher_leaves_no_worker(tmp_path):
    import signal
    import time

    p = _launch(tmp_path, "sleep")
    pids = []
    try:
        deadline = time.time() + 120
        while len(pids) < 2:
            assert p.poll() is None and time.time() < deadline, p.stderr.read()[-3000:]
            pids = [int((tmp_path / f"worker{r}.pid").read_text()) for r in (0, 1)
                    if (tmp_path / f"worker{r}.pid").exists()
                    and (tmp_path / f"worker{r}.pid").read_text()]
            time.sleep(0.2)
        assert all(_alive(pid) for pid in pids)
        p.send_signal(signal.SIGKILL)  # kill -9 of the launcher
        p.wait()
        deadline = time.time() + 20
        while any(_alive(pid) for pid in pids) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in pids), "workers outlived their launcher"
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_ranks_evaluate_rank0_buffers(tmp_path):
    p = _launch(tmp_path, "buffers")
    _, err = p.communicate(timeout=180)
    assert p.returncode == 0, err[-3000:]
    assert [(tmp_path / f"mean{r}.txt").read_text() for r in (0, 1)] == ["[1.0, 1.0, 1.0]"] * 2


def test_busy_rendezvous_port_is_replaced_and_its_holder_named(caplog):
    from gltrans_plugin.distributed import free_dist_url
    from gltrans_plugin.errors import UserError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        url = f"tcp://127.0.0.1:{port}"
        with caplog.at_level("WARNING", logger="gltrans_plugin.distributed"):
            new = free_dist_url(url)
        assert new != url and new.startswith("tcp://127.0.0.1:")
        msg = caplog.records[-1].getMessage()
        assert msg.startswith(f"Rendezvous port {port} (--dist-url {url}) is in use by pid "
                              f"{os.getpid()} (")
        with pytest.raises(UserError) as e:  # across machines the address cannot change
            free_dist_url(url, num_machines=2, machine_rank=0)
        assert str(e.value).startswith(f"the rendezvous port {port} is in use by pid "
                                       f"{os.getpid()} (")
    assert free_dist_url(url) == url  # free again


def test_trainer_test_shares_rank0_buffers_first(monkeypatch):
    from gltrans_plugin.engine import trainer as engine

    class Shared(Exception):
        pass

    def broadcast(model):
        raise Shared(model)

    monkeypatch.setattr(engine, "broadcast_buffers", broadcast)
    model = torch.nn.BatchNorm1d(2)
    with pytest.raises(Shared) as e:  # before any evaluation work
        engine.Trainer.test(None, model)
    assert e.value.args[0] is model


@pytest.mark.slow
def test_two_process_error_is_one_line(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([PY, TRAIN_NET, "--config-file",
                        os.path.join(REPO, "configs", "GLTrans", "synthetic_demo.yml"),
                        "--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{_free_port()}",
                        "OUTPUT_DIR", str(out), "MODEL.BACKBONE.DEPHT", "tiny"], cwd=REPO,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [
        "error: Unknown config key MODEL.BACKBONE.DEPHT in the command-line options. Did you "
        "mean MODEL.BACKBONE.DEPTH? Keys are defined by fast-reid (fastreid/config/defaults.py) "
        "and gltrans_plugin/config.py (add_gltrans_config)."]
    assert "ConfigKeyError" in (out / "log.txt").read_text()  # rank 0's traceback

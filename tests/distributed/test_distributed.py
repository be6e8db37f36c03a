"""Several processes train as one, whoever starts them.

GLTrans under data parallelism (``test_gltrans_two_*``): the demo recipe (every branch, its
BNNecks and PTF BatchNorms, CE + triplet per branch, NaiveIdentitySampler) trained by
``projects/train_net.py`` with 2 processes and with 1 process on the same global batch and data
order (the plugin's sampler draws the same global batches for any number of processes; random
augmentation is off, so an image is the same tensor in both runs). Two processes compute, per
iteration, the mean of their two losses, each on its share of the batch: the triplet terms mine
within a share (fast-reid's convention: a share holds whole identities), and BatchNorm
normalises each share alone, or the whole batch with SyncBN. The 1-process reference computes
exactly that objective on the whole batch, split into the same shares by a test hook
(``GLTRANS_TEST_SHARES``: each share its own forward, BatchNorm running statistics those of
share 0 = rank 0's; with SyncBN one forward, the loss per share). What remains is floating-point
order (two partial gradients all-reduced instead of one sum, ~1e-7 relative): losses within 1e-5
relative, weights within 1e-4 relative + 1e-6 absolute after 3 steps, and the same evaluation
table. The optimizer is SGD with momentum, whose weights are linear in the gradients, so equal
weights mean equal gradients; the demo's Adam divides each update by the gradient's own running
scale, so a parameter whose true gradient is zero (an attention key's bias: the softmax ignores
it) moves by up to the learning rate in a direction set by rounding noise, differently in any
two runs (measured: 8e-6 after 3 steps at lr 2e-5). SyncBN runs on GPUs only (torch's
SyncBatchNorm rejects CPU tensors): its run is the 2-GPU test, skipped with fewer.

Launchers: 2 "machines" x 2 processes on localhost, started with fast-reid's flags, rank 3
killed, and resumed with ``torchrun --nnodes 2 --nproc-per-node 2``, end with the losses,
weights and metrics of one process on the same global batch; the GLTrans runs above are SLURM
tasks (``srun``'s environment), which start no launcher process of their own.  That model is
fast-reid's Baseline on our ViT (LayerNorm only, CE only, no BNNeck: no batch statistics, a
per-image mean loss), so there the reference is a plain 1-process run.  Every process records
what it gathers for the evaluation and its raw loss per iteration through a sitecustomize hook.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from helpers import gltrans_small_cfg, opts_list, resnet_cfg

PY = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(REPO, "projects", "train_net.py")
CUDA2 = torch.cuda.is_available() and torch.cuda.device_count() >= 2

# Loaded by every python process started with this folder on PYTHONPATH (spawned workers too):
# records what each rank gathers for evaluation and its raw losses, and (GLTRANS_TEST_SHARES)
# makes a 1-process run compute the objective of that many processes.
_SITECUSTOMIZE = r'''
import json, os

REC = os.environ.get("GLTRANS_TEST_RECORD")


def _append(name, row):
    with open(os.path.join(REC, name), "a") as f:
        f.write(json.dumps(row) + "\n")


def _share(x, i, n):
    if isinstance(x, dict):
        return {k: _share(v, i, n) for k, v in x.items()}
    return x.chunk(n)[i]


def _set_buffers(model, value):
    for m in model.modules():
        for key, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[key] = value(m, key, b)


def _emulate(shares, shared_bn):
    import torch
    from gltrans_plugin.modeling.meta_arch import GLTrans

    if shared_bn:  # SyncBN: BatchNorm over the whole batch, the loss per share
        losses = GLTrans.losses

        def per_share_losses(self, outputs, gt_labels):
            parts = [losses(self, _share(outputs, i, shares), gt_labels.chunk(shares)[i])
                     for i in range(shares)]
            return {k: sum(p[k] for p in parts) / shares for k in parts[0]}

        GLTrans.losses = per_share_losses
        return
    forward = GLTrans.forward

    def per_share_forward(self, batched_inputs):  # BatchNorm per share, as per process
        if not self.training:
            return forward(self, batched_inputs)
        n = len(batched_inputs["targets"])
        k = n // shares
        parts, rank0_buffers = [], None
        for i in range(shares):
            part = {key: v[i * k:(i + 1) * k] if hasattr(v, "__len__") and len(v) == n else v
                    for key, v in batched_inputs.items()}
            if i:  # fresh buffers: the graph of share i - 1 keeps the ones it normalised with
                _set_buffers(self, lambda m, key, b: b.clone())
            parts.append(forward(self, part))
            if i == 0:
                rank0_buffers = {(id(m), key): b for m in self.modules()
                                 for key, b in m._buffers.items()}
        _set_buffers(self, lambda m, key, b: rank0_buffers[(id(m), key)])
        return {key: sum(p[key] for p in parts) / shares for key in parts[0]}

    GLTrans.forward = per_share_forward


def _install():
    from fastreid.engine import train_loop
    from fastreid.utils import comm

    gather = comm.gather
    if getattr(gather, "_recorded", False):
        return

    def recorded_gather(data, dst=0, group=None):
        out = gather(data, dst=dst, group=group)
        if isinstance(data, list) and data and isinstance(data[0], dict) and "feats" in data[0]:
            import multiprocessing

            import torch.distributed as dist

            _append(f"gather{comm.get_rank()}.jsonl", {
                "world_size": comm.get_world_size(), "backend": dist.get_backend(),
                "start_method": multiprocessing.get_start_method(),
                "local": sum(int(p["feats"].shape[0]) for p in data),
                "gathered": sum(int(p["feats"].shape[0]) for part in out for p in part)})
        return out

    recorded_gather._recorded = True
    comm.gather = recorded_gather
    write_metrics = train_loop.SimpleTrainer._write_metrics

    def _write_metrics(self, loss_dict, data_time, *args, **kwargs):  # raw (unsmoothed) losses
        rank = comm.get_rank()
        _append(f"loss{rank}.jsonl", {
            "iter": self.iter, "loss": float(sum(v.detach() for v in loss_dict.values()))})
        pause = os.environ.get("GLTRANS_TEST_PAUSE")  # "rank:iteration": hang there
        if pause and [rank, self.iter] == [int(x) for x in pause.split(":")]:
            import time

            _append(f"paused{rank}", {"pid": os.getpid()})
            time.sleep(3600)  # the others wait for it in the next collective
        return write_metrics(self, loss_dict, data_time, *args, **kwargs)

    train_loop.SimpleTrainer._write_metrics = _write_metrics
    shares = int(os.environ.get("GLTRANS_TEST_SHARES", "1"))
    if shares > 1:
        _emulate(shares, os.environ.get("GLTRANS_TEST_SHARED_BN") == "1")


if REC:
    import builtins

    _real_import = builtins.__import__

    def _import(name, *args, **kwargs):  # install once the plugin has patched fast-reid
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


class Run:
    """One training run's files: its config, OUTPUT_DIR, and its records."""

    def __init__(self, tmp_path, name, config_text):
        self.dir = tmp_path / name
        self.record = self.dir / "record"
        self.out = self.dir / "out"
        self.record.mkdir(parents=True)
        self.config = self.dir / "config.yml"
        self.config.write_text(config_text)
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        self.env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{REPO}",
                        GLTRANS_TEST_RECORD=str(self.record), OMP_NUM_THREADS="1")
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            self.env.pop(k, None)  # a test run inside torchrun must not look launched
        self.log = ""

    def train_net(self, *flags, env=None, opts=(), wait=True):
        cmd = [PY, TRAIN_NET, "--config-file", str(self.config), *flags,
               "OUTPUT_DIR", str(self.out), *opts]
        p = subprocess.Popen(cmd, cwd=REPO, env=dict(self.env, **(env or {})),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
        return self.finish(p) if wait else p

    def finish(self, p, timeout=300):
        out, _ = p.communicate(timeout=timeout)
        self.log += out
        assert p.returncode == 0, out[-4000:]
        return out

    def losses(self, ranks=(0,)):
        """Per iteration, the mean over ``ranks`` of their raw losses."""
        per = []
        for r in ranks:
            rows = [json.loads(x) for x in (self.record / f"loss{r}.jsonl").read_text()
                    .splitlines()]
            per.append({row["iter"]: row["loss"] for row in rows})  # a resumed run: the last
        its = sorted(per[0])
        assert all(sorted(p) == its for p in per)
        return [sum(p[i] for p in per) / len(per) for i in its]

    def gathers(self, rank):
        return [json.loads(x) for x in (self.record / f"gather{rank}.jsonl").read_text()
                .splitlines()]

    def weights(self):
        from gltrans_plugin.checkpoint import load_file

        return load_file(str(self.out / "model_final.pth"))["model"]

    def table(self):
        return [line.split("]:")[-1] for line in self.log.splitlines() if "| " in line
                and ("Market1501" in line or "SyntheticReID" in line)]


def assert_same_training(one, many, ranks, loss_rtol, w_rtol, w_atol):
    """``many`` (processes ``ranks``) trained as ``one``: the mean of the ranks' losses = the
    1-process loss at every iteration, the same final weights, the same evaluation table."""
    a, b = one.losses(), many.losses(ranks)
    print("losses 1 process:", a, "\nlosses of the processes (mean):", b)
    assert len(a) == len(b) >= 2
    for it, (x, y) in enumerate(zip(a, b)):
        assert y == pytest.approx(x, rel=loss_rtol), it
    assert abs(a[-1] - a[0]) > 1e-3  # training moved the loss: the equality is not trivial
    wa, wb = one.weights(), many.weights()
    assert sorted(wa) == sorted(wb)
    worst = max(float(((wb[k].float() - v.float()).abs() / (v.float().abs() + 1e-12)).max())
                for k, v in wa.items() if v.is_floating_point())
    print("largest relative weight difference:", worst)
    for k, v in wa.items():
        torch.testing.assert_close(wb[k], v, rtol=w_rtol, atol=w_atol, msg=k)
    assert one.table() and one.table()[-1] == many.table()[-1]


# ============================================================================ GLTrans, DDP
def _gltrans_config(root, device, sync_bn):
    cfg = gltrans_small_cfg(root, "unused", **{
        # 6 identities x 3 cameras x 3 images: 3 iterations of 16 (4 identities x 4 images)
        "DATASETS.SYNTHETIC.NUM_TRAIN_IDS": 6, "DATASETS.SYNTHETIC.NUM_TEST_IDS": 4,
        "SOLVER.MAX_EPOCH": 1, "TEST.EVAL_PERIOD": 1, "SOLVER.CHECKPOINT_PERIOD": 1,
        "SOLVER.WARMUP_EPOCHS": 0, "SOLVER.WARMUP_ITERS": 0, "SOLVER.LOG_PERIOD": 1,
        "TEST.IMS_PER_BATCH": 16,
        # SGD (momentum 0.9), not the demo's Adam: weights linear in the gradients (see above)
        "SOLVER.OPT": "SGD", "SOLVER.BASE_LR": 0.01,
        # no random augmentation: an image is the same tensor in every run
        "INPUT.FLIP.ENABLED": False, "INPUT.PADDING.ENABLED": False, "INPUT.REA.ENABLED": False,
        "MODEL.DEVICE": device, "TEST.EVAL_DEVICE": device,
        "MODEL.BACKBONE.NORM": "syncBN" if sync_bn else "BN", "SEED": 0})
    return cfg.dump()


def srun_tasks(run, n):
    """``n`` tasks of a SLURM job step on this machine, their environment as ``srun --ntasks n``
    sets it (the rendezvous: the first host of the step's node list, at MASTER_PORT)."""
    step = {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_NTASKS": str(n),
            "SLURM_STEP_NUM_TASKS": str(n), "SLURM_NODEID": "0", "SLURM_STEP_NODELIST":
            "localhost", "SLURM_JOB_NODELIST": "localhost", "MASTER_PORT": str(_free_port())}
    procs = [run.train_net(env=dict(step, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)),
                           wait=False) for r in range(n)]
    for p in procs:
        run.finish(p)
    assert f"Rank of current process: 0. World size: {n}" in run.log


def _gltrans_runs(tmp_path, device, sync_bn):
    text = _gltrans_config(str(tmp_path / "data"), device, sync_bn)
    one, two = Run(tmp_path, "one", text), Run(tmp_path, "two", text)
    # the data set is generated once, by the first run, then read by both
    one.train_net(env={"GLTRANS_TEST_SHARES": "2", "GLTRANS_TEST_SHARED_BN": str(int(sync_bn))})
    srun_tasks(two, 2)  # SLURM's environment: the launcher that starts the fewest processes
    assert {g["world_size"] for g in two.gathers(0)} == {2}
    return one, two


@pytest.mark.slow
def test_gltrans_two_processes_train_as_one_cpu(tmp_path):
    one, two = _gltrans_runs(tmp_path, "cpu", sync_bn=False)
    assert two.gathers(0)[-1]["backend"] == "gloo"
    assert_same_training(one, two, (0, 1), loss_rtol=1e-5, w_rtol=1e-4, w_atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA2, reason="needs 2 CUDA GPUs (NCCL: one GPU per process)")
def test_gltrans_two_gpus_with_sync_bn_train_as_one(tmp_path):
    """The same on 2 GPUs over NCCL with SyncBN (``MODEL.BACKBONE.NORM syncBN``: every
    BatchNorm of GLTrans normalises the global batch), against one process whose BatchNorms
    see the whole batch and whose loss is taken per share.  GPU kernels (cuDNN convolutions in
    TF32 by default, atomics) are not bit-reproducible across runs: losses within 1e-3, weights
    within 1e-3 relative + 1e-5 absolute after 3 steps.  (Per-process BatchNorm is the CPU
    test's case.)"""
    one, two = _gltrans_runs(tmp_path, "cuda", sync_bn=True)
    assert two.gathers(0)[-1]["backend"] == "nccl"
    assert "MODEL.BACKBONE.NORM syncBN: " in two.log
    assert_same_training(one, two, (0, 1), loss_rtol=1e-3, w_rtol=1e-3, w_atol=1e-5)


def test_sync_bn_converts_every_batchnorm(monkeypatch):
    from fastreid.modeling import build_model
    from fastreid.utils import comm

    from gltrans_plugin import distributed
    from gltrans_plugin.config import setup_cfg
    from gltrans_plugin.errors import UserError

    cfg = setup_cfg(os.path.join(REPO, "configs", "GLTrans", "synthetic_demo.yml"), opts_list({
        "MODEL.HEADS.NUM_CLASSES": 4, "MODEL.BACKBONE.NUM_CAMERAS": 2, "MODEL.DEVICE": "cpu",
        "INPUT.SIZE_TRAIN": [64, 32], "INPUT.SIZE_TEST": [64, 32]}))
    model = build_model(cfg)
    bns = [n for n, m in model.named_modules()
           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert any(n.startswith("heads.necks") for n in bns)  # the BNNecks
    assert any(".ptf." in n for n in bns)  # the PTF BatchNorms
    assert distributed.convert_sync_batchnorm(model, cfg) is model  # BN: unchanged
    cfg.defrost()
    cfg.MODEL.HEADS.NORM = "syncBN"
    assert distributed.convert_sync_batchnorm(model, cfg) is model  # one process: unchanged
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    with pytest.raises(UserError) as e:  # torch's SyncBatchNorm rejects CPU tensors
        distributed.convert_sync_batchnorm(model, cfg)
    assert str(e.value).startswith("MODEL.HEADS.NORM syncBN needs CUDA")
    cfg.MODEL.DEVICE = "cuda"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    synced = distributed.convert_sync_batchnorm(model, cfg)  # conversion needs no GPU
    kinds = {n: type(m) for n, m in synced.named_modules()}
    assert all(kinds[n] is torch.nn.SyncBatchNorm for n in bns)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   and not isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    after = synced.state_dict()  # same weights and statistics, same checkpoint keys
    assert sorted(after) == sorted(state)
    assert all(torch.equal(after[k], v) for k, v in state.items())


def test_trainer_builds_models_through_the_sync_bn_switch(monkeypatch):
    from gltrans_plugin.engine import trainer

    seen = []
    monkeypatch.setattr(trainer, "convert_sync_batchnorm",
                        lambda model, cfg: seen.append((model, cfg)) or "converted")
    monkeypatch.setattr(trainer.DefaultTrainer, "build_model",
                        classmethod(lambda cls, cfg: "built"))
    assert trainer.Trainer.build_model("cfg") == "converted" and seen == [("built", "cfg")]


def test_global_batches_do_not_depend_on_the_number_of_processes():
    """fast-reid's NaiveIdentitySampler picks identities per process batch: alone it draws
    other batches for 2 processes than for 1.  Through the plugin's EpochSampler the global
    batches are the same, and each rank takes its contiguous share: whole identities."""
    import itertools

    from fastreid.data.samplers import NaiveIdentitySampler

    from gltrans_plugin.data.samplers import EpochSampler

    data = [(f"img{i}", i // 5, i % 3) for i in range(60)]  # 12 identities x 5 images
    B, K = 16, 4

    def sampler(rank, world):
        s = NaiveIdentitySampler(data, B // world, K, seed=7)
        s._rank, s._world_size, s.batch_size = rank, world, B  # as comm gives them
        return EpochSampler(s, epoch_size=2 * B, seed=3, batch_size=B)

    one = list(itertools.islice(iter(sampler(0, 1)), 4 * B))
    shares = [list(itertools.islice(iter(sampler(r, 2)), 4 * B // 2)) for r in (0, 1)]
    for b in range(4):
        batch = one[b * B:(b + 1) * B]
        assert shares[0][b * 8:(b + 1) * 8] + shares[1][b * 8:(b + 1) * 8] == batch
        for share in (batch[:8], batch[8:]):  # whole identities (K images each) per rank
            pids = [data[i][1] for i in share]
            assert all(pids.count(p) % K == 0 for p in set(pids))


# ============================================================================ launchers
def test_launcher_environments():
    from gltrans_plugin.distributed import first_host, launcher_env

    assert launcher_env({}) is None
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                "GROUP_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert launcher_env(torchrun) == {"launcher": "torchrun", "rank": 3, "world_size": 4,
                                      "local_rank": 1, "machine": "1",
                                      "init_method": "env://"}
    srun = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": "5",
            "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1",
            "SLURM_NODEID": "2", "SLURM_STEP_NODELIST": "gpu[07-09,12],cpu1",
            "SLURM_JOB_NODELIST": "gpu[07-09,12],cpu1"}
    assert launcher_env(srun) == {"launcher": "srun", "rank": 5, "world_size": 8,
                                  "local_rank": 1, "machine": "2",
                                  "init_method": "tcp://gpu07:24242"}
    assert launcher_env(dict(srun, MASTER_ADDR="head", MASTER_PORT="1234"))["init_method"] \
        == "tcp://head:1234"
    batch_script = {k: v for k, v in srun.items() if not k.startswith("SLURM_STEP")}
    assert launcher_env(dict(batch_script, SLURM_PROCID="0")) is None  # not a job step
    for nodes, first in [("gpu[07-09,12],cpu1", "gpu07"), ("node7", "node7"),
                         ("a[1-2]b[003-004]", "a1b003"), ("h1,h[2-3]", "h1"),
                         ("x-y[010,2]", "x-y010")]:
        assert first_host(nodes) == first


def test_outside_launcher_and_spawning_flags_conflict():
    from gltrans_plugin.distributed import run_launched
    from gltrans_plugin.errors import UserError

    spec = {"launcher": "torchrun", "rank": 0, "world_size": 2, "local_rank": 0, "machine": "0",
            "init_method": "env://"}
    with pytest.raises(UserError) as e:
        run_launched(print, spec, num_gpus_per_machine=2)
    assert str(e.value) == ("torchrun started this process as rank 0 of 2; --num-gpus would "
                            "start more inside it (--num-gpus): leave --num-gpus at 1: torchrun "
                            "sets the processes per machine and the machines")
    assert run_launched(lambda x: x + 1, dict(spec, world_size=1), args=(1,)) == 2


def test_rendezvous_host_need_not_be_local():
    """Machine rank 0 checks only that the port is free: a host name or an address of another
    interface (a NAT'd address, a DNS name) is valid and not bindable here."""
    from gltrans_plugin.distributed import free_dist_url

    port = _free_port()
    for host in ("203.0.113.7", "head-node.example", "localhost"):
        url = f"tcp://{host}:{port}"
        assert free_dist_url(url, num_machines=2, machine_rank=0) == url


def _vit_config(root, evaluator):
    cfg = resnet_cfg(root, "unused", **{
        # fast-reid's Baseline on our ViT (LayerNorm only: no batch statistics), no BNNeck
        "MODEL.BACKBONE.NAME": "build_gltrans_vit_backbone", "MODEL.BACKBONE.DEPTH": "tiny",
        "MODEL.BACKBONE.FEAT_DIM": 192, "MODEL.BACKBONE.STRIDE_SIZE": (16, 16),
        "MODEL.BACKBONE.SIE_CAMERA": False, "MODEL.BACKBONE.DROP_PATH_RATIO": 0.0,
        "MODEL.HEADS.WITH_BNNECK": False, "MODEL.PIXEL_MEAN": [127.5] * 3,
        "MODEL.PIXEL_STD": [127.5] * 3,
        # 32 images, global batch 8: 4 iterations per epoch, a checkpoint after each epoch
        "DATALOADER.SAMPLER_TRAIN": "TrainingSampler", "SOLVER.IMS_PER_BATCH": 8,
        "SOLVER.MAX_EPOCH": 2, "SOLVER.CHECKPOINT_PERIOD": 1, "TEST.EVAL_PERIOD": 2,
        "SOLVER.BASE_LR": 0.01, "TEST.IMS_PER_BATCH": 8, "TEST.EVALUATOR": evaluator,
        "MODEL.DEVICE": "cpu"})
    return cfg.dump()


@pytest.fixture(scope="module")
def reference(tiny_market, tmp_path_factory):
    """One process, fast-reid's own evaluator: what every launcher's run must end with."""
    run = Run(tmp_path_factory.mktemp("reference"), "one", _vit_config(tiny_market, "fastreid"))
    run.train_net()
    return run


def _vit_run(tmp_path, tiny_market, name="many"):
    return Run(tmp_path, name, _vit_config(tiny_market, "chunked"))


def _assert_same_as_reference(reference, run, world_size):
    gathered = [run.gathers(r)[-1] for r in range(world_size)]
    assert {g["backend"] for g in gathered} == {"gloo"}
    assert {g["world_size"] for g in gathered} == {world_size}
    assert sum(g["local"] for g in gathered) == gathered[0]["gathered"] == 30  # the test set
    if sys.platform.startswith("linux"):  # loader workers forked: no re-import of the program
        assert {g["start_method"] for g in gathered} == {"fork"}
    for warning in ("TypedStorage is deprecated", "No CUDA runtime is found"):
        assert run.log.count(warning) <= 1, warning  # once per job, not per rank
    # 1e-4: a global batch of 8 as 4 per-process means all-reduced (see the module docstring)
    assert_same_training(reference, run, tuple(range(world_size)), loss_rtol=1e-4,
                         w_rtol=1e-4, w_atol=1e-6)


def torchrun_nodes(run, nodes, per_node, *flags):
    """``torchrun --nnodes N --node-rank i --nproc-per-node K`` for each node i on localhost,
    train_net.py unchanged: rank, world size and rendezvous come from torchrun's environment."""
    port = _free_port()
    procs = [subprocess.Popen(
        [PY, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--node-rank", str(node),
         "--nproc-per-node", str(per_node), "--master-addr", "127.0.0.1", "--master-port",
         str(port), TRAIN_NET, "--config-file", str(run.config), *flags,
         "OUTPUT_DIR", str(run.out)],
        cwd=REPO, env=run.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for node in range(nodes)]
    for p in procs:
        run.finish(p)
    assert f"Rank of current process: 0. World size: {nodes * per_node}" in run.log


@pytest.mark.slow
def test_two_machines_of_two_killed_and_resumed(reference, tiny_market, tmp_path):
    """Two "machines" of two processes on localhost, started with fast-reid's own flags
    (``--num-gpus 2 --num-machines 2 --machine-rank 0/1 --dist-url tcp://127.0.0.1:PORT``).
    Rank 3 (machine 1) hangs in iteration 5 and is killed there (``kill -9``): every other
    process ends within seconds, each machine with one line naming rank 3.  ``--resume`` on
    both machines, now started by ``torchrun --nnodes 2 --nproc-per-node 2``, continues from
    the last checkpoint (the end of epoch 1) and ends as the uninterrupted 1-process run: the
    losses of iterations 0-4 (fast-reid's launcher) and 4-7 (torchrun), the final weights and
    the evaluation table."""
    run = _vit_run(tmp_path, tiny_market)
    url = f"tcp://127.0.0.1:{_free_port()}"
    flags = ["--num-gpus", "2", "--num-machines", "2", "--dist-url", url]
    machines = [run.train_net(*flags, "--machine-rank", str(m), wait=False,
                              env={"GLTRANS_TEST_PAUSE": "3:5"}) for m in (0, 1)]
    paused = run.record / "paused3"
    deadline = time.time() + 300
    while not paused.exists() or not paused.read_text().strip():
        assert time.time() < deadline and all(p.poll() is None for p in machines)
        time.sleep(0.2)
    os.kill(json.loads(paused.read_text())["pid"], signal.SIGKILL)
    t = time.time()
    outs = [p.communicate(timeout=120)[0] for p in machines]
    took = time.time() - t
    print(f"every process ended {took:.1f} s after the kill")
    assert took < 60  # gloo sees the closed connections at once; the watch then waits 3 s
    assert [p.returncode for p in machines] == [2, 2], outs
    lines = [[x for x in out.splitlines() if x.startswith("error:")] for out in outs]
    assert len(lines[1]) == 1 and lines[1][0].startswith(
        "error: rank 3 (machine 1, its process 1, pid "), outs[1][-3000:]
    assert len(lines[0]) == 1 and "3 (machine 1) stopped answering: its process ended or its " \
        "machine is unreachable" in lines[0][0], outs[0][-3000:]
    assert (run.out / "last_checkpoint").read_text().strip() == "model_0000.pth"
    torchrun_nodes(run, 2, 2, "--resume")
    _assert_same_as_reference(reference, run, 4)


# ============================================================================ no orphans
_LAUNCHED = r'''
import os, sys, time
sys.path.insert(0, os.environ["GLTRANS_REPO"])
import gltrans_plugin  # noqa: F401
from gltrans_plugin.distributed import broadcast_buffers, launch


def main(out):
    import torch
    import torch.distributed as dist

    rank = dist.get_rank()
    bn = torch.nn.BatchNorm1d(3)  # rank-dependent BatchNorm statistics, then rank 0's everywhere
    bn.running_mean.fill_(rank + 1.0)
    broadcast_buffers(bn)
    with open(os.path.join(out, f"mean{rank}.txt"), "w") as f:
        f.write(repr(bn.running_mean.tolist()))
    with open(os.path.join(out, f"worker{rank}.pid"), "w") as f:  # then wait to be killed
        f.write(str(os.getpid()))
    time.sleep(600)


if __name__ == "__main__":
    launch(main, 2, dist_url=sys.argv[2], args=(sys.argv[1],))
'''


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ranks_share_rank0_buffers_and_end_with_their_launcher(tmp_path):
    """Two workers of ``launch`` (one launch for both checks: each is a fresh interpreter that
    imports torch): rank 1 ends with rank 0's BatchNorm statistics; then ``kill -9`` of the
    launcher leaves no worker behind."""
    script = tmp_path / "launched.py"
    script.write_text(_LAUNCHED)
    env = dict(os.environ, GLTRANS_REPO=REPO, OMP_NUM_THREADS="1")
    p = subprocess.Popen([PY, str(script), str(tmp_path), f"tcp://127.0.0.1:{_free_port()}"],
                         cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pids = []
    try:
        deadline = time.time() + 180
        while len(pids) < 2:
            assert p.poll() is None and time.time() < deadline, p.stderr.read()[-3000:]
            pids = [int((tmp_path / f"worker{r}.pid").read_text()) for r in (0, 1)
                    if (tmp_path / f"worker{r}.pid").exists()
                    and (tmp_path / f"worker{r}.pid").read_text()]
            time.sleep(0.2)
        assert [(tmp_path / f"mean{r}.txt").read_text() for r in (0, 1)] == \
            ["[1.0, 1.0, 1.0]"] * 2
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
        if p.poll() is None:
            p.kill()


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

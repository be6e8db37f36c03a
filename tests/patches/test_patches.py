"""One test per fastreid compatibility fix (gltrans_plugin/compat.py): each drives the fastreid
code path the fix is about and fails when the fix is removed."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import gltrans_plugin
from gltrans_plugin import compat

from helpers import resnet_cfg

PY = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(code):
    return subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_every_fix_applied_once():
    if os.environ.get("GLTRANS_COMPAT_SKIP"):
        pytest.skip("a fix is deliberately skipped")
    assert compat.apply() == [f.__name__ for f in compat._FIXES]
    assert len(set(compat.APPLIED)) == len(compat.APPLIED) == 27


# The runtime fixes that make fast-reid's runs fail clearly (not hang, not corrupt files): each
# snippet drives the fastreid path and prints FIXED or BROKEN; run once as is and once with the
# fix skipped (GLTRANS_COMPAT_SKIP), which must break it.
_RUNTIME_FIXES = {
    "atomic_checkpoints": """
import os, tempfile, torch
from fastreid.utils.checkpoint import Checkpointer
d = tempfile.mkdtemp(); ck = Checkpointer(torch.nn.Linear(2, 2), d); ck.save("m")
before = open(os.path.join(d, "m.pth"), "rb").read()
def killed(obj, f, *a, **k):  # a kill in the middle of the write
    f.write(b"partial"); raise RuntimeError("killed")
torch.save = killed
try:
    ck.save("m")
except RuntimeError:
    pass
print("FIXED" if open(os.path.join(d, "m.pth"), "rb").read() == before else "BROKEN")
""",
    "nonfinite_loss_stops": """
import torch
from fastreid.engine.train_loop import SimpleTrainer
from fastreid.utils.events import EventStorage
from gltrans_plugin.errors import NonFiniteLossError
t = SimpleTrainer.__new__(SimpleTrainer); t.iter = 3
with EventStorage(0):
    try:
        t._write_metrics({"loss_cls": torch.tensor(float("nan")), "loss_tri": torch.tensor(1.0)},
                         0.0)
        print("BROKEN")
    except NonFiniteLossError as e:
        print("FIXED" if "loss_cls=nan" in str(e) and "iteration 3" in str(e) else "BROKEN")
    except FloatingPointError:
        print("BROKEN")
""",
    "loader_errors_propagate": """
import threading
from fastreid.data.data_utils import BackgroundGenerator
def gen():
    yield 1
    raise OSError("bad image")
out = []
def consume():
    try:
        for _ in BackgroundGenerator(gen(), 0):
            pass
        out.append("BROKEN")
    except OSError:
        out.append("FIXED")
th = threading.Thread(target=consume, daemon=True); th.start(); th.join(10)
print(out[0] if out else "BROKEN")  # without the fix the consumer waits forever
""",
    "images_read_as_rgb": """
import os, tempfile
from PIL import Image
from fastreid.data.data_utils import read_image
p = os.path.join(tempfile.mkdtemp(), "a.png"); Image.new("RGBA", (4, 8), (9, 9, 9, 128)).save(p)
print("FIXED" if read_image(p).mode == "RGB" else "BROKEN")
""",
    "gltrans_keys_in_defaults": """
import os
from fastreid.config import get_cfg
cfg = get_cfg()
try:
    cfg.merge_from_file(os.path.join("configs", "GLTrans", "synthetic_demo.yml"))
    print("FIXED" if cfg.MODEL.BACKBONE.DEPTH == "tiny" else "BROKEN")
except KeyError:  # Non-existent config key: DATALOADER.EPOCH_SAMPLER
    print("BROKEN")
""",
    "eval_results_per_dataset": """
from fastreid.config import get_cfg
from fastreid.engine import hooks
from fastreid.engine.train_loop import TrainerBase
from fastreid.utils.events import EventStorage
t = TrainerBase(); t.cfg = get_cfg(); t.cfg.DATASETS.TESTS = ("Market1501",); t.max_epoch = 1
ev = hooks.EvalHook(1, lambda: {"Rank-1": 50.0, "mAP": 40.0, "metric": 45.0})
ck = hooks.PeriodicCheckpointer(None, 1)
t.register_hooks([ev, ck])
with EventStorage(0) as t.storage:
    ev._do_eval(); ck.before_train()
    keys = set(t.storage.latest())
print("FIXED" if keys == {"Market1501/Rank-1", "Market1501/mAP", "Market1501/metric"}
      and ck.metric_name == "Market1501/metric" else "BROKEN")
""",
    "eval_results_written": """
import json, os, tempfile
from fastreid.engine import hooks
from fastreid.engine.train_loop import TrainerBase
from fastreid.utils.events import JSONWriter
class Loop(TrainerBase):
    def run_step(self):
        self.storage.put_scalar("total_loss", 1.0)
path = os.path.join(tempfile.mkdtemp(), "metrics.json")
t = Loop(); t.iters_per_epoch, t.max_epoch, t.max_iter = 2, 3, 6
t.register_hooks([hooks.EvalHook(2, lambda: {"Rank-1": 50.0}),
                  hooks.PeriodicWriter([JSONWriter(path)], 1)])
t.train(0, 3, 2)  # evaluations after epoch 2 (iteration 3) and after training (6)
rows = [json.loads(line) for line in open(path)]
found = [r["iteration"] for r in rows if any(k.endswith("Rank-1") for k in r)]
print("FIXED" if found == [3, 6] else "BROKEN")
""",
    "reader_names_checked": """
import os, tempfile
from PIL import Image
from fastreid.data.datasets.market1501 import Market1501
from gltrans_plugin.data.checks import DatasetError
d = tempfile.mkdtemp(); Image.new("RGB", (4, 8)).save(os.path.join(d, "photo.jpg"))
try:
    Market1501.process_dir(Market1501.__new__(Market1501), d)
    print("BROKEN")
except DatasetError as e:
    print("FIXED" if "photo.jpg" in str(e) else "BROKEN")
except Exception:
    print("BROKEN")
""",
}


@pytest.mark.slow
def test_runtime_fixes_are_registered_skippable_and_needed():
    # one interpreter with every fix, one with these skipped (two imports, not one per fix)
    code = "import gltrans_plugin\n" + "".join(
        f"print({name!r})\n" + snippet for name, snippet in sorted(_RUNTIME_FIXES.items()))

    def run(skip):
        env = {k: v for k, v in os.environ.items() if k != "GLTRANS_COMPAT_SKIP"}
        if skip:
            env["GLTRANS_COMPAT_SKIP"] = ",".join(_RUNTIME_FIXES)
        r = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True,
                           timeout=120, env=env)
        lines = r.stdout.split()
        return {n: lines[lines.index(n) + 1] if n in lines[:-1] else r.stderr[-500:]
                for n in _RUNTIME_FIXES}

    assert run(skip=False) == {n: "FIXED" for n in _RUNTIME_FIXES}
    assert run(skip=True) == {n: "BROKEN" for n in _RUNTIME_FIXES}
    assert set(_RUNTIME_FIXES) <= set(compat.APPLIED)



def test_fastreid_imports_only_through_plugin():
    # Without the shims fastreid.data.build fails (collections.Mapping / torch._six) ...
    bare = _run("import fastreid.data.build")
    assert bare.returncode != 0
    assert "Mapping" in bare.stderr or "_six" in bare.stderr
    # ... and `import gltrans_plugin` is enough to make every fastreid module we use import.
    ok = _run("import gltrans_plugin, fastreid.data.build, fastreid.evaluation.testing, "
              "fastreid.engine, fastreid.modeling")
    assert ok.returncode == 0, ok.stderr


def test_missing_fastreid_gives_install_hint():
    code = ("import sys, builtins; real = builtins.__import__\n"
            "def imp(name, *a, **k):\n"
            "    if name == 'fastreid' or name.startswith('fastreid.'):\n"
            "        raise ModuleNotFoundError(\"No module named 'fastreid'\", name='fastreid')\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = imp\n"
            "import gltrans_plugin\n")
    r = _run(code)
    assert r.returncode != 0
    assert "pip install --no-deps fastreid==1.4.0" in r.stderr


def test_reid_evaluator_does_not_compile_or_exit(monkeypatch, tmp_path):
    from fastreid.evaluation import ReidEvaluator

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a) or
                        subprocess.CompletedProcess(a, 2))
    cfg = resnet_cfg(str(tmp_path), str(tmp_path))
    ev = ReidEvaluator(cfg, num_query=2)  # fastreid: `make` fails -> sys.exit(1)
    assert calls == []
    feats = torch.eye(12)  # 2 queries, 12 gallery items (fastreid needs >= 10 for Rank-10)
    ev.process({"targets": torch.tensor([0, 1]), "camids": torch.tensor([0, 0])}, feats[:2])
    ev.process({"targets": torch.arange(12), "camids": torch.ones(12, dtype=torch.long)}, feats)
    res = ev.evaluate()
    assert res["Rank-1"] == pytest.approx(100.0) and res["mAP"] == pytest.approx(100.0)


def test_jaccard_rerank_runs_on_cpu():
    from fastreid.utils.compute_dist import build_dist

    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(5, 8, generator=g), torch.randn(12, 8, generator=g)
    d = build_dist(q, gal, metric="jaccard", k1=4, k2=2)  # fastreid: features.cuda()
    assert d.shape == (5, 12) and np.isfinite(d).all() and (d >= -1e-6).all()


def _tiny_test_loader(cfg):
    from fastreid.data import build_reid_test_loader
    from fastreid.data.common import CommDataset
    from fastreid.data.transforms import build_transforms

    from gltrans_plugin.data import build_dataset

    data = build_dataset(cfg, "Market1501")
    test_set = CommDataset(data.query + data.gallery, build_transforms(cfg, is_train=False), False)
    return build_reid_test_loader(cfg, test_set=test_set, num_query=len(data.query))


def test_dataloader_runs_without_cuda(tiny_market, tmp_path):
    cfg = resnet_cfg(tiny_market, str(tmp_path))
    loader, num_query = _tiny_test_loader(cfg)  # fastreid: torch.cuda.Stream() in __init__
    batches = list(loader)
    assert sum(len(b["targets"]) for b in batches) == len(loader.dataset)
    assert batches[0]["images"].shape[1:] == (3, 64, 32)
    assert batches[0]["images"].device.type == "cpu"


@pytest.mark.parametrize("workers", [0, 1])
def test_test_loader_honours_num_workers(tiny_market, tmp_path, workers):
    cfg = resnet_cfg(tiny_market, str(tmp_path), **{"DATALOADER.NUM_WORKERS": workers})
    loader, _ = _tiny_test_loader(cfg)  # fastreid: always 4
    assert loader.num_workers == workers


def test_random_affine_with_new_torchvision(tmp_path):
    from fastreid.data.transforms import build_transforms

    cfg = resnet_cfg(str(tmp_path), str(tmp_path), **{"INPUT.AFFINE.ENABLED": True})
    t = build_transforms(cfg, is_train=True)  # fastreid: RandomAffine(resample=, fillcolor=)
    out = t(Image.new("RGB", (32, 64), (10, 200, 30)))
    assert out.shape == (3, 64, 32)


@pytest.mark.parametrize("mode,value,expected,dtype", [
    ("F", 1.5, 1.5, torch.float32), ("I", 70000, 70000, torch.int32), ("1", 1, 255, torch.float32),
    ("L", 7, 7, torch.float32), ("RGB", (1, 2, 3), (1, 2, 3), torch.float32)])
def test_to_tensor_numpy2(mode, value, expected, dtype):
    from fastreid.data.transforms import ToTensor

    pic = Image.new(mode, (5, 3), value)
    t = ToTensor()(pic)  # fastreid: np.array(..., copy=False) -> ValueError on numpy 2
    channels = len(expected) if isinstance(expected, tuple) else 1
    assert t.shape == (channels, 3, 5) and t.dtype == dtype
    ref = torch.tensor(expected, dtype=dtype).view(channels, 1, 1).expand_as(t)
    assert torch.equal(t, ref)
    arr = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    expected_rgb = torch.from_numpy(arr).permute(2, 0, 1).float()
    assert torch.equal(ToTensor()(Image.fromarray(arr)), expected_rgb)


def test_posterize_zero_bits():
    from fastreid.data.transforms import autoaugment

    img = Image.new("RGB", (8, 8), (200, 100, 50))
    black = autoaugment.NAME_TO_OP["Posterize"](img, 0)  # Pillow >= 11: ValueError
    assert np.asarray(black).max() == 0
    four = autoaugment.NAME_TO_OP["Posterize"](img, 4)
    assert np.asarray(four)[0, 0].tolist() == [192, 96, 48]


def test_build_optimizer_updates_weights(tmp_path):
    from fastreid.modeling import build_model
    from fastreid.solver import build_optimizer

    cfg = resnet_cfg(str(tmp_path), str(tmp_path), **{"MODEL.HEADS.NUM_CLASSES": 4,
                                                     "MODEL.DEVICE": "cpu"})
    torch.manual_seed(0)
    model = build_model(cfg)
    opt, _ = build_optimizer(cfg, model)  # fastreid default: ContiguousParams -> no update
    before = [p.detach().clone() for p in model.parameters()]
    batch = {"images": torch.rand(8, 3, 64, 32) * 255, "targets": torch.arange(4).repeat(2),
             "camids": torch.zeros(8, dtype=torch.long)}
    from fastreid.utils.events import EventStorage

    losses = []
    for _ in range(5):
        with EventStorage(0):
            loss = sum(model(dict(batch, images=batch["images"].clone())).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    moved = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert moved > 0.9 * len(before)
    assert losses[-1] < losses[0]


def test_cosine_schedule_with_warmup_covering_all_epochs(tmp_path):
    from fastreid.solver import build_lr_scheduler

    cfg = resnet_cfg(str(tmp_path), str(tmp_path), **{"SOLVER.MAX_EPOCH": 1,
                                                     "SOLVER.WARMUP_ITERS": 10})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_lr_scheduler(cfg, opt, iters_per_epoch=10)  # fastreid: T_max = 0
    for _ in range(3):
        opt.step()
        sched["lr_sched"].step()  # ZeroDivisionError without the fix
    assert np.isfinite(opt.param_groups[0]["lr"])


def test_amp_trainer_on_cpu_uses_bf16():
    from fastreid.engine.train_loop import AMPTrainer
    from fastreid.utils.events import EventStorage

    seen = []

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def forward(self, data):
            out = self.lin(data["x"])
            seen.append(out.dtype)
            return {"loss": out.float().pow(2).mean()}

    model = M()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.lin.weight.detach().clone()
    trainer = AMPTrainer(model, [{"x": torch.ones(3, 4)}] * 2, opt, None)
    with EventStorage(0):
        trainer.iter = 0
        trainer.run_step()  # fastreid: assert torch.cuda.is_available()
    assert seen == [torch.bfloat16]
    assert not torch.equal(before, model.lin.weight)
    trainer.amp_dtype = "fp16"  # SOLVER.AMP.DTYPE
    with EventStorage(0):
        trainer.iter = 1
        trainer.run_step()
    assert seen[-1] == torch.float16


def test_ddp_wrapper_accepts_cpu_model(tmp_path):
    import torch.distributed as dist
    import fastreid.engine.defaults as defaults

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:  # fastreid passes device_ids=[local_rank]: ValueError for a CPU module
        ddp = defaults.DistributedDataParallel(torch.nn.Linear(2, 2), device_ids=[0],
                                               broadcast_buffers=False)
        assert ddp(torch.ones(1, 2)).shape == (1, 2)
    finally:
        dist.destroy_process_group()


def _write_rank(rank_dir):
    import torch.distributed as dist
    from fastreid.utils import comm

    rank = comm.get_rank()
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)
    with open(os.path.join(rank_dir, f"rank{rank}"), "w") as f:
        f.write(f"{dist.get_backend()} {comm.get_world_size()} {t.item()}")


@pytest.mark.slow
def test_launch_two_processes_on_cpu(tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import gltrans_plugin, sys; sys.path[:0] = [{here!r}, "
            f"{os.path.dirname(here)!r}]\n"  # this file, and tests/ for its helpers
            "from test_patches import _write_rank\n"
            "from fastreid.engine import launch\n"
            f"launch(_write_rank, 2, dist_url='auto', args=({str(tmp_path)!r},))\n")
    r = _run(code)  # fastreid: assert torch.cuda.is_available(); backend NCCL
    assert r.returncode == 0, r.stderr[-2000:]
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}").read_text() == "gloo 2 3.0"


def test_checkpoint_loads_weights_only_with_numpy_values(tmp_path):
    from fastreid.utils.checkpoint import Checkpointer

    model = torch.nn.Linear(3, 2)
    ck = Checkpointer(model, str(tmp_path))
    ck.save("model_0000", epoch=0, metric=np.float64(12.5))  # what PeriodicCheckpointer saves
    other = torch.nn.Linear(3, 2)
    extra = Checkpointer(other, str(tmp_path)).load(str(tmp_path / "model_0000.pth"))
    assert extra["metric"] == 12.5
    assert torch.equal(other.weight, model.weight)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_refuses_code_execution(tmp_path, monkeypatch):
    from fastreid.utils.checkpoint import Checkpointer

    monkeypatch.delenv("GLTRANS_ALLOW_PICKLE", raising=False)
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": _Evil()}, path)
    with pytest.raises(pickle.UnpicklingError, match="GLTRANS_ALLOW_PICKLE=1"):
        Checkpointer(torch.nn.Linear(1, 1)).load(str(path))


def test_trainer_base_resumed_at_last_epoch_has_epoch():
    from fastreid.engine.hooks import HookBase
    from fastreid.engine.train_loop import TrainerBase

    seen = []

    class ReadEpoch(HookBase):
        def after_train(self):
            seen.append(self.trainer.epoch)  # fastreid's EvalHook / PeriodicCheckpointer do this

    t = TrainerBase()
    t.run_step = lambda: None
    t.register_hooks([ReadEpoch()])
    t.train(3, 3, 5)  # resumed from model_final: AttributeError: no attribute 'epoch'
    assert seen == [2] and t.iter == 15


def test_resume_from_final_checkpoint_does_not_crash(tiny_market, tmp_path):
    from gltrans_plugin.engine import Trainer

    cfg = resnet_cfg(tiny_market, str(tmp_path), **{"SOLVER.MAX_EPOCH": 1, "TEST.EVAL_PERIOD": 1})
    Trainer(cfg).train()
    assert (tmp_path / "model_final.pth").exists()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_epoch == 1
    res = trainer.train()  # fastreid: AttributeError: ... no attribute 'epoch'
    assert "mAP" in res
    assert gltrans_plugin.compat.APPLIED


def test_default_trainer_flip_test_normalises_once():
    import fastreid.engine.defaults as defaults
    from fastreid.evaluation.evaluator import DatasetEvaluator

    class InPlaceNorm(torch.nn.Module):  # like fastreid's Baseline.preprocess_image
        def forward(self, batch):
            x = batch["images"]
            x.sub_(100.0).div_(50.0)
            return x.mean(dim=(2, 3)) + x[:, :, :, 0].mean(-1)  # B x C, not flip invariant

    class Keep(DatasetEvaluator):
        def reset(self):
            self.out = []

        def process(self, inputs, outputs):
            self.out.append(outputs)

        def evaluate(self):
            return torch.cat(self.out)

    images = torch.rand(4, 3, 8, 4) * 255
    loader = [{"images": images.clone(), "targets": torch.zeros(4), "camids": torch.zeros(4)}]
    got = defaults.inference_on_dataset(InPlaceNorm(), loader, Keep(), flip_test=True)
    model = InPlaceNorm()
    ref = (model({"images": images.clone()}) + model({"images": images.flip(dims=[3])})) / 2
    assert torch.allclose(got, ref, atol=1e-5)

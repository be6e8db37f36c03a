"""Reliability: every bad input gets one clear early error, checkpoints are atomic and
weights-only, a NaN loss stops before the step, a killed run resumes with nothing lost.

Each row of the README's "bad inputs" table has a test here (search for the row's name)."""
import ast
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from helpers import NaNLossModel, gltrans_small_cfg, resnet_cfg

import gltrans_plugin  # noqa: F401
from gltrans_plugin import checkpoint, checks, errors
from gltrans_plugin.data import samplers
from gltrans_plugin.config import setup_cfg
from gltrans_plugin.engine import Trainer

PY = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(REPO, "projects", "train_net.py")


# the demo GLTrans config (tiny ViT, gltrans_small_cfg) on a Market-1501 layout
MARKET = {"DATASETS.NAMES": ("Market1501",), "DATASETS.TESTS": ("Market1501",),
          "SOLVER.IMS_PER_BATCH": 8, "DATALOADER.NUM_INSTANCE": 2, "MODEL.DEVICE": "cpu"}


@pytest.fixture
def market_copy(tiny_market, tmp_path):
    """A private copy of the tiny Market-1501 layout that a test may damage."""
    dst = tmp_path / "data"
    shutil.copytree(tiny_market, dst)
    return str(dst)


def _market_dir(root, split):
    return os.path.join(root, "Market-1501-v15.09.15", split)


# ============================================================================ bad inputs
def test_missing_dataset_root_names_expected_layout(tmp_path):
    cfg = resnet_cfg(str(tmp_path / "nowhere"), str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError) as e:
        Trainer(cfg)
    msg = str(e.value)
    assert "Dataset Market1501 not found under the dataset root" in msg
    assert "bounding_box_train/" in msg and "query/" in msg and "DATASETS.ROOT" in msg


def test_misnamed_dataset_root_lists_missing_folders(market_copy, tmp_path):
    os.rename(_market_dir(market_copy, "query"), _market_dir(market_copy, "queries"))
    with pytest.raises(FileNotFoundError, match=r"missing: query"):
        Trainer(resnet_cfg(market_copy, str(tmp_path / "out")))


def test_unknown_dataset_name(tmp_path):
    cfg = resnet_cfg(str(tmp_path), str(tmp_path / "out"), **{"DATASETS.NAMES": ("Market1051",)})
    with pytest.raises(ValueError, match="Unknown dataset 'Market1051'"):
        Trainer(cfg)


def _corrupt(path, how):
    if how == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 3])
    else:
        open(path, "wb").write(b"this is not an image")


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_corrupt_image_error_names_the_file(market_copy, tmp_path, how):
    cfg = resnet_cfg(market_copy, str(tmp_path / "out"))
    loader = Trainer.build_train_loader(cfg)
    ds = loader.dataset
    bad = ds.img_items[5][0]
    _corrupt(bad, how)
    with pytest.raises(errors.CorruptImageError) as e:
        ds[5]
    assert bad in str(e.value) and "DATALOADER.SKIP_CORRUPT True" in str(e.value)
    assert ds[4]["images"].shape == (3, 64, 32)  # the others still load


def test_corrupt_image_error_reaches_the_training_loop(market_copy, tmp_path):
    # Without the loader fix (compat.loader_errors_propagate) the error kills fast-reid's
    # prefetch thread and the training loop waits forever on its queue.
    cfg = resnet_cfg(market_copy, str(tmp_path / "out"))
    for name in os.listdir(_market_dir(market_copy, "bounding_box_train")):
        _corrupt(os.path.join(_market_dir(market_copy, "bounding_box_train"), name), "garbage")
    loader = Trainer.build_train_loader(cfg)
    result = {}

    def consume():
        try:
            next(iter(loader))
        except BaseException as e:  # noqa: BLE001
            result["error"] = e

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the training loop hangs on a loader error"
    assert isinstance(result.get("error"), errors.CorruptImageError)
    assert "bounding_box_train" in str(result["error"])


def test_corrupt_images_skipped_with_warning(market_copy, tmp_path, caplog):
    cfg = resnet_cfg(market_copy, str(tmp_path / "out"), **{"DATALOADER.SKIP_CORRUPT": True})
    ds = Trainer.build_train_loader(cfg).dataset
    bad = ds.img_items[5][0]
    _corrupt(bad, "truncated")
    with caplog.at_level("WARNING", logger="gltrans_plugin.data.common"):
        item = ds[5]
        ds[5]
    assert item["img_paths"] != bad
    assert item["targets"] == ds.pid_dict[ds.img_items[5][1]]  # same identity in its place
    warnings = [r for r in caplog.records if bad in r.getMessage()]
    assert len(warnings) == 1  # once per file
    # test set: a placeholder keeps query / gallery aligned
    test_loader, num_query = Trainer.build_test_loader(cfg, "Market1501")
    tds = test_loader.dataset
    _corrupt(tds.img_items[0][0], "garbage")
    placeholder = tds[0]
    assert placeholder["img_paths"] == tds.img_items[0][0]
    assert placeholder["images"].shape == (3, 64, 32)
    assert torch.allclose(placeholder["images"], torch.full_like(placeholder["images"], 128.0))


def test_transform_errors_are_not_reported_as_corrupt_images(tiny_market, tmp_path):
    cfg = resnet_cfg(tiny_market, str(tmp_path / "out"))
    ds = Trainer.build_train_loader(cfg).dataset

    def broken(img):
        raise ValueError("transform bug")

    ds.transform = broken
    with pytest.raises(ValueError, match="transform bug"):
        ds[0]


def test_missing_pretrained_file_fails_before_data_loading(tmp_path):
    cfg = gltrans_small_cfg(str(tmp_path / "no_data"), str(tmp_path / "out"), **MARKET, **{
        "MODEL.BACKBONE.PRETRAIN": True, "MODEL.BACKBONE.PRETRAIN_PATH": str(tmp_path / "vit.pth")})
    # the dataset root is missing too: the weight file is reported first
    with pytest.raises(FileNotFoundError, match="MODEL.BACKBONE.PRETRAIN_PATH"):
        Trainer(cfg)


@pytest.mark.parametrize("content, match", [
    ("text", "is not a (readable )?PyTorch checkpoint"),
    ("resnet", "no 'pos_embed' key"),
])
def test_wrong_pretrained_file_fails_before_training(tiny_market, tmp_path, content, match):
    path = tmp_path / "weights.pth"
    if content == "text":
        path.write_text("not weights")
    else:
        torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, path)
    cfg = gltrans_small_cfg(tiny_market, str(tmp_path / "out"), **MARKET, **{
        "MODEL.BACKBONE.PRETRAIN": True, "MODEL.BACKBONE.PRETRAIN_PATH": str(path)})
    with pytest.raises(ValueError, match=match):
        Trainer(cfg)


def test_unknown_config_key_in_file_names_key_file_and_suggestion(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text(f"_BASE_: {REPO}/configs/GLTrans/synthetic_demo.yml\n"
                    "MODEL:\n  BACKBONE:\n    DEPHT: tiny\n")
    with pytest.raises(KeyError) as e:
        setup_cfg(str(path))
    msg = str(e.value)
    assert msg.startswith("Unknown config key MODEL.BACKBONE.DEPHT in config file " + str(path))
    assert "Did you mean MODEL.BACKBONE.DEPTH?" in msg
    assert isinstance(e.value, ValueError)  # also a ValueError, like the other config errors


def test_unknown_config_key_on_command_line():
    with pytest.raises(errors.ConfigKeyError,
                       match=r"MODEL.GLTRANS.PTL.NUM_PART in the command-line options. "
                             r"Did you mean MODEL.GLTRANS.PTL.NUM_PARTS\?"):
        setup_cfg("", ["MODEL.GLTRANS.PTL.NUM_PART", "4"])


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="Config file not found: nope.yml"):
        setup_cfg("nope.yml")


@pytest.mark.parametrize("opts, match", [
    ({"MODEL.GLTRANS.PTL.NUM_PARTS": 5}, r"NUM_PARTS=5 is larger than the patch grid's 4 rows"),
    ({"MODEL.GLTRANS.GMA.NUM_HEADS": 7}, r"GMA.NUM_HEADS=7 must divide the embed dim 192"),
    ({"MODEL.BACKBONE.STRIDE_SIZE": (20, 20)}, r"stride \(20, 20\) is larger than the patch"),
    ({"MODEL.GLTRANS.AGG_LAYERS": tuple(range(13))}, r"lists 13 layers but the backbone has "
                                                     r"only 12 blocks"),
    ({"INPUT.SIZE_TEST": [8, 32]}, r"INPUT.SIZE_TEST \[8, 32\]: image size \(8, 32\) is smaller "
                                   r"than one patch"),
    ({"MODEL.BACKBONE.DEPTH": "huge"}, r"unknown MODEL.BACKBONE.DEPTH 'huge'"),
    ({"SOLVER.IMS_PER_BATCH": 10, "DATALOADER.NUM_INSTANCE": 4},
     r"not a multiple of DATALOADER.NUM_INSTANCE 4: fast-reid's identity sampler would never"),
])
def test_impossible_settings_fail_before_data_loading(tmp_path, opts, match):
    cfg = gltrans_small_cfg(str(tmp_path / "no_data"), str(tmp_path / "out"), **{**MARKET, **opts})
    with pytest.raises(ValueError, match=match):  # not the FileNotFoundError of the missing root
        Trainer(cfg)


def test_valid_configs_pass_validation():
    for name in ("synthetic_demo.yml", "market1501.yml", "msmt17.yml", "veri.yml"):
        cfg = setup_cfg(os.path.join(REPO, "configs", "GLTrans", name),
                        ["MODEL.BACKBONE.PRETRAIN", "False"])
        checks.validate_config(cfg)


def test_too_few_identities_for_a_batch(tiny_market, tmp_path):
    cfg = resnet_cfg(tiny_market, str(tmp_path / "out"), **{"SOLVER.IMS_PER_BATCH": 32})
    with pytest.raises(ValueError, match="has 8 identities but a batch needs 16"):
        Trainer(cfg)


def test_camera_ids_beyond_sie_table_fail_before_model_build(tiny_market, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(Trainer, "build_model", classmethod(lambda cls, cfg: built.append(1)))
    cfg = gltrans_small_cfg(tiny_market, str(tmp_path / "out"),
                            **MARKET, **{"MODEL.BACKBONE.NUM_CAMERAS": 2})
    with pytest.raises(ValueError, match=r"Camera id\(s\) \[2\] of the training set Market1501 "
                                         r"are outside the SIE table of "
                                         r"MODEL.BACKBONE.NUM_CAMERAS=2"):
        Trainer(cfg)
    assert built == []


def test_empty_query_fails_before_training(market_copy, tmp_path, monkeypatch):
    for name in os.listdir(_market_dir(market_copy, "query")):
        os.remove(os.path.join(_market_dir(market_copy, "query"), name))
    built = []
    monkeypatch.setattr(Trainer, "build_model", classmethod(lambda cls, cfg: built.append(1)))
    with pytest.raises(ValueError, match=r"Dataset Market1501: empty query \(0 images\)"):
        Trainer(resnet_cfg(market_copy, str(tmp_path / "out")))
    assert built == []


@pytest.mark.slow
def test_eval_only_without_weights(tmp_path):
    r = subprocess.run([PY, TRAIN_NET, "--eval-only", "MODEL.WEIGHTS", str(tmp_path / "x.pth"),
                        "OUTPUT_DIR", str(tmp_path), "DATASETS.ROOT", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "--eval-only needs MODEL.WEIGHTS" in r.stderr


# ============================================================================ NaN / inf loss
@pytest.mark.parametrize("amp", [False, True])
def test_nan_loss_stops_before_the_step_naming_iteration_and_branch(amp):
    from fastreid.engine.train_loop import AMPTrainer, SimpleTrainer
    from fastreid.utils.events import EventStorage

    model = NaNLossModel(bad_at=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = (AMPTrainer if amp else SimpleTrainer)(model, [{"x": torch.ones(3, 4)}] * 5, opt,
                                                     None)
    with EventStorage(0):
        for it in range(2):
            trainer.iter = it
            trainer.run_step()
        before = [p.detach().clone() for p in model.parameters()]
        trainer.iter = 2
        with pytest.raises(FloatingPointError) as e:
            trainer.run_step()
    msg = str(e.value)
    assert msg.startswith("Loss became NaN or infinite at iteration 2: loss_triplet_local=nan")
    assert "loss_ce_global=" in msg and "--resume" in msg
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))  # no step


# ============================================================================ atomic checkpoints
def test_atomic_open_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with checkpoint.atomic_open(str(path)) as f:
            f.write(b"partial new")
            raise RuntimeError("killed")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]
    with checkpoint.atomic_open(str(path)) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_checkpoint_save_interrupted_mid_write_keeps_previous(tmp_path, monkeypatch):
    from fastreid.utils.checkpoint import Checkpointer

    model = torch.nn.Linear(64, 64)
    ck = Checkpointer(model, str(tmp_path))
    ck.save("model_best", epoch=0)
    saved = model.weight.detach().clone()
    real_save = torch.save

    def dying_save(obj, f, *a, **k):  # writes part of the file, then "the machine dies"
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        ck.save("model_best", epoch=1)  # fastreid: model_best.pth truncated in place
    monkeypatch.setattr(torch, "save", real_save)
    assert ck.get_checkpoint_file() == str(tmp_path / "model_best.pth")
    other = torch.nn.Linear(64, 64)
    extra = Checkpointer(other).load(ck.get_checkpoint_file())
    assert extra["epoch"] == 0 and torch.equal(other.weight, saved)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_best.pth"]


_SAVER = """
import sys, torch
import gltrans_plugin.engine  # noqa: F401
from fastreid.utils.checkpoint import Checkpointer
model = torch.nn.Linear(1024, 2048)  # 8 MB per checkpoint
ck = Checkpointer(model, sys.argv[1])
i = int(sys.argv[2])
while True:
    with torch.no_grad():
        model.weight.fill_(i)
    ck.save("model_best", epoch=i)        # overwritten in place by fast-reid
    ck.save(f"model_{i % 3:04d}", epoch=i)
    i += 1
"""


@pytest.mark.slow
def test_sigkill_during_saves_leaves_loadable_checkpoints(tmp_path):
    from fastreid.utils.checkpoint import Checkpointer

    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    out = tmp_path / "ckpt"
    out.mkdir()
    rng = random.Random(0)
    for k in range(4):
        p = subprocess.Popen([PY, str(script), str(out), str(1000 * k)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 180  # start-up (torch + fastreid imports) on a loaded machine
        seen = None
        while True:  # until this process has completed a save (read only when the file changed)
            assert time.time() < deadline and p.poll() is None
            stamp = _stamp(out / "last_checkpoint")
            if stamp != seen and _tagged_epoch(out) >= 1000 * k:
                break
            seen = stamp
            time.sleep(0.05)
        start = time.time()
        while time.time() - start < 0.5 + rng.random():  # a random moment, saves in flight
            time.sleep(0.01)
        p.send_signal(signal.SIGKILL)
        p.wait()
        ck = Checkpointer(torch.nn.Linear(1024, 2048), str(out))
        assert ck.has_checkpoint()
        for path in [ck.get_checkpoint_file()] + ck.get_all_checkpoint_files():
            model = torch.nn.Linear(1024, 2048)
            extra = Checkpointer(model).load(path)  # a truncated file raises here
            assert torch.all(model.weight == extra["epoch"])
        assert _tagged_epoch(out) >= 1000 * k
        # stray temporary files (at most the one being written) are removed by the next save
        assert len([f for f in os.listdir(out) if ".tmp-" in f]) <= 1


def _stamp(path):
    try:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_ino
    except OSError:
        return None


def _tagged_epoch(out):
    try:
        from fastreid.utils.checkpoint import Checkpointer

        return Checkpointer(torch.nn.Linear(1024, 2048)).load(
            str(out / open(out / "last_checkpoint").read().strip()))["epoch"]
    except Exception:  # noqa: BLE001
        return -1


# ============================================================================ safe loading
def _torch_load_calls(path):
    """(source of each torch.load call, guarded-by-allow_pickle) in a python file."""
    text = open(path).read()
    tree = ast.parse(text)
    out = []

    def visit(node, guarded):
        if isinstance(node, ast.If) and "allow_pickle" in ast.get_source_segment(text, node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, guarded)
            return
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "load" and getattr(node.func.value, "id", "") == "torch":
            out.append((node, ast.get_source_segment(text, node), guarded))
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return out


def test_every_torch_load_of_ours_is_weights_only():
    calls = []
    for folder in ("gltrans_plugin", "projects", "tools", "bench"):
        for dirpath, _, files in os.walk(os.path.join(REPO, folder)):
            calls += [(name, *c) for name in files if name.endswith(".py")
                      for c in _torch_load_calls(os.path.join(dirpath, name))]
    # one call site: every reader (fast-reid's checkpointer, pretrained weights, the tools)
    # goes through checkpoint.load_file
    assert [c[0] for c in calls] == ["checkpoint.py"]
    for name, node, src, guarded in calls:
        kw = {k.arg: k.value for k in node.keywords}
        assert "weights_only" in kw, f"{name}: {src}"
        value = kw["weights_only"]
        if isinstance(value, ast.Constant) and value.value is True:
            continue
        # anything else must be the documented opt-in: `not allow_pickle` or under `if allow_pickle`
        assert guarded or "allow_pickle" in src, f"{name}: {src}"


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_pretrained_file_needs_the_env_opt_in(tmp_path, monkeypatch, caplog):
    from fastreid.modeling import build_model

    from gltrans_plugin.modeling.backbone import GLTransViT

    cfg = gltrans_small_cfg(str(tmp_path), str(tmp_path), **MARKET, **{
        "MODEL.BACKBONE.NUM_CAMERAS": 3, "MODEL.HEADS.NUM_CLASSES": 4})
    vit = GLTransViT(cfg)
    path = tmp_path / "legacy.pth"
    torch.save({"model": vit.state_dict(), "args": _Payload()}, path)
    cfg.MODEL.BACKBONE.PRETRAIN = True
    cfg.MODEL.BACKBONE.PRETRAIN_PATH = str(path)
    monkeypatch.delenv("GLTRANS_ALLOW_PICKLE", raising=False)
    with pytest.raises(ValueError, match="set GLTRANS_ALLOW_PICKLE=1"):
        build_model(cfg)
    monkeypatch.setenv("GLTRANS_ALLOW_PICKLE", "1")  # the one opt-in, as for training checkpoints
    model = build_model(cfg)
    assert torch.equal(model.backbone.pos_embed, vit.pos_embed)
    monkeypatch.delenv("GLTRANS_ALLOW_PICKLE")
    from gltrans_plugin.config import merge_config
    from gltrans_plugin.errors import ConfigKeyError

    with pytest.raises(ConfigKeyError, match="MODEL.BACKBONE.ALLOW_PICKLE"):  # the old key: gone
        merge_config(cfg, "", ["MODEL.BACKBONE.ALLOW_PICKLE", "True"])


def test_pickled_training_checkpoint_needs_env_opt_in(tmp_path, monkeypatch):
    import pickle

    from fastreid.utils.checkpoint import Checkpointer

    path = tmp_path / "model_final.pth"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict(), "x": _Payload()}, path)
    monkeypatch.delenv("GLTRANS_ALLOW_PICKLE", raising=False)
    with pytest.raises(pickle.UnpicklingError, match="GLTRANS_ALLOW_PICKLE=1"):
        Checkpointer(torch.nn.Linear(2, 2)).load(str(path))
    monkeypatch.setenv("GLTRANS_ALLOW_PICKLE", "1")
    assert "x" in Checkpointer(torch.nn.Linear(2, 2)).load(str(path))


# ============================================================================ resume
class _FakeIdentityBase:
    """Stands in for a fast-reid sampler: a global infinite stream from numpy's global RNG."""

    def __init__(self, n, rank=0, world=1, seed=0):
        self.n, self._rank, self._world_size, self._seed = n, rank, world, seed

    def _infinite_indices(self):
        np.random.seed(self._seed)
        while True:
            yield from np.random.permutation(self.n).tolist()


def test_epoch_sampler_is_deterministic_per_epoch_and_resumable():
    import itertools

    s = samplers.EpochSampler(_FakeIdentityBase(10), epoch_size=8, seed=3)
    it = iter(s)
    full = []
    for _ in range(4):
        full.append(list(itertools.islice(it, 8)))
        np.random.seed(123)  # the transforms use numpy's global RNG between batches
        np.random.rand(5)
    state = np.random.get_state()[1].copy()
    resumed = samplers.EpochSampler(_FakeIdentityBase(10), epoch_size=8, seed=3)
    resumed.start_epoch = 2
    assert list(itertools.islice(iter(resumed), 16)) == full[2] + full[3]
    assert np.array_equal(np.random.get_state()[1], state)  # global RNG left alone
    assert full[0] != full[1]
    # ranks: disjoint slices of the same global epoch
    r0 = samplers.EpochSampler(_FakeIdentityBase(10, 0, 2), epoch_size=8, seed=3)
    r1 = samplers.EpochSampler(_FakeIdentityBase(10, 1, 2), epoch_size=8, seed=3)
    a, b = list(itertools.islice(iter(r0), 4)), list(itertools.islice(iter(r1), 4))
    assert sorted(a + b) == sorted(full[0])


def _history(trainer, key):
    return [v for v, _ in trainer.storage.history(key).values()]


@pytest.mark.slow
def test_resume_from_epoch_checkpoint_matches_uninterrupted_run(tiny_market, tmp_path):
    opts = {"SOLVER.MAX_EPOCH": 3, "SOLVER.WARMUP_ITERS": 6, "SOLVER.WARMUP_FACTOR": 0.1,
            "TEST.EVAL_PERIOD": 3, "SOLVER.MOMENTUM": 0.9}
    full = Trainer(resnet_cfg(tiny_market, str(tmp_path / "full"), **opts))
    assert full.iters_per_epoch == 4  # warm-up (6 iterations) spans epochs 0 and 1
    full.resume_or_load(resume=True)
    full.train()
    # a second run that "died" after epoch 0: resume from its epoch-0 checkpoint
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(tmp_path / "full" / "model_0000.pth", part / "model_0000.pth")
    (part / "last_checkpoint").write_text("model_0000.pth")
    resumed = Trainer(resnet_cfg(tiny_market, str(part), **opts))
    resumed.resume_or_load(resume=True)
    assert resumed.start_epoch == 1
    resumed.train()
    assert resumed.iter == full.iter == 12
    np.testing.assert_allclose(_history(resumed, "lr"), _history(full, "lr")[4:], rtol=1e-12)
    np.testing.assert_allclose(_history(resumed, "total_loss"), _history(full, "total_loss")[4:],
                               rtol=1e-4)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=k)
    for k, g in enumerate(full.optimizer.param_groups):
        assert resumed.optimizer.param_groups[k]["lr"] == g["lr"]


def _rows(path):
    rows = {}
    for line in open(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written while we read
            continue
        if "total_loss" in row:
            rows[row["iteration"]] = row  # a resumed run re-logs: keep the last
    return rows


@pytest.mark.slow
def test_train_net_killed_with_sigkill_resumes_with_nothing_lost(tiny_market, tmp_path):
    opts = {"SOLVER.MAX_EPOCH": 4, "SOLVER.WARMUP_ITERS": 6, "TEST.EVAL_PERIOD": 4}
    runs = {}
    for name in ("full", "killed"):
        cfg = resnet_cfg(tiny_market, str(tmp_path / name), **opts)
        runs[name] = tmp_path / f"{name}.yml"
        runs[name].write_text(cfg.dump())
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    full = subprocess.run([PY, TRAIN_NET, "--config-file", str(runs["full"])], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert full.returncode == 0, full.stderr[-3000:]
    # the same run, killed at a random moment after its first checkpoint
    metrics = tmp_path / "killed" / "metrics.json"
    kill_at = random.Random(os.getpid()).randint(5, 13)  # iterations 4..15 are epochs 1..3
    p = subprocess.Popen([PY, TRAIN_NET, "--config-file", str(runs["killed"])], cwd=REPO,
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not metrics.exists() or max(_rows(metrics), default=-1) < kill_at:
        assert p.poll() is None and time.time() < deadline, "run ended before the kill"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = max(_rows(metrics))
    assert killed_at < 15 and not (tmp_path / "killed" / "model_final.pth").exists()
    resumed = subprocess.run([PY, TRAIN_NET, "--resume", "--config-file", str(runs["killed"])],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _rows(tmp_path / "full" / "metrics.json"), _rows(metrics)
    assert sorted(a) == sorted(b) == list(range(16))  # same iterations, none lost
    # metrics.json's losses are medians over a 20-iteration window that a restart resets, so the
    # per-iteration comparison is on the (unsmoothed) learning rate, then on the final weights.
    for it in range(16):
        assert b[it]["lr"] == pytest.approx(a[it]["lr"], rel=1e-9), it
    table = [[line for line in (r.stdout + r.stderr).splitlines() if "| Market1501" in line]
             for r in (full, resumed)]
    assert table[0] and [t.split("]:")[-1] for t in table[0]] == \
        [t.split("]:")[-1] for t in table[1]]  # same Rank-k / mAP
    from gltrans_plugin.checkpoint import load_file

    fa = load_file(str(tmp_path / "full" / "model_final.pth"))
    fb = load_file(str(tmp_path / "killed" / "model_final.pth"))
    assert fa["epoch"] == fb["epoch"] == 3
    for k, v in fa["model"].items():
        torch.testing.assert_close(fb["model"][k], v, rtol=1e-3, atol=1e-4, msg=k)

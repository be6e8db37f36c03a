"""Every fault a one-line answer: the top-level handler (``gltrans_plugin.errors``), checkpoint
files checked before use (``gltrans_plugin.checkpoint``), images of any mode read as RGB,
dataset readers that name the bad file, the synthetic set that never deletes a user's file,
ENOSPC during a save.  Each case of the README's bad-input table that is not tested in
``engine/test_failures.py`` is tested here (search for the row's message)."""
import errno
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import resnet_cfg, write_tiny_market

import gltrans_plugin  # noqa: F401
from gltrans_plugin import checkpoint, errors
from gltrans_plugin.checkpoint import CheckpointError, PickledCheckpointError
from gltrans_plugin.data.checks import DatasetError
from gltrans_plugin.engine import Trainer

PY = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(REPO, "projects", "train_net.py")
DEMO = os.path.join(REPO, "configs", "GLTrans", "synthetic_demo.yml")


@pytest.fixture
def market_copy(tiny_market, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(tiny_market, dst)
    return str(dst)


def _split(root, split):
    return os.path.join(root, "Market-1501-v15.09.15", split)


def _no_model_build(monkeypatch):
    built = []
    monkeypatch.setattr(Trainer, "build_model", classmethod(lambda cls, cfg: built.append(1)))
    return built


# ============================================================================ the handler
def test_format_error_one_line_per_kind(tmp_path):
    line, code = errors.format_error(CheckpointError("what", "x.pth, MODEL.WEIGHTS", "fix it"))
    assert (line, code) == ("error: what (x.pth, MODEL.WEIGHTS): fix it", 2)
    line, code = errors.format_error(FileNotFoundError(errno.ENOENT, "No such file", "/a/b.yml"))
    assert line.startswith("error: file or folder not found (/a/b.yml)") and code == 2
    multi = FileNotFoundError("Dataset X not found. Expected one of:\n  a/ (missing)\nSet it.")
    line, _ = errors.format_error(multi)
    assert "\n" not in line and line == "error: Dataset X not found. Expected one of: a/ " \
                                        "(missing); Set it."
    line, code = errors.format_error(RuntimeError("boom"))
    assert code == 1 and line.startswith("error: internal error, RuntimeError: boom")
    from torch.multiprocessing import ProcessExitedException

    exited = ProcessExitedException("process 1 terminated with exit code 2", error_index=1,
                                    error_pid=123, exit_code=2)
    assert errors.format_error(exited) == (None, 2)  # the worker printed its own line
    # ENOSPC anywhere in the chain (torch reports it as an "enforce fail")
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "m.pth"))
        except OSError as e:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") \
                from e
    except RuntimeError as e:
        line, code = errors.format_error(e)
    assert code == 2 and line.startswith(f"error: no space left on the device of {tmp_path}")
    assert "no checkpoint was saved in" in line and "--overwrite" in line  # an empty folder


def _run(args, env=None, timeout=300):
    full = dict(os.environ, OMP_NUM_THREADS="1")
    full.pop(errors.DEBUG_ENV, None)
    full.update(env or {})
    return subprocess.run([PY] + args, cwd=REPO, capture_output=True, text=True, env=full,
                          timeout=timeout)


def test_train_net_config_error_is_one_line_with_traceback_in_log(tmp_path):
    out = tmp_path / "out"
    r = _run([TRAIN_NET, "--config-file", DEMO, "OUTPUT_DIR", str(out),
              "MODEL.BACKBONE.DEPHT", "tiny"])
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [
        "error: Unknown config key MODEL.BACKBONE.DEPHT in the command-line options. Did you "
        "mean MODEL.BACKBONE.DEPTH? Keys are defined by fast-reid (fastreid/config/defaults.py) "
        "and gltrans_plugin/config.py (add_gltrans_config)."]
    log = (out / "log.txt").read_text()
    assert "Traceback (most recent call last)" in log and "ConfigKeyError" in log
    # --debug (anywhere on the command line) prints the traceback too
    r = _run([TRAIN_NET, "--config-file", DEMO, "OUTPUT_DIR", str(out),
              "MODEL.BACKBONE.DEPHT", "tiny", "--debug"])
    assert r.returncode == 2 and "Traceback (most recent call last)" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: Unknown config key")


def test_tools_end_with_one_line(tmp_path):
    r = _run([os.path.join(REPO, "tools", "model_report.py"), "--config-file",
              str(tmp_path / "nope.yml")])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: Config file not found: {tmp_path}/nope.yml"]


def test_train_net_bad_weights_at_training_start_exits_2_not_sigabrt(tmp_path):
    # the loader's prefetch thread is running when the weights are loaded: it is stopped before
    # the error leaves the trainer (it used to end in "terminate called ...", rc 134)
    weights = tmp_path / "w.pth"
    torch.save({"model": {}, "x": _Payload()}, weights)
    out = tmp_path / "out"
    r = _run([TRAIN_NET, "--config-file", DEMO, "OUTPUT_DIR", str(out), "DATASETS.ROOT",
              str(tmp_path / "data"), "DATASETS.SYNTHETIC.NUM_TRAIN_IDS", "8",
              "DATASETS.SYNTHETIC.NUM_TEST_IDS", "8", "DATASETS.SYNTHETIC.NUM_CAMERAS", "2",
              "DATASETS.SYNTHETIC.IMAGES_PER_ID_CAM", "2", "SOLVER.IMS_PER_BATCH", "8",
              "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_BEFORE_TRAIN", "False",
              "SOLVER.MAX_EPOCH", "1", "MODEL.WEIGHTS", str(weights)])
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the checkpoint holds pickled Python objects besides tensors")
    assert f"({weights}, MODEL.WEIGHTS)" in last and "GLTRANS_ALLOW_PICKLE=1" in last
    assert "Traceback" not in r.stderr and "terminate called" not in r.stderr
    assert "PickledCheckpointError" in (out / "log.txt").read_text()


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


# ============================================================================ checkpoints
def test_text_file_as_weights_is_not_a_checkpoint(tmp_path):
    from fastreid.utils.checkpoint import Checkpointer

    from gltrans_plugin.checkpoint import load_file

    path = tmp_path / "weights.pth"
    path.write_text("hello, this is a text file\n")  # 'h': torch's KeyError: 101
    with pytest.raises(CheckpointError) as e:
        Checkpointer(torch.nn.Linear(2, 2)).load(str(path))
    msg = str(e.value)
    assert msg.startswith("the file is not a PyTorch checkpoint (neither the zip archive "
                          "torch.save writes nor a pickle; it starts with text 'hello, this is a "
                          "tex')")
    assert f"({path}, MODEL.WEIGHTS)" in msg and "PICKLE" not in msg and "run code" not in msg
    with pytest.raises(CheckpointError) as e:
        load_file(str(path), key="MODEL.BACKBONE.PRETRAIN_PATH", safetensors=True)
    assert f"({path}, MODEL.BACKBONE.PRETRAIN_PATH)" in str(e.value)
    assert "PICKLE" not in str(e.value)


def test_truncated_checkpoint_names_file_and_key(tmp_path):
    from fastreid.utils.checkpoint import Checkpointer

    path = tmp_path / "model_0003.pth"
    torch.save({"model": torch.nn.Linear(64, 64).state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    from gltrans_plugin.engine import checked_loads
    from gltrans_plugin.engine.trainer import RESUME_KEY

    ck = Checkpointer(torch.nn.Linear(64, 64))
    with pytest.raises(CheckpointError) as e, checked_loads(ck, lambda sd: None, key=RESUME_KEY):
        ck.load(str(path))
    msg = str(e.value)
    assert msg.startswith("the checkpoint is truncated or damaged (a zip archive without its "
                          "end, ")
    assert f"({path}, --resume (OUTPUT_DIR/last_checkpoint))" in msg and "copy it again" in msg


def test_pickled_checkpoint_refusal_keeps_its_types(tmp_path):
    import pickle

    from gltrans_plugin.checkpoint import load_file

    path = tmp_path / "p.pth"
    torch.save({"x": _Payload()}, path)
    with pytest.raises(PickledCheckpointError) as e:
        load_file(str(path))
    assert isinstance(e.value, pickle.UnpicklingError) and isinstance(e.value, ValueError)


def _vit_cfg(tmp_path):
    from helpers import gltrans_small_cfg

    cfg = gltrans_small_cfg(str(tmp_path), str(tmp_path))
    cfg.defrost()
    cfg.MODEL.BACKBONE.NUM_CAMERAS = 3
    cfg.MODEL.HEADS.NUM_CLASSES = 4
    return cfg


def test_pretrained_weight_errors_name_the_file(tmp_path):
    from gltrans_plugin.modeling.backbone import GLTransViT
    from gltrans_plugin.modeling.weights import load_pretrained

    vit = GLTransViT(_vit_cfg(tmp_path))
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, path)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(vit, str(path))
    assert str(e.value).startswith(f"pretrained weights cannot be used ({path}, "
                                   f"MODEL.BACKBONE.PRETRAIN_PATH): the checkpoint has no "
                                   f"'pos_embed' key")
    sd = {k: v.clone() for k, v in vit.state_dict().items()}
    sd["blocks.0.mlp.fc1.weight"] = torch.zeros(7, 7)
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"'blocks.0.mlp.fc1.weight' has shape \(7, 7\)"):
        load_pretrained(vit, str(path))


def test_eval_with_checkpoint_of_another_architecture_fails(tmp_path):
    from fastreid.modeling import build_model

    from gltrans_plugin.loading import load_eval_weights, read_weights

    cfg = resnet_cfg(str(tmp_path), str(tmp_path), **{"MODEL.HEADS.NUM_CLASSES": 4})
    model = build_model(cfg)
    path = tmp_path / "other.pth"
    part = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.conv1")}
    torch.save({"model": part}, path)
    cfg.MODEL.WEIGHTS = str(path)
    with pytest.raises(CheckpointError) as e:
        load_eval_weights(cfg, model, read_weights(str(path)))
    msg = str(e.value)
    assert msg.startswith("the checkpoint lacks ")
    assert "it is from another architecture, and evaluating would use random weights" in msg
    assert f"({path}, MODEL.WEIGHTS)" in msg and "TEST.ALLOW_MISSING_KEYS True" in msg
    cfg.TEST.ALLOW_MISSING_KEYS = True  # explicit opt-in
    load_eval_weights(cfg, model, read_weights(str(path)))


def test_resume_after_the_number_of_identities_changed(tmp_path):
    four = write_tiny_market(str(tmp_path / "four"), train_ids=4)
    eight = write_tiny_market(str(tmp_path / "eight"), train_ids=8)
    out = str(tmp_path / "out")
    opts = {"SOLVER.OPT": "Adam", "SOLVER.IMS_PER_BATCH": 4}
    first = Trainer(resnet_cfg(four, out, **opts))
    first.checkpointer.save("model_0000", epoch=0)
    first.stop_train_stream()
    second = Trainer(resnet_cfg(eight, out, **opts))
    with pytest.raises(CheckpointError) as e:
        second.resume_or_load(resume=True)
    msg = str(e.value)
    path = os.path.join(out, "model_0000.pth")
    assert msg.startswith("the number of training identities changed: the checkpoint's "
                          "classifier heads.weight has 4 identities, the training data now has 8")
    assert f"MODEL.WEIGHTS {path} without --resume" in msg
    assert not second._trainer.data_loader.iter.is_alive()  # loader thread stopped: no SIGABRT


def test_optimizer_state_that_does_not_fit(tmp_path):
    from gltrans_plugin.checkpoint import check_optimizer_fits

    p = torch.nn.Parameter(torch.zeros(3, 2))
    opt = torch.optim.Adam([p])
    opt.state[p] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros(4, 2)}
    with pytest.raises(CheckpointError, match=r"exp_avg of shape \(4, 2\) for a parameter of "
                                              r"shape \(3, 2\)"):
        check_optimizer_fits(opt, "m.pth")


def test_nan_loss_advice_works_with_the_saved_schedule():
    from fastreid.engine.train_loop import SimpleTrainer
    from fastreid.utils.events import EventStorage

    from helpers import NaNLossModel

    model = NaNLossModel(bad_at=0)
    trainer = SimpleTrainer(model, [{"x": torch.ones(3, 4)}] * 2,
                            torch.optim.SGD(model.parameters(), lr=0.1), None)
    with EventStorage(0), pytest.raises(FloatingPointError) as e:
        trainer.iter = 0
        trainer.run_step()
    msg = str(e.value)
    assert "--resume would restore the checkpoint's learning-rate schedule" in msg
    assert "MODEL.WEIGHTS <OUTPUT_DIR>/<the file last_checkpoint names> without --resume" in msg


# ============================================================================ disk full
class _FullDisk:
    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_disk_full_during_a_save_names_folder_and_keeps_previous(tmp_path, monkeypatch):
    from fastreid.utils.checkpoint import Checkpointer

    model = torch.nn.Linear(8, 8)
    ck = Checkpointer(model, str(tmp_path))
    ck.save("model_0000", epoch=0)
    before = (tmp_path / "model_0000.pth").read_bytes()
    monkeypatch.setattr(checkpoint, "open", lambda p, m: _FullDisk(open(p, m)), raising=False)
    with pytest.raises(errors.DiskFullError) as e:
        ck.save("model_0000", epoch=1)
    assert str(e.value) == (
        f"no space left on the device of {tmp_path} while writing model_0000.pth "
        f"({tmp_path}/model_0000.pth): free disk space there, then run the same command again "
        f"with --resume (it continues from model_0000.pth, which is intact); a run moved to "
        f"another disk needs that folder copied there first")
    assert e.value.errno == errno.ENOSPC
    assert (tmp_path / "model_0000.pth").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000.pth"]


# ============================================================================ images
def _save_mode(path, mode):
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (64, 32, 3)).astype(np.uint8))
    if mode == "I;16":
        img = Image.fromarray((rng.integers(0, 65535, (64, 32))).astype(np.uint16))
    elif mode == "P":
        img = rgb.convert("P")
        img.info["transparency"] = 0
    else:
        img = rgb.convert(mode)
    img.save(path, format="JPEG" if mode == "CMYK" else "PNG")  # any name: PIL reads the bytes


@pytest.mark.parametrize("mode", ["RGBA", "CMYK", "P", "LA", "L", "I;16"])
def test_images_in_any_mode_are_read_as_rgb(market_copy, tmp_path, mode):
    cfg = resnet_cfg(market_copy, str(tmp_path / "out"), **{"INPUT.REA.ENABLED": True,
                                                             "INPUT.REA.PROB": 1.0})
    ds = Trainer.build_train_loader(cfg).dataset
    _save_mode(ds.img_items[3][0], mode)
    item = ds[3]  # RandomErasing used to fail on 4 channels
    assert item["images"].shape == (3, 64, 32) and item["img_paths"] == ds.img_items[3][0]
    test_loader, _ = Trainer.build_test_loader(cfg, "Market1501")
    _save_mode(test_loader.dataset.img_items[0][0], mode)
    assert test_loader.dataset[0]["images"].shape == (3, 64, 32)


def test_to_rgb_scales_16_bit_and_drops_alpha():
    from PIL import Image

    from gltrans_plugin.data.images import to_rgb

    img16 = Image.fromarray(np.full((2, 2), 65535, np.uint16))
    assert np.asarray(to_rgb(img16)).tolist() == [[[255] * 3] * 2] * 2
    rgba = Image.new("RGBA", (2, 2), (200, 100, 50, 255))
    assert to_rgb(rgba).mode == "RGB" and to_rgb(rgba).getpixel((0, 0)) == (200, 100, 50)


# ============================================================================ dataset readers
@pytest.mark.parametrize("name, match", [
    ("foo.jpg", r"image name does not follow the Market1501 naming \(Market1501 names are "
                r"<pid>_c<camera>\.\.\., e\.g\. 0002_c1s1_000451_03\.jpg, with camera 1\.\.6"),
    ("0001_c7s1_000999_00.jpg", r"camera 7 is outside Market1501's range 1\.\.6"),
])
def test_reader_names_the_bad_file(market_copy, tmp_path, name, match):
    train = _split(market_copy, "bounding_box_train")
    shutil.copy(os.path.join(train, sorted(os.listdir(train))[0]), os.path.join(train, name))
    with pytest.raises(DatasetError, match=match) as e:
        Trainer(resnet_cfg(market_copy, str(tmp_path / "out")))
    assert f"({os.path.join(train, name)})" in str(e.value)
    assert "move the file out of the folder" in str(e.value)


def test_empty_training_folder_is_named(market_copy, tmp_path):
    train = _split(market_copy, "bounding_box_train")
    for f in os.listdir(train):
        os.remove(os.path.join(train, f))
    with pytest.raises(DatasetError) as e:
        Trainer(resnet_cfg(market_copy, str(tmp_path / "out")))
    assert str(e.value) == (
        f"Dataset Market1501: the training set is empty (no image the reader accepts) ({train}):"
        f" put the training images there (*.jpg named like 0002_c1s1_000451_03.jpg), or set "
        f"DATASETS.ROOT to the folder that holds them")
    assert "IMS_PER_BATCH" not in str(e.value)


def test_unknown_dataset_lists_every_registered_name(tmp_path):
    from fastreid.data.datasets import DATASET_REGISTRY

    cfg = resnet_cfg(str(tmp_path), str(tmp_path / "out"), **{"DATASETS.NAMES": ("market1051",)})
    with pytest.raises(DatasetError) as e:
        Trainer(cfg)
    msg = str(e.value)
    assert msg.startswith("Unknown dataset 'market1051': not registered in fast-reid's "
                          "DATASET_REGISTRY; did you mean 'Market1501'? "
                          "(DATASETS.NAMES / DATASETS.TESTS): use one of the ")
    assert all(n in msg for n in DATASET_REGISTRY._obj_map) and len(DATASET_REGISTRY._obj_map) > 30


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_corrupt_query_image_found_when_the_test_set_is_read(market_copy, tmp_path, monkeypatch,
                                                              how):
    query = _split(market_copy, "query")
    bad = os.path.join(query, sorted(os.listdir(query))[0])
    data = open(bad, "rb").read()
    open(bad, "wb").write(b"not an image" if how == "garbage" else data[: len(data) // 2])
    built = _no_model_build(monkeypatch)
    with pytest.raises(errors.CorruptImageError) as e:
        Trainer(resnet_cfg(market_copy, str(tmp_path / "out")))
    assert str(e.value).startswith(f"Cannot read query image {bad} of dataset Market1501")
    assert built == []  # before the model, not after an epoch of training


# ============================================================================ synthetic set
def test_synthetic_set_never_deletes_a_users_file(tmp_path, caplog):
    from gltrans_plugin.data.synthetic import generate_synthetic_reid

    small = dict(num_train_ids=2, num_test_ids=2, num_cameras=2, images_per_id_cam=1,
                 height=32, width=16)
    out = tmp_path / "synthetic_reid"
    generate_synthetic_reid(str(out), **small)
    mine = out / "bounding_box_train" / "my_notes.txt"
    mine.write_text("precious")
    with caplog.at_level("WARNING"):
        generate_synthetic_reid(str(out), **small)  # same parameters: kept, named
    assert mine.read_text() == "precious"
    assert any("1 files the generator did not write (bounding_box_train/my_notes.txt)" in
               r.getMessage() for r in caplog.records)
    with pytest.raises(FileExistsError) as e:  # other parameters would replace the folder
        generate_synthetic_reid(str(out), **{**small, "num_train_ids": 3})
    assert "holds 1 files the synthetic-set generator did not write " \
           "(bounding_box_train/my_notes.txt)" in str(e.value)
    assert mine.read_text() == "precious"


def test_odd_command_line_options_are_a_config_error():
    from gltrans_plugin.config import setup_cfg

    with pytest.raises(ValueError) as e:
        setup_cfg("", ["SOLVER.BASE_LR"])
    assert errors.format_error(e.value) == (
        "error: Command-line options ['SOLVER.BASE_LR']: Override list has odd length: "
        "['SOLVER.BASE_LR']; it must be a list of pairs. Give them as KEY VALUE pairs after the "
        "flags.", 2)

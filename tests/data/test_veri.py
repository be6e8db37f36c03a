"""VeRi-776 with viewpoint labels (dataset VeRiViews, configs/GLTrans/veri.yml): view ids read
from keypoint files in the released format, carried by the loaders to the model's camera x view
SIE table, the unseen-view policy (torch, extractor, ONNX), training + evaluation, and each
error naming its file / line."""
import copy
import os
import re

import numpy as np
import pytest
import torch

import gltrans_plugin  # noqa: F401  (registers the datasets)
from gltrans_plugin.config import setup_cfg
from gltrans_plugin.data import build_dataset, clear_dataset_cache, fill_num_views
from gltrans_plugin.data.checks import DatasetError
from gltrans_plugin.data.veri import VeRiViews
from gltrans_plugin.engine import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VERI_YML = os.path.join(REPO, "configs", "GLTrans", "veri.yml")
TRAIN_IDS, TEST_IDS, CAMS, PER_CAM = (1, 2, 3, 4), (10, 11, 12), (1, 2), 2
NUM_VIEWS_IN_DATA = 6  # the fixture's view ids are 0..5


@pytest.fixture(autouse=True)
def _fresh_listing():
    clear_dataset_cache()
    yield
    clear_dataset_cache()


def keypoint_line(split_dir, name, view, rng):
    """A line of the released keypoint files: path, 20 key points (x y, -1 = not visible),
    orientation."""
    coords = [int(c) if c >= 0 else -1 for c in rng.integers(-40, 300, 40)]
    return " ".join([f"VeRi/{split_dir}/{name}"] + [str(c) for c in coords] + [str(view)])


def make_veri(tmp_path):
    """A tiny VeRi-776 release under ``<tmp_path>/data/veri`` (image_train/, image_query/,
    image_test/, name_*.txt) with keypoint_train.txt / keypoint_test.txt; returns (dataset root,
    {image name: view id})."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = str(tmp_path / "data")
    veri = os.path.join(root, "veri")
    views, lines, names = {}, {"train": [], "test": []}, {"train": [], "query": [], "test": []}
    for split, ids in (("train", TRAIN_IDS), ("test", TEST_IDS)):
        folder = os.path.join(veri, f"image_{split}")
        os.makedirs(folder, exist_ok=True)
        for vid in ids:
            colour = rng.integers(0, 255, 3)
            for cam in CAMS:
                for k in range(PER_CAM):
                    name = f"{vid:04d}_c{cam:03d}_{1000 * vid + 10 * cam + k:08d}_{k}.jpg"
                    img = np.clip(colour + rng.normal(0, 30, (32, 32, 3)), 0, 255)
                    Image.fromarray(img.astype(np.uint8)).save(os.path.join(folder, name))
                    views[name] = len(views) % NUM_VIEWS_IN_DATA
                    names[split].append(name)
                    lines[split].append(keypoint_line(f"image_{split}", name, views[name], rng))
    # the query images are test images (camera 1, first frame), listed under image_test
    os.makedirs(os.path.join(veri, "image_query"))
    for vid in TEST_IDS:
        name = f"{vid:04d}_c001_{1000 * vid + 10:08d}_0.jpg"
        os.link(os.path.join(veri, "image_test", name), os.path.join(veri, "image_query", name))
        names["query"].append(name)
    lines["test"].append(lines["test"][0])  # the released files repeat some lines
    for split in ("train", "test"):
        with open(os.path.join(veri, f"keypoint_{split}.txt"), "w") as f:
            f.write("\n".join(lines[split]))  # no newline at the end, as the released files
    for split, split_names in names.items():
        with open(os.path.join(veri, f"name_{split}.txt"), "w") as f:
            f.write("\n".join(sorted(split_names)) + "\n")
    return root, views


def veri_cfg(root, out, **overrides):
    """configs/GLTrans/veri.yml with a tiny ViT (2 blocks built), 64x64 images and one
    iteration an epoch."""
    opts = {
        "DATASETS.ROOT": root, "OUTPUT_DIR": out, "MODEL.DEVICE": "cpu",
        "MODEL.BACKBONE.DEPTH": "tiny", "MODEL.BACKBONE.FEAT_DIM": 192,
        "MODEL.BACKBONE.PRETRAIN": False, "MODEL.BACKBONE.STRIDE_SIZE": (16, 16),
        "MODEL.BACKBONE.DROP_PATH_RATIO": 0.0, "MODEL.GLTRANS.AGG_LAYERS": (0, 1),
        "INPUT.SIZE_TRAIN": [64, 64],
        "INPUT.SIZE_TEST": [64, 64], "INPUT.PADDING.SIZE": 2, "DATALOADER.NUM_WORKERS": 0,
        "SOLVER.IMS_PER_BATCH": 16, "SOLVER.MAX_EPOCH": 1, "SOLVER.AMP.ENABLED": False,
        "SOLVER.WARMUP_EPOCHS": 0, "SOLVER.LOG_PERIOD": 1, "SOLVER.CHECKPOINT_PERIOD": 1,
        "TEST.EVAL_PERIOD": 1, "TEST.IMS_PER_BATCH": 8, "TEST.EVAL_BEFORE_TRAIN": False,
        "CUDNN_BENCHMARK": False, "SEED": 0,
    }
    opts.update(overrides)
    flat = []
    for k, v in opts.items():
        flat += [k, v if isinstance(v, str) else repr(v)]
    return setup_cfg(VERI_YML, flat)


def build(root, **kwargs):
    return VeRiViews(root=root, **{"views": True, **kwargs})


def error_of(root, **kwargs):
    with pytest.raises(DatasetError) as info:
        build(root, **kwargs)
    assert "\n" not in str(info.value)  # one line
    return str(info.value)


# ------------------------------------------------------------------ reading
def test_view_ids_read_for_every_split(tmp_path):
    root, views = make_veri(tmp_path)
    cfg = veri_cfg(root, str(tmp_path / "out"))
    data = build_dataset(cfg, "VeRiViews")  # reader arguments from the config keys
    assert len(data.train) == len(TRAIN_IDS) * len(CAMS) * PER_CAM
    assert (len(data.query), len(data.gallery)) == (3, len(TEST_IDS) * len(CAMS) * PER_CAM)
    for split in (data.train, data.query, data.gallery):
        for path, pid, cam, view in split:
            assert view == views[os.path.basename(path)]
    path, pid, cam, _ = data.train[0]  # fast-reid's VeRi labels: prefixed, cameras 0-based
    assert (os.path.basename(path), pid, cam) == ("0001_c001_00001010_0.jpg", "veri_1", "veri_0")
    assert data.query[0][1:3] == (10, 0) and data.gallery[-1][1:3] == (12, 1)


def test_cameras_only_without_the_keypoint_files(tmp_path):
    """MODEL.BACKBONE.SIE_VIEW False reads no keypoint file: fast-reid's triples, cameras only."""
    root, _ = make_veri(tmp_path)
    for split in ("train", "test"):
        os.remove(os.path.join(root, "veri", f"keypoint_{split}.txt"))
    cfg = veri_cfg(root, str(tmp_path / "out"), **{"MODEL.BACKBONE.SIE_VIEW": False})
    data = build_dataset(cfg, "VeRiViews")
    assert {len(item) for item in data.train + data.query + data.gallery} == {3}
    item = Trainer.build_train_loader(cfg).dataset[0]
    assert "viewids" not in item and item["camids"] == 0
    assert fill_num_views(cfg) is cfg
    from fastreid.modeling import build_model

    cfg.MODEL.HEADS.NUM_CLASSES = len(TRAIN_IDS)
    assert build_model(cfg).backbone.sie_embed.shape == (20, 192)  # camera rows only


def test_unlabeled_images_dropped_or_unseen(tmp_path):
    root, views = make_veri(tmp_path)
    kp = os.path.join(root, "veri", "keypoint_train.txt")
    with open(kp) as f:
        lines = f.read().split("\n")
    with open(kp, "w") as f:  # the first training image loses its label
        f.write("\n".join(lines[1:]))
    first = sorted(n for n in views if n.startswith("0001_"))[0]
    dropped = build(root, unlabeled="drop")
    assert first not in {os.path.basename(p) for p, *_ in dropped.train}
    assert len(dropped.train) == len(TRAIN_IDS) * len(CAMS) * PER_CAM - 1
    unseen = build(root, unlabeled="unseen")
    assert {os.path.basename(p): v for p, _, _, v in unseen.train}[first] == -1


def test_fill_num_views(tmp_path):
    root, _ = make_veri(tmp_path)
    cfg = veri_cfg(root, str(tmp_path / "out"), **{"MODEL.BACKBONE.NUM_VIEWS": 0})
    assert fill_num_views(cfg).MODEL.BACKBONE.NUM_VIEWS == NUM_VIEWS_IN_DATA
    small = veri_cfg(root, str(tmp_path / "out"), **{"MODEL.BACKBONE.NUM_VIEWS": 4})
    with pytest.raises(DatasetError, match=r"view id\(s\) \[4, 5\] of the training set VeRiViews "
                                           r"are outside the SIE table of "
                                           r"MODEL.BACKBONE.NUM_VIEWS=4"):
        fill_num_views(small)
    plain = veri_cfg(root, str(tmp_path / "out"), **{"DATASETS.NAMES": ("VeRi",)})
    with pytest.raises(DatasetError, match=r"MODEL.BACKBONE.SIE_VIEW is on but no training "
                                           r"dataset \(VeRi\) gives view ids \(DATASETS.NAMES\)"):
        fill_num_views(plain)  # fast-reid's reader: no view ids, even with NUM_VIEWS 8


# ------------------------------------------------------------------ errors
def _rewrite(path, edit):
    with open(path) as f:
        lines = f.read().split("\n")
    lines = edit(lines)
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return len(lines)


def test_missing_keypoint_file_is_named(tmp_path):
    import shutil

    root, _ = make_veri(tmp_path)
    moved = str(tmp_path / "keypoints")
    shutil.copytree(os.path.join(root, "veri"), moved,
                    ignore=lambda d, names: [n for n in names if not n.startswith("keypoint_")])
    path = os.path.join(root, "veri", "keypoint_test.txt")
    os.remove(path)
    msg = error_of(root)
    assert f"keypoint file keypoint_test.txt not found ({path})" in msg
    assert "DATASETS.VERI.VIEW_DIR" in msg and "MODEL.BACKBONE.SIE_VIEW False" in msg
    assert len(build(root, view_dir=moved).query) == 3  # the key points at the files


@pytest.mark.parametrize("edit,match", [
    (lambda ls: ls[:2] + [ls[2].rsplit(" ", 1)[0]] + ls[3:],
     r"malformed keypoint line: 41 fields, expected one image a line: img_path x1 y1 \.\.\. x20 "
     r"y20 orientation \(42 fields, orientation 0\.\.7\) \({file}:3\): point "
     r"DATASETS\.VERI\.VIEW_DIR at"),
    (lambda ls: ls[:4] + [ls[4].rsplit(" ", 1)[0] + " 9"] + ls[5:],
     r"malformed keypoint line: orientation '9' is not an integer 0\.\.7 .*\({file}:5\)"),
    (lambda ls: ls + [ls[0].rsplit(" ", 1)[0] + (" 1" if ls[0].endswith(" 0") else " 0")],
     r"image 0001_c001_00001010_0\.jpg has orientation 0 at {file}:1 and 1 here "
     r"\({file}:17\)"),
    (lambda ls: ls + [ls[0].replace("0001_c001", "0099_c001")],
     r"the keypoint line names an image that is not in image_train/ of .*veri \({file}:17\): "
     r"point DATASETS\.VERI\.VIEW_DIR at .*; or set DATASETS\.VERI\.UNLABELED 'drop'"),
    (lambda ls: ls[1:],
     r"1 image\(s\) of .*image_train have no view label in the keypoint file \(first: "
     r"0001_c001_00001010_0\.jpg\) \({file}\): point DATASETS\.VERI\.VIEW_DIR at .*, or set "
     r"MODEL\.BACKBONE\.SIE_VIEW False .*; or set DATASETS\.VERI\.UNLABELED 'drop' \(leave them "
     r"out\) or 'unseen'"),
], ids=["fields", "orientation", "two_orientations", "absent_image", "unlabeled_image"])
def test_keypoint_errors_name_file_and_line(tmp_path, edit, match):
    root, _ = make_veri(tmp_path)
    path = os.path.join(root, "veri", "keypoint_train.txt")
    _rewrite(path, edit)
    assert re.search(match.format(file=re.escape(path)), error_of(root, unlabeled="error"))


def test_files_of_another_copy_fail_whatever_the_policy(tmp_path):
    import shutil

    root, _ = make_veri(tmp_path)
    veri = os.path.join(root, "veri")
    shutil.copy(os.path.join(veri, "keypoint_test.txt"), os.path.join(veri, "keypoint_train.txt"))
    msg = error_of(root, unlabeled="drop")
    assert "none of the 16 images of" in msg and "image_train has a view label" in msg


def test_bad_image_name_and_policy_are_named(tmp_path):
    root, _ = make_veri(tmp_path)
    assert "DATASETS.VERI.UNLABELED 'skip' is not one of" in error_of(root, unlabeled="skip")
    bad = os.path.join(root, "veri", "image_train", "car_17.jpg")
    open(bad, "wb").close()
    assert "VeRi-776 naming <vehicle id>_c<camera, 3 digits from 001>_... " in error_of(root)
    assert f"({bad})" in error_of(root)


# ------------------------------------------------------------------ the model
def _randomised_model(cfg):
    from fastreid.modeling import build_model

    cfg = cfg.clone()
    cfg.MODEL.HEADS.NUM_CLASSES = len(TRAIN_IDS)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.backbone.sie_embed.normal_()
    return cfg, model


@pytest.mark.slow
def test_camera_x_view_table_and_unseen_views(tmp_path):
    """One row per (camera, view): row cam * 8 + view.  An image whose view is not known gets,
    with SIE_UNSEEN "mean", the mean of its camera's view rows -- in torch, through the
    extractor, and in an ONNX graph exported with camera ids only."""
    from fastreid.modeling import build_model

    from gltrans_plugin.export import example_inputs, export_onnx, run_onnx
    from gltrans_plugin.extractor import FeatureExtractor

    root, views = make_veri(tmp_path)
    light = {"MODEL.GLTRANS.LOCAL.ENABLED": False, "MODEL.GLTRANS.BRANCHES": ("global", "cls"),
             "MODEL.GLTRANS.TEST_BRANCHES": ("global", "cls_last")}  # the SIE path is the point
    cfg, model = _randomised_model(veri_cfg(root, str(tmp_path / "out"), **light))
    bb = model.backbone
    assert bb.sie_embed.shape == (20 * 8, 192)
    x = torch.rand(2, 3, 64, 64) * 255
    cams, vws = torch.tensor([3, 19]), torch.tensor([5, 0])
    ref = copy.deepcopy(bb)  # the same ViT without SIE, the rows added to the position embedding
    ref.sie_embed = None
    with torch.no_grad():
        got = bb.forward_features(x, camids=cams, viewids=vws)
        for i in range(2):
            ref.pos_embed.copy_(bb.pos_embed + 3.0 * bb.sie_embed[cams[i] * 8 + vws[i]])
            torch.testing.assert_close(got[i:i + 1], ref.forward_features(x[i:i + 1]))

    # an unknown view: the camera-only model whose rows are the per-camera means over views
    cam_cfg = cfg.clone()
    cam_cfg.MODEL.BACKBONE.SIE_VIEW = False
    cam_model = build_model(cam_cfg).eval()
    sd = model.state_dict()
    sd["backbone.sie_embed"] = bb.sie_embed.detach().view(20, 8, -1).mean(1)
    cam_model.load_state_dict(sd)
    images, camids = example_inputs(cfg, batch=3, size=(64, 64))
    with torch.no_grad():
        expected = cam_model({"images": images, "camids": camids})
        unknown = model({"images": images, "camids": camids, "viewids": torch.full((3,), -1)})
        absent = model({"images": images, "camids": camids})
        known = model({"images": images, "camids": camids, "viewids": torch.tensor([1, 2, 3])})
    torch.testing.assert_close(unknown, expected)
    torch.testing.assert_close(absent, expected)
    assert (known - expected).abs().max() > 1e-3
    with torch.no_grad():  # the other policies, as for cameras: no SIE term, or an error
        bb.sie_unseen = "none"
        ref.pos_embed.copy_(bb.pos_embed)
        torch.testing.assert_close(bb.forward_features(x, camids=cams), ref.forward_features(x))
        bb.sie_unseen = "error"
        with pytest.raises(ValueError, match=r"without a view id .*SIE_UNSEEN 'error'"):
            bb.forward_features(x, camids=cams, viewids=torch.tensor([-1, 2]))
        bb.sie_unseen = "mean"

    image = os.path.join(root, "veri", "image_query", sorted(os.listdir(
        os.path.join(root, "veri", "image_query")))[0])
    ext = FeatureExtractor.from_model(cfg, model, normalize=False)
    cam_ext = FeatureExtractor.from_model(cam_cfg, cam_model, normalize=False)
    view = views[os.path.basename(image)]
    torch.testing.assert_close(ext(image, camids=0), cam_ext(image, camids=0))
    assert (ext(image, camids=0, viewids=view) - ext(image, camids=0)).abs().max() > 1e-3

    path = str(tmp_path / "veri.onnx")
    info = export_onnx(model, path, images, camids)
    assert info["inputs"] == ["images", "camids"]  # the view policy is baked into the graph
    np.testing.assert_allclose(run_onnx(path, images.numpy(), camids.numpy()),
                               expected.numpy(), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_veri_yml_trains_and_evaluates_with_camera_and_view_sie(tmp_path):
    """One iteration of veri.yml (tiny ViT) and an evaluation: every batch's view ids, as the
    keypoint files give them, reach the backbone beside the camera ids."""
    root, views = make_veri(tmp_path)
    cfg = veri_cfg(root, str(tmp_path / "out"))
    trainer = Trainer(cfg)
    seen = []

    def record_batch(module, args):
        batch = args[0]
        seen.append({"paths": list(batch["img_paths"]), "viewids": batch["viewids"].tolist(),
                     "training": module.training})

    def record_backbone(module, args, kwargs):
        seen[-1]["backbone"] = (kwargs["camids"].tolist(), kwargs["viewids"].tolist())

    trainer.model.register_forward_pre_hook(record_batch)
    trainer.model.backbone.register_forward_pre_hook(record_backbone, with_kwargs=True)
    try:
        assert trainer.model.backbone.sie_embed.shape == (20 * 8, 192)
        trainer.resume_or_load(resume=False)
        results = trainer.train()
    finally:
        trainer.stop_train_stream()
    assert 0 < results["mAP"] <= 100  # fast-reid unwraps the results of a single test set
    train = [s for s in seen if s["training"]]
    test = [s for s in seen if not s["training"]]
    assert len(train) == 1 and sum(len(s["paths"]) for s in test) == 3 + 12
    for s in seen:
        labels = [views[os.path.basename(p)] for p in s["paths"]]
        assert s["viewids"] == labels and s["backbone"][1] == labels
        cams = [int(os.path.basename(p).split("_c")[1][:3]) - 1 for p in s["paths"]]
        assert s["backbone"][0] == cams

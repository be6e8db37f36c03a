"""Deployment: the export contract (input conventions, camera policies, metadata, the self-check),
the export tool, the tracker adapter, and BoxMOT itself loading the exported files.

One tiny untrained GLTrans (ViT-tiny, 64 x 32 images, 3 cameras) is saved as a run folder; the
graphs are checked against the torch model fed RGB 0..255 pixels, with each input convention
written out here independently of ``gltrans_plugin.export``.
"""
import json
import os
import sys

import numpy as np
import pytest
import torch

import gltrans_plugin  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "configs/GLTrans/synthetic_demo.yml")
sys.path.insert(0, os.path.join(REPO, "tools"))
sys.path.insert(0, os.path.join(REPO, "bench"))
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def _tiny_cfg(*opts):
    from gltrans_plugin.config import setup_cfg

    return setup_cfg(DEMO, ["INPUT.SIZE_TEST", "[64, 32]", "INPUT.SIZE_TRAIN", "[64, 32]",
                            "MODEL.HEADS.NUM_CLASSES", "4", "MODEL.BACKBONE.NUM_CAMERAS", "3",
                            "MODEL.DEVICE", "cpu", *opts])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(config file, weights, cfg, model) of a tiny untrained GLTrans saved as a run folder."""
    from fastreid.modeling import build_model
    from fastreid.utils.checkpoint import Checkpointer

    out = str(tmp_path_factory.mktemp("export_run"))
    cfg = _tiny_cfg("OUTPUT_DIR", out)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    # non-zero SIE rows and BN statistics, so that camera policies and the neck matter
    with torch.no_grad():
        model.backbone.sie_embed.normal_(0, 0.5)
    Checkpointer(model, out).save("model_final")
    config = os.path.join(out, "config.yaml")
    with open(config, "w") as f:
        f.write(cfg.dump())
    return config, os.path.join(out, "model_final.pth"), cfg, model


def _pixels(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, 64, 32, generator=g) * 255).round()


def _torch_features(model, pixels, camids=None, unseen=None):
    """The model's test feature of RGB 0..255 pixels (the backbone's SIE_UNSEEN set)."""
    old = model.backbone.sie_unseen
    model.backbone.sie_unseen = unseen or old
    try:
        with torch.no_grad():
            batch = {"images": pixels.clone()}
            if camids is not None:
                batch["camids"] = camids
            return model(batch).numpy()
    finally:
        model.backbone.sie_unseen = old


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.slow
def test_input_conventions_give_the_same_feature_and_metadata_says_so(run, tmp_path):
    import onnx

    from gltrans_plugin.export import (ExportContract, export_model, read_onnx_metadata,
                                       run_onnx)

    config, weights, cfg, model = run
    px = _pixels()
    ref = _torch_features(model, px, unseen="mean")
    feeds = {  # written out independently of the module under test
        "imagenet": (px.numpy() / 255 - IMAGENET_MEAN) / IMAGENET_STD,
        "unit-bgr": px.numpy()[:, ::-1] / 255,
    }
    for name, x in feeds.items():
        path = str(tmp_path / f"{name}.onnx")
        info = export_model(model, cfg, path, ExportContract(input=name, camera="mean"),
                            config_file=config, weights=weights)
        assert info["inputs"] == ["images"] and info["rel_diff"] <= 1e-4
        got = run_onnx(path, x.astype(np.float32))
        assert _rel(got, ref) <= 1e-4, name
        graph = onnx.load(path).graph
        assert [i.name for i in graph.input] == ["images"]
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        meta = read_onnx_metadata(path)
        with open(path + ".metadata.json") as f:
            side = json.load(f)
        assert meta == side
        assert side["img_size"] == [64, 32] and side["model_kwargs"] == {"img_size": [64, 32]}
        assert side["feature_dim"] == ref.shape[1] and side["l2_normalized"] is False
        assert side["camera_policy"] == "mean" and side["input_convention"] == name
        assert side["weights"] == os.path.abspath(weights) and len(side["weights_sha256"]) == 64
    assert side["channel_order"] == "BGR" and side["pixel_scale"] == pytest.approx(1 / 255)
    assert meta["mean"] == [0, 0, 0] and meta["std"] == [1, 1, 1]


@pytest.mark.slow
def test_camera_policies_are_baked_in(run, tmp_path):
    from gltrans_plugin.export import ExportContract, export_model, run_onnx

    config, weights, cfg, model = run
    px = _pixels()
    raw = px.numpy()
    out = {}
    for camera in ("none", 1, "input"):
        path = str(tmp_path / f"cam_{camera}.onnx")
        info = export_model(model, cfg, path, ExportContract(input="raw", camera=camera))
        out[camera] = (info, path)
    none = run_onnx(out["none"][1], raw)
    assert _rel(none, _torch_features(model, px, unseen="none")) <= 1e-4
    assert _rel(none, _torch_features(model, px, unseen="mean")) > 1e-2  # not the mean policy
    fixed = run_onnx(out[1][1], raw)
    assert _rel(fixed, _torch_features(model, px, torch.tensor([1, 1, 1]))) <= 1e-4
    assert out["input"][0]["inputs"] == ["images", "camids"]
    cams = np.array([2, 0, 1])
    assert _rel(run_onnx(out["input"][1], raw, cams),
                _torch_features(model, px, torch.from_numpy(cams))) <= 1e-4
    assert _rel(run_onnx(out["input"][1], raw, cams[::-1].copy()),
                run_onnx(out["input"][1], raw, cams)) > 1e-3  # the ids reach the graph
    with open(out[1][1] + ".metadata.json") as f:
        assert json.load(f)["camera_policy"] == "camera 1"
    # tracing skipped the backbone's strict camera-id check; it is back after the export
    with pytest.raises(ValueError, match="outside the SIE table"):
        model({"images": px[:1], "camids": torch.tensor([7])})


def test_camera_ids_need_an_sie_table(tmp_path):
    from fastreid.modeling import build_model

    from gltrans_plugin.errors import UserError
    from gltrans_plugin.export import ExportContract, ExportModule, export_onnx

    model = build_model(_tiny_cfg("MODEL.BACKBONE.SIE_CAMERA", "False")).eval()
    for camera in ("input", 0):
        with pytest.raises(UserError, match="needs an SIE table, but the model has none"):
            ExportModule(model, ExportContract(camera=camera))
    assert ExportModule(model, ExportContract(camera="mean")).camera == "none"
    with pytest.raises(ValueError, match="no SIE table"):
        export_onnx(model, str(tmp_path / "x.onnx"), _pixels(1), torch.tensor([0]))


@pytest.mark.slow
def test_bad_policies_and_a_failed_check_leave_no_file(run, tmp_path, monkeypatch):
    from gltrans_plugin import export
    from gltrans_plugin.errors import UserError

    config, weights, cfg, model = run
    with pytest.raises(UserError, match=r"camera 5 is not in the model's camera SIE table "
                                        r"\(3 cameras\) \(--camera\): give a 0-based id below 3"):
        export.ExportModule(model, export.ExportContract(camera=5))
    with pytest.raises(UserError, match="input convention 'rgb' is not one of"):
        export.ExportModule(model, export.ExportContract(input="rgb"))
    path = str(tmp_path / "bad.onnx")
    real_run = export.run_onnx  # a client feeding 0..255 where the graph reads 0..1
    monkeypatch.setattr(export, "run_onnx", lambda p, x, c=None: real_run(p, x * 255, c))
    with pytest.raises(export.ExportCheckError, match=r"differs from torch .* the file was "
                                                      r"removed"):
        export.export_model(model, cfg, path, export.ExportContract(input="unit"))
    assert not os.path.exists(path) and not os.path.exists(path + ".metadata.json")


@pytest.mark.slow
def test_tool_preset_boxmot_writes_onnx_and_torchscript(run, tmp_path):
    import export_onnx

    from gltrans_plugin.export import run_torchscript

    config, weights, cfg, model = run
    info = export_onnx.main(["--config-file", config, "--weights", weights, "--device", "cpu",
                             "--output", str(tmp_path / "g.onnx"), "--preset", "boxmot"])
    files = {f["format"]: f for f in info["files"]}
    assert set(files) == {"onnx", "torchscript"}
    ts = files["torchscript"]["path"]
    assert ts == str(tmp_path / "g.torchscript") and os.path.isfile(ts + ".metadata.json")
    for f in files.values():
        assert f["input_convention"] == "imagenet" and f["camera_policy"] == "mean"
        assert f["rel_diff"] <= 1e-4 and f["inputs"] == ["images"]
    px = _pixels(batch=5)  # another batch size than traced
    x = ((px.numpy() / 255 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)
    assert _rel(run_torchscript(ts, x), _torch_features(model, px, unseen="mean")) <= 1e-4
    extra = {"metadata.json": ""}
    torch.jit.load(ts, _extra_files=extra)
    assert json.loads(extra["metadata.json"])["input_convention"] == "imagenet"
    # options override the preset; the old switch names still work
    args = export_onnx.parse_args(["--config-file", config, "--output", "x.onnx", "--preset",
                                   "boxmot", "--camids", "--format", "onnx"])
    contract, targets = export_onnx.contract_from_args(args)
    assert (contract.camera, contract.input, targets) == ("input", "imagenet",
                                                          [("onnx", "x.onnx")])
    args = export_onnx.parse_args(["--config-file", config, "--output", "x.torchscript",
                                   "--no-camids", "--input", "raw-bgr", "--normalize"])
    contract, targets = export_onnx.contract_from_args(args)
    assert (contract.camera, contract.input, contract.normalize) == ("mean", "raw-bgr", True)
    assert targets == [("torchscript", "x.torchscript")]


def test_tracker_adapter_equals_the_extractor_on_the_crops(run):
    from scenes import Scene

    from gltrans_plugin import FeatureExtractor
    from gltrans_plugin.tracking import TrackerReID

    config, weights, cfg, model = run
    frame, boxes = Scene(seed=0, height=160, width=200).frame(
        [(1, 40, 10, 120, 1), (2, 120, 30, 90, -1), (3, 190, 20, 100, 1)])
    ext = FeatureExtractor(config, weights, device="cpu", bgr=True, batch_size=2)
    reid = TrackerReID.from_extractor(ext, camid=1)
    dets = np.concatenate([boxes, np.ones((3, 2), np.float32)], 1)  # x1 y1 x2 y2 conf cls
    got = reid.get_features(dets, frame)
    crops = [frame[int(round(y1)):int(round(y2)), int(round(x1)):int(round(x2))]
             for x1, y1, x2, y2 in boxes]
    ref = ext(crops, camids=1).numpy()
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5)
    other = reid.for_camera(2).get_features(boxes, frame)
    assert np.abs(other - got).max() > 1e-3  # the stream's camera reaches the SIE term
    assert reid.get_features(np.zeros((0, 4)), frame).shape == (0, got.shape[1])
    with pytest.raises(ValueError, match="oriented boxes"):
        reid.get_features(np.zeros((2, 5)), frame)


@pytest.mark.slow
def test_boxmot_loads_the_exports_and_gets_our_features(tmp_path):
    """BoxMOT 25 in its own venv (env GLTRANS_BOXMOT_PYTHON: its python; made by
    ``python bench/boxmot_check.py --make-venv DIR``) loads the .onnx and .torchscript."""
    py = os.environ.get("GLTRANS_BOXMOT_PYTHON", "")
    if not py:
        pytest.skip("set GLTRANS_BOXMOT_PYTHON to the python of a venv with boxmot "
                    "(python bench/boxmot_check.py --make-venv /tmp/boxmot-venv)")
    import boxmot_check

    report = boxmot_check.run_check(py, str(tmp_path))
    assert report["boxmot"].startswith("25.") and report["passed"], report
    arts = report["artifacts"]
    assert {a["backend"] for a in arts.values()} == {"ONNXBackend", "TorchscriptBackend"}
    for name in ("gltrans_onnx", "gltrans_torchscript"):
        assert arts[name]["input_shape"] == [64, 32]  # from the graph / the sidecar
        assert min(arts[name]["same_pixels"]) >= 0.9999
    assert min(arts["control_raw_onnx"]["same_pixels"]) < 0.9

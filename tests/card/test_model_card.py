"""Model cards: written next to the checkpoints, read back, checked against a config, compared;
the public datasets' sizes for building a model without its data."""
import hashlib
import importlib.metadata
import json
import os
import subprocess

import pytest
from fastreid.modeling import build_model

from helpers import gltrans_small_cfg

import gltrans_plugin
from gltrans_plugin.card import (CARD_FILE, build_card, check_card, compare_cards, config_sha256,
                                 describe_card, known_sizes, read_card, sizes_without_data,
                                 write_card)

IDS, CAMS, PER_CAM, D, PARTS = 4, 3, 1, 192, 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small GLTrans built from the synthetic demo config, a 'pretrained' file and a
    checkpoint file, and the card written for them."""
    base = tmp_path_factory.mktemp("card")
    out = str(base / "out")
    cfg = gltrans_small_cfg(str(base / "data"), out, **{
        "DATASETS.SYNTHETIC.NUM_TRAIN_IDS": IDS, "DATASETS.SYNTHETIC.NUM_TEST_IDS": IDS,
        "DATASETS.SYNTHETIC.NUM_CAMERAS": CAMS, "DATASETS.SYNTHETIC.IMAGES_PER_ID_CAM": PER_CAM,
        "MODEL.HEADS.NUM_CLASSES": IDS, "MODEL.BACKBONE.NUM_CAMERAS": CAMS, "SEED": 7})
    model = build_model(cfg)
    weights = base / "imagenet.pth"
    weights.write_bytes(os.urandom(1000))
    cfg.defrost()
    cfg.MODEL.BACKBONE.PRETRAIN = True  # recorded, not loaded (the model is built already)
    cfg.MODEL.BACKBONE.PRETRAIN_PATH = str(weights)
    os.makedirs(out, exist_ok=True)
    ckpt = os.path.join(out, "model_final.pth")
    with open(ckpt, "wb") as f:
        f.write(b"checkpoint bytes")
    path = write_card(cfg, out, {"Rank-1": 50.0, "mAP": 40.0}, model=model, iteration=7,
                      checkpoint=ckpt)
    return {"cfg": cfg, "model": model, "weights": str(weights), "ckpt": ckpt, "path": path,
            "data": str(base / "data")}


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_card_records_code_recipe_weights_data_and_model(run):
    assert run["path"] == os.path.join(os.path.dirname(run["ckpt"]), CARD_FILE)
    card = read_card(run["ckpt"])
    assert card == json.load(open(run["path"]))
    assert card["versions"]["gltrans_plugin"] == gltrans_plugin.__version__
    assert card["versions"]["fastreid"] == importlib.metadata.version("fastreid")
    head = subprocess.run(["git", "-C", os.path.dirname(gltrans_plugin.__file__), "rev-parse",
                           "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert card["git"]["commit"] == head.stdout.strip()
    assert card["config"]["sha256"] == config_sha256(run["cfg"])
    pre = card["pretrained"]
    assert pre["enabled"] and pre["kind"] == "file" and pre["file"] == "imagenet.pth"
    assert pre["sha256"] == _sha(run["weights"])
    assert card["checkpoint"] == {"file": "model_final.pth", "sha256": _sha(run["ckpt"])}
    # datasets: counted independently from the generated folders
    root = os.path.join(run["data"], "synthetic_reid")
    names = {split: os.listdir(os.path.join(root, split))
             for split in ("bounding_box_train", "query", "bounding_box_test")}
    train = card["datasets"]["train"][0]
    assert train == {"name": "SyntheticReID", "images": len(names["bounding_box_train"]),
                     "identities": IDS, "cameras": CAMS}
    assert train["images"] == IDS * CAMS * PER_CAM
    test = card["datasets"]["test"][0]
    assert test["query"]["images"] == len(names["query"])
    assert test["gallery"]["images"] == len(names["bounding_box_test"])
    assert (card["seed"], card["epochs"], card["iterations"]) == (7, 2, 7)
    assert card["metrics"] == {"Rank-1": 50.0, "mAP": 40.0}
    assert card["model"]["feature_dim"] == run["model"].feat_dim == (PARTS + 2) * D
    assert card["sie"]["table_rows"] == CAMS == run["model"].backbone.sie_embed.shape[0]
    assert card["input"] == {"size_train": [64, 32], "size_test": [64, 32],
                             "pixel_mean": [127.5] * 3, "pixel_std": [127.5] * 3}
    line = describe_card(card)
    assert "\n" not in line
    assert line.startswith("trained on SyntheticReID from imagenet.pth, 2 epochs, seed 7: mAP "
                           "40.0, Rank-1 50.0; input [64, 32], feature 960, SIE rows 3")


def test_recipe_hash_ignores_where_the_run_ran(run):
    cfg = run["cfg"].clone()
    cfg.defrost()
    cfg.OUTPUT_DIR, cfg.DATASETS.ROOT, cfg.MODEL.DEVICE = "/elsewhere", "/data", "cuda:1"
    cfg.DATALOADER.NUM_WORKERS = 16
    assert config_sha256(cfg) == config_sha256(run["cfg"])
    cfg.SOLVER.BASE_LR *= 2
    assert config_sha256(cfg) != config_sha256(run["cfg"])
    assert run["cfg"].OUTPUT_DIR != "/elsewhere"  # the config itself is not changed


def test_check_card_warns_where_the_config_disagrees(run):
    cfg = run["cfg"]
    assert check_card(cfg, run["ckpt"]) == []
    other = cfg.clone()
    other.defrost()
    other.INPUT.SIZE_TEST = [128, 64]
    other.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    other.MODEL.BACKBONE.NUM_CAMERAS = 15
    other.DATASETS.NAMES = ("MSMT17",)
    warnings = check_card(other, run["ckpt"])
    assert len(warnings) == 4 and all("\n" not in w for w in warnings)
    assert warnings[0].startswith("INPUT.SIZE_TEST is [128, 64] but model_final.pth was "
                                  "trained with [64, 32] (model card ")
    assert warnings[0].endswith("): features of another input size")
    keys = [w.split(" is ")[0] for w in warnings]
    assert keys == ["INPUT.SIZE_TEST", "MODEL.PIXEL_MEAN", "MODEL.BACKBONE.NUM_CAMERAS",
                    "DATASETS.NAMES"]


def test_no_card_or_not_a_card(tmp_path, run):
    ckpt = tmp_path / "model_final.pth"
    ckpt.write_bytes(b"x")
    assert read_card(ckpt) is None and check_card(run["cfg"], str(ckpt)) == []
    (tmp_path / CARD_FILE).write_text(json.dumps({"format": "something else"}))
    assert read_card(str(tmp_path)) is None


def test_compare_cards(run):
    a = read_card(run["ckpt"])
    b = json.loads(json.dumps(a))
    b["metrics"]["mAP"] = 41.5
    b["pretrained"]["sha256"] = "0" * 64
    diff = compare_cards(a, b)
    assert diff == [f"pretrained.sha256: {a['pretrained']['sha256']!r} -> {'0' * 64!r}",
                    "metrics.mAP: 40.0 -> 41.5"]
    assert compare_cards(a, a) == []


def test_unfinished_run_card_has_no_metrics(run):
    card = build_card(run["cfg"], None, model=run["model"], datasets={"train": [], "test": []})
    assert card["metrics"] is None and "checkpoint" not in card
    assert "no final metrics" in describe_card(card)


def test_known_sizes_of_the_public_datasets(run):
    assert known_sizes("MSMT17TrainVal") == {"NUM_CLASSES": 1041, "NUM_CAMERAS": 15}
    assert known_sizes("Market1501") == {"NUM_CLASSES": 751, "NUM_CAMERAS": 6}
    assert known_sizes("DukeMTMC") == {"NUM_CLASSES": 702, "NUM_CAMERAS": 8}
    assert known_sizes("VeRi") == {"NUM_CLASSES": 576, "NUM_CAMERAS": 20}
    assert known_sizes("ReIDFolder") == {}
    cfg = run["cfg"].clone()
    cfg.defrost()
    cfg.DATASETS.NAMES = ("Market1501", "DukeMTMC")  # each its own SIE rows: 6 + 8
    assert sizes_without_data(cfg) == {"NUM_CLASSES": 751 + 702, "NUM_CAMERAS": 14}
    cfg.DATASETS.NAMES = ("Market1501", "SyntheticReID")
    assert sizes_without_data(cfg) == {}


def test_a_dataset_config_builds_without_its_data(tmp_path):
    """tools/model_report.py and the exporters on configs/GLTrans/msmt17.yml, no MSMT17 here."""
    from gltrans_plugin.config import setup_cfg
    from gltrans_plugin.loading import cfg_for_checkpoint

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for name, classes, cams in (("msmt17", 1041, 15), ("dukemtmc", 702, 8)):
        cfg = setup_cfg(os.path.join(repo, "configs", "GLTrans", f"{name}.yml"),
                        ["DATASETS.ROOT", str(tmp_path / "no_data")])
        filled = cfg_for_checkpoint(cfg, None)
        assert filled.MODEL.HEADS.NUM_CLASSES == classes
        assert filled.MODEL.BACKBONE.NUM_CAMERAS == cams and not filled.MODEL.BACKBONE.PRETRAIN
    cfg.DATASETS.NAMES = ("ReIDFolder",)  # sizes only its files can tell: the data error stays
    cfg.DATASETS.FOLDER.ROOT = str(tmp_path / "mine")
    with pytest.raises(ValueError, match="ReIDFolder: folder not found"):
        cfg_for_checkpoint(cfg, None)

"""Training on your own data: the ReIDFolder dataset (a Market-1501-style folder or list files)
with its load-time checks, and several datasets merged into one training run (each its own
camera rows in the SIE table, identities kept apart, cross-dataset test cameras unseen)."""
import logging
import os
import shutil

import pytest
from helpers import gltrans_small_cfg

import gltrans_plugin  # noqa: F401
from gltrans_plugin.data import (
    CameraLayout,
    ReIDFolder,
    ReIDFolder2,
    build_dataset,
    camera_layout,
    clear_dataset_cache,
    generate_synthetic_reid,
)
from gltrans_plugin.data.checks import DatasetError
from gltrans_plugin.data.build import fill_num_cameras
from gltrans_plugin.engine import Trainer

# tiny synthetic sets: 4 training + 4 test identities, 2 images per identity and camera
TINY = dict(num_train_ids=4, num_test_ids=4, images_per_id_cam=2, height=64, width=32)
SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


@pytest.fixture(autouse=True)
def _fresh_listing():
    clear_dataset_cache()
    yield
    clear_dataset_cache()


def make_set(folder, seed, cams):
    """A tiny synthetic set in Market-1501 layout at ``folder``; returns ``folder``."""
    generate_synthetic_reid(str(folder), seed=seed, num_cameras=cams, **TINY)
    return str(folder)


def write_lists(market_dir, list_dir, junk=True):
    """List files (train.txt / query.txt / gallery.txt, paths relative to ``list_dir``) of a
    Market-1501-style folder; {split: path}.  ``junk``: one pid -1 line in train.txt."""
    from gltrans_plugin.data.folder import read_market_folder

    os.makedirs(list_dir, exist_ok=True)
    out = {}
    for split, sub in SPLIT_DIRS.items():
        lines = [f"{os.path.relpath(p, list_dir)} {pid} {cam}"
                 for p, pid, cam in read_market_folder(os.path.join(market_dir, sub))]
        if junk and split == "train":
            lines = ["# path pid camid", lines[0].rsplit(" ", 2)[0] + " -1 0", ""] + lines
        out[split] = os.path.join(list_dir, f"{split}.txt")
        with open(out[split], "w") as f:
            f.write("\n".join(lines) + "\n")
    return out


def from_lists(lists, cls=ReIDFolder):
    return cls(train_list=lists["train"], query_list=lists["query"],
               gallery_list=lists["gallery"])


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    """Two synthetic sets of different seeds (2 and 3 cameras), the second also as lists."""
    base = tmp_path_factory.mktemp("own")
    a = make_set(base / "set_a", seed=1, cams=2)
    b = make_set(base / "set_b", seed=2, cams=3)
    return {"a": a, "b": b, "b_lists": write_lists(b, str(base / "lists_b")),
            "base": str(base)}


def merged_cfg(two_sets, out, **overrides):
    """GLTrans (tiny) trained on set a (ReIDFolder, folder) + set b (ReIDFolder2, lists)."""
    b = two_sets["b_lists"]
    opts = {"DATASETS.NAMES": ("ReIDFolder", "ReIDFolder2"),
            "DATASETS.TESTS": ("ReIDFolder", "ReIDFolder2"),
            "DATASETS.FOLDER.ROOT": two_sets["a"],
            "DATASETS.FOLDER2.TRAIN_LIST": b["train"], "DATASETS.FOLDER2.QUERY_LIST": b["query"],
            "DATASETS.FOLDER2.GALLERY_LIST": b["gallery"],
            "MODEL.BACKBONE.NUM_CAMERAS": 0, "SOLVER.IMS_PER_BATCH": 8,
            "DATALOADER.NUM_INSTANCE": 4, "SOLVER.MAX_EPOCH": 1, "TEST.EVAL_PERIOD": 1,
            "SOLVER.WARMUP_EPOCHS": 0, "SOLVER.CHECKPOINT_PERIOD": 100, "TEST.IMS_PER_BATCH": 32,
            "DATASETS.SYNTHETIC.NUM_TRAIN_IDS": 4, "DATASETS.SYNTHETIC.NUM_TEST_IDS": 4,
            "DATASETS.SYNTHETIC.IMAGES_PER_ID_CAM": 2, "DATASETS.SYNTHETIC.NUM_CAMERAS": 2}
    opts.update(overrides)
    return gltrans_small_cfg(os.path.join(two_sets["base"], "root"), str(out), **opts)


# ============================================================================ reading
def test_market_folder_and_list_files_give_the_same_dataset(tmp_path, caplog):
    market = make_set(tmp_path / "market", seed=1, cams=2)
    junk = os.path.join(market, "bounding_box_train", "-1_c1s1_000000_00.jpg")
    shutil.copy(os.path.join(market, "bounding_box_train", "0001_c1s1_000001_00.jpg"), junk)
    lists = write_lists(market, str(tmp_path / "lists"))
    folder = ReIDFolder(folder=market)
    listed = from_lists(lists)
    for split in ("train", "query", "gallery"):
        assert sorted(getattr(folder, split)) == sorted(getattr(listed, split)), split
    paths = {p for p, _, _ in folder.train}
    assert len(folder.train) == 4 * 2 * 2 and os.path.abspath(junk) not in paths  # junk skipped
    assert all(os.path.isabs(p) for p, _, _ in folder.train + folder.query + folder.gallery)
    # fast-reid's training form, 0-based cameras; test ids stay integers
    assert {pid for _, pid, _ in folder.train} == {f"reidfolder_{i}" for i in range(1, 5)}
    assert {cam for _, _, cam in folder.train} == {"reidfolder_0", "reidfolder_1"}
    assert {cam for _, _, cam in folder.query + folder.gallery} == {0, 1}
    assert {pid for _, pid, _ in folder.query} == set(range(5, 9))
    with caplog.at_level(logging.INFO, logger="fastreid"):
        folder.show_train()
        listed.show_test()
    assert "Loaded ReIDFolder" in caplog.text and "| train " in caplog.text
    assert "| query " in caplog.text and "| gallery " in caplog.text


def test_list_paths_absolute_or_relative_view_ids_and_a_test_only_set(tmp_path):
    market = make_set(tmp_path / "market", seed=1, cams=2)
    img = sorted(os.listdir(os.path.join(market, "query")))
    q = tmp_path / "q.txt"
    q.write_text(f"{os.path.join(market, 'query', img[0])} 5 0 2\n"          # absolute, view 2
                 f"market/query/{img[1]} 6 1\n")                            # relative
    g = tmp_path / "g.txt"
    g.write_text("".join(f"market/query/{n} {pid} 1\n" for n, pid in zip(img[:2], (5, 6))))
    data = ReIDFolder(query_list=str(q), gallery_list=str(g))
    assert data.train == [] and [pid for _, pid, _ in data.query] == [5, 6]
    assert data.view_ids == {os.path.join(market, "query", img[0]): 2}


def test_build_dataset_reads_the_config_keys_once(two_sets, tmp_path):
    cfg = merged_cfg(two_sets, tmp_path / "out")
    a = build_dataset(cfg, "ReIDFolder")
    assert a is build_dataset(cfg, "ReIDFolder") and a.train_dir.startswith(two_sets["a"])
    b = build_dataset(cfg, "ReIDFolder2")
    assert isinstance(b, ReIDFolder2) and b.train_dir == two_sets["b_lists"]["train"]
    assert {pid for _, pid, _ in b.train} == {f"reidfolder2_{i}" for i in range(1, 5)}


# ============================================================================ checks
def _lines(tmp_path, text, name="train.txt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture
def one_image(tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 64)).save(tmp_path / "a.jpg")
    return "a.jpg"


@pytest.mark.parametrize("lines,where,what", [
    ("a.jpg 1\n", ":1", "lacks the camera id"),
    ("# header\na.jpg 1 c1\n", ":2", "camera id 'c1' is not an integer"),
    ("a.jpg x 0\n", ":1", "pid 'x' is not an integer"),
    ("a.jpg 1 0 left\n", ":1", "view id 'left' is not an integer"),
    ("a.jpg 1 -2\n", ":1", "camera id -2 is negative"),
    ("a.jpg\n", ":1", "lacks the pid and the camera id"),
    ("my image.jpg 1 0 0\n", ":1", "has 5 fields"),
    ("a.jpg 1 0\nmissing/b.jpg 1 0\n", ":2", "listed image missing/b.jpg does not exist"),
])
def test_bad_list_line_names_file_line_and_fix(tmp_path, one_image, lines, where, what):
    path = _lines(tmp_path, lines)
    with pytest.raises(DatasetError) as e:
        ReIDFolder(train_list=path)
    msg = str(e.value)
    assert what in msg and f"({path}{where}): " in msg, msg  # what (file:line): fix
    assert e.value.fix and e.value.where == f"{path}{where}"


def test_missing_files_and_folders(tmp_path, two_sets):
    with pytest.raises(DatasetError, match=r"no data given \(DATASETS.FOLDER.ROOT / "
                                           r"DATASETS.FOLDER.TRAIN_LIST\): set DATASETS.FOLDER"):
        ReIDFolder()
    with pytest.raises(DatasetError, match="both a folder and list files are set"):
        ReIDFolder(folder=two_sets["a"], train_list=two_sets["b_lists"]["train"])
    nowhere = str(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=rf"folder not found \({nowhere}\): set "
                                           r"DATASETS.FOLDER.ROOT"):
        ReIDFolder(folder=nowhere)
    partial = tmp_path / "partial"
    shutil.copytree(os.path.join(two_sets["a"], "bounding_box_train"),
                    partial / "bounding_box_train")
    with pytest.raises(DatasetError, match=r"the folder lacks query/, bounding_box_test/ "
                                           rf"\({partial}\)"):
        ReIDFolder(folder=str(partial))
    with pytest.raises(DatasetError, match=r"ReIDFolder2: query list file not found \(.*q.txt\)"
                                           r": set DATASETS.FOLDER2.QUERY_LIST"):
        ReIDFolder2(query_list=str(tmp_path / "q.txt"))


def test_badly_named_image_in_a_folder(tmp_path):
    market = make_set(tmp_path / "market", seed=1, cams=2)
    bad = os.path.join(market, "query", "person7.jpg")
    shutil.copy(os.path.join(market, "query", sorted(os.listdir(
        os.path.join(market, "query")))[0]), bad)
    with pytest.raises(DatasetError, match=rf"Market-1501 naming .*\({bad}\): rename it"):
        ReIDFolder(folder=market)
    os.remove(bad)
    zero = os.path.join(market, "query", "0005_c0s1_000001_00.jpg")
    open(zero, "wb").close()
    with pytest.raises(DatasetError, match="camera c0: Market-1501 camera numbers start at 1"):
        ReIDFolder(folder=market)


def test_query_identity_absent_from_the_gallery(tmp_path, one_image):
    q = _lines(tmp_path, "a.jpg 3 0\na.jpg 4 0\n", "q.txt")
    g = _lines(tmp_path, "a.jpg 4 1\n", "g.txt")
    with pytest.raises(DatasetError) as e:
        ReIDFolder(query_list=q, gallery_list=g)
    msg = str(e.value)
    assert f"1 query identity has no gallery image: 3 (first at {q}:1) ({g})" in msg
    assert "add their gallery images, or remove them from the query" in msg


def test_single_image_identity_and_same_camera_query_warn(tmp_path, one_image, caplog):
    t = _lines(tmp_path, "a.jpg 1 0\na.jpg 1 1\na.jpg 2 0\n")
    q = _lines(tmp_path, "a.jpg 4 0\n", "q.txt")
    g = _lines(tmp_path, "a.jpg 4 0\n", "g.txt")
    with caplog.at_level(logging.WARNING, logger="gltrans_plugin.data.folder"):
        data = ReIDFolder(train_list=t, query_list=q, gallery_list=g)
    assert len(data.train) == 3  # a warning, not an error
    assert f"1 of 2 training identities have a single image (2) in {t}" in caplog.text
    assert "DATALOADER.NUM_INSTANCE" in caplog.text
    assert "1 query images have gallery images of their identity under their own camera" \
        in caplog.text


# ============================================================================ several datasets
def test_camera_layout_rules():
    sets = [("A", [("x", "a_1", "a_0"), ("y", "a_2", "a_1")]),
            ("B", [("z", "b_1", "b_2")])]  # B uses camera 2 only: it spans rows for 0..2
    layout = CameraLayout(sets)
    assert layout.offsets == {"A": 0, "B": 2} and layout.spans == {"A": 2, "B": 3}
    assert layout.total == 5 and layout.train_index("b_2") == 4
    assert [layout.test_index("A", c) for c in (0, 1)] == [0, 1]
    assert layout.test_index("A", 2) == -3   # would be one of B's rows: unseen
    assert layout.test_index("B", 5) == 7    # last dataset: beyond its rows, as with one set
    assert [layout.test_index("C", c) for c in (0, 3)] == [-1, -4]  # cross-dataset: unseen
    with pytest.raises(DatasetError, match="dataset A is listed twice"):
        CameraLayout([sets[0], sets[0]])
    with pytest.raises(DatasetError, match="training datasets A and A2 give the same identity "
                                           "label 'a_1'"):
        CameraLayout([sets[0], ("A2", [("w", "a_1", "a_5")])])
    one = CameraLayout([("Market1501", [("x", "m_1", "m_14"), ("y", "m_2", "m_3")])])
    assert one.train_index("m_14") == 14 and one.test_index("Market1501", 14) == 14


def test_merged_sets_distinct_cameras_and_identities(two_sets, tmp_path):
    cfg = merged_cfg(two_sets, tmp_path / "out")
    layout = camera_layout(cfg)
    assert layout.offsets == {"ReIDFolder": 0, "ReIDFolder2": 2} and layout.total == 5
    assert fill_num_cameras(cfg).MODEL.BACKBONE.NUM_CAMERAS == 5  # 2 + 3 cameras
    train_set = Trainer.build_train_loader(cfg).dataset
    by_set = {"reidfolder": set(), "reidfolder2": set()}
    for c, row in train_set.cam_dict.items():
        by_set[c.rsplit("_", 1)[0]].add(row)
    assert by_set == {"reidfolder": {0, 1}, "reidfolder2": {2, 3, 4}}
    assert train_set.num_classes == 8  # 4 + 4: pid 1..4 of each set stay different people
    assert any(p.startswith("reidfolder_") for p in train_set.pids)
    for name, rows in (("ReIDFolder", {0, 1}), ("ReIDFolder2", {2, 3, 4})):
        loader, num_query = Trainer.build_test_loader(cfg, name)
        assert {int(c) for _, _, c in loader.dataset.img_items} == rows
    # the same set twice would merge its identities
    cfg.DATASETS.NAMES = ("ReIDFolder", "ReIDFolder")
    with pytest.raises(DatasetError, match="dataset ReIDFolder is listed twice"):
        camera_layout(cfg)


def test_cross_dataset_test_cameras_are_unseen(two_sets, tmp_path):
    cfg = merged_cfg(two_sets, tmp_path / "out", **{
        "DATASETS.NAMES": ("ReIDFolder",), "DATASETS.TESTS": ("ReIDFolder2",)})
    loader, num_query = Trainer.build_test_loader(cfg, "ReIDFolder2")
    raw = build_dataset(cfg, "ReIDFolder2")
    got = [c for _, _, c in loader.dataset.img_items]
    assert got == [-1 - c for _, _, c in raw.query + raw.gallery]
    assert set(got) == {-1, -2, -3} and num_query == len(raw.query)
    # the model's policy for unseen cameras: 'error' fails before the model is built
    from gltrans_plugin.checks import check_data

    cfg = fill_num_cameras(cfg)
    check_data(cfg)  # SIE_UNSEEN 'none': fine
    cfg.MODEL.BACKBONE.SIE_UNSEEN = "error"
    with pytest.raises(ValueError, match=r"Camera\(s\) \[0, 1, 2\] of the test set ReIDFolder2 "
                                         r"were never seen in training \(a dataset not in "
                                         r"DATASETS.NAMES\)"):
        check_data(cfg)


def test_single_dataset_keeps_its_camera_numbers(two_sets, tmp_path):
    cfg = merged_cfg(two_sets, tmp_path / "out", **{
        "DATASETS.NAMES": ("ReIDFolder2",), "DATASETS.TESTS": ("ReIDFolder2",)})
    train_set = Trainer.build_train_loader(cfg).dataset
    assert sorted(train_set.cam_dict.items()) == [
        ("reidfolder2_0", 0), ("reidfolder2_1", 1), ("reidfolder2_2", 2)]
    loader, _ = Trainer.build_test_loader(cfg, "ReIDFolder2")
    raw = build_dataset(cfg, "ReIDFolder2")
    assert [c for _, _, c in loader.dataset.img_items] == \
        [c for _, _, c in raw.query + raw.gallery]
    assert fill_num_cameras(cfg).MODEL.BACKBONE.NUM_CAMERAS == 3


def test_one_epoch_on_merged_sets_trains_and_evaluates(two_sets, tmp_path):
    """Two own sets merged, tested on both and on a third (cross-dataset) set."""
    cfg = merged_cfg(two_sets, tmp_path / "out", **{
        "DATASETS.TESTS": ("ReIDFolder", "ReIDFolder2", "SyntheticReID")})
    trainer = Trainer(cfg)
    try:
        assert trainer.cfg.MODEL.BACKBONE.NUM_CAMERAS == 5
        assert trainer.model.backbone.sie_embed.shape[0] == 5
        trainer.resume_or_load(resume=False)
        results = trainer.train()
    finally:
        trainer.stop_train_stream()
    assert set(results) == {"ReIDFolder", "ReIDFolder2", "SyntheticReID"}
    for name, metrics in results.items():  # every query is valid: mAP of a real ranking
        assert 0 < metrics["mAP"] <= 100 and 0 <= metrics["Rank-1"] <= 100, (name, metrics)

"""Synthetic Re-ID set, dataset variants (SyntheticReID, MSMT17TrainVal), camera ids, roots."""
import glob
import hashlib
import logging
import os
import os.path as osp
import re
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from fastreid.config import get_cfg
from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.market1501 import Market1501
from fastreid.data.datasets.msmt17 import MSMT17
from fastreid.evaluation.rank import eval_market1501
from PIL import Image

from gltrans_plugin.config import add_gltrans_config
from helpers import REPO
from gltrans_plugin.data import synthetic
from gltrans_plugin.data.cameras import camera_index
from gltrans_plugin.data.checks import check_dataset_root
from gltrans_plugin.data.datasets import MSMT17TrainVal, SyntheticReID, synthetic_kwargs
from gltrans_plugin.data.synthetic import generate_synthetic_reid, read_manifest

SMALL = dict(num_train_ids=6, num_test_ids=5, num_cameras=3, images_per_id_cam=2,
             height=64, width=32, seed=7)
NAME_RE = re.compile(r"^(\d{4})_c([1-6])s1_(\d{6})_00\.jpg$")


def _files(root):
    out = {}
    for path in sorted(glob.glob(osp.join(root, "**", "*"), recursive=True)):
        if osp.isfile(path):
            with open(path, "rb") as f:
                out[osp.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def default_set(tmp_path_factory):
    """The default-size set (DATASETS.SYNTHETIC defaults), generated once for this module."""
    root = str(tmp_path_factory.mktemp("syn_default") / "synthetic_reid")
    t0 = time.perf_counter()
    generate_synthetic_reid(root)
    return root, time.perf_counter() - t0


# ---------------------------------------------------------------- layout and registration

def test_defaults_match_config():
    cfg = add_gltrans_config(get_cfg())
    assert synthetic_kwargs(cfg) == synthetic.DEFAULTS
    cfg.DATASETS.SYNTHETIC.NUM_CAMERAS = 5
    assert synthetic_kwargs(cfg)["num_cameras"] == 5


def test_layout_is_read_by_fastreid_market1501(tmp_path):
    out = tmp_path / "set"
    man = generate_synthetic_reid(str(out), **SMALL)
    n_tr, n_te, c, k = 6, 5, 3, 2
    n_q = n_te * (c // 2)
    n_distr = n_te // 2
    assert man["counts"] == {"bounding_box_train": n_tr * c * k, "query": n_q,
                             "bounding_box_test": n_te * c * k - n_q + n_distr}
    for split in synthetic.SPLIT_DIRS:
        for f in os.listdir(out / split):
            assert NAME_RE.match(f), f

    with warnings.catch_warnings():  # "deprecated data structure" (no Market-1501-v15.09.15)
        warnings.simplefilter("ignore")
        market = Market1501(root=str(out))
    train, query, gallery = market.train, market.query, market.gallery
    assert market.parse_data(train) == (n_tr, c)
    assert len(train) == n_tr * c * k
    assert {p for _, p, _ in train} == {f"market1501_{i}" for i in range(1, n_tr + 1)}
    assert market.parse_data(query)[0] == n_te
    assert len(query) == n_q and len(gallery) == man["counts"]["bounding_box_test"]
    test_ids = set(range(n_tr + 1, n_tr + n_te + 1))
    assert {p for _, p, _ in query} == test_ids
    assert {p for _, p, _ in gallery} == test_ids | {0}  # pid 0: distractors
    assert sum(p == 0 for _, p, _ in gallery) == n_distr
    assert {cam for _, _, cam in gallery} == set(range(c))
    # each query has its identity in the gallery under another camera (Market protocol)
    for _, pid, cam in query:
        assert any(p == pid and cc != cam for _, p, cc in gallery)
    # query image is not also in the gallery
    assert not {osp.basename(q[0]) for q in query} & {osp.basename(g[0]) for g in gallery}
    img = Image.open(query[0][0])
    assert img.size == (32, 64) and img.mode == "RGB"


def test_synthetic_reid_generates_on_first_use(tmp_path, caplog):
    assert DATASET_REGISTRY.get("SyntheticReID") is SyntheticReID
    with caplog.at_level(logging.INFO, logger="gltrans_plugin.data.synthetic"):
        ds = SyntheticReID(root=str(tmp_path), **SMALL)
    folder = tmp_path / "synthetic_reid"
    assert (folder / synthetic.MANIFEST_NAME).is_file()
    assert any("Generating" in r.message and str(folder) in r.message for r in caplog.records)
    assert ds.parse_data(ds.train) == (6, 3)
    assert len(ds.train) == 36 and len(ds.data) == 36
    assert ds.train == sorted(ds.train)  # file-name order, machine independent
    assert ds.train[0][1] == "synthetic_reid_1" and ds.train[0][2] == "synthetic_reid_0"
    assert {p for _, p, _ in ds.query} == set(range(7, 12))
    q = SyntheticReID(root=str(tmp_path), mode="query", **SMALL)
    assert q.data == ds.query
    # second construction reuses the files
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gltrans_plugin.data.synthetic"):
        SyntheticReID(root=str(tmp_path), **SMALL)
    assert not any("Generating" in r.message for r in caplog.records)
    # fast-reid's CommDataset loads it
    train_set = CommDataset(ds.train, transform=None, relabel=True)
    item = train_set[0]
    assert train_set.num_classes == 6 and item["images"].size == (32, 64)


# ---------------------------------------------------------------- determinism and writing

def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    generate_synthetic_reid(str(tmp_path / "a"), **SMALL)
    generate_synthetic_reid(str(tmp_path / "b"), **SMALL)
    generate_synthetic_reid(str(tmp_path / "c"), **{**SMALL, "seed": 8})
    a, b, c = (_files(str(tmp_path / n)) for n in "abc")
    assert a == b
    train = [k for k in a if k.startswith("bounding_box_train")]
    assert train and all(k in c for k in train)  # same training file names ...
    assert all(a[k] != c[k] for k in train)  # ... but every image differs
    assert a["manifest.json"] != c["manifest.json"]


def test_regeneration_and_reuse(tmp_path):
    out = str(tmp_path / "synthetic_reid")
    generate_synthetic_reid(out, **SMALL)
    marker = osp.join(out, "query", os.listdir(osp.join(out, "query"))[0])
    mtime = os.stat(marker).st_mtime_ns
    generate_synthetic_reid(out, **SMALL)  # same parameters: untouched
    assert os.stat(marker).st_mtime_ns == mtime
    assert synthetic.is_valid_synthetic_reid(out, **SMALL)

    man = generate_synthetic_reid(out, **{**SMALL, "num_train_ids": 4})  # other parameters
    assert read_manifest(out)["params"]["num_train_ids"] == 4 == man["params"]["num_train_ids"]
    assert len(os.listdir(osp.join(out, "bounding_box_train"))) == 4 * 3 * 2
    assert not synthetic.is_valid_synthetic_reid(out, **SMALL)

    # a damaged set (a file deleted) is regenerated
    victim = sorted(os.listdir(osp.join(out, "bounding_box_test")))[0]
    os.remove(osp.join(out, "bounding_box_test", victim))
    generate_synthetic_reid(out, **{**SMALL, "num_train_ids": 4})
    assert osp.isfile(osp.join(out, "bounding_box_test", victim))
    # no temporary or old folders left beside it
    assert sorted(os.listdir(tmp_path)) == [".synthetic_reid.lock", "synthetic_reid"]


def test_foreign_folder_is_not_overwritten(tmp_path):
    out = tmp_path / "synthetic_reid"
    out.mkdir()
    (out / "my_data.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a generated synthetic set"):
        generate_synthetic_reid(str(out), **SMALL)
    assert (out / "my_data.txt").read_text() == "precious"


def test_failed_generation_leaves_nothing_half_written(tmp_path, monkeypatch):
    out = str(tmp_path / "synthetic_reid")
    real = synthetic.draw.render_image
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic.draw, "render_image", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_synthetic_reid(out, **SMALL)
    assert not osp.exists(out)
    assert os.listdir(tmp_path) == [".synthetic_reid.lock"]

    monkeypatch.setattr(synthetic.draw, "render_image", real)
    generate_synthetic_reid(out, **SMALL)
    before = _files(out)
    calls["n"] = 0
    monkeypatch.setattr(synthetic.draw, "render_image", failing)
    with pytest.raises(RuntimeError, match="disk full"):  # failed regeneration: old set intact
        generate_synthetic_reid(out, **{**SMALL, "seed": 9})
    assert _files(out) == before


def test_concurrent_generation_is_safe(tmp_path, caplog):
    errors = []

    def build():
        try:
            SyntheticReID(root=str(tmp_path), **SMALL)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    with caplog.at_level(logging.INFO, logger="gltrans_plugin.data.synthetic"):
        threads = [threading.Thread(target=build) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert sum("Generating" in r.message for r in caplog.records) == 1
    assert synthetic.is_valid_synthetic_reid(str(tmp_path / "synthetic_reid"), **SMALL)


@pytest.mark.parametrize("bad, match", [
    (dict(num_cameras=7), "1-6"),
    (dict(num_cameras=1), "across cameras"),
    (dict(num_train_ids=1000, num_test_ids=600), "1501"),
    (dict(height=16), "too small"),
    (dict(images_per_id_cam=0), "images_per_id_cam"),
])
def test_invalid_parameters(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        generate_synthetic_reid(str(tmp_path / "x"), **{**SMALL, **bad})
    assert not osp.exists(tmp_path / "x")


def test_unknown_parameter():
    with pytest.raises(ValueError, match="Unknown synthetic data set parameter.*colour"):
        synthetic.synthetic_params(colour=3)


def test_cli(tmp_path, capsys):
    from importlib.util import module_from_spec, spec_from_file_location

    path = osp.join(REPO, "tools", "make_synthetic_dataset.py")
    spec = spec_from_file_location("make_synthetic_dataset", path)
    cli = module_from_spec(spec)
    spec.loader.exec_module(cli)
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0 and "--num-train-ids" in capsys.readouterr().out
    assert cli.main(["--root", str(tmp_path), "--num-train-ids", "3", "--num-test-ids", "2",
                     "--num-cameras", "2", "--images-per-id-cam", "1", "--height", "64",
                     "--width", "32", "--num-distractors", "0"]) == 0
    m = read_manifest(str(tmp_path / "synthetic_reid"))
    assert m["counts"] == {"bounding_box_train": 6, "query": 2, "bounding_box_test": 2}


# ---------------------------------------------------------------- difficulty

def _load_split(root, split, size=(16, 32)):
    paths = sorted(glob.glob(osp.join(root, split, "*.jpg")))
    x = np.stack([np.asarray(Image.open(p).convert("RGB").resize(size, Image.BILINEAR),
                             np.float64) for p in paths])  # n x 32 x 16 x 3
    pids = np.array([int(osp.basename(p)[:4]) for p in paths])
    cams = np.array([int(osp.basename(p)[6]) - 1 for p in paths])
    return x, pids, cams


def _map_rank1(dist, qp, gp, qc, gc):
    """Market-1501 protocol, written independently: drop same-pid same-camera gallery items."""
    aps, r1 = [], []
    for i in range(len(qp)):
        keep = ~((gp == qp[i]) & (gc == qc[i]))
        match = gp[keep][np.argsort(dist[i][keep], kind="stable")] == qp[i]
        pos = np.flatnonzero(match)
        aps.append(np.mean(np.arange(1, len(pos) + 1) / (pos + 1)))
        r1.append(float(match[0]))
    return float(np.mean(aps)), float(np.mean(r1))


def _l2(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2 * a @ b.T


def test_default_set_is_a_real_retrieval_problem(default_set):
    root, seconds = default_set
    assert seconds < 60, f"default set took {seconds:.1f} s to generate"
    qx, qp, qc = _load_split(root, "query")
    gx, gp, gc = _load_split(root, "bounding_box_test")
    assert len(qp) == 96 and len(gp) == 48 * 12 - 96 + 24

    # 1) raw-pixel nearest neighbour (32x16 RGB, L2) is close to chance (measured: mAP 0.035,
    #    rank-1 0.021 on the default set with seed 0)
    dist = _l2(qx, gx)
    raw_map, raw_r1 = _map_rank1(dist, qp, gp, qc, gc)
    assert raw_map < 0.15 and raw_r1 < 0.2, (raw_map, raw_r1)
    # the same numbers from fast-reid's own (python) Market-1501 evaluation, pid-0 distractors
    # counted as negatives
    cmc, all_ap, _ = eval_market1501(dist, qp, gp, qc, gc, max_rank=5)
    assert np.mean(all_ap) == pytest.approx(raw_map, abs=1e-9)
    assert cmc[0] == pytest.approx(raw_r1)

    # 2) ... but identity is learnable: a hand-made, colour-constant feature (per-row mean colour
    #    of the central body region after grey-world normalisation) does much better (measured:
    #    mAP 0.18, rank-1 0.30)
    def profile(x):
        body = x[:, 4:30, 4:12]
        body = body / body.reshape(len(x), -1, 3).mean(1)[:, None, None, :]
        return body.mean(2)  # n x rows x 3
    prof_map, prof_r1 = _map_rank1(_l2(profile(qx), profile(gx)), qp, gp, qc, gc)
    assert prof_map > 2.5 * raw_map and prof_r1 > 3 * max(raw_r1, 0.02), (prof_map, raw_map)

    # 3) same identity across cameras is closer in raw pixels than different identities
    x = np.concatenate([qx, gx])
    p = np.concatenate([qp, gp])
    c = np.concatenate([qc, gc])
    d = _l2(x, x)
    iu = np.triu_indices(len(x), 1)
    valid = ((p[:, None] > 0) & (p[None] > 0) & (c[:, None] != c[None]))[iu]
    same = (p[:, None] == p[None])[iu]
    assert d[iu][valid & same].mean() < 0.95 * d[iu][valid & ~same].mean()


def test_identities_in_a_group_differ_only_locally():
    a = [synthetic.draw.identity(0, pid, 4) for pid in (1, 2, 3, 4)]
    coarse = ("shirt", "pants", "skin", "hair", "height", "shoulder")
    local = ("hat", "bag", "shoes", "stripe", "logo")
    for x in a[1:]:
        assert all(x[k] == a[0][k] for k in coarse)
    sigs = {tuple(repr(x[k]) for k in local) for x in a}
    assert len(sigs) == 4  # every member has its own local details


# ---------------------------------------------------------------- camera ids

def test_camera_index_msmt17_15_cameras():
    train_ids = [f"msmt17_{c}" for c in range(15)]
    test_ids = list(range(15))
    # the problem: CommDataset relabels training cameras by sorted string order
    relabel = CommDataset([("x", "p", cid) for cid in train_ids], relabel=True).cam_dict
    assert relabel["msmt17_10"] == 2 and relabel["msmt17_2"] == 7
    # the fix: one index for both forms
    assert [camera_index(c) for c in train_ids] == test_ids
    assert camera_index("msmt17_10") == camera_index(10) == 10
    assert [camera_index(c) for c in torch.arange(15)] == test_ids
    assert camera_index(np.int64(14)) == 14 and camera_index(torch.tensor(3)) == 3
    assert camera_index("market1501_test_3") == 3 and camera_index("veri_19") == 19


@pytest.mark.parametrize("bad, exc", [("msmt17_", ValueError), ("cam", ValueError),
                                      (True, TypeError), (1.5, TypeError)])
def test_camera_index_errors(bad, exc):
    with pytest.raises(exc, match="camera id"):
        camera_index(bad)


# ---------------------------------------------------------------- MSMT17 train+val

def _fake_msmt17(root, version="MSMT17_V2"):
    """A tiny MSMT17 folder: 3 train ids (list_train + list_val), 2 test ids, cameras 1-15."""
    main = root / version
    v2 = version == "MSMT17_V2"
    tr_dir, te_dir = ("mask_train_v2", "mask_test_v2") if v2 else ("train", "test")
    lists = {"list_train.txt": [], "list_val.txt": [], "list_query.txt": [], "list_gallery.txt": []}

    def add(sub, lst, pid, cam, n):
        rel = f"{pid:04d}/{pid:04d}_{n:03d}_{cam:02d}_0303morning_{n:04d}_0.jpg"
        path = main / sub / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 16), (pid * 40, cam * 10, 0)).save(path)
        lists[lst].append(f"{rel} {pid}\n")

    for pid in range(3):
        for n, cam in enumerate((1, 11, 15)):
            add(tr_dir, "list_train.txt", pid, cam, n)
        add(tr_dir, "list_val.txt", pid, 2, 9)
    for pid in range(2):
        add(te_dir, "list_query.txt", pid, 3, 0)
        add(te_dir, "list_gallery.txt", pid, 12, 1)
        add(te_dir, "list_gallery.txt", pid, 4, 2)
    for name, lines in lists.items():
        (main / name).write_text("".join(lines))
    return main


@pytest.mark.parametrize("version", ["MSMT17_V1", "MSMT17_V2"])
def test_msmt17_trainval(tmp_path, version):
    _fake_msmt17(tmp_path, version)
    assert DATASET_REGISTRY.get("MSMT17TrainVal") is MSMT17TrainVal
    plain = MSMT17(root=str(tmp_path))
    tv = MSMT17TrainVal(root=str(tmp_path))
    assert len(plain.train) == 9  # fast-reid: list_train only
    assert len(tv.train) == 12 and tv.data is tv.train  # + list_val
    assert {p for _, p, _ in tv.train} == {p for _, p, _ in plain.train} == {
        "msmt17_0", "msmt17_1", "msmt17_2"}
    assert {c for _, _, c in tv.train} == {"msmt17_0", "msmt17_10", "msmt17_14", "msmt17_1"}
    assert all(osp.isfile(path) for path, _, _ in tv.train)
    assert tv.query == plain.query and tv.gallery == plain.gallery
    assert {c for _, _, c in tv.gallery} == {11, 3}
    # camera_index agrees between the train strings and the test ints for cameras >= 10
    assert camera_index("msmt17_11") == 11 in {c for _, _, c in tv.gallery}
    # combineall keeps its fast-reid meaning on top: + query + gallery
    combined = MSMT17TrainVal(root=str(tmp_path), combineall=True)
    assert len(combined.train) == 12 + 2 + 4
    assert MSMT17TrainVal(root=str(tmp_path), mode="gallery").data == plain.gallery


def test_msmt17_trainval_missing_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        MSMT17TrainVal(root=str(tmp_path))
    msg = str(e.value)
    for part in ("MSMT17_V2", "mask_train_v2", "list_val.txt", "list_query.txt",
                 "DATASETS.ROOT", "FASTREID_DATASETS", str(tmp_path)):
        assert part in msg
    main = _fake_msmt17(tmp_path)
    (main / "list_val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing: list_val\.txt"):
        MSMT17TrainVal(root=str(tmp_path))


# ---------------------------------------------------------------- dataset roots

def test_check_dataset_root(tmp_path):
    for name, parts in [("Market1501", ("Market-1501-v15.09.15", "bounding_box_train", "query")),
                        ("DukeMTMC", ("DukeMTMC-reID", "bounding_box_test")),
                        ("MSMT17", ("MSMT17_V1", "MSMT17_V2", "list_gallery.txt")),
                        ("VeRi", ("veri", "image_train", "image_query", "image_test"))]:
        with pytest.raises(FileNotFoundError) as e:
            check_dataset_root(name, str(tmp_path))
        assert all(p in str(e.value) for p in parts + ("DATASETS.ROOT",)), str(e.value)
    # both of fast-reid's Market-1501 layouts are accepted, names case-insensitive
    for base in (tmp_path / "Market-1501-v15.09.15", tmp_path / "flat"):
        for d in ("bounding_box_train", "query", "bounding_box_test"):
            (base / d).mkdir(parents=True)
    found = check_dataset_root("market1501", str(tmp_path))
    assert found == str(tmp_path / "Market-1501-v15.09.15")
    assert check_dataset_root("Market1501", str(tmp_path / "flat")) == str(tmp_path / "flat")
    (tmp_path / "veri" / "image_train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="missing: image_query, image_test"):
        check_dataset_root("VeRi", str(tmp_path))
    # generated on first use: nothing required
    assert check_dataset_root("SyntheticReID", str(tmp_path)) == str(tmp_path / "synthetic_reid")
    with pytest.raises(ValueError, match="not registered"):
        check_dataset_root("NoSuchSet", str(tmp_path))
    _fake_msmt17(tmp_path / "m")
    assert check_dataset_root("MSMT17TrainVal", str(tmp_path / "m")) == str(
        tmp_path / "m" / "MSMT17_V2")

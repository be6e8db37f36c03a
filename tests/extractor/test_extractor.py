"""FeatureExtractor, tools/extract_features.py and tools/search.py on tiny saved models.

A tiny untrained GLTrans (ViT-tiny, 64x32 images) and a ResNet-18 fast-reid ``Baseline`` are
saved with fast-reid's Checkpointer, with a config whose DATASETS.ROOT does not exist and whose
ImageNet file does not exist either: the extractor and the tools must need neither.
"""
import html.parser
import json
import os
import shutil
import sys
import urllib.parse

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import gltrans_plugin  # noqa: F401
from helpers import gltrans_small_cfg, resnet_cfg

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))


def _save(cfg, out, **config_changes):
    """Build ``cfg``'s model, save it as ``out/model_final.pth`` and ``cfg`` (with
    ``config_changes``) as ``out/config.yaml``; returns (config file, weights)."""
    from fastreid.modeling import build_model
    from fastreid.utils.checkpoint import Checkpointer

    torch.manual_seed(0)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    Checkpointer(build_model(cfg), out).save("model_final")
    for k, v in config_changes.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, last, v)
    config = os.path.join(out, "config.yaml")
    with open(config, "w") as f:
        f.write(cfg.dump())
    return config, os.path.join(out, "model_final.pth")


@pytest.fixture(scope="module")
def gl(tmp_path_factory):
    """Tiny GLTrans checkpoint + a config naming an absent dataset root and ImageNet file,
    with the class / camera counts left to the checkpoint; the synthetic test images."""
    from gltrans_plugin.engine import Trainer

    base = tmp_path_factory.mktemp("gl")
    data = str(base / "data")
    cfg = gltrans_small_cfg(data, "", **{
        "DATASETS.SYNTHETIC.NUM_TRAIN_IDS": 4, "DATASETS.SYNTHETIC.NUM_TEST_IDS": 4,
        "DATASETS.SYNTHETIC.IMAGES_PER_ID_CAM": 1, "MODEL.HEADS.NUM_CLASSES": 4,
        "MODEL.BACKBONE.NUM_CAMERAS": 3, "MODEL.DEVICE": "cpu"})
    absent = str(base / "no_such_root")
    config, weights = _save(cfg, str(base), **{
        "DATASETS.ROOT": absent, "MODEL.HEADS.NUM_CLASSES": 0, "MODEL.BACKBONE.NUM_CAMERAS": 0,
        "MODEL.BACKBONE.PRETRAIN": True,
        "MODEL.BACKBONE.PRETRAIN_PATH": str(base / "no_imagenet.pth")})
    loader, num_query = Trainer.build_test_loader(cfg, "SyntheticReID")  # writes the images
    items = loader.dataset.img_items
    return {"config": config, "weights": weights, "absent_root": absent, "data": data,
            "loader": loader, "paths": [x[0] for x in items], "camids": [x[2] for x in items],
            "num_query": num_query}


@pytest.fixture(scope="module")
def gl_extractor(gl):
    from gltrans_plugin import FeatureExtractor

    return FeatureExtractor(gl["config"], gl["weights"], device="cpu", normalize=False)


def _loader_features(model, loader):
    """The evaluator's path: the test loader's batches straight into the model."""
    feats, paths = [], []
    with torch.no_grad():
        for batch in loader:
            feats.append(model(batch).float().cpu())
            paths += list(batch["img_paths"])
    return torch.cat(feats), paths


# ------------------------------------------------------------------ FeatureExtractor
def test_extractor_equals_evaluator_features_gltrans(gl, gl_extractor):
    ext = gl_extractor
    assert type(ext.model).__name__ == "GLTrans"
    assert ext.cfg.MODEL.HEADS.NUM_CLASSES == 4 and ext.cfg.MODEL.BACKBONE.NUM_CAMERAS == 3
    ref, paths = _loader_features(ext.model, gl["loader"])
    assert paths == gl["paths"] and len(set(gl["camids"])) == 3
    feats = ext(paths, camids=gl["camids"])
    assert feats.dtype == torch.float32 and feats.device.type == "cpu"
    torch.testing.assert_close(feats, ref, atol=1e-6, rtol=0)
    # other batch sizes: the same features
    small = type(ext).from_model(ext.cfg, ext.model, batch_size=5, normalize=False)
    torch.testing.assert_close(small(paths, camids=gl["camids"]), ref, atol=1e-5, rtol=1e-5)
    assert not os.path.exists(gl["absent_root"])  # neither the config's root nor ImageNet


def test_extractor_equals_evaluator_features_baseline(tiny_market, tmp_path):
    from gltrans_plugin import FeatureExtractor
    from gltrans_plugin.engine import Trainer

    cfg = resnet_cfg(tiny_market, "", **{"MODEL.HEADS.NUM_CLASSES": 8})
    config, weights = _save(cfg, str(tmp_path), **{"MODEL.HEADS.NUM_CLASSES": 0})
    ext = FeatureExtractor(config, weights, device="cpu", normalize=False)
    assert type(ext.model).__name__ == "Baseline"
    loader, _ = Trainer.build_test_loader(ext.cfg, "Market1501")
    ref, paths = _loader_features(ext.model, loader)
    cams = [x[2] for x in loader.dataset.img_items]
    torch.testing.assert_close(ext(paths, camids=cams), ref, atol=1e-6, rtol=0)
    normed = FeatureExtractor.from_model(ext.cfg, ext.model)(paths)  # Baseline: no camids
    torch.testing.assert_close(normed, F.normalize(ref, dim=1), atol=1e-6, rtol=0)
    torch.testing.assert_close(normed.norm(dim=1), torch.ones(len(paths)))


def test_paths_pil_numpy_bgr_tensor_give_the_same_features(gl, gl_extractor):
    ext = gl_extractor
    paths = gl["paths"][:4]
    ref = ext(paths, camids=1)
    pils = [Image.open(p) for p in paths]
    arrays = [np.asarray(im.convert("RGB")) for im in pils]
    same = lambda x: torch.testing.assert_close(x, ref, atol=1e-6, rtol=0)  # noqa: E731
    same(ext(pils, camids=1))
    same(ext(arrays, camids=[1, 1, 1, 1]))
    same(ext(np.stack(arrays), camids=1))                       # N x H x W x 3
    same(ext([a[..., ::-1] for a in arrays], camids=1, bgr=True))
    bgr_ext = type(ext).from_model(ext.cfg, ext.model, normalize=False, bgr=True)
    same(bgr_ext([a[..., ::-1].copy() for a in arrays], camids=1))
    tensors = [ext.preprocess(p) for p in paths]
    assert tensors[0].shape == (3, 64, 32) and tensors[0].max() > 1  # 0..255, not 0..1
    same(ext(torch.stack(tensors), camids=1))                   # B x 3 x H x W
    same(ext([paths[0], pils[1], arrays[2], tensors[3]], camids=1))
    # one image alone: another batch size, the same feature up to float rounding
    torch.testing.assert_close(ext(paths[2], camids=1), ref[2:3], atol=2e-5, rtol=1e-5)
    # a tensor of another size is resized to INPUT.SIZE_TEST (values kept in 0..255)
    big = ext.preprocess(torch.full((3, 128, 64), 300.0))
    assert big.shape == (3, 64, 32) and float(big.max()) == 255.0


def test_camids_change_the_gltrans_feature(gl, gl_extractor):
    ext = gl_extractor
    path = gl["paths"][0]
    x = ext.preprocess(path)[None]
    with torch.no_grad():
        ref = ext.model({"images": x.repeat(3, 1, 1, 1), "camids": torch.tensor([0, 1, 2])})
        no_cam = ext.model({"images": x.clone()})
    feats = ext([path] * 3, camids=[0, 1, 2])
    torch.testing.assert_close(feats, ref, atol=1e-6, rtol=0)
    assert (feats[0] - feats[1]).abs().max() > 1e-4 and (feats[1] - feats[2]).abs().max() > 1e-4
    torch.testing.assert_close(ext(path), no_cam, atol=1e-6, rtol=0)   # None: no SIE id
    torch.testing.assert_close(ext(path, camids=[None]), no_cam, atol=1e-6, rtol=0)
    torch.testing.assert_close(ext(path, camids=-1), no_cam, atol=1e-6, rtol=0)
    assert (no_cam - ref[0]).abs().max() > 1e-4
    # one camera id for all == the same id per image
    torch.testing.assert_close(ext([path] * 3, camids=2), ext([path] * 3, camids=[2, 2, 2]))


def test_flip_test_and_normalisation_match_direct_computation(gl, gl_extractor):
    ext = gl_extractor
    paths = gl["paths"][:3]
    x = torch.stack([ext.preprocess(p) for p in paths])
    cams = torch.tensor([0, 1, 2])
    with torch.no_grad():
        plain = ext.model({"images": x.clone(), "camids": cams})
        flipped = ext.model({"images": x.flip(3), "camids": cams})
    flip = type(ext).from_model(ext.cfg, ext.model, flip_test=True)
    torch.testing.assert_close(flip(paths, camids=[0, 1, 2]),
                               F.normalize((plain + flipped) / 2, dim=1), atol=1e-6, rtol=0)


def test_amp_is_ignored_on_cpu(gl, gl_extractor):
    ext = gl_extractor
    paths = gl["paths"][:4]
    ref = ext(paths, camids=0)
    cpu_amp = type(ext).from_model(ext.cfg, ext.model, amp=True, normalize=False)
    torch.testing.assert_close(cpu_amp(paths, camids=0), ref, atol=1e-6, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_on_cuda_is_close_to_float32(gl, gl_extractor):
    import copy

    ext = gl_extractor
    paths = gl["paths"][:4]
    ref = ext(paths, camids=0)
    cuda_model = copy.deepcopy(ext.model).cuda()
    amp = type(ext).from_model(ext.cfg, cuda_model, amp=True)
    feats = amp(paths, camids=0)
    assert amp.device.type == "cuda" and feats.dtype == torch.float32 and feats.is_cpu
    assert (feats * F.normalize(ref, dim=1)).sum(1).min() > 0.99


def test_extractor_errors_say_what_and_how_to_fix(gl, gl_extractor, tmp_path):
    from gltrans_plugin.errors import CorruptImageError

    ext, path = gl_extractor, gl["paths"][0]
    with pytest.raises(ValueError, match="int is not an image input; give a file path"):
        ext(123)
    with pytest.raises(ValueError, match=r"image 1: dict is not an image input"):
        ext([path, {"images": 1}])
    with pytest.raises(ValueError, match=r"shape \(64, 32\); expected H x W x 3"):
        ext(np.zeros((64, 32), np.uint8))
    with pytest.raises(ValueError, match="dtype float32; expected uint8.*np.clip"):
        ext(np.zeros((64, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"shape \(64, 32, 3\); expected 3 x H x W.*permute"):
        ext(torch.zeros(64, 32, 3))
    with pytest.raises(ValueError, match="camids: 1 ids for 2 images; give one per image"):
        ext([path, path], camids=[0])
    with pytest.raises(ValueError, match="viewids: 2 ids for 1 images"):
        ext(path, viewids=[0, 1])
    with pytest.raises(ValueError, match=r"camids\[1\] = 'a': ids are 0-based ints"):
        ext([path, path], camids=[0, "a"])
    with pytest.raises(ValueError, match="the list is empty"):
        ext([])
    with pytest.raises(FileNotFoundError, match="no_such.jpg"):
        ext(str(tmp_path / "no_such.jpg"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(CorruptImageError, match="Cannot read image .*bad.jpg"):
        ext(str(bad))
    with pytest.raises(ValueError, match="batch_size=0"):
        type(ext).from_model(ext.cfg, ext.model, batch_size=0)


def test_image_listing_list_file_and_market_names(tmp_path):
    from gltrans_plugin.data.listing import camids_from_names, list_images, read_image_list

    for rel in ("b/0002_c3s1_000001_00.JPG", "a/0001_c1s1_000001_00.png", "a/x/y.bmp",
                "c.jpeg", "notes.txt", "a/x/z.gif"):
        os.makedirs(tmp_path / os.path.dirname(rel), exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = list_images(str(tmp_path))
    assert found == sorted(str(tmp_path / r) for r in ("b/0002_c3s1_000001_00.JPG",
                                                       "a/0001_c1s1_000001_00.png",
                                                       "a/x/y.bmp", "c.jpeg"))
    assert camids_from_names([found[0], found[2]]) == [0, 2]  # c1 -> 0, c3 -> 2
    with pytest.raises(ValueError, match=r"naming .*y.bmp\): no camera id can be read"):
        camids_from_names(found)
    lst = tmp_path / "list.txt"
    lst.write_text(f"# images\na/x/y.bmp 2\n\n{tmp_path / 'c.jpeg'}\nname with space.jpg\t-1\n")
    paths, cams = read_image_list(str(lst))
    assert paths == [str(tmp_path / "a/x/y.bmp"), str(tmp_path / "c.jpeg"),
                     str(tmp_path / "name with space.jpg")]
    assert cams == [2, None, -1]
    with pytest.raises(FileNotFoundError):
        list_images(str(tmp_path / "nope"))


# ------------------------------------------------------------------ tools/extract_features.py
@pytest.mark.slow
def test_extract_features_tool_folder_and_list(gl, gl_extractor, tmp_path, capsys):
    import extract_features

    src = tmp_path / "imgs"
    picks = gl["paths"][:5]
    for i, p in enumerate(picks):  # spread over sub-folders, names kept (Market form)
        d = src / f"part{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, d / os.path.basename(p))
    (src / "readme.txt").write_text("not an image")
    base = ["--config-file", gl["config"], "--weights", gl["weights"], "--device", "cpu",
            "--no-progress"]
    npz = str(tmp_path / "out" / "feats.npz")
    res = extract_features.main(base + ["--input", str(src), "--output", npz,
                                        "--camid-from-name", "market"])
    assert json.loads(capsys.readouterr().out)["images"] == 5
    z = np.load(npz)
    paths = sorted(str(src / f"part{i % 2}" / os.path.basename(p)) for i, p in enumerate(picks))
    assert list(z["paths"]) == paths and all(os.path.isabs(p) for p in z["paths"])
    cams = [int(os.path.basename(p).split("_c")[1][0]) - 1 for p in paths]
    assert z["camids"].tolist() == cams
    ref = F.normalize(gl_extractor(paths, camids=cams), dim=1)
    np.testing.assert_allclose(z["feats"], ref.numpy(), atol=1e-6, rtol=0)
    assert res["dim"] == z["feats"].shape[1] and res["camids_known"] == 5

    lst = tmp_path / "list.txt"  # a camera column on one line, --camid for the others
    lst.write_text(f"{os.path.relpath(paths[0], tmp_path)} 2\n{paths[1]}\n")
    out = tmp_path / "dir"
    res = extract_features.main(base + ["--list", str(lst), "--output-dir", str(out),
                                        "--camid", "0", "--no-normalize"])
    assert (out / "paths.txt").read_text().splitlines() == paths[:2]
    assert np.load(out / "camids.npy").tolist() == [2, 0]
    np.testing.assert_allclose(np.load(out / "feats.npy"),
                               gl_extractor(paths[:2], camids=[2, 0]).numpy(), atol=1e-6, rtol=0)
    assert res["normalized"] is False and len(res["files"]) == 3
    with pytest.raises(ValueError, match="ending in .npz"):
        extract_features.main(base + ["--list", str(lst), "--output", str(tmp_path / "x.npy")])
    assert not os.path.exists(gl["absent_root"])


# ------------------------------------------------------------------ tools/search.py
class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def _page_images(page):
    """Files the page's <img> tags point to, resolved as a browser does from its folder."""
    parser = _Images()
    parser.feed(open(page, encoding="utf-8").read())
    out = []
    for s in parser.srcs:
        u = urllib.parse.urlparse(s)
        if u.scheme == "file":
            out.append(urllib.parse.unquote(u.path))
        else:
            assert not u.scheme, s
            out.append(os.path.normpath(os.path.join(os.path.dirname(page),
                                                     urllib.parse.unquote(s))))
    return out


@pytest.mark.slow
def test_search_index_query_json_and_html(gl, gl_extractor, tmp_path, capsys):
    import search

    gallery = tmp_path / "gallery dir"   # a space: page links must be URL-quoted
    gal_paths = gl["paths"][gl["num_query"]:]
    for i, p in enumerate(gal_paths):
        d = gallery / f"cam{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, d / os.path.basename(p))
    model = ["--config-file", gl["config"], "--weights", gl["weights"], "--device", "cpu",
             "--no-progress"]
    ix_dir = str(tmp_path / "index")
    res = search.main(["index"] + model + ["--gallery", str(gallery), "--index-dir", ix_dir,
                                           "--camid-from-name", "market"])
    capsys.readouterr()
    meta = json.load(open(os.path.join(ix_dir, "meta.json")))
    assert res["images"] == len(gal_paths) == len(meta["paths"])
    assert all(os.path.isabs(p) and os.path.exists(p) for p in meta["paths"])
    names = [os.path.basename(p) for p in meta["paths"]]
    assert meta["camids"] == [int(n.split("_c")[1][0]) - 1 for n in names]
    assert meta["info"]["normalize"] is True and meta["info"]["flip_test"] is False

    queries = [meta["paths"][3], meta["paths"][7], gl["paths"][0]]  # two of them in the gallery
    page_dir = tmp_path / "pages"
    out_json = str(tmp_path / "res" / "results.json")
    topk = 4
    for mode in ("relative", "absolute", "copy"):
        page = str(page_dir / f"{mode}.html")
        res = search.main(["query"] + model + ["--index-dir", ix_dir, "--topk", str(topk),
                                               "--camid-from-name", "market", "--json",
                                               out_json, "--html", page, "--thumbnails", mode,
                                               "--query"] + queries)
        capsys.readouterr()
        refs = _page_images(page)
        assert len(refs) == len(queries) * (1 + topk)
        assert all(os.path.isfile(r) for r in refs), refs
        if mode == "copy":
            assert all(r.startswith(str(page_dir / "copy_files")) for r in refs)
        else:
            assert refs[0] == queries[0]
        text = open(page, encoding="utf-8").read()
        assert "camid 1" in text and "d=0.0000" in text and "<script" not in text

    doc = json.load(open(out_json))
    assert res["json"] == out_json and doc["metric"] == "cosine" and doc["topk"] == topk
    assert doc["gallery_size"] == len(gal_paths) and len(doc["queries"]) == 3
    q_cams = [int(os.path.basename(q).split("_c")[1][0]) - 1 for q in queries]
    g = gl_extractor(meta["paths"], camids=meta["camids"])
    qf = gl_extractor(queries, camids=q_cams)
    dist = (1 - F.normalize(qf, dim=1) @ F.normalize(g, dim=1).T).numpy()
    for i, q in enumerate(doc["queries"]):
        assert q["query"] == queries[i] and q["camid"] == q_cams[i]
        assert [h["rank"] for h in q["results"]] == list(range(1, topk + 1))
        assert set(q["results"][0]) >= {"rank", "path", "distance", "camid", "index"}
        order = np.argsort(dist[i], kind="stable")[:topk]
        np.testing.assert_allclose([h["distance"] for h in q["results"]], dist[i][order],
                                   atol=1e-5)
        for h in q["results"]:
            assert meta["paths"][h["index"]] == h["path"]
            assert meta["camids"][h["index"]] == h["camid"]
    for i in (0, 1):  # a query that is in the gallery finds itself first
        top = doc["queries"][i]["results"][0]
        assert top["path"] == queries[i] and top["distance"] < 1e-5
    assert not os.path.exists(gl["absent_root"])  # the config's DATASETS.ROOT never touched


def test_search_query_without_index_and_with_another_model(gl, tmp_path):
    import search

    model = ["--config-file", gl["config"], "--weights", gl["weights"], "--device", "cpu"]
    with pytest.raises(FileNotFoundError, match="meta.json not found"):
        search.main(["query"] + model + ["--index-dir", str(tmp_path / "none"), "--query",
                                         gl["paths"][0]])
    from gltrans_plugin.evaluation.index import RetrievalIndex

    RetrievalIndex(7, "cosine", info={"normalize": True}).add(
        torch.randn(2, 7), ["a.jpg", "b.jpg"]).save(str(tmp_path / "ix7"))
    with pytest.raises(ValueError, match="model gives 960-d features, the index holds 7-d"):
        search.main(["query"] + model + ["--no-progress", "--index-dir", str(tmp_path / "ix7"),
                                         "--query", gl["paths"][0]])
    with pytest.raises(FileNotFoundError):
        search.main(["query"] + model + ["--index-dir", str(tmp_path / "ix7"), "--query",
                                         str(tmp_path / "missing.jpg")])


def test_search_subcommands_help(capsys):
    import search

    for args in (["--help"], ["index", "--help"], ["query", "--help"]):
        with pytest.raises(SystemExit) as e:
            search.parse_args(args)
        assert e.value.code == 0
        assert "usage:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # no subcommand
        search.parse_args(["--index-dir", "x"])
    assert e.value.code == 2


@pytest.mark.slow
def test_tools_run_as_programs_with_help_and_one_line_errors(tmp_path):
    import subprocess

    # (--help of every tool as a program: tests/tools/test_tools.py::test_every_tool_has_help)
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "search.py"), "query",
                        "--config-file", "unused.yml", "--index-dir", str(tmp_path / "none"),
                        "--query", "q.jpg"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "meta.json not found" in r.stderr


def test_search_drops_the_query_camera_and_marks_identities_from_names():
    from gltrans_plugin.search import build_index, query_index

    class Stub:  # features by name: identity k -> direction k, camera -> small tilt
        flip_test, normalize = False, True

        class cfg:
            TEST = type("T", (), {"METRIC": "cosine"})
            INPUT = type("I", (), {"SIZE_TEST": [64, 32]})
            MODEL = type("M", (), {"META_ARCHITECTURE": "GLTrans"})

        def __call__(self, paths, camids=None, progress=False):
            out = torch.zeros(len(paths), 8)
            for i, p in enumerate(paths):
                pid, cam = (int(v) for v in os.path.basename(p)[:-4].split("_c"))
                out[i, pid % 8], out[i, 7] = 1.0, 0.3 * cam
            return out

    gallery = ["/g/0001_c1.jpg", "/g/0001_c2.jpg", "/g/0002_c1.jpg", "/g/0000_c2.jpg"]
    index = build_index(Stub(), gallery, camids=[0, 1, 0, 1])
    assert index.info["identities"] == "market names" and index.pids.tolist() == [1, 1, 2, 0]
    q = ["/q/0001_c1.jpg"]
    hits = query_index(Stub(), index, q, camids=[0], topk=3)[0]["results"]
    assert [h["path"] for h in hits][:2] == gallery[:2] and hits[0]["match"] is True
    assert [h["match"] for h in hits] == [True, True, False]
    hits = query_index(Stub(), index, q, camids=[0], topk=3, exclude_same_camera=True)
    res = hits[0]["results"]
    assert [h["camid"] for h in res] == [1, 1] and [h["rank"] for h in res] == [1, 2]
    assert [h["match"] for h in res] == [True, False]  # pid 0 (a distractor) is never right

"""A hostile but realistic user: names, damaged files, configs, list files, index folders and
odd images.  One test per case of the table "Names, damaged files, configs and images" in
docs/reliability.md; each asserts the one line the user gets (or that the input now works)."""
import errno
import json
import logging
import os
import struct
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import gltrans_plugin  # noqa: F401  (patches first)
from gltrans_plugin import errors
from gltrans_plugin.checkpoint import CheckpointError, load_file, load_state_dict
from gltrans_plugin.config import ConfigFileError, setup_cfg
from gltrans_plugin.data.checks import DatasetError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))
DEMO = os.path.join(REPO, "configs", "GLTrans", "synthetic_demo.yml")


def _line(exc):
    """The one line and exit code the programs print for ``exc``."""
    line, code = errors.format_error(exc)
    assert "\n" not in line and "this is a bug" not in line, line
    return line, code


def _image(path, colour=(120, 60, 30), size=(16, 32)):
    Image.new("RGB", size, colour).save(path, format="JPEG")
    return str(path)


class _MeanModel(torch.nn.Module):
    """Features = mean colour / brightest pixel: a black image gives 0 / 0 = NaN."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(3))

    def forward(self, batch):
        x = batch["images"] if isinstance(batch, dict) else batch
        return x.mean((2, 3)) / x.amax((1, 2, 3))[:, None] * self.scale


@pytest.fixture(scope="module")
def mean_extractor():
    from gltrans_plugin.extractor import FeatureExtractor

    cfg = setup_cfg("", ["INPUT.SIZE_TEST", "[32, 16]", "MODEL.DEVICE", "cpu",
                         "MODEL.WEIGHTS", "mean.pth"])
    return FeatureExtractor.from_model(cfg, _MeanModel(), normalize=False)


# ============================================================================ camera names
def _reader(folder):
    from fastreid.data.datasets.market1501 import Market1501

    ds = Market1501.__new__(Market1501)  # process_dir alone: reads names, not images
    return ds.process_dir(str(folder), is_train=False)


def test_market_reader_camera_c10_is_an_error_naming_the_file(tmp_path):
    good = tmp_path / "0001_c1s1_000001_00.jpg"
    good.write_bytes(b"")
    (tmp_path / "0001_c10s1_000999_00.jpg").write_bytes(b"")
    with pytest.raises(DatasetError) as e:
        _reader(tmp_path)  # fast-reid's own pattern read c10 as camera 1, silently
    line, code = _line(e.value)
    assert code == 2 and line.startswith("error: camera 10 is outside Market1501's range 1..6 ")
    assert f"({tmp_path / '0001_c10s1_000999_00.jpg'}): rename it" in line


def test_every_reader_parses_market_names_alike(tmp_path):
    from gltrans_plugin.data.folder import read_market_folder
    from gltrans_plugin.data.listing import camids_from_names

    names = ["0001_c01s1_000001_00.jpg", "0002_c3s1_000001_00.jpg"]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    paths = [str(tmp_path / n) for n in names]
    fastreid = sorted((p, pid, cam) for p, pid, cam in _reader(tmp_path))
    assert fastreid == [(paths[0], 1, 0), (paths[1], 2, 2)]  # fast-reid read c01 as camera 0
    assert read_market_folder(str(tmp_path)) == fastreid
    assert camids_from_names(paths) == [0, 2]
    assert camids_from_names([str(tmp_path / "0003_c12s1_000001_00.jpg")]) == [11]


# ============================================================================ checkpoints
def _corrupt_tensor_bytes(path, n=64):
    """Overwrite ``n`` bytes in the middle of the largest tensor entry of a torch zip file."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset)
        name_len, extra_len = struct.unpack("<HH", f.read(30)[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len + info.file_size // 2)
        f.write(b"\xff" * n)


def test_checkpoint_with_corrupted_bytes_names_the_tensor(tmp_path):
    path = tmp_path / "model_final.pth"
    torch.save({"model": {"backbone.pos_embed": torch.randn(64, 32),
                          "heads.bias": torch.zeros(4)}, "iteration": 7}, path)
    _corrupt_tensor_bytes(path)
    with pytest.raises(CheckpointError) as e:
        load_file(str(path), key="MODEL.WEIGHTS")
    line, code = _line(e.value)
    assert code == 2 and line.startswith(
        "error: the checkpoint is damaged: tensor 'model.backbone.pos_embed' (archive entry ")
    assert "fails its CRC-32 check" in line and f"({path}, MODEL.WEIGHTS): copy the file" in line


def test_checkpoint_with_nan_weights_names_the_tensor(tmp_path):
    path = tmp_path / "model_final.pth"
    w = torch.randn(8, 4)
    w[2, 1] = float("nan")
    w[5, 0] = float("inf")
    torch.save({"model": {"backbone.a.weight": torch.randn(3), "heads.w": w}}, path)
    with pytest.raises(CheckpointError) as e:
        load_file(str(path), key="MODEL.WEIGHTS")
    assert str(e.value).startswith(
        f"tensor 'model.heads.w' holds 2 NaN / infinite value(s) of 32: the features of a model "
        f"with these weights would be NaN ({path}, MODEL.WEIGHTS): the file is damaged or was "
        f"saved from a run that diverged")


def test_non_finite_features_name_the_image_and_the_weights(tmp_path, mean_extractor):
    from gltrans_plugin.errors import NonFiniteFeaturesError
    from gltrans_plugin.evaluation.inference import inference_on_dataset

    ok, black = _image(tmp_path / "ok.jpg"), _image(tmp_path / "black.jpg", (0, 0, 0))
    with pytest.raises(NonFiniteFeaturesError) as e:
        mean_extractor([ok, black])
    line, code = _line(e.value)
    assert code == 2 and line == (
        f"error: the model gives NaN / infinite features for 1 of 2 images of a batch ({black}) "
        f"(weights mean.pth): if every image fails, the weights are at fault (a damaged "
        f"checkpoint or a diverged run: use another); if only some, those images are (check "
        f"or remove them); under AMP (--amp, SOLVER.AMP.ENABLED) try float32")

    class _Keep:
        def reset(self):
            self.seen = []

        def process(self, inputs, outputs):
            self.seen.append(outputs)

        def evaluate(self):
            return {}

    batch = {"images": torch.stack([mean_extractor.preprocess(p) for p in (ok, black)]),
             "img_paths": [ok, black], "targets": torch.tensor([0, 1]),
             "camids": torch.tensor([0, 0])}
    mean_extractor.model.train()
    with pytest.raises(NonFiniteFeaturesError, match=rf"1 of 2 images of a batch \({black}\)"):
        inference_on_dataset(mean_extractor.model, [batch], _Keep(), progress=False)
    # the error (its traceback still held by pytest) left no state behind
    assert torch.is_grad_enabled() and mean_extractor.model.training
    mean_extractor.model.eval()


def test_eval_with_unexpected_keys_fails_unless_opted_in(tmp_path):
    model = torch.nn.Linear(4, 2)
    sd = dict(model.state_dict())
    sd.update({"heads.necks.local.bn.weight": torch.ones(4), "backbone.ptl.0.w": torch.ones(2)})
    with pytest.raises(CheckpointError) as e:
        load_state_dict(model, sd, "gl.pth", "MODEL.WEIGHTS")
    assert str(e.value) == (
        "the checkpoint holds 2 weights the model built from the config does not have "
        "(heads.necks.local.bn.weight, backbone.ptl.0.w): it is from another architecture, and "
        "evaluating would drop them (gl.pth, MODEL.WEIGHTS): give the config it was trained "
        "with (its OUTPUT_DIR/config.yaml), or set TEST.ALLOW_MISSING_KEYS True to evaluate "
        "the matching weights alone")
    assert load_state_dict(model, sd, "gl.pth", allow_missing=True) == []  # the opt-in


# ============================================================================ tools: names, output
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny untrained GLTrans (demo config, ViT-tiny, 64x32) saved as config + weights."""
    from fastreid.modeling import build_model

    out = tmp_path_factory.mktemp("tiny_run")
    opts = ["INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]",
            "MODEL.HEADS.NUM_CLASSES", "4", "MODEL.BACKBONE.NUM_CAMERAS", "3",
            "MODEL.DEVICE", "cpu", "DATASETS.ROOT", str(out / "absent")]
    cfg = setup_cfg(DEMO, opts)
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, out / "model.pth")
    (out / "config.yaml").write_text(cfg.dump())
    return str(out / "config.yaml"), str(out / "model.pth")


@pytest.mark.slow
def test_extract_features_non_utf8_name_end_to_end(tiny_run, tmp_path, capsys):
    import extract_features

    src = tmp_path / "imgs"
    src.mkdir()
    _image(src / "a.jpg")
    raw = os.path.join(os.fsencode(src), b"caf\xe9_c2.jpg")  # Latin-1 bytes, not UTF-8
    _image(raw.decode("utf-8", "surrogateescape"), (30, 90, 200))
    out = tmp_path / "feats"
    extract_features.main(["--config-file", tiny_run[0], "--weights", tiny_run[1], "--device",
                           "cpu", "--no-progress", "--input", str(src), "--output-dir",
                           str(out)])
    assert json.loads(capsys.readouterr().out)["images"] == 2
    lines = (out / "paths.txt").read_bytes().splitlines()
    assert lines == [os.path.join(os.fsencode(src), b"a.jpg"), raw]  # the name's own bytes
    assert np.load(out / "feats.npy").shape[0] == 2 and np.load(out / "camids.npy").size == 2
    assert sorted(os.listdir(out)) == ["camids.npy", "feats.npy", "paths.txt"]  # no temp file


def test_feature_files_are_written_as_a_set(tmp_path, monkeypatch):
    import extract_features

    out = tmp_path / "feats"
    calls = []

    def fsync(fd):  # the disk fails while the third file is synced
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="I/O error"):
        extract_features.write_features(np.ones((2, 4)), ["/x/a.jpg", "/x/b.jpg"], None,
                                        output_dir=str(out))
    assert os.listdir(out) == []  # not feats.npy without its paths.txt


@pytest.mark.parametrize("case", ["extension", "output-dir is a file", "output parent is a file"])
def test_extract_features_output_checked_before_any_work(tmp_path, case, monkeypatch):
    import extract_features

    src = tmp_path / "imgs"
    src.mkdir()
    _image(src / "a.jpg")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = {"extension": ["--output", str(tmp_path / "feats.npy")],
           "output-dir is a file": ["--output-dir", str(blocker)],
           "output parent is a file": ["--output", str(blocker / "f.npz")]}[case]
    monkeypatch.setattr("gltrans_plugin.extractor.FeatureExtractor.__init__",
                        lambda *a, **k: pytest.fail("features computed before the check"))
    with pytest.raises(Exception) as e:
        extract_features.main(["--config-file", "absent.yml", "--input", str(src)] + out)
    line, code = _line(e.value)
    assert code == 2
    if case == "extension":
        assert "give a file name ending in .npz" in line
    else:
        assert line.startswith(f"error: {out[0]}: a file is in the way where a folder is needed "
                               f"({blocker}): move or remove the file")


# ============================================================================ worker processes
def _corrupt_set(tmp_path, skip):
    from torchvision import transforms as T

    from gltrans_plugin.data.common import RobustCommDataset

    bad = tmp_path / "0001_c1s1_000001_00.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    good = _image(tmp_path / "0002_c1s1_000001_00.jpg")
    tf = T.Compose([T.Resize((32, 16)), T.PILToTensor()])
    return RobustCommDataset([(str(bad), 1, 0), (good, 2, 0)], tf, relabel=False,
                             skip_corrupt=skip), str(bad)


def test_worker_error_is_the_original_one_line(tmp_path):
    data, bad = _corrupt_set(tmp_path, skip=False)
    loader = torch.utils.data.DataLoader(data, batch_size=1, num_workers=1)
    with pytest.raises(errors.CorruptImageError) as e:
        next(iter(loader))
    assert "in DataLoader worker process 0" in str(e.value)  # torch's wrapper
    line, code = _line(e.value)
    assert code == 2 and line.startswith(f"error: Cannot read image {bad} (")
    assert "Traceback" not in line and "Caught" not in line and "worker process" not in line
    assert line.endswith("or set DATALOADER.SKIP_CORRUPT True to skip unreadable images with a "
                         "warning.")


def test_skip_corrupt_warns_once_across_workers(tmp_path):
    data, bad = _corrupt_set(tmp_path, skip=True)
    log_file = tmp_path / "warnings.log"
    handler = logging.FileHandler(log_file)  # inherited by the forked workers
    log = logging.getLogger("gltrans_plugin.data.common")
    log.addHandler(handler)
    try:
        for _ in range(2):  # two epochs, two workers, the bad image in each worker's batch
            loader = torch.utils.data.DataLoader(data, batch_size=1, num_workers=2,
                                                 sampler=[0, 0, 1, 0],
                                                 multiprocessing_context="fork")
            assert len(list(loader)) == 4
    finally:
        log.removeHandler(handler)
        handler.close()
    lines = [ln for ln in log_file.read_text().splitlines() if bad in ln]
    assert len(lines) == 1, lines


# ============================================================================ configs
@pytest.mark.parametrize("name, text, message", [
    ("tag.yml", 'MODEL:\n  DEVICE: !!python/object/apply:os.system ["echo hi"]\n',
     "the yaml tag !!python/object/apply:os.system asks to build a Python object; config "
     "files hold plain values only (nothing in the file was run) ({path}:2): remove the tag"),
    ("empty.yml", "", "the config file is empty (no keys) ({path}): write the keys to set"),
    ("tab.yml", "MODEL:\n\tDEVICE: cpu\n",
     "a tab character in the indentation (yaml allows spaces only) ({path}:2): indent with "
     "spaces"),
    ("list.yml", "- MODEL\n- SOLVER\n",
     "the file's top level is a list, not a mapping of config keys ({path}:1): write the keys"),
])
def test_bad_config_file_is_one_line_naming_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigFileError) as e:
        setup_cfg(str(path))
    line, code = _line(e.value)
    assert code == 2 and line.startswith("error: " + message.format(path=path)), line


def test_base_cycle_names_the_cycle(tmp_path):
    (tmp_path / "a.yml").write_text("_BASE_: b.yml\n")
    (tmp_path / "b.yml").write_text("_BASE_: a.yml\nSEED: 1\n")
    with pytest.raises(ConfigFileError) as e:
        setup_cfg(str(tmp_path / "a.yml"))
    line, code = _line(e.value)
    a, b = tmp_path / "a.yml", tmp_path / "b.yml"
    assert code == 2 and line == (f"error: the _BASE_ files include each other in a cycle ({a} "
                                  f"-> {b} -> {b.parent / 'a.yml'}) ({b}): remove the _BASE_ "
                                  f"that closes the cycle")


def test_missing_base_is_relative_to_the_including_file(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    leaf = tmp_path / "configs" / "leaf.yml"
    leaf.write_text("_BASE_: Base.yml\nSEED: 1\n")
    (tmp_path / "Base.yml").write_text("SEED: 2\n")  # beside the working directory, not leaf
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigFileError) as e:
        setup_cfg("configs/leaf.yml")
    line, code = _line(e.value)
    assert code == 2 and line == (
        f"error: _BASE_ file 'Base.yml' not found (looked for {tmp_path}/configs/Base.yml) "
        f"(configs/leaf.yml): a _BASE_ path is relative to the file that includes it "
        f"({tmp_path}/configs), not to the working directory: fix the path")


# ============================================================================ list files
def test_list_files_with_bom_and_crlf_are_read(tmp_path):
    from gltrans_plugin.data.folder import read_list
    from gltrans_plugin.data.listing import read_image_list

    _image(tmp_path / "a.jpg")
    _image(tmp_path / "b.jpg")
    (tmp_path / "train.txt").write_bytes("\ufeffa.jpg 1 0\r\nb.jpg 2 1\r\n".encode("utf-8"))
    items, _, _ = read_list(str(tmp_path / "train.txt"))
    assert items == [(str(tmp_path / "a.jpg"), 1, 0), (str(tmp_path / "b.jpg"), 2, 1)]
    (tmp_path / "images.txt").write_bytes("\ufeffa.jpg\t3\r\nb.jpg\r\n".encode("utf-8"))
    assert read_image_list(str(tmp_path / "images.txt")) == (
        [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")], [3, None])


def test_duplicate_list_lines_warn_in_train_and_fail_in_test(tmp_path, caplog):
    from gltrans_plugin.data.folder import ReIDFolder
    from gltrans_plugin.data.listing import read_image_list

    _image(tmp_path / "a.jpg")
    _image(tmp_path / "b.jpg")
    twice = "a.jpg 1 0\nb.jpg 1 1\na.jpg 1 0\n"
    (tmp_path / "t.txt").write_text(twice)
    with caplog.at_level(logging.WARNING, logger="gltrans_plugin.data.folder"):
        ReIDFolder(train_list=str(tmp_path / "t.txt"))
    assert f"{tmp_path / 't.txt'}:3: line 'a.jpg 1 0' repeats line 1" in caplog.text
    (tmp_path / "q.txt").write_text(twice)
    (tmp_path / "g.txt").write_text("b.jpg 1 1\n")
    with pytest.raises(DatasetError) as e:
        ReIDFolder(query_list=str(tmp_path / "q.txt"), gallery_list=str(tmp_path / "g.txt"))
    assert str(e.value) == (f"line 'a.jpg 1 0' repeats line 1: the image would count twice in "
                            f"the metrics ({tmp_path / 'q.txt'}:3): remove one of the two lines "
                            f"from the query list")
    (tmp_path / "images.txt").write_text("a.jpg\nb.jpg\n./a.jpg 2\n")
    with pytest.raises(DatasetError, match=r"listed twice, on lines 1 and 3 \(.*images.txt:3\)"):
        read_image_list(str(tmp_path / "images.txt"))


# ============================================================================ index folders
@pytest.fixture
def index_dir(tmp_path):
    from gltrans_plugin.evaluation.index import RetrievalIndex

    folder = tmp_path / "index"
    RetrievalIndex(8).add(torch.randn(5, 8), [f"/g/{i}.jpg" for i in range(5)],
                          camids=[0, 1, 2, 0, 1]).save(str(folder))
    return folder


def _damage(folder, case):
    meta_path, faiss_path = folder / "meta.json", folder / "index.faiss"
    meta = json.loads(meta_path.read_text())
    if case == "truncated index.faiss":
        faiss_path.write_bytes(faiss_path.read_bytes()[:50])
    elif case == "invalid JSON":
        meta_path.write_text(meta_path.read_text()[:-10])
    elif case == "meta.json without dim":
        del meta["dim"]
    elif case == "short camera ids":
        meta["camids"] = meta["camids"][:3]
    elif case == "wrong dim":
        meta["dim"] = 16
    if case not in ("truncated index.faiss", "invalid JSON"):
        meta_path.write_text(json.dumps(meta))
    return str(faiss_path if case == "truncated index.faiss" else meta_path)


@pytest.mark.parametrize("case, what", [
    ("truncated index.faiss", "index.faiss cannot be read, truncated or damaged ("),
    ("invalid JSON", "meta.json is not valid JSON (Unterminated string starting at: line 1, "),
    ("meta.json without dim", "meta.json lacks the field(s) dim "),
    ("short camera ids", "meta.json lists 3 camids for 5 paths "),
    ("wrong dim", "meta.json says dim 16 but index.faiss holds 8-d vectors: the two files are "
                  "not from one save "),
])
def test_damaged_index_folder_names_the_file(index_dir, case, what):
    from gltrans_plugin.evaluation.index import IndexFolderError, RetrievalIndex

    path = _damage(index_dir, case)
    with pytest.raises(IndexFolderError) as e:
        RetrievalIndex.load(str(index_dir))
    line, code = _line(e.value)
    assert code == 2 and line.startswith("error: " + what), line
    assert f"({path}): build the index again: tools/search.py index" in line
    assert "model" not in line.split(": build")[0]  # the folder is at fault, not the model


# ============================================================================ paths in the way
@pytest.mark.parametrize("case", ["OUTPUT_DIR is a file", "a folder under a file",
                                  "FASTREID_DATASETS is a file"])
def test_a_file_where_a_folder_is_needed_is_named(tmp_path, case):
    from gltrans_plugin.data.checks import check_dataset_root

    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    with pytest.raises(OSError if case != "FASTREID_DATASETS is a file" else DatasetError) as e:
        if case == "OUTPUT_DIR is a file":
            os.makedirs(blocker, exist_ok=True)  # what fast-reid does with OUTPUT_DIR
        elif case == "a folder under a file":
            open(blocker / "log.txt", "w")  # noqa: SIM115  (the exporter's output folder)
        else:
            check_dataset_root("SyntheticReID", str(blocker))
    line, code = _line(e.value)
    assert code == 2
    if case == "FASTREID_DATASETS is a file":
        assert line == (f"error: the dataset root is a file, not a folder ({blocker}): set "
                        f"DATASETS.ROOT (or the environment variable FASTREID_DATASETS) to the "
                        f"folder that holds the datasets")
    else:
        assert line == (f"error: a file is in the way where a folder is needed ({blocker}): "
                        f"move or remove the file, or choose another folder (OUTPUT_DIR, the "
                        f"tool's output option)")


# ============================================================================ FeatureExtractor
@pytest.mark.parametrize("case, message", [
    ("empty crop", "image 0 is empty (0 x 64 pixels) (image 0): give a crop of at least one "
                   "pixel each way"),
    ("NaN input", "image 0 holds 1 NaN / infinite pixel values (image 0): give finite pixel "
                  "values (0..255)"),
    ("0..1 tensor", "image 0 is a float tensor with every value in 0..1 (max 0.9); the model "
                    "takes 0..255 pixels (image 0): multiply it by 255, or pass value_range=1"),
])
def test_extractor_rejects_ambiguous_or_empty_input(mean_extractor, case, message):
    from gltrans_plugin.extractor import ImageInputError

    t = torch.full((3, 32, 16), 0.9)
    if case == "NaN input":
        t = torch.full((3, 32, 16), 100.0)
        t[1, 2, 3] = float("nan")
    image = np.zeros((0, 64, 3), np.uint8) if case == "empty crop" else t
    with pytest.raises(ImageInputError) as e:
        mean_extractor(image)
    assert str(e.value).startswith(message), str(e.value)


def test_extractor_takes_a_0_to_1_tensor_when_told(mean_extractor):
    t = torch.rand(3, 32, 16) * 0.8 + 0.1
    np.testing.assert_allclose(mean_extractor(t, value_range=1).numpy(),
                               mean_extractor(t * 255).numpy(), rtol=1e-6)


def test_folder_given_as_an_image_is_named(mean_extractor, tmp_path):
    from gltrans_plugin.extractor import ImageInputError

    with pytest.raises(ImageInputError) as e:
        mean_extractor(str(tmp_path))
    assert str(e.value) == (f"a folder was given as an image ({tmp_path}): give image files; "
                            f"for every image under a folder use --input DIR (tools) or "
                            f"list_images(folder)")


@pytest.mark.parametrize("case", ["dangling", "self-looping"])
def test_broken_symlink_in_a_folder_is_named(tmp_path, case):
    from gltrans_plugin.data.listing import ImageInputError, list_images

    _image(tmp_path / "a.jpg")
    link = tmp_path / "b.jpg"
    os.symlink(str(tmp_path / "gone.jpg") if case == "dangling" else str(link), link)
    with pytest.raises(ImageInputError) as e:
        list_images(str(tmp_path))
    why = (f"points to {tmp_path / 'gone.jpg'}, which does not exist" if case == "dangling"
           else "loops (it leads back to itself)")
    assert str(e.value) == (f"broken symbolic link: it {why} ({link}): fix its target or "
                            f"remove the link")

"""Model cards: what produced a checkpoint, next to it, and the check that a config fits it.

A training run writes ``OUTPUT_DIR/model_card.json`` (``write_card``) for every checkpoint of
that folder (``model_final.pth``, ``model_XXXX.pth``): the plugin, fast-reid, torch and timm
versions and the git commit of the code (if any, with a ``dirty`` flag), the hash of the recipe
(the config without the keys that only say where or how fast it ran), the pretrained weights
(timm tag / Hugging Face repo and snapshot, or the file, with its sha256), the datasets with
their image / identity / camera counts, seed, epochs, final metrics, the test feature's size,
the input size and normalisation, and the SIE table.

``check_card(cfg, checkpoint)`` reads the card of a checkpoint's folder, logs what it says and
returns a warning for each setting where the config given disagrees with it (input size,
normalisation, test feature, SIE cameras, training datasets); ``compare_cards`` lists the
differences between two cards.

``known_sizes(name)`` / ``sizes_without_data(cfg)``: the training identities and cameras of the
public datasets as their papers and fast-reid's readers give them, so a model of a dataset
config can be built (a report, an export) without that dataset on disk.
"""
import datetime
import hashlib
import json
import logging
import os
import subprocess

from .checkpoint import atomic_open

logger = logging.getLogger(__name__)

__all__ = [
    "CARD_FILE",
    "KNOWN_DATASETS",
    "build_card",
    "card_path",
    "check_card",
    "compare_cards",
    "config_sha256",
    "describe_card",
    "known_sizes",
    "read_card",
    "sizes_without_data",
    "write_card",
]

CARD_FILE = "model_card.json"
CARD_FORMAT = "gltrans-model-card/1"

# Training split of the public datasets: identities (NUM_CLASSES), cameras (the SIE table rows
# fast-reid's 0-based camera ids need: NUM_CAMERAS) and images, from the datasets' papers and
# fast-reid's readers (camera ids "c1".."c6" etc. minus 1).  MSMT17 (fast-reid's reader without
# combineall) trains on list_train only, MSMT17TrainVal on list_train + list_val: the same
# 1,041 identities.
KNOWN_DATASETS = {
    # Zheng et al., ICCV 2015: 751 training identities, 12,936 images, 6 cameras
    "Market1501": {"NUM_CLASSES": 751, "NUM_CAMERAS": 6, "images": 12936},
    # Zheng et al., ICCV 2017 (DukeMTMC-reID): 702 identities, 16,522 images, 8 cameras
    "DukeMTMC": {"NUM_CLASSES": 702, "NUM_CAMERAS": 8, "images": 16522},
    # Wei et al., CVPR 2018: 1,041 training identities (32,621 images with list_val), 15 cameras
    "MSMT17": {"NUM_CLASSES": 1041, "NUM_CAMERAS": 15},
    "MSMT17TrainVal": {"NUM_CLASSES": 1041, "NUM_CAMERAS": 15, "images": 32621},
    # Liu et al., ECCV 2016 / ICME 2016 (VeRi-776): 576 training vehicles, 37,778 images,
    # 20 cameras
    "VeRi": {"NUM_CLASSES": 576, "NUM_CAMERAS": 20, "images": 37778},
    # the same with viewpoint labels (a few unlabelled images may be left out)
    "VeRiViews": {"NUM_CLASSES": 576, "NUM_CAMERAS": 20},
}

# Keys that say where or how fast a run ran, not what it trained: left out of the recipe hash.
_MACHINE_KEYS = ("OUTPUT_DIR", "DATASETS.ROOT", "MODEL.DEVICE", "DATALOADER.NUM_WORKERS",
                 "MODEL.WEIGHTS", "MODEL.BACKBONE.PRETRAIN_CACHE", "TEST.IMS_PER_BATCH",
                 "TEST.EVAL_DEVICE", "TEST.CHUNK_SIZE", "CUDNN_BENCHMARK")


# ----------------------------------------------------------------------------- datasets
def known_sizes(dataset_name):
    """{"NUM_CLASSES": identities, "NUM_CAMERAS": cameras} of a public dataset's training
    split (``KNOWN_DATASETS``), or {} for a dataset whose sizes only its files can tell."""
    sizes = KNOWN_DATASETS.get(str(dataset_name), {})
    return {k: sizes[k] for k in ("NUM_CLASSES", "NUM_CAMERAS") if k in sizes}


def sizes_without_data(cfg):
    """The sizes the trainer would fill from the data, for the training datasets
    (DATASETS.NAMES) of ``cfg`` without reading them: identities and SIE camera rows summed over
    the datasets (each its own rows, as the trainer lays them out).  {} when one of them is
    not a known public dataset."""
    sizes = [known_sizes(n) for n in cfg.DATASETS.NAMES]
    if not sizes or not all(sizes):
        return {}
    return {k: sum(s[k] for s in sizes) for k in ("NUM_CLASSES", "NUM_CAMERAS")}


def dataset_stats(cfg):
    """{"train": [...], "test": [...]}: per dataset, its images, identities and cameras (test:
    query and gallery apart), read with the plugin's dataset builder (cached per start-up)."""
    from .data import build_dataset

    def count(items):
        return {"images": len(items), "identities": len({x[1] for x in items}),
                "cameras": len({x[2] for x in items})}

    out = {"train": [], "test": []}
    for name in cfg.DATASETS.NAMES:
        out["train"].append(dict(name=name, **count(build_dataset(cfg, name).train)))
    for name in cfg.DATASETS.TESTS:
        data = build_dataset(cfg, name)
        out["test"].append({"name": name, "query": count(data.query),
                            "gallery": count(data.gallery)})
    return out


# ----------------------------------------------------------------------------- writing
def config_sha256(cfg):
    """sha256 of the recipe: ``cfg`` as yaml without the keys of ``_MACHINE_KEYS``."""
    c = cfg.clone()
    c.defrost()
    for key in _MACHINE_KEYS:
        *path, last = key.split(".")
        node = c
        for p in path:
            node = node.get(p, {})
        node.pop(last, None)
    return hashlib.sha256(c.dump().encode()).hexdigest()


def _versions():
    import importlib
    import importlib.metadata as metadata

    out = {"gltrans_plugin": importlib.import_module(__package__).__version__}
    for dist in ("fastreid", "torch", "timm", "huggingface_hub"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _git():
    """{"commit": sha, "dirty": bool} of the repository holding the plugin, or None."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", here, "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _feature_dim(cfg, model):
    """The test feature's size: the model's own (GLTrans: ``feat_dim``), else fast-reid's head
    keys (EMBEDDING_DIM, else the backbone's FEAT_DIM)."""
    if model is not None and hasattr(type(model), "feat_dim"):
        return int(model.feat_dim)
    return int(cfg.MODEL.HEADS.EMBEDDING_DIM or cfg.MODEL.BACKBONE.FEAT_DIM)


def _sie(cfg, model):
    bb = cfg.MODEL.BACKBONE
    rows = None
    table = getattr(getattr(model, "backbone", None), "sie_embed", None)
    if model is not None:  # the built table; 0: the model has none (a backbone without SIE)
        rows = int(table.shape[0]) if table is not None else 0
    elif bb.SIE_CAMERA or bb.SIE_VIEW:
        rows = (int(bb.NUM_CAMERAS) if bb.SIE_CAMERA else 1) * (int(bb.NUM_VIEWS)
                                                               if bb.SIE_VIEW else 1)
    return {"camera": bool(bb.SIE_CAMERA), "view": bool(bb.SIE_VIEW),
            "num_cameras": int(bb.NUM_CAMERAS), "num_views": int(bb.NUM_VIEWS),
            "table_rows": rows, "coefficient": float(bb.SIE_COE)}


def _plain(d):
    if isinstance(d, dict):
        return {str(k): _plain(v) for k, v in d.items()}
    try:
        return float(d)
    except (TypeError, ValueError):
        return d


def build_card(cfg, results=None, *, model=None, datasets=None, iteration=None,
               checkpoint=""):
    """The card of a run of ``cfg`` as a dict (see the module doc).

    ``results``: the final test metrics (fast-reid's dict, percent) or None (training not
    finished); ``model``: the trained model (feature size, SIE table) or None (from the config);
    ``datasets``: ``dataset_stats``' dict, or None to count them now; ``iteration``: the
    iterations run; ``checkpoint``: a file whose sha256 the card records ("" = none)."""
    model = getattr(model, "module", model)  # DistributedDataParallel -> the model
    bb = cfg.MODEL.BACKBONE
    pretrained = {"enabled": bool(bb.PRETRAIN), "spec": str(bb.PRETRAIN_PATH)}
    if bb.PRETRAIN:
        from .modeling.pretrained import source_for_card

        pretrained.update(source_for_card(str(bb.PRETRAIN_PATH), str(bb.PRETRAIN_CACHE)) or {})
    if datasets is None:
        try:
            datasets = dataset_stats(cfg)
        except (OSError, ValueError, AssertionError, KeyError) as e:
            logger.warning("Model card: the datasets could not be counted (%s).", e)
            datasets = {"train": [{"name": n} for n in cfg.DATASETS.NAMES],
                        "test": [{"name": n} for n in cfg.DATASETS.TESTS]}
    card = {
        "format": CARD_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "git": _git(),
        "config": {"sha256": config_sha256(cfg), "file": "config.yaml"},
        "pretrained": pretrained,
        "datasets": datasets,
        "seed": int(cfg.SEED),
        "epochs": int(cfg.SOLVER.MAX_EPOCH),
        "iterations": None if iteration is None else int(iteration),
        "metrics": _plain(results) if results else None,
        "model": {
            "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
            "backbone": bb.NAME, "depth": str(bb.DEPTH), "stem": str(bb.STEM),
            "num_classes": int(cfg.MODEL.HEADS.NUM_CLASSES),
            "feature_dim": _feature_dim(cfg, model),
            "neck_feat": cfg.MODEL.HEADS.NECK_FEAT,
            "test_branches": list(cfg.MODEL.GLTRANS.TEST_BRANCHES),
        },
        "input": {"size_train": list(cfg.INPUT.SIZE_TRAIN), "size_test": list(cfg.INPUT.SIZE_TEST),
                  "pixel_mean": [float(x) for x in cfg.MODEL.PIXEL_MEAN],
                  "pixel_std": [float(x) for x in cfg.MODEL.PIXEL_STD]},
        "sie": _sie(cfg, model),
    }
    if checkpoint and os.path.isfile(checkpoint):
        from .modeling.pretrained import file_sha256

        card["checkpoint"] = {"file": os.path.basename(checkpoint),
                              "sha256": file_sha256(checkpoint)}
    return card


def write_card(cfg, output_dir, results=None, **kwargs):
    """``build_card`` written (atomically) to ``output_dir/model_card.json``; returns its path
    ("" when ``output_dir`` is empty).  Call it in the main process only."""
    if not output_dir:
        return ""
    card = build_card(cfg, results, **kwargs)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, CARD_FILE)
    with atomic_open(path, "w") as f:
        json.dump(card, f, indent=1)
    logger.info("Model card: %s", path)
    return path


# ----------------------------------------------------------------------------- reading
def card_path(checkpoint_or_dir):
    """The card of a checkpoint (its folder's ``model_card.json``) or of a run folder."""
    p = str(checkpoint_or_dir)
    folder = p if os.path.isdir(p) else os.path.dirname(os.path.abspath(p))
    return os.path.join(folder, CARD_FILE)


def read_card(checkpoint_or_dir):
    """The card dict of a checkpoint or run folder, or None when there is none (an older run,
    a checkpoint copied without it) or it is not a card."""
    path = card_path(checkpoint_or_dir)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            card = json.load(f)
    except (OSError, ValueError) as e:
        logger.warning("Model card %s cannot be read (%s); ignored.", path, e)
        return None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        logger.warning("%s is not a model card of this plugin (format %r); ignored.", path,
                       card.get("format") if isinstance(card, dict) else None)
        return None
    return card


def describe_card(card):
    """One line: what trained the checkpoint and what it scored."""
    pre = card.get("pretrained") or {}
    weights = (pre.get("tag") or pre.get("repo") or pre.get("file") or pre.get("spec")
               if pre.get("enabled") else "none")
    train = ", ".join(d.get("name", "?") for d in (card.get("datasets") or {}).get("train", []))
    metrics = card.get("metrics") or {}
    flat = metrics
    if len(metrics) == 1 and isinstance(next(iter(metrics.values())), dict):
        flat = next(iter(metrics.values()))
    score = ", ".join(f"{k} {flat[k]:.1f}" for k in ("mAP", "Rank-1") if k in flat) \
        or "no final metrics"
    git = card.get("git") or {}
    code = (f"plugin {card['versions'].get('gltrans_plugin')}"
            + (f" @ {git['commit'][:10]}{' (dirty)' if git.get('dirty') else ''}"
               if git.get("commit") else ""))
    return (f"trained on {train or '?'} from {weights}, {card.get('epochs')} epochs, seed "
            f"{card.get('seed')}: {score}; input {card['input']['size_test']}, feature "
            f"{card['model']['feature_dim']}, SIE rows {card['sie']['table_rows']}; {code}")


def _cfg_view(cfg):
    """The card fields a config sets, as ``build_card`` would record them."""
    bb = cfg.MODEL.BACKBONE
    return {
        "input.size_test": list(cfg.INPUT.SIZE_TEST),
        "input.pixel_mean": [float(x) for x in cfg.MODEL.PIXEL_MEAN],
        "input.pixel_std": [float(x) for x in cfg.MODEL.PIXEL_STD],
        "model.neck_feat": cfg.MODEL.HEADS.NECK_FEAT,
        "model.test_branches": list(cfg.MODEL.GLTRANS.TEST_BRANCHES),
        "model.stem": str(bb.STEM),
        "sie.camera": bool(bb.SIE_CAMERA),
        "sie.view": bool(bb.SIE_VIEW),
        "sie.num_cameras": int(bb.NUM_CAMERAS) if bb.NUM_CAMERAS > 0 else None,
        "datasets.train": list(cfg.DATASETS.NAMES),
    }


_WHY = {
    "input.size_test": "features of another input size",
    "input.pixel_mean": "images normalised otherwise than in training",
    "input.pixel_std": "images normalised otherwise than in training",
    "model.neck_feat": "another test feature",
    "model.test_branches": "another test feature",
    "model.stem": "another patch embedding",
    "sie.camera": "camera embeddings used otherwise than in training",
    "sie.view": "view embeddings used otherwise than in training",
    "sie.num_cameras": "camera ids index another SIE table",
    "datasets.train": "camera ids of other datasets index the checkpoint's SIE table rows",
}
_KEYS = {
    "input.size_test": "INPUT.SIZE_TEST", "input.pixel_mean": "MODEL.PIXEL_MEAN",
    "input.pixel_std": "MODEL.PIXEL_STD", "model.neck_feat": "MODEL.HEADS.NECK_FEAT",
    "model.test_branches": "MODEL.GLTRANS.TEST_BRANCHES", "model.stem": "MODEL.BACKBONE.STEM",
    "sie.camera": "MODEL.BACKBONE.SIE_CAMERA", "sie.view": "MODEL.BACKBONE.SIE_VIEW",
    "sie.num_cameras": "MODEL.BACKBONE.NUM_CAMERAS", "datasets.train": "DATASETS.NAMES",
}


def _card_value(card, field):
    section, key = field.split(".")
    if field == "datasets.train":
        return [d.get("name") for d in (card.get("datasets") or {}).get("train", [])]
    if field == "sie.num_cameras":
        sie = card.get("sie") or {}
        return sie.get("num_cameras") if sie.get("camera") else None
    return (card.get(section) or {}).get(key)


def check_card(cfg, checkpoint):
    """Warnings (strings) for each setting where ``cfg`` disagrees with the card of
    ``checkpoint``'s folder; the card's summary is logged.  [] without a card."""
    card = read_card(checkpoint)
    if card is None:
        logger.info("No model card next to %s: nothing to check the config against.",
                    checkpoint)
        return []
    logger.info("Model card of %s: %s", checkpoint, describe_card(card))
    warnings = []
    for field, value in _cfg_view(cfg).items():
        recorded = _card_value(card, field)
        if value is None or recorded is None or recorded == value:
            continue
        if field == "sie.num_cameras" and not cfg.MODEL.BACKBONE.SIE_CAMERA:
            continue
        warnings.append(f"{_KEYS[field]} is {value} but {os.path.basename(checkpoint)} was "
                        f"trained with {recorded} (model card {card_path(checkpoint)}): "
                        f"{_WHY[field]}")
    return warnings


_COMPARED = ("versions", "git", "config", "pretrained", "datasets", "seed", "epochs",
             "iterations", "metrics", "model", "input", "sie")


def compare_cards(a, b):
    """Differences between two cards, one line each ("section.key: a -> b")."""
    out = []

    def walk(x, y, where):
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{where}.{k}" if where else k)
        elif x != y:
            out.append(f"{where}: {x!r} -> {y!r}")

    for section in _COMPARED:
        walk(a.get(section), b.get(section), section)
    return out

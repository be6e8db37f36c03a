"""The config: every key this plugin adds to fast-reid's defaults, and reading a yaml + options.

``add_gltrans_config(cfg)`` is the one place new keys and their defaults are declared; configs
under ``configs/`` only set values.  ``merge_config`` merges a yaml and command-line options with a
one-line error naming an unknown key; ``setup_cfg`` is fast-reid's ``get_cfg`` + both.  Before
fast-reid reads a yaml, the file and every ``_BASE_`` it includes are checked, so that bad yaml,
a ``!!python/...`` tag (never executed), an empty file, a top level that is not a mapping, a
missing ``_BASE_`` (relative to the including file) or a ``_BASE_`` cycle is a
``ConfigFileError`` naming the file (and line), not an internal error.
``import gltrans_plugin`` also adds the keys to fast-reid's own defaults (the compat fix
``gltrans_keys_in_defaults``), so a bare ``fastreid.config.get_cfg()`` reads a GLTrans config.
"""
import difflib
import logging
import os
import re

from fastreid.config import CfgNode as CN

from .devices import fall_back_to_cpu
from .errors import ConfigKeyError, UserError

logger = logging.getLogger(__name__)


# DATASETS.SYNTHETIC.*: the built-in synthetic set's sizes (also the generator's defaults).
SYNTHETIC_DEFAULTS = dict(
    NUM_TRAIN_IDS=48,     # identities in bounding_box_train
    NUM_TEST_IDS=48,      # identities in query / bounding_box_test
    NUM_CAMERAS=4,        # cameras (<= 6: Market-1501 naming)
    IMAGES_PER_ID_CAM=3,  # images per identity per camera
    HEIGHT=128,           # generated image height (pixels)
    WIDTH=64,             # generated image width (pixels)
    SEED=0,               # generator seed; same seed -> same files
)

# DATASETS.FOLDER.* / DATASETS.FOLDER2.*: your own data, read by the datasets "ReIDFolder" /
# "ReIDFolder2" (gltrans_plugin/data/folder.py).  Set ROOT or the lists, not both; relative
# paths are relative to the working directory.
FOLDER_DEFAULTS = dict(
    ROOT="",          # Market-1501-style folder: bounding_box_train/, query/, bounding_box_test/
    TRAIN_LIST="",    # list file of the training images, "path pid camid [viewid]" a line
    QUERY_LIST="",    # list file of the query images (same format)
    GALLERY_LIST="",  # list file of the gallery images (same format); "" = empty split
)


def add_gltrans_config(cfg):
    """Add the GLTrans / plugin keys to a fast-reid ``CfgNode`` in place (idempotent)."""
    _C = cfg
    if "GLTRANS" in _C.MODEL:  # already added
        return cfg

    # ------------------------------------------------------------------ data
    # Dataset root. Empty: fast-reid's own rule (env FASTREID_DATASETS, else "datasets").
    _C.DATASETS.ROOT = ""
    # Validation split held out of the training identities (data/validation.py): IDS > 0 holds
    # out that many training identities (drawn with SEED), split into a query / gallery by
    # camera; the trainer then evaluates it every TEST.EVAL_PERIOD instead of the test sets,
    # keeps model_best.pth by validation mAP and tests that checkpoint once, at the end.
    _C.DATASETS.VAL = CN()
    _C.DATASETS.VAL.IDS = 0
    _C.DATASETS.VAL.SEED = 0
    # Built-in synthetic Re-ID set (dataset name "SyntheticReID"), generated on first use.
    _C.DATASETS.SYNTHETIC = CN(dict(SYNTHETIC_DEFAULTS))  # sizes: see SYNTHETIC_DEFAULTS
    # Your own data: a Market-1501-style folder or list files (keys: see FOLDER_DEFAULTS), for
    # the dataset "ReIDFolder"; FOLDER2 the same for "ReIDFolder2", a second set of your own.
    _C.DATASETS.FOLDER = CN(dict(FOLDER_DEFAULTS))
    _C.DATASETS.FOLDER2 = CN(dict(FOLDER_DEFAULTS))
    # VeRi-776 with viewpoint labels (dataset "VeRiViews", gltrans_plugin/data/veri.py).  The
    # view ids are read only when MODEL.BACKBONE.SIE_VIEW is True (False: cameras only, no
    # keypoint file is read).
    _C.DATASETS.VERI = CN()
    # Folder holding keypoint_train.txt and keypoint_test.txt (the VeRi-776 keypoint and
    # orientation annotations); "" = the dataset folder <DATASETS.ROOT>/veri.
    _C.DATASETS.VERI.VIEW_DIR = ""
    # An image without a view label in those files: "error" (names the file; so does a line
    # naming an image the folders lack) | "drop" (leave the image out, as TransReID's reader;
    # lines naming absent images are logged) | "unseen" (keep it with view id -1: the model's
    # MODEL.BACKBONE.SIE_UNSEEN policy applies).
    _C.DATASETS.VERI.UNLABELED = "error"
    # A corrupt / unreadable image: False -> error naming the file; True -> skip it with a warning.
    _C.DATALOADER.SKIP_CORRUPT = False
    # Per-epoch seeded training sampler (SEED + epoch): a resumed run sees the same batches.
    _C.DATALOADER.EPOCH_SAMPLER = True

    # ------------------------------------------------------------------ model
    # (GLTrans architecture keys; README "Config switches" says which paper table each serves.)
    # Backbone (BACKBONE.NAME "build_gltrans_backbone"). fast-reid's own keys are reused:
    # DEPTH ("tiny" | "small" | "base"), STRIDE_SIZE, SIE_COE, DROP_PATH_RATIO, DROP_RATIO,
    # ATT_DROP_RATE, PRETRAIN, PRETRAIN_PATH, FEAT_DIM (set from DEPTH when 0 / wrong).
    _C.MODEL.BACKBONE.PATCH_SIZE = 16      # ViT patch size (the overlap comes from STRIDE_SIZE)
    _C.MODEL.BACKBONE.SIE_CAMERA = True    # add a learned per-camera embedding (SIE)
    _C.MODEL.BACKBONE.SIE_VIEW = False     # add a learned per-viewpoint embedding (VeRi-776)
    _C.MODEL.BACKBONE.NUM_CAMERAS = 0      # SIE table size; 0 = number of cameras in the data
    _C.MODEL.BACKBONE.NUM_VIEWS = 0        # viewpoint table size; 0 = from the data
    # What an image without a camera (or view) id (none given, -1; or an id outside the table
    # when MODEL.GLTRANS.STRICT_CAMIDS is False) gets: "error" | "none" (no SIE term) | "mean"
    # (the mean of the learned embeddings; camera x view table: over the unknown id only, e.g.
    # a known camera's mean over views).  Used by evaluation, the extractor, the tools
    # and the ONNX export alike.  "mean": on the built-in set with camera 4 held out of training
    # (queried from it), mAP 30.01 with "mean" vs 28.56 with "none" (docs/training.md).
    _C.MODEL.BACKBONE.SIE_UNSEEN = "mean"
    _C.MODEL.BACKBONE.PRETRAIN_FORMAT = "auto"  # "auto" | "timm" | "deit" | "transreid"
    # PRETRAIN_PATH also takes a timm tag (vit_base_patch16_224.orig_in21k_ft_in1k),
    # hf-hub:<repo> or local-dir:<folder> (docs/weights.md).  Names are fetched into this
    # Hugging Face cache folder; "" = huggingface_hub's own (HF_HUB_CACHE, else HF_HOME/hub).
    _C.MODEL.BACKBONE.PRETRAIN_CACHE = ""
    # (Hg, Wg) patch grid of the checkpoint's pos_embed when it is neither square nor the
    # model's grid, e.g. (16, 8) for LUPerson ViTs pre-trained at 256x128; () = infer.
    _C.MODEL.BACKBONE.PRETRAIN_GRID = ()
    # Patch-embedding stem: "" (one conv, the ViT's) | "ibn_conv" (TransReID-SSL's ICS: three
    # convs with IBN at half resolution before the patch conv; its LUPerson weights need it).
    _C.MODEL.BACKBONE.STEM = ""
    _C.MODEL.BACKBONE.GRAD_CHECKPOINT = False  # activation checkpointing of backbone blocks

    # Attention kernel: "auto" (fused SDPA, except CPU training where the plain path measured
    # faster, see docs/speed.md) | "fused" | "manual".
    _C.MODEL.ATTN_IMPL = "auto"
    # torch.compile the backbone blocks and PTL layers in place (warns, stays eager if unavailable).
    _C.MODEL.COMPILE = False
    # AMP dtype (SOLVER.AMP.ENABLED) for training and the extractor: "auto" = bf16 where the
    # device supports it (every CPU; CUDA GPUs of compute capability 8.0+), else fp16 with a
    # GradScaler | "bf16" | "fp16".
    _C.SOLVER.AMP.DTYPE = "auto"

    _C.MODEL.GLTRANS = CN()
    # Blocks whose tokens are aggregated (K = len). Negative = counted from the end (-1 = last);
    # the paper's "layers 10-12" of ViT-B is (-3, -2, -1).  Table 6.
    _C.MODEL.GLTRANS.AGG_LAYERS = (-3, -2, -1)
    # GAE (eq. 2-3): global branch from the K class tokens.  Table 5 / Table 7.
    _C.MODEL.GLTRANS.GAE = CN({"ENABLED": True})
    _C.MODEL.GLTRANS.GAE.AGGREGATION = "fc"  # "fc" | "two_fc" | "add" | "concat"
    _C.MODEL.GLTRANS.GAE.ACTIVATION = "gelu"  # "gelu" (paper) | "none" (released code)
    # LMF: local branch (PTF -> GMA -> PTL).  LOCAL.ENABLED False removes the local branch.
    _C.MODEL.GLTRANS.LOCAL = CN({"ENABLED": True})
    # PTF (eq. 4-7): per-layer mask + fusion conv.  ENABLED False: last layer's tokens only.
    _C.MODEL.GLTRANS.PTF = CN({"ENABLED": True})
    _C.MODEL.GLTRANS.PTF.REDUCTION = 4        # r of the mask MLP (D -> D/r -> D)
    _C.MODEL.GLTRANS.PTF.MASK = "linear"      # "linear" (paper) | "conv_bn" (released code)
    # "paper": 1x1, 3x3, BN, GELU | "released": 1x1, GELU, BN, 3x3
    _C.MODEL.GLTRANS.PTF.FUSION_ORDER = "paper"
    # GMA (eq. 8-10): global-guided per-head patch scores.
    _C.MODEL.GLTRANS.GMA = CN({"ENABLED": True})
    _C.MODEL.GLTRANS.GMA.NUM_HEADS = 12       # h; must divide D.  Table 10
    _C.MODEL.GLTRANS.GMA.REDUCTION = 1        # optional reduction of W_q / W_k width
    # PTL (eq. 11-13): part tokens through T transformer layers over horizontal stripes.
    _C.MODEL.GLTRANS.PTL = CN()
    _C.MODEL.GLTRANS.PTL.NUM_PARTS = 3        # P (<= grid rows).  Table 8
    _C.MODEL.GLTRANS.PTL.DEPTH = 2            # T; 0 = average pooling of each stripe.  Table 9
    _C.MODEL.GLTRANS.PTL.SHARED = True        # one layer stack for all parts (paper) | per part
    _C.MODEL.GLTRANS.PTL.WITH_CLS = True      # prepend the K class tokens to each part sequence
    _C.MODEL.GLTRANS.PTL.PART_TOKEN_INIT = "zeros"  # "zeros" (released code) | "trunc_normal"
    # eps of every PTL LayerNorm (the blocks' two and the final one). The paper is silent: the
    # released code's nn.LayerNorm, 1e-5 (timm's ViT blocks use 1e-6, as does our backbone).
    _C.MODEL.GLTRANS.PTL.NORM_EPS = 1e-5
    # Init of the GAE / PTF-mask / GMA / PTL Linear layers, biases zero. The paper is silent:
    # "kaiming_fan_out" (released code: kaiming-normal, fan-out, a=0) | "trunc_normal" (ViT, 0.02)
    _C.MODEL.GLTRANS.LINEAR_INIT = "kaiming_fan_out"
    # Branches and losses (paper eq. 14-16).  Branch names: global, local, cls<layer> (1-based).
    _C.MODEL.GLTRANS.BRANCHES = ("global", "local", "cls")  # "cls" = one branch per AGG layer
    _C.MODEL.GLTRANS.CE_WEIGHT = 1.0           # weight of the mean CE over branches
    _C.MODEL.GLTRANS.TRI_WEIGHT = 1.0          # weight of the mean triplet over branches
    _C.MODEL.GLTRANS.BRANCH_WEIGHTS = ()       # per-branch weights, same order; () = all 1
    _C.MODEL.GLTRANS.TRI_SOFT_MARGIN = True    # soft-margin triplet; False: MODEL.LOSSES.TRI.MARGIN
    # Feature the triplet terms see: "before" the BNNeck (paper, released code) | "after" it
    # (the BN-standardised feature the classifier sees; use NECK_FEAT "after" to test on it).
    _C.MODEL.GLTRANS.TRI_FEATURE = "before"
    # Released-code bug: every cls branch's triplet uses the last layer's cls token.
    _C.MODEL.GLTRANS.CLS_TRIPLET_ON_LAST = False
    # BNNeck bias (zero at init). The paper is silent: False = trainable (released code) |
    # True = frozen at zero (fast-reid's BNNeck).
    _C.MODEL.GLTRANS.NECK_BIAS_FREEZE = False
    # Test feature: concat of these branches' features, in this order (paper: global, local,
    # last cls; released code: local, global, last cls).
    _C.MODEL.GLTRANS.TEST_BRANCHES = ("global", "local", "cls_last")
    # Camera ids: raise on an id outside the SIE table (True) or use no SIE for it (False).
    _C.MODEL.GLTRANS.STRICT_CAMIDS = True

    # ------------------------------------------------------------------ checkpoints
    # --eval-only with a checkpoint that lacks model weights (another architecture) fails;
    # True evaluates anyway, with those weights at their random initialisation.
    _C.TEST.ALLOW_MISSING_KEYS = False

    # ------------------------------------------------------------------ engine / test
    # Evaluator used by gltrans_plugin.engine.Trainer: "chunked" (ours, ChunkedReidEvaluator) or
    # "fastreid" (fast-reid's ReidEvaluator).  "fast", its old name, works with a warning.
    _C.TEST.EVALUATOR = "chunked"
    # Queries per ranking chunk of our evaluator; memory ~ CHUNK_SIZE x gallery x 4 bytes
    # (+ ~tens of MB).
    _C.TEST.CHUNK_SIZE = 1024
    # Where our evaluator's chunked ranking runs: "cpu" | "cuda".
    _C.TEST.EVAL_DEVICE = "cpu"
    # Evaluate once before the first training step and log it beside the final result.
    _C.TEST.EVAL_BEFORE_TRAIN = False
    # Warm-up length in whole epochs; > 0 overrides SOLVER.WARMUP_ITERS (= epochs x iters/epoch).
    _C.SOLVER.WARMUP_EPOCHS = 0
    # Learning-rate schedule (gltrans_plugin/solver.py). The paper says only "initial learning
    # rate ... with a cosine learning rate decay" (no warm-up, no step size), which both styles
    # satisfy; the default "paper" keeps fast-reid's schedulers: warm-up (WARMUP_EPOCHS, from
    # WARMUP_FACTOR x BASE_LR) stepped every iteration, then SOLVER.SCHED stepped every epoch
    # over the remaining epochs to ETA_MIN_LR. "released": the authors' code (timm's cosine, one
    # LR per epoch, epochs counted from 1, the cosine over all MAX_EPOCH epochs with the warm-up
    # replacing its first WARMUP_EPOCHS; warm-up start and floor the same for every group).
    _C.SOLVER.SCHED_STYLE = "paper"
    # Iterations between metric log lines / metrics.json rows (fast-reid hard-codes 200).
    _C.SOLVER.LOG_PERIOD = 20
    # Training health: every LOG_PERIOD the trainer logs, per branch, the mean positive and
    # negative distance of the pre-BN features, their relative gap, cosines and the share of
    # wrongly ordered batch-hard triplets (also in metrics.json / TensorBoard as health/*).
    _C.SOLVER.HEALTH = CN()
    _C.SOLVER.HEALTH.ENABLED = True
    # A branch is "collapsing" when, over a log period, the mean cosine between different
    # identities exceeds MAX_COS_NEG or the relative gap (neg - pos) / neg is below MIN_REL_GAP;
    # after PATIENCE such periods in a row a warning is logged once for that branch.  0.998:
    # the collapsed demo runs (soft-margin triplet stuck at ln 2) stayed at 0.9987-0.9999 from
    # the second log period on; the healthy demo passes 0.999 -> 0.998 -> 0.997 in its first
    # periods and ends at 0.98-0.994 (pre-BN features keep a common component; docs/training.md).
    _C.SOLVER.HEALTH.MAX_COS_NEG = 0.998
    _C.SOLVER.HEALTH.MIN_REL_GAP = 0.05
    _C.SOLVER.HEALTH.PATIENCE = 3
    # Random seed for the run (< 0: fast-reid's time-based seed).
    _C.SEED = -1
    return cfg


_MISSING_KEY = re.compile(r"Non-existent (?:config )?key: ([^\s'\"]+)")


def _all_keys(cfg, prefix=""):
    out = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        out.extend(_all_keys(v, full + ".") if isinstance(v, dict) else [full])
    return out


def _unknown_key_error(cfg, err, where):
    m = _MISSING_KEY.search(str(err))
    if not m:
        return None
    key = m.group(1)
    close = difflib.get_close_matches(key, _all_keys(cfg), n=2, cutoff=0.9)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    return ConfigKeyError(
        f"Unknown config key {key} in {where}.{hint} Keys are defined by fast-reid "
        f"(fastreid/config/defaults.py) and gltrans_plugin/config.py (add_gltrans_config)."
    )


class ConfigFileError(UserError, ValueError):
    """A config file that is not a readable config: yaml syntax, a tag, not a mapping, _BASE_."""


_BASE_KEY = "_BASE_"
_KEYS_FIX = "write the keys to set as yaml, e.g. 'MODEL:' then '  DEVICE: cpu' on the next line"


def _yaml_error(path, e):
    """ConfigFileError of yaml's error ``e`` reading ``path``, with the line yaml gives."""
    import yaml

    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else path
    problem = str(getattr(e, "problem", None) or e).strip()
    if isinstance(e, yaml.constructor.ConstructorError) and "tag" in problem:
        found = re.search(r"tag '([^']*)'", problem)
        tag = (found.group(1) if found else problem).replace("tag:yaml.org,2002:", "!!")
        if "python/" in tag:
            return ConfigFileError(
                f"the yaml tag {tag} asks to build a Python object; config files hold plain "
                f"values only (nothing in the file was run)", where,
                "remove the tag and write the plain value")
        return ConfigFileError(f"unknown yaml tag {tag}", where,
                               "remove the tag and write the plain value")
    if "\t" in problem or "'\\t'" in problem:
        return ConfigFileError("a tab character in the indentation (yaml allows spaces only)",
                               where, "indent with spaces")
    return ConfigFileError(f"the file is not valid yaml ({problem})", where,
                           "fix the yaml syntax there")


def _read_yaml(path):
    """The mapping in config file ``path`` (ConfigFileError naming the file / line if not)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except UnicodeDecodeError as e:
        raise ConfigFileError(f"the file is not UTF-8 text ({e.reason} at byte {e.start})", path,
                              "save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from None
    if data is None:
        raise ConfigFileError("the config file is empty (no keys)", path,
                              _KEYS_FIX + "; or leave --config-file out for the defaults")
    if not isinstance(data, dict):
        raise ConfigFileError(f"the file's top level is a {type(data).__name__}, not a "
                              f"mapping of config keys", f"{path}:1", _KEYS_FIX)
    return data


def check_config_file(config_file):
    """Read ``config_file`` and every ``_BASE_`` it includes (fast-reid's rule: a relative
    ``_BASE_`` path is relative to the including file's folder) and raise ConfigFileError naming
    the file for anything fast-reid's reader would fail on without saying where."""
    chain = []
    path = config_file
    while True:
        real = os.path.realpath(path)
        reals = [os.path.realpath(p) for p in chain]
        if real in reals:
            cycle = " -> ".join(chain[reals.index(real):] + [path])
            raise ConfigFileError(f"the _BASE_ files include each other in a cycle ({cycle})",
                                  chain[-1], f"remove the {_BASE_KEY} that closes the cycle")
        chain.append(path)
        base = _read_yaml(path).get(_BASE_KEY)
        if base is None:
            return chain
        if not isinstance(base, str) or not base.strip():
            raise ConfigFileError(f"{_BASE_KEY} is {base!r}, not a file name", path,
                                  f"give {_BASE_KEY} one config file, relative to this file's "
                                  f"folder")
        if base.startswith(("https://", "http://")):
            return chain  # fetched by fast-reid's PathManager
        resolved = os.path.expanduser(base)
        if not resolved.startswith("/"):
            resolved = os.path.join(os.path.dirname(path), resolved)
        if not os.path.isfile(resolved):
            raise ConfigFileError(
                f"{_BASE_KEY} file {base!r} not found (looked for {os.path.abspath(resolved)})",
                path, f"a {_BASE_KEY} path is relative to the file that includes it "
                f"({os.path.dirname(os.path.abspath(path))}), not to the working directory: "
                f"fix the path")
        path = resolved


_TYPE_MISMATCH = re.compile(r"Type mismatch \(<class '([\w.]+)'> vs\. <class '([\w.]+)'>\)"
                            r".* for config key: (\S+)", re.S)


def _type_name(qualified):
    name = qualified.rsplit(".", 1)[-1]
    return "mapping of sub-keys" if name == "CfgNode" else name


def _type_mismatch(e):
    """yacs' "Type mismatch (...) with values (<whole sub-tree> vs. ...)" in a few words."""
    m = _TYPE_MISMATCH.search(str(e))
    if m is None:
        return str(e).strip()[:300] or type(e).__name__
    old, new, key = m.groups()
    return (f"config key {key} has a value of type {_type_name(new)} where its default is of "
            f"type {_type_name(old)}")


def merge_config(cfg, config_file="", opts=()):
    """``cfg.merge_from_file`` + ``merge_from_list`` with a one-line error for an unknown key,
    and for a config file (or a ``_BASE_``) that is not a readable config
    (``check_config_file``)."""
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"Config file not found: {config_file}")
        check_config_file(config_file)
        where = f"config file {config_file} (or a _BASE_ it includes)"
        try:
            cfg.merge_from_file(config_file)
        except KeyError as e:
            err = _unknown_key_error(cfg, e, where)
            if err is None:
                raise
            raise err from None
        except (AssertionError, ValueError) as e:  # yacs / fast-reid: a value of another type,
            if isinstance(e, UserError):           # "Cannot inherit key 'X' from base!"
                raise
            raise ConfigFileError(_type_mismatch(e), config_file + (
                " or a _BASE_ it includes" if _BASE_KEY in _read_yaml(config_file) else ""),
                "give each key a value of its default's type (a mapping where the default "
                "has sub-keys)") from None
    try:
        cfg.merge_from_list(list(opts or []))
    except (KeyError, AssertionError) as e:
        err = _unknown_key_error(cfg, e, "the command-line options")
        if err is None and isinstance(e, AssertionError):  # yacs: odd length, a fixed key
            raise ValueError(f"Command-line options {list(opts or [])}: {e}. Give them as "
                             f"KEY VALUE pairs after the flags.") from None
        if err is None:
            raise
        raise err from None
    return cfg


def setup_cfg(config_file="", opts=()):
    """fast-reid's get_cfg + our keys + a yaml + command-line opts, with device auto-selection."""
    from fastreid.config import get_cfg

    cfg = get_cfg()
    add_gltrans_config(cfg)
    merge_config(cfg, config_file, opts)  # an unknown key: ConfigKeyError naming it and the file
    fall_back_to_cpu(cfg)  # MODEL.DEVICE cuda on a machine without a GPU -> cpu
    return cfg

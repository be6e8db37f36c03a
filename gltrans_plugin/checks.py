"""Set-up checks: impossible settings and unusable data fail before training, one message each.

``validate_config`` needs the config alone (no data, no model build); ``check_data``,
``check_identities`` and ``check_test_set`` look at the datasets, before the model is built.
"""
from .devices import AMP_DTYPES

__all__ = ["check_data", "validate_config"]

_GLTRANS_BACKBONES = ("build_gltrans_backbone", "build_gltrans_vit_backbone")


def validate_config(cfg):
    """Impossible settings, found from the config alone (no data, no model build).

    GLTrans backbones: image size vs patch / stride (train and test sizes), MODEL.GLTRANS.AGG_LAYERS
    vs the depth (K <= 12), PTL parts vs grid rows, GMA heads vs the embedding dim, a missing
    pretrained-weight file.  Any model: identity-sampler batch sizes.  Each check reuses the
    model's own validation, so the messages are the ones the model would raise later.
    """
    _check_batch(cfg)
    if cfg.SOLVER.AMP.DTYPE not in AMP_DTYPES:
        raise ValueError(f"SOLVER.AMP.DTYPE={cfg.SOLVER.AMP.DTYPE!r}: use 'auto', 'bf16' or "
                         f"'fp16'.")
    if cfg.MODEL.BACKBONE.NAME in _GLTRANS_BACKBONES:
        _check_gltrans(cfg)
    return cfg


def _check_batch(cfg):
    from fastreid.utils import comm

    world = comm.get_world_size()
    ims = cfg.SOLVER.IMS_PER_BATCH
    if ims < world or ims % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH {ims} must be a positive multiple of the number "
                         f"of processes ({world}): it is the global batch, split across them.")
    if cfg.DATALOADER.SAMPLER_TRAIN in ("NaiveIdentitySampler", "BalancedIdentitySampler",
                                        "SetReWeightSampler"):
        k = cfg.DATALOADER.NUM_INSTANCE
        mini = ims // world
        if k < 1 or mini % k:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH {ims} over {world} process(es) gives {mini} images per "
                f"process, not a multiple of DATALOADER.NUM_INSTANCE {k}: fast-reid's identity "
                f"sampler would never complete a batch (training hangs). Use IMS_PER_BATCH = "
                f"identities x NUM_INSTANCE x processes.")


def _check_gltrans(cfg):
    from .modeling.backbone import VIT_DEPTH, GLTransViT, _normalise_layers, patch_grid
    from .modeling.gma import GMA
    from .modeling.ptl import stripe_sizes

    args = GLTransViT.from_config(cfg)  # unknown DEPTH -> ValueError
    bb, g = cfg.MODEL.BACKBONE, cfg.MODEL.GLTRANS
    for key in ("SIZE_TRAIN", "SIZE_TEST"):
        size = tuple(cfg.INPUT[key])
        try:
            grid = patch_grid(size, args["patch_size"], args["stride_size"])
        except ValueError as e:
            raise ValueError(f"INPUT.{key} {list(size)}: {e}") from None
        if cfg.MODEL.BACKBONE.NAME == "build_gltrans_backbone" and g.LOCAL.ENABLED:
            stripe_sizes(grid[0], int(g.PTL.NUM_PARTS))  # NUM_PARTS > grid rows
    if cfg.MODEL.BACKBONE.NAME == "build_gltrans_backbone":
        _normalise_layers(tuple(g.AGG_LAYERS), VIT_DEPTH)  # K > depth, out of range, repeats
        if g.LOCAL.ENABLED and g.GMA.ENABLED:
            d = args["embed_dim"]
            GMA(embed_dim=d, global_dim=d, num_heads=int(g.GMA.NUM_HEADS),
                reduction=int(g.GMA.REDUCTION))  # heads / reduction must divide D
    if bb.PRETRAIN:  # a file that exists, a known name; offline, a name in the cache
        from .modeling.pretrained import check_source

        check_source(str(bb.PRETRAIN_PATH), str(bb.PRETRAIN_CACHE))


def check_data(cfg):
    """Data checks before the model is built: non-empty query / gallery of every test set, and
    camera ids inside the SIE table (GLTrans with MODEL.BACKBONE.SIE_CAMERA and strict ids).
    Camera ids are the model's (``CameraLayout``): a test camera the training never saw has a
    negative id, which MODEL.BACKBONE.SIE_UNSEEN handles ('error' fails here, before training)."""
    from fastreid.utils import comm

    from .data import build_dataset, camera_layout, test_camera_map
    from .data.checks import check_test_set
    from .data.checks import check_image_headers

    test_cams = {}
    for name in cfg.DATASETS.TESTS:
        data = build_dataset(cfg, name)
        check_test_set(name, data)
        if not cfg.DATALOADER.SKIP_CORRUPT and comm.is_main_process():
            check_image_headers(name, data)  # not at the first evaluation, an epoch later
        cam = test_camera_map(cfg, name)
        test_cams[name] = {cam(item[2]) for item in data.query + data.gallery}
    bb = cfg.MODEL.BACKBONE
    if bb.NAME != "build_gltrans_backbone" or not bb.SIE_CAMERA or bb.NUM_CAMERAS <= 0:
        return
    unseen = {n: sorted(-1 - c for c in cams if c < 0) for n, cams in test_cams.items()}
    unseen = {n: cams for n, cams in unseen.items() if cams}
    if unseen and bb.SIE_UNSEEN == "error":
        n, cams = next(iter(unseen.items()))
        raise ValueError(
            f"Camera(s) {cams} of the test set {n} were never seen in training ("
            + ("a dataset not in DATASETS.NAMES" if n not in cfg.DATASETS.NAMES else
               "beyond its training cameras") + ") and MODEL.BACKBONE.SIE_UNSEEN is 'error'. "
            "Set SIE_UNSEEN 'mean' (the mean camera embedding) or 'none' (no SIE term) for "
            "them, or test on the training datasets.")
    if not cfg.MODEL.GLTRANS.STRICT_CAMIDS:
        return
    table = int(bb.NUM_CAMERAS)
    layout = camera_layout(cfg)
    sources = [(f"training set {n}", {layout.train_index(item[2]) for item in
                                      build_dataset(cfg, n).train})
               for n in cfg.DATASETS.NAMES] + [(f"test set {n}", c) for n, c in test_cams.items()]
    for what, cams in sources:
        bad = sorted(c for c in cams if c >= table)  # negative: unseen, SIE_UNSEEN's case
        if bad:
            raise ValueError(
                f"Camera id(s) {bad} of the {what} are outside the SIE table of "
                f"MODEL.BACKBONE.NUM_CAMERAS={table} (valid ids 0..{table - 1}). Set NUM_CAMERAS "
                f"to the number of cameras ({max(bad) + 1} or more; 0 = from the training data), "
                f"or MODEL.GLTRANS.STRICT_CAMIDS False to give such images no SIE term.")

"""A trained model from a config and a checkpoint, for evaluation (``--eval-only``), the tools,
``FeatureExtractor`` and the distiller's teachers.  Never imports the trainer.

``cfg_for_checkpoint`` fills the sizes a leaf config leaves to the trainer (classes, SIE table)
from the checkpoint, ``load_eval_weights`` loads it strictly, ``build_trained_model`` does both
and ``load_model`` starts from a yaml file.
"""
import logging

from .card import check_card, sizes_without_data
from .checkpoint import load_file, load_state_dict, sizes_from_state_dict, unwrap_state_dict
from .config import setup_cfg
from .data.build import fill_num_cameras
from .data.veri import fill_num_views
from .devices import resolve_device

logger = logging.getLogger(__name__)

__all__ = ["build_trained_model", "cfg_for_checkpoint", "load_eval_weights", "load_model",
           "read_weights"]

TOOL_KEY = "--weights / MODEL.WEIGHTS"  # what names the checkpoint of a tool, in messages


def read_weights(path, key="MODEL.WEIGHTS"):
    """The model state dict of checkpoint ``path`` (any wrapper, ``module.`` stripped)."""
    return unwrap_state_dict(load_file(path, key=key))


def cfg_for_checkpoint(cfg, state_dict=None):
    """``cfg`` (cloned, unfrozen) with the sizes a leaf config leaves to the trainer filled from
    the checkpoint's ``state_dict``: MODEL.HEADS.NUM_CLASSES and MODEL.BACKBONE.NUM_CAMERAS (0 =
    "from the data") from its classifier and SIE-table shapes, so the model is built with the
    trained shapes.  Without a checkpoint, or where it shows no size, the classes default to 1
    (an untrained model for reports / export) and the camera table to the training data's;
    where the data is not on this machine, a public dataset's published sizes are used
    (``card.sizes_without_data``: MSMT17 1041 identities / 15 cameras, ...).
    ``MODEL.BACKBONE.PRETRAIN`` is turned off: the ImageNet file is never read, the trained
    weights replace it."""
    cfg = cfg.clone()
    cfg.defrost()
    sizes = sizes_from_state_dict(state_dict) if state_dict is not None else {}
    if cfg.MODEL.HEADS.NUM_CLASSES <= 0:
        cfg.MODEL.HEADS.NUM_CLASSES = sizes.get("NUM_CLASSES", 1)
    bb = cfg.MODEL.BACKBONE
    if bb.NUM_CAMERAS <= 0 and "NUM_CAMERAS" in sizes and not bb.SIE_VIEW:
        bb.NUM_CAMERAS = sizes["NUM_CAMERAS"]
    if bb.SIE_VIEW and bb.NUM_VIEWS <= 0 and "NUM_CAMERAS" in sizes and bb.NUM_CAMERAS > 0:
        bb.NUM_VIEWS = sizes["NUM_CAMERAS"] // (bb.NUM_CAMERAS if bb.SIE_CAMERA else 1)  # C x V
    bb.PRETRAIN = False
    if bb.SIE_CAMERA and bb.NUM_CAMERAS <= 0:
        try:
            cfg = fill_num_cameras(cfg)  # from the training data
        except FileNotFoundError:  # no data here: a public dataset's published sizes
            known = sizes_without_data(cfg)
            if not known:
                raise
            bb.NUM_CAMERAS = known["NUM_CAMERAS"]
            if state_dict is None:
                cfg.MODEL.HEADS.NUM_CLASSES = known["NUM_CLASSES"]
            logger.info("No training data here: sizes of %s as published: %s.",
                        ", ".join(cfg.DATASETS.NAMES), known)
    if cfg.MODEL.BACKBONE.SIE_VIEW and cfg.MODEL.BACKBONE.NUM_VIEWS <= 0:
        cfg = fill_num_views(cfg)  # from the training data
    return cfg


def load_eval_weights(cfg, model, state_dict, key="MODEL.WEIGHTS"):
    """``state_dict`` (read from ``cfg.MODEL.WEIGHTS``) into ``model`` for evaluation or a tool:
    every model weight must be in the checkpoint with its shape (a checkpoint of another
    architecture fails unless ``TEST.ALLOW_MISSING_KEYS``; ``checkpoint.load_state_dict``)."""
    load_state_dict(model, state_dict, cfg.MODEL.WEIGHTS, key,
                    allow_missing=cfg.TEST.ALLOW_MISSING_KEYS)
    return model


def build_trained_model(cfg, key="MODEL.WEIGHTS"):
    """(cfg, model) for using the checkpoint ``cfg.MODEL.WEIGHTS``: sizes filled from it
    (``cfg_for_checkpoint``), the ImageNet file never read, weights loaded strictly
    (``load_eval_weights``); no weights: the model keeps its initialisation (model reports,
    export tests).  Model in eval mode on ``cfg.MODEL.DEVICE``."""
    from fastreid.modeling import build_model

    path = cfg.MODEL.WEIGHTS
    sd = read_weights(path, key) if path else None
    cfg = cfg_for_checkpoint(cfg, sd)
    model = build_model(cfg)
    if sd is not None:
        load_eval_weights(cfg, model, sd, key)
        logger.info("Loaded %s", path)
        for warning in check_card(cfg, path):  # the checkpoint's model card vs this config
            logger.warning(warning)
    model.to(cfg.MODEL.DEVICE).eval()
    return cfg, model


def tool_cfg(config_file, opts=(), weights=None, device="auto"):
    """The yaml + ``opts``, ``weights`` as MODEL.WEIGHTS, the device resolved (unfrozen)."""
    cfg = setup_cfg(config_file, list(opts))
    cfg.defrost()
    if weights:
        cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.DEVICE = resolve_device(device)
    return cfg


def load_model(config_file, weights=None, opts=(), device="auto"):
    """(cfg, model in eval mode) from a yaml (a run's ``config.yaml`` or a leaf config) and a
    trained checkpoint (``weights``, else ``MODEL.WEIGHTS``); any fast-reid model, GLTrans or
    not (``build_trained_model``).  ``device``: "auto" (CUDA when present, else CPU), "cpu",
    "cuda", "cuda:1" ...
    """
    return build_trained_model(tool_cfg(config_file, opts, weights, device), key=TOOL_KEY)

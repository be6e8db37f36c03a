"""Config + checkpoint -> model, for the tools (any fast-reid model, GLTrans or not).

A trained checkpoint knows sizes the config may leave to the trainer (``MODEL.HEADS.NUM_CLASSES``
and ``MODEL.BACKBONE.NUM_CAMERAS``, both 0 = "from the data"): ``sizes_from_state_dict`` reads
them from the classifier and SIE-table shapes, so a tool needs only the yaml and the weights.
Loading is strict: a checkpoint that does not fit the model fails with the keys named.
"""
import logging
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..compat import safe_torch_load
from ..modeling.weights import unwrap_state_dict

logger = logging.getLogger(__name__)

__all__ = [
    "build_test_loader",
    "load_cfg",
    "load_model",
    "load_state_dict",
    "read_state_dict",
    "sizes_from_state_dict",
]

# buffers a checkpoint may lack without harm (set from the config)
_OPTIONAL_KEYS = ("pixel_mean", "pixel_std")


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A fast-reid checkpoint (``{"model": ...}``) or a bare state dict -> name -> tensor."""
    return unwrap_state_dict(safe_torch_load(path, key="--weights / MODEL.WEIGHTS"))


def sizes_from_state_dict(sd: Dict[str, torch.Tensor]) -> Dict[str, int]:
    """{"NUM_CLASSES": C, "NUM_CAMERAS": T} as far as the checkpoint shows them.

    C: rows of a classifier (``heads.necks.<b>.classifier.weight`` for GLTrans,
    ``heads.weight`` for fast-reid's EmbeddingHead); T: rows of ``backbone.sie_embed``.
    """
    out = {}
    for k, v in sd.items():
        if k.startswith("heads.") and (k.endswith("classifier.weight") or k == "heads.weight"):
            out["NUM_CLASSES"] = int(v.shape[0])
            break
    if "backbone.sie_embed" in sd:
        out["NUM_CAMERAS"] = int(sd["backbone.sie_embed"].shape[0])
    return out


def load_cfg(config_file: str, opts: Sequence[str] = (), weights: Optional[str] = None):
    """fast-reid cfg with the plugin keys, the yaml and ``opts``; sizes filled from ``weights``.

    ``MODEL.BACKBONE.PRETRAIN`` is turned off (the trained weights replace ImageNet ones) and the
    device falls back to CPU without CUDA.
    """
    from ..engine import setup_cfg

    cfg = setup_cfg(config_file, list(opts))
    cfg.defrost()
    cfg.MODEL.BACKBONE.PRETRAIN = False
    if weights:
        cfg.MODEL.WEIGHTS = weights
    if cfg.MODEL.WEIGHTS:
        sizes = sizes_from_state_dict(read_state_dict(cfg.MODEL.WEIGHTS))
        if "NUM_CLASSES" in sizes:
            cfg.MODEL.HEADS.NUM_CLASSES = sizes["NUM_CLASSES"]
        if "NUM_CAMERAS" in sizes and cfg.MODEL.BACKBONE.get("SIE_CAMERA", False) \
                and not cfg.MODEL.BACKBONE.get("SIE_VIEW", False):
            cfg.MODEL.BACKBONE.NUM_CAMERAS = sizes["NUM_CAMERAS"]
    if cfg.MODEL.HEADS.NUM_CLASSES <= 0:
        cfg.MODEL.HEADS.NUM_CLASSES = 1  # an untrained model for reports / export: any size
    if cfg.MODEL.BACKBONE.get("SIE_CAMERA", False) and cfg.MODEL.BACKBONE.NUM_CAMERAS <= 0:
        from ..engine import fill_num_cameras

        cfg = fill_num_cameras(cfg)  # from the training data
    return cfg


def load_state_dict(model: nn.Module, sd: Dict[str, torch.Tensor], source: str = "checkpoint"):
    """Strict load, except the pixel mean/std buffers; errors name the keys that do not fit."""
    target = model.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
           for k, v in sd.items() if k in target and v.shape != target[k].shape]
    missing = [k for k in target if k not in sd and not k.endswith(_OPTIONAL_KEYS)]
    unexpected = [k for k in sd if k not in target]
    if bad or missing or unexpected:
        raise ValueError(
            f"{source} does not fit the model built from the config: "
            + "; ".join(filter(None, [
                f"shape mismatches: {bad}" if bad else "",
                f"missing from the checkpoint: {missing}" if missing else "",
                f"not in the model: {unexpected}" if unexpected else ""]))
            + ". Give the config the checkpoint was trained with (its OUTPUT_DIR/config.yaml).")
    model.load_state_dict(sd, strict=False)
    return model


def load_model(config_file: str, weights: Optional[str] = None, opts: Sequence[str] = (),
               device: str = "cpu") -> Tuple[object, nn.Module]:
    """(cfg, model in eval mode) from a yaml and a trained checkpoint (``MODEL.WEIGHTS``).

    Without weights the model keeps its initialisation (model reports, export tests).
    """
    from fastreid.modeling import build_model

    cfg = load_cfg(config_file, opts, weights)
    cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_state_dict(model, read_state_dict(cfg.MODEL.WEIGHTS), cfg.MODEL.WEIGHTS)
        logger.info("Loaded %s", cfg.MODEL.WEIGHTS)
    model.to(device).eval()
    return cfg, model


def build_test_loader(cfg, dataset_name: Optional[str] = None):
    """(loader over query + gallery, number of queries) of ``dataset_name`` (default: the first
    of ``DATASETS.TESTS``), built exactly as the trainer's evaluation builds it."""
    from ..engine import Trainer

    name = dataset_name or cfg.DATASETS.TESTS[0]
    return Trainer.build_test_loader(cfg, name)


def model_arg_parser(doc, config_help="the model's yaml",
                     weights_help="trained checkpoint (else MODEL.WEIGHTS)"):
    """The argument parser every model-facing tool starts from: its docstring as help text,
    --config-file and --weights."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n")[0], epilog=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help=config_help)
    p.add_argument("--weights", default="", help=weights_help)
    return p

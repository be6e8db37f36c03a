"""Pretrained weights for the GLTrans ViT (``backbone.GLTransViT``): a file, or a name.

``checkpoint_filter_fn(state_dict, model)`` is pure (it never changes its input): it unwraps,
renames and resizes a checkpoint into the model's key space:

* wrappers: ``{"model": ...}`` (DeiT, fast-reid), ``{"state_dict": ...}``, ``module.`` (DDP),
  ``{"teacher": ...}`` (a DINO checkpoint, as TransReID-SSL / PASS release their LUPerson
  ViTs: the teacher's weights are used, as their fine-tuning code does);
* prefixes: timm / ``jx_vit_base_p16_224`` / DeiT keys have none, TransReID-trained models live
  under ``base.``, a fast-reid GLTrans checkpoint and a DINO teacher under ``backbone.``;
* dropped (logged by name): classifier heads (``head.*``, ``head_dist.*``, ``pre_logits.*``), the
  DeiT distillation token (and its row of ``pos_embed``), PASS's part tokens and their
  positions, the final ``norm.*`` (copied into each per-layer class-token LayerNorm
  ``cls_norms.k``), blocks deeper than the model builds, and keys outside the backbone prefix;
* ``pos_embed`` (1 x (1+N_old) x D; PASS keeps the class token's row apart, ``cls_pos``) is
  resampled from the checkpoint grid to the model's (Hg, Wg) with timm's
  ``resample_abs_pos_embed``; a 2-D ``patch_embed.proj.weight`` (old format) is reshaped to the
  conv kernel; TransReID's ``sie_embed`` (T x 1 x D) becomes T x D;
* a shape that cannot be adapted -> ValueError naming the key and both shapes.

``load_pretrained(model, path)`` resolves ``path`` (a file, a timm tag, ``hf-hub:<repo>``,
``local-dir:<folder>``; ``pretrained.resolve``), reads the file with ``checkpoint.load_file``
(weights-only, or safetensors; pickled files need env ``GLTRANS_ALLOW_PICKLE=1``), filters it,
loads it non-strictly and logs every missing and unexpected key by name.
``load_pretrained_from_config(cfg, model)`` does the same from the ``MODEL.BACKBONE.PRETRAIN_*``
keys and warns when the config's pixel normalisation is not the one the weights were trained
with (where timm records it).
"""
import logging
import math
from collections.abc import Mapping
from typing import Dict, Optional, Sequence

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from ..checkpoint import CheckpointError, load_file, unwrap_state_dict
from .pretrained import PRETRAIN_KEY, PretrainedSource, resolve

logger = logging.getLogger(__name__)

__all__ = ["checkpoint_filter_fn", "load_pretrained", "load_pretrained_from_config"]

_FORMAT_PREFIX = {"timm": "", "deit": "", "transreid": "base.", "fastreid": "backbone."}
_DROP_PREFIXES = ("head.", "head_dist.", "pre_logits.", "fc_norm.", "dist_token")
# PASS (part-aware LUPerson pre-training): 3 part tokens with their own positions, and the class
# token's position kept apart from the patches' pos_embed.
_PASS_KEYS = ("cls_pos", "part_token1", "part_token2", "part_token3", "part1_pos", "part2_pos",
              "part3_pos")
# Keys of ours that an ImageNet checkpoint cannot have: missing them is normal.
_NEW_KEYS = ("sie_embed",)


def _find_prefix(sd: Mapping, fmt: str) -> str:
    if fmt != "auto":
        if fmt not in _FORMAT_PREFIX:
            raise ValueError(f"unknown MODEL.BACKBONE.PRETRAIN_FORMAT {fmt!r}; use 'auto' or one "
                             f"of {sorted(_FORMAT_PREFIX)}.")
        prefix = _FORMAT_PREFIX[fmt]
        if prefix + "pos_embed" not in sd:
            raise ValueError(f"the checkpoint has no '{prefix}pos_embed' key, so it is not in the "
                             f"{fmt!r} format; set MODEL.BACKBONE.PRETRAIN_FORMAT 'auto'.")
        return prefix
    candidates = sorted((k[: -len("pos_embed")] for k in sd if k.endswith("pos_embed")), key=len)
    if not candidates:
        raise ValueError("the checkpoint has no 'pos_embed' key (with any prefix): it is not a ViT "
                         "checkpoint; give timm / DeiT / TransReID ViT weights in "
                         "MODEL.BACKBONE.PRETRAIN_PATH.")
    return candidates[0]


def _pos_grid(num_old: int, model_grid: Sequence[int], old_grid: Optional[Sequence[int]]):
    if old_grid is not None:
        old_grid = (int(old_grid[0]), int(old_grid[1]))
        if old_grid[0] * old_grid[1] != num_old:
            raise ValueError(f"old_grid {old_grid} has {old_grid[0] * old_grid[1]} cells but the "
                             f"checkpoint's pos_embed has {num_old} patch positions.")
        return old_grid
    if num_old == model_grid[0] * model_grid[1]:
        return tuple(model_grid)
    side = math.isqrt(num_old)
    if side * side == num_old:
        return side, side
    raise ValueError(
        f"cannot tell the patch grid of the checkpoint's pos_embed ({num_old} positions: neither "
        f"square nor the model's grid {tuple(model_grid)}); set MODEL.BACKBONE.PRETRAIN_GRID "
        f"to the checkpoint's (Hg, Wg), e.g. (16, 8) for LUPerson ViTs pre-trained at 256x128 "
        f"(old_grid= of checkpoint_filter_fn / load_pretrained).")


def checkpoint_filter_fn(state_dict, model: nn.Module, fmt: str = "auto",
                         old_grid: Optional[Sequence[int]] = None,
                         interpolation: str = "bicubic") -> Dict[str, torch.Tensor]:
    """Map a timm / jx_vit / DeiT / TransReID / fast-reid checkpoint onto ``model``'s keys.

    Args:
        state_dict: a state dict or a checkpoint wrapping one (not modified).
        model: the ``GLTransViT`` to load into (only its shapes / grid are read).
        fmt: "auto" (detect the key prefix) | "timm" | "deit" | "transreid" | "fastreid".
        old_grid: the checkpoint's (Hg, Wg) when its pos_embed grid is neither square nor the
            model's (e.g. a TransReID model trained at another size).
        interpolation: "bicubic" (timm) or "bilinear" (TransReID) for the pos_embed resampling.
    Returns: a new dict of tensors; keys the model lacks are kept (they show as unexpected).
    """
    if isinstance(state_dict, Mapping) and isinstance(state_dict.get("teacher"), Mapping):
        logger.info("Pretrained weights: a DINO checkpoint; using its teacher's weights.")
        state_dict = state_dict["teacher"]
    sd = unwrap_state_dict(state_dict)
    prefix = _find_prefix(sd, fmt)
    dropped = [k for k in sd if not k.startswith(prefix)]
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if "cls_pos" in sd and "pos_embed" in sd:  # PASS: 1 x 1 x D + 1 x N x D -> 1 x (1+N) x D
        sd["pos_embed"] = torch.cat([sd["cls_pos"].reshape(1, 1, -1),
                                     sd["pos_embed"].reshape(1, -1, sd["cls_pos"].shape[-1])], 1)
        dropped += [prefix + k for k in _PASS_KEYS if k in sd]
        sd = {k: v for k, v in sd.items() if k not in _PASS_KEYS}

    target = model.state_dict()
    _check_stem(sd, target, prefix)
    num_blocks = len(getattr(model, "blocks", ()))
    num_norms = len(getattr(model, "cls_norms", ()))
    num_prefix_tokens = 1 + int("dist_token" in sd)
    out = {}
    for k, v in sd.items():
        if k.startswith(_DROP_PREFIXES):
            dropped.append(prefix + k)
            continue
        if k.startswith("blocks.") and int(k.split(".")[1]) >= num_blocks:
            dropped.append(prefix + k)  # deeper than any aggregated layer: not built
            continue
        if k in ("norm.weight", "norm.bias"):
            if not any(key.startswith("cls_norms.") for key in sd):
                for i in range(num_norms):
                    out[f"cls_norms.{i}.{k.split('.')[1]}"] = v.clone()
            dropped.append(prefix + k)  # the final norm is not kept by the model
            continue
        if k == "pos_embed" and "pos_embed" in target:
            v = _adapt_pos_embed(v, target["pos_embed"], model, num_prefix_tokens, old_grid,
                                 interpolation)
        elif k == "patch_embed.proj.weight" and k in target and v.dim() < 4 \
                and v.numel() == target[k].numel():
            v = v.reshape(target[k].shape)  # old flattened linear patch embedding
        elif k == "sie_embed" and k in target and v.dim() == 3 and v.shape[1] == 1:
            v = v[:, 0]  # TransReID: T x 1 x D -> T x D
        out[k] = v

    for k, v in out.items():
        if k in target and tuple(v.shape) != tuple(target[k].shape):
            hint = (" (SIE table: set MODEL.BACKBONE.NUM_CAMERAS / NUM_VIEWS / SIE_* as in the "
                    "checkpoint's training, or remove sie_embed from the file)"
                    if k == "sie_embed" else " (check MODEL.BACKBONE.DEPTH / PATCH_SIZE)")
            raise ValueError(f"checkpoint key '{prefix + k}' has shape {tuple(v.shape)} but the "
                             f"model's '{k}' is {tuple(target[k].shape)}; it cannot be adapted"
                             f"{hint}.")
    if dropped:
        logger.info("Pretrained weights: %d checkpoint keys not used by the backbone: %s",
                    len(dropped), ", ".join(sorted(dropped)))
    return out


def _check_stem(sd, target, prefix):
    has_stem = any(k.startswith("patch_embed.conv.") for k in sd)
    model_stem = any(k.startswith("patch_embed.conv.") for k in target)
    if has_stem and not model_stem:
        raise ValueError(f"the checkpoint has a convolution stem ('{prefix}patch_embed.conv.*', "
                         f"TransReID-SSL's ICS) that the model lacks; set MODEL.BACKBONE.STEM "
                         f"'ibn_conv' (configs/GLTrans/pretrained/ has a config for it)")
    if model_stem and not has_stem:
        raise ValueError("the model has a convolution stem (MODEL.BACKBONE.STEM) but the "
                         "checkpoint has none ('patch_embed.conv.*'); set MODEL.BACKBONE.STEM '' "
                         "for plain ViT weights")


def _adapt_pos_embed(v, target, model, num_prefix_tokens, old_grid, interpolation):
    if v.dim() == 2:
        v = v.unsqueeze(0)  # N x D -> 1 x N x D
    if v.dim() != 3 or v.shape[-1] != target.shape[-1]:
        raise ValueError(f"checkpoint key 'pos_embed' has shape {tuple(v.shape)} but the model's "
                         f"is {tuple(target.shape)}; it cannot be adapted (embedding dims differ: "
                         f"check MODEL.BACKBONE.DEPTH).")
    if num_prefix_tokens == 2:  # DeiT distilled: drop the distillation token's position
        v = torch.cat([v[:, :1], v[:, 2:]], dim=1)  # 1 x (1+N_old) x D
    model_grid = tuple(model.grid_size)
    grid = _pos_grid(v.shape[1] - 1, model_grid, old_grid)
    if grid == model_grid:
        return v
    logger.info("Pretrained weights: resampling pos_embed from grid %s to %s (%s).", grid,
                model_grid, interpolation)
    return resample_abs_pos_embed(v, new_size=list(model_grid), old_size=list(grid),
                                  num_prefix_tokens=1, interpolation=interpolation)


PRETRAIN_MISSING_FIX = ("Set MODEL.BACKBONE.PRETRAIN_PATH to a local ViT checkpoint (timm / DeiT / "
                        "TransReID), a timm tag, hf-hub:<repo> or local-dir:<folder>, or "
                        "MODEL.BACKBONE.PRETRAIN False.")


def load_pretrained(model: nn.Module, path, allow_pickle: bool = False, fmt: str = "auto",
                    old_grid: Optional[Sequence[int]] = None, interpolation: str = "bicubic",
                    cache_dir: str = ""):
    """Load ImageNet / Re-ID pretrained weights into ``model`` (non-strict, logged).

    ``path``: a file, a timm tag, ``hf-hub:<repo>`` or ``local-dir:<folder>`` (fetched into the
    Hugging Face cache ``cache_dir``, "" = huggingface_hub's default; ``pretrained.resolve``),
    or a ``PretrainedSource`` already resolved.
    Returns torch's ``_IncompatibleKeys`` (``missing_keys``, ``unexpected_keys``).
    """
    source = path if isinstance(path, PretrainedSource) else resolve(str(path), cache_dir)
    where = source.path if source.kind == "file" else f"{source.spec} = {source.path}"
    raw = load_file(source.path, key=PRETRAIN_KEY, allow_pickle=allow_pickle or None,
                    safetensors=True, missing_fix=PRETRAIN_MISSING_FIX)
    try:
        sd = checkpoint_filter_fn(raw, model, fmt=fmt, old_grid=old_grid,
                                  interpolation=interpolation)
    except CheckpointError:
        raise
    except ValueError as e:  # the filter's messages name the key; add the file
        raise CheckpointError("pretrained weights cannot be used", f"{where}, {PRETRAIN_KEY}",
                              str(e).rstrip(".")) from e
    target = model.state_dict()
    if not any(k in target for k in sd):
        raise CheckpointError(f"no key of the file matches the backbone (first keys: "
                              f"{sorted(sd)[:5]}): it is not a ViT checkpoint of a known format",
                              f"{where}, {PRETRAIN_KEY}", "give timm / DeiT / TransReID ViT "
                              "weights, or MODEL.BACKBONE.PRETRAIN False")
    result = model.load_state_dict(sd, strict=False)
    new = [k for k in result.missing_keys if k.startswith(_NEW_KEYS)]
    missing = [k for k in result.missing_keys if not k.startswith(_NEW_KEYS)]
    if new:
        logger.info("Pretrained weights: keys new in this model, left at their init: %s",
                    ", ".join(new))
    if missing:
        logger.warning("Pretrained weights: %d model keys missing from %s: %s", len(missing),
                       where, ", ".join(missing))
    if result.unexpected_keys:
        logger.warning("Pretrained weights: %d unexpected keys in %s (ignored): %s",
                       len(result.unexpected_keys), where, ", ".join(result.unexpected_keys))
    logger.info("Loaded pretrained backbone weights from %s (%d tensors).", where,
                len(sd) - len(result.unexpected_keys))
    return result


def load_pretrained_from_config(cfg, model: nn.Module, allow_pickle: Optional[bool] = None):
    """``load_pretrained`` with the ``MODEL.BACKBONE.PRETRAIN_*`` keys of ``cfg``: the weights
    (PRETRAIN_PATH), the Hugging Face cache (PRETRAIN_CACHE), the key format (PRETRAIN_FORMAT)
    and the checkpoint's patch grid (PRETRAIN_GRID).  Returns the ``PretrainedSource``."""
    bb = cfg.MODEL.BACKBONE
    source = resolve(str(bb.PRETRAIN_PATH), str(bb.PRETRAIN_CACHE))
    _check_normalisation(cfg, source)
    grid = tuple(int(x) for x in bb.PRETRAIN_GRID) or None
    load_pretrained(model, source, allow_pickle=bool(allow_pickle), fmt=str(bb.PRETRAIN_FORMAT),
                    old_grid=grid)
    return source


def _check_normalisation(cfg, source: PretrainedSource):
    """Warn when MODEL.PIXEL_MEAN / PIXEL_STD (0-255) differ from the normalisation the weights
    were trained with (timm's record of the tag; files carry none)."""
    if not source.mean or not source.std:
        return
    mean = [round(float(x) / 255.0, 3) for x in cfg.MODEL.PIXEL_MEAN]
    std = [round(float(x) / 255.0, 3) for x in cfg.MODEL.PIXEL_STD]
    want_mean = [round(x, 3) for x in source.mean]
    want_std = [round(x, 3) for x in source.std]
    if mean != want_mean or std != want_std:
        logger.warning(
            "MODEL.PIXEL_MEAN / PIXEL_STD %s / %s (x255) differ from the normalisation %s was "
            "trained with, %s / %s: set MODEL.PIXEL_MEAN %s and MODEL.PIXEL_STD %s unless the "
            "difference is meant.", mean, std, source.tag, want_mean, want_std,
            [round(x * 255, 3) for x in source.mean], [round(x * 255, 3) for x in source.std])

"""Checkpoint converters into this plugin's models (fast-reid checkpoints, ``{"model": sd}``).

Each converter maps every key it knows, reports by name what is left over on either side
(source keys not used, model keys not filled), and raises ValueError on a shape mismatch.

(a) TransReID-trained ViT (``damo-cv/TransReID``, ``make_model.build_transformer``):
    ``base.*`` (the ViT, TransReID's ``vit_pytorch``) -> ``backbone.*`` through
    ``modeling.weights.checkpoint_filter_fn(fmt="transreid")`` (pos_embed resampled,
    ``sie_embed`` T x 1 x D -> T x D, ``base.norm`` copied into every ``cls_norms.k``);
    ``bottleneck.*`` / ``classifier.weight`` -> the last class-token branch's BNNeck /
    classifier (``heads.necks.cls<L>``) when the model has that branch (the ViT baseline).
    Left over by design: ``base.fc.*`` (ImageNet head), JPM's ``b1.*``, ``b2.*``,
    ``bottleneck_1..4``, ``classifier_1..4``.
(b) Authors' released GLTrans code (``AWangYQ/GLTrans``: ``model/GLTrans.py``,
    ``model/base_model.py``, ``model/refine_model.py``) -> the ``*_released_code.yml`` model
    (PTF MASK conv_bn, FUSION_ORDER released, PTL SHARED False; PTL NORM_EPS 1e-5 for the same
    numbers, a warning otherwise; with NECK_BIAS_FREEZE True the BNNeck biases still load, they
    just stop training):
        base.base.*                     ViT (as (a), prefix ``base.base.``)
        base.norm.{k}.*                 backbone.cls_norms.{k}.*
        base.PAM.{k}.conv1/bn1/conv2/bn2 heads.lmf.ptf.masks.{k}.mask.0/1/3/4
        minimodule.global_interaction.0 heads.gae.encoder.0
        minimodule.downchannel.0/2/3    heads.lmf.ptf.fusion.0/2/3
        minimodule.G2L.GLinear/LLinear  heads.lmf.gma.q / .k
        minimodule.u_cls/m_cls/l_cls    heads.lmf.ptl.part_tokens rows 0/1/2 (1 x 1 x D each)
        minimodule.local_interaction{t}.{p}.*   heads.lmf.ptl.stacks.{p}.{t}.*
        minimodule.local_interaction_norm.*     heads.lmf.ptl.stacks.{p}.{T}.* (one norm shared
                                                by the parts there, copied to each part here)
        bn1 / classifier1               heads.necks.global.bn / .classifier
        bn_local / classifier_local     heads.necks.local.bn / .classifier
        bn_token.{i} / classifier_clsToken.{i}  heads.necks.cls<l_i>.bn / .classifier
    Left over by design: ``base.base.norm.*`` (final norm, unused there too), ``base.base.fc.*``,
    the unused top-level ``norm.*`` and ``local_bn.*``.
"""
import logging
import re
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ..modeling.weights import checkpoint_filter_fn, unwrap_state_dict

logger = logging.getLogger(__name__)

__all__ = ["ConversionReport", "convert_released_gltrans", "convert_transreid", "save_converted"]

_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class ConversionReport(dict):
    """{"state_dict": mapped tensors (model names), "used": source keys consumed,
    "unused_source": source keys left over, "unfilled_model": model keys not filled}."""

    def summary(self) -> str:
        lines = [f"converted {len(self['state_dict'])} model tensors from "
                 f"{len(self['used'])} source keys"]
        lines.append(f"source keys left over ({len(self['unused_source'])}): "
                     + (", ".join(self["unused_source"]) or "none"))
        lines.append(f"model keys not filled ({len(self['unfilled_model'])}): "
                     + (", ".join(self["unfilled_model"]) or "none"))
        return "\n".join(lines)


def _check_shapes(mapped: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor],
                  origin: Dict[str, str]):
    bad = [f"'{origin.get(k, k)}' -> '{k}': {tuple(v.shape)} vs model {tuple(target[k].shape)}"
           for k, v in mapped.items() if k in target and tuple(v.shape) != tuple(target[k].shape)]
    if bad:
        raise ValueError("shape mismatch between the checkpoint and the model built from the "
                         "config (check MODEL.BACKBONE.DEPTH / INPUT.SIZE_TRAIN / STRIDE_SIZE / "
                         "NUM_CAMERAS, MODEL.HEADS.NUM_CLASSES, MODEL.GLTRANS.*): "
                         + "; ".join(bad))


def _report(sd, mapped, used, target, origin) -> ConversionReport:
    _check_shapes(mapped, target, origin)
    unknown = [k for k in mapped if k not in target]
    if unknown:
        raise ValueError(f"mapped keys missing from the model: {unknown} (is the config the "
                         f"released-code / baseline preset the checkpoint was trained as?)")
    unfilled = [k for k in target if k not in mapped and not k.endswith(("pixel_mean",
                                                                          "pixel_std"))]
    return ConversionReport(state_dict=mapped, used=sorted(used),
                            unused_source=sorted(k for k in sd if k not in used),
                            unfilled_model=unfilled)


def _backbone_from_vit(sd: Dict[str, torch.Tensor], model: nn.Module, prefix: str,
                       old_grid=None, interpolation: str = "bilinear"):
    """ViT keys under ``prefix`` -> ({backbone.* : tensor}, used source keys, origin map)."""
    bb = model.backbone
    vit = {k: v for k, v in sd.items() if k.startswith(prefix)}
    if prefix + "pos_embed" not in vit:
        raise ValueError(f"no '{prefix}pos_embed' in the checkpoint: not the expected format "
                         f"(first keys: {sorted(sd)[:5]}).")
    filtered = checkpoint_filter_fn(vit, bb, fmt="auto", old_grid=old_grid,
                                    interpolation=interpolation)
    target = bb.state_dict()
    mapped, used, origin = {}, set(), {}
    for k, v in filtered.items():
        if k in target:
            mapped["backbone." + k] = v
            if k.startswith("cls_norms."):
                src = prefix + "norm." + k.split(".")[-1]
            else:
                src = prefix + k
            origin["backbone." + k] = src
            used.add(src)
    return mapped, used, origin


def _bn(mapped, used, origin, sd, src: str, dst: str):
    for p in _BN_KEYS:
        if f"{src}.{p}" in sd:
            mapped[f"{dst}.{p}"] = sd[f"{src}.{p}"]
            origin[f"{dst}.{p}"] = f"{src}.{p}"
            used.add(f"{src}.{p}")


def _copy(mapped, used, origin, sd, src: str, dst: str):
    if src in sd:
        mapped[dst] = sd[src]
        origin[dst] = src
        used.add(src)


def _last_cls_branch(model) -> Optional[str]:
    heads = getattr(model, "heads", None)
    necks = getattr(heads, "necks", None)
    name = getattr(heads, "last_cls_name", None)
    return name if necks is not None and name in necks else None


def convert_transreid(checkpoint, model: nn.Module, old_grid=None,
                      interpolation: str = "bilinear") -> ConversionReport:
    """(a): a TransReID-trained checkpoint (state dict or file contents) -> ``model``'s keys.

    ``old_grid`` is the checkpoint's patch grid (Hg, Wg) when it is neither square nor the
    model's (e.g. trained at another input size); TransReID resamples bilinearly.
    """
    sd = unwrap_state_dict(checkpoint)
    mapped, used, origin = _backbone_from_vit(sd, model, "base.", old_grid, interpolation)
    branch = _last_cls_branch(model)
    if branch is not None:
        _bn(mapped, used, origin, sd, "bottleneck", f"heads.necks.{branch}.bn")
        _copy(mapped, used, origin, sd, "classifier.weight",
              f"heads.necks.{branch}.classifier.weight")
    report = _report(sd, mapped, used, model.state_dict(), origin)
    logger.info("TransReID -> GLTrans: %s", report.summary())
    return report


def _released_map(sd: Dict[str, torch.Tensor], model: nn.Module) -> Tuple[Dict, set, Dict]:
    heads = model.heads
    mapped, used, origin = {}, set(), {}
    bb_mapped, bb_used, bb_origin = _backbone_from_vit(sd, model, "base.base.")
    # per-layer class-token norms: the released code's own (base.norm.k), not the final norm
    for k in [k for k in bb_mapped if k.startswith("backbone.cls_norms.")]:
        del bb_mapped[k]
        bb_used.discard(bb_origin.pop(k))
    mapped.update(bb_mapped)
    used |= bb_used
    origin.update(bb_origin)
    for k in range(len(model.backbone.cls_norms)):
        for p in ("weight", "bias"):
            _copy(mapped, used, origin, sd, f"base.norm.{k}.{p}", f"backbone.cls_norms.{k}.{p}")
    # PTF masks (released: base.PAM.k = conv1, bn1, GELU, conv2, bn2, Sigmoid)
    ptf = heads.lmf.ptf
    for k in range(len(ptf.masks)):
        dst = f"heads.lmf.ptf.masks.{k}.mask"
        _copy(mapped, used, origin, sd, f"base.PAM.{k}.conv1.weight", f"{dst}.0.weight")
        _bn(mapped, used, origin, sd, f"base.PAM.{k}.bn1", f"{dst}.1")
        _copy(mapped, used, origin, sd, f"base.PAM.{k}.conv2.weight", f"{dst}.3.weight")
        _bn(mapped, used, origin, sd, f"base.PAM.{k}.bn2", f"{dst}.4")
    mm = "minimodule."
    for p in ("weight", "bias"):
        _copy(mapped, used, origin, sd, f"{mm}global_interaction.0.{p}", f"heads.gae.encoder.0.{p}")
        for i in (0, 3):
            _copy(mapped, used, origin, sd, f"{mm}downchannel.{i}.{p}",
                  f"heads.lmf.ptf.fusion.{i}.{p}")
        _copy(mapped, used, origin, sd, f"{mm}G2L.GLinear.{p}", f"heads.lmf.gma.q.{p}")
        _copy(mapped, used, origin, sd, f"{mm}G2L.LLinear.{p}", f"heads.lmf.gma.k.{p}")
    _bn(mapped, used, origin, sd, f"{mm}downchannel.2", "heads.lmf.ptf.fusion.2")
    # PTL: part tokens, T layers per part, the shared final norm
    ptl = heads.lmf.ptl
    tokens = [f"{mm}{n}_cls" for n in ("u", "m", "l")]
    if all(t in sd for t in tokens):
        if ptl.num_parts != len(tokens):
            raise ValueError(f"the released code has 3 part tokens; the model has "
                             f"MODEL.GLTRANS.PTL.NUM_PARTS={ptl.num_parts}: set it to 3.")
        mapped["heads.lmf.ptl.part_tokens"] = torch.cat([sd[t].reshape(1, -1) for t in tokens])
        origin["heads.lmf.ptl.part_tokens"] = "+".join(tokens)
        used.update(tokens)
    if ptl.shared and any(k.startswith(f"{mm}local_interaction0.1.") for k in sd):
        raise ValueError("the released code has one PTL layer stack per part: build the model "
                         "with MODEL.GLTRANS.PTL.SHARED False (the *_released_code.yml preset).")
    layer_re = re.compile(rf"^{re.escape(mm)}local_interaction(\d+)\.(\d+)\.(.+)$")
    for k in sd:
        m = layer_re.match(k)
        if m:
            t, part, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            _copy(mapped, used, origin, sd, k, f"heads.lmf.ptl.stacks.{part}.{t}.{rest}")
    for part in range(len(ptl.stacks)):
        for p in ("weight", "bias"):
            src = f"{mm}local_interaction_norm.{p}"
            if src in sd:
                mapped[f"heads.lmf.ptl.stacks.{part}.{ptl.depth}.{p}"] = sd[src].clone()
                origin[f"heads.lmf.ptl.stacks.{part}.{ptl.depth}.{p}"] = src
                used.add(src)
    # BNNecks and classifiers
    _bn(mapped, used, origin, sd, "bn1", "heads.necks.global.bn")
    _copy(mapped, used, origin, sd, "classifier1.weight", "heads.necks.global.classifier.weight")
    _bn(mapped, used, origin, sd, "bn_local", "heads.necks.local.bn")
    _copy(mapped, used, origin, sd, "classifier_local.weight",
          "heads.necks.local.classifier.weight")
    for i, name in enumerate(heads.cls_names):
        _bn(mapped, used, origin, sd, f"bn_token.{i}", f"heads.necks.{name}.bn")
        _copy(mapped, used, origin, sd, f"classifier_clsToken.{i}.weight",
              f"heads.necks.{name}.classifier.weight")
    return mapped, used, origin


def convert_released_gltrans(checkpoint, model: nn.Module) -> ConversionReport:
    """(b): a checkpoint of the authors' released GLTrans code -> the released-code preset."""
    from ..modeling.meta_arch import GLTrans

    if not isinstance(model, GLTrans) or model.heads.lmf is None or model.heads.gae is None:
        raise ValueError("the released GLTrans code has GAE and LMF: build the target from "
                         "configs/GLTrans/*_released_code.yml (MODEL.META_ARCHITECTURE GLTrans).")
    ptf = model.heads.lmf.ptf
    if ptf is None or ptf.masks[0].kind != "conv_bn" or not isinstance(ptf.fusion[1], nn.GELU):
        raise ValueError("the released code's PTF has conv+BN masks and Conv1x1-GELU-BN-Conv3x3 "
                         "fusion: set MODEL.GLTRANS.PTF.MASK conv_bn and PTF.FUSION_ORDER "
                         "released (the *_released_code.yml preset).")
    eps = sorted({m.eps for m in model.heads.lmf.ptl.modules() if isinstance(m, nn.LayerNorm)})
    if eps and eps != [1e-5]:
        logger.warning("the released code's PTL LayerNorms have eps 1e-5, this model's %s: the "
                       "local feature will differ from theirs; set MODEL.GLTRANS.PTL.NORM_EPS "
                       "1e-5 (the *_released_code.yml preset).", eps)
    sd = unwrap_state_dict(checkpoint)
    mapped, used, origin = _released_map(sd, model)
    report = _report(sd, mapped, used, model.state_dict(), origin)
    logger.info("released GLTrans -> GLTrans: %s", report.summary())
    return report


def save_converted(report: ConversionReport, model: nn.Module, path: str,
                   fill_from_model: bool = True) -> str:
    """Write a fast-reid checkpoint ``{"model": state_dict}`` loadable via MODEL.WEIGHTS.

    ``fill_from_model``: model keys the source did not fill keep the model's initial values
    (they are listed in the report), so the file loads strictly."""
    sd = OrderedDict(model.state_dict()) if fill_from_model else OrderedDict()
    sd.update(report["state_dict"])
    torch.save({"model": {k: v.detach().cpu().contiguous() for k, v in sd.items()}}, path)
    logger.info("Converted checkpoint written to %s", path)
    return path

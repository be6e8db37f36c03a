"""``GLTransDistiller``: fast-reid's ``Distiller`` (JS-divergence knowledge distillation) with
teachers that may be GLTrans models.

Shape letters: B batch, C identities.

fast-reid's ``Distiller`` cannot take a GLTrans teacher as it stands (its bare ``get_cfg()``
reads a GLTrans ``KD.MODEL_CONFIG`` since the plugin adds its keys to fast-reid's defaults, but):
  1. it reads the teacher's sizes from the config only: a leaf config's 0 = "from the data"
     classes / cameras build a teacher that its checkpoint does not fit;
  2. it forces the teacher's ``META_ARCHITECTURE`` to "Baseline", so a GLTrans teacher would be
     built with the wrong head naming and its checkpoint would load only partly (silently);
  3. it calls ``teacher.backbone(images)`` on the *student's* normalised images and reads
     ``pred_class_logits`` from the teacher head in training mode.
This subclass builds each teacher with its own meta-architecture (``engine.build_trained_model``),
loads its weights strictly (classes / cameras read from the checkpoint), and asks it for logits
(B x C) on the raw batch:
  * GLTrans teacher: eval mode, its own normalisation and camera ids (SIE); logits = mean over
    the teacher's branches of each branch's classifier(BNNeck(feature));
  * any other (Baseline + EmbeddingHead) teacher: the head's ``pred_class_logits`` computed
    in eval mode (fast-reid's Distiller runs its teachers in training mode, so their BNs use
    and update batch statistics).
Losses are ``Distiller.losses`` unchanged (the student's own losses + ``loss_jsdiv``).
``KD.EMA`` (self-distillation) is not supported here: use fast-reid's ``Distiller`` for it.
"""
import logging

import torch
import torch.nn.functional as F
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY, Baseline
from fastreid.modeling.meta_arch.distiller import Distiller

logger = logging.getLogger(__name__)

__all__ = ["GLTransDistiller", "build_teacher", "teacher_logits"]


def build_teacher(config_file: str, weights: str):
    """A frozen teacher in eval mode from its yaml (plugin keys known) and trained weights."""
    from .config import setup_cfg
    from .loading import build_trained_model

    if not weights:
        raise ValueError(f"teacher {config_file!r} has no weights: set KD.MODEL_WEIGHTS (one "
                         f"checkpoint per KD.MODEL_CONFIG entry).")
    cfg_t = setup_cfg(config_file)
    cfg_t.MODEL.WEIGHTS = weights
    for node in (cfg_t.MODEL.BACKBONE, cfg_t.MODEL.HEADS):  # no DDP wrapper around teachers
        if node.NORM == "syncBN":
            node.NORM = "BN"
    _, model_t = build_trained_model(cfg_t, key="KD.MODEL_WEIGHTS")
    for p in model_t.parameters():
        p.requires_grad_(False)
    return model_t.eval()


@torch.no_grad()
def teacher_logits(model_t, batched_inputs) -> torch.Tensor:
    """B x C teacher logits for a raw fast-reid batch (images 0..255, not normalised)."""
    from .modeling.meta_arch import GLTrans

    if isinstance(model_t, GLTrans):
        return model_t.class_logits(batched_inputs)  # B x C, eval mode, its own ids
    images = Baseline.preprocess_image(model_t, {"images": batched_inputs["images"].clone()})
    heads = model_t.heads  # fast-reid's EmbeddingHead; in eval mode it returns features only
    neck = heads.bottleneck(heads.pool_layer(model_t.backbone(images)))[..., 0, 0]  # B x D
    if heads.cls_layer.__class__.__name__ == "Linear":
        logits = F.linear(neck, heads.weight)
    else:  # cosine-type layers (ArcSoftmax, CircleSoftmax, CosSoftmax)
        logits = F.linear(F.normalize(neck), F.normalize(heads.weight))
    return logits.mul(heads.cls_layer.s)  # B x C, as its "pred_class_logits"


@META_ARCH_REGISTRY.register()
class GLTransDistiller(Distiller):
    """``Distiller`` whose ``KD.MODEL_CONFIG`` teachers may be GLTrans configs (see module doc)."""

    def __init__(self, cfg):
        Baseline.__init__(self, cfg)  # the student; Distiller.__init__ would rebuild teachers
        if cfg.KD.EMA.ENABLED:
            raise ValueError("GLTransDistiller does not support KD.EMA (self-distillation); set "
                             "KD.EMA.ENABLED False or use MODEL.META_ARCHITECTURE 'Distiller'.")
        configs, weights = list(cfg.KD.MODEL_CONFIG), list(cfg.KD.MODEL_WEIGHTS)
        if not configs or len(configs) != len(weights):
            raise ValueError(f"KD.MODEL_CONFIG ({len(configs)}) and KD.MODEL_WEIGHTS "
                             f"({len(weights)}) must list the same number (>= 1) of teachers.")
        self.ema_enabled = False
        self.ema_momentum = cfg.KD.EMA.MOMENTUM
        # a plain list, as fast-reid's: teachers are not saved in the student's checkpoints
        self.model_ts = [build_teacher(c, w) for c, w in zip(configs, weights)]
        for c, w in zip(configs, weights):
            logger.info("Teacher %s loaded from %s", c, w)

    def forward(self, batched_inputs):
        if not self.training:
            return Baseline.forward(self, batched_inputs)
        if "targets" not in batched_inputs:
            raise ValueError("Training needs batched_inputs['targets'] (identity labels).")
        device = self.device
        for t in self.model_ts:  # teachers follow the student's device
            if next(t.parameters()).device != device:
                t.to(device)
        # teachers first: the student's preprocess normalises the images in place
        t_outputs = [{"pred_class_logits": teacher_logits(t, batched_inputs)}
                     for t in self.model_ts]
        images = self.preprocess_image(batched_inputs)
        targets = batched_inputs["targets"].to(device)
        if targets.sum() < 0:
            targets.zero_()
        s_outputs = self.heads(self.backbone(images), targets)
        return self.losses(s_outputs, t_outputs, targets)

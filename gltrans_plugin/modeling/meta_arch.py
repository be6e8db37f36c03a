"""``GLTrans`` meta-architecture: images + camera (and viewpoint) ids -> loss dict / test feature.

Shape letters: B batch, 3 x H x W images, D embed dim, P parts, C identities.

    batched_inputs {"images": B x 3 x H x W (0..255), "targets": B, "camids": B, ["viewids": B]}
    -> backbone(images_normalised, camids, viewids)
       BackboneOutput(cls K x (B x D), patches K x (B x N x D), grid (Hg, Wg)); the head is
       sized from ``backbone.output_spec()``
    -> GLTransHead
       training: {"loss_ce_<branch>": scalar, "loss_triplet_<branch>": scalar}
       eval:     test feature B x (P+2)D  (concat of MODEL.GLTRANS.TEST_BRANCHES)

Unlike fast-reid's ``Baseline`` it normalises the batch out of place (the caller's tensor is left
as it was, so flip-test does not normalise twice) and hands the ids to the backbone.
"""

import logging
from typing import Optional

import torch
from fastreid.config import configurable
from fastreid.modeling.backbones import build_backbone
from fastreid.modeling.heads import REID_HEADS_REGISTRY
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY, Baseline
from torch import nn

from .backbone import GLTransBackbone
from .heads import GLTransHead
from .losses import MultiBranchLoss, log_branch_accuracy, log_branch_health

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class GLTrans(Baseline):
    """Baseline with GLTrans' head and multi-branch loss; see the module docstring."""

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        heads: GLTransHead,
        pixel_mean,
        pixel_std,
        criterion: MultiBranchLoss,
        loss_kwargs=None,
    ):
        super().__init__(
            backbone=backbone,
            heads=heads,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            loss_kwargs=loss_kwargs,
        )
        self.criterion = criterion

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        head_cls = REID_HEADS_REGISTRY.get(cfg.MODEL.HEADS.NAME)
        if not (isinstance(head_cls, type) and issubclass(head_cls, GLTransHead)):
            raise ValueError(
                f"MODEL.META_ARCHITECTURE 'GLTrans' needs a GLTrans head; "
                f"MODEL.HEADS.NAME is {cfg.MODEL.HEADS.NAME!r}: set it to "
                f"'GLTransHead'."
            )
        if not isinstance(backbone, GLTransBackbone):
            raise ValueError(
                f"MODEL.META_ARCHITECTURE 'GLTrans' needs a backbone that publishes its output "
                f"(output_spec() and a BackboneOutput forward: modeling.backbone.GLTransBackbone, "
                f"as build_gltrans_backbone's); MODEL.BACKBONE.NAME is "
                f"{cfg.MODEL.BACKBONE.NAME!r}.")
        heads = head_cls(cfg, spec=backbone.output_spec())
        criterion = MultiBranchLoss(
            cfg,
            branches=heads.branch_names,
            entries=heads.branch_entries,
            last_cls=heads.last_cls_name,
        )
        return {
            "backbone": backbone,
            "heads": heads,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "criterion": criterion,
        }

    @property
    def feat_dim(self) -> int:
        """Dimension of the test feature."""
        return self.heads.feat_dim

    def preprocess_image(self, batched_inputs) -> torch.Tensor:
        """(x - mean) / std, out of place: the caller's tensor is not modified."""
        if isinstance(batched_inputs, dict):
            images = batched_inputs["images"]
        elif isinstance(batched_inputs, torch.Tensor):
            images = batched_inputs
        else:
            raise TypeError(
                f"batched_inputs must be a dict or a Tensor, got {type(batched_inputs)}"
            )
        images = images.to(self.device)
        if not images.is_floating_point():
            images = images.float()
        return (images - self.pixel_mean) / self.pixel_std

    def _ids(self, batched_inputs, key: str) -> Optional[torch.Tensor]:
        ids = batched_inputs.get(key) if isinstance(batched_inputs, dict) else None
        if ids is None:
            return None
        return torch.as_tensor(ids).to(self.device)

    def backbone_features(self, batched_inputs):
        """The backbone's output for a raw batch (normalised out of place, ids passed on)."""
        images = self.preprocess_image(batched_inputs)
        return self.backbone(images, camids=self._ids(batched_inputs, "camids"),
                             viewids=self._ids(batched_inputs, "viewids"))

    @torch.no_grad()
    def class_logits(self, batched_inputs) -> torch.Tensor:
        """B x C: the mean over the trained branches of classifier(BNNeck(feature)), in eval
        mode (what a distillation teacher hands its student)."""
        was_training = self.training
        self.eval()
        try:
            heads = self.heads
            branch = heads.branch_features(self.backbone_features(batched_inputs))
            logits = [heads.necks[n](branch[n])[1] for n in heads.branch_names]  # each B x C
        finally:
            self.train(was_training)
        return torch.stack(logits, 0).mean(0)

    def forward(self, batched_inputs):
        features = self.backbone_features(batched_inputs)
        if not self.training:
            return self.heads(features)  # B x feat_dim
        if not isinstance(batched_inputs, dict) or "targets" not in batched_inputs:
            raise ValueError("Training needs batched_inputs['targets'] (identity labels).")
        targets = torch.as_tensor(batched_inputs["targets"]).to(self.device)
        if targets.sum() < 0:  # fast-reid's PreciseBN convention (no in-place change here)
            targets = torch.zeros_like(targets)
        outputs = self.heads(features, targets)
        return self.losses(outputs, targets)

    def losses(self, outputs, gt_labels):
        """{"loss_ce_<branch>", "loss_triplet_<branch>"}: weighted terms summing to the loss."""
        first = self.heads.branch_names[0]
        log_branch_accuracy(outputs["logits"][first], gt_labels)
        # health of the space the triplet terms shape (pre- or post-BNNeck)
        feats = outputs["neck_features" if self.criterion.tri_feature == "after" else "features"]
        log_branch_health({b: feats[b] for b in self.heads.branch_names}, gt_labels)
        return self.criterion(outputs, gt_labels)

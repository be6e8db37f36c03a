"""Multi-branch loss of GLTrans (paper eq. 14-16).

Shape letters: B batch, C identities; each branch feature is B x dim.

    loss = CE_WEIGHT  * (1/n) sum_b w_b * CE(logits_b, y)          (label smoothing: eps)
         + TRI_WEIGHT * (1/n) sum_b w_b * Triplet(f_b, y)          (pre-BN f_b, batch-hard)
with n the number of branches and w_b the branch weights (1 by default, so both terms are plain
means).  Each summand is returned under its own key, ``loss_ce_<branch>`` and
``loss_triplet_<branch>``, already weighted: the keys sum to the total loss.

fast-reid's ``cross_entropy_loss`` (smoothing eps/(C-1)) and ``triplet_loss`` (soft margin when
margin <= 0, euclidean distance unless ``norm_feat``) are reused.
``cls_triplet_on_last`` reproduces the released code, whose cls-branch triplet terms all use
the last layer's class token.
"""

import logging
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from fastreid.config import configurable
from fastreid.modeling.losses import cross_entropy_loss, log_accuracy, triplet_loss

logger = logging.getLogger(__name__)


def resolve_branch_weights(
    weights: Sequence[float], names: Sequence[str], entries: Sequence[str]
) -> Dict[str, float]:
    """BRANCH_WEIGHTS -> {branch: weight}. () -> all 1; one per branch; or one per config entry
    (a "cls" entry's weight then applies to each of its cls<l> branches)."""
    weights = [float(w) for w in weights]
    if not weights:
        return {n: 1.0 for n in names}
    if len(weights) == len(names):
        return dict(zip(names, weights))
    uniq = list(dict.fromkeys(entries))
    if len(weights) == len(uniq):
        per_entry = dict(zip(uniq, weights))
        return {n: per_entry[e] for n, e in zip(names, entries)}
    raise ValueError(
        f"MODEL.GLTRANS.BRANCH_WEIGHTS has {len(weights)} values; give one per "
        f"branch {list(names)} or one per MODEL.GLTRANS.BRANCHES entry {uniq}."
    )


class MultiBranchLoss:
    """Callable: (head training outputs, targets) -> {loss_ce_<b>, loss_triplet_<b>}."""

    @configurable
    def __init__(
        self,
        *,
        branches: Sequence[str],
        branch_weights: Optional[Dict[str, float]] = None,
        ce_weight: float = 1.0,
        tri_weight: float = 1.0,
        ce_eps: float = 0.0,
        ce_alpha: float = 0.2,
        tri_margin: float = 0.0,
        tri_norm_feat: bool = False,
        tri_hard_mining: bool = True,
        cls_triplet_on_last: bool = False,
        last_cls: Optional[str] = None,
        tri_feature: str = "before",
    ):
        self.branches = list(branches)
        self.weights = {b: 1.0 for b in self.branches}
        self.weights.update(branch_weights or {})
        self.ce_weight, self.tri_weight = float(ce_weight), float(tri_weight)
        self.ce_eps, self.ce_alpha = ce_eps, ce_alpha
        self.tri_margin, self.tri_norm_feat, self.tri_hard_mining = (
            tri_margin,
            tri_norm_feat,
            tri_hard_mining,
        )
        if tri_feature not in ("before", "after"):
            raise ValueError(
                f"MODEL.GLTRANS.TRI_FEATURE={tri_feature!r}: use 'before' (pre-BNNeck "
                f"features) or 'after' (BNNeck outputs)."
            )
        self.tri_feature = tri_feature
        if cls_triplet_on_last and last_cls is None:
            raise ValueError("cls_triplet_on_last needs the name of the last cls branch.")
        # which feature each branch's triplet term uses
        self.triplet_source = {
            b: (last_cls if cls_triplet_on_last and b.startswith("cls") else b)
            for b in self.branches
        }

    @classmethod
    def from_config(cls, cfg, branches: Sequence[str], entries: Sequence[str], last_cls: str):
        g, L = cfg.MODEL.GLTRANS, cfg.MODEL.LOSSES
        if g.TRI_SOFT_MARGIN:
            margin = 0.0
        else:
            margin = float(L.TRI.MARGIN)
            if margin <= 0:
                raise ValueError(
                    f"MODEL.GLTRANS.TRI_SOFT_MARGIN is False but "
                    f"MODEL.LOSSES.TRI.MARGIN={margin}: give a margin > 0 (e.g. 0.3) "
                    f"or turn the soft margin on."
                )
        return {
            "branches": branches,
            "branch_weights": resolve_branch_weights(g.BRANCH_WEIGHTS, branches, entries),
            "ce_weight": g.CE_WEIGHT,
            "tri_weight": g.TRI_WEIGHT,
            "ce_eps": L.CE.EPSILON,
            "ce_alpha": L.CE.ALPHA,
            "tri_margin": margin,
            "tri_norm_feat": L.TRI.NORM_FEAT,
            "tri_hard_mining": L.TRI.HARD_MINING,
            "cls_triplet_on_last": g.CLS_TRIPLET_ON_LAST,
            "last_cls": last_cls,
            "tri_feature": g.TRI_FEATURE,
        }

    def __call__(self, outputs: Dict, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits = outputs["logits"]
        feats = outputs["features"] if self.tri_feature == "before" else outputs["neck_features"]
        n = len(self.branches)
        losses = {}
        for b in self.branches:
            w = self.weights[b] / n
            if self.ce_weight:
                ce = cross_entropy_loss(logits[b].float(), targets, self.ce_eps, self.ce_alpha)
                losses[f"loss_ce_{b}"] = ce * (self.ce_weight * w)
            if self.tri_weight:
                f = feats[self.triplet_source[b]].float()
                tri = triplet_loss(
                    f, targets, self.tri_margin, self.tri_norm_feat, self.tri_hard_mining
                )
                losses[f"loss_triplet_{b}"] = tri * (self.tri_weight * w)
        return losses


HEALTH_PREFIX = "health/"


@torch.no_grad()
def metric_stats(feat: torch.Tensor, targets: torch.Tensor) -> Dict[str, float]:
    """How well one branch's pre-BN features (B x dim) separate identities in this batch.

    norm        mean L2 norm of the features
    pos, neg    mean euclidean distance between images of the same / of different identities
    rel_gap     (neg - pos) / neg: 0 when negatives are as close as positives, scale-free
    cos_pos, cos_neg   mean cosine similarity of the same pairs; cos_neg near 1 = every image
                maps to nearly the same direction (collapsed features)
    violation   share of anchors whose hardest positive is at least as far as their hardest
                negative (the batch-hard triplets with the wrong order)
    Empty dict when the batch has no positive or no negative pair.
    """
    f = feat.detach().float()
    t = targets.view(-1)
    same = t[:, None] == t[None, :]
    eye = torch.eye(len(t), dtype=torch.bool, device=t.device)
    pos, neg = same & ~eye, ~same
    if not pos.any() or not neg.any():
        return {}
    dist = torch.cdist(f, f)
    unit = F.normalize(f, dim=1)
    cos = unit @ unit.t()
    pos_d, neg_d = dist[pos].mean(), dist[neg].mean()
    hard_ap = dist.masked_fill(~pos, float("-inf")).amax(dim=1)
    hard_an = dist.masked_fill(~neg, float("inf")).amin(dim=1)
    has_both = pos.any(dim=1) & neg.any(dim=1)
    return {
        "norm": f.norm(dim=1).mean().item(),
        "pos": pos_d.item(),
        "neg": neg_d.item(),
        "rel_gap": ((neg_d - pos_d) / neg_d.clamp_min(1e-12)).item(),
        "cos_pos": cos[pos].mean().item(),
        "cos_neg": cos[neg].mean().item(),
        "violation": (hard_ap[has_both] >= hard_an[has_both]).float().mean().item(),
    }


def log_branch_health(feats: Dict[str, torch.Tensor], targets: torch.Tensor) -> None:
    """Put ``metric_stats`` of every branch into fast-reid's EventStorage as
    ``health/<branch>/<stat>`` (metrics.json, TensorBoard); no-op outside a trainer."""
    from fastreid.utils import events

    if not getattr(events, "_CURRENT_STORAGE_STACK", None):
        return
    storage = events.get_event_storage()
    for b, f in feats.items():
        for k, v in metric_stats(f, targets).items():
            storage.put_scalar(f"{HEALTH_PREFIX}{b}/{k}", v)


def log_branch_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """fast-reid's ``cls_accuracy`` metric, when an EventStorage is active (trainer); else no-op."""
    from fastreid.utils import events

    if getattr(events, "_CURRENT_STORAGE_STACK", None):
        log_accuracy(logits.detach(), targets)

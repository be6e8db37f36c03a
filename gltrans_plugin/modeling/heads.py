"""GLTrans heads: LMF (PTF -> GMA -> PTL) and ``GLTransHead`` (GAE + LMF + branch necks).

Shape letters: B batch, D embed dim, K aggregated layers, Hg x Wg patch grid, N = Hg*Wg,
P parts, C identities.

Branches are data.  ``MODEL.GLTRANS.BRANCHES`` entries expand to branch names:
    "global"    f_g from GAE                              B x D   (B x KD for GAE "concat")
    "local"     f_l from LMF                              B x PD
    "cls"       one branch per aggregated layer, "cls<l>" with l its 1-based layer number
                (cls10, cls11, cls12 for ViT-B and the last three layers)      B x D each
    "cls_last"  only the last aggregated layer's class token
    "cls<l>"    one named layer
Each branch has a BNNeck (BatchNorm1d, weight 1, bias 0 and trainable as the released code's;
frozen at zero as fast-reid's with MODEL.GLTRANS.NECK_BIAS_FREEZE) and a Linear classifier
(no bias, init std 0.001).  ``MODEL.GLTRANS.TEST_BRANCHES`` (same names) picks the test feature,
concatenated in that order: concat(f_g, f_l, cls^L) (paper; the released code's is
concat(f_l, f_g, cls^L)), B x (P+2)D, before the BNNeck unless MODEL.HEADS.NECK_FEAT = "after".
"""

import logging
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from fastreid.config import configurable
from fastreid.modeling.heads import REID_HEADS_REGISTRY
from torch import nn

from .backbone import BackboneOutput, BackboneSpec, spec_from_config
from .gae import GAE
from .gma import GMA
from .ptf import PTF
from .ptl import PTL, stripe_sizes

logger = logging.getLogger(__name__)

_CLS_RE = re.compile(r"^cls(\d+)$")


def expand_branches(entries: Sequence[str], layer_numbers: Sequence[int]) -> List[Tuple[str, str]]:
    """Config entries -> [(branch name, entry it came from)], in order, without duplicates."""
    out: List[Tuple[str, str]] = []
    last = layer_numbers[-1]
    for e in entries:
        if e in ("global", "local"):
            names = [e]
        elif e == "cls":
            names = [f"cls{n}" for n in layer_numbers]
        elif e == "cls_last":
            names = [f"cls{last}"]
        elif _CLS_RE.match(e):
            if int(_CLS_RE.match(e).group(1)) not in layer_numbers:
                raise ValueError(
                    f"Branch {e!r} names layer {e[3:]}, which is not aggregated "
                    f"(aggregated layers: {list(layer_numbers)}); change "
                    f"MODEL.GLTRANS.AGG_LAYERS or the branch list."
                )
            names = [e]
        else:
            raise ValueError(
                f"Unknown branch {e!r}; use 'global', 'local', 'cls', 'cls_last' or "
                f"'cls<layer>' (aggregated layers: {list(layer_numbers)})."
            )
        for n in names:
            if n in [o[0] for o in out]:
                raise ValueError(f"Branch {n!r} is listed twice (from {e!r}).")
            out.append((n, e))
    return out


class BNNeckClassifier(nn.Module):
    """BNNeck (BatchNorm1d, bias 0 at init; trainable, or frozen with ``bias_freeze``) followed
    by a bias-free Linear classifier."""

    def __init__(self, dim: int, num_classes: int, bias_freeze: bool = False):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        if bias_freeze:
            self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x: B x dim -> (BN(x): B x dim, logits: B x C)."""
        bn = self.bn(x)
        return bn, self.classifier(bn)


class LMF(nn.Module):
    """Local Multi-layer Fusion: PTF (optional) -> GMA (optional) -> PTL; returns f_l (B x PD).

    Without PTF the last aggregated layer's patch tokens are used as F.
    """

    @configurable
    def __init__(self, *, ptl: PTL, ptf: Optional[PTF] = None, gma: Optional[GMA] = None):
        super().__init__()
        self.ptf, self.gma, self.ptl = ptf, gma, ptl
        self.out_dim = ptl.out_dim

    @classmethod
    def from_config(
        cls,
        cfg,
        embed_dim: int,
        num_layers: int,
        global_dim: Optional[int],
        num_heads: Optional[int] = None,
    ):
        g = cfg.MODEL.GLTRANS
        ptf = PTF(cfg, embed_dim=embed_dim, num_layers=num_layers) if g.PTF.ENABLED else None
        gma = None
        if g.GMA.ENABLED:
            if global_dim is None:
                raise ValueError(
                    "MODEL.GLTRANS.GMA needs the global feature f_g from GAE: set "
                    "MODEL.GLTRANS.GAE.ENABLED True or MODEL.GLTRANS.GMA.ENABLED "
                    "False."
                )
            gma = GMA(cfg, embed_dim=embed_dim, global_dim=global_dim)
        ptl = PTL(cfg, embed_dim=embed_dim, num_cls=num_layers, num_heads=num_heads)
        return {"ptl": ptl, "ptf": ptf, "gma": gma}

    def forward(
        self,
        patches: Sequence[torch.Tensor],
        grid: Tuple[int, int],
        cls_tokens: Sequence[torch.Tensor],
        f_g: Optional[torch.Tensor] = None,
    ):
        tokens = self.ptf(patches, grid) if self.ptf is not None else patches[-1]  # B x N x D
        if self.gma is not None:
            tokens = self.gma(f_g, tokens)  # B x N x D
        return self.ptl(tokens, grid, cls_tokens)  # B x PD


@REID_HEADS_REGISTRY.register()
class GLTransHead(nn.Module):
    """GAE + LMF + per-branch BNNeck/classifier.

    forward(features, targets=None), ``features`` the backbone's dict
    {"cls": K x (B x D), "patches": K x (B x N x D), "grid": (Hg, Wg)}:
      training -> {"features": {name: B x dim (pre-BN)} for every branch and every cls<l>,
                   "neck_features": {branch: B x dim (after the branch's BNNeck)},
                   "logits": {branch: B x C}}
      eval     -> test feature B x ``feat_dim`` (concat of TEST_BRANCHES in their order,
                  pre- or post-BN)
    """

    @configurable
    def __init__(
        self,
        *,
        embed_dim: int,
        layer_numbers: Sequence[int],
        num_classes: int,
        branches: Sequence[str] = ("global", "local", "cls"),
        test_branches: Sequence[str] = ("global", "local", "cls_last"),
        gae: Optional[GAE] = None,
        lmf: Optional[LMF] = None,
        neck_feat: str = "before",
        neck_bias_freeze: bool = False,
    ):
        super().__init__()
        if neck_feat not in ("before", "after"):
            raise ValueError(f"MODEL.HEADS.NECK_FEAT={neck_feat!r} must be 'before' or 'after'.")
        if num_classes < 1:
            raise ValueError(
                f"MODEL.HEADS.NUM_CLASSES={num_classes}: set it to the number of "
                f"training identities (the trainer does this from the data)."
            )
        self.embed_dim, self.neck_feat = embed_dim, neck_feat
        self.layer_numbers = [int(n) for n in layer_numbers]
        self.cls_names = [f"cls{n}" for n in self.layer_numbers]
        self.last_cls_name = self.cls_names[-1]
        self.gae, self.lmf = gae, lmf

        expanded = expand_branches(branches, self.layer_numbers)
        self.branch_names = [n for n, _ in expanded]
        self.branch_entries = [e for _, e in expanded]
        if not self.branch_names:
            raise ValueError("MODEL.GLTRANS.BRANCHES is empty: at least one branch is needed.")
        dims = {n: embed_dim for n in self.cls_names}
        if gae is not None:
            dims["global"] = gae.out_dim
        if lmf is not None:
            dims["local"] = lmf.out_dim
        for n in self.branch_names:
            if n not in dims:
                what = {
                    "global": "MODEL.GLTRANS.GAE.ENABLED",
                    "local": "MODEL.GLTRANS.LOCAL.ENABLED",
                }
                raise ValueError(
                    f"Branch {n!r} is listed in MODEL.GLTRANS.BRANCHES but its module "
                    f"is disabled: set {what.get(n, '?')} True or remove the branch."
                )
        # every module must take part in the loss (fast-reid's DDP finds no unused parameters)
        if (
            gae is not None
            and "global" not in self.branch_names
            and (lmf is None or lmf.gma is None or "local" not in self.branch_names)
        ):
            raise ValueError(
                "GAE is enabled but f_g feeds no loss: add 'global' to "
                "MODEL.GLTRANS.BRANCHES or set MODEL.GLTRANS.GAE.ENABLED False."
            )
        if lmf is not None and "local" not in self.branch_names:
            raise ValueError(
                "LMF is enabled but f_l feeds no loss: add 'local' to "
                "MODEL.GLTRANS.BRANCHES or set MODEL.GLTRANS.LOCAL.ENABLED False."
            )
        uses_cls_in_ptl = lmf is not None and lmf.ptl.depth > 0 and lmf.ptl.with_cls
        if gae is None and not uses_cls_in_ptl:
            unused = [n for n in self.cls_names if n not in self.branch_names]
            if unused:
                raise ValueError(
                    f"Class tokens {unused} feed no loss (no GAE, no PTL with class "
                    f"tokens, no branch): add 'cls' to MODEL.GLTRANS.BRANCHES or "
                    f"aggregate fewer layers (MODEL.GLTRANS.AGG_LAYERS)."
                )

        self.necks = nn.ModuleDict(
            {
                n: BNNeckClassifier(dims[n], num_classes, bias_freeze=neck_bias_freeze)
                for n in self.branch_names
            }
        )
        self.test_names = [n for n, _ in expand_branches(test_branches, self.layer_numbers)]
        for n in self.test_names:
            if n not in self.branch_names:
                raise ValueError(
                    f"Test branch {n!r} (MODEL.GLTRANS.TEST_BRANCHES) is not a "
                    f"trained branch {self.branch_names}: add it to "
                    f"MODEL.GLTRANS.BRANCHES or drop it from TEST_BRANCHES."
                )
        if not self.test_names:
            raise ValueError("MODEL.GLTRANS.TEST_BRANCHES is empty.")
        self.feat_dim = sum(dims[n] for n in self.test_names)

    @classmethod
    def from_config(
        cls,
        cfg,
        spec: Optional[BackboneSpec] = None,
        embed_dim: Optional[int] = None,
        layer_numbers: Optional[Sequence[int]] = None,
        num_heads: Optional[int] = None,
    ):
        """``spec``: the backbone's ``output_spec()`` (the meta-architecture passes it); built
        from the registry alone, the GLTrans backbone's spec from the config.  ``embed_dim``,
        ``layer_numbers``, ``num_heads`` override the spec's (tests, converters)."""
        g = cfg.MODEL.GLTRANS
        if spec is None:
            spec = spec_from_config(cfg)
        embed_dim = spec.embed_dim if embed_dim is None else embed_dim
        layer_numbers = list(spec.layer_numbers if layer_numbers is None else layer_numbers)
        num_heads = spec.num_heads if num_heads is None else num_heads
        k = len(layer_numbers)
        gae = GAE(cfg, embed_dim=embed_dim, num_layers=k) if g.GAE.ENABLED else None
        lmf = None
        if g.LOCAL.ENABLED:
            # fail at build time, not at the first batch, when P exceeds the grid rows
            for size in (cfg.INPUT.SIZE_TRAIN, cfg.INPUT.SIZE_TEST):
                stripe_sizes(spec.grid_of(size)[0], g.PTL.NUM_PARTS)
            lmf = LMF(
                cfg,
                embed_dim=embed_dim,
                num_layers=k,
                global_dim=gae.out_dim if gae is not None else None,
                num_heads=num_heads,
            )
        return {
            "embed_dim": embed_dim,
            "layer_numbers": layer_numbers,
            "num_classes": cfg.MODEL.HEADS.NUM_CLASSES,
            "branches": list(g.BRANCHES),
            "test_branches": list(g.TEST_BRANCHES),
            "gae": gae,
            "lmf": lmf,
            "neck_feat": cfg.MODEL.HEADS.NECK_FEAT,
            "neck_bias_freeze": bool(g.NECK_BIAS_FREEZE),
        }

    def branch_features(self, features: BackboneOutput) -> Dict[str, torch.Tensor]:
        """Backbone output -> {name: B x dim} for global/local (when built) and every cls<l>."""
        if not isinstance(features, BackboneOutput):
            raise TypeError(f"GLTransHead takes the backbone's BackboneOutput(cls, patches, grid), "
                            f"got {type(features).__name__}: a GLTrans backbone's forward must "
                            f"return modeling.backbone.BackboneOutput.")
        cls_tokens, patches, grid = features
        if len(cls_tokens) != len(self.cls_names):
            raise ValueError(
                f"The head was built for {len(self.cls_names)} aggregated layers, "
                f"the backbone returned {len(cls_tokens)}."
            )
        feats = dict(zip(self.cls_names, cls_tokens))
        f_g = self.gae(cls_tokens) if self.gae is not None else None
        if f_g is not None:
            feats["global"] = f_g
        if self.lmf is not None:
            feats["local"] = self.lmf(patches, tuple(grid), cls_tokens, f_g)
        return feats

    def forward(self, features: Dict, targets: Optional[torch.Tensor] = None):
        feats = self.branch_features(features)
        if not self.training:
            if self.neck_feat == "after":
                out = [self.necks[n].bn(feats[n]) for n in self.test_names]
            else:
                out = [feats[n] for n in self.test_names]
            return torch.cat(out, dim=1)  # B x feat_dim
        necked = {n: self.necks[n](feats[n]) for n in self.branch_names}
        return {
            "features": feats,
            "neck_features": {n: bn for n, (bn, _) in necked.items()},
            "logits": {n: logits for n, (_, logits) in necked.items()},
        }

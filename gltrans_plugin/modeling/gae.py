"""GAE — Global Aggregation Encoder (paper eq. 2-3, Table 7).

Shape letters: B batch, D embed dim, K aggregated layers (class tokens cls^l, l = L-K+1..L).

    X_g = concat(cls^{L-K+1}, ..., cls^L)          B x KD
    f_g = act(FC(X_g)),  FC: KD -> D                B x D      ("fc", the paper)

Variants (``MODEL.GLTRANS.GAE.AGGREGATION``):
    "fc"      one Linear KD -> D, then the activation                 -> B x D
    "two_fc"  Linear KD -> D, act, Linear D -> D, act                 -> B x D
    "add"     sum of the K class tokens (no parameters, no activation) -> B x D
    "concat"  X_g itself (no parameters, no activation)               -> B x KD
Activation (``GAE.ACTIVATION``): "gelu" (paper) | "none" (released code).
Linear init (``MODEL.GLTRANS.LINEAR_INIT``): ``linear_init.init_linears``.
"""

import logging
from typing import Sequence

import torch
from fastreid.config import configurable
from torch import nn

from .linear_init import init_linears

logger = logging.getLogger(__name__)

AGGREGATIONS = ("fc", "two_fc", "add", "concat")
ACTIVATIONS = ("gelu", "none")


def _act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"MODEL.GLTRANS.GAE.ACTIVATION={name!r} is not one of {ACTIVATIONS}.")
    return nn.GELU() if name == "gelu" else nn.Identity()


# Init of the heads' Linear layers (GAE, PTF masks, GMA, PTL), ``MODEL.GLTRANS.LINEAR_INIT``.


class GAE(nn.Module):
    """Aggregates the K class tokens into the global feature f_g (B x ``out_dim``)."""

    @configurable
    def __init__(
        self,
        *,
        embed_dim: int,
        num_layers: int,
        aggregation: str = "fc",
        activation: str = "gelu",
        linear_init: str = "kaiming_fan_out",
    ):
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(
                f"MODEL.GLTRANS.GAE.AGGREGATION={aggregation!r} is not one of {AGGREGATIONS}."
            )
        if num_layers < 1:
            raise ValueError(f"GAE needs at least one class token, got num_layers={num_layers}.")
        self.embed_dim, self.num_layers, self.aggregation = embed_dim, num_layers, aggregation
        kd = num_layers * embed_dim
        if aggregation == "fc":
            self.encoder = nn.Sequential(nn.Linear(kd, embed_dim), _act(activation))
        elif aggregation == "two_fc":
            self.encoder = nn.Sequential(
                nn.Linear(kd, embed_dim),
                _act(activation),
                nn.Linear(embed_dim, embed_dim),
                _act(activation),
            )
        else:  # parameter-free: the activation is not applied (Table 7 rows 2-3)
            _act(activation)  # still validate the value
            self.encoder = None
        self.out_dim = kd if aggregation == "concat" else embed_dim
        init_linears(self, linear_init)

    @classmethod
    def from_config(cls, cfg, embed_dim: int, num_layers: int):
        g = cfg.MODEL.GLTRANS.GAE
        return {
            "embed_dim": embed_dim,
            "num_layers": num_layers,
            "aggregation": g.AGGREGATION,
            "activation": g.ACTIVATION,
            "linear_init": cfg.MODEL.GLTRANS.LINEAR_INIT,
        }

    def forward(self, cls_tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        """cls_tokens: K tensors B x D (oldest layer first) -> f_g: B x out_dim."""
        if len(cls_tokens) != self.num_layers:
            raise ValueError(
                f"GAE was built for {self.num_layers} class tokens, got {len(cls_tokens)}."
            )
        if self.aggregation == "add":
            return torch.stack(list(cls_tokens), 0).sum(0)  # B x D
        x_g = torch.cat(list(cls_tokens), dim=1)  # B x KD
        if self.encoder is None:  # concat
            return x_g
        return self.encoder(x_g)  # B x D

"""PTF — Patch Token Fusion (paper eq. 4-7).

Shape letters: B batch, D embed dim, K aggregated layers, Hg x Wg patch grid, N = Hg*Wg,
r mask reduction ratio.

For each aggregated layer l (own weights per layer):
    mask^l  = Sigmoid(W2 GELU(W1 X^l))   W1: D -> D/r, W2: D/r -> D      B x N x D
    X^l_hat = mask^l * X^l + X^l                                          B x N x D
Fusion:
    concat_l reshape(X^l_hat)                                             B x KD x Hg x Wg
    F = GELU(BN(Conv3x3(Conv1x1(.))))   Conv1x1: KD -> D, Conv3x3: D -> D B x D x Hg x Wg
returned as tokens                                                        B x N x D

Switches: ``mask`` "linear" (paper: two Linear layers on tokens) | "conv_bn" (released code:
1x1 conv, BN, GELU, 1x1 conv, BN, Sigmoid on the map, convs without bias);
``fusion_order`` "paper" (1x1, 3x3, BN, GELU) | "released" (1x1, GELU, BN, 3x3).
"""

import logging
from typing import Sequence, Tuple

import torch
from fastreid.config import configurable
from torch import nn

from .linear_init import init_linears

logger = logging.getLogger(__name__)

MASKS = ("linear", "conv_bn")
FUSION_ORDERS = ("paper", "released")


def tokens_to_map(x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """B x N x D tokens (row-major grid) -> B x D x Hg x Wg map.

    A view (no copy) when each sample's tokens are contiguous: the map is then in channels-last
    layout, which the convolutions take and return as is, so ``map_to_tokens`` is a view too."""
    b, n, d = x.shape
    hg, wg = grid
    if n != hg * wg:
        raise ValueError(f"{n} patch tokens do not fill the {hg}x{wg} grid.")
    return x.transpose(1, 2).reshape(b, d, hg, wg)  # B x D x Hg x Wg


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """B x D x Hg x Wg map -> B x N x D tokens."""
    return x.flatten(2).transpose(1, 2)  # B x N x D


class TokenMask(nn.Module):
    """mask^l of eq. 4 for one layer; returns X_hat = mask * X + X (B x N x D)."""

    def __init__(self, embed_dim: int, reduction: int, kind: str):
        super().__init__()
        hidden = embed_dim // reduction
        self.kind = kind
        if kind == "linear":
            self.mask = nn.Sequential(
                nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim), nn.Sigmoid()
            )
        else:  # conv_bn (released code): the same MLP as 1x1 convs with BN, on the map
            self.mask = nn.Sequential(
                nn.Conv2d(embed_dim, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.GELU(),
                nn.Conv2d(hidden, embed_dim, 1, bias=False),
                nn.BatchNorm2d(embed_dim),
                nn.Sigmoid(),
            )

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        if self.kind == "linear":
            m = self.mask(x)  # B x N x D
        else:
            m = map_to_tokens(self.mask(tokens_to_map(x, grid)))  # B x N x D
        return torch.addcmul(x, m, x)  # mask * X + X, one kernel


class PTF(nn.Module):
    """Fuses the K layers' patch tokens into F (returned as tokens, B x N x D)."""

    @configurable
    def __init__(
        self,
        *,
        embed_dim: int,
        num_layers: int,
        reduction: int = 4,
        mask: str = "linear",
        fusion_order: str = "paper",
        linear_init: str = "kaiming_fan_out",
    ):
        super().__init__()
        if mask not in MASKS:
            raise ValueError(f"MODEL.GLTRANS.PTF.MASK={mask!r} is not one of {MASKS}.")
        if fusion_order not in FUSION_ORDERS:
            raise ValueError(
                f"MODEL.GLTRANS.PTF.FUSION_ORDER={fusion_order!r} is not one of {FUSION_ORDERS}."
            )
        if not (1 <= reduction <= embed_dim) or embed_dim % reduction:
            raise ValueError(
                f"MODEL.GLTRANS.PTF.REDUCTION={reduction} must divide the embed "
                f"dim {embed_dim}; use a divisor such as 4."
            )
        self.embed_dim, self.num_layers = embed_dim, num_layers
        self.masks = nn.ModuleList(TokenMask(embed_dim, reduction, mask) for _ in range(num_layers))
        kd, d = num_layers * embed_dim, embed_dim
        if fusion_order == "paper":  # eq. 7: GELU(BN(Conv3x3(Conv1x1(.))))
            self.fusion = nn.Sequential(
                nn.Conv2d(kd, d, 1),
                nn.Conv2d(d, d, 3, padding=1, bias=False),
                nn.BatchNorm2d(d),
                nn.GELU(),
            )
        else:  # released code: Conv1x1 -> GELU -> BN -> Conv3x3
            self.fusion = nn.Sequential(
                nn.Conv2d(kd, d, 1), nn.GELU(), nn.BatchNorm2d(d), nn.Conv2d(d, d, 3, padding=1)
            )
        init_linears(self, linear_init)  # the "linear" masks' layers
        for m in self.modules():  # convs: kaiming fan-in, zero bias (as the released code)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, cfg, embed_dim: int, num_layers: int):
        p = cfg.MODEL.GLTRANS.PTF
        return {
            "embed_dim": embed_dim,
            "num_layers": num_layers,
            "reduction": p.REDUCTION,
            "mask": p.MASK,
            "fusion_order": p.FUSION_ORDER,
            "linear_init": cfg.MODEL.GLTRANS.LINEAR_INIT,
        }

    def forward(self, patches: Sequence[torch.Tensor], grid: Tuple[int, int]) -> torch.Tensor:
        """patches: K tensors B x N x D -> F: B x N x D."""
        if len(patches) != self.num_layers:
            raise ValueError(f"PTF was built for {self.num_layers} layers, got {len(patches)}.")
        maps = [tokens_to_map(m(x, grid), grid) for m, x in zip(self.masks, patches)]
        fused = self.fusion(torch.cat(maps, dim=1))  # B x KD x Hg x Wg -> B x D x Hg x Wg
        return map_to_tokens(fused)  # B x N x D

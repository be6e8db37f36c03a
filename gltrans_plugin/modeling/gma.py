"""GMA — Global-guided Multi-head Attention (paper eq. 8-10, Table 10).

Shape letters: B batch, D embed dim of the patch tokens, Dg dim of the global feature f_g
(D, or KD for GAE "concat"), N patches, h heads, r reduction of W_q / W_k (D/r per query).

    q = W_q f_g     W_q: Dg -> D/r      split into h heads of D/(r h)        B x h x d
    k = W_k F       W_k: D  -> D/r      split into h heads                   B x h x N x d
    score[i, p] = Sigmoid(<q_i, k_{p,i}>)     one score per head and patch   B x h x N
    F_tilde = F_heads * score + F    (head i's D/h channels of patch p scaled by score[i, p])
                                                                             B x N x D
No softmax and no 1/sqrt(d) scaling (as the paper's eq. 8 and the released code).
"""

import logging

import torch
from fastreid.config import configurable
from torch import nn

from .linear_init import init_linears

logger = logging.getLogger(__name__)


class GMA(nn.Module):
    """Re-weights each head's channel group of every patch token by its global-guided score."""

    @configurable
    def __init__(
        self,
        *,
        embed_dim: int,
        global_dim: int,
        num_heads: int = 12,
        reduction: int = 1,
        linear_init: str = "kaiming_fan_out",
    ):
        super().__init__()
        if num_heads < 1 or embed_dim % num_heads:
            raise ValueError(
                f"MODEL.GLTRANS.GMA.NUM_HEADS={num_heads} must divide the embed dim "
                f"{embed_dim}; choose a divisor of {embed_dim} (the paper uses 12 "
                f"for D=768)."
            )
        if reduction < 1 or embed_dim % reduction or (embed_dim // reduction) % num_heads:
            raise ValueError(
                f"MODEL.GLTRANS.GMA.REDUCTION={reduction}: D/r = {embed_dim}/"
                f"{reduction} must be an integer divisible by NUM_HEADS={num_heads}; "
                f"use 1 or another divisor."
            )
        self.embed_dim, self.num_heads = embed_dim, num_heads
        inner = embed_dim // reduction
        self.q = nn.Linear(global_dim, inner)  # W_q
        self.k = nn.Linear(embed_dim, inner)  # W_k
        init_linears(self, linear_init)

    @classmethod
    def from_config(cls, cfg, embed_dim: int, global_dim: int):
        g = cfg.MODEL.GLTRANS.GMA
        return {
            "embed_dim": embed_dim,
            "global_dim": global_dim,
            "num_heads": g.NUM_HEADS,
            "reduction": g.REDUCTION,
            "linear_init": cfg.MODEL.GLTRANS.LINEAR_INIT,
        }

    def _scores(self, f_g: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """f_g: B x Dg, tokens F: B x N x D -> score: B x N x h (token-major, no transposes)."""
        b, n, _ = tokens.shape
        h = self.num_heads
        q = self.q(f_g).reshape(b, 1, h, -1)  # B x 1 x h x d
        k = self.k(tokens).reshape(b, n, h, -1)  # B x N x h x d
        return torch.sigmoid((k * q).sum(-1))  # B x N x h

    def scores(self, f_g: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """f_g: B x Dg, tokens F: B x N x D -> score: B x h x N (in (0, 1))."""
        return self._scores(f_g, tokens).transpose(1, 2)  # B x h x N

    def forward(self, f_g: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """f_g: B x Dg, F: B x N x D -> F_tilde: B x N x D."""
        b, n, d = tokens.shape
        score = self._scores(f_g, tokens).unsqueeze(-1)  # B x N x h x 1
        heads = tokens.reshape(b, n, self.num_heads, d // self.num_heads)  # B x N x h x D/h
        # F_tilde = F_heads * score + F, in one kernel
        return torch.addcmul(heads, heads, score).reshape(b, n, d)  # B x N x D

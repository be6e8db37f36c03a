"""PTL — Part-based Transformer Layers (paper eq. 11-13, Tables 8-9).

Shape letters: B batch, D embed dim, K aggregated layers, Hg x Wg patch grid, N = Hg*Wg,
P parts, n_k patches in stripe k, T transformer layers.

    stripes: the Hg grid rows split into P horizontal stripes, as even as possible
             (21 rows, P=3 -> 7/7/7; P=6 -> 4/4/4/3/3/3)              P x (B x n_k x D)
    part k:  [t_k ; cls^{L-K+1} ; ... ; cls^L ; stripe-k tokens]      B x (1 + K + n_k) x D
    T pre-norm transformer layers (timm Block; attention fused SDPA or explicit by
    ``attn_impl``, see attention_impl.py), shared across parts (paper) or one stack per part, then
    LayerNorm; t_k is read out                                           B x D
    Every LayerNorm of the stack (the blocks' two and the final one) has eps ``norm_eps``
    (released code: 1e-5, torch's default; timm's ViT default is 1e-6). Linear layers:
    ``linear_init`` (see linear_init.init_linears).
    f_l = concat(t_1 .. t_P)                                             B x PD
T = 0 (Table 9, Model-1): f_l = concat of each stripe's average token, no parameters at all.
"""

import logging
from functools import partial
from typing import List, Optional, Sequence, Tuple

import torch
from fastreid.config import configurable
from timm.models.vision_transformer import Block, init_weights_vit_timm
from torch import nn

from .linear_init import check_linear_init, init_linears
from .attention_impl import (check_attn_impl, compile_fallback, compile_modules, is_compile_error,
                    set_fused_attention, use_fused_attention)

logger = logging.getLogger(__name__)

PART_TOKEN_INITS = ("zeros", "trunc_normal")


def stripe_sizes(rows: int, num_parts: int) -> List[int]:
    """Rows per stripe, as even as possible, larger stripes first (21, 3 -> [7, 7, 7])."""
    if num_parts < 1:
        raise ValueError(f"MODEL.GLTRANS.PTL.NUM_PARTS must be >= 1, got {num_parts}.")
    if num_parts > rows:
        raise ValueError(
            f"MODEL.GLTRANS.PTL.NUM_PARTS={num_parts} is larger than the patch grid's {rows} "
            f"rows: every part needs at least one row. Set NUM_PARTS <= {rows}, or use a taller "
            f"input (INPUT.SIZE_TRAIN/SIZE_TEST) or a smaller MODEL.BACKBONE.STRIDE_SIZE."
        )
    base, extra = divmod(rows, num_parts)
    return [base + (1 if i < extra else 0) for i in range(num_parts)]


def default_num_heads(dim: int) -> int:
    """ViT convention (64 channels per head; tiny 3, small 6, base 12), a divisor of ``dim``."""
    h = max(1, dim // 64)
    while dim % h:
        h -= 1
    return h


class PTL(nn.Module):
    """Turns the enhanced patch tokens into the local feature f_l (B x P*D)."""

    @configurable
    def __init__(
        self,
        *,
        embed_dim: int,
        num_parts: int = 3,
        depth: int = 2,
        shared: bool = True,
        with_cls: bool = True,
        num_cls: int = 3,
        num_heads: Optional[int] = None,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        part_token_init: str = "zeros",
        attn_impl: str = "auto",
        compile_blocks: bool = False,
        norm_eps: float = 1e-5,
        linear_init: str = "kaiming_fan_out",
    ):
        super().__init__()
        if num_parts < 1:
            raise ValueError(f"MODEL.GLTRANS.PTL.NUM_PARTS must be >= 1, got {num_parts}.")
        if depth < 0:
            raise ValueError(f"MODEL.GLTRANS.PTL.DEPTH must be >= 0, got {depth}.")
        if part_token_init not in PART_TOKEN_INITS:
            raise ValueError(
                f"MODEL.GLTRANS.PTL.PART_TOKEN_INIT={part_token_init!r} is not one "
                f"of {PART_TOKEN_INITS}."
            )
        check_linear_init(linear_init)
        if not norm_eps > 0:
            raise ValueError(f"MODEL.GLTRANS.PTL.NORM_EPS must be > 0, got {norm_eps}.")
        num_heads = num_heads or default_num_heads(embed_dim)
        if embed_dim % num_heads:
            raise ValueError(f"PTL num_heads={num_heads} must divide the embed dim {embed_dim}.")
        self.embed_dim, self.num_parts, self.depth = embed_dim, num_parts, depth
        self.shared, self.with_cls, self.num_cls = shared, with_cls, num_cls
        self.out_dim = num_parts * embed_dim
        self.attn_impl = check_attn_impl(attn_impl)
        self._compiled = False
        if depth == 0:  # stripe average pooling: no parameters
            self.part_tokens = None
            self.stacks = None
            return
        self.part_tokens = nn.Parameter(torch.zeros(num_parts, embed_dim))  # t_k: P x D

        norm = partial(nn.LayerNorm, eps=float(norm_eps))

        def stack():
            blocks = [
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=True,
                    proj_drop=proj_drop,
                    attn_drop=attn_drop,
                    drop_path=drop_path,
                    norm_layer=norm,
                )
                for _ in range(depth)
            ]
            return nn.Sequential(*blocks, norm(embed_dim))

        self.stacks = nn.ModuleList([stack() for _ in range(1 if shared else num_parts)])
        if linear_init == "trunc_normal":
            self.stacks.apply(init_weights_vit_timm)  # timm's ViT init (trunc-normal 0.02)
        else:
            init_linears(self.stacks, linear_init)
        if part_token_init == "trunc_normal":
            nn.init.trunc_normal_(self.part_tokens, std=0.02)
        self._compiled = bool(compile_blocks) and compile_modules(self._blocks(), "PTL layers")

    @classmethod
    def from_config(cls, cfg, embed_dim: int, num_cls: int, num_heads: Optional[int] = None):
        p = cfg.MODEL.GLTRANS.PTL
        return {
            "embed_dim": embed_dim,
            "num_parts": p.NUM_PARTS,
            "depth": p.DEPTH,
            "shared": p.SHARED,
            "with_cls": p.WITH_CLS,
            "num_cls": num_cls,
            "num_heads": num_heads,
            "part_token_init": p.PART_TOKEN_INIT,
            "attn_impl": str(cfg.MODEL.ATTN_IMPL),
            "compile_blocks": bool(cfg.MODEL.COMPILE),
            "norm_eps": float(p.NORM_EPS),
            "linear_init": cfg.MODEL.GLTRANS.LINEAR_INIT,
        }

    def _blocks(self) -> List[nn.Module]:
        """The transformer blocks of every stack (not the final LayerNorms)."""
        return [blk for st in (self.stacks or []) for blk in list(st)[:-1]]

    def split(self, tokens: torch.Tensor, grid: Tuple[int, int]) -> List[torch.Tensor]:
        """B x N x D -> P stripes, each B x n_k x D (n_k = rows_k * Wg)."""
        b, n, d = tokens.shape
        hg, wg = grid
        if n != hg * wg:
            raise ValueError(f"{n} patch tokens do not fill the {hg}x{wg} grid.")
        rows = stripe_sizes(hg, self.num_parts)
        grid_tokens = tokens.reshape(b, hg, wg, d)  # B x Hg x Wg x D
        return [s.reshape(b, -1, d) for s in torch.split(grid_tokens, rows, dim=1)]

    def forward(
        self, tokens: torch.Tensor, grid: Tuple[int, int], cls_tokens: Sequence[torch.Tensor] = ()
    ) -> torch.Tensor:
        """tokens: B x N x D, cls_tokens: K tensors B x D -> f_l: B x P*D."""
        stripes = self.split(tokens, grid)
        if self.depth == 0:
            return torch.cat([s.mean(1) for s in stripes], dim=1)  # B x PD
        b, _, d = tokens.shape
        if self.with_cls and len(cls_tokens) != self.num_cls:
            raise ValueError(
                f"PTL was built for {self.num_cls} class tokens, got {len(cls_tokens)}."
            )
        k_cls = self.num_cls if self.with_cls else 0
        if self._compiled:
            try:
                return self._forward(tokens, stripes, cls_tokens, b, d, k_cls)
            except Exception as e:  # noqa: BLE001  (only compile errors are caught)
                if not is_compile_error(e):
                    raise
                compile_fallback(self._blocks(), "the PTL layers", e, logger)
                self._compiled = False
        return self._forward(tokens, stripes, cls_tokens, b, d, k_cls)

    def _forward(self, tokens, stripes, cls_tokens, b: int, d: int, k_cls: int) -> torch.Tensor:
        p = self.num_parts
        if self.shared and len({s.shape[1] for s in stripes}) == 1:
            # equal stripes: all parts as one batch through the shared stack, built by one cat
            n_k = stripes[0].shape[1]
            body = tokens.reshape(b, p, n_k, d).transpose(0, 1)  # P x B x n_k x D (view)
            pieces = [self.part_tokens[:, None, None, :].expand(p, b, 1, d)]  # P x B x 1 x D
            if k_cls:
                cls = torch.stack(list(cls_tokens), dim=1)  # B x K x D
                pieces.append(cls.unsqueeze(0).expand(p, b, k_cls, d))  # P x B x K x D
            seq = torch.cat(pieces + [body], dim=2).reshape(p * b, 1 + k_cls + n_k, d)
            # P*B x (1+K+n_k) x D
            set_fused_attention(self.stacks[0], use_fused_attention(
                self.attn_impl, seq, seq.shape[1]))
            out = self.stacks[0](seq)[:, 0]  # P*B x D
            return out.reshape(p, b, d).transpose(0, 1).reshape(b, p * d)  # B x PD
        prefix = [torch.stack(list(cls_tokens), dim=1)] if k_cls else []  # B x K x D
        parts = []
        for k, s in enumerate(stripes):
            seq = torch.cat([self.part_tokens[k].expand(b, 1, -1), *prefix, s], dim=1)
            # B x (1+K+n_k) x D
            stack = self.stacks[0 if self.shared else k]
            set_fused_attention(stack, use_fused_attention(self.attn_impl, seq, seq.shape[1]))
            parts.append(stack(seq)[:, 0])  # B x D
        return torch.cat(parts, dim=1)  # B x PD

"""GLTrans backbone: ViT with overlapping patch embedding and SIE (as TransReID).

Shape letters:
    B   batch size
    D   embedding dim (192 tiny, 384 small, 768 base)
    H, W  input image height, width
    Hg, Wg  patch grid: Hg = (H - p) // s + 1, Wg = (W - p) // s + 1 (p patch size, s stride)
    N   number of patches, Hg * Wg
    K   number of aggregated layers (len(agg_layers))
    T   SIE table rows: cameras, views, or cameras * views

Forward:
    Z0 = [cls; PatchEmbed(x)] + pos + sie_coe * SIE[id]          B x (1+N) x D
    Z_l = Block_l(Z_{l-1})  (timm pre-norm blocks; attention fused SDPA or explicit, by
                             ``attn_impl``, see attention_impl.py)
    returns, for each aggregated layer l (in increasing depth):
        cls^l = LayerNorm_l(Z_l[:, 0])                             B x D
        X^l   = Z_l[:, 1:]  (no norm)                              B x N x D
    and the grid (Hg, Wg).

Each aggregated layer has its own LayerNorm (``cls_norms``), initialised (and, from a pretrained
file, loaded) as a copy of the ViT's final norm, as the authors' released code does. The final
norm itself is not kept: every parameter takes part in the outputs.

Speed switches: ``grad_checkpoint`` (MODEL.BACKBONE.GRAD_CHECKPOINT) recomputes each block in
the backward pass instead of storing its activations; ``attn_impl`` (MODEL.ATTN_IMPL) and
``compile_blocks`` (MODEL.COMPILE) as described in ``attention_impl.py``.

The output is a ``BackboneOutput`` (``cls``, ``patches``, ``grid``), and ``output_spec()`` a
``BackboneSpec`` (embed dim, heads, aggregated layer numbers, patch / stride, grid): heads,
export, attention maps and the distiller read those.

SIE ids: ``camids`` / ``viewids`` are LongTensors of shape B (or None).
    * ids None, or -1 (not known) -> ``sie_unseen`` (MODEL.BACKBONE.SIE_UNSEEN): "error", "none"
      (no SIE term) or "mean" (the mean of the learned table over the unknown ids: with a
      camera x view table and the camera known, the mean of that camera's view rows); a
      warning once per model.
    * a given id outside [0, table size) -> ValueError when ``strict_ids``
      (MODEL.GLTRANS.STRICT_CAMIDS), otherwise treated as not known.
"""
import logging
from functools import partial
from typing import List, NamedTuple, Optional, Protocol, Sequence, Tuple, Union, \
    runtime_checkable

import torch
from fastreid.config import configurable
from fastreid.modeling.backbones import BACKBONE_REGISTRY
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention_impl import (check_attn_impl, compile_fallback, compile_modules, is_compile_error,
                    set_fused_attention, use_fused_attention)
from .stem import IBNConvStemPatchEmbed, check_stem

logger = logging.getLogger(__name__)

_ln = partial(nn.LayerNorm, eps=1e-6)  # timm / TransReID ViT LayerNorm

__all__ = [
    "SIE_UNSEEN_POLICIES",
    "VIT_SIZES",
    "BackboneOutput",
    "BackboneSpec",
    "GLTransViT",
    "GLTransViTFeatureMap",
    "OverlapPatchEmbed",
    "build_gltrans_backbone",
    "build_gltrans_vit_backbone",
    "patch_grid",
    "spec_from_config",
]

# name -> (embed_dim, num_heads); depth is 12 for all.
VIT_SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}
VIT_DEPTH = 12
# What an image without a usable camera id (none given, -1, or outside the SIE table) gets at
# test time (MODEL.BACKBONE.SIE_UNSEEN): an error, no SIE term, or the mean camera embedding.
SIE_UNSEEN_POLICIES = ("error", "none", "mean")


class BackboneSpec(NamedTuple):
    """What the GLTrans backbone hands its consumers (heads, export, attention maps): read it
    from ``backbone.output_spec()`` instead of probing attributes."""
    embed_dim: int                     # D
    num_heads: int                     # attention heads of the ViT blocks
    layer_numbers: Tuple[int, ...]     # 1-based depth of each aggregated layer (K of them)
    patch_size: int
    stride_size: Tuple[int, int]
    grid: Tuple[int, int]              # (Hg, Wg) of the built image size
    sie_rows: int = 0                  # rows of the SIE table (0: no SIE; ids are not used)

    def grid_of(self, img_size) -> Tuple[int, int]:
        """(Hg, Wg) of an H x W input."""
        return patch_grid(img_size, self.patch_size, self.stride_size)


class BackboneOutput(NamedTuple):
    """The GLTrans backbone's forward output (the contract between a backbone and the heads)."""
    cls: List[torch.Tensor]      # K x [B x D], each after its LayerNorm
    patches: List[torch.Tensor]  # K x [B x N x D]
    grid: Tuple[int, int]        # (Hg, Wg)


@runtime_checkable
class GLTransBackbone(Protocol):
    """What the GLTrans meta-architecture needs of a backbone: ``output_spec()`` (sizes the heads
    are built from) and ``forward(images, camids=None, viewids=None) -> BackboneOutput``."""

    def output_spec(self) -> BackboneSpec: ...

    def forward(self, x: torch.Tensor, camids: Optional[torch.Tensor] = None,
                viewids: Optional[torch.Tensor] = None) -> BackboneOutput: ...


def _pair(v) -> Tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return int(v[0]), int(v[0])
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def patch_grid(img_size, patch_size, stride_size) -> Tuple[int, int]:
    """Patch grid (Hg, Wg) of an image of ``img_size`` = (H, W); raises ValueError if impossible."""
    (h, w), (ph, pw), (sh, sw) = _pair(img_size), _pair(patch_size), _pair(stride_size)
    if min(ph, pw, sh, sw) <= 0:
        raise ValueError(f"patch size {(ph, pw)} and stride {(sh, sw)} must be positive "
                         f"(MODEL.BACKBONE.PATCH_SIZE / MODEL.BACKBONE.STRIDE_SIZE)")
    if sh > ph or sw > pw:
        raise ValueError(
            f"stride {(sh, sw)} is larger than the patch size {(ph, pw)}: pixels between patches "
            f"would be skipped. Set MODEL.BACKBONE.STRIDE_SIZE <= MODEL.BACKBONE.PATCH_SIZE.")
    if h < ph or w < pw:
        raise ValueError(
            f"image size {(h, w)} is smaller than one patch {(ph, pw)}. Use a larger "
            f"INPUT.SIZE_TRAIN / INPUT.SIZE_TEST or a smaller MODEL.BACKBONE.PATCH_SIZE.")
    return (h - ph) // sh + 1, (w - pw) // sw + 1


class OverlapPatchEmbed(nn.Module):
    """Conv2d patch embedding with stride <= patch size: B x 3 x H x W -> B x N x D."""

    def __init__(self, patch_size=16, stride_size=16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.patch_size = _pair(patch_size)
        self.stride_size = _pair(stride_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size,
                              stride=self.stride_size)

    def grid(self, img_size) -> Tuple[int, int]:
        return patch_grid(img_size, self.patch_size, self.stride_size)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        grid = self.grid(x.shape[-2:])  # validates the input size
        x = self.proj(x)                  # B x D x Hg x Wg
        x = x.flatten(2).transpose(1, 2)  # B x N x D
        return x, grid


def _normalise_layers(agg_layers: Sequence[int], depth: int) -> Tuple[int, ...]:
    """Python-style block indices (negative counts from the end) -> sorted 0-based indices."""
    agg_layers = tuple(int(i) for i in agg_layers)
    if len(agg_layers) == 0:
        raise ValueError("MODEL.GLTRANS.AGG_LAYERS is empty; give at least one block index, "
                         "e.g. (-1,) for the last block or (-3, -2, -1) for the paper's last "
                         "three.")
    if len(agg_layers) > depth:
        raise ValueError(f"MODEL.GLTRANS.AGG_LAYERS {agg_layers} lists {len(agg_layers)} layers "
                         f"but the backbone has only {depth} blocks; list at most {depth}.")
    out = []
    for i in agg_layers:
        if not -depth <= i < depth:
            raise ValueError(
                f"MODEL.GLTRANS.AGG_LAYERS entry {i} is out of range for a backbone of depth "
                f"{depth}: use indices in [-{depth}, {depth - 1}] (negative = from the end).")
        out.append(i % depth)
    if len(set(out)) != len(out):
        raise ValueError(f"MODEL.GLTRANS.AGG_LAYERS {agg_layers} names a block twice "
                         f"(as 0-based indices {out}); list each block once.")
    return tuple(sorted(out))


class GLTransViT(nn.Module):
    """ViT with overlapping patches and SIE returning the last K layers' tokens (see module doc).

    Parameters live under timm's names (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
    ``blocks.N.*``) so that timm/DeiT/TransReID checkpoints map onto them (``weights.py``);
    plus ``sie_embed`` (T x D) and ``cls_norms.k`` (one LayerNorm per aggregated layer).
    Blocks deeper than the deepest aggregated layer would never be used, so they are not built.
    """

    @configurable
    def __init__(
        self,
        *,
        img_size: Sequence[int] = (256, 128),
        patch_size: int = 16,
        stride_size: Union[int, Sequence[int]] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = VIT_DEPTH,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        sie_camera: bool = False,
        sie_view: bool = False,
        num_cameras: int = 0,
        num_views: int = 0,
        sie_coe: float = 3.0,
        agg_layers: Sequence[int] = (-3, -2, -1),
        strict_ids: bool = True,
        sie_unseen: str = "mean",
        grad_checkpoint: bool = False,
        attn_impl: str = "auto",
        compile_blocks: bool = False,
        stem: str = "",
    ):
        super().__init__()
        if embed_dim <= 0 or depth <= 0 or num_heads <= 0:
            raise ValueError(f"embed_dim {embed_dim}, depth {depth} and num_heads {num_heads} "
                             f"must be positive.")
        if embed_dim % num_heads != 0:
            raise ValueError(f"num_heads {num_heads} does not divide embed_dim {embed_dim}; "
                             f"choose a head count that divides the embedding dim.")
        self.img_size = _pair(img_size)
        self.embed_dim = self.num_features = embed_dim
        self.num_heads = num_heads
        embed = IBNConvStemPatchEmbed if check_stem(stem) == "ibn_conv" else OverlapPatchEmbed
        self.patch_embed = embed(patch_size, stride_size, in_chans, embed_dim)  # stem.py
        self.grid_size = self.patch_embed.grid(self.img_size)  # (Hg, Wg), validates sizes
        num_patches = self.grid_size[0] * self.grid_size[1]

        self.agg_layers = _normalise_layers(agg_layers, depth)
        self.depth = depth
        num_built = self.agg_layers[-1] + 1
        if num_built < depth:
            logger.info("Aggregated layers %s end before block %d of %d: blocks %d..%d are not "
                        "built (they could not receive a gradient).", list(self.agg_layers),
                        num_built - 1, depth, num_built, depth - 1)

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)

        # SIE table: camera, view, or joint camera x view (index cam * num_views + view).
        self.sie_camera, self.sie_view = bool(sie_camera), bool(sie_view)
        self.num_cameras, self.num_views = int(num_cameras), int(num_views)
        self.sie_coe = float(sie_coe)
        self.strict_ids = bool(strict_ids)
        if sie_unseen not in SIE_UNSEEN_POLICIES:
            raise ValueError(f"MODEL.BACKBONE.SIE_UNSEEN={sie_unseen!r} is not one of "
                             f"{SIE_UNSEEN_POLICIES}.")
        self.sie_unseen = sie_unseen
        self.patch_size, self.stride_size = int(patch_size), _pair(stride_size)
        if self.sie_camera and self.num_cameras <= 0:
            raise ValueError(
                f"SIE on cameras needs the number of cameras, got {num_cameras}. Set "
                f"MODEL.BACKBONE.NUM_CAMERAS (> 0; the trainer fills it from the data when 0) or "
                f"MODEL.BACKBONE.SIE_CAMERA False.")
        if self.sie_view and self.num_views <= 0:
            raise ValueError(
                f"SIE on viewpoints needs the number of viewpoints, got {num_views}. Set "
                f"MODEL.BACKBONE.NUM_VIEWS (> 0) or MODEL.BACKBONE.SIE_VIEW False.")
        table = ((self.num_cameras if self.sie_camera else 1)
                 * (self.num_views if self.sie_view else 1))
        self.sie_embed = (nn.Parameter(torch.zeros(table, embed_dim))  # T x D
                          if (self.sie_camera or self.sie_view) else None)
        self._logged_no_sie = False
        self._logged_resize = set()

        dpr = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth decay rule
        norm_layer = _ln
        self.blocks = nn.ModuleList([
            Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                  proj_drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i],
                  norm_layer=norm_layer)
            for i in range(num_built)
        ])
        # One LayerNorm per aggregated layer's class token (copies of the final norm).
        self.cls_norms = nn.ModuleList([norm_layer(embed_dim) for _ in self.agg_layers])
        self.grad_checkpoint = bool(grad_checkpoint)
        self.attn_impl = check_attn_impl(attn_impl)
        self._init_weights()
        self._compiled = bool(compile_blocks) and compile_modules(
            self.blocks, "backbone blocks")

    @classmethod
    def from_config(cls, cfg):
        bb = cfg.MODEL.BACKBONE
        name = str(bb.DEPTH).lower().replace("vit_", "").replace("vit-", "")
        if name not in VIT_SIZES:
            raise ValueError(f"unknown MODEL.BACKBONE.DEPTH {bb.DEPTH!r} for the GLTrans ViT; "
                             f"use one of {sorted(VIT_SIZES)}.")
        embed_dim, num_heads = VIT_SIZES[name]
        stride = bb.STRIDE_SIZE
        return {
            "img_size": tuple(cfg.INPUT.SIZE_TRAIN),
            "patch_size": int(bb.PATCH_SIZE),
            "stride_size": _pair(stride),
            "embed_dim": embed_dim,
            "depth": VIT_DEPTH,
            "num_heads": num_heads,
            "drop_rate": float(bb.DROP_RATIO),
            "attn_drop_rate": float(bb.ATT_DROP_RATE),
            "drop_path_rate": float(bb.DROP_PATH_RATIO),
            "sie_camera": bool(bb.SIE_CAMERA),
            "sie_view": bool(bb.SIE_VIEW),
            "num_cameras": int(bb.NUM_CAMERAS),
            "num_views": int(bb.NUM_VIEWS),
            "sie_coe": float(bb.SIE_COE),
            "agg_layers": tuple(cfg.MODEL.GLTRANS.AGG_LAYERS),
            "strict_ids": bool(cfg.MODEL.GLTRANS.STRICT_CAMIDS),
            "sie_unseen": str(bb.SIE_UNSEEN),
            "grad_checkpoint": bool(bb.GRAD_CHECKPOINT),
            "attn_impl": str(cfg.MODEL.ATTN_IMPL),
            "compile_blocks": bool(cfg.MODEL.COMPILE),
            "stem": str(bb.STEM),
        }

    # ------------------------------------------------------------------ init
    def _init_weights(self):
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        if self.sie_embed is not None:
            trunc_normal_(self.sie_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def num_agg(self) -> int:
        """K, the number of aggregated layers."""
        return len(self.agg_layers)

    @property
    def layer_numbers(self) -> Tuple[int, ...]:
        """1-based depth of each aggregated layer (the paper's "layers 10-12")."""
        return tuple(i + 1 for i in self.agg_layers)

    # ------------------------------------------------------------------ SIE
    def _check_ids(self, ids: torch.Tensor, size: int, what: str, key: str) -> torch.Tensor:
        """Boolean mask (B) of usable ids: an id < 0 is "not known"; a given id outside
        [0, size) raises ValueError when strict (not while tracing: traced graphs hold no
        Python checks; such an id then gets the unseen policy)."""
        given = ids >= 0
        valid = given & (ids < size)
        if self.strict_ids and not torch.jit.is_tracing() and not bool((valid | ~given).all()):
            bad = ids[given & ~valid].unique().tolist()
            raise ValueError(
                f"{what} id(s) {bad} outside the SIE table of size {size} "
                f"(valid ids 0..{size - 1}). Set {key} to the number of {what}s in the data "
                f"(ids must be 0-based and consistent between training and test), give -1 for "
                f"an unknown {what} (MODEL.BACKBONE.SIE_UNSEEN says what it gets), or "
                f"MODEL.GLTRANS.STRICT_CAMIDS False to treat such ids as unknown.")
        return valid

    def _unseen(self, what: str) -> bool:
        """``sie_unseen`` for images without a usable ``what`` id: True = the mean of the table,
        False = no SIE term; "error" raises.  While tracing: no error and no log (a graph
        applies the policy as arithmetic)."""
        if torch.jit.is_tracing():
            return self.sie_unseen == "mean"
        if self.sie_unseen == "error":
            raise ValueError(
                f"SIE: images without a {what} id (none given, -1, or an unknown id) and "
                f"MODEL.BACKBONE.SIE_UNSEEN 'error': give their {what} ids, or set SIE_UNSEEN "
                f"'mean' (the mean learned {what} embedding) or 'none' (no SIE term).")
        if not self._logged_no_sie:
            logger.warning("SIE: features asked for images without a %s id: they get %s "
                           "(MODEL.BACKBONE.SIE_UNSEEN %r). Give the ids where known.", what,
                           "the mean learned embedding" if self.sie_unseen == "mean"
                           else "no SIE term", self.sie_unseen)
            self._logged_no_sie = True
        return self.sie_unseen == "mean"

    def _sie(self, camids, viewids, batch: int, device) -> Optional[torch.Tensor]:
        """SIE term sie_coe * table[index], B x 1 x D, or None when no SIE applies.  Images
        without a usable id follow ``sie_unseen``: zero, or the mean of the table over what is
        not known (``_unseen_mean``).  Out of place throughout, so the same code traces for ONNX
        export (a graph exported with camera ids only applies the policy to the views)."""
        if self.sie_embed is None:
            return None
        uses = [(ids, size, what, key) for use, ids, size, what, key in (
            (self.sie_camera, camids, self.num_cameras, "camera", "MODEL.BACKBONE.NUM_CAMERAS"),
            (self.sie_view, viewids, self.num_views, "view", "MODEL.BACKBONE.NUM_VIEWS"))
            if use]
        given = [ids for ids, _, _, _ in uses if ids is not None]
        if not given:  # the whole batch without ids: no per-sample arithmetic (dynamic batch)
            if not self._unseen(uses[0][2]):
                return None
            return self.sie_coe * self.sie_embed.mean(0).view(1, 1, -1)  # 1 x 1 x D
        ref = torch.as_tensor(given[0], device=device).long().reshape(-1)
        index, oks = [], []
        unusable = None  # the first kind of id some image lacks
        for ids, size, what, key in uses:
            # a kind of id not given at all: -1 (not known) for every image
            ids = torch.full_like(ref, -1) if ids is None else \
                torch.as_tensor(ids, device=device).long().reshape(-1)
            if ids.numel() != batch:
                raise ValueError(f"got {ids.numel()} {what} ids for a batch of {batch} images.")
            ok = self._check_ids(ids, size, what, key)
            if unusable is None and not torch.jit.is_tracing() and not bool(ok.all()):
                unusable = what
            oks.append(ok)
            index.append(torch.where(ok, ids, torch.zeros_like(ids)))
        table = self.sie_embed.view(*[size for _, size, _, _ in uses], -1)  # C|V x D, C x V x D
        valid = oks[0] if len(oks) == 1 else oks[0] & oks[1]
        sie = table[tuple(index)] * valid.unsqueeze(1).to(table.dtype)  # B x D
        # a graph cannot tell whether some id is unusable: it always applies the policy
        if (torch.jit.is_tracing() or unusable is not None) and self._unseen(unusable or "camera"):
            sie = sie + self._unseen_mean(table, index, oks)
        return self.sie_coe * sie.unsqueeze(1)                         # B x 1 x D

    @staticmethod
    def _unseen_mean(table, index, oks):
        """B x D, zero for images whose ids are all usable; for the others the mean of the SIE
        table over the unknown ids.  One-id table (T x D): the mean row.  Camera x view table
        (C x V x D): the mean over views of the image's camera rows when only its view is
        unknown, over cameras of its view rows when only its camera is, else the mean row."""
        def m(mask):  # B -> B x 1 in the table's dtype
            return mask.unsqueeze(1).to(table.dtype)

        if len(oks) == 1:
            return m(~oks[0]) * table.mean(0, keepdim=True)
        (cam, view), (ok_cam, ok_view) = index, oks
        return (m(ok_cam & ~ok_view) * table.mean(1)[cam]             # B x D
                + m(~ok_cam & ok_view) * table.mean(0)[view]          # B x D
                + m(~ok_cam & ~ok_view) * table.mean((0, 1)).unsqueeze(0))  # 1 x D

    # ------------------------------------------------------------------ forward
    def _pos_embed(self, grid: Tuple[int, int]) -> torch.Tensor:
        if tuple(grid) == tuple(self.grid_size):
            return self.pos_embed
        if grid not in self._logged_resize:
            logger.info("Input grid %s differs from the built grid %s: resampling the position "
                        "embedding on the fly.", tuple(grid), tuple(self.grid_size))
            self._logged_resize.add(grid)
        return resample_abs_pos_embed(self.pos_embed, new_size=list(grid),
                                      old_size=list(self.grid_size), num_prefix_tokens=1)

    def _tokens(self, x, camids=None, viewids=None):
        """Runs the blocks; returns the token tensors (B x (1+N) x D) of each aggregated layer."""
        b = x.shape[0]
        x, grid = self.patch_embed(x)                              # B x N x D
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], 1)   # B x (1+N) x D
        x = x + self._pos_embed(grid)
        sie = self._sie(camids, viewids, b, x.device)
        if sie is not None:
            x = x + sie                                            # added to all tokens
        x = self.pos_drop(x)
        if self._compiled:
            try:
                return self._blocks(x), grid
            except Exception as e:  # noqa: BLE001  (only compile errors are caught)
                if not is_compile_error(e):
                    raise
                compile_fallback(self.blocks, "the backbone blocks", e, logger)
                self._compiled = False
        return self._blocks(x), grid

    def _blocks(self, x: torch.Tensor):
        """B x (1+N) x D through the blocks -> the aggregated layers' outputs."""
        set_fused_attention(self.blocks, use_fused_attention(self.attn_impl, x, x.shape[1]))
        outs = []
        use_ckpt = self.grad_checkpoint and self.training and torch.is_grad_enabled()
        for i, blk in enumerate(self.blocks):
            x = checkpoint(blk, x, use_reentrant=False) if use_ckpt else blk(x)
            if i in self.agg_layers:
                outs.append(x)
        return outs

    def output_spec(self) -> BackboneSpec:
        """Dimensions, heads, aggregated layers and grid of this backbone's output."""
        rows = 0 if self.sie_embed is None else int(self.sie_embed.shape[0])
        return BackboneSpec(self.embed_dim, self.num_heads, self.layer_numbers, self.patch_size,
                            self.stride_size, tuple(self.grid_size), rows)

    def forward(self, x: torch.Tensor, camids=None, viewids=None) -> BackboneOutput:
        """x: B x C x H x W -> BackboneOutput(cls K x [B x D], patches K x [B x N x D],
        grid (Hg, Wg))."""
        outs, grid = self._tokens(x, camids, viewids)
        cls = [norm(t[:, 0]) for norm, t in zip(self.cls_norms, outs)]  # K x [B x D]
        patches = [t[:, 1:] for t in outs]                             # K x [B x N x D]
        return BackboneOutput(cls, patches, tuple(grid))

    def forward_features(self, x: torch.Tensor, camids=None, viewids=None) -> torch.Tensor:
        """Last aggregated layer's class token after its LayerNorm: B x D."""
        outs, _ = self._tokens(x, camids, viewids)
        return self.cls_norms[-1](outs[-1][:, 0])


class GLTransViTFeatureMap(GLTransViT):
    """The same ViT for fast-reid's ``Baseline`` + ``EmbeddingHead``: forward returns the last
    layer's normed class token as a B x D x 1 x 1 map. Only the last layer is aggregated."""

    def forward(self, x: torch.Tensor, camids=None, viewids=None) -> torch.Tensor:
        return self.forward_features(x, camids, viewids)[..., None, None]  # B x D x 1 x 1


def spec_from_config(cfg) -> BackboneSpec:
    """The ``BackboneSpec`` the GLTrans backbone of ``cfg`` would publish, without building it."""
    a = GLTransViT.from_config(cfg)
    layers = _normalise_layers(a["agg_layers"], a["depth"])
    grid = patch_grid(a["img_size"], a["patch_size"], a["stride_size"])
    return BackboneSpec(a["embed_dim"], a["num_heads"], tuple(i + 1 for i in layers),
                        a["patch_size"], _pair(a["stride_size"]), grid)


def _maybe_load_pretrained(cfg, model: nn.Module) -> nn.Module:
    bb = cfg.MODEL.BACKBONE
    if bb.PRETRAIN:
        from .weights import load_pretrained_from_config

        # pickled files need the one opt-in, env GLTRANS_ALLOW_PICKLE=1 (checkpoint.load_file)
        load_pretrained_from_config(cfg, model)  # a file or a name (PRETRAIN_PATH / _CACHE)
    return model


@BACKBONE_REGISTRY.register()
def build_gltrans_backbone(cfg) -> GLTransViT:
    """MODEL.BACKBONE.NAME "build_gltrans_backbone": the GLTrans ViT (dict output, see module doc);
    loads MODEL.BACKBONE.PRETRAIN_PATH when MODEL.BACKBONE.PRETRAIN."""
    return _maybe_load_pretrained(cfg, GLTransViT(cfg))


@BACKBONE_REGISTRY.register()
def build_gltrans_vit_backbone(cfg) -> GLTransViTFeatureMap:
    """MODEL.BACKBONE.NAME "build_gltrans_vit_backbone": plain ViT (overlapping patches, last-layer
    class token as B x D x 1 x 1) for fast-reid's own ``Baseline`` and ``EmbeddingHead``.

    fast-reid's ``Baseline`` passes no camera ids, so SIE must be off here (use the GLTrans
    meta-architecture for the ViT + SIE baseline)."""
    if cfg.MODEL.BACKBONE.SIE_CAMERA or cfg.MODEL.BACKBONE.SIE_VIEW:
        raise ValueError(
            "build_gltrans_vit_backbone runs under fast-reid's Baseline, which passes no camera "
            "or view ids, so its SIE table would never be used. Set MODEL.BACKBONE.SIE_CAMERA "
            "False and MODEL.BACKBONE.SIE_VIEW False, or use MODEL.META_ARCHITECTURE 'GLTrans' "
            "with build_gltrans_backbone for SIE.")
    return _maybe_load_pretrained(cfg, GLTransViTFeatureMap(cfg, agg_layers=(-1,)))

"""Patch embedding with a convolution stem (MODEL.BACKBONE.STEM "ibn_conv").

TransReID-SSL's ViTs pre-trained on LUPerson ("ICS") put three convolutions before the patch
convolution; their weights need the same layers.  Shape letters: B batch, H x W input, C stem
channels (64), D embed dim, p / s patch size / stride of the plain ViT, Hg x Wg the patch grid.

    x                                           B x 3 x H x W
    conv 7x7 stride 2 (pad 3) -> IBN -> ReLU     B x C x H/2 x W/2
    conv 3x3 -> IBN -> ReLU                      B x C x H/2 x W/2
    conv 3x3 -> BatchNorm -> ReLU                B x C x H/2 x W/2
    patch conv, kernel p/2, stride s/2           B x D x Hg x Wg
    flatten                                      B x N x D

IBN: InstanceNorm (affine) on the first C/2 channels, BatchNorm on the others.  At half
resolution the patch conv with kernel p/2 and stride s/2 covers what a p x p patch with stride
s covers at full resolution: for even H, W the grid is the plain ViT's, (H - p) // s + 1 by
(W - p) // s + 1 (256 x 128, p 16, s 12 -> 21 x 10).  Parameter names (``conv.0`` ...
``conv.7``, ``IN`` / ``BN``) follow the released checkpoints' keys, so they load unrenamed.
"""
from typing import Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["IBN", "IBNConvStemPatchEmbed", "STEMS", "check_stem"]

STEMS = ("", "ibn_conv")  # MODEL.BACKBONE.STEM values


def check_stem(stem: str) -> str:
    if stem not in STEMS:
        raise ValueError(f"MODEL.BACKBONE.STEM {stem!r} is not one of {list(STEMS)}: '' (the "
                         f"ViT's patch conv) or 'ibn_conv' (TransReID-SSL's convolution stem).")
    return stem


def _pair(x) -> Tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, int) else (int(x[0]), int(x[1]))


class IBN(nn.Module):
    """Instance norm on the first half of the channels, batch norm on the rest."""

    def __init__(self, channels: int):
        super().__init__()
        self.half = channels // 2
        self.IN = nn.InstanceNorm2d(self.half, affine=True)  # noqa: N815  (checkpoint key)
        self.BN = nn.BatchNorm2d(channels - self.half)  # noqa: N815  (checkpoint key)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, : self.half], x[:, self.half:]  # B x C/2 x h x w each
        return torch.cat([self.IN(a.contiguous()), self.BN(b.contiguous())], dim=1)


class IBNConvStemPatchEmbed(nn.Module):
    """Convolution stem + patch conv: B x 3 x H x W -> (B x N x D, (Hg, Wg)).  Same interface as
    the backbone's ``OverlapPatchEmbed`` (``proj``, ``patch_size``, ``stride_size``, ``grid``)."""

    def __init__(self, patch_size: Union[int, Sequence[int]] = 16,
                 stride_size: Union[int, Sequence[int]] = 16, in_chans: int = 3,
                 embed_dim: int = 768, channels: int = 64):
        super().__init__()
        self.patch_size, self.stride_size = _pair(patch_size), _pair(stride_size)
        if any(v % 2 for v in self.patch_size + self.stride_size):
            raise ValueError(f"MODEL.BACKBONE.STEM 'ibn_conv' halves the resolution first, so "
                             f"the patch size {self.patch_size} and stride {self.stride_size} "
                             f"must be even.")
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, channels, 7, stride=2, padding=3, bias=False),
            IBN(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            IBN(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
        )
        kernel = (self.patch_size[0] // 2, self.patch_size[1] // 2)
        stride = (self.stride_size[0] // 2, self.stride_size[1] // 2)
        self.proj = nn.Conv2d(channels, embed_dim, kernel_size=kernel, stride=stride)

    def grid(self, img_size) -> Tuple[int, int]:
        h, w = (int(img_size[0]), int(img_size[1]))
        h2, w2 = (h + 1) // 2, (w + 1) // 2  # after the 7x7 stride-2 conv (padding 3)
        (kh, kw), (sh, sw) = self.proj.kernel_size, self.proj.stride
        if h2 < kh or w2 < kw:
            raise ValueError(f"image size {(h, w)} is smaller than one patch {self.patch_size}. "
                             f"Use a larger INPUT.SIZE_TRAIN / INPUT.SIZE_TEST.")
        return (h2 - kh) // sh + 1, (w2 - kw) // sw + 1

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        grid = self.grid(x.shape[-2:])
        x = self.proj(self.conv(x))       # B x D x Hg x Wg
        x = x.flatten(2).transpose(1, 2)  # B x N x D
        return x, grid

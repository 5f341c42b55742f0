"""Resolution changes of a (batch, H, W, C) token grid: patch embedding, patch merging and patch expanding.

Embedding is timm's; merging has the parameter names and the 2 x 2 concatenation order of timm's (Swin's and VMamba's)
``PatchMerging``, so their checkpoints load, and also merges other neighbourhoods (nnU-Net's planners downsample one
axis only where the other is exhausted, e.g. stride [2, 1]); expanding, Swin-Unet's upsampling, has no timm
counterpart. Factors are per axis, (rows, columns); an int means the same on both.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import PatchEmbed, to_2tuple

__all__ = ["PatchExpanding", "PatchMerging", "patch_embedding"]

Factor = int | tuple[int, int]


def patch_embedding(in_channels: int, dim: int, patch_size: Factor) -> PatchEmbed:
    """Non-overlapping ``patch_size`` conv + LayerNorm, any input size divisible by ``patch_size``, tokens out."""
    return PatchEmbed(img_size=None, patch_size=to_2tuple(patch_size), in_chans=in_channels, embed_dim=dim,
                      norm_layer=nn.LayerNorm, output_fmt="NHWC")


class PatchMerging(nn.Module):
    """Downsample by ``stride``: concatenate each ``stride`` block of tokens (column offset, then row offset, then
    channel, as timm orders a 2 x 2 block), LayerNorm, linear to ``out_dim`` (default twice the width). The grid must
    be divisible by ``stride``."""

    def __init__(self, dim: int, out_dim: int | None = None, stride: Factor = 2):
        super().__init__()
        self.stride = to_2tuple(stride)
        merged = self.stride[0] * self.stride[1] * dim
        self.out_dim = out_dim or 2 * dim
        self.norm = nn.LayerNorm(merged)
        self.reduction = nn.Linear(merged, self.out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        sh, sw = self.stride
        x = x.reshape(batch, height // sh, sh, width // sw, sw, channels).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class PatchExpanding(nn.Module):
    """Upsample by ``scale``: a linear layer turns each token into a ``scale`` block of tokens of ``out_dim`` channels
    on the finer grid, then LayerNorm.

    Swin-Unet's patch expanding is ``(dim, dim // 2, 2)``; its final expanding is ``(dim, dim, 4)``. The channel
    order of the linear output (row offset, column offset, channel) is theirs.
    """

    def __init__(self, dim: int, out_dim: int, scale: Factor):
        super().__init__()
        self.scale = to_2tuple(scale)
        self.expand = nn.Linear(dim, self.scale[0] * self.scale[1] * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        sh, sw = self.scale
        x = self.expand(x).view(batch, height, width, sh, sw, -1).permute(0, 1, 3, 2, 4, 5)
        return self.norm(x.reshape(batch, height * sh, width * sw, -1))

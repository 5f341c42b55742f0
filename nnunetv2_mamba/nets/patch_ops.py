"""Resolution changes of a (batch, H, W, C) token grid: patch embedding, patch merging and patch expanding.

Embedding and merging are timm's (the same layers, parameter names and 2x2 concatenation order as Swin and VMamba,
so their checkpoints load); expanding, Swin-Unet's upsampling, has no timm counterpart and is defined here.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.swin_transformer import PatchMerging

__all__ = ["PatchExpanding", "PatchMerging", "patch_embedding"]


def patch_embedding(in_channels: int, dim: int, patch_size: int) -> PatchEmbed:
    """Non-overlapping ``patch_size`` conv + LayerNorm, any input size divisible by ``patch_size``, tokens out."""
    return PatchEmbed(img_size=None, patch_size=patch_size, in_chans=in_channels, embed_dim=dim,
                      norm_layer=nn.LayerNorm, output_fmt="NHWC")


class PatchExpanding(nn.Module):
    """Upsample by ``scale``: a linear layer turns each token into ``scale**2`` tokens of ``out_dim`` channels, laid
    out as a ``scale x scale`` block of the finer grid, then LayerNorm.

    Swin-Unet's patch expanding is ``(dim, dim // 2, 2)``; its final expanding is ``(dim, dim, 4)``. The channel
    order of the linear output (row offset, column offset, channel) is theirs.
    """

    def __init__(self, dim: int, out_dim: int, scale: int):
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        s = self.scale
        x = self.expand(x).view(batch, height, width, s, s, -1).permute(0, 1, 3, 2, 4, 5)
        return self.norm(x.reshape(batch, height * s, width * s, -1))

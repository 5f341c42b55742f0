"""MambaUNet: Mamba-UNet's pure visual-Mamba 2D U-Net (VSS blocks in the Swin-Unet layout) as an nnU-Net network.

Defaults are Mamba-UNet's (VMamba-Tiny widths 96 * 2^i, depths (2, 2, 2, 2), d_state 16, expand 2, 3x3 depthwise
conv, drop path 0.2). ``pretrained`` loads VMamba (v0) ImageNet weights such as ``vmamba_tiny_e292.pth``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from timm.layers import DropPath

from nnunetv2_mamba.nets.planner_kwargs import accepts_planner_kwargs
from nnunetv2_mamba.nets.token_unet import TokenUNet, from_planner
from nnunetv2_mamba.ssm.modules.ss2d import SS2D


class VSSBlock(nn.Module):
    """VMamba's visual state-space block on a (batch, H, W, dim) grid: ``x + DropPath(SS2D(LayerNorm(x)))``."""

    def __init__(self, dim: int, drop_path: float = 0.0, d_state: int = 16, expand: int = 2, d_conv: int = 3):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ss2d = SS2D(dim, d_state=d_state, d_conv=d_conv, expand=expand)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.ss2d(self.norm(x)))

    def compute_conv_feature_map_size(self, grid: Sequence[int]) -> int:
        """Activation elements for a grid: LayerNorm, SS2D's and the residual sum's, per token."""
        return (2 * self.ss2d.d_model + self.ss2d.activations_per_token()) * grid[0] * grid[1]


class MambaUNet(TokenUNet):
    """Pure visual-Mamba U-Net (Mamba-UNet); see :mod:`nnunetv2_mamba.nets.token_unet` for the skeleton and the
    ``strides`` / deep-supervision contract, and documentation/networks.md for the arch_kwargs."""

    checkpoint_renames = {"ln_1.": "norm.", "self_attention.": "ss2d."}

    @accepts_planner_kwargs(from_planner)
    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False,
                 strides: Sequence | None = None, patch_size: int | Sequence[int] = 4,
                 embed_dim: int | Sequence[int] = 96,
                 depths: Sequence[int] = (2, 2, 2, 2), d_state: int = 16, expand: int = 2, d_conv: int = 3,
                 drop_path_rate: float = 0.2, pretrained: str | None = None):
        def block(dim: int, level: int, index: int, drop_path: float) -> VSSBlock:
            return VSSBlock(dim, drop_path, d_state=d_state, expand=expand, d_conv=d_conv)

        super().__init__(input_channels, num_classes, deep_supervision, strides, patch_size, embed_dim, depths,
                         drop_path_rate, pretrained, block)

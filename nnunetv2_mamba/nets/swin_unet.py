"""SwinUNet: Swin-Unet's pure-transformer 2D U-Net (shifted-window attention blocks) as an nnU-Net network.

Defaults are Swin-Unet's (Swin-T widths 96 * 2^i, depths (2, 2, 2, 2), heads (3, 6, 12, 24), window 7, MLP ratio 4,
drop path 0.2). ``pretrained`` loads Swin-T ImageNet weights such as ``swin_tiny_patch4_window7_224.pth``.

The block uses timm's ``WindowAttention`` (relative position bias) and ``Mlp``. timm's ``SwinTransformerBlock`` is
not used: for grids that are not a multiple of the window it shifts before padding and builds the shift mask on the
padded grid, so tokens from opposite borders can attend to each other. Here the grid is padded first, then shifted,
and the mask also hides padding tokens.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from timm.models.swin_transformer import WindowAttention, window_partition, window_reverse

from nnunetv2_mamba.nets.planner_kwargs import Adapted, ArchKwargs, accepts_planner_kwargs
from nnunetv2_mamba.nets.token_unet import TokenUNet, from_planner, token_widths

HEAD_DIM = 32  # Swin-T's channels per attention head (96 / 3); sets num_heads from planner widths
MASKED = -100.0  # Swin's additive mask value: finite, so a query whose keys are all masked stays finite


def window_attention_mask(height: int, width: int, window: int, shift: tuple[int, int],
                          device: torch.device | None = None) -> torch.Tensor | None:
    """Additive mask (windows, window², window²) for a (height, width) grid padded to whole windows, then rolled
    back by ``shift``: ``MASKED`` between tokens that were not neighbours before the roll (wrapped around) and
    towards padding tokens; None when there is neither shift nor padding."""
    padded = (math.ceil(height / window) * window, math.ceil(width / window) * window)
    if not any(shift) and padded == (height, width):
        return None
    # Region ids as in Swin: along a shifted axis, the rolled grid splits into [0, P - w), [P - w, P - s), [P - s, P)
    region = torch.zeros(padded, dtype=torch.long, device=device)
    for axis, (size, s) in enumerate(zip(padded, shift)):
        if s:
            ids = torch.tensor([0] * (size - window) + [1] * (window - s) + [2] * s, device=device)
            region = region * 3 + (ids[:, None] if axis == 0 else ids[None, :])
    padding = torch.ones(padded, dtype=torch.bool, device=device)
    padding[:height, :width] = False
    padding = padding.roll((-shift[0], -shift[1]), dims=(0, 1))
    region = window_partition(region[None, :, :, None], (window, window)).flatten(1)
    padding = window_partition(padding[None, :, :, None], (window, window)).flatten(1)
    blocked = (region[:, :, None] != region[:, None, :]) | padding[:, None, :]
    return torch.zeros(blocked.shape, device=device).masked_fill_(blocked, MASKED)


class SwinBlock(nn.Module):
    """Swin Transformer block on a (batch, H, W, dim) grid: (shifted-)window attention and MLP, pre-norm, residual.

    Windows are ``window_size`` square; a grid smaller than a window along an axis is padded, and the masked
    padding makes that exactly a window the size of the grid (Swin's rule), with no shift along that axis.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shifted: bool = False,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.window_size, self.shifted, self.num_heads = window_size, shifted, num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads=num_heads, window_size=window_size, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self._window_attention(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width, channels = x.shape
        w = self.window_size
        shift = tuple(w // 2 if self.shifted and size > w else 0 for size in (height, width))
        x = F.pad(x, (0, 0, 0, -width % w, 0, -height % w))
        padded = x.shape[1:3]
        if any(shift):
            x = torch.roll(x, (-shift[0], -shift[1]), dims=(1, 2))
        windows = window_partition(x, (w, w)).view(-1, w * w, channels)
        windows = self.attn(windows, mask=window_attention_mask(height, width, w, shift, x.device))
        x = window_reverse(windows.view(-1, w, w, channels), (w, w), *padded)
        if any(shift):
            x = torch.roll(x, shift, dims=(1, 2))
        return x[:, :height, :width]

    def compute_conv_feature_map_size(self, grid: Sequence[int]) -> int:
        """Per padded token: norms, padding/windows, q k v, attention output, projection, un-windowing, residuals
        (12 dim), MLP hidden and activation (2 x hidden), attention logits and softmax (2 x heads x window²)."""
        w = self.window_size
        tokens = math.ceil(grid[0] / w) * w * math.ceil(grid[1] / w) * w
        return tokens * (12 * self.norm1.normalized_shape[0] + 2 * self.mlp.fc1.out_features
                         + 2 * self.num_heads * w * w)


def swin_from_planner(name: str, kwargs: ArchKwargs) -> Adapted:
    """The token U-Nets' planner mapping (:func:`~nnunetv2_mamba.nets.token_unet.from_planner`), plus one attention
    head per :data:`HEAD_DIM` channels of each level's width (the largest count up to that dividing the width)."""
    adapted = from_planner(name, kwargs)
    if "num_heads" not in kwargs:
        widths = token_widths(adapted.kwargs["embed_dim"], len(adapted.kwargs["depths"]))
        heads = [next(h for h in range(max(1, width // HEAD_DIM), 0, -1) if width % h == 0) for width in widths]
        adapted.kwargs["num_heads"] = adapted.chose["num_heads"] = heads
    return adapted


class SwinUNet(TokenUNet):
    """Shifted-window transformer U-Net (Swin-Unet); see :mod:`nnunetv2_mamba.nets.token_unet` for the skeleton and
    the ``strides`` / deep-supervision contract, and documentation/networks.md for the arch_kwargs."""

    checkpoint_ignored = ("head.", "attn_mask", "relative_position_index")

    @accepts_planner_kwargs(swin_from_planner)
    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False,
                 strides: Sequence | None = None, patch_size: int | Sequence[int] = 4,
                 embed_dim: int | Sequence[int] = 96,
                 depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, mlp_ratio: float = 4.0, drop_path_rate: float = 0.2,
                 pretrained: str | None = None):
        if len(num_heads) != len(depths):
            raise ValueError(f"SwinUNet: 'num_heads' needs one entry per stage of 'depths' ({len(depths)}); "
                             f"got {num_heads}")

        def block(dim: int, level: int, index: int, drop_path: float) -> SwinBlock:
            return SwinBlock(dim, num_heads[level], window_size, shifted=index % 2 == 1, mlp_ratio=mlp_ratio,
                             drop_path=drop_path)

        super().__init__(input_channels, num_classes, deep_supervision, strides, patch_size, embed_dim, depths,
                         drop_path_rate, pretrained, block)

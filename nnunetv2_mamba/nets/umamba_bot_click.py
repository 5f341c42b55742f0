"""UMambaBot2Click: U-Mamba2's interactive network (ToothFairy3 task 2; Tan et al. 2025) for nnU-Net, 2D and 3D.

UMambaBot2 (ResEnc U-Net + Mamba2 over the bottleneck's voxels) whose bottleneck tokens, after the Mamba2 layer,
exchange information with click tokens in two-way cross-attention blocks (SAM style, :mod:`.click_attention`); the
result replaces the bottleneck features before the standard decoder, as in U-Mamba2's ``UMambaBot2_CrossAttn_Click2``.

Clicks arrive as extra input channels after the image channels (:mod:`.click_channels`): ``input_channels`` image
channels (what nnU-Net passes) followed by either nothing (no clicks) or one channel per foreground class. The click
coordinates are normalised by the input's size, so in sliding-window inference they are tile-local, as the network saw
them in training, where clicks are simulated per patch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim

from nnunetv2_mamba.nets.click_attention import ClickCrossAttention
from nnunetv2_mamba.nets.click_channels import decode_click_channels
from nnunetv2_mamba.nets.umamba_bot import UMambaBot2


class UMambaBot2Click(UMambaBot2):
    """UMambaBot2 prompted by clicks. ``arch_kwargs``: those of :class:`UMambaBot2` plus the click branch's options,
    with U-Mamba2's values as defaults: ``click_attention_depth`` 2 two-way blocks, ``click_attention_heads`` 4,
    ``click_mlp_dim`` 1024 (the token MLP's hidden width); attention runs at half the bottleneck width (SAM).

    Label values must be 0 (background) .. ``num_classes - 1``: input channel ``input_channels + k`` holds the clicks
    on label ``k + 1`` (``num_click_classes`` = ``num_classes - 1`` channels); region-based outputs are not supported.
    """

    def __init__(self, input_channels: int, *args, click_attention_depth: int = 2, click_attention_heads: int = 4,
                 click_mlp_dim: int = 1024, **kwargs):
        super().__init__(input_channels, *args, **kwargs)
        self.image_channels = input_channels
        self.num_click_classes = self.decoder.seg_layers[-1].out_channels - 1
        if self.num_click_classes < 1:
            raise ValueError(f"{type(self).__name__} needs background plus at least one class to click on, got "
                             f"num_classes={self.num_click_classes + 1}")
        self.click_attention = ClickCrossAttention(
            self.encoder.output_channels[-1], convert_conv_op_to_dim(self.encoder.conv_op), self.num_click_classes,
            depth=click_attention_depth, num_heads=click_attention_heads, mlp_dim=click_mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        image, coords, classes = self.split_input(x)
        skips = self.encoder(image)
        skips[-1] = self.click_attention(self.mamba_layer(skips[-1]), coords, classes)
        return self.decoder(skips)

    def split_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image channels, normalised click coordinates ((voxel + 0.5) / size, (B, N, ndim)) and class indices
        ((B, N), -1 = padding) of an input with or without click channels."""
        extra = x.shape[1] - self.image_channels
        if extra not in (0, self.num_click_classes):
            raise ValueError(f"{type(self).__name__} takes {self.image_channels} image channels, optionally followed "
                             f"by {self.num_click_classes} click channels (one per foreground class); got an input "
                             f"of shape {tuple(x.shape)}")
        image = x[:, :self.image_channels]
        if extra == 0:
            return image, x.new_zeros(x.shape[0], 0, x.ndim - 2), torch.empty(x.shape[0], 0, dtype=torch.long,
                                                                               device=x.device)
        coords, classes = decode_click_channels(x[:, self.image_channels:])
        size = torch.tensor(x.shape[2:], device=x.device, dtype=coords.dtype)
        return image, (coords + 0.5) / size, classes

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        bottleneck = np.asarray(input_size) // np.prod(self.encoder.strides, axis=0)  # = repeated floor division
        return super().compute_conv_feature_map_size(input_size) + \
            self.click_attention.compute_conv_feature_map_size(bottleneck)

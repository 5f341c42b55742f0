"""UMambaBot2Click: U-Mamba2's interactive network (ToothFairy3 task 2; Tan et al. 2025) for nnU-Net, 2D and 3D.

UMambaBot2 (ResEnc U-Net + Mamba2 over the bottleneck's voxels) whose bottleneck tokens, after the Mamba2 layer,
exchange information with click tokens in two-way cross-attention blocks (SAM style, :mod:`.click_attention`); the
result replaces the bottleneck features before the standard decoder, as in U-Mamba2's ``UMambaBot2_CrossAttn_Click2``.

Clicks arrive as extra input channels after the image channels (:mod:`.click_channels`): ``input_channels`` image
channels (what nnU-Net passes) followed by either nothing (no clicks) or one channel per foreground class. The click
coordinates are normalised by the input's size, so in sliding-window inference they are tile-local, as the network saw
them in training, where clicks are simulated per patch.

By default the clicks also reach the encoder from its first layer, as one Gaussian bump per click in an extra input
channel per class (early fusion, as DeepGrow and nnInteractive encode prompts). Through the bottleneck alone they were
not used: trained where only a click tells which of two identical blobs is meant (``benchmarks/clicks_benefit.py
--decoy``), the attention-only network segmented the same with and without clicks, while with the bumps it follows
them (documentation/interactive.md). ``click_map_sigma=0`` gives U-Mamba2's attention-only network.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim

from nnunetv2_mamba.nets.click_attention import ClickCrossAttention
from nnunetv2_mamba.nets.click_channels import click_labels, decode_click_channels
from nnunetv2_mamba.nets.umamba_bot import UMambaBot2


class UMambaBot2Click(UMambaBot2):
    """UMambaBot2 prompted by clicks. ``arch_kwargs``: those of :class:`UMambaBot2` plus the click branch's options,
    with U-Mamba2's values as defaults: ``click_attention_depth`` 2 two-way blocks, ``click_attention_heads`` 4,
    ``click_mlp_dim`` 1024 (the token MLP's hidden width); attention runs at half the bottleneck width (SAM).
    ``click_map_sigma``: standard deviation, in voxels of the input, of the Gaussian bumps (peak 1) the encoder gets
    as extra input channels; 0 turns this early fusion off. ``background_clicks``: also take clicks on background,
    which tell the network where a structure is not (to remove a false positive).

    Label values must be 0 (background) .. ``num_classes - 1``: input channel ``input_channels + k`` holds the clicks
    on label ``k + 1``, then, with ``background_clicks``, the last one those on background (``click_labels``: the
    label of each click channel); region-based outputs are not supported.
    """

    def __init__(self, input_channels: int, *args, click_attention_depth: int = 2, click_attention_heads: int = 4,
                 click_mlp_dim: int = 1024, click_map_sigma: float = 2.0, background_clicks: bool = False,
                 **kwargs):
        positional = inspect.signature(ResidualEncoderUNet).bind_partial(input_channels, *args).arguments
        num_classes = positional.get("num_classes", kwargs.get("num_classes"))
        if num_classes is None or num_classes < 2:
            raise ValueError(f"{type(self).__name__} needs background plus at least one class to click on, got "
                             f"num_classes={num_classes}")
        if click_map_sigma < 0:
            raise ValueError(f"click_map_sigma must be >= 0 (0: no click maps for the encoder), got {click_map_sigma}")
        self.background_clicks = background_clicks
        self.click_labels = click_labels(num_classes, background_clicks)  # the label of each click channel
        self.num_click_classes = len(self.click_labels)
        self.click_map_sigma = click_map_sigma
        encoder_channels = input_channels + (self.num_click_classes if click_map_sigma else 0)
        super().__init__(encoder_channels, *args, **kwargs)
        self.image_channels = input_channels
        self.click_attention = ClickCrossAttention(
            self.encoder.output_channels[-1], convert_conv_op_to_dim(self.encoder.conv_op), self.num_click_classes,
            depth=click_attention_depth, num_heads=click_attention_heads, mlp_dim=click_mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        image, coords, classes = self.split_input(x)
        if self.click_map_sigma:
            image = torch.cat([image, self.click_maps(x)], dim=1)
        skips = self.encoder(image)
        skips[-1] = self.click_attention(self.mamba_layer(skips[-1]), coords, classes)
        return self.decoder(skips)

    def split_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image channels, normalised click coordinates ((voxel + 0.5) / size, (B, N, ndim)) and class indices
        ((B, N), -1 = padding) of an input with or without click channels."""
        extra = x.shape[1] - self.image_channels
        if extra not in (0, self.num_click_classes):
            raise ValueError(f"{type(self).__name__} takes {self.image_channels} image channels, optionally followed "
                             f"by {self.num_click_classes} click channels (one per foreground class"
                             f"{', then background' if self.background_clicks else ''}); got an input of shape "
                             f"{tuple(x.shape)}")
        image = x[:, :self.image_channels]
        if extra == 0:
            return image, x.new_zeros(x.shape[0], 0, x.ndim - 2), torch.empty(x.shape[0], 0, dtype=torch.long,
                                                                               device=x.device)
        coords, classes = decode_click_channels(x[:, self.image_channels:])
        size = torch.tensor(x.shape[2:], device=x.device, dtype=coords.dtype)
        return image, (coords + 0.5) / size, classes

    def click_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, num_click_classes, *spatial) Gaussian bumps of standard deviation ``click_map_sigma`` voxels and peak 1
        about each click (summed where clicks are close), zeros for an input without click channels. Separable
        convolutions, so a sliding-window tile sees the bumps of its own clicks, cut at its border."""
        if x.shape[1] == self.image_channels:
            return x.new_zeros(x.shape[0], self.num_click_classes, *x.shape[2:])
        maps = x[:, self.image_channels:]
        radius = math.ceil(3 * self.click_map_sigma)
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=maps.dtype)
        kernel = torch.exp(-0.5 * (offsets / self.click_map_sigma) ** 2)
        ndim = x.ndim - 2
        conv = F.conv2d if ndim == 2 else F.conv3d
        for axis in range(ndim):
            shape = [1] * ndim
            shape[axis] = kernel.numel()
            padding = [0] * ndim
            padding[axis] = radius
            maps = conv(maps, kernel.view(1, 1, *shape).expand(self.num_click_classes, 1, *shape),
                        padding=padding, groups=self.num_click_classes)
        return maps

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """UMambaBot2's estimate plus the click branch's activations and, with early fusion, the click maps and the
        encoder input they are concatenated into."""
        bottleneck = np.asarray(input_size) // np.prod(self.encoder.strides, axis=0)  # = repeated floor division
        fusion = (2 * self.num_click_classes + self.image_channels) * math.prod(input_size) if self.click_map_sigma \
            else 0
        return super().compute_conv_feature_map_size(input_size) + \
            self.click_attention.compute_conv_feature_map_size(bottleneck) + np.int64(fusion)

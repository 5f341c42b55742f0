"""UMambaBot2 (U-Mamba2, Tan et al. 2025) and UMambaBot (U-Mamba "Bot", Ma et al. 2024) for nnU-Net.

Both are nnU-Net's ``ResidualEncoderUNet`` with one SSM layer over the bottleneck's voxels: bottleneck features
(B, C, *spatial) -> tokens (B, L, C) -> LayerNorm -> Mamba2 (UMambaBot2) or Mamba (UMambaBot) -> back onto the grid,
then the standard decoder. As in the U-Mamba2 code, the layer's output replaces the bottleneck features (no residual).

Their constructor arguments are those of ``ResidualEncoderUNet`` (the ``arch_kwargs`` of nnU-Net's ResEnc plans), plus
the SSM options below with U-Mamba2's / U-Mamba's defaults; so a ResEnc plans file only needs its
``network_class_name`` changed, and so does a plain ``nnUNetPlans`` file (its convolution counts become ResEnc's block
counts, :func:`from_planner`). Any bottleneck width works: where ``2 * C`` is not a multiple of ``headdim``, our
``Mamba2`` uses the largest head dimension below it that divides ``2 * C`` (U-Mamba2 asserts instead, which fails on
nnU-Net's 512-wide 2D bottlenecks).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

from nnunetv2_mamba.nets.planner_kwargs import Adapted, ArchKwargs, accepts_planner_kwargs, \
    residual_encoder_blocks, without_block_counts
from nnunetv2_mamba.ssm.modules import GridSSM, Mamba, Mamba2


def from_planner(name: str, kwargs: ArchKwargs) -> Adapted | None:
    """ResEnc plans are these networks' own arguments; plain U-Net plans get the block counts of nnU-Net's ResEnc
    planner in place of their convolution counts."""
    if "n_conv_per_stage" not in kwargs:
        return None
    blocks = residual_encoder_blocks(kwargs)
    return Adapted({**without_block_counts(kwargs), **blocks}, ["n_conv_per_stage", "n_conv_per_stage_decoder"],
                   blocks)


class MambaBottleneckUNet(ResidualEncoderUNet):
    """``ResidualEncoderUNet`` with ``ssm_layer(C)`` applied to the bottleneck's voxels; the common body of
    :class:`UMambaBot2` and :class:`UMambaBot`, which choose the layer."""

    @accepts_planner_kwargs(from_planner)
    def __init__(self, *args, ssm_layer: Callable[[int], nn.Module], **kwargs):
        super().__init__(*args, **kwargs)
        width = self.encoder.output_channels[-1]
        self.mamba_layer = GridSSM(width, ssm_layer(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = self.encoder(x)
        skips[-1] = self.mamba_layer(skips[-1])
        return self.decoder(skips)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        bottleneck = list(input_size)
        for stride in self.encoder.strides:
            bottleneck = [size // s for size, s in zip(bottleneck, stride)]
        return super().compute_conv_feature_map_size(input_size) + \
            self.mamba_layer.compute_conv_feature_map_size(bottleneck)


class UMambaBot2(MambaBottleneckUNet):
    """U-Mamba2: Mamba2 at the bottleneck (defaults of U-Mamba2's code: d_state 32, d_conv 4, expand 2, headdim 80)."""

    def __init__(self, *args, d_state: int = 32, d_conv: int = 4, expand: int = 2, headdim: int = 80, **kwargs):
        super().__init__(*args, ssm_layer=partial(Mamba2, d_state=d_state, d_conv=d_conv, expand=expand,
                                                  headdim=headdim), **kwargs)


class UMambaBot(MambaBottleneckUNet):
    """U-Mamba "Bot": Mamba (v1) at the bottleneck (defaults of U-Mamba's code: d_state 16, d_conv 4, expand 2)."""

    def __init__(self, *args, d_state: int = 16, d_conv: int = 4, expand: int = 2, **kwargs):
        super().__init__(*args, ssm_layer=partial(Mamba, d_state=d_state, d_conv=d_conv, expand=expand), **kwargs)

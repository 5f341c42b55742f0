"""SegMamba (Xing et al., MICCAI 2024) as an nnU-Net architecture. 3D only.

Resolution levels 0..n-1 follow nnU-Net's convention (level k is reached by the strides ``strides[1..k]``;
``strides[0]`` must be 1 so that the first deep-supervision output has the patch's resolution):

* level 0: a residual block on the input image (UNETR's ``encoder1``), ``features_per_stage[0]`` wide;
* levels 1..n-1: Mamba stage i = level - 1 runs at ``features_per_stage[i]`` channels: downsampling (stem conv for
  i = 0, else norm + strided conv), a gated spatial convolution (GSC), ``depths[i]`` tri-orientated Mamba layers
  (LayerNorm -> ToM -> residual), and a norm + channel MLP whose output feeds a residual block to
  ``features_per_stage[level]`` channels, that level's skip;
* a UNETR-style decoder (transposed conv, concatenation with the skip, residual blocks): dynamic-network-architectures'
  ``UNetResDecoder``, with nnU-Net's deep supervision.

SegMamba's defaults are ``features_per_stage = (48, 96, 192, 384, 768)`` (the four Mamba widths and the 768-wide
bottleneck block) and ``strides`` of 2 on every level but the first (``(1, 1, 1), (2, 2, 2), ...``). Planner
arch_kwargs (3D ``nnUNetPlans`` or ResEnc plans with only ``network_class_name`` changed) are taken as they are, less
their block counts (:func:`from_planner`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.helper import maybe_convert_scalar_to_list
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU, StackedConvBlocks
from dynamic_network_architectures.building_blocks.unet_residual_decoder import UNetResDecoder
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd

from nnunetv2_mamba.nets.planner_kwargs import Adapted, ArchKwargs, accepts_planner_kwargs, without_block_counts
from nnunetv2_mamba.ssm.modules import GridSSM, TriMamba

IntOrSeq = int | Sequence[int]
TOM_LAYERS = 2  # SegMamba's ToM layers per Mamba stage (``depths``)


def _per_stage(value, n: int, name: str) -> list:
    """A per-stage argument as a list of ``n`` entries (an int is repeated), or a clear error."""
    values = [value] * n if isinstance(value, int) else list(value)
    if len(values) != n:
        raise ValueError(f"SegMamba: {name} must have {n} entries, got {len(values)}: {value}")
    return values


def _norm(norm_op: type[nn.Module] | None, norm_op_kwargs: dict | None, channels: int) -> nn.Module:
    """``norm_op(channels)``, or the identity where the plans have no norm."""
    return norm_op(channels, **(norm_op_kwargs or {})) if norm_op is not None else nn.Identity()


class GatedSpatialConv(nn.Module):
    """GSC: ``x + fuse(spatial(x) + pointwise(x))``, each a conv-norm-nonlin; ``spatial`` is two k x k x k convs,
    ``pointwise`` and ``fuse`` are 1 x 1 x 1. Gives the following Mamba layers spatially aware features."""

    def __init__(self, conv_op: type[_ConvNd], channels: int, kernel_size: IntOrSeq, conv_bias: bool,
                 norm_op: type[nn.Module] | None, norm_op_kwargs: dict | None, dropout_op: type[_DropoutNd] | None,
                 dropout_op_kwargs: dict | None, nonlin: type[nn.Module] | None, nonlin_kwargs: dict | None):
        super().__init__()
        norm_nonlin = (norm_op, norm_op_kwargs, None, None, nonlin, nonlin_kwargs)
        self.spatial = StackedConvBlocks(2, conv_op, channels, channels, kernel_size, 1, conv_bias, norm_op,
                                         norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs)
        self.pointwise = ConvDropoutNormReLU(conv_op, channels, channels, 1, 1, conv_bias, *norm_nonlin)
        self.fuse = ConvDropoutNormReLU(conv_op, channels, channels, 1, 1, conv_bias, *norm_nonlin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fuse(self.spatial(x) + self.pointwise(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        return sum(m.compute_conv_feature_map_size(input_size) for m in (self.spatial, self.pointwise, self.fuse))


class TSMambaStage(nn.Module):
    """One encoder stage of SegMamba after its downsampling: GSC, ``depth`` ToM layers with residuals, then
    norm + channel MLP. ``forward`` returns the features for the next stage and those for this level's skip."""

    def __init__(self, conv_op: type[_ConvNd], channels: int, kernel_size: IntOrSeq, depth: int, conv_bias: bool,
                 norm_op: type[nn.Module] | None, norm_op_kwargs: dict | None, dropout_op: type[_DropoutNd] | None,
                 dropout_op_kwargs: dict | None, nonlin: type[nn.Module] | None, nonlin_kwargs: dict | None,
                 d_state: int, d_conv: int, expand: int, mlp_ratio: int):
        super().__init__()
        self.channels, self.mlp_ratio = channels, mlp_ratio
        self.gsc = GatedSpatialConv(conv_op, channels, kernel_size, conv_bias, norm_op, norm_op_kwargs, dropout_op,
                                    dropout_op_kwargs, nonlin, nonlin_kwargs)
        self.mamba_layers = nn.ModuleList(
            GridSSM(channels, TriMamba(channels, d_state=d_state, d_conv=d_conv, expand=expand), residual=True)
            for _ in range(depth))
        self.norm = _norm(norm_op, norm_op_kwargs, channels)
        self.mlp = nn.Sequential(conv_op(channels, mlp_ratio * channels, 1, bias=conv_bias), nn.GELU(),
                                 conv_op(mlp_ratio * channels, channels, 1, bias=conv_bias))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.gsc(x)
        for layer in self.mamba_layers:
            x = layer(x)
        return x, self.mlp(self.norm(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        head = np.int64((2 + self.mlp_ratio) * self.channels) * np.int64(math.prod(input_size))  # norm, MLP
        return self.gsc.compute_conv_feature_map_size(input_size) + head + \
            sum(layer.compute_conv_feature_map_size(input_size) for layer in self.mamba_layers)


class SegMambaEncoder(nn.Module):
    """The skips of every level, highest resolution first, and the attributes ``UNetResDecoder`` reads from an
    encoder (``output_channels``, ``strides``, ``kernel_sizes``, ``conv_op``, norm/dropout/nonlin and ``conv_bias``)."""

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: Sequence[int],
                 conv_op: type[_ConvNd], kernel_sizes: Sequence[Sequence[int]], strides: Sequence[Sequence[int]],
                 depths: Sequence[int], conv_bias: bool, norm_op: type[nn.Module] | None, norm_op_kwargs: dict | None,
                 dropout_op: type[_DropoutNd] | None, dropout_op_kwargs: dict | None,
                 nonlin: type[nn.Module] | None, nonlin_kwargs: dict | None, d_state: int, d_conv: int, expand: int,
                 mlp_ratio: int, stem_kernel_size: int):
        super().__init__()
        f = list(features_per_stage)
        conv_norm = (conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs)
        # the stem: SegMamba's 7^3 strided conv; axes that are not downsampled keep nnU-Net's kernel size there
        stem_kernel = [stem_kernel_size if s > 1 else k for s, k in zip(strides[1], kernel_sizes[1])]
        self.stem = conv_op(input_channels, f[0], stem_kernel, strides[1], [(k - 1) // 2 for k in stem_kernel],
                            bias=conv_bias)
        self.downsamples = nn.ModuleList(
            nn.Sequential(_norm(norm_op, norm_op_kwargs, f[i - 1]),
                          conv_op(f[i - 1], f[i], strides[i + 1], strides[i + 1], bias=conv_bias))
            for i in range(1, n_stages - 1))
        self.stages = nn.ModuleList(
            TSMambaStage(conv_op, f[i], kernel_sizes[i + 1], depths[i], *conv_norm, d_state, d_conv, expand,
                         mlp_ratio)
            for i in range(n_stages - 1))
        self.skips = nn.ModuleList(
            BasicBlockD(conv_op, c_in, c_out, kernel_sizes[level], 1, *conv_norm)
            for level, (c_in, c_out) in enumerate(zip([input_channels] + f[:-1], f)))

        self.output_channels, self.strides, self.kernel_sizes = f, [list(s) for s in strides], kernel_sizes
        self.conv_op, self.conv_bias = conv_op, conv_bias
        self.norm_op, self.norm_op_kwargs = norm_op, norm_op_kwargs
        self.dropout_op, self.dropout_op_kwargs = dropout_op, dropout_op_kwargs
        self.nonlin, self.nonlin_kwargs = nonlin, nonlin_kwargs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = [self.skips[0](x)]
        h = self.stem(x)
        for i, stage in enumerate(self.stages):
            if i > 0:
                h = self.downsamples[i - 1](h)
            h, out = stage(h)
            skips.append(self.skips[i + 1](out))
        return skips

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        output = self.skips[0].compute_conv_feature_map_size(input_size)
        size = list(input_size)
        for i, stage in enumerate(self.stages):
            size = [s // st for s, st in zip(size, self.strides[i + 1])]
            output += np.int64(self.output_channels[i]) * np.int64(math.prod(size))  # stem / downsampling conv
            output += stage.compute_conv_feature_map_size(size)
            output += self.skips[i + 1].compute_conv_feature_map_size(size)
        return output


def _default_decoder_blocks(n_stages: int) -> list[int]:
    """SegMamba's residual blocks per decoder stage, lowest resolution first: one each, two at full resolution."""
    return [1] * (n_stages - 2) + [2]


def from_planner(name: str, kwargs: ArchKwargs) -> Adapted:
    """Planner arch_kwargs less their block counts: SegMamba's encoder stages have their own layers and its decoder
    keeps SegMamba's block counts."""
    own = without_block_counts(kwargs)
    chose = {"n_conv_per_stage_decoder": _default_decoder_blocks(kwargs["n_stages"])}
    if "depths" not in own:
        chose = {"depths": TOM_LAYERS, **chose}
    return Adapted(own, [key for key in kwargs if key not in own], chose)


class SegMamba(nn.Module):
    """SegMamba for nnU-Net plans (3D). Arguments as nnU-Net's ``arch_kwargs``; see the module docstring for levels.

    Args:
        n_stages, features_per_stage, strides, kernel_sizes: resolution levels as in nnU-Net plans; ``strides[0]``
            must be 1 (the stem downsamples by ``strides[1]``). ``kernel_sizes`` (default 3) sets the GSC and
            residual-block kernels per level.
        depths: ToM layers per Mamba stage (``n_stages - 1`` entries; SegMamba: 2 each).
        n_conv_per_stage_decoder: residual blocks per decoder stage, lowest resolution first (default: SegMamba's,
            one each and two at full resolution).
        d_state, d_conv, expand: of each ToM layer (SegMamba: 16, 4, 2); mlp_ratio: hidden width of the channel MLP
            (SegMamba: 2); stem_kernel_size: of the stem conv along downsampled axes (SegMamba: 7).
    """

    @accepts_planner_kwargs(from_planner)
    def __init__(self, input_channels: int, num_classes: int, n_stages: int, features_per_stage: IntOrSeq,
                 conv_op: type[_ConvNd], strides: Sequence[IntOrSeq], kernel_sizes: IntOrSeq | Sequence[IntOrSeq] = 3,
                 depths: IntOrSeq = TOM_LAYERS, n_conv_per_stage_decoder: IntOrSeq | None = None,
                 conv_bias: bool = True, norm_op: type[nn.Module] | None = None, norm_op_kwargs: dict | None = None,
                 dropout_op: type[_DropoutNd] | None = None, dropout_op_kwargs: dict | None = None,
                 nonlin: type[nn.Module] | None = None, nonlin_kwargs: dict | None = None,
                 deep_supervision: bool = False, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 mlp_ratio: int = 2, stem_kernel_size: int = 7):
        super().__init__()
        if not (isinstance(conv_op, type) and issubclass(conv_op, nn.Conv3d)):
            raise ValueError(f"SegMamba is a 3D network (its tri-orientated scan reads slices): conv_op must be "
                             f"torch.nn.Conv3d, got {conv_op}. For 2D plans use UMambaBot2.")
        if n_stages < 2:
            raise ValueError(f"SegMamba: n_stages must be at least 2 (full resolution and one Mamba stage), got "
                             f"{n_stages}")
        features = _per_stage(features_per_stage, n_stages, "features_per_stage")
        strides = [maybe_convert_scalar_to_list(conv_op, s) for s in _per_stage(strides, n_stages, "strides")]
        kernel_sizes = [maybe_convert_scalar_to_list(conv_op, k)
                        for k in _per_stage(kernel_sizes, n_stages, "kernel_sizes")]
        if any(s != 1 for s in strides[0]):
            raise ValueError(f"SegMamba: strides[0] must be 1 on every axis (level 0 is the full-resolution skip and "
                             f"the stem downsamples by strides[1]); got strides={strides}")
        if n_conv_per_stage_decoder is None:
            n_conv_per_stage_decoder = _default_decoder_blocks(n_stages)
        n_conv_per_stage_decoder = _per_stage(n_conv_per_stage_decoder, n_stages - 1, "n_conv_per_stage_decoder")
        self.encoder = SegMambaEncoder(input_channels, n_stages, features, conv_op, kernel_sizes, strides,
                                       _per_stage(depths, n_stages - 1, "depths"), conv_bias, norm_op, norm_op_kwargs,
                                       dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, d_state, d_conv, expand,
                                       mlp_ratio, stem_kernel_size)
        self.decoder = UNetResDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder(self.encoder(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        return self.encoder.compute_conv_feature_map_size(input_size) + \
            self.decoder.compute_conv_feature_map_size(input_size)

    # nnU-Net's ResEnc initialisation: He init for convolutions, last norm of each residual block at zero
    initialize = staticmethod(ResidualEncoderUNet.initialize)

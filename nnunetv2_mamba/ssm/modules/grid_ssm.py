"""A sequence layer (Mamba, Mamba2, TriMamba) applied to the voxels of a 2D or 3D feature map.

This is how U-Mamba, U-Mamba2 and SegMamba put an SSM into a convolutional network: the voxels of a (B, C, *spatial)
map in raster order are a sequence of C-wide tokens, LayerNorm'd, mixed by the layer and put back onto the grid.
"""

from __future__ import annotations

import inspect
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn


def activations_per_token(layer: nn.Module) -> int:
    """Elements a sequence layer keeps per token for the backward, for nnU-Net's memory estimate: the layer's own
    ``activations_per_token()`` when it has one, else the outputs of its linear and conv1d submodules plus one scan
    output of ``d_inner`` channels."""
    if hasattr(layer, "activations_per_token"):
        return layer.activations_per_token()
    outputs = sum(m.out_features for m in layer.modules() if isinstance(m, nn.Linear))
    outputs += sum(m.out_channels for m in layer.modules() if isinstance(m, nn.Conv1d))
    return outputs + getattr(layer, "d_inner", 0)


class GridSSM(nn.Module):
    """(B, C, *spatial) -> (B, C, *spatial): tokens in raster order -> LayerNorm -> ``mamba`` -> grid (+ input if
    ``residual``). Layers that scan in grid-dependent orders (TriMamba) get the spatial shape as ``grid_shape``.

    The submodule names ``norm`` and ``mamba`` are those of U-Mamba's and U-Mamba2's ``MambaLayer``, so their
    checkpoints load into networks built from this module.
    """

    def __init__(self, dim: int, mamba: nn.Module, residual: bool = False):
        super().__init__()
        self.dim, self.residual = dim, residual
        self.norm = nn.LayerNorm(dim)
        self.mamba = mamba
        self._takes_grid_shape = "grid_shape" in inspect.signature(mamba.forward).parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.dim:
            raise ValueError(f"GridSSM: expected {self.dim} channels, got input of shape {tuple(x.shape)}")
        grid_shape = tuple(x.shape[2:])
        tokens = self.norm(x.flatten(2).transpose(1, 2))
        out = self.mamba(tokens, grid_shape=grid_shape) if self._takes_grid_shape else self.mamba(tokens)
        out = out.transpose(1, 2).unflatten(2, grid_shape)  # a view with channels-last strides
        # back to the default layout (free in the residual sum), so the convolutions that follow run as in a CNN
        return x + out if self.residual else out.contiguous()

    def compute_conv_feature_map_size(self, grid_shape: Sequence[int]) -> np.int64:
        """Feature-map elements of one sample, in the sense of dynamic-network-architectures' estimates."""
        per_token = self.dim + activations_per_token(self.mamba) + (self.dim if self.residual else 0)
        return np.int64(per_token) * np.int64(math.prod(grid_shape))

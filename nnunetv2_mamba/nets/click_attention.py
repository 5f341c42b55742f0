"""Click prompts and two-way cross-attention between a feature map and click tokens, as in SAM (Kirillov et al. 2023,
``PromptEncoder`` and ``TwoWayTransformer``) and U-Mamba2's interactive branch (Tan et al. 2025), in 2D and 3D.

- Prompt encoding: a click's normalised coordinates (voxel centre / size, in [0, 1]) -> random Fourier features
  (SAM's ``PositionEmbeddingRandom``: a fixed Gaussian matrix, sin and cos) + a learned embedding of its class. One
  learned "no point" token is always present, so attention is defined without clicks; padding entries (class -1) are
  masked out of every attention, so a sample's output never depends on how many clicks other samples in its batch
  have (SAM and U-Mamba2 instead fill padding with further "no point" tokens, whose count then shifts the softmax).
- Two-way blocks: tokens attend to themselves, tokens attend to the image, an MLP on the tokens, then every image
  token attends to the tokens (so each image position reads every click). Both cross-attentions add the positional
  encodings to queries and keys: the image's from the same Fourier features at the grid's cell centres.

Why cross-attention: one of U-Mamba2's variants appended the click tokens after the image tokens of its causal Mamba2
scan, where no image token can see them; attention in both directions lets every image token read every click.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp

from nnunetv2_mamba.nets.click_channels import PADDING
from nnunetv2_mamba.ssm.ops.precision import float32_scan, to_float32


def cell_centres(shape: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """Normalised centres ((i + 0.5) / n per axis) of the cells of a grid, raster order: (prod(shape), ndim). A click at
    voxel c of an input of size S has (c + 0.5) / S, so inputs and downsampled grids share one coordinate frame."""
    axes = [(torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))


class FourierPositionalEncoding(nn.Module):
    """SAM's random spatial frequencies: x in [0, 1]^ndim -> [sin(2 pi (2x - 1) G), cos(...)], G ~ N(0, scale^2) of
    shape (ndim, dim / 2), fixed (a buffer, saved with the weights)."""

    def __init__(self, dim: int, ndim: int, scale: float = 1.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"FourierPositionalEncoding needs an even width (sin and cos halves), got {dim}")
        self.register_buffer("gaussian_matrix", scale * torch.randn(ndim, dim // 2))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        projected = 2 * math.pi * (2 * coords.to(self.gaussian_matrix.dtype) - 1) @ self.gaussian_matrix
        return torch.cat([projected.sin(), projected.cos()], dim=-1)


class ClickPromptEncoder(nn.Module):
    """Clicks -> tokens (B, 1 + N, dim) and their validity (B, 1 + N): the "no point" token first, then one token per
    click (Fourier features of its normalised coordinates + its class embedding); padding is invalid."""

    def __init__(self, dim: int, ndim: int, num_classes: int):
        super().__init__()
        self.positional = FourierPositionalEncoding(dim, ndim)
        self.class_embeddings = nn.Embedding(num_classes, dim)
        self.no_point = nn.Parameter(torch.randn(dim))  # SAM's not_a_point_embed (nn.Embedding's N(0, 1) init)

    def forward(self, coords: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        valid = classes != PADDING
        tokens = self.positional(coords) + self.class_embeddings(classes.clamp(min=0))
        tokens = torch.where(valid.unsqueeze(-1), tokens, self.no_point)
        batch = coords.shape[0]
        tokens = torch.cat([self.no_point.expand(batch, 1, -1), tokens], dim=1)
        valid = torch.cat([valid.new_ones(batch, 1), valid], dim=1)
        return tokens, valid


class Attention(nn.Module):
    """SAM's attention: q, k, v projected to ``dim / downsample_rate`` channels, multi-head, projected back; keys can
    be masked out (``key_valid``, (B, Lk), True = attend)."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1):
        super().__init__()
        inner = dim // downsample_rate
        if inner % num_heads:
            raise ValueError(f"attention width {dim} / downsample rate {downsample_rate} = {inner} is not divisible "
                             f"by {num_heads} heads")
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (B, heads, L, c)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_valid: torch.Tensor | None = None) -> torch.Tensor:
        mask = None if key_valid is None else key_valid[:, None, None, :]
        out = F.scaled_dot_product_attention(self._heads(self.q_proj(q)), self._heads(self.k_proj(k)),
                                             self._heads(self.v_proj(v)), attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class TwoWayAttentionBlock(nn.Module):
    """SAM's ``TwoWayAttentionBlock``: token self-attention, token -> image cross-attention, token MLP, image -> token
    cross-attention, each residual and followed by LayerNorm. The first block of a stack skips the positional encoding
    (and residual) of the self-attention, since its tokens are their own encoding."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int = 2,
                 skip_first_layer_pe: bool = False):
        super().__init__()
        self.skip_first_layer_pe = skip_first_layer_pe
        self.self_attn = Attention(dim, num_heads)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate)
        self.mlp = Mlp(dim, mlp_dim, act_layer=nn.ReLU)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate)
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.LayerNorm(dim) for _ in range(4))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor,
                query_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries, query_valid)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries, query_valid)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries, query_valid))
        return queries, keys


class ClickCrossAttention(nn.Module):
    """(B, C, *grid) features + clicks -> (B, C, *grid): ``depth`` two-way blocks between the grid's voxels (image
    tokens) and the click tokens; the updated image tokens go back onto the grid.

    Runs in float32 under autocast, as U-Mamba2's branch does (half precision gave NaNs there); it only sees the
    bottleneck's few tokens, so this costs little.
    """

    def __init__(self, dim: int, ndim: int, num_classes: int, depth: int = 2, num_heads: int = 4,
                 mlp_dim: int = 1024, downsample_rate: int = 2):
        super().__init__()
        self.dim = dim
        self.prompt_encoder = ClickPromptEncoder(dim, ndim, num_classes)
        self.blocks = nn.ModuleList(TwoWayAttentionBlock(dim, num_heads, mlp_dim, downsample_rate,
                                                         skip_first_layer_pe=i == 0) for i in range(depth))

    def forward(self, features: torch.Tensor, coords: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``coords``: normalised click coordinates (B, N, ndim) in [0, 1]; ``classes``: (B, N), -1 = padding."""
        grid = tuple(features.shape[2:])
        with float32_scan(features.device.type):
            keys = to_float32(features)[0].flatten(2).transpose(1, 2)
            key_pe = self.prompt_encoder.positional(cell_centres(grid, features.device))
            tokens, valid = self.prompt_encoder(coords, classes)
            queries = tokens
            for block in self.blocks:
                queries, keys = block(queries, keys, tokens, key_pe, valid)
        return keys.to(features.dtype).transpose(1, 2).unflatten(2, grid).contiguous()

    def compute_conv_feature_map_size(self, grid_shape: Sequence[int]) -> np.int64:
        """Activations per sample kept for the backward, in the sense of dynamic-network-architectures' estimates:
        per image token and block about 6 C (keys + encoding, the k/v/q projections at C / 2 of both
        cross-attentions, the residual sum and its LayerNorm); the click tokens are negligible."""
        return np.int64(6 * self.dim * len(self.blocks)) * np.int64(math.prod(grid_shape))

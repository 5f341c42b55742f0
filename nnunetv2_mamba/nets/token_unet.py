"""The U-shaped token network shared by MambaUNet and SwinUNet (the Mamba-UNet / Swin-Unet layout).

Encoder: a ``patch_size`` patch embedding, then one stage of blocks per level, levels joined by patch merging (x2
down, channels x2); the last stage is the bottleneck. Decoder, per level from deep to shallow: patch expanding (x2
up, channels / 2), concatenation with the encoder stage's output and a linear layer back to the level's width, a
stage of blocks; then a final x``patch_size`` expanding and a per-pixel classifier. Tokens are (batch, H, W, C)
throughout. The two networks differ only in the block, which a subclass supplies through a :data:`BlockFactory`.

For nnU-Net, stage 0 is full resolution, stage 1 the patch grid (stride ``patch_size``) and each merging adds a
stage of its stride (2 x 2 in the papers; nnU-Net's planners may downsample one axis only): ``strides`` must say
exactly that, and with deep supervision the network returns logits at stages 0 .. n-2, highest resolution first, as
nnU-Net's ``UNetDecoder`` does. Planner arch_kwargs (``nnUNetPlans`` or ResEnc plans with only ``network_class_name``
changed) map onto this layout stage by stage (:func:`from_planner`).
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import to_2tuple, trunc_normal_

from nnunetv2_mamba.nets.patch_ops import Factor, PatchExpanding, PatchMerging, patch_embedding
from nnunetv2_mamba.nets.planner_kwargs import BLOCK_COUNTS, TOPOLOGY, Adapted, ArchKwargs, topology
from nnunetv2_mamba.nets.pretrained import LoadReport, load_pretrained

# (dim, level, index of the block in its stage, drop-path rate) -> a block mapping (batch, H, W, dim) to itself
BlockFactory = Callable[[int, int, int, float], nn.Module]

PLANNER_DEPTH = 2  # blocks per level from planner arch_kwargs: Mamba-UNet's and Swin-Unet's


def token_unet_strides(patch_size: Factor, levels: int) -> list[list[int]]:
    """Default nnU-Net stage strides of a token U-Net: full resolution, the patch grid, then [2, 2] per merging."""
    return [[1, 1], list(to_2tuple(patch_size))] + [[2, 2] for _ in range(levels - 1)]


def token_widths(embed_dim: int | Sequence[int], levels: int) -> list[int]:
    """Per-level widths: ``embed_dim * 2^i`` for an int (the papers' rule), else the list as given."""
    return [embed_dim * 2 ** i for i in range(levels)] if isinstance(embed_dim, int) else [int(d) for d in embed_dim]


def from_planner(name: str, kwargs: ArchKwargs) -> Adapted:
    """Planner arch_kwargs: each nnU-Net stage becomes a token stage, so that the deep-supervision outputs lie where
    the plans' strides (which nnU-Net's trainer reads) put them: the patch embedding is ``strides[1]``, every later
    stage one patch merging by its stride, the level widths are ``features_per_stage[1:]``, each level has
    :data:`PLANNER_DEPTH` blocks. Keys of the network's own given alongside win; convolution, norm, dropout and
    nonlinearity settings have no counterpart here."""
    planned = topology(kwargs, name)
    strides = planned["strides"]
    if any(len(stride) != 2 for stride in strides):
        conv_op = getattr(planned["conv_op"], "__name__", planned["conv_op"])
        raise ValueError(f"{name} is a 2D network, but these arch_kwargs are for {len(strides[0])}D (conv_op "
                         f"{conv_op}, strides {strides}): use a 2d configuration, or UMambaBot2 or SegMamba for 3D")
    chose = {"patch_size": strides[1], "embed_dim": planned["features_per_stage"][1:],
             "depths": [PLANNER_DEPTH] * (planned["n_stages"] - 1)}
    chose = {key: value for key, value in chose.items() if key not in kwargs}
    own = {key: value for key, value in kwargs.items() if key not in TOPOLOGY + BLOCK_COUNTS}
    ignored = [key for key in kwargs if key in TOPOLOGY + BLOCK_COUNTS
               and key not in ("n_stages", "features_per_stage", "strides")]
    return Adapted({**chose, **own, "strides": strides}, ignored, chose)


def _check_strides(strides: Sequence | None, patch_size: tuple[int, int], levels: int,
                   owner: str) -> list[list[int]]:
    default = token_unet_strides(patch_size, levels)
    if strides is None:
        return default
    try:
        given = [[int(s), int(s)] if isinstance(s, (int, float)) else [int(v) for v in s] for s in strides]
    except TypeError:
        given = None
    if (given is None or len(given) != levels + 1 or any(len(s) != 2 or min(s) < 1 for s in given)
            or given[0] != [1, 1] or given[1] != list(patch_size)):
        raise ValueError(f"{owner}: arch_kwargs 'strides' = {strides} does not match the architecture. With "
                         f"patch_size={list(patch_size)} and {levels} token stages (len(depths)) it needs "
                         f"{levels + 1} stages of two axes: [1, 1] (full resolution), {list(patch_size)} (the patch "
                         f"grid), then one per patch merging, by default {default}.")
    return given


def _stage(block: BlockFactory, dim: int, level: int, rates: Sequence[float]) -> nn.Sequential:
    return nn.Sequential(*(block(dim, level, index, rate) for index, rate in enumerate(rates)))


def _to_logits(head: nn.Linear, tokens: torch.Tensor) -> torch.Tensor:
    return head(tokens).permute(0, 3, 1, 2)  # (batch, classes, H, W), channels-last in memory


class TokenEncoder(nn.Module):
    """Patch embedding and the encoder stages; returns every stage's output, the bottleneck's normalised.
    ``drop_path[level]`` holds one rate per block of that level's stage."""

    def __init__(self, input_channels: int, patch_size: Factor, dims: Sequence[int], merge_strides: Sequence[Factor],
                 drop_path: Sequence[Sequence[float]], block: BlockFactory):
        super().__init__()
        self.patch_embed = patch_embedding(input_channels, dims[0], patch_size)
        self.stages = nn.ModuleList(_stage(block, dim, level, drop_path[level]) for level, dim in enumerate(dims))
        # merges[i]: level i -> i + 1
        self.merges = nn.ModuleList(PatchMerging(dims[i], dims[i + 1], tuple(merge_strides[i]))
                                    for i in range(len(dims) - 1))
        self.norm = nn.LayerNorm(dims[-1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        features = []
        for level, stage in enumerate(self.stages):
            if level:
                x = self.merges[level - 1](x)
            x = stage(x)
            features.append(x)
        features[-1] = self.norm(x)
        return features


class TokenDecoder(nn.Module):
    """Expanding path with concatenated skips. Modules are indexed by the level they produce (0 = patch grid);
    ``seg_layers[0]`` is the full-resolution classifier, ``seg_layers[1 + i]`` the deep-supervision head of level i.
    ``deep_supervision`` may be toggled at any time (nnU-Net's ``set_deep_supervision_enabled`` does); the level
    stages reuse the encoder's drop-path rates of their level."""

    def __init__(self, dims: Sequence[int], merge_strides: Sequence[Factor], drop_path: Sequence[Sequence[float]],
                 patch_size: Factor, num_classes: int, deep_supervision: bool, block: BlockFactory):
        super().__init__()
        self.deep_supervision = deep_supervision
        levels = range(len(dims) - 1)  # the bottleneck has no decoder stage
        self.expands = nn.ModuleList(PatchExpanding(dims[i + 1], dims[i], tuple(merge_strides[i])) for i in levels)
        self.fuses = nn.ModuleList(nn.Linear(2 * dims[i], dims[i]) for i in levels)
        self.stages = nn.ModuleList(_stage(block, dims[i], i, drop_path[i]) for i in levels)
        self.norms = nn.ModuleList(nn.LayerNorm(dims[i]) for i in levels)
        self.final_expand = PatchExpanding(dims[0], dims[0], patch_size)
        self.seg_layers = nn.ModuleList([nn.Linear(dims[0], num_classes)] +
                                        [nn.Linear(dims[i], num_classes) for i in levels])

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Logits at full resolution, then (with deep supervision) at levels 0, 1, ...; NCHW."""
        x = features[-1]
        level_logits = []
        for level in reversed(range(len(self.stages))):
            x = self.expands[level](x)
            x = self.stages[level](self.fuses[level](torch.cat([x, features[level]], dim=-1)))
            if self.deep_supervision or level == 0:
                normed = self.norms[level](x)
            if self.deep_supervision:
                level_logits.insert(0, _to_logits(self.seg_layers[level + 1], normed))
        return [_to_logits(self.seg_layers[0], self.final_expand(normed))] + level_logits


class TokenUNet(nn.Module):
    """Base of the token U-Nets: the skeleton above, nnU-Net's network contract, and pretrained loading.

    Inputs of any size are zero-padded (bottom/right) to a multiple of the total stride and outputs cropped back.
    Subclasses pass the block factory, and say how the public checkpoints name a block's parameters:
    ``checkpoint_renames`` (prefix in the checkpoint -> ours) and ``checkpoint_ignored`` (substrings of keys not to
    load: classifier head, buffers we recompute).
    """

    checkpoint_renames: dict[str, str] = {}
    checkpoint_ignored: tuple[str, ...] = ("head.",)

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool, strides: Sequence | None,
                 patch_size: Factor | Sequence[int], embed_dim: int | Sequence[int], depths: Sequence[int],
                 drop_path_rate: float, pretrained: str | None, block: BlockFactory):
        super().__init__()
        name = type(self).__name__
        if len(depths) < 2 or any(int(d) < 1 for d in depths):
            raise ValueError(f"{name}: 'depths' must list >= 2 stages (encoder and bottleneck), each with >= 1 block; "
                             f"got {depths}")
        depths, levels = [int(d) for d in depths], len(depths)
        self.patch_size = tuple(int(p) for p in to_2tuple(patch_size))
        self.dims = token_widths(embed_dim, levels)
        if min(self.patch_size) < 1 or len(self.dims) != levels or min(self.dims) < 1:
            raise ValueError(f"{name}: 'patch_size' and 'embed_dim' must be positive, 'embed_dim' an int or one width "
                             f"per stage of 'depths' ({levels}); got {patch_size}, {embed_dim}")
        self.num_classes = num_classes
        self.strides = _check_strides(strides, self.patch_size, levels, name)
        # cumulative stride of each stage: nnU-Net's deep-supervision scales are those of stages 0 .. n-2
        self.stage_strides = [[1, 1]]
        for stride in self.strides[1:]:
            self.stage_strides.append([c * s for c, s in zip(self.stage_strides[-1], stride)])
        # Stochastic depth rising linearly over the encoder blocks; decoder blocks reuse their level's rates.
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        drop_path = [rates[sum(depths[:i]):sum(depths[:i + 1])] for i in range(levels)]
        merge_strides = self.strides[2:]
        self.encoder = TokenEncoder(input_channels, self.patch_size, self.dims, merge_strides, drop_path, block)
        self.decoder = TokenDecoder(self.dims, merge_strides, drop_path, self.patch_size, num_classes,
                                    deep_supervision, block)
        # Initialised here rather than in an ``initialize`` method: nnU-Net applies that after construction, which
        # would overwrite the pretrained weights loaded below.
        self.apply(_init_transformer_weights)
        self.pretrained_report: LoadReport | None = None
        if pretrained is not None:
            self.pretrained_report = load_pretrained(self, pretrained, self.checkpoint_targets)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} is a 2D network: expected input (batch, channels, H, W), "
                             f"got shape {tuple(x.shape)}")
        height, width = x.shape[2:]
        total_height, total_width = self.stage_strides[-1]
        x = F.pad(x, (0, -width % total_width, 0, -height % total_height))
        outputs = [out[..., :math.ceil(height / sh), :math.ceil(width / sw)]
                   for out, (sh, sw) in zip(self.decoder(self.encoder(x)), self.stage_strides)]
        return outputs if self.decoder.deep_supervision else outputs[0]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Estimated activation elements for one sample of ``input_size`` (nnU-Net planners weigh patch and batch
        sizes with it): each block's own estimate plus the embedding, merging, expanding, fusion and head tensors,
        on the padded grid."""
        if len(input_size) != 2:
            raise ValueError(f"{type(self).__name__} is a 2D network; got input_size {tuple(input_size)}")
        padded = [math.ceil(s / t) * t for s, t in zip(input_size, self.stage_strides[-1])]
        classes, dims = self.num_classes, self.dims
        total = (dims[0] + 2 * classes) * padded[0] * padded[1]  # final expanding (linear, norm) and logits
        for level, dim in enumerate(dims):
            grid = [s // t for s, t in zip(padded, self.stage_strides[level + 1])]
            tokens = grid[0] * grid[1]
            if level == 0:
                total += 2 * dim * tokens  # embedding: conv and norm
            else:  # merging: concatenated neighbours, their norm, the reduction
                total += (2 * math.prod(self.strides[level + 1]) * dims[level - 1] + dim) * tokens
            stages = [self.encoder.stages[level]] + ([self.decoder.stages[level]] if level < len(dims) - 1 else [])
            total += sum(block.compute_conv_feature_map_size(grid) for stage in stages for block in stage)
            if level < len(dims) - 1:  # expanding (2), concatenation (2), fusion, norm, deep-supervision logits
                total += (6 * dim + classes) * tokens
        return int(total)

    def checkpoint_targets(self, key: str) -> list[str] | None:
        """Our parameter names for a key of the public ImageNet checkpoints (VMamba v0 / Swin layout:
        ``patch_embed``, ``layers.{i}.blocks.{j}``, ``layers.{i}.downsample``, ``norm``, ``head``). As in both
        papers' code, encoder blocks of level i also initialise the decoder blocks of level i."""
        if any(pattern in key for pattern in self.checkpoint_ignored):
            return None
        if match := re.fullmatch(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)", key):
            level, index, rest = match.groups()
            for old, new in self.checkpoint_renames.items():
                if rest.startswith(old):
                    rest = new + rest[len(old):]
            return [f"{part}.stages.{level}.{index}.{rest}" for part in ("encoder", "decoder")]
        if match := re.fullmatch(r"layers\.(\d+)\.downsample\.(.+)", key):
            return [f"encoder.merges.{match[1]}.{match[2]}"]
        if key.startswith(("patch_embed.", "norm.")):
            return [f"encoder.{key}"]
        return [key]


def _init_transformer_weights(module: nn.Module) -> None:
    """Both papers' initialisation: truncated normal (std 0.02) linear weights, zero biases, unit LayerNorms.
    Raw parameters (the SSM's A_logs, Ds, dt and x projections; relative position tables) keep their own."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

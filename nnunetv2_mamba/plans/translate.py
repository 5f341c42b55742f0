"""One function per architecture: (the base plans' ``arch_kwargs`` of a configuration, the architecture's defaults
from its override file, where) -> the network's ``arch_kwargs``.

Every nnU-Net planner (``nnUNetPlans``, the ResEnc presets) writes the same topology keys: stages, features, strides,
kernel sizes, conv/norm/dropout/nonlinearity ops. The translations keep that dataset-adapted topology and add the
network's own options (SSM sizes, depths), which come from the override file. The networks also take planner
arch_kwargs as they are (:mod:`nnunetv2_mamba.nets.planner_kwargs`, whose functions these build on); the difference
is the token U-Nets, which there follow the plans' stages and here keep their own patch embedding and levels.
"""

from __future__ import annotations

import math
from copy import deepcopy
from typing import Any, Callable

from nnunetv2_mamba.nets import planner_kwargs
from nnunetv2_mamba.nets.token_unet import token_unet_strides
from nnunetv2_mamba.plans.errors import PlansError

ArchKwargs = dict[str, Any]


def topology(base: ArchKwargs, where: str) -> ArchKwargs:
    """The topology keys of ``base`` (copied), or a clear error for plans not written by an nnU-Net planner."""
    try:
        return planner_kwargs.topology(base, where)
    except ValueError as e:
        raise PlansError(str(e)) from e


def residual_encoder_unet(base: ArchKwargs, defaults: ArchKwargs, where: str) -> ArchKwargs:
    """UMambaBot2 / UMambaBot take ``ResidualEncoderUNet``'s arguments: ResEnc plans carry over unchanged; plain
    U-Net plans get the block counts of nnU-Net's ResEnc planner."""
    return {**topology(base, where), **planner_kwargs.residual_encoder_blocks(base), **deepcopy(defaults)}


def segmamba(base: ArchKwargs, defaults: ArchKwargs, where: str) -> ArchKwargs:
    """SegMamba's levels are nnU-Net's stages: level 0 is the full-resolution skip, the stem downsamples by
    ``strides[1]``; its decoder keeps SegMamba's block counts (its default)."""
    kwargs = topology(base, where)
    if any(s != 1 for s in kwargs["strides"][0]):
        raise PlansError(f"{where}: SegMamba needs strides[0] = 1 on every axis (full-resolution first level), "
                         f"the plans have {kwargs['strides'][0]}")
    return {**kwargs, **deepcopy(defaults)}


def token_unet(base: ArchKwargs, defaults: ArchKwargs, where: str) -> ArchKwargs:
    """MambaUNet / SwinUNet downsample by their patch embedding, then x2 per level, whatever the plans' strides;
    they keep as many of their levels (``depths``, ``num_heads`` entries) as the plans' total stride allows, so that
    every deep-supervision scale divides the patch size as nnU-Net's target downsampling needs."""
    strides = topology(base, where)["strides"]
    total_stride = min(math.prod(axis) for axis in zip(*strides))
    patch = defaults["patch_size"]
    if total_stride < 2 * patch:
        raise PlansError(f"{where}: the plans' total stride {total_stride} leaves no room for a patch embedding of "
                         f"{patch} and one patch merging (needs {2 * patch}); the patch size is too small")
    levels = min(len(defaults["depths"]), 1 + int(math.log2(total_stride // patch)))
    kwargs = deepcopy(defaults)
    for per_level in ("depths", "num_heads"):
        if per_level in kwargs:
            kwargs[per_level] = kwargs[per_level][:levels]
    kwargs["strides"] = token_unet_strides(patch, levels)
    return kwargs


TRANSLATIONS: dict[str, Callable[[ArchKwargs, ArchKwargs, str], ArchKwargs]] = {
    "UMambaBot2": residual_encoder_unet,
    "UMambaBot2Click": residual_encoder_unet,
    "UMambaBot": residual_encoder_unet,
    "SegMamba": segmamba,
    "MambaUNet": token_unet,
    "SwinUNet": token_unet,
}

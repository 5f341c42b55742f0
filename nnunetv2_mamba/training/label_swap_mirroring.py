"""Mirroring that knows left from right: flipping an image along the left-right axis turns the left kidney into a
right one, so the paired labels must swap too, in training augmentation and in test-time mirroring.

- Training: :class:`LabelSwapMirrorTransform` replaces nnU-Net's ``MirrorTransform`` and swaps the paired labels of
  the segmentation whenever the swap axis is flipped (the image is flipped exactly as before).
- Inference: nnU-Net's predictor averages ``flip(network(flip(x)))`` without touching channels, so the trainer takes
  the swap axis out of ``inference_allowed_mirroring_axes`` and :func:`attach_label_swap_tta` makes the network
  itself, in eval mode, average its output with ``swap(flip(network(flip(x))))``. The network is what
  ``nnUNetv2_predict`` rebuilds from the trainer, so prediction, the trainer's validation and nnU-Net's mirroring of
  the other axes (all 2^k flip combinations together) need no change to nnU-Net. As the swap is part of the model,
  ``--disable_tta`` leaves it on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from torch import nn
from torch.utils.hooks import RemovableHandle

from nnunetv2_mamba.data.domain_knowledge import AXES

_ARRAY_AXIS = {"z": 0, "y": 1, "x": 2}  # axes of the (z, y, x) arrays nnU-Net's readers return (2D images: z = 1)


def mirror_axis_in_patch(axis: str, transpose_forward: Sequence[int], patch_dims: int) -> int | None:
    """The spatial axis of a training patch that is the image axis ``axis`` ('x', 'y' or 'z'), after the plans'
    ``transpose_forward``; None for a 2D configuration that slices along it (its patches are never flipped there)."""
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}; got {axis!r}")
    transposed = list(transpose_forward).index(_ARRAY_AXIS[axis])
    if patch_dims == 3:
        return transposed
    return None if transposed == 0 else transposed - 1


def swap_labels(segmentation: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Apply ``permutation`` (label -> mirrored label) to a segmentation; negative values (nnU-Net's -1 outside
    the image) stay."""
    swapped = permutation.to(segmentation.device)[segmentation.long().clamp_min(0)].to(segmentation.dtype)
    return torch.where(segmentation < 0, segmentation, swapped)


class LabelSwapMirrorTransform(MirrorTransform):
    """nnU-Net's random mirroring (each allowed axis with probability 0.5); when ``swap_axis`` is flipped the
    segmentation's labels are also mapped through ``permutation`` (which must cover every label, ignore included)."""

    def __init__(self, allowed_axes: Sequence[int], swap_axis: int, permutation: Sequence[int]):
        super().__init__(tuple(allowed_axes))
        self.swap_axis = swap_axis
        self.permutation = torch.as_tensor(permutation, dtype=torch.long)

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> torch.Tensor:
        segmentation = super()._apply_to_segmentation(segmentation, **params)
        return swap_labels(segmentation, self.permutation) if self.swap_axis in params["axes"] else segmentation


def attach_label_swap_tta(network: nn.Module, axis: int, channel_permutation: Sequence[int]) -> RemovableHandle:
    """Make ``network``'s eval-mode output the mean of its output on ``x`` and on ``x`` flipped along spatial axis
    ``axis``, flipped back with channels permuted (``output[:, c]`` <- ``mirrored[:, channel_permutation[c]]``).
    Works for deep-supervision lists too. Training-mode calls are untouched."""
    dim = axis + 2
    permutation = torch.as_tensor(channel_permutation, dtype=torch.long)

    def combine(output: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
        return (output + torch.flip(mirrored, (dim,))[:, permutation.to(output.device)]) / 2

    def hook(module: nn.Module, args: tuple, output):
        if module.training:
            return output
        mirrored = module.forward(torch.flip(args[0], (dim,)))  # forward(), not __call__: no recursion into the hook
        if isinstance(output, (list, tuple)):
            return type(output)(combine(o, m) for o, m in zip(output, mirrored))
        return combine(output, mirrored)

    return network.register_forward_hook(hook)

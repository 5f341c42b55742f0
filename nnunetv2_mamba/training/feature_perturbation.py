"""Feature perturbation for consistency training (U-Mamba2-SSL, after Ouali et al. 2020's cross-consistency): the
student's encoder features are disturbed before the decoder sees them, so the student must agree with the teacher
from damaged evidence.

Works with every network whose ``encoder`` returns the list of skip features (nnU-Net's UNets and all of ours): a
forward hook on the encoder perturbs the skips, all but the highest-resolution ones, while :func:`skip_perturbation`
is active.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from nnunetv2_mamba.nets.token_unet import TokenUNet
from nnunetv2_mamba.training.nnUNetTrainerMamba import unwrap


def perturb_features(features: torch.Tensor, channel_dropout: float = 0.5, keep: tuple[float, float] = (0.6, 0.9),
                     noise: float = 0.3, channel_dim: int = 1,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """U-Mamba2-SSL's three perturbations of a feature map (b, c, *spatial) (channels at ``channel_dim``):

    1. channel dropout: each channel of each sample is zeroed with probability ``channel_dropout``, the others
       scaled by ``1 / (1 - channel_dropout)``;
    2. feature drop: voxels whose channel-mean activation (of the unperturbed features) reaches ``u`` times the
       sample's maximum, ``u ~ U(keep)`` once per call, are zeroed;
    3. multiplicative noise: ``x + x * n`` with ``n ~ U(-noise, noise)`` per channel and voxel, shared by the batch.
    """
    x = features.movedim(channel_dim, 1)
    batch, channels = x.shape[:2]
    perturbed = x
    if channel_dropout > 0:
        kept = torch.rand((batch, channels) + (1,) * (x.ndim - 2), generator=generator, device=x.device)
        perturbed = perturbed * (kept >= channel_dropout).to(x.dtype) / (1 - channel_dropout)
    attention = x.mean(1, keepdim=True)
    fraction = keep[0] + (keep[1] - keep[0]) * torch.rand((), generator=generator, device=x.device)
    threshold = attention.flatten(1).amax(1).view((batch,) + (1,) * (x.ndim - 1)) * fraction
    perturbed = perturbed * (attention < threshold).to(x.dtype)
    if noise > 0:
        n = (torch.rand(x.shape[1:], generator=generator, device=x.device) * 2 - 1) * noise
        perturbed = perturbed + perturbed * n.to(x.dtype)
    return perturbed.movedim(1, channel_dim)


@contextmanager
def skip_perturbation(network: nn.Module, unperturbed: int, **perturbation) -> Iterator[None]:
    """Within the block, ``network``'s encoder returns its skips perturbed by :func:`perturb_features` (keyword
    arguments ``perturbation``), except the ``unperturbed`` highest-resolution ones."""
    module = unwrap(network)
    encoder = getattr(module, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"feature perturbation hooks the network's `encoder` (returning its skip features), but "
                        f"{type(module).__name__} has none; set feature_perturbation = False in a trainer subclass")
    channel_dim = -1 if isinstance(module, TokenUNet) else 1  # token U-Nets keep skips channels-last

    def hook(_: nn.Module, __: tuple, skips):
        if not isinstance(skips, (list, tuple)):
            raise TypeError(f"{type(module).__name__}.encoder returns {type(skips).__name__}, not a list of skips")
        return [s if i < unperturbed else perturb_features(s, channel_dim=channel_dim, **perturbation)
                for i, s in enumerate(skips)]

    handle = encoder.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()

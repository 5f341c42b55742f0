"""Depthwise causal 1D convolution: ``causal_conv1d``'s ``causal_conv1d_fn`` semantics, on any device.

The pure path is PyTorch's grouped ``conv1d`` with left padding, which is already a single fast kernel on CPUs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nnunetv2_mamba.ssm.ops import backend

ACTIVATIONS = (None, "silu", "swish")


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None) -> torch.Tensor:
    """``out[:, d, t] = act(bias[d] + sum_k weight[d, k] x[:, d, t - width + 1 + k])`` with zeros before t = 0.

    Args:
        x: (batch, dim, L); weight: (dim, width); bias: (dim,); activation: None, "silu" or "swish".
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"x must be (batch, dim, L) and weight (dim, width); got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    kernel = backend.cuda_kernel("causal_conv1d", x, weight, bias)
    if kernel is not None:
        return kernel(x, weight, bias, activation=activation)
    width = weight.shape[1]
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=x.shape[1])[..., : x.shape[-1]]
    return F.silu(out) if activation is not None else out

"""Tri-orientated Mamba (ToM), the token mixer of SegMamba (Xing et al., MICCAI 2024).

A Mamba (v1) block that reads the voxels of a feature map in three orders: forward raster order, reverse raster
order, and inter-slice order (for each in-slice position, all slices one after the other). Each order has its own
scan parameters (depthwise conv, x/dt projections, A, D); the in- and out-projections are shared. The three outputs
are put back onto the grid and summed, then gated by SiLU(z) and projected out.

Two differences from SegMamba's code, neither changing the function it computes:

* The orders come from the actual grid shape (SegMamba's code hard-codes the slice count of 128^3 inputs), so any
  patch size works, anisotropic ones included. Slices are taken along the first spatial axis, nnU-Net's out-of-plane
  axis.
* The three scans run as ONE selective scan over ``3 * d_inner`` channels: per-order parameters are stacked along the
  channel dimension and each order's input-dependent B/C is one group. The pure scan is a Python loop over time, so one
  call over many channels costs about what one call over few channels costs. The SiLU(z) gate is applied once to the
  sum, which equals gating each order before summing because the gate is per position.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from nnunetv2_mamba.ssm.modules.mamba import inverse_softplus, sample_dt
from nnunetv2_mamba.ssm.ops import causal_conv1d, selective_scan
from nnunetv2_mamba.ssm.ops.precision import compute_dtype

N_ORDERS = 3


def forward_order(grid_shape: Sequence[int]) -> torch.Tensor:
    """Raster order: step t visits voxel t (index maps give, for each step, the raster index of the voxel visited)."""
    return torch.arange(math.prod(grid_shape))


def reverse_order(grid_shape: Sequence[int]) -> torch.Tensor:
    """Raster order backwards: step t visits voxel L - 1 - t."""
    return torch.arange(math.prod(grid_shape) - 1, -1, -1)


def inter_slice_order(grid_shape: Sequence[int]) -> torch.Tensor:
    """For each in-slice position (raster order within a slice), all slices along the first axis consecutively."""
    return torch.arange(math.prod(grid_shape)).view(grid_shape[0], -1).t().reshape(-1)


def inverse_order(order: torch.Tensor) -> torch.Tensor:
    """The permutation that puts a sequence read in ``order`` back into raster order: ``seq[inverse] == tokens``."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return inverse


def tri_orders(grid_shape: Sequence[int]) -> torch.Tensor:
    """The three ToM orders of a grid as a (3, L) index map: forward, reverse, inter-slice."""
    return torch.stack([forward_order(grid_shape), reverse_order(grid_shape), inter_slice_order(grid_shape)])


class TriMamba(nn.Module):
    """ToM block. Input and output (batch, L, d_model), the voxels of a grid of ``grid_shape`` in raster order.

    Per-order parameters are stacked, order-major: ``A_log[k]``, ``D[k]``, ``x_proj_weight[k]``, ``dt_proj_*[k]`` and
    channels ``[k * d_inner, (k + 1) * d_inner)`` of ``conv1d`` belong to order k (forward, reverse, inter-slice).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | str = "auto",
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        channels = N_ORDERS * self.d_inner

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(channels, channels, kernel_size=d_conv, groups=channels, padding=d_conv - 1,
                                bias=conv_bias, **factory_kwargs)
        # x_proj as in nn.Linear (bound 1/sqrt(fan_in)); dt_proj and A, D as in Mamba, once per order
        bound = self.d_inner ** -0.5
        self.x_proj_weight = nn.Parameter(torch.empty(N_ORDERS, self.dt_rank + 2 * d_state, self.d_inner,
                                                      **factory_kwargs).uniform_(-bound, bound))
        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        dt_weight = torch.empty(N_ORDERS, self.d_inner, self.dt_rank, **factory_kwargs)
        if dt_init == "constant":
            nn.init.constant_(dt_weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(dt_weight, -dt_init_std, dt_init_std)
        else:
            raise ValueError(f"dt_init must be 'constant' or 'random'; got {dt_init!r}")
        self.dt_proj_weight = nn.Parameter(dt_weight)
        self.dt_proj_bias = nn.Parameter(inverse_softplus(
            sample_dt(channels, dt_min, dt_max, dt_init_floor, **factory_kwargs)).view(N_ORDERS, self.d_inner))
        self.dt_proj_bias._no_reinit = True
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(N_ORDERS, self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(N_ORDERS, self.d_inner, device=device))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)
        self._orders: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}

    def orders(self, grid_shape: Sequence[int], device: torch.device) -> torch.Tensor:
        """:func:`tri_orders` on ``device``, cached per grid shape (a training run sees one shape per stage)."""
        key = (tuple(grid_shape), device)
        if key not in self._orders:
            self._orders[key] = tri_orders(grid_shape).to(device)
        return self._orders[key]

    def forward(self, hidden_states: torch.Tensor, grid_shape: Sequence[int]) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        if math.prod(grid_shape) != length:
            raise ValueError(f"TriMamba: grid_shape {tuple(grid_shape)} has {math.prod(grid_shape)} voxels but the "
                             f"input has {length} tokens")
        orders = self.orders(grid_shape, hidden_states.device)
        e, n, r = self.d_inner, self.d_state, self.dt_rank
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (batch, L, d_inner) each
        # the three reading orders side by side, order-major along channels: (batch, 3 d_inner, L)
        u = x[:, orders].permute(0, 1, 3, 2).reshape(batch, N_ORDERS * e, length)
        u = causal_conv1d(u, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        dt, B, C = torch.matmul(self.x_proj_weight, u.view(batch, N_ORDERS, e, length)).split([r, n, n], dim=2)
        delta = torch.matmul(self.dt_proj_weight, dt).view(batch, N_ORDERS * e, length)
        A = -torch.exp(self.A_log.to(compute_dtype(self.A_log))).view(N_ORDERS * e, n)  # float32 even in a bf16 model
        y = selective_scan(u, delta, A, B, C, self.D.view(-1), delta_bias=self.dt_proj_bias.view(-1),
                           delta_softplus=True)
        # back to raster order and summed: step t of order k came from voxel orders[k, t]
        y = y.unflatten(1, (N_ORDERS, e)).transpose(2, 3)  # (batch, 3, L, d_inner)
        mixed = y.new_zeros(batch, length, e)
        for k in range(N_ORDERS):
            mixed.index_add_(1, orders[k], y[:, k])
        return self.out_proj(mixed * F.silu(z))

    def activations_per_token(self) -> int:
        """Elements kept per token for the backward: in-projection, per order the gathered input, conv output,
        x-projection, delta and scan output, then the sum, the gated sum and the out-projection."""
        per_order = 4 * self.d_inner + self.dt_rank + 2 * self.d_state
        return 2 * self.d_inner + N_ORDERS * per_order + 2 * self.d_inner + self.d_model

"""Mamba (v1) block with the parameters of ``mamba_ssm.modules.mamba_simple.Mamba``.

Same parameter names, shapes, defaults and initialisation, so a ``state_dict`` moves between this module and
``mamba_ssm``'s in both directions; the forward pass runs on the CUDA kernels when installed, else in pure PyTorch.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nnunetv2_mamba.ssm.ops import causal_conv1d, selective_scan


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """y such that softplus(y) = x, for x > 0."""
    return x + torch.log(-torch.expm1(-x))


def sample_dt(size: int, dt_min: float, dt_max: float, dt_init_floor: float, **factory_kwargs) -> torch.Tensor:
    """Step sizes drawn log-uniformly in [dt_min, dt_max] (floored), as Mamba initialises its dt bias."""
    dt = torch.exp(torch.rand(size, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return dt.clamp(min=dt_init_floor)


class Mamba(nn.Module):
    """Selective state-space block: in-projection, causal depthwise conv + SiLU, selective scan gated by SiLU(z),
    out-projection. Input and output (batch, L, d_model)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | str = "auto",
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory_kwargs)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory_kwargs)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)

        # dt projection initialised to preserve variance; its bias so that softplus(bias) lies in [dt_min, dt_max]
        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise ValueError(f"dt_init must be 'constant' or 'random'; got {dt_init!r}")
        with torch.no_grad():
            self.dt_proj.bias.copy_(inverse_softplus(sample_dt(self.d_inner, dt_min, dt_max, dt_init_floor,
                                                               **factory_kwargs)))
        self.dt_proj.bias._no_reinit = True

        # S4D-real initialisation A = -(1, ..., N) per channel, kept in float32 as A_log
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (batch, 2 d_inner, L)
        x, z = xz.chunk(2, dim=1)
        x = causal_conv1d(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # bias goes to the scan as delta_bias
        y = selective_scan(x, dt, -torch.exp(self.A_log.float()), B.transpose(1, 2), C.transpose(1, 2),
                           self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))

"""Mamba2 block with the parameters of ``mamba_ssm.modules.mamba2.Mamba2`` (and its gated RMSNorm).

Same parameter names, shapes, defaults and initialisation, so a ``state_dict`` moves between this module and
``mamba_ssm``'s in both directions. One deliberate difference: ``mamba_ssm`` asserts that the SSM width is a multiple
of ``headdim``; here a smaller head dimension that divides it is chosen instead (and logged), so any ``d_model``
works, e.g. nnU-Net's 512-wide bottlenecks with U-Mamba2's ``headdim=80``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from nnunetv2_mamba.ssm.modules.mamba import inverse_softplus, sample_dt
from nnunetv2_mamba.ssm.ops import causal_conv1d, ssd
from nnunetv2_mamba.ssm.ops.precision import compute_dtype

logger = logging.getLogger("nnunetv2_mamba.ssm")


def valid_headdim(d_ssm: int, headdim: int) -> int:
    """The largest head dimension <= ``headdim`` that divides ``d_ssm``."""
    return next(p for p in range(min(headdim, d_ssm), 0, -1) if d_ssm % p == 0)


class RMSNormGated(nn.Module):
    """RMSNorm over groups of channels, gated by SiLU(z) before (default) or after normalisation; at least float32
    inside, like the gated norm of ``mamba_ssm`` (which upcasts half inputs)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, norm_before_gate: bool = False,
                 group_size: int | None = None, device=None, dtype=None):
        super().__init__()
        self.eps, self.norm_before_gate = eps, norm_before_gate
        self.group_size = group_size or hidden_size
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        dtype, ct = x.dtype, compute_dtype(x)
        x = x.to(ct)
        if z is not None and not self.norm_before_gate:
            x = x * F.silu(z.to(ct))
        groups = x.unflatten(-1, (-1, self.group_size))
        out = (groups * torch.rsqrt(groups.square().mean(-1, keepdim=True) + self.eps)).flatten(-2) * self.weight
        if z is not None and self.norm_before_gate:
            out = out * F.silu(z.to(ct))
        return out.to(dtype)


class Mamba2(nn.Module):
    """Mamba2 block: in-projection to (z, x, B, C, dt), causal conv + SiLU on (x, B, C), SSD scan with per-head scalar
    decay, gated RMSNorm, out-projection. Input and output (batch, L, d_model). ``d_ssm < d_inner`` keeps the rest
    of the inner width as a SiLU-gated MLP, as in ``mamba_ssm``."""

    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4, conv_init: float | None = None,
                 expand: int = 2, headdim: int = 64, d_ssm: int | None = None, ngroups: int = 1,
                 A_init_range: tuple[float, float] = (1, 16), D_has_hdim: bool = False, rmsnorm: bool = True,
                 norm_before_gate: bool = False, dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, dt_limit: tuple[float, float] = (0.0, float("inf")), bias: bool = False,
                 conv_bias: bool = True, chunk_size: int = 256, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        self.headdim = valid_headdim(self.d_ssm, headdim)
        if self.headdim != headdim:
            logger.info("Mamba2: d_ssm=%d is not a multiple of headdim=%d; using headdim=%d", self.d_ssm, headdim,
                        self.headdim)
        self.nheads = self.d_ssm // self.headdim
        if self.nheads % ngroups:
            raise ValueError(f"Mamba2: ngroups={ngroups} must divide the number of heads ({self.nheads} = "
                             f"d_ssm {self.d_ssm} / headdim {self.headdim})")
        self.ngroups = ngroups
        self.D_has_hdim, self.rmsnorm, self.norm_before_gate = D_has_hdim, rmsnorm, norm_before_gate
        self.dt_limit, self.chunk_size = tuple(dt_limit), chunk_size

        # in_proj output order: [z0, x0 (gated MLP, if d_ssm < d_inner), z, x, B, C, dt]
        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias, **factory_kwargs)
        conv_dim = self.d_ssm + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim, padding=d_conv - 1,
                                bias=conv_bias, **factory_kwargs)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)

        self.dt_bias = nn.Parameter(inverse_softplus(sample_dt(self.nheads, dt_min, dt_max, dt_init_floor,
                                                               **factory_kwargs)))
        self.dt_bias._no_weight_decay = True
        if not (0 < A_init_range[0] <= A_init_range[1]):
            raise ValueError(f"A_init_range must satisfy 0 < low <= high; got {A_init_range}")
        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype=dtype))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_ssm if D_has_hdim else self.nheads, device=device))
        self.D._no_weight_decay = True
        if rmsnorm:
            self.norm = RMSNormGated(self.d_ssm, eps=1e-5, norm_before_gate=norm_before_gate,
                                     group_size=self.d_ssm // ngroups, **factory_kwargs)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        batch, length, _ = u.shape
        d_mlp = self.d_inner - self.d_ssm
        g_n = self.ngroups * self.d_state
        z0, x0, z, xBC, dt = self.in_proj(u).split([d_mlp, d_mlp, self.d_ssm, self.d_ssm + 2 * g_n, self.nheads],
                                                   dim=-1)
        xBC = causal_conv1d(xBC.transpose(1, 2), self.conv1d.weight.squeeze(1), self.conv1d.bias,
                            activation="silu").transpose(1, 2)
        x, B, C = xBC.split([self.d_ssm, g_n, g_n], dim=-1)
        heads = (batch, length, self.nheads, self.headdim)
        y = ssd(x.reshape(heads), dt, -torch.exp(self.A_log.float()),
                B.reshape(batch, length, self.ngroups, self.d_state),
                C.reshape(batch, length, self.ngroups, self.d_state), self.chunk_size,
                D=self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D,
                z=None if self.rmsnorm else z.reshape(heads), dt_bias=self.dt_bias, dt_softplus=True,
                dt_limit=self.dt_limit)
        y = y.reshape(batch, length, self.d_ssm)
        if self.rmsnorm:
            y = self.norm(y, z)
        if d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y.to(x0.dtype)], dim=-1)
        return self.out_proj(y)

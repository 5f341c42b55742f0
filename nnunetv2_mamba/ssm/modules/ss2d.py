"""SS2D, VMamba's 2D selective-scan layer, with the parameters of VMamba's (v0) ``SS2D``.

The token grid is read in four orders (row-major, column-major, and both reversed); each order has its own x/dt/B/C
projections, ``A`` and ``D``, and the four are run as ONE grouped ``selective_scan`` call (4 groups of ``d_inner``
channels, B and C shaped (batch, 4, N, L)), then summed back onto the grid. Parameter names and shapes
(``x_proj_weight`` (4, dt_rank + 2N, d_inner), ``dt_projs_weight``, ``dt_projs_bias``, ``A_logs`` (4 d_inner, N),
``Ds``) are VMamba's, so its checkpoints load without renaming.

Inside, tensors are time-major, (L, batch, 4, d_inner): that is the layout the scan works in, so its inputs and
output pass through without copies, and the cross-scan and cross-merge are one row gather each.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nnunetv2_mamba.ssm.modules.mamba import inverse_softplus, sample_dt
from nnunetv2_mamba.ssm.ops import selective_scan

DIRECTIONS = 4


def cross_scan_indices(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """(4, H W) map: step ``t`` of scan direction ``k`` reads the token at row-major position ``index[k, t]``.

    Directions: row-major, column-major, row-major reversed, column-major reversed.
    """
    rows = torch.arange(height * width, device=device)
    cols = rows.view(height, width).t().reshape(-1)
    return torch.stack([rows, cols, rows.flip(0), cols.flip(0)])


def cross_merge_indices(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """The inverse of :func:`cross_scan_indices`: the token at row-major position ``i`` is step ``index[k, i]`` of
    direction ``k``."""
    return cross_scan_indices(height, width, device).argsort(dim=1)


@functools.lru_cache(maxsize=64)  # a training run sees one grid per stage; the maps are only read
def scan_rows(height: int, width: int, batch: int, device: torch.device | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row maps between the token grid and the scan, both flattened to rows of channels.

    Tokens are rows ``b L + i`` (batch-major, row-major ``i``); scan slots are rows ``(t batch + b) 4 + k`` (step
    ``t`` of direction ``k``: time-major, the scan's layout). Slot ``s`` reads token row ``to_scan[s]``; direction
    ``k`` of token row ``r`` is slot ``from_scan[4 r + k]``. Each is one ``index_select``.
    """
    b = torch.arange(batch, device=device)
    k = torch.arange(DIRECTIONS, device=device)
    to_scan = b[None, :, None] * (height * width) + cross_scan_indices(height, width, device).t()[:, None, :]
    from_scan = (cross_merge_indices(height, width, device).t()[None] * batch + b[:, None, None]) * DIRECTIONS + k
    return to_scan.flatten(), from_scan.flatten()


class SS2D(nn.Module):
    """2D selective scan over a (batch, H, W, d_model) token grid, same shape out.

    in-projection to (x, z); depthwise conv + SiLU on x; four-direction selective scan; LayerNorm; gate by SiLU(z);
    out-projection.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 3, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1, dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if d_conv % 2 == 0:
            raise ValueError(f"d_conv must be odd so the depthwise conv keeps the grid size; got {d_conv}")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        K, D, R, N = DIRECTIONS, self.d_inner, self.dt_rank, d_state

        self.in_proj = nn.Linear(d_model, 2 * D, bias=bias, **factory_kwargs)
        self.conv2d = nn.Conv2d(D, D, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=D, bias=conv_bias,
                                **factory_kwargs)
        # Per direction: x -> (dt, B, C), initialised like nn.Linear; dt -> d_inner as in Mamba, bias so that
        # softplus(bias) lies in [dt_min, dt_max].
        bound = 1 / math.sqrt(D)
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * N, D, **factory_kwargs).uniform_(-bound, bound))
        dt_std = R ** -0.5 * dt_scale
        self.dt_projs_weight = nn.Parameter(torch.empty(K, D, R, **factory_kwargs).uniform_(-dt_std, dt_std))
        dt = sample_dt(K * D, dt_min, dt_max, dt_init_floor, **factory_kwargs)
        self.dt_projs_bias = nn.Parameter(inverse_softplus(dt).view(K, D))
        self.dt_projs_bias._no_reinit = True
        # S4D-real A = -(1..N) per channel and direction, and the D skip; float32, no weight decay.
        A = torch.arange(1, N + 1, dtype=torch.float32, device=device).repeat(K * D, 1)
        self.A_logs = nn.Parameter(torch.log(A))
        self.Ds = nn.Parameter(torch.ones(K * D, device=device))
        self.A_logs._no_weight_decay = self.Ds._no_weight_decay = True
        self.out_norm = nn.LayerNorm(D, **factory_kwargs)
        self.out_proj = nn.Linear(D, d_model, bias=bias, **factory_kwargs)

    def activations_per_token(self) -> int:
        """Elements kept per token for the backward (for nnU-Net's memory estimate): in-projection, conv and SiLU
        (4 d_inner); per direction the sequence, dt, softplus(dt), dt * u, scan output (5 x 4 d_inner) and the
        x-projection (4 (dt_rank + 2 d_state)); the merge gather (4 d_inner); sum, LayerNorm, SiLU(z), gated product
        (4 d_inner); out-projection (d_model)."""
        return (8 + 6 * DIRECTIONS) * self.d_inner + DIRECTIONS * (self.dt_rank + 2 * self.d_state) + self.d_model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = tokens.shape
        length, K, D, R, N = height * width, DIRECTIONS, self.d_inner, self.dt_rank, self.d_state
        x, z = self.in_proj(tokens).chunk(2, dim=-1)
        # A channels-last conv returns (batch, H, W, D) in memory: token rows without a copy.
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        x = F.silu(self.conv2d(x)).permute(0, 2, 3, 1).reshape(batch * length, D)

        to_scan, from_scan = scan_rows(height, width, batch, tokens.device)
        xs = x.index_select(0, to_scan)  # (L batch 4, D)
        # Projecting each direction's sequence equals projecting the grid once with all four weights and reordering.
        x_dbl = (x @ self.x_proj_weight.flatten(0, 1).t()).view(-1, R + 2 * N)
        x_dbl = x_dbl.index_select(0, (to_scan.view(-1, K) * K + torch.arange(K, device=x.device)).flatten())
        # The four dt projections as one block-diagonal matmul, written straight into the scan's layout.
        dts = x_dbl[:, :R].reshape(length * batch, K * R) @ torch.block_diag(*self.dt_projs_weight.transpose(1, 2))

        def channels(t: torch.Tensor) -> torch.Tensor:  # time-major rows -> the scan's (batch, 4 D, L)
            return t.reshape(length, batch, K * D).permute(1, 2, 0)

        def grouped(t: torch.Tensor) -> torch.Tensor:  # time-major rows -> the scan's (batch, 4, N, L)
            return t.reshape(length, batch, K, N).permute(1, 2, 3, 0)

        y = selective_scan(channels(xs), channels(dts), -torch.exp(self.A_logs.float()), grouped(x_dbl[:, R:R + N]),
                           grouped(x_dbl[:, R + N:]), self.Ds.float(), delta_bias=self.dt_projs_bias.float().view(-1),
                           delta_softplus=True)
        y = y.permute(2, 0, 1).reshape(length * batch * K, D).index_select(0, from_scan)
        y = self.out_norm(y.view(batch, height, width, K, D).sum(dim=3))
        return self.out_proj(y * F.silu(z))

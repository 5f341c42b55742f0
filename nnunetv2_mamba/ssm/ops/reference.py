"""Sequential references for the SSM ops.

One recurrence step at a time, in the precision of the inputs (float64 in the tests), following the semantics of
``mamba_ssm``'s ``selective_scan_ref``, ``mamba_chunk_scan_combined`` and ``causal_conv1d_ref``. Slow by design: they
exist so that tests and benchmarks can check the fast paths, never for training. The random inputs and the error
measure below are shared by the CPU tests and ``benchmarks/gpu_check.py``, so that both check the same cases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def expand_bc(M: torch.Tensor, batch: int, dim: int, length: int) -> torch.Tensor:
    """B or C of ``selective_scan`` as a (batch, dim, N, L) tensor; accepts (dim, N), (batch, N, L), (batch, G, N, L)."""
    if M.dim() == 2:
        return M[None, :, :, None].expand(batch, dim, M.shape[1], length)
    if M.dim() == 3:
        M = M[:, None]
    groups = M.shape[1]
    return M.repeat_interleave(dim // groups, dim=1)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """Mamba1 selective scan, one time step after the other. Shapes as in :func:`selective_scan`."""
    dtype_in = u.dtype
    ct = _compute_dtype(u)
    u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    B = expand_bc(B, batch, dim, length)
    C = expand_bc(C, batch, dim, length)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[..., t]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out


def ssd_ref(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None, dt_softplus=False,
            dt_limit=(0.0, float("inf")), return_final_states=False):
    """Mamba2 state-space dual model as a plain recurrence. Shapes as in :func:`ssd`."""
    dtype_in = x.dtype
    ct = _compute_dtype(x)
    x, dt, A, B, C = (t.to(ct) for t in (x, dt, A, B, C))
    batch, length, nheads, headdim = x.shape
    heads_per_group = nheads // B.shape[2]
    if dt_bias is not None:
        dt = dt + dt_bias.to(ct)
    if dt_softplus:
        dt = F.softplus(dt)
    if dt_limit != (0.0, float("inf")):
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    B = B.repeat_interleave(heads_per_group, dim=2)
    C = C.repeat_interleave(heads_per_group, dim=2)
    if initial_states is None:
        h = x.new_zeros(batch, nheads, headdim, B.shape[-1])
    else:
        h = initial_states.to(ct)
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append((h * C[:, t, :, None, :]).sum(-1))
    y = torch.stack(ys, dim=1)
    if D is not None:
        D = D.to(ct)
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(z.to(ct))
    out = y.to(dtype_in)
    return (out, h) if return_final_states else out


def causal_conv1d_ref(x, weight, bias=None, activation=None):
    """Depthwise causal convolution written as a sum of shifted copies: x (batch, dim, L), weight (dim, width)."""
    dtype_in = x.dtype
    ct = _compute_dtype(x)
    x, weight = x.to(ct), weight.to(ct)
    width = weight.shape[1]
    padded = F.pad(x, (width - 1, 0))
    length = x.shape[-1]
    out = sum(padded[..., k:k + length] * weight[:, k, None] for k in range(width))
    if bias is not None:
        out = out + bias.to(ct)[:, None]
    if activation in ("silu", "swish"):
        out = F.silu(out)
    elif activation is not None:
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    return out.to(dtype_in)


# ---------------------------------------------------------------- checking a fast path against a reference

def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of ``b`` (any devices and dtypes)."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def scan_inputs(batch: int, dim: int, length: int, dstate: int, b_mode: str | int, c_mode: str | int,
                dtype: torch.dtype = torch.float64, extras: bool = True) -> dict[str, torch.Tensor]:
    """Random selective-scan inputs requiring grad; b_mode/c_mode: 'const', '3d' or a number of groups."""
    def bc(mode: str | int) -> torch.Tensor:
        if mode == "const":
            return torch.randn(dim, dstate, dtype=dtype)
        if mode == "3d":
            return torch.randn(batch, dstate, length, dtype=dtype)
        return torch.randn(batch, mode, dstate, length, dtype=dtype)

    inputs = dict(u=torch.randn(batch, dim, length, dtype=dtype),
                  delta=0.5 * torch.randn(batch, dim, length, dtype=dtype),
                  A=-torch.exp(torch.randn(dim, dstate, dtype=dtype)), B=bc(b_mode), C=bc(c_mode))
    if extras:
        inputs.update(D=torch.randn(dim, dtype=dtype), z=torch.randn(batch, dim, length, dtype=dtype),
                      delta_bias=0.1 * torch.randn(dim, dtype=dtype))
    return {k: v.requires_grad_() for k, v in inputs.items()}


def ssd_inputs(batch: int, length: int, nheads: int, headdim: int, ngroups: int, dstate: int, d_kind: str = "h",
               dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """Random SSD inputs requiring grad, initial states included; ``d_kind`` "h": D of shape (nheads,), "hp":
    (nheads, headdim)."""
    inputs = dict(x=torch.randn(batch, length, nheads, headdim, dtype=dtype),
                  dt=torch.randn(batch, length, nheads, dtype=dtype),
                  A=-torch.exp(torch.randn(nheads, dtype=dtype)),
                  B=torch.randn(batch, length, ngroups, dstate, dtype=dtype),
                  C=torch.randn(batch, length, ngroups, dstate, dtype=dtype),
                  D=torch.randn(nheads, dtype=dtype) if d_kind == "h" else torch.randn(nheads, headdim, dtype=dtype),
                  z=torch.randn(batch, length, nheads, headdim, dtype=dtype),
                  dt_bias=torch.randn(nheads, dtype=dtype),
                  initial_states=torch.randn(batch, nheads, headdim, dstate, dtype=dtype))
    return {k: v.requires_grad_() for k, v in inputs.items()}


@torch.no_grad()
def with_mamba2_ranges(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`ssd_inputs` moved into Mamba2's initial parameter ranges (dt in [0.001, 0.1] through dt_bias, A in
    [-16, -1]), where float32 must stay within 1e-5 of float64; arbitrary values can lose more to rounding."""
    from nnunetv2_mamba.ssm.modules.mamba import inverse_softplus

    nheads, dtype = inputs["A"].shape[0], inputs["A"].dtype
    inputs["dt"].mul_(0.5)
    inputs["dt_bias"].copy_(inverse_softplus(torch.rand(nheads, dtype=dtype) * 0.099 + 0.001))
    inputs["A"].copy_(-torch.rand(nheads, dtype=dtype) * 15 - 1)
    return inputs

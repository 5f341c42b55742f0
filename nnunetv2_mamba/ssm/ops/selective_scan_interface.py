"""Mamba1 selective scan: ``mamba_ssm``'s ``selective_scan_fn`` semantics, on any device.

CUDA tensors go to the ``mamba-ssm`` kernel when it is installed (see :mod:`nnunetv2_mamba.ssm.backend`), CPU tensors
to our fused C++ kernel when it builds (:mod:`nnunetv2_mamba.ssm.ops.selective_scan_cpu`). Everything else runs
:class:`_SelectiveScan`, a pure-PyTorch recurrence with a hand-written backward, built for CPUs:

* The state is kept in a (batch, groups, N, K) layout (channel ``d = g * K + k``) so the innermost dimension is the
  channel one: every elementwise op vectorises and ``y_t = C_t h_t`` is one batched matrix product.
* Time is processed in chunks of ``T x P`` steps. Inside a chunk the ``P`` sub-chunks of ``T`` steps are scanned side
  by side (one op per step updates ``P`` states), then joined by a short pass over ``P`` and a vectorised correction
  with the cumulative decay. ``P`` grows when one state is small (3D stages, batch 1), so the number of Python-level
  ops stays low; with large states ``P = 1`` and no extra pass is needed.
* ``softplus(delta + delta_bias)``, ``delta * u`` and the ``D`` skip are formed per chunk, while it is in cache.
* Only the inputs and the state at each chunk start are saved. The backward recomputes a chunk's states, runs the
  adjoint recurrence with the same two-level scheme and reduces the gradients chunk by chunk, so memory is linear in
  L with a small constant and the (batch, dim, L, N) tensors are never materialised.
* ``exp(delta * A)`` is computed as ``exp2(delta * A * log2(e))``, which is about twice as fast on CPUs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from nnunetv2_mamba.ssm.ops import backend, selective_scan_cpu
from nnunetv2_mamba.ssm.ops.precision import compute_dtype, float32_scan, to_float32

LOG2E = 1.0 / math.log(2.0)
# Elements of one per-step op below which sub-chunks are scanned side by side, and elements of a chunk buffer.
_STEP_ELEMENTS = 8192
_CHUNK_ELEMENTS = 1 << 20


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False):
    """Selective scan ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``, ``y_t = C_t h_t + D u_t``, ``y *= silu(z)``.

    Args:
        u, delta: (batch, dim, L).
        A: (dim, N), real.
        B, C: (dim, N) constant, or input-dependent (batch, N, L) or (batch, groups, N, L) with dim % groups == 0.
        D: (dim,) skip; z: (batch, dim, L) gate; delta_bias: (dim,) added to delta before the optional softplus.
        return_last_state: also return the final state (batch, dim, N); no gradient flows through it.

    Returns ``y`` (batch, dim, L) in the dtype of ``u`` (float32 under autocast), and the last state if asked.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    with float32_scan(u.device.type) as autocast_on:
        if autocast_on:
            u, delta, B, C, z = to_float32(u, delta, B, C, z)
        if u.device.type == "cpu" and selective_scan_cpu.kernel() is not None:
            scan = selective_scan_cpu.FusedSelectiveScan
        else:
            kernel = backend.cuda_kernel("selective_scan", u, delta, A, B, C, D, z, delta_bias)
            if kernel is not None:
                return kernel(u, delta, A.float(), B, C, None if D is None else D.float(), z,
                              None if delta_bias is None else delta_bias.float(), delta_softplus, return_last_state)
            scan = _SelectiveScan
        return _run(scan, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, dim, L); got {tuple(u.shape)} and {tuple(delta.shape)}")
    batch, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim or A.is_complex():
        raise ValueError(f"A must be real (dim={dim}, N); got {tuple(A.shape)} {A.dtype}")
    dstate = A.shape[1]
    groups = []
    for name, M in (("B", B), ("C", C)):
        if M.dim() == 2:
            ok = tuple(M.shape) == (dim, dstate)
        elif M.dim() in (3, 4):
            g = 1 if M.dim() == 3 else M.shape[1]
            ok = (M.shape[0], M.shape[-2], M.shape[-1]) == (batch, dstate, length) and dim % g == 0
            groups.append(g)
        else:
            ok = False
        if not ok:
            raise ValueError(f"{name} must be (dim, N), (batch, N, L) or (batch, groups, N, L) with dim divisible by "
                             f"groups, for dim={dim}, N={dstate}, L={length}; got {tuple(M.shape)}")
    if len(groups) == 2 and groups[0] != groups[1]:
        raise ValueError(f"B and C must have the same number of groups; got {groups[0]} and {groups[1]}")
    for name, t, shape in (("D", D, (dim,)), ("delta_bias", delta_bias, (dim,)), ("z", z, tuple(u.shape))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}; got {tuple(t.shape)}")


def _run(scan: type[torch.autograd.Function], u, delta, A, B, C, D, z, delta_bias, delta_softplus,
         return_last_state):
    """``scan`` (the fused CPU kernel or :class:`_SelectiveScan`) in the compute dtype, then the ``z`` gate."""
    dtype_in = u.dtype
    ct = compute_dtype(u)
    u_c, delta_c, A_c, B_c, C_c = (t.to(ct) for t in (u, delta, A, B, C))
    D_c = None if D is None else D.to(ct)
    bias_c = None if delta_bias is None else delta_bias.to(ct)
    y, last_state = scan.apply(u_c, delta_c, A_c, B_c, C_c, D_c, bias_c, delta_softplus)
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(dtype_in)
    return (y, last_state) if return_last_state else y


class _Layout:
    """Sizes of one scan and the conversions between the caller's tensors and the chunked state layout.

    Inside, tensors are time-major: (L, batch, G, rows, cols). Chunk ``c`` covers times ``[c T P, (c + 1) T P)``,
    viewed as (T, P, ...) where step ``t`` of sub-chunk ``p`` is time ``c T P + p T + t``; the last chunk is padded
    with ``delta = 0`` steps, which leave the state unchanged.
    """

    def __init__(self, u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor):
        self.batch, self.dim, self.length = u.shape
        self.dstate = A.shape[1]
        self.B_var, self.C_var = B.dim() >= 3, C.dim() >= 3
        grouped = [M for M in (B, C) if M.dim() == 4]
        self.groups = grouped[0].shape[1] if grouped else 1
        self.K = self.dim // self.groups
        self.state_shape = (self.batch, self.groups, self.dstate, self.K)
        step = self.batch * self.dim * self.dstate
        self.P = max(1, min(64, -(-_STEP_ELEMENTS // step), self.length // 16))
        self.T = max(4, min(256, _CHUNK_ELEMENTS // (self.P * step)))
        if self.length < self.T * self.P:  # short sequences: one chunk, as little padding as possible
            self.T = -(-self.length // self.P)
        self.chunks = -(-self.length // (self.T * self.P))

    def span(self, c: int) -> tuple[int, int]:
        start = c * self.T * self.P
        return start, min(self.length, start + self.T * self.P)

    def chunk(self, x: torch.Tensor, c: int,
              transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Time-major (L, ...) -> chunk ``c`` as a (T, P, ...) view (a padded copy for the last chunk).
        ``transform`` maps the chunk's time-major slice before padding, so padded steps stay zero."""
        start, stop = self.span(c)
        x = x[start:stop] if transform is None else transform(x[start:stop])
        if stop - start < self.T * self.P:
            x = F.pad(x, [0, 0] * (x.dim() - 1) + [0, self.T * self.P - (stop - start)])
        return x.view(self.P, self.T, *x.shape[1:]).transpose(0, 1)

    def store(self, out: torch.Tensor, c: int, value: torch.Tensor) -> None:
        """Write a (T, P, ...) chunk result into the time-major ``out``."""
        start, stop = self.span(c)
        out[start:stop].copy_(value.transpose(0, 1).reshape(self.T * self.P, *value.shape[2:])[: stop - start])

    def channels(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, dim, L) -> contiguous time-major (L, batch, G, 1, K)."""
        return x.permute(2, 0, 1).contiguous().view(self.length, self.batch, self.groups, 1, self.K)

    def channels_back(self, x: torch.Tensor) -> torch.Tensor:
        """Time-major (L, batch, G, 1, K) -> a (batch, dim, L) view."""
        return x.view(self.length, self.batch, self.dim).permute(1, 2, 0)

    def variable(self, M: torch.Tensor) -> torch.Tensor:
        """Input-dependent B or C (batch, [G,] N, L) -> time-major (L, batch, G, N)."""
        if M.dim() == 3:
            M = M[:, None]
        return M.permute(3, 0, 1, 2).contiguous()

    def variable_back(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Time-major (L, batch, G, N) -> the shape of ``like``, (batch, [G,] N, L)."""
        return x.permute(1, 2, 3, 0).reshape(like.shape)

    def per_channel(self, M: torch.Tensor) -> torch.Tensor:
        """(dim, N) -> (G, N, K), broadcastable against states."""
        return M.reshape(self.groups, self.K, self.dstate).transpose(1, 2).contiguous()

    def per_channel_back(self, x: torch.Tensor) -> torch.Tensor:
        """(G, N, K) -> (dim, N)."""
        return x.transpose(1, 2).reshape(self.dim, self.dstate)


class _Recurrence:
    """The buffers of one chunk and its two recurrences: states forward, adjoints backward.

    Per-step views of the buffers are made once: the step loops are Python loops of one op each, so indexing
    overhead matters when states are small.
    """

    def __init__(self, layout: _Layout, dtype: torch.dtype, device: torch.device):
        T, P, state = layout.T, layout.P, layout.state_shape
        self.T, self.P = T, P
        self.dA = torch.empty(T, P, *state, dtype=dtype, device=device)
        self.hs = torch.empty(T + 1, P, *state, dtype=dtype, device=device)
        self.dA_steps, self.hs_steps = self.dA.unbind(0), self.hs.unbind(0)
        self.decay = torch.empty(T, P, *state, dtype=dtype, device=device) if P > 1 else None

    def states(self, dt: torch.Tensor, dtu: torch.Tensor, Bm: torch.Tensor, A2: torch.Tensor,
               h0: torch.Tensor) -> torch.Tensor:
        """Fill ``dA`` and ``hs`` (``hs[t]`` is the state before step t, ``hs[t + 1]`` after); return a copy of the
        last state (the buffers are reused by the next chunk)."""
        T, P, hs = self.T, self.P, self.hs
        dA_s, hs_s = self.dA_steps, self.hs_steps
        torch.mul(dt, A2, out=self.dA).exp2_()
        torch.mul(dtu, Bm, out=hs[1:])
        hs[0].zero_()
        if P == 1:
            hs[0, 0].copy_(h0)
        for t in range(T):
            hs_s[t + 1].addcmul_(dA_s[t], hs_s[t])
        if P > 1:
            # Each sub-chunk was scanned from zero. decay[t] = dA[0] ... dA[t] (a product of exp2 is exp2 of a sum)
            # carries the true incoming state of the sub-chunk to step t.
            decay = torch.mul(torch.cumsum(dt, dim=0), A2, out=self.decay).exp2_()
            hs[0, 0].copy_(h0)
            for p in range(1, P):
                torch.addcmul(hs[T, p - 1], decay[T - 1, p - 1], hs[0, p - 1], out=hs[0, p])
            hs[1:].addcmul_(decay, hs[0:1])
        return hs[T, P - 1].clone()

    def adjoints(self, g: torch.Tensor, carry: torch.Tensor, dt: torch.Tensor, A2: torch.Tensor) -> torch.Tensor:
        """Turn ``g`` (holding ``C_t^T dy_t``) into ``dL/dh_t`` given ``carry = dA_{t1} dL/dh_{t1}`` from the next
        chunk; return the carry for the previous chunk. Needs ``dA`` of this chunk and its ``dt``."""
        T, P, dA = self.T, self.P, self.dA
        g_s, dA_s = g.unbind(0), self.dA_steps
        if P == 1:
            g_s[T - 1][0].add_(carry)
        for t in range(T - 2, -1, -1):
            g_s[t].addcmul_(dA_s[t + 1], g_s[t + 1])
        if P > 1:
            # rest[t] = dA[t + 1] ... dA[T - 1]: how the adjoint entering a sub-chunk's end reaches step t.
            cum = torch.cumsum(dt, dim=0)
            rest = torch.mul(cum[T - 1:] - cum, A2, out=self.decay).exp2_()
            incoming = torch.empty_like(g[0])
            incoming[P - 1].copy_(carry)
            for p in range(P - 2, -1, -1):
                first = torch.addcmul(g[0, p + 1], rest[0, p + 1], incoming[p + 1])
                torch.mul(dA[0, p + 1], first, out=incoming[p])
            g.addcmul_(rest, incoming[None])
        return dA[0, 0] * g[0, 0]


class _StepInputs:
    """The per-step inputs of a chunk, ``dt = softplus(delta + delta_bias)``, ``dt * u`` and ``u``, in the (T, P, ...)
    layout. They are formed chunk by chunk, while the chunk is in cache, and recomputed in the backward rather than
    saved: no passes over whole sequences, and two sequence-sized tensors fewer kept for the backward."""

    def __init__(self, lay: _Layout, u: torch.Tensor, delta: torch.Tensor, D: torch.Tensor | None,
                 delta_bias: torch.Tensor | None, delta_softplus: bool):
        self.lay, self.softplus = lay, delta_softplus
        self.u, self.delta = lay.channels(u), lay.channels(delta)
        self.bias = None if delta_bias is None else delta_bias.view(lay.groups, 1, lay.K)
        self.D = None if D is None else D.view(lay.groups, 1, lay.K)

    def biased(self, delta: torch.Tensor) -> torch.Tensor:
        return delta if self.bias is None else delta + self.bias

    def dt(self, delta: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.biased(delta)) if self.softplus else self.biased(delta)

    def chunk(self, c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``u``, ``dt`` and ``dt * u`` of chunk ``c``; zero on padded steps, which then leave the state unchanged."""
        u = self.lay.chunk(self.u, c)
        dt = self.lay.chunk(self.delta, c, self.dt)
        return u, dt, dt * u

    def dt_slope(self, c: int) -> torch.Tensor | None:
        """d dt / d delta on chunk ``c`` (None when dt is delta plus a constant)."""
        return torch.sigmoid(self.lay.chunk(self.delta, c, self.biased)) if self.softplus else None


class _SelectiveScan(torch.autograd.Function):
    """The recurrence with its delta preprocessing and ``D`` skip; the ``z`` gate is a cheap elementwise op left to
    autograd."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus):
        lay = _Layout(u, A, B, C)
        rec = _Recurrence(lay, u.dtype, u.device)
        steps = _StepInputs(lay, u, delta, D, delta_bias, delta_softplus)
        A2 = lay.per_channel(A) * LOG2E
        Bm = lay.variable(B) if lay.B_var else lay.per_channel(B)
        Cm = lay.variable(C) if lay.C_var else lay.per_channel(C)
        y = torch.empty(lay.length, lay.batch, lay.groups, 1, lay.K, dtype=u.dtype, device=u.device)
        y_chunk = torch.empty(lay.T, lay.P, lay.batch, lay.groups, 1, lay.K, dtype=u.dtype, device=u.device)
        starts = torch.empty(lay.chunks, *lay.state_shape, dtype=u.dtype, device=u.device)
        h = torch.zeros(lay.state_shape, dtype=u.dtype, device=u.device)
        for c in range(lay.chunks):
            starts[c].copy_(h)
            u_c, dt_c, dtu_c = steps.chunk(c)
            Bc = lay.chunk(Bm, c).unsqueeze(-1) if lay.B_var else Bm
            h = rec.states(dt_c, dtu_c, Bc, A2, h)
            if lay.C_var:
                torch.matmul(lay.chunk(Cm, c).unsqueeze(-2), rec.hs[1:], out=y_chunk)
            else:
                torch.sum(rec.hs[1:] * Cm, dim=-2, keepdim=True, out=y_chunk)
            if steps.D is not None:
                y_chunk.addcmul_(u_c, steps.D)
            lay.store(y, c, y_chunk)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, starts)
        ctx.delta_softplus = delta_softplus
        last_state = h.permute(0, 1, 3, 2).reshape(lay.batch, lay.dim, lay.dstate)
        ctx.mark_non_differentiable(last_state)
        return lay.channels_back(y), last_state

    @staticmethod
    def backward(ctx, grad_y, _grad_last_state):
        u, delta, A, B, C, D, delta_bias, starts = ctx.saved_tensors
        lay = _Layout(u, A, B, C)
        rec = _Recurrence(lay, u.dtype, u.device)
        steps = _StepInputs(lay, u, delta, D, delta_bias, ctx.delta_softplus)
        gy = lay.channels(grad_y.to(u.dtype))
        A_gnk = lay.per_channel(A)
        A2 = A_gnk * LOG2E
        Bm = lay.variable(B) if lay.B_var else lay.per_channel(B)
        Cm = lay.variable(C) if lay.C_var else lay.per_channel(C)

        g = torch.empty_like(rec.dA)
        scratch = torch.empty_like(rec.dA)
        d_u, d_delta = torch.empty_like(steps.u), torch.empty_like(steps.u)
        d_A = torch.zeros_like(A_gnk)
        d_B = torch.empty_like(Bm) if lay.B_var else torch.zeros_like(Bm)
        d_C = torch.empty_like(Cm) if lay.C_var else torch.zeros_like(Cm)
        d_dt = torch.empty(lay.T, lay.P, lay.batch, lay.groups, 1, lay.K, dtype=u.dtype, device=u.device)
        d_dtu = torch.empty_like(d_dt)
        bc_grad = torch.empty(lay.T, lay.P, lay.batch, lay.groups, lay.dstate, dtype=u.dtype, device=u.device)
        carry = torch.zeros(lay.state_shape, dtype=u.dtype, device=u.device)
        for c in range(lay.chunks - 1, -1, -1):
            u_c, dt_c, dtu_c = steps.chunk(c)
            gy_c = lay.chunk(gy, c)
            Bc = lay.chunk(Bm, c).unsqueeze(-1) if lay.B_var else Bm
            Cc = lay.chunk(Cm, c).unsqueeze(-1) if lay.C_var else Cm
            rec.states(dt_c, dtu_c, Bc, A2, starts[c])
            h_before, h_after = rec.hs[:-1], rec.hs[1:]
            torch.mul(Cc, gy_c, out=g)
            carry = rec.adjoints(g, carry, dt_c, A2)
            # y_t = C_t h_t
            if lay.C_var:
                torch.matmul(h_after, gy_c.transpose(-1, -2), out=bc_grad.unsqueeze(-1))
                lay.store(d_C, c, bc_grad)
            else:
                d_C += torch.mul(h_after, gy_c, out=scratch).sum(dim=(0, 1, 2))
            # h_t = dA_t h_{t-1} + (delta_t u_t) B_t
            if lay.B_var:
                torch.matmul(Bc.transpose(-1, -2), g, out=d_dtu)
                torch.matmul(g, dtu_c.transpose(-1, -2), out=bc_grad.unsqueeze(-1))
                lay.store(d_B, c, bc_grad)
            else:
                torch.sum(torch.mul(g, Bc, out=scratch), dim=-2, keepdim=True, out=d_dtu)
                d_B += torch.mul(g, dtu_c, out=scratch).sum(dim=(0, 1, 2))
            # dA_t = exp(delta_t A): d/d(delta_t A) = g * h_{t-1} * dA_t
            q = g.mul_(h_before).mul_(rec.dA)
            torch.sum(torch.mul(q, A_gnk, out=scratch), dim=-2, keepdim=True, out=d_dt)
            d_A += torch.mul(q, dt_c, out=scratch).sum(dim=(0, 1, 2))
            # dt enters through dA and dt * u; u through dt * u and the D skip
            d_dt.addcmul_(d_dtu, u_c)
            slope = steps.dt_slope(c)
            lay.store(d_delta, c, d_dt if slope is None else d_dt.mul_(slope))
            d_u_c = d_dtu.mul_(dt_c)
            lay.store(d_u, c, d_u_c if steps.D is None else d_u_c.addcmul_(gy_c, steps.D))

        d_D = d_bias = None
        if D is not None and ctx.needs_input_grad[5]:
            d_D = (gy * steps.u).sum(dim=(0, 1)).view(lay.dim)
        if delta_bias is not None and ctx.needs_input_grad[6]:
            d_bias = d_delta.sum(dim=(0, 1)).view(lay.dim)
        d_A = lay.per_channel_back(d_A)
        d_B = lay.variable_back(d_B, B) if lay.B_var else lay.per_channel_back(d_B)
        d_C = lay.variable_back(d_C, C) if lay.C_var else lay.per_channel_back(d_C)
        return lay.channels_back(d_u), lay.channels_back(d_delta), d_A, d_B, d_C, d_D, d_bias, None

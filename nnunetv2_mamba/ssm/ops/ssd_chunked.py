"""Mamba2 state-space duality (SSD): ``mamba_ssm``'s ``mamba_chunk_scan_combined`` semantics, on any device.

CUDA tensors go to the ``mamba-ssm`` Triton kernels when installed. Everything else runs :class:`_ChunkedSSD`, the
chunked SSD algorithm in PyTorch with a hand-written backward, built for CPUs:

* Per chunk of Q steps, outputs that stay inside the chunk use the quadratic (attention-like) form
  ``(C B^T * exp(segsum)) (dt x)``; each chunk also produces its end state ``B^T (exp(to_end) dt x)``; a loop over
  chunks carries the states (linear in L, unlike the quadratic chunk-to-chunk pass of ``ssd_minimal_discrete``).
* Heads that share B and C (a group) are handled by one matrix product per group.
* Chunks are processed in blocks small enough to stay in cache. The backward keeps, per chunk, only the state entering
  it and the output it produces (the two products that cost a full pass over the states) and recomputes the cheap
  rest of a block before differentiating it: memory linear in L with a small constant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nnunetv2_mamba.ssm.ops import backend
from nnunetv2_mamba.ssm.ops.precision import compute_dtype, float32_scan, to_float32

# Chunk length of the pure path. It does not change the result (only rounding); 64 measured fastest on CPU.
PURE_CHUNK_SIZE = 64
# Elements of the (b, chunks, heads, Q, Q) tensors of one block: small enough to stay in cache.
_BLOCK_ELEMENTS = 1 << 20


def ssd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int = 256,
        D: torch.Tensor | None = None, z: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
        initial_states: torch.Tensor | None = None, dt_softplus: bool = False,
        dt_limit: tuple[float, float] = (0.0, float("inf")), return_final_states: bool = False):
    """``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``, ``y_t = h_t C_t + D x_t``, ``y *= silu(z)``; per head.

    Args:
        x: (batch, L, nheads, headdim); dt: (batch, L, nheads); A: (nheads,), real (negative for decay).
        B, C: (batch, L, ngroups, dstate), nheads divisible by ngroups.
        chunk_size: chunk length of the CUDA kernel; the pure path uses :data:`PURE_CHUNK_SIZE` (same result).
        D: (nheads,) or (nheads, headdim); z: like x; dt_bias: (nheads,) added before the optional softplus;
        dt_limit: dt is clamped to this range; initial_states: (batch, nheads, headdim, dstate).

    Returns y like x (float32 under autocast), and the final states (batch, nheads, headdim, dstate) if asked.
    """
    _check_shapes(x, dt, A, B, C, D, z, dt_bias, initial_states)
    with float32_scan(x.device.type) as autocast_on:
        if autocast_on:
            x, dt, B, C, z, initial_states = to_float32(x, dt, B, C, z, initial_states)
        kernel = backend.cuda_kernel("ssd", x, dt, A, B, C, D, z, dt_bias, initial_states)
        if kernel is not None:
            return kernel(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
                          dt_softplus=dt_softplus, dt_limit=dt_limit, return_final_states=return_final_states)
        return _ssd_pure(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_limit, return_final_states)


def _check_shapes(x, dt, A, B, C, D, z, dt_bias, initial_states) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be (batch, L, nheads, headdim); got {tuple(x.shape)}")
    batch, length, nheads, headdim = x.shape
    if tuple(dt.shape) != (batch, length, nheads):
        raise ValueError(f"dt must be (batch, L, nheads) = {(batch, length, nheads)}; got {tuple(dt.shape)}")
    if tuple(A.shape) != (nheads,):
        raise ValueError(f"A must be (nheads,) = ({nheads},); got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape != C.shape or B.shape[:2] != (batch, length) or nheads % B.shape[2]:
        raise ValueError(f"B and C must both be (batch, L, ngroups, dstate) with nheads={nheads} divisible by "
                         f"ngroups; got {tuple(B.shape)} and {tuple(C.shape)}")
    dstate = B.shape[3]
    if D is not None and tuple(D.shape) not in ((nheads,), (nheads, headdim)):
        raise ValueError(f"D must be (nheads,) or (nheads, headdim); got {tuple(D.shape)}")
    for name, t, shape in (("z", z, tuple(x.shape)), ("dt_bias", dt_bias, (nheads,)),
                           ("initial_states", initial_states, (batch, nheads, headdim, dstate))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}; got {tuple(t.shape)}")


def _ssd_pure(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_limit, return_final_states):
    dtype_in = x.dtype
    ct = compute_dtype(x)
    x_c, dt, A, B, C = (t.to(ct) for t in (x, dt, A, B, C))
    if dt_bias is not None:
        dt = dt + dt_bias.to(ct)
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != (0.0, float("inf")):
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    if initial_states is None:
        initial_states = x_c.new_zeros(x.shape[0], x.shape[2], x.shape[3], B.shape[3])
    y, final_states = _ChunkedSSD.apply(x_c, dt, A, B, C, initial_states.to(ct))
    if D is not None:
        D = D.to(ct)
        y = y + x_c * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(dtype_in)
    return (y, final_states) if return_final_states else y


class _Block:
    """Forward quantities of a block of K chunks. Layouts: heads split as (g, hg); per-chunk step index last but one
    for matrices; states (b, g, n, hg * p). The quantities that need the incoming state and cost a full matrix
    product over the block (``incoming``, ``y_in``) are computed once by :meth:`pass_states` and kept for the
    backward; the rest is cheap to recompute."""

    def __init__(self, x, dt, A, B, C, Q: int):
        b, L, h, p = x.shape
        g, n = B.shape[2], B.shape[3]
        hg, K = h // g, L // Q
        self.shape = (b, K, g, hg, Q, p, n)
        self.dt = dt.reshape(b, K, Q, g, hg).permute(0, 1, 3, 4, 2).contiguous()   # (b, K, g, hg, Q)
        self.x = x.reshape(b, K, Q, g, hg, p).permute(0, 1, 3, 4, 2, 5).contiguous()  # (b, K, g, hg, Q, p)
        self.B = B.reshape(b, K, Q, g, n).transpose(2, 3).contiguous()              # (b, K, g, Q, n)
        self.C = C.reshape(b, K, Q, g, n).transpose(2, 3).contiguous()
        self.A = A.view(g, hg, 1)
        self.cum = (self.dt * self.A).cumsum(-1)                                    # (b, K, g, hg, Q)
        self.xdt = self.x * self.dt[..., None]
        causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
        # E[l, s] = exp(cum_l - cum_s) for s <= l: decay from step s to step l inside the chunk
        self.E = torch.exp((self.cum[..., :, None] - self.cum[..., None, :]).masked_fill_(~causal, float("-inf")))
        self.CB = torch.matmul(self.C, self.B.transpose(-1, -2))                    # (b, K, g, Q, Q)
        self.W = self.CB[:, :, :, None] * self.E                                    # (b, K, g, hg, Q, Q)
        self.to_end = torch.exp(self.cum[..., -1:] - self.cum)                      # (b, K, g, hg, Q)
        self.xw = self._steps(self.xdt * self.to_end[..., None])                    # (b, K, g, Q, hg*p)
        self.decay = self._per_state(torch.exp(self.cum[..., -1]))                  # (b, K, g, 1, hg*p)
        self.exp_cum = torch.exp(self.cum)
        self.incoming = self.y_in = None

    def pass_states(self, state: torch.Tensor) -> torch.Tensor:
        """Carry ``state`` through the block's chunks (fills ``incoming`` and ``y_in``); return the end state."""
        chunk_states = torch.matmul(self.B.transpose(-1, -2), self.xw)              # (b, K, g, n, hg*p)
        self.incoming = torch.empty_like(chunk_states)
        for k in range(self.shape[1]):
            self.incoming[:, k] = state
            state = self.decay[:, k] * state + chunk_states[:, k]
        self.y_in = self._heads(torch.matmul(self.C, self.incoming))                # (b, K, g, hg, Q, p)
        return state

    def output(self) -> torch.Tensor:
        """y in the caller's layout (b, K * Q, h, p)."""
        b, K, g, hg, Q, p, n = self.shape
        y = torch.matmul(self.W, self.xdt) + self.y_in * self.exp_cum[..., None]
        return y.permute(0, 1, 4, 2, 3, 5).reshape(b, K * Q, g * hg, p)

    def _steps(self, t: torch.Tensor) -> torch.Tensor:
        """(b, K, g, hg, Q, p) -> (b, K, g, Q, hg * p)."""
        b, K, g, hg, Q, p, n = self.shape
        return t.permute(0, 1, 2, 4, 3, 5).reshape(b, K, g, Q, hg * p)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(b, K, g, Q, hg * p) -> (b, K, g, hg, Q, p)."""
        b, K, g, hg, Q, p, n = self.shape
        return t.view(b, K, g, Q, hg, p).transpose(3, 4)

    def _per_state(self, t: torch.Tensor) -> torch.Tensor:
        """Per-head (b, K, g, hg) -> broadcastable against states (b, K, g, 1, hg * p)."""
        b, K, g, hg, Q, p, n = self.shape
        return t[..., None].expand(b, K, g, hg, p).reshape(b, K, g, 1, hg * p)

    def backward(self, dy: torch.Tensor, adjoint: torch.Tensor):
        """Gradients of this block given dy (b, K * Q, h, p) and the adjoint of its end state; returns
        (dx, ddt, dA, dB, dC) in the caller's layouts and the adjoint of its start state."""
        b, K, g, hg, Q, p, n = self.shape
        dy = dy.reshape(b, K, Q, g, hg, p).permute(0, 1, 3, 4, 2, 5).contiguous()  # (b, K, g, hg, Q, p)
        # y_in * exp(cum): the state entering each chunk, read out by C
        d_in = self._steps(dy * self.exp_cum[..., None])                            # (b, K, g, Q, hg*p)
        d_cum = (dy * self.y_in).sum(-1) * self.exp_cum
        dC = torch.matmul(d_in, self.incoming.transpose(-1, -2))                    # (b, K, g, Q, n)
        d_incoming = torch.matmul(self.C.transpose(-1, -2), d_in)                   # (b, K, g, n, hg*p)
        # the loop over chunks, backwards
        d_chunk_states = torch.empty_like(self.incoming)
        d_decay = torch.empty_like(self.decay)
        for k in range(K - 1, -1, -1):
            d_chunk_states[:, k] = adjoint
            torch.sum(adjoint * self.incoming[:, k], dim=-2, keepdim=True, out=d_decay[:, k])
            adjoint = adjoint * self.decay[:, k] + d_incoming[:, k]
        d_cum[..., -1] += (d_decay.view(b, K, g, hg, p).sum(-1)) * self.exp_cum[..., -1]
        # chunk end states: B^T (to_end * dt x)
        d_xw = self._heads(torch.matmul(self.B, d_chunk_states))                    # (b, K, g, hg, Q, p)
        dB = torch.matmul(self.xw, d_chunk_states.transpose(-1, -2))                # (b, K, g, Q, n)
        d_xdt = d_xw * self.to_end[..., None]
        d_to_end = (d_xw * self.xdt).sum(-1) * self.to_end
        d_cum -= d_to_end
        d_cum[..., -1] += d_to_end.sum(-1)
        # outputs inside the chunk: (CB * E) (dt x)
        dW = torch.matmul(dy, self.xdt.transpose(-1, -2))                           # (b, K, g, hg, Q, Q)
        d_xdt += torch.matmul(self.W.transpose(-1, -2), dy)
        dCB = (dW * self.E).sum(3)                                                  # (b, K, g, Q, Q)
        R = dW.mul_(self.W)                                                         # d/d(cum_l - cum_s)
        d_cum += R.sum(-1) - R.sum(-2)
        dC += torch.matmul(dCB, self.B)
        dB += torch.matmul(dCB.transpose(-1, -2), self.C)
        # xdt = x * dt, cum = cumsum(dt * A)
        dx = d_xdt * self.dt[..., None]
        d_a = d_cum.flip(-1).cumsum(-1).flip(-1)
        ddt = (d_xdt * self.x).sum(-1) + d_a * self.A
        dA = (d_a * self.dt).sum(dim=(0, 1, 4)).reshape(g * hg)
        dx = dx.permute(0, 1, 4, 2, 3, 5).reshape(b, K * Q, g * hg, p)
        ddt = ddt.permute(0, 1, 4, 2, 3).reshape(b, K * Q, g * hg)
        dB = dB.transpose(2, 3).reshape(b, K * Q, g, n)
        dC = dC.transpose(2, 3).reshape(b, K * Q, g, n)
        return (dx, ddt, dA, dB, dC), adjoint


class _ChunkedSSD(torch.autograd.Function):
    """SSD core on dt after softplus/clamp: x (b, L, h, p), dt (b, L, h), A (h,), B/C (b, L, g, n),
    initial (b, h, p, n); returns y (b, L, h, p) and the final state (b, h, p, n)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, initial):
        b, length, h, p = x.shape
        g = B.shape[2]
        Q = PURE_CHUNK_SIZE
        padded = -(-length // Q) * Q
        if padded != length:  # dt = 0 steps neither decay nor add to the state
            x, dt, B, C = (F.pad(t, [0, 0] * (t.dim() - 2) + [0, padded - length]) for t in (x, dt, B, C))
        block = Q * max(1, _BLOCK_ELEMENTS // (b * h * Q * Q))
        state = _to_state_layout(initial, g)
        saved, y = [], torch.empty_like(x)
        for t0 in range(0, padded, block):
            part = _Block(*(t[:, t0:t0 + block] for t in (x, dt)), A, *(t[:, t0:t0 + block] for t in (B, C)), Q)
            state = part.pass_states(state)
            y[:, t0:t0 + block] = part.output()
            saved.append((part.incoming, part.y_in))
        ctx.save_for_backward(x, dt, A, B, C)
        ctx.saved_blocks, ctx.meta = saved, (length, g, block)
        return y[:, :length], _from_state_layout(state, h, p)

    @staticmethod
    def backward(ctx, dy, d_final):
        x, dt, A, B, C = ctx.saved_tensors
        length, g, block = ctx.meta
        b, padded, h, p = x.shape
        dy = F.pad(dy, [0, 0, 0, 0, 0, padded - length]) if padded != length else dy
        adjoint = _to_state_layout(d_final, g) if d_final is not None else None
        dx, ddt, dB, dC = (torch.empty_like(t) for t in (x, dt, B, C))
        dA = torch.zeros_like(A)
        for t0, (incoming, y_in) in reversed(list(zip(range(0, padded, block), ctx.saved_blocks))):
            part = _Block(*(t[:, t0:t0 + block] for t in (x, dt)), A, *(t[:, t0:t0 + block] for t in (B, C)),
                          PURE_CHUNK_SIZE)
            part.incoming, part.y_in = incoming, y_in
            if adjoint is None:
                adjoint = torch.zeros_like(incoming[:, 0])
            (dx_b, ddt_b, dA_b, dB_b, dC_b), adjoint = part.backward(dy[:, t0:t0 + block], adjoint)
            dx[:, t0:t0 + block], ddt[:, t0:t0 + block] = dx_b, ddt_b
            dB[:, t0:t0 + block], dC[:, t0:t0 + block] = dB_b, dC_b
            dA += dA_b
        return (dx[:, :length], ddt[:, :length], dA, dB[:, :length], dC[:, :length],
                _from_state_layout(adjoint, h, p))


def _to_state_layout(state: torch.Tensor, g: int) -> torch.Tensor:
    """(b, h, p, n) -> (b, g, n, hg * p)."""
    b, h, p, n = state.shape
    return state.reshape(b, g, h // g, p, n).permute(0, 1, 4, 2, 3).reshape(b, g, n, h // g * p)


def _from_state_layout(state: torch.Tensor, h: int, p: int) -> torch.Tensor:
    """(b, g, n, hg * p) -> (b, h, p, n)."""
    b, g, n, _ = state.shape
    return state.reshape(b, g, n, h // g, p).permute(0, 1, 3, 4, 2).reshape(b, h, p, n)

"""The fused CPU selective scan (``csrc/selective_scan_cpu.cpp``): compiled on first use by PyTorch's JIT extension
builder (about 30 s, once per Python environment, torch version and instruction set) and cached under
``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``).

Why a compiled kernel: on a CPU the pure-PyTorch scan's time goes into one tiny op per time step; one C++ loop over
time, vectorised across channels, is several times faster (``documentation/benchmarks.md``). It is optional: without
a C++ compiler and OpenMP, or with ``NNUNETV2_MAMBA_CPU_KERNEL=0`` (or ``NNUNETV2_MAMBA_FORCE_PURE=1``), the
pure-PyTorch scan runs, with the same results to rounding.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

from nnunetv2_mamba.ssm.ops import backend

CPU_KERNEL_ENV = "NNUNETV2_MAMBA_CPU_KERNEL"
SOURCE = Path(__file__).with_name("csrc") / "selective_scan_cpu.cpp"
# Instruction sets PyTorch itself dispatches to on this CPU. The build is named after them and after the torch
# version, so a cache shared by machines of different CPUs (a cluster's home directory) or by several environments
# never loads a binary with instructions a node lacks or built against another torch.
_ISA_FLAGS = {"AVX512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mavx2", "-mfma"],
              "AVX2": ["-mavx2", "-mfma"]}
# -ffast-math is for compiling only (it lets exp vectorise); the link has no -ffast-math, so loading the library
# leaves the process's floating-point mode (denormals) alone.
_CFLAGS = ["-O3", "-ffast-math", "-fopenmp"]
# A build lock older than this was left by a killed build; torch would wait for it forever.
_STALE_LOCK_S = 600


def disabled_reason() -> str | None:
    """Why the fused kernel is switched off by the environment, or None."""
    if os.environ.get(CPU_KERNEL_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return f"{CPU_KERNEL_ENV} is off"
    if backend.force_pure():
        return f"{backend.FORCE_PURE_ENV} is set"
    return None


def build_name() -> str:
    """The extension's module name: source kind, instruction set and torch version."""
    isa = torch.backends.cpu.get_cpu_capability()
    return re.sub(r"\W", "_", f"nnunetv2_mamba_selective_scan_{isa}_torch{torch.__version__}").lower()


def build_directory() -> Path:
    """Where the extension is built and cached: torch's default root, one folder per Python environment (the build
    files name the environment's include paths, so two virtualenvs sharing a folder would rebuild each other's)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    environment = hashlib.sha1(os.path.realpath(sys.prefix).encode()).hexdigest()[:8]
    return Path(root) / f"py{sys.version_info.major}{sys.version_info.minor}_{environment}" / build_name()


@functools.cache
def _build() -> tuple[ModuleType | None, str]:
    try:
        cpp_logger = logging.getLogger("torch.utils.cpp_extension")
        level = cpp_logger.level
        cpp_logger.setLevel(logging.ERROR)  # its import warns that no CUDA runtime is found: irrelevant here
        try:
            from torch.utils.cpp_extension import load
        finally:
            cpp_logger.setLevel(level)

        directory = build_directory()
        directory.mkdir(parents=True, exist_ok=True)
        lock = directory / "lock"
        if lock.exists() and time.time() - lock.stat().st_mtime > _STALE_LOCK_S:
            lock.unlink(missing_ok=True)
        if not any(directory.glob("*.so")):  # a pause of half a minute deserves a line on the console
            print(f"nnunetv2_mamba: compiling the fused CPU selective scan into {directory} (once, about 30 s)",
                  file=sys.stderr, flush=True)
        isa = torch.backends.cpu.get_cpu_capability()
        module = load(name=build_name(), sources=[str(SOURCE)], extra_cflags=[*_CFLAGS, *_ISA_FLAGS.get(isa, [])],
                      extra_ldflags=["-fopenmp"], build_directory=str(directory), verbose=False)
        return module, "ok"
    except Exception as e:  # noqa: BLE001 - no compiler, no OpenMP, a read-only cache: all mean "not available"
        lines = str(e).strip().splitlines()
        reason = f"{type(e).__name__}: {lines[-1] if lines else ''}"
        warnings.warn(f"nnunetv2_mamba: the fused CPU selective scan could not be built ({reason}); using the "
                      f"slower pure-PyTorch scan. Set {CPU_KERNEL_ENV}=0 to skip the attempt.", stacklevel=3)
        return None, reason


def kernel() -> ModuleType | None:
    """The compiled module, or None when disabled or not buildable (the pure-PyTorch scan runs then)."""
    if disabled_reason() is not None:
        return None
    module = _build()[0]
    if module is not None:
        backend.log_once("selective_scan", "fused-cpu", "CPU tensors")
    return module


def status() -> str:
    """Which selective scan CPU tensors get, and why; for ``nnunetv2_mamba doctor``."""
    reason = disabled_reason()
    if reason is None:
        module, reason = _build()
        if module is not None:
            return f"fused C++ kernel ({build_name()})"
    return f"pure-pytorch ({reason})"


def _rows(M: torch.Tensor) -> torch.Tensor:
    """B or C for the kernel: constant as (N, dim), input-dependent as contiguous (batch, groups, L, N)."""
    if M.dim() == 2:
        return M.t().contiguous()
    return (M[:, None] if M.dim() == 3 else M).transpose(-1, -2).contiguous()


def _rows_back(g: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """The kernel's dB / dC rows (per batch, or per task for input-dependent ones) reduced to the shape of ``M``."""
    if M.dim() == 2:
        return g.sum(0).t()
    return g.sum(2).transpose(-1, -2).reshape(M.shape)


def _lanes(x: torch.Tensor) -> torch.Tensor:
    """(batch, dim, L) -> a (batch, L, dim) view with unit channel stride, the kernel's lanes being channels; a copy
    only when the channels are not already adjacent in memory (SS2D's time-major rows are)."""
    x = x.transpose(1, 2)
    return x if x.stride(2) == 1 else x.contiguous()


def _optional(x: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0) if x is None else x.contiguous()


class FusedSelectiveScan(torch.autograd.Function):
    """``y = scan(...) + D u`` and the last state, like :class:`_SelectiveScan`. The forward keeps the state every 64
    steps; the backward recomputes the states chunk by chunk from those inside the kernel."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus):
        u_t, delta_t = _lanes(u), _lanes(delta)
        y, last, starts = kernel().forward(u_t, delta_t, A.t().contiguous(), _rows(B), _rows(C), _optional(D, u),
                                           _optional(delta_bias, u), delta_softplus, any(ctx.needs_input_grad))
        ctx.save_for_backward(u_t, delta_t, A, B, C, D, delta_bias, starts)
        ctx.delta_softplus = delta_softplus
        ctx.mark_non_differentiable(last)
        return y.transpose(1, 2), last

    @staticmethod
    def backward(ctx, grad_y, _grad_last_state):
        u_t, delta_t, A, B, C, D, delta_bias, starts = ctx.saved_tensors
        d_u, d_delta, d_A, d_B, d_C, d_D, d_bias = kernel().backward(
            u_t, delta_t, A.t().contiguous(), _rows(B), _rows(C), _optional(D, u_t), _optional(delta_bias, u_t),
            ctx.delta_softplus, starts, _lanes(grad_y.to(u_t.dtype)))
        return (d_u.transpose(1, 2), d_delta.transpose(1, 2), d_A.sum(0).t(), _rows_back(d_B, B),
                _rows_back(d_C, C), None if D is None else d_D.sum(0), None if delta_bias is None else d_bias.sum(0),
                None)

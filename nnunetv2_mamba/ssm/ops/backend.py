"""Which implementation runs an SSM op: the ``mamba-ssm`` / ``causal-conv1d`` CUDA kernels or our pure-PyTorch path.

The CUDA kernels are used when they import and every tensor is on a CUDA device, unless the environment variable
``NNUNETV2_MAMBA_FORCE_PURE`` is set to a true value. Importing those packages can fail in many ways (missing
extension, CUDA/torch mismatch, CPU-only torch), so any exception means "not available", with the reason kept for
``nnunetv2_mamba doctor``. The active backend is logged once per op.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from typing import Callable

import torch

FORCE_PURE_ENV = "NNUNETV2_MAMBA_FORCE_PURE"

logger = logging.getLogger("nnunetv2_mamba.ssm")

# op name -> (module, attribute) of the CUDA kernel that implements it with identical semantics
KERNELS: dict[str, tuple[str, str]] = {
    "selective_scan": ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
    "ssd": ("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined"),
    "causal_conv1d": ("causal_conv1d", "causal_conv1d_fn"),
}

_logged: set[tuple[str, str]] = set()


def force_pure() -> bool:
    """True when the user asked for the pure-PyTorch path everywhere."""
    return os.environ.get(FORCE_PURE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def _load(op: str) -> tuple[Callable | None, str]:
    module_name, attr = KERNELS[op]
    try:
        return getattr(importlib.import_module(module_name), attr), "ok"
    except Exception as e:  # noqa: BLE001 - a broken CUDA extension raises anything, not only ImportError
        return None, f"{type(e).__name__}: {e}"


def kernel_status(op: str) -> str:
    """'ok' if the CUDA kernel for ``op`` imports, else why not."""
    return _load(op)[1]


def cuda_kernel(op: str, *tensors: torch.Tensor | None) -> Callable | None:
    """The CUDA kernel to use for ``op`` on these tensors, or None for the pure path; logs the choice once."""
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    fn = None
    if on_cuda and not force_pure():
        fn = _load(op)[0]
    if fn is not None:
        log_once(op, "cuda-kernel")
    else:
        log_once(op, "pure-pytorch", _pure_reason(op, on_cuda))
    return fn


def log_once(op: str, name: str, reason: str = "") -> None:
    """Log, once per process, which implementation ``op`` runs."""
    if (op, name) not in _logged:
        _logged.add((op, name))
        logger.info("nnunetv2_mamba: %s uses the %s backend%s", op, name, f" ({reason})" if reason else "")


def _pure_reason(op: str, on_cuda: bool) -> str:
    if not on_cuda:
        return "tensors are not on a CUDA device"
    if force_pure():
        return f"{FORCE_PURE_ENV} is set"
    return f"{KERNELS[op][0]} unavailable: {kernel_status(op)}"


def backend_report() -> dict[str, str]:
    """Per op, the backend CUDA tensors would get; for ``nnunetv2_mamba doctor``."""
    report = {}
    for op in KERNELS:
        if force_pure():
            report[op] = f"pure-pytorch ({FORCE_PURE_ENV} is set)"
        elif _load(op)[0] is not None:
            report[op] = "cuda-kernel for CUDA tensors, pure-pytorch otherwise"
        else:
            report[op] = f"pure-pytorch ({KERNELS[op][0]}: {kernel_status(op)})"
    return report

"""Which implementation runs an SSM op: the ``mamba-ssm`` / ``causal-conv1d`` CUDA kernels or our pure-PyTorch path.

The CUDA kernels are used when they import and every tensor is on a CUDA device, unless the environment variable
``NNUNETV2_MAMBA_FORCE_PURE`` is set to a true value. Importing those packages can fail in many ways (missing
extension, CUDA/torch mismatch, CPU-only torch), so any exception means "not available", with the reason kept for
``nnunetv2_mamba doctor``. The active backend is logged once per op and reason.

Each op is loaded on its own: mamba-ssm built from source after 2.3.2.post1 includes its selective-scan extension
``selective_scan_cuda`` only with ``MAMBA_KEEP_CUDA_BUILD=TRUE``, so an install can lack it while its Triton SSD
kernels work. Mamba1 then runs the pure path (one warning says why) and Mamba2 keeps the SSD kernels, provided the
package's ``__init__`` imports (2.3.2.post1's imports the selective-scan interface, so there neither does). The
extension is imported explicitly, as an install that guards its import would otherwise hand over a
``selective_scan_fn`` that fails when called.
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

# op -> compiled extension its kernel needs besides the module above
EXTENSIONS: dict[str, str] = {"selective_scan": "selective_scan_cuda"}

_logged: set[tuple[str, str, str]] = set()


def force_pure() -> bool:
    """True when the user asked for the pure-PyTorch path everywhere."""
    return os.environ.get(FORCE_PURE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def _load(op: str) -> tuple[Callable | None, str]:
    module_name, attr = KERNELS[op]
    extension = EXTENSIONS.get(op)
    try:
        # the package first: when its __init__ fails, Python keeps the subpackages it had loaded, and a later import
        # of a submodule would skip the __init__, so the outcome would depend on which op was loaded first
        importlib.import_module(module_name.partition(".")[0])
        kernel = getattr(importlib.import_module(module_name), attr)
        if extension is not None:
            importlib.import_module(extension)
        return kernel, "ok"
    except ModuleNotFoundError as e:
        if extension is not None and e.name == extension:
            return None, missing_extension(extension)
        return None, f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - a broken CUDA extension raises anything, not only ImportError
        return None, f"{type(e).__name__}: {e}"


def missing_extension(extension: str) -> str:
    """Why an op whose package is installed without its compiled ``extension`` runs the pure path."""
    return (f"mamba-ssm is installed without its CUDA extension {extension} (builds from its source after "
            f"2.3.2.post1 include it only with MAMBA_KEEP_CUDA_BUILD=TRUE); Mamba1 runs the pure-PyTorch scan, "
            f"Mamba2 still uses mamba-ssm's SSD kernels if they import")


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
        # a package installed without its extension is a surprise worth a warning; one not installed is the default
        partial = on_cuda and not force_pure() and _lacks_extension(op)
        log_once(op, "pure-pytorch", _pure_reason(op, on_cuda), logging.WARNING if partial else logging.INFO)
    return fn


def log_once(op: str, name: str, reason: str = "", level: int = logging.INFO) -> None:
    """Log, once per process and reason, which implementation ``op`` runs."""
    if (op, name, reason) not in _logged:
        _logged.add((op, name, reason))
        logger.log(level, "nnunetv2_mamba: %s uses the %s backend%s", op, name, f" ({reason})" if reason else "")


def _lacks_extension(op: str) -> bool:
    return op in EXTENSIONS and kernel_status(op) == missing_extension(EXTENSIONS[op])


def _pure_reason(op: str, on_cuda: bool) -> str:
    if not on_cuda:
        return "tensors are not on a CUDA device"
    if force_pure():
        return f"{FORCE_PURE_ENV} is set"
    if _lacks_extension(op):
        return kernel_status(op)
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

"""Third-party code we measure and test against, loaded from its published packages (nothing is copied here).

* mambapy (PyPI, ``pip install -e .[bench]``): its parallel scan ``mambapy.pscan.pscan``, as used by its Mamba.
* mamba-ssm: it cannot be installed without CUDA, so its source distribution is downloaded from PyPI once (checked
  against the sha256 PyPI publishes) into ~/.cache/nnunetv2_mamba and its pure-PyTorch parts are used from there:
  ``ssd_minimal_discrete`` (the SSD listing of the Mamba2 paper) for the benchmark, and its ``Mamba``/``Mamba2``
  modules with their reference ops for the weight-compatibility tests (``import_mamba_ssm``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
import tarfile
import types
import urllib.request
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

MAMBA_SSM_SDIST = "mamba_ssm-2.3.2.post1.tar.gz"
CACHE = Path.home() / ".cache" / "nnunetv2_mamba"


def mambapy_selective_scan() -> Callable:
    """mambapy's selective scan (its ``Mamba.selective_scan``: exp(delta A), delta B x, pscan, C readout)."""
    from mambapy.pscan import pscan

    def scan(u, delta, A, B, C):
        # u, delta (b, d, L); B, C (b, N, L) -> mambapy's (b, L, d, N) layout
        u, delta, B, C = u.transpose(1, 2), delta.transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)
        delta_A = torch.exp(delta.unsqueeze(-1) * A)
        bx = delta.unsqueeze(-1) * B.unsqueeze(2) * u.unsqueeze(-1)
        hs = pscan(delta_A, bx)
        return (hs @ C.unsqueeze(-1)).squeeze(3).transpose(1, 2)

    return scan


def mamba_ssm_source() -> Path:
    """The folder holding mamba-ssm's ``mamba_ssm`` package source, downloaded and unpacked once."""
    unpacked = CACHE / MAMBA_SSM_SDIST.removesuffix(".tar.gz")
    if (unpacked / "mamba_ssm").is_dir():
        return unpacked
    request = urllib.request.Request("https://pypi.org/simple/mamba-ssm/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    index = json.load(urllib.request.urlopen(request, timeout=60))
    entry = next(f for f in index["files"] if f["filename"] == MAMBA_SSM_SDIST)
    data = urllib.request.urlopen(entry["url"], timeout=120).read()
    if hashlib.sha256(data).hexdigest() != entry["hashes"]["sha256"]:
        raise RuntimeError(f"{MAMBA_SSM_SDIST}: sha256 differs from PyPI's index; not using it")
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / MAMBA_SSM_SDIST
    archive.write_bytes(data)
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE, filter="data")
    return unpacked


def import_mamba_ssm(module: str) -> types.ModuleType:
    """Import a module of mamba-ssm's source on a machine without its CUDA extension: the package ``__init__``
    (which imports everything, CUDA included) is skipped and the compiled ``selective_scan_cuda`` is stubbed, so only
    the pure-PyTorch and Triton-definition code runs."""
    if "mamba_ssm" not in sys.modules:
        package = types.ModuleType("mamba_ssm")
        package.__path__ = [str(mamba_ssm_source() / "mamba_ssm")]
        sys.modules["mamba_ssm"] = package
        sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    return importlib.import_module(module)


def ssd_minimal_discrete() -> Callable:
    """mamba-ssm's ``ssd_minimal_discrete(X, A, B, C, block_len)``, executed from its published source."""
    path = mamba_ssm_source() / "mamba_ssm" / "modules" / "ssd_minimal.py"
    # the file's only CUDA dependency is an import used by its self-test
    source = path.read_text().replace("from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined", "")
    module = types.ModuleType("ssd_minimal")
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module.ssd_minimal_discrete


def ssd_via_minimal(minimal: Callable, block_len: int = 64) -> Callable:
    """Our ``ssd`` signature (dt before softplus, dt_bias, D) on top of ``ssd_minimal_discrete``."""

    def run(x, dt, A, B, C, D, dt_bias):
        dt = F.softplus(dt + dt_bias)
        y, _ = minimal(x * dt[..., None], A * dt, B, C, block_len)
        return y + x * D[:, None]

    return run

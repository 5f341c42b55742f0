"""Choosing the selective-scan implementation in tests."""

from __future__ import annotations

import os

import pytest

# CI sets this so that a fused CPU scan that fails to build is a failure, not a skip.
REQUIRE_CPU_KERNEL_ENV = "NNUNETV2_MAMBA_REQUIRE_CPU_KERNEL"


def use_scan(impl: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Select the pure-PyTorch selective scan ("pytorch") or the fused C++ CPU kernel ("fused"; skipped with the reason
    where it cannot be built, e.g. no C++ compiler, unless REQUIRE_CPU_KERNEL_ENV is set)."""
    from nnunetv2_mamba.ssm.ops import selective_scan_cpu

    monkeypatch.delenv(selective_scan_cpu.CPU_KERNEL_ENV, raising=False)
    if impl == "pytorch":
        monkeypatch.setenv(selective_scan_cpu.CPU_KERNEL_ENV, "0")
    elif selective_scan_cpu.kernel() is None:
        message = f"fused CPU selective scan unavailable: {selective_scan_cpu.status()}"
        if os.environ.get(REQUIRE_CPU_KERNEL_ENV):
            pytest.fail(message)
        pytest.skip(message)
    return impl

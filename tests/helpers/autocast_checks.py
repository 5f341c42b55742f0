"""Test helpers for mixed precision: what an op returns under autocast, and a module's bf16 output against fp32."""

from __future__ import annotations

import pytest
import torch


def record_output_dtypes(monkeypatch: pytest.MonkeyPatch, module, name: str) -> list[torch.dtype]:
    """Wrap ``module.name`` (for the test's duration) so that each call appends its output's dtype to the list
    returned; e.g. to check that an SSM op computes in float32 under autocast."""
    seen: list[torch.dtype] = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(module, name, spy)
    return seen


def check_bf16_autocast(module: torch.nn.Module, x: torch.Tensor, tolerance: float) -> None:
    """``module(x)`` under CPU bf16 autocast is finite and within ``tolerance`` of the float32 result."""
    expected = module(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected, rtol=tolerance, atol=tolerance)

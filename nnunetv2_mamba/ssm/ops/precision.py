"""Precision policy shared by the SSM ops: the recurrence always runs in float32 (float64 if given float64).

Users of U-Mamba and its successors report NaN when the scan runs in float16 under AMP, so under autocast our ops
cast their inputs to float32 and run with autocast disabled; the surrounding projections keep autocast's speed.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (tests, gradcheck); everything else is computed in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def float32_scan(device_type: str) -> Iterator[bool]:
    """Disable autocast around a scan; yields whether autocast was on (then inputs must be cast to float32)."""
    was_enabled = torch.is_autocast_enabled(device_type)
    if not was_enabled:
        yield False
        return
    with torch.autocast(device_type=device_type, enabled=False):
        yield True


def to_float32(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Cast floating tensors below float32 to float32; leaves None, float32 and float64 alone."""
    return [t.float() if t is not None and t.is_floating_point() and t.element_size() < 4 else t for t in tensors]

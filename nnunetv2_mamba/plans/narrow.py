"""Narrower networks on the same plans: what makes a CPU run of the demo, the tests and the CPU benchmarks affordable
without changing the topology or the preprocessed data."""

from __future__ import annotations

from typing import Any


def narrow_plans(plans: dict[str, Any], divisor: int) -> dict[str, Any]:
    """``plans`` with every configuration's widths (``features_per_stage``, ``embed_dim``) divided by ``divisor``;
    strides, kernels, patch and batch sizes, and hence the preprocessed data, are unchanged."""
    for configuration in plans["configurations"].values():
        kwargs = configuration.get("architecture", {}).get("arch_kwargs", {})
        if "features_per_stage" in kwargs:
            kwargs["features_per_stage"] = [max(1, f // divisor) for f in kwargs["features_per_stage"]]
        if "embed_dim" in kwargs:
            kwargs["embed_dim"] = max(1, kwargs["embed_dim"] // divisor)
    return plans

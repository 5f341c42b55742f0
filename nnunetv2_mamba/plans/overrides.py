"""``plans_overrides/<Arch>.json``: what each architecture adds to nnU-Net plans, shipped inside the package as
``nnunetv2_mamba.plans_overrides`` (setup.py maps that package onto the repository's ``plans_overrides/`` folder).

An override file holds

- ``description``: one line for people;
- ``architecture``: ``network_class_name`` and the ``arch_kwargs`` that are the network's own options (SSM sizes,
  depths), which :mod:`nnunetv2_mamba.plans.translate` adds to the topology from the base plans;
- ``configuration_changes``: one entry per dimensionality the network supports (``"2d"``, ``"3d"``), each a dict of
  configuration keys to set (e.g. ``"batch_size"``), usually empty.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from nnunetv2_mamba.plans.errors import PlansError

PACKAGE = "nnunetv2_mamba.plans_overrides"


def architectures() -> list[str]:
    """Names of the architectures that have an override file, sorted."""
    return sorted(entry.name[:-len(".json")] for entry in resources.files(PACKAGE).iterdir()
                  if entry.name.endswith(".json"))


def load_override(architecture: str) -> dict[str, Any]:
    """The override of ``architecture`` (exact name of its file, e.g. ``UMambaBot2``); a clear error otherwise."""
    entry = resources.files(PACKAGE) / f"{architecture}.json"
    if not entry.is_file():
        raise PlansError(f"unknown architecture {architecture!r}: there is no plans override "
                       f"'{architecture}.json' in {PACKAGE}; known architectures: {', '.join(architectures())}")
    return json.loads(entry.read_text(encoding="utf-8"))

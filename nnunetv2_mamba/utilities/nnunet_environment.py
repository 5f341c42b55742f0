"""nnU-Net's folders and our trainers for an in-process run of nnU-Net (the demo, the benchmarks, the tests)."""

from __future__ import annotations

import os
from pathlib import Path


def set_environment(folder: Path) -> None:
    """nnU-Net's folders inside ``folder`` and our trainers on nnU-Net's search path."""
    from nnunetv2_mamba.ext_trainers import add_to_environment

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(folder / name)
    add_to_environment()

"""What our trainers add to nnU-Net's for a user's first hour: training on a machine without a GPU needs no flag, and a
resumed training says where it resumed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch


def available_device(device: torch.device) -> torch.device:
    """``device``, or the CPU (with one line on stderr) where CUDA was asked for, as ``nnUNetv2_train`` and
    ``nnUNetv2_predict`` do by default, and no GPU is there: nnU-Net would fail with "Found no NVIDIA driver"."""
    if device.type != "cuda" or torch.cuda.is_available():
        return device
    print("nnunetv2_mamba: no CUDA GPU found, so this runs on the CPU (say -device cpu to silence this; a GPU is "
          "10-100x faster for real data)", file=sys.stderr, flush=True)
    torch.set_num_threads(os.cpu_count() or 1)  # nnUNetv2_train set one thread for the GPU it expected
    return torch.device("cpu")


class UsabilityMixin:
    """Mixin for nnU-Net trainers (list it before the trainer class), see the module docstring."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, available_device(device))

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        if isinstance(filename_or_checkpoint, str):
            self.print_to_log_file(f"Resuming from {Path(filename_or_checkpoint).name} at epoch "
                                   f"{self.current_epoch} of {self.num_epochs}")

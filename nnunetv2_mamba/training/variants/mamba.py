"""Short schedules of :class:`nnUNetTrainerMamba` and :class:`nnUNetTrainerClicks`: ``_smoke`` for end-to-end tests
in seconds, ``_demo`` for the demo's synthetic shapes."""

from __future__ import annotations

import torch

from nnunetv2_mamba.training.nnUNetTrainerClicks import nnUNetTrainerClicks
from nnunetv2_mamba.training.nnUNetTrainerMamba import nnUNetTrainerMamba
from nnunetv2_mamba.training.variants.schedule import Schedule, ShortSchedule


class nnUNetTrainerMamba_smoke(ShortSchedule, nnUNetTrainerMamba):
    """2 epochs of 2 iterations, 1 validation iteration, a checkpoint after every epoch: end-to-end tests of the whole
    training pipeline (resuming with ``--c`` included) in seconds."""

    schedule = Schedule(2, 2, 1, save_every=1)


class nnUNetTrainerMamba_demo(nnUNetTrainerMamba):
    """5 epochs of 20 iterations in 2D or 16 in 3D (where a CPU iteration costs more), 1 validation iteration each:
    enough for the demo's synthetic structures to be found (at 8 in 3D nnU-Net's small U-Net was still predicting
    background only), in about a minute per network on a CPU."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5
        self.num_iterations_per_epoch = 20 if len(self.configuration_manager.patch_size) == 2 else 16
        self.num_val_iterations_per_epoch = 1


class nnUNetTrainerClicks_smoke(nnUNetTrainerClicks, nnUNetTrainerMamba_smoke):
    """:class:`nnUNetTrainerClicks` on the smoke-test schedule of :class:`nnUNetTrainerMamba_smoke`."""


class nnUNetTrainerClicks_demo(nnUNetTrainerClicks, nnUNetTrainerMamba_demo):
    """:class:`nnUNetTrainerClicks` on the demo schedule of :class:`nnUNetTrainerMamba_demo`."""

"""Short training schedules: nnU-Net's shortest stock trainer (``nnUNetTrainer_1epoch``) still runs 250 iterations
plus 50 validation iterations, far too long for CPU smoke tests and the demo."""

from __future__ import annotations

from typing import NamedTuple

import torch



class Schedule(NamedTuple):
    """A short training run in nnU-Net's terms (its epochs are iterations_per_epoch steps each)."""

    epochs: int
    iterations_per_epoch: int
    val_iterations_per_epoch: int
    save_every: int = 50  # nnU-Net's
    mirroring: bool = True  # as augmentation and at inference (nnU-Net's default)


def segmentation_total(*stages: Schedule) -> Schedule:
    """One schedule with the epochs of ``stages`` together (their iterations per epoch are equal)."""
    return stages[0]._replace(epochs=sum(stage.epochs for stage in stages))


class ShortSchedule:
    """Mixin (list it first) setting the trainer's epochs, iterations, checkpoint interval and mirroring from
    ``schedule``."""

    schedule: Schedule

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch, self.save_every, _ = \
            self.schedule

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not self.schedule.mirroring:
            mirror_axes = self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, mirror_axes

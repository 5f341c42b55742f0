"""U-Mamba2-SSL's third stage (Tan et al. 2025): consistency training continued with confident pseudo labels; see
:mod:`nnunetv2_mamba.training.nnUNetTrainerConsistency` for the second stage it continues."""

from __future__ import annotations

from pathlib import Path

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from nnunetv2_mamba.training.nnUNetTrainerConsistency import nnUNetTrainerConsistency
from nnunetv2_mamba.training.nnUNetTrainerMamba import unwrap


class nnUNetTrainerPseudoLabel(nnUNetTrainerConsistency):
    """Stage 3 of U-Mamba2-SSL: 500 epochs at an initial learning rate of 1e-3 decaying linearly, unlabeled share
    from 30%, a short consistency ramp-up (5%) and pseudo labels (threshold 0.75, weight 0.1).

    It starts from the final checkpoint of the ``continue_from`` trainer (stage 2) of the same dataset, plans,
    configuration and fold, all weights included: nnU-Net's ``-pretrained_weights`` would leave the segmentation
    heads at random (U-Mamba2 patched nnU-Net's loader for this stage instead)."""

    continue_from = "nnUNetTrainerConsistency"
    consistency_rampup = 0.05
    unlabeled_share = (0.3, 0.5)
    pseudo_label_weight = 0.1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 500
        self.initial_lr = 1e-3

    def continued_checkpoint(self) -> Path:
        """``continue_from``'s final checkpoint for this trainer's dataset, plans, configuration and fold."""
        name = f"{self.continue_from}__{self.plans_manager.plans_name}__{self.configuration_name}"
        return Path(self.output_folder_base).parent / name / f"fold_{self.fold}" / "checkpoint_final.pth"

    def initialize(self) -> None:
        super().initialize()
        path = self.continued_checkpoint()
        if not path.is_file():
            raise FileNotFoundError(
                f"{type(self).__name__} continues from {path}, which does not exist: train stage 2 first "
                f"(nnUNetv2_train {self.plans_manager.dataset_name} {self.configuration_name} {self.fold} "
                f"-p {self.plans_manager.plans_name} -tr {self.continue_from})")
        weights = torch.load(path, map_location=self.device, weights_only=False)["network_weights"]
        unwrap(self.network).load_state_dict(weights)
        self.print_to_log_file(f"Continuing from {path} (all weights, segmentation heads included)")

    def configure_optimizers(self):
        optimizer, _ = super().configure_optimizers()
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, exponent=1.0)

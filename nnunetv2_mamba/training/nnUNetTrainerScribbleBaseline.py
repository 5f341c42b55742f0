"""The baseline of scribble supervision: stock nnU-Net on the scribbles, judged by the same yardstick as our methods.

nnU-Net learns from scribbles through its ignore label (Dice + CE on the scribbled pixels only); Gotkowski et al.
(2024, "Embarrassingly simple scribble supervision for 3D medical segmentation") found this stronger than most
specialised scribble methods. :class:`nnUNetTrainerScribbleBaseline` is exactly ``nnUNetTrainer`` (network, loss,
schedule, torch.compile as nnU-Net decides) with validation against dense labels
(:class:`~nnunetv2_mamba.training.dense_validation.DenseValidationMixin`).
"""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_mamba.data.scribble_dataset import ignore_label_of
from nnunetv2_mamba.training.dense_validation import DenseValidationMixin


class nnUNetTrainerScribbleBaseline(DenseValidationMixin, nnUNetTrainer):
    """``nnUNetTrainer`` on a scribble dataset, validated against its dense labels."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        ignore_label_of(dataset_json["labels"], "dataset.json")  # a dense dataset fails here, not mid-training
        super().__init__(plans, configuration, fold, dataset_json, device)

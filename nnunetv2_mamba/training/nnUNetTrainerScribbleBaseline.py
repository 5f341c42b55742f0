"""The baseline of scribble supervision: stock nnU-Net on the scribbles, judged by the same yardstick as our methods.

nnU-Net learns from scribbles through its ignore label (Dice + CE on the scribbled pixels only); Gotkowski et al.
(2024, "Embarrassingly simple scribble supervision for 3D medical segmentation") found this stronger than most
specialised scribble methods. :class:`nnUNetTrainerScribbleBaseline` is exactly ``nnUNetTrainer`` (network, loss,
schedule, torch.compile as nnU-Net decides) with the scribble trainers' input checks and validation against dense
labels (:class:`~nnunetv2_mamba.training.scribble_trainer.ScribbleTrainerMixin`).
"""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_mamba.training.scribble_trainer import ScribbleTrainerMixin


class nnUNetTrainerScribbleBaseline(ScribbleTrainerMixin, nnUNetTrainer):
    """``nnUNetTrainer`` on a scribble dataset, validated against its dense labels."""

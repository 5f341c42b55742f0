"""Weak-Mamba-UNet exactly as the paper and its code train it, for reproducing the paper's numbers."""

from __future__ import annotations

from nnunetv2_mamba.training.nnUNetTrainerWeakMamba import nnUNetTrainerWeakMamba


class nnUNetTrainerWeakMambaPaper(nnUNetTrainerWeakMamba):
    """One SGD for the three networks, Dice against the whole mixed pseudo label from the first step on, every pixel
    supervised (see :class:`nnUNetTrainerWeakMamba` for what our default changes and why)."""

    pseudo_label_rampup = 0.0
    pseudo_label_components = None
    pseudo_label_loss = "dice"
    pseudo_label_margin = 0
    pseudo_label_keeps_scribbles = False
    member_optimizers: dict[str, tuple[str, float]] = {}

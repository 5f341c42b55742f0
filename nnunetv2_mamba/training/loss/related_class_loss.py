"""Cross-entropy with per-class weights and label smoothing toward related classes (U-Mamba2, ToothFairy3).

The soft target of a voxel of class ``y`` is row ``y`` of a row-stochastic matrix ``T``: ``1 - amount`` on ``y``
and ``amount`` shared equally by the classes related to ``y`` (classes without relations keep a one-hot row). With
weights ``w`` the loss is

    sum_i sum_c w_c T[y_i, c] (-log p_ic)  /  sum_i sum_c w_c T[y_i, c]

over the voxels ``i`` that are not ignored. With ``T = I`` this is nnU-Net's weighted cross-entropy (PyTorch's
weighted mean), with ``w = 1`` PyTorch's cross-entropy with probability targets. Only each row's non-zero entries
are gathered, so memory grows with the largest number of related classes, not with the number of classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


def related_class_targets(num_classes: int, related: Mapping[int, Sequence[int]], amount: float) -> torch.Tensor:
    """The (classes, classes) soft-target matrix ``T`` described above."""
    targets = torch.eye(num_classes, dtype=torch.float64)
    for label, others in related.items():
        targets[label, label] = 1 - amount
        targets[label, list(others)] = amount / len(others)
    return targets


class RelatedClassCrossEntropy(nn.Module):
    """Drop-in for the ``ce`` of nnU-Net's ``DC_and_CE_loss``: called with logits (b, c, ...) and integer targets
    (b, ...) or (b, 1, ...) that may hold ``ignore_label``."""

    def __init__(self, soft_targets: torch.Tensor, class_weights: torch.Tensor | None = None,
                 ignore_label: int | None = None):
        super().__init__()
        num_classes = soft_targets.shape[0]
        weights = torch.ones(num_classes, dtype=torch.float64) if class_weights is None else class_weights.double()
        width = int((soft_targets != 0).sum(1).max())
        # per class: the columns of its non-zero soft targets (padded with its own, at weight 0) and w_c * T[y, c]
        columns = torch.arange(num_classes).unsqueeze(1).repeat(1, width)
        weighted = torch.zeros(num_classes, width, dtype=torch.float64)
        for label in range(num_classes):
            nonzero = soft_targets[label].nonzero()[:, 0]
            columns[label, :len(nonzero)] = nonzero
            weighted[label, :len(nonzero)] = weights[nonzero] * soft_targets[label, nonzero]
        self.register_buffer("columns", columns)
        self.register_buffer("weighted", weighted.float())
        self.register_buffer("normaliser", weighted.sum(1).float())
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == logits.ndim:
            target = target[:, 0]
        target = target.long()
        valid = target != self.ignore_label if self.ignore_label is not None else None
        if valid is not None:
            target = torch.where(valid, target, 0)
        log_p = logits.float().log_softmax(1)
        picked = log_p.gather(1, self.columns[target].movedim(-1, 1))
        losses = -(self.weighted[target].movedim(-1, 1) * picked).sum(1)
        normaliser = self.normaliser[target]
        if valid is not None:
            losses, normaliser = losses[valid], normaliser[valid]
        return losses.sum() / normaliser.sum().clamp_min(torch.finfo(torch.float32).tiny)

"""The consistency loss of mean-teacher style training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SoftmaxMSE(nn.Module):
    """Mean squared difference between the softmax of the student's logits and the teacher's probabilities."""

    def forward(self, student_logits: torch.Tensor, teacher_probabilities: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(student_logits.float().softmax(1), teacher_probabilities.float())

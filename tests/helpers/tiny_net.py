"""A two-output network with deep supervision, standing in for a member network where only the plumbing is tested."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.deep_supervision = True

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        y = self.conv(x)
        return [y, y[..., ::2, ::2]] if self.deep_supervision else y

"""The sigmoid-shaped ramp-up with which semi- and weakly-supervised trainers fade in their unsupervised terms."""

from __future__ import annotations

import numpy as np


def sigmoid_rampup(step: float, length: float) -> float:
    """exp(-5 (1 - t)^2) for t = step / length clipped to [0, 1] (Laine & Aila 2017); 1 if ``length`` is 0."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(step / length, 0.0), 1.0)
    return float(np.exp(-5.0 * phase * phase))

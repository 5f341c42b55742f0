"""OpenMP's wait policy on a CPU that other jobs share.

PyTorch's OpenMP threads busy-wait between parallel regions by default; where another job keeps the cores busy they
spin against it and small ops become 10-100x slower (an nnU-Net epoch on 2 cores: 21 s alone, 127 s beside another
job). ``OMP_WAIT_POLICY=PASSIVE`` lets them sleep instead, at a cost on an idle machine (WeakMamba epochs 35 s -> 63 s
on 2 idle cores), so it is chosen only where the machine is busy. OpenMP reads the variable when torch is imported:
set it before.
"""

from __future__ import annotations

import os

VARIABLE = "OMP_WAIT_POLICY"
BUSY = 1.0  # 1-minute load average (runnable processes) at which another job is taken to share the cores


def choose_wait_policy() -> str | None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when the user has not chosen a policy and the machine is busy; returns the
    line that says so, or None where nothing was changed."""
    if VARIABLE in os.environ:
        return None
    load = os.getloadavg()[0]
    if load < BUSY:
        return None
    os.environ[VARIABLE] = "PASSIVE"
    return (f"another job shares the CPU (load average {load:.1f}): {VARIABLE}=PASSIVE for this run, as PyTorch's "
            f"busy-waiting threads would slow it several-fold (export {VARIABLE}=ACTIVE or PASSIVE to choose)")

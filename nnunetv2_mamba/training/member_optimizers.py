"""One optimizer per network of an ensemble, stepped as one by nnU-Net's trainer.

Networks of different kinds train best with different optimizers: nnU-Net's CNN with its SGD (momentum 0.99,
Nesterov), transformer and visual-Mamba U-Nets trained from scratch with AdamW, as Swin and VMamba are trained (the
measured effect on WeakMamba is in documentation/scribble_supervision.md).

nnU-Net's trainer uses its ``optimizer`` through ``zero_grad``, ``step``, ``param_groups`` (the logged learning rate),
``state_dict`` and ``load_state_dict`` (checkpoints, ``--c``), and its ``lr_scheduler`` through ``step(epoch)``;
:class:`OptimizerGroup` and :class:`SchedulerGroup` provide exactly these over one optimizer and one poly schedule per
network.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

OPTIMIZERS = ("sgd", "adamw")


def nnunet_optimizer(kind: str, parameters: Iterable[torch.nn.Parameter], lr: float,
                     weight_decay: float) -> torch.optim.Optimizer:
    """nnU-Net's optimizers: ``"sgd"`` as ``nnUNetTrainer`` configures it, ``"adamw"`` as ``nnUNetTrainerAdam``."""
    if kind == "sgd":
        return torch.optim.SGD(parameters, lr, weight_decay=weight_decay, momentum=0.99, nesterov=True)
    if kind == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, amsgrad=True)
    raise ValueError(f"optimizer {kind!r}: expected one of {OPTIMIZERS}")


class OptimizerGroup:
    """Named optimizers used as one (module docstring); ``param_groups`` lists theirs in order, so the learning rate
    nnU-Net logs (``param_groups[0]``) is the first optimizer's. AMP's ``GradScaler`` also takes the group as one
    optimizer (it unscales through ``param_groups`` and calls ``step``): a non-finite gradient in any network skips
    the step of all, as with one optimizer."""

    def __init__(self, optimizers: Mapping[str, torch.optim.Optimizer]):
        self.optimizers = dict(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.step()

    def state_dict(self) -> dict:
        return {"optimizers": {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("optimizers")
        if not isinstance(saved, dict) or set(saved) != set(self.optimizers):
            found = sorted(saved) if isinstance(saved, dict) else "one optimizer for all networks"
            raise ValueError(f"the checkpoint's optimizer state holds {found}, this trainer has one optimizer per "
                             f"network {sorted(self.optimizers)}: it was written by another optimizer setup and "
                             f"cannot resume this training")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(saved[name])


class SchedulerGroup:
    """nnU-Net's poly schedule for every optimizer of an :class:`OptimizerGroup`, each from its own initial rate."""

    def __init__(self, optimizers: OptimizerGroup, initial_lrs: Mapping[str, float], max_steps: int):
        self.schedulers = {name: PolyLRScheduler(optimizer, initial_lrs[name], max_steps)
                           for name, optimizer in optimizers.optimizers.items()}

    def step(self, current_step: int | None = None) -> None:
        for scheduler in self.schedulers.values():
            scheduler.step(current_step)

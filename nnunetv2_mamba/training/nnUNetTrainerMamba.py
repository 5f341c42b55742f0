"""The base nnU-Net trainer for our networks: stock ``nnUNetTrainer`` with what non-``UNetDecoder`` networks need."""

from __future__ import annotations

import os

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel


def unwrap(network: nn.Module) -> nn.Module:
    """The user's module inside DDP and ``torch.compile`` wrappers (in either nesting order)."""
    while isinstance(network, (DistributedDataParallel, OptimizedModule)):
        network = network.module if isinstance(network, DistributedDataParallel) else network._orig_mod
    return network


class nnUNetTrainerMamba(nnUNetTrainer):
    """Stock nnU-Net training (SGD, poly LR, Dice+CE with deep supervision, gradient clipping at norm 12 as U-Mamba2
    trains) for any network in the plans; it differs from ``nnUNetTrainer`` only where that assumes nnU-Net's UNet:

    - ``torch.compile`` is off unless ``nnUNet_compile`` is set to true explicitly: the pure-PyTorch selective scan is
      a Python loop over time steps that compiles slowly into a huge graph, and the CUDA kernels are graph breaks.
    - deep supervision is switched on whichever module holds the ``deep_supervision`` flag (``decoder`` for nnU-Net's
      UNets and ours, or the network itself), with a clear error for networks that have none.
    """

    def _do_i_compile(self) -> bool:
        explicitly_on = os.environ.get("nnUNet_compile", "").lower() in ("true", "1", "t")
        return explicitly_on and super()._do_i_compile()

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        network = unwrap(self.network)
        holder = getattr(network, "decoder", network)
        if not hasattr(holder, "deep_supervision"):
            holder = network
        if not hasattr(holder, "deep_supervision"):
            raise TypeError(f"{type(network).__name__} has no `deep_supervision` attribute (on itself or on its "
                            f"`decoder`), so {type(self).__name__} cannot switch deep supervision "
                            f"{'on' if enabled else 'off'}; add the flag to the network or override "
                            f"set_deep_supervision_enabled in a trainer subclass.")
        holder.deep_supervision = enabled

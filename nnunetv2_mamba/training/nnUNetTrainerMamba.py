"""The base nnU-Net trainer for our networks: stock ``nnUNetTrainer`` with what non-``UNetDecoder`` networks need."""

from __future__ import annotations

import difflib
import os
import pydoc

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunetv2_mamba.plans.overrides import architectures, load_override
from nnunetv2_mamba.training.usability import UsabilityMixin


def unwrap(network: nn.Module) -> nn.Module:
    """The user's module inside DDP and ``torch.compile`` wrappers (in either nesting order)."""
    while isinstance(network, (DistributedDataParallel, OptimizedModule)):
        network = network.module if isinstance(network, DistributedDataParallel) else network._orig_mod
    return network


def unknown_network_class(class_name: str, plans_name: str) -> str:
    """Why ``class_name`` cannot be built, with the closest of our architectures and the list of them."""
    ours = {name: load_override(name)["architecture"]["network_class_name"] for name in architectures()}
    close = difflib.get_close_matches(class_name.rpartition(".")[2], list(ours), n=1)
    hint = f" Did you mean {ours[close[0]]!r}?" if close else ""
    listed = ", ".join(f"{name} ({path})" for name, path in ours.items())
    return (f"network_class_name {class_name!r} in plans {plans_name!r} is not a class that can be imported.{hint} "
            f"Our architectures: {listed}; nnU-Net's own are in dynamic_network_architectures.architectures (e.g. "
            f"dynamic_network_architectures.architectures.unet.PlainConvUNet).")


class nnUNetTrainerMamba(UsabilityMixin, nnUNetTrainer):
    """Stock nnU-Net training (SGD, poly LR, Dice+CE with deep supervision, gradient clipping at norm 12 as U-Mamba2
    trains) for any network in the plans; it differs from ``nnUNetTrainer`` only where that assumes nnU-Net's UNet:

    - ``torch.compile`` is off unless ``nnUNet_compile`` is set to true explicitly: the pure-PyTorch selective scan is
      a Python loop over time steps that compiles slowly into a huge graph, and the CUDA kernels are graph breaks.
    - deep supervision is switched on whichever module holds the ``deep_supervision`` flag (``decoder`` for nnU-Net's
      UNets and ours, or the network itself), with a clear error for networks that have none.
    - a ``network_class_name`` that does not import is reported by name, with our architectures.
    - without a GPU it runs on the CPU and a resumed training says where it resumed (:class:`UsabilityMixin`).
    """

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """nnU-Net's; where it cannot find the class (its ImportError does not name it), our message instead."""
        try:
            return super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                      num_output_channels, enable_deep_supervision)
        except ImportError:
            class_name = configuration_manager.network_arch_class_name
            if pydoc.locate(class_name) is not None:  # the class exists: the ImportError is about something else
                raise
            raise ImportError(unknown_network_class(class_name, plans_manager.plans_name)) from None

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

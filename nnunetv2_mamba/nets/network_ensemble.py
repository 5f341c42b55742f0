"""Several segmentation networks on the same input, held as one ``nn.Module`` so that nnU-Net's machinery (one
optimizer, checkpoints, ``--c``, DDP wrapping, ``nnUNetv2_predict``) handles them as a single network.

While training, the module returns every member's output (``{name: logits or deep-supervision list}``); the trainer
computes the loss per member. In eval mode it returns one tensor: the ensemble (the log of the members' mean softmax,
so nnU-Net's softmax / argmax of it give the mean-probability ensemble) or one member's own logits, as
``inference_output`` says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

ENSEMBLE = "ensemble"


def full_resolution(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The highest-resolution logits of a network's output (the first deep-supervision output, if it is a list)."""
    return output[0] if isinstance(output, (list, tuple)) else output


def ensemble_log_probabilities(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """log(mean_i softmax(logits_i)) over the channel axis, in float32; computed as logsumexp of log-softmaxes,
    which stays finite where a probability underflows."""
    log_probabilities = torch.stack([F.log_softmax(x.float(), dim=1) for x in logits])
    return torch.logsumexp(log_probabilities, dim=0) - math.log(len(logits))


def _deep_supervision_holder(member: nn.Module) -> nn.Module:
    """The module carrying a member's ``deep_supervision`` flag: its ``decoder`` (nnU-Net's UNets and ours) or
    itself."""
    holder = getattr(member, "decoder", member)
    if hasattr(holder, "deep_supervision"):
        return holder
    if hasattr(member, "deep_supervision"):
        return member
    raise TypeError(f"{type(member).__name__} has no `deep_supervision` attribute (on itself or on its `decoder`); "
                    f"an ensemble member must be able to switch deep supervision on and off.")


class NetworkEnsemble(nn.Module):
    """Named member networks (``members[name]``) with one input and label space; see the module docstring.

    ``deep_supervision`` reads and switches the flag of every member at once (nnU-Net's trainer toggles it for the
    final validation). ``inference_output`` is ``"ensemble"`` or a member name; it is not part of the state dict, so
    one checkpoint serves every choice.
    """

    def __init__(self, members: Mapping[str, nn.Module], inference_output: str = ENSEMBLE):
        super().__init__()
        if not members:
            raise ValueError("NetworkEnsemble needs at least one member")
        if ENSEMBLE in members:
            raise ValueError(f"{ENSEMBLE!r} is reserved for the ensemble output; rename that member")
        self.members = nn.ModuleDict(members)
        self._holders = [_deep_supervision_holder(m) for m in self.members.values()]
        self.inference_output = inference_output

    @property
    def inference_output(self) -> str:
        return self._inference_output

    @inference_output.setter
    def inference_output(self, output: str) -> None:
        choices = [ENSEMBLE, *self.members]
        if output not in choices:
            raise ValueError(f"inference output {output!r} is not one of {choices}")
        self._inference_output = output

    @property
    def deep_supervision(self) -> bool:
        return all(holder.deep_supervision for holder in self._holders)

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        for holder in self._holders:
            holder.deep_supervision = enabled

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]] | torch.Tensor:
        if self.training:
            return {name: member(x) for name, member in self.members.items()}
        if self.inference_output != ENSEMBLE:
            return full_resolution(self.members[self.inference_output](x))
        return ensemble_log_probabilities([full_resolution(member(x)) for member in self.members.values()])

"""Our nnU-Net trainer classes as attributes of this module, which nnU-Net imports as the top-level module
``nnunetv2_mamba_trainers`` when it searches nnUNet_extTrainer (see :mod:`nnunetv2_mamba.ext_trainers`)."""

from __future__ import annotations

from nnunetv2_mamba.ext_trainers import trainer_classes


def __getattr__(name: str) -> type:
    try:
        return trainer_classes()[name]
    except KeyError:
        raise AttributeError(f"no nnU-Net trainer named {name!r} in nnunetv2_mamba.training") from None

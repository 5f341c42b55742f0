"""The folder ``nnUNet_extTrainer`` points to (``export nnUNet_extTrainer=$(nnunetv2_mamba ext-trainer-path)``).

nnU-Net 2.8 resolves ``nnUNetv2_train -tr NAME`` and the trainer recorded in a checkpoint by importing every module
of that folder as a top-level module and looking for the attribute ``NAME``. The one module here,
``nnunetv2_mamba_trainers``, answers with our trainer classes, which stay defined (and picklable) in
:mod:`nnunetv2_mamba.training`.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path

EXT_TRAINER_DIR = Path(__file__).resolve().parent


def trainer_classes() -> dict[str, type]:
    """Every nnU-Net trainer class defined in a module of :mod:`nnunetv2_mamba.training`, by name; a new trainer
    module needs no registration."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunetv2_mamba.training as training

    found = {}
    for info in pkgutil.walk_packages(training.__path__, training.__name__ + "."):
        for name, value in vars(importlib.import_module(info.name)).items():
            if isinstance(value, type) and issubclass(value, nnUNetTrainer) and value.__module__ == info.name:
                found[name] = value
    return found


def add_to_environment() -> None:
    """Append our folder to ``nnUNet_extTrainer`` in this process (for in-process prediction and training, where
    the user need not have exported it); a no-op when it is already there."""
    folders = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
    if str(EXT_TRAINER_DIR) not in (os.path.realpath(p) for p in folders):
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(folders + [str(EXT_TRAINER_DIR)])

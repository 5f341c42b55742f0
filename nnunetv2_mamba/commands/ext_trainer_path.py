"""Print the folder to put in ``nnUNet_extTrainer`` so that ``nnUNetv2_train -tr`` and ``nnUNetv2_predict`` find our
trainers:

    export nnUNet_extTrainer=$(nnunetv2_mamba ext-trainer-path)
"""

from __future__ import annotations

import argparse

HELP = "print the folder for nnUNet_extTrainer (export nnUNet_extTrainer=$(nnunetv2_mamba ext-trainer-path))"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from nnunetv2_mamba.ext_trainers import EXT_TRAINER_DIR

    print(EXT_TRAINER_DIR)
    return 0

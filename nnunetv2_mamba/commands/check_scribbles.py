"""Check a scribble dataset before planning and training: the `ignore` label declared as the highest label value,
scribble values within the declared labels, images and labels of equal shape and spacing, and the dense labels of
labelsTr_dense and labelsTs. Prints a summary (scribbled pixels per class, agreement with the dense labels) or every
problem with its file and value, and exits with 1 then.

Example:
  nnunetv2_mamba check-scribbles -d 27
"""

from __future__ import annotations

import argparse

from nnunetv2_mamba.data.scribble_dataset import ScribbleDatasetError, raw_dataset_folder, validate_scribble_dataset

HELP = "check a scribble dataset (ignore label, scribble values, shapes, dense labels)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset", required=True, help="dataset id, name or raw dataset folder")


def run(args: argparse.Namespace) -> int:
    try:
        print(validate_scribble_dataset(raw_dataset_folder(args.dataset)).format())
    except ScribbleDatasetError as e:
        print(f"error: {e}")
        return 1
    return 0

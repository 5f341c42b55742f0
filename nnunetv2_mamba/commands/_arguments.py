"""Arguments shared by the commands that write a new raw dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from nnunetv2_mamba.data.scribble_dataset import new_raw_dataset_folder


def add_output_dataset_arguments(parser: argparse.ArgumentParser, default_name: str) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("-d", "--dataset-id", type=int, help="id of the new dataset: $nnUNet_raw/DatasetXXX_NAME")
    target.add_argument("-o", "--output", type=Path, help="write the dataset to this folder instead")
    parser.add_argument("-n", "--name", help=f"dataset name after the id (default: {default_name})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")


def output_dataset_folder(args: argparse.Namespace, default_name: str) -> Path:
    if args.output is not None:
        return args.output
    return new_raw_dataset_folder(args.dataset_id, args.name or default_name)

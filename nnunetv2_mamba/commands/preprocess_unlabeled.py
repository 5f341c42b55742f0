"""Preprocess a dataset's unlabeled images for DAE pre-training and semi-supervised training, with the
configuration's own nnU-Net preprocessor (same cropping, resampling and normalisation as the labelled cases):

    $nnUNet_raw/DatasetXXX_NAME/imagesTr_unlabeled/CASE_0000.nii.gz   (named as in imagesTr)
    -> $nnUNet_preprocessed/DatasetXXX_NAME/<data_identifier>_unlabeled/

Run it after nnUNetv2_plan_and_preprocess, e.g.

    nnunetv2_mamba preprocess-unlabeled -d 501 -c 3d_fullres
    nnUNetv2_train 501 3d_fullres 0 -tr nnUNetTrainerDAE

See documentation/training_recipes.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "preprocess imagesTr_unlabeled/ for DAE pre-training and semi-supervised trainers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset", required=True, help="dataset ID or name (e.g. 501 or Dataset501_Name)")
    parser.add_argument("-c", "--configurations", nargs="+", required=True, metavar="CONFIG",
                        help="configurations to preprocess for (e.g. 2d 3d_fullres)")
    parser.add_argument("-p", "--plans", default="nnUNetPlans",
                        help="plans identifier (default: %(default)s; plans sharing its data_identifier, such as "
                             "those of `nnunetv2_mamba plans`, share the result)")
    parser.add_argument("-i", "--images", type=Path,
                        help="folder of unlabeled images (default: $nnUNet_raw/<dataset>/imagesTr_unlabeled)")
    parser.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from nnunetv2_mamba.data.unlabeled import preprocess_unlabeled

    try:
        outputs = preprocess_unlabeled(args.dataset, args.configurations, args.plans, args.images,
                                       args.num_processes)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}")
        return 2
    for configuration, folder in outputs.items():
        print(f"{configuration}: {sum(1 for _ in folder.glob('*.pkl'))} unlabeled cases in {folder}")
    return 0

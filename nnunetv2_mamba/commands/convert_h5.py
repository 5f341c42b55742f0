"""Convert scribble data in the HDF5 layout of WSL4MIS / SSL4MIS into an nnU-Net raw scribble dataset.

Each .h5 file holds one volume: `image`, dense `label` and `scribble` (one extra value, --unlabeled-value, for
unlabeled pixels; 4 in ACDC), shaped (slices, H, W). Scribbles go to labelsTr with nnU-Net's ignore label for
unlabeled pixels, dense labels to labelsTr_dense (every training case) and labelsTs (test patients), and the train/val
split to splits_final.json (one fold; nnU-Net's planner copies it into nnUNet_preprocessed, so train with fold 0).

The files store no spacing: --spacing gives it (default: ACDC's typical 10 mm between slices and 1.5 x 1.5 mm in
plane; in 2d mode only the in-plane values are used).

Examples:
  nnunetv2_mamba convert-h5 data/ACDC -d 27 -n ACDCScribble
  nnunetv2_mamba convert-h5 data/ACDC -d 28 -n ACDCScribble2D --mode 2d --splits my_splits.json
  nnunetv2_mamba convert-h5 data/ACDC_heldout -o heldout --mode 2d --splits test_only.json   # {"test": [...]}
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nnunetv2_mamba.commands._arguments import add_output_dataset_arguments, output_dataset_folder
from nnunetv2_mamba.data.convert_h5 import ACDC_SPACING, convert_h5

DEFAULT_NAME = "ACDCScribble"
HELP = "convert WSL4MIS/SSL4MIS HDF5 scribble data (ACDC) into an nnU-Net raw scribble dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="folder of .h5 volumes (e.g. patient003_frame01.h5)")
    add_output_dataset_arguments(parser, DEFAULT_NAME)
    parser.add_argument("--mode", choices=("3d", "2d"), default="3d",
                        help="one 3D case per volume (default; serves nnU-Net's 2d and 3d_fullres configurations) "
                             "or one 2D case per slice")
    parser.add_argument("--spacing", type=float, nargs=3, default=ACDC_SPACING, metavar=("SLICE", "ROW", "COLUMN"),
                        help="voxel spacing in mm, between slices then in plane (default: %(default)s, typical of "
                             "ACDC: 1.5 x 1.5 mm in plane, 5-10 mm between slices)")
    parser.add_argument("--splits", type=Path,
                        help="JSON with patient id lists 'train', 'val' and optionally 'test', or 'test' alone to "
                             "convert held-out patients (default: the source folder's splits.json); patients in no "
                             "list are skipped")
    parser.add_argument("--unlabeled-value", type=int, default=4,
                        help="value of unlabeled pixels in `scribble` (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    target = convert_h5(args.source, output_dataset_folder(args, DEFAULT_NAME), mode=args.mode,
                        spacing=args.spacing, splits=args.splits, unlabeled_value=args.unlabeled_value,
                        overwrite=args.overwrite)
    print(f"wrote {target}")

"""Evaluate predictions against dense references, per case and class: Dice, IoU, accuracy, precision, sensitivity,
specificity, HD95, ASD and ASSD (distances in mm from the image spacing, or pixels with --pixels; 3D volumes as a
whole). Writes OUTPUT.json and OUTPUT.csv and prints the class means, the foreground mean and the mean with
background. Undefined values (e.g. Dice of a class absent from both, distances when a mask is empty) are left out of
the means and counted; see documentation/metrics.md.

2D slices of volumes (``<volume>_slice<NN>``, as ``convert-h5 --mode 2d`` names them) are scored per volume, as the
scribble literature reports ACDC, with --volumes SLICE_SPACING: the predicted slices and their references are stacked
back into volumes (slices SLICE_SPACING mm apart) first.

Examples:
  nnunetv2_mamba evaluate -ref $nnUNet_raw/Dataset027_ACDCScribble/labelsTs -pred predictions/
  nnunetv2_mamba evaluate -ref $nnUNet_raw/Dataset028_ACDC2D/labelsTs -pred predictions/ --volumes 10
  nnunetv2_mamba evaluate -ref $nnUNet_raw/Dataset027_ACDCScribble/labelsTr_dense \\
      -pred $nnUNet_results/Dataset027_ACDCScribble/TRAINER__nnUNetPlans__2d/fold_0/validation
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from nnunetv2_mamba.evaluation.metrics import evaluate_folders, format_table
from nnunetv2_mamba.evaluation.volumes import stack_references, stack_slices

HELP = "Dice, HD95, ASD and more of a prediction folder against dense references"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-ref", "--reference", type=Path, required=True, help="folder of dense reference labels")
    parser.add_argument("-pred", "--prediction", type=Path, required=True, help="folder of predictions")
    parser.add_argument("-djfile", "--dataset-json", type=Path,
                        help="dataset.json giving labels and file ending (default: the one in the prediction folder, "
                             "which nnU-Net writes there, else the one beside the reference folder)")
    parser.add_argument("-o", "--output", type=Path,
                        help="output path without suffix (default: PREDICTION/metrics, giving metrics.json/.csv)")
    parser.add_argument("--pixels", action="store_true", help="distances in pixels instead of mm")
    parser.add_argument("--volumes", type=float, metavar="SLICE_SPACING",
                        help="score 2D slices <volume>_slice<NN> per volume, stacked SLICE_SPACING mm apart")
    parser.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    dataset_json = args.dataset_json
    if dataset_json is None:
        candidates = [args.prediction / "dataset.json", args.reference.parent / "dataset.json"]
        dataset_json = next((c for c in candidates if c.is_file()), None)
        if dataset_json is None:
            print(f"error: no dataset.json in {candidates[0].parent} or {candidates[1].parent}; pass -djfile")
            return 1
    output = args.output if args.output is not None else args.prediction / "metrics"
    with tempfile.TemporaryDirectory() as stacked:
        reference, prediction = args.reference, args.prediction
        if args.volumes is not None:
            reference, prediction = per_volume(reference, prediction, Path(stacked), args.volumes, dataset_json)
        results = evaluate_folders(reference, prediction, dataset_json, output, use_spacing=not args.pixels,
                                   num_processes=args.num_processes)
    print(format_table(results))
    print(f"wrote {output.with_suffix('.json')} and {output.with_suffix('.csv')}")
    return 0


def per_volume(reference: Path, prediction: Path, folder: Path, slice_spacing: float,
               dataset_json: Path) -> tuple[Path, Path]:
    """The predicted slices and the references of those slices stacked into volumes inside ``folder``."""
    ending = json.loads(Path(dataset_json).read_text())["file_ending"]
    predicted = sorted(p.name for p in prediction.glob(f"*{ending}"))
    stack_references(reference, predicted, folder / "reference", slice_spacing, ending)
    stack_slices(prediction, folder / "prediction", slice_spacing, ending)
    return folder / "reference", folder / "prediction"

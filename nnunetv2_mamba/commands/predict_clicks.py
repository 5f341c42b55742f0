"""Predict with a click-prompted model (UMambaBot2Click trained with nnUNetTrainerClicks), with the clicks of each
case from CLICKS/CASE.json (see documentation/interactive.md for the format); cases without a click file, or all
cases without --clicks, are predicted unprompted. Arguments as nnUNetv2_predict's.

Example:
  nnunetv2_mamba predict-clicks -i imagesTs -o predictions --clicks clicks -d 992 -c 2d -f 0
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "nnUNetv2_predict with click prompts for UMambaBot2Click models (clicks per case from JSON)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", type=Path, required=True, help="folder of images (CASE_0000.nii.gz, ...)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the segmentations")
    parser.add_argument("--clicks", type=Path, help="folder of click files CASE.json (default: no clicks)")
    parser.add_argument("-d", "--dataset", required=True, help="dataset ID or name")
    parser.add_argument("-c", "--configuration", required=True, help="configuration, e.g. 2d or 3d_fullres")
    parser.add_argument("-p", "--plans", default="nnUNetPlans_UMambaBot2Click",
                        help="plans identifier (default: %(default)s)")
    parser.add_argument("-tr", "--trainer", default="nnUNetTrainerClicks", help="trainer (default: %(default)s)")
    parser.add_argument("-f", "--folds", nargs="+", default=["0", "1", "2", "3", "4"],
                        help="folds to ensemble (default: 0 1 2 3 4; 'all' for a model trained on all cases)")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="default: %(default)s")
    parser.add_argument("-step_size", "--step-size", type=float, default=0.5,
                        help="sliding-window step as a fraction of the patch (default: %(default)s)")
    parser.add_argument("--disable_tta", "--disable-tta", action="store_true", help="no mirroring at test time")
    parser.add_argument("--click-radius", type=int, default=0, metavar="R",
                        help="post-processing: set the voxels within R of each click to its class where that class "
                             "is predicted among them (U-Mamba2 uses 1); default 0 = off")
    parser.add_argument("--continue-prediction", action="store_true", help="skip cases already in the output folder")
    parser.add_argument("-device", "--device", choices=("cuda", "cpu", "mps"), default="cuda",
                        help="default: %(default)s")


def run(args: argparse.Namespace) -> int:
    import torch
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from nnunetv2_mamba.ext_trainers import EXT_TRAINER_DIR
    from nnunetv2_mamba.inference.click_predictor import nnUNetClickPredictor

    if args.click_radius < 0:
        print(f"error: --click-radius must be >= 0, got {args.click_radius}")
        return 2
    if args.clicks is not None and not args.clicks.is_dir():
        print(f"error: --clicks {args.clicks} is not a folder of CASE.json click files")
        return 2
    # the checkpoint names our trainer class; let nnU-Net find it without the user exporting nnUNet_extTrainer
    search_path = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if str(EXT_TRAINER_DIR) not in search_path:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(search_path + [str(EXT_TRAINER_DIR)])
    model_folder = get_output_folder(args.dataset, args.trainer, args.plans, args.configuration)
    if not os.path.isdir(model_folder):
        print(f"error: no trained model at {model_folder} (check -d, -tr, -p, -c)")
        return 1
    predictor = nnUNetClickPredictor(tile_step_size=args.step_size, use_mirroring=not args.disable_tta,
                                     device=torch.device(args.device))
    folds = [f if f == "all" else int(f) for f in args.folds]
    predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint_name=args.checkpoint)
    try:
        cases = predictor.predict_from_folder(args.input, args.output, args.clicks, args.click_radius,
                                              overwrite=not args.continue_prediction)
    except ValueError as e:  # a bad click file, or a model that takes no clicks: say which, without a traceback
        print(f"error: {e}")
        return 2
    print(f"wrote {len(cases)} segmentation(s) to {args.output}")
    return 0

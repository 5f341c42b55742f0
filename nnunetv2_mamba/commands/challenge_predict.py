"""Segment every image of a folder with a trained nnU-Net model folder, writing each result under the input's own
name: the entry point of a grand-challenge style container (/input/images/<slug>/<uuid>.mha ->
/output/images/<slug>/<uuid>.mha), see documentation/challenge_submission.md.

Unlike nnUNetv2_predict it needs no nnU-Net file naming (``_0000`` channel suffixes, the dataset's file ending), runs
in one process (containers often limit shared memory) and finds our trainers without nnUNet_extTrainer. Images are
read and written with SimpleITK (.mha, .nii.gz, .nrrd, ...), keeping the input's geometry.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = "segment all images of a folder with a trained model folder (challenge container entry point)"

IMAGE_SUFFIXES = (".mha", ".mhd", ".nii.gz", ".nii", ".nrrd", ".nhdr")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", type=Path, required=True, help="folder of single-channel images")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the segmentations")
    parser.add_argument("-m", "--model", type=Path, required=True,
                        help="trained model folder (TRAINER__PLANS__CONFIGURATION, containing plans.json and fold_X)")
    parser.add_argument("-f", "--folds", nargs="+", default=None,
                        help="folds to ensemble (default: all fold_X folders with the checkpoint)")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth",
                        help="checkpoint file name in each fold folder (e.g. checkpoint_final_slim.pth)")
    parser.add_argument("--suffix", default=None,
                        help="file ending of the outputs (default: that of each input, e.g. .mha)")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                        help="auto: cuda when available")
    parser.add_argument("--disable-tta", action="store_true", help="no mirroring (8x faster in 3D, slightly worse)")
    parser.add_argument("--step-size", type=float, default=0.5, help="sliding-window step as a fraction of the patch")


def image_suffix(path: Path) -> str | None:
    """The image file ending of ``path`` (``.nii.gz`` counts as one), or None for other files."""
    return next((suffix for suffix in IMAGE_SUFFIXES if path.name.endswith(suffix)), None)


def run(args: argparse.Namespace) -> int:
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    from nnunetv2_mamba.ext_trainers import add_to_environment

    images = sorted(p for p in args.input.iterdir() if p.is_file() and image_suffix(p)) \
        if args.input.is_dir() else []
    if not images:
        print(f"error: no images ({', '.join(IMAGE_SUFFIXES)}) in {args.input}", file=sys.stderr)
        return 2
    if not (args.model / "plans.json").is_file():
        print(f"error: {args.model} is not a trained nnU-Net model folder (no plans.json); give the "
              f"TRAINER__PLANS__CONFIGURATION folder", file=sys.stderr)
        return 2
    add_to_environment()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    predictor = nnUNetPredictor(tile_step_size=args.step_size, use_mirroring=not args.disable_tta,
                                perform_everything_on_device=device.type == "cuda", device=device, allow_tqdm=False)
    folds = [f if f == "all" else int(f) for f in args.folds] if args.folds else None
    predictor.initialize_from_trained_model_folder(str(args.model), folds, args.checkpoint)
    channels = determine_num_input_channels(predictor.plans_manager, predictor.configuration_manager,
                                            predictor.dataset_json)
    if channels != 1:
        print(f"error: the model expects {channels} input channels; this entry point reads one image per case",
              file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    reader_writer = SimpleITKIO()
    for path in images:
        start = time.perf_counter()
        image, properties = reader_writer.read_images([str(path)])
        segmentation = predictor.predict_single_npy_array(image, properties)
        suffix = image_suffix(path)
        target = args.output / (path.name[:-len(suffix)] + (args.suffix or suffix))
        reader_writer.write_seg(segmentation, str(target), properties)
        print(f"{path.name} -> {target} ({time.perf_counter() - start:.1f} s)", flush=True)
    return 0

"""What the dense-label ACDC benchmarks (acdc_semisupervised.py, acdc_clicks.py) share, on top of the scribble
benchmark's pieces (acdc_scribble.py): one conversion of the WSL4MIS volumes into 2D slices, dense nnU-Net datasets
derived from it, budget plans for one of our networks, seeded trainings in spawned processes (with nnU-Net's
``-pretrained_weights``), and per-volume scoring of slice predictions.

Only the standard library at module level, as in acdc_scribble.py: the trainings are spawned processes that import
this module again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from acdc_scribble import (CHECKPOINT, CONFIGURATION, FOLD, IMAGE_SUFFIX, Budget, Say, add_data_arguments,
                           budget_plans, mean_sd, run_training, score_volumes, select_patients)

if TYPE_CHECKING:
    import torch

CONVERTED = Path("converted") / "Dataset400_ACDC2D"  # in the work folder: every split's slices, not an nnU-Net dataset
MIN_SEEDS = 2  # seeds that decide a target


# ------------------------------------------------------------------------------------------------ command line

def add_arguments(parser: argparse.ArgumentParser, default_work: Path) -> None:
    """The options both benchmarks take."""
    parser.add_argument("--budget", choices=("smoke", "cpu"), default="cpu", help="(default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="(default: %(default)s)")
    parser.add_argument("--on", choices=("test", "val"), default="test",
                        help="score the test patients (default) or the val patients (for decisions)")
    add_data_arguments(parser, default_work)


class Run(NamedTuple):
    """Where a benchmark run works and on what device; ``say`` prints its progress."""

    work: Path
    folder: Path  # the budget's outputs
    logs: Path
    device: torch.device
    say: Say


def start(args: argparse.Namespace, description: str) -> Run:
    """nnU-Net's folders in the work folder, our trainers on its search path, no ``torch.compile``, passive OpenMP
    threads (busy-waiting ones slow a training several-fold when another job shares the cores; the trainings
    inherit it), the device; prints where and ``description``."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP
    os.environ.setdefault("nnUNet_compile", "false")
    import torch

    from nnunetv2_mamba.utilities.nnunet_environment import set_environment

    def say(message: str) -> None:
        print(message, flush=True)

    work = args.work.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    set_environment(work)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    say(f"work folder {work} (logs in {work / 'logs'}); device {device}; OMP_WAIT_POLICY "
        f"{os.environ['OMP_WAIT_POLICY']}")
    say(description)
    return Run(work, work / args.budget, work / "logs", device, say)


def schedule_of(trainer: str) -> Any:
    """The ``Schedule`` of one of our short-schedule trainer variants, by name."""
    from nnunetv2_mamba.ext_trainers import trainer_classes

    return trainer_classes()[trainer].schedule


# ---------------------------------------------------------------------------------------------------- preparation

def conversion_source(data: Path, splits_file: Path, patients: int | None) -> dict[str, Any]:
    """What the conversion reads: the data folder and the patients of each split."""
    return {"data": str(data.resolve()), "splits": select_patients(splits_file, patients)}


def convert(source: dict[str, Any], work: Path) -> None:
    """``convert-h5 --mode 2d`` of every split's patients into ``work/converted`` (train and val patients with dense
    labels in ``labelsTr_dense``, test patients in ``imagesTs``/``labelsTs``)."""
    from nnunetv2_mamba.data.convert_h5 import convert_h5

    convert_h5(Path(source["data"]), work / CONVERTED, mode="2d", splits=source["splits"], overwrite=True)


def write_network_plans(dataset: str, budget: Budget, architecture: str) -> str:
    """nnU-Net's 2d plans of ``dataset`` with the scribble benchmark's edits of ``budget`` (patch, batch, widths),
    then ``nnunetv2_mamba plans -a architecture`` on them, at the budget's batch size (the derivation may lower it
    for a network with more feature maps); returns the plans' name. Same data identifier: no new preprocessing."""
    from nnunetv2_mamba.plans import derive_plans

    folder = Path(os.environ["nnUNet_preprocessed"]) / dataset
    base = budget_plans(json.loads((folder / "nnUNetPlans.json").read_text()), budget)
    plans, _ = derive_plans(base, architecture, [CONFIGURATION], json.loads((folder / "dataset.json").read_text()))
    plans["configurations"][CONFIGURATION]["batch_size"] = base["configurations"][CONFIGURATION]["batch_size"]
    (folder / f"{plans['plans_name']}.json").write_text(json.dumps(plans, indent=1))
    return plans["plans_name"]


def scored_set(on: str, work: Path, dataset: str) -> tuple[list[Path], Path]:
    """(image file per case, folder of their dense labels) of the scored patients: the converted test patients, or
    with ``on="val"`` the val patients of ``dataset`` (nnU-Net's fold-0 validation cases)."""
    if on == "test":
        converted = work / CONVERTED
        images = sorted((converted / "imagesTs").glob(f"*{IMAGE_SUFFIX}"))
        if not images:
            sys.exit(f"{converted}: no test patients; the splits file names none (use --on val)")
        return images, converted / "labelsTs"
    raw = Path(os.environ["nnUNet_raw"]) / dataset
    val = json.loads((raw / "splits_final.json").read_text())[FOLD]["val"]
    return [raw / "imagesTr" / f"{case}{IMAGE_SUFFIX}" for case in sorted(val)], raw / "labelsTr"


def case_name(image: Path) -> str:
    """``patient005_frame01_slice03`` for its image ``patient005_frame01_slice03_0000.nii.gz``."""
    return image.name[:-len(IMAGE_SUFFIX)]


# --------------------------------------------------------------------------------------------------- training

class Training(NamedTuple):
    """One nnU-Net training of a seed: trainer and plans on ``dataset``, in the seed folder's ``results`` folder,
    initialised from the final checkpoint of ``pretrained`` (nnU-Net's ``-pretrained_weights``) if given."""

    trainer: str
    plans: str
    dataset: str
    results: str = "nnUNet_results"
    pretrained: Training | None = None

    def model_folder(self, seed_folder: Path) -> Path:
        """nnU-Net's model folder (``get_output_folder``'s layout) of this training for one seed."""
        return seed_folder / self.results / self.dataset / f"{self.trainer}__{self.plans}__{CONFIGURATION}"

    def final_checkpoint(self, seed_folder: Path) -> Path:
        return self.model_folder(seed_folder) / f"fold_{FOLD}" / "checkpoint_final.pth"

    @property
    def slug(self) -> str:
        return f"{self.dataset}__{self.trainer}__{self.plans}__{self.results}"


def train(training: Training, seed: int, seed_folder: Path, logs: Path, device: torch.device,
          say: Say) -> dict[str, Any]:
    """acdc_scribble.py's ``run_training``, started from the final checkpoint of ``training.pretrained`` if given."""
    pretrained = training.pretrained.final_checkpoint(seed_folder) if training.pretrained else None
    return run_training(training, seed, seed_folder, logs, device, say, pretrained=pretrained)


# ---------------------------------------------------------------------------------------------------- scoring

def predict(predictor: Any, images: list[Path], output: Path, clicks: Path | None) -> None:
    """Every image into ``output/CASE.nii.gz``: the click model with ``clicks/CASE.json`` (unprompted without
    ``clicks``), any other model through nnU-Net's own predictor."""
    from nnunetv2_mamba.inference.click_predictor import nnUNetClickPredictor

    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    if not isinstance(predictor, nnUNetClickPredictor):
        predictor.predict_from_files_sequential([[str(image)] for image in images],
                                                [str(output / case_name(image)) for image in images])
        return
    writer = predictor.plans_manager.image_reader_writer_class()
    for image in images:
        case = case_name(image)
        segmentation, properties = predictor.predict_case([str(image)], clicks and clicks / f"{case}.json")
        writer.write_seg(segmentation, str(output / f"{case}.nii.gz"), properties)


def predictor_for(training: Training, seed_folder: Path, device: torch.device) -> Any:
    """nnU-Net's predictor of the training's ``CHECKPOINT`` (the click predictor for the click model), without
    test-time mirroring at every budget, as the CPU schedules train (it would quadruple a CPU's prediction time)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunetv2_mamba.inference.click_predictor import nnUNetClickPredictor

    kind = nnUNetClickPredictor if training.trainer.startswith("nnUNetTrainerClicks") else nnUNetPredictor
    predictor = kind(use_mirroring=False, device=device, perform_everything_on_device=device.type == "cuda",
                     allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(training.model_folder(seed_folder)), (FOLD,), CHECKPOINT)
    return predictor


def evaluate_volumes(predictions: Path, labels: Path, folder: Path, dataset_json: Path, evaluation: Path) -> dict:
    """acdc_scribble.py's ``score_volumes`` at the converter's slice spacing, distances in mm, written to
    ``evaluation`` (.json and .csv, which marks the work done); returns the results as that JSON has them."""
    from nnunetv2_mamba.data.convert_h5 import ACDC_SPACING
    from nnunetv2_mamba.evaluation.metrics import write_results

    write_results(score_volumes(predictions, labels, folder, ACDC_SPACING[0], dataset_json, use_spacing=True),
                  evaluation)
    return json.loads(evaluation.with_suffix(".json").read_text())


def volume_metrics(results: dict) -> dict[str, float]:
    """Per-volume Dice per class and their mean, HD95 and ASD (mm) of an evaluation."""
    classes = {label: c["name"] for label, c in results["per_class"].items() if str(label) != "0"}
    return {**{name: results["per_class"][label]["mean"]["Dice"] for label, name in classes.items()},
            "mean Dice": results["foreground_mean"]["Dice"], "HD95 (mm)": results["foreground_mean"]["HD95"],
            "ASD (mm)": results["foreground_mean"]["ASD"]}


def summarise(per_seed: Sequence[dict[str, float | None]]) -> dict[str, dict[str, Any]]:
    """Mean and sd over seeds of every key of the seeds' rows."""
    return {key: mean_sd([row[key] for row in per_seed]) for key in per_seed[0]}


def verdict(holds: bool, seeds: int, scored: str) -> str:
    """A target's verdict: decided on the test patients with at least :data:`MIN_SEEDS` seeds only."""
    if scored != "test":
        return f"undecided ({scored} patients; the test patients decide)"
    if seeds < MIN_SEEDS:
        return f"undecided ({seeds} seed{'s' * (seeds != 1)}; {MIN_SEEDS} decide)"
    return "met" if holds else "not met"

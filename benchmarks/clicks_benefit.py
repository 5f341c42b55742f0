"""Do clicks help? UMambaBot2Click trained with simulated clicks, then predicted without and with clicks, on a CPU.

The dense synthetic 2D dataset (nnunetv2_mamba.data.synthetic, 64 x 64 pixels: ring, cavity, blob) with
``--training`` (16) training and ``--test`` (8) test cases, or with ``--decoy`` its variant with an unlabelled
look-alike of the blob, where only a prompt tells which blob is meant; the plans of ``nnunetv2_mamba plans -a
UMambaBot2Click`` shrunk for a CPU (a quarter of the features, one block per stage); ``nnUNetTrainerClicks`` for
``--epochs`` epochs of ``--iterations`` iterations (a trainer class written to the work folder and put on
``nnUNet_extTrainer``; ``--trainer`` takes an existing schedule such as ``nnUNetTrainerClicks_demo`` instead), fold
``all``.
The test cases are then predicted with ``nnunetv2_mamba predict-clicks``

- without clicks (the unprompted network),
- with N clicks per class for each N of ``--clicks`` (each class of each test case clicked N times, spread over the
  structure's rows and inside it, as ``nnunetv2_mamba.data.simulate_clicks`` places them; the click files are
  written from labelsTs, as the user would click),
- with the most clicks plus U-Mamba2's click post-processing (``--click-radius 1``),
- and, as a control, with as many clicks per class at random pixels of the image: if the network reads where the
  clicks are, these must not help as the real clicks do,

and evaluated against labelsTs with nnunetv2_mamba.evaluation.metrics. Prints a markdown table and writes
benchmarks/results/NAME.json. On 2 idle CPU cores the default run takes about 2 minutes, the decoy run of
documentation/benchmarks.md (400 training cases, 100 epochs) about 10; a second job on the cores slows either
down many times.

    python benchmarks/clicks_benefit.py [--name clicks_benefit] [--work DIR] [--seed 0] [--epochs 15]
                                        [--iterations 20] [--clicks 1 3 5] [--feature-divisor 4] [--trainer NAME]
                                        [--decoy] [--training 16] [--test 8] [--click-map-sigma S]

Results: documentation/benchmarks.md ("Interactive segmentation"), rendered from
documentation/results/clicks_benefit_*.json; what else was tried: documentation/case_studies/clicks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from common import (RESULTS_DIR, format_table, machine_info, nnunet_environment, planning_environment, run_logged,
                    shrink_plans, write_json)

from nnunetv2_mamba.data.simulate_clicks import clicks_in_structure
from nnunetv2_mamba.data.synthetic import LABELS, write_synthetic_dataset
from nnunetv2_mamba.evaluation.metrics import evaluate_folders

DATASET_ID, DATASET = "996", "Dataset996_ClicksBenefit"
PLANS = "nnUNetPlans_UMambaBot2ClickSmall"
CLASSES = [value for value in LABELS.values() if value]
TRAINER = "nnUNetTrainerClicks_benchmark"
TRAINER_MODULE = '''"""Written by benchmarks/clicks_benefit.py: its schedule, found through nnUNet_extTrainer."""
from nnunetv2_mamba.training.nnUNetTrainerClicks import nnUNetTrainerClicks
from nnunetv2_mamba.training.variants.schedule import Schedule, ShortSchedule


class {name}(ShortSchedule, nnUNetTrainerClicks):
    schedule = Schedule({epochs}, {iterations}, 1)
'''


def add_trainer(work: Path, env: dict, epochs: int, iterations: int) -> None:
    """Write :data:`TRAINER` (``nnUNetTrainerClicks`` for ``epochs`` epochs of ``iterations`` iterations) to a module
    in ``work/trainers`` and add that folder to ``env``'s ``nnUNet_extTrainer``."""
    folder = work / "trainers"
    folder.mkdir()
    (folder / "clicks_benefit_trainers.py").write_text(TRAINER_MODULE.format(name=TRAINER, epochs=epochs,
                                                                             iterations=iterations))
    env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], str(folder)])


def prepare(work: Path, env: dict, args: argparse.Namespace) -> Path:
    """The raw dataset, nnU-Net's planning and preprocessing, and the CPU-sized UMambaBot2Click plans :data:`PLANS`
    (with ``--click-map-sigma`` in their ``arch_kwargs`` if given)."""
    raw = write_synthetic_dataset(work / "raw" / DATASET, dims=2, dense=True, num_training=args.training,
                                  num_test=args.test, seed=args.seed, decoy=args.decoy)
    run_logged(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "-np", "1"], planning_environment(env),
               work / "plan.log")
    run_logged([sys.executable, "-m", "nnunetv2_mamba.cli", "plans", "-d", DATASET_ID, "-a", "UMambaBot2Click"], env,
               work / "plans.log")
    base = work / "preprocessed" / DATASET
    shrink_plans(base / "nnUNetPlans_UMambaBot2Click.json", base / f"{PLANS}.json", args.feature_divisor)
    if args.click_map_sigma is not None:
        plans = json.loads((base / f"{PLANS}.json").read_text())
        plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["click_map_sigma"] = args.click_map_sigma
        (base / f"{PLANS}.json").write_text(json.dumps(plans, indent=1))
    return raw


def write_click_files(labels: Path, target: Path, count: int, seed: int, anywhere: bool = False) -> None:
    """``count`` clicks on every class of every case of ``labels`` into ``target/CASE.json`` (x, y voxel order, as
    the click file format has it): inside the class's structure, or with ``anywhere`` at random pixels of the image
    (the control: clicks that carry no information about where the structure is)."""
    target.mkdir(parents=True)
    for index, label_file in enumerate(sorted(labels.glob("*.nii.gz"))):
        label_map = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
        rng = np.random.default_rng([seed, count, index, anywhere])
        clicks = [{"label": label, "point": [int(v) for v in point[::-1]]} for label in CLASSES
                  if (label_map == label).any()
                  for point in (rng.integers(0, label_map.shape, (count, label_map.ndim)) if anywhere
                                else clicks_in_structure(label_map == label, count, rng))]
        (target / label_file.name.replace(".nii.gz", ".json")).write_text(json.dumps({"space": "voxel",
                                                                                     "clicks": clicks}))


def predict_and_evaluate(name: str, raw: Path, work: Path, env: dict, trainer: str, clicks: Path | None,
                         click_radius: int) -> dict:
    predictions = work / "predictions" / "".join(c for c in name.replace(" ", "_") if c.isalnum() or c == "_")
    command = [sys.executable, "-m", "nnunetv2_mamba.cli", "predict-clicks", "-i", str(raw / "imagesTs"), "-o",
               str(predictions), "-d", DATASET_ID, "-c", "2d", "-p", PLANS, "-tr", trainer, "-f", "all", "-device",
               "cpu"]
    if clicks is not None:
        command += ["--clicks", str(clicks), "--click-radius", str(click_radius)]
    seconds = run_logged(command, env, work / f"predict_{predictions.name}.log")
    results = evaluate_folders(raw / "labelsTs", predictions, raw / "dataset.json", progress=False)
    return {"condition": name, "predict_seconds": seconds, "per_class": results["per_class"],
            "foreground_mean": results["foreground_mean"], "per_case": results["per_case"]}


def tables(payload: dict) -> str:
    """Dice per class, foreground Dice and HD95 per condition: the printed table and documentation/benchmarks.md's."""
    rows = [{"condition": r["condition"],
             **{f"Dice {c['name']}": c["mean"]["Dice"] for label, c in r["per_class"].items() if int(label) != 0},
             "foreground Dice": r["foreground_mean"]["Dice"], "foreground HD95 (mm)": r["foreground_mean"]["HD95"]}
            for r in payload["conditions"]]
    return format_table(rows, list(rows[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="clicks_benefit",
                        help="the run's name: benchmarks/results/NAME.json and NAME_work (default: %(default)s)")
    parser.add_argument("--work", type=Path, help="working folder, replaced (default: benchmarks/results/NAME_work)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dataset and the clicks (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=20, help="iterations per epoch (default: %(default)s)")
    parser.add_argument("--trainer", help="an existing nnUNetTrainerClicks schedule (e.g. nnUNetTrainerClicks_demo) "
                                          "instead of --epochs and --iterations")
    parser.add_argument("--clicks", type=int, nargs="+", default=[1, 3, 5],
                        help="clicks per class of the prompted conditions (default: %(default)s)")
    parser.add_argument("--feature-divisor", type=int, default=4,
                        help="network width divided by this for the CPU (default: %(default)s)")
    parser.add_argument("--decoy", action="store_true",
                        help="the dataset variant with an unlabelled look-alike blob in every image")
    parser.add_argument("--training", type=int, default=16, help="training cases (default: %(default)s); with "
                        "--decoy use hundreds, or the network memorises which blob is labelled in each image")
    parser.add_argument("--test", type=int, default=8, help="test cases (default: %(default)s)")
    parser.add_argument("--click-map-sigma", type=float, help="the network's click_map_sigma (default: its own); 0: "
                        "clicks reach it through the bottleneck cross-attention only, as in U-Mamba2")
    args = parser.parse_args()
    args.work = args.work or RESULTS_DIR / f"{args.name}_work"
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    env = nnunet_environment(args.work)
    if args.trainer is None:
        args.trainer = TRAINER
        add_trainer(args.work, env, args.epochs, args.iterations)
    else:
        args.epochs = args.iterations = None
    raw = prepare(args.work, env, args)
    train_seconds = run_logged(["nnUNetv2_train", DATASET_ID, "2d", "all", "-p", PLANS, "-tr", args.trainer, "-device",
                                "cpu"], env, args.work / "train.log")

    conditions = [("no clicks", None, 0)]
    for count in args.clicks:
        folder = args.work / "clicks" / str(count)
        write_click_files(raw / "labelsTs", folder, count, args.seed)
        conditions.append((f"{count} click{'s' * (count > 1)} per class", folder, 0))
    most = max(args.clicks)
    conditions.append((f"{most} click{'s' * (most > 1)} per class, radius 1", args.work / "clicks" / str(most), 1))
    write_click_files(raw / "labelsTs", args.work / "clicks" / "random", most, args.seed, anywhere=True)
    conditions.append((f"control: {most} random click{'s' * (most > 1)} per class", args.work / "clicks" / "random", 0))
    results = [predict_and_evaluate(name, raw, args.work, env, args.trainer, clicks, radius)
               for name, clicks, radius in conditions]

    payload = {"training": args.training, "test": args.test, "seed": args.seed, "decoy": args.decoy,
               "click_map_sigma": args.click_map_sigma, "trainer": args.trainer, "epochs": args.epochs,
               "iterations_per_epoch": args.iterations, "plans": PLANS, "feature_divisor": args.feature_divisor,
               "train_seconds": train_seconds, "machine": machine_info(torch.get_num_threads()),
               "conditions": results}
    print(tables(payload))
    schedule = f"{args.epochs} epochs of {args.iterations} iterations" if args.epochs else args.trainer
    print(f"training: {train_seconds:.0f} s ({schedule}, plans {PLANS}, feature divisor {args.feature_divisor})")
    print(f"wrote {write_json(args.name, payload)}")


if __name__ == "__main__":
    main()

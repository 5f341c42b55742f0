"""Do clicks help on real data? UMambaBot2Click trained with simulated clicks on the dense ACDC train patients, against
the same network without the click branch (UMambaBot2) on the same schedule, under the scribble benchmark's protocol
(acdc_scribble.py).

One command, resumable: a re-run skips the conversion, the preprocessing, every training whose checkpoint_final.pth
exists (an interrupted one resumes from its latest checkpoint) and every click round whose evaluation exists.

1. Data: the WSL4MIS HDF5 volumes (``--data``) converted by ``convert_h5 --mode 2d`` with ``--splits`` (default the
   folder's ``splits_heldout.json``: train 60 / val 10 / test 10 patients) into a dense nnU-Net dataset: the train
   patients' slices are the training cases, the val patients' nnU-Net's fold-0 validation cases.
2. Networks, on nnU-Net's 2d plans with the budget's edits of the scribble benchmark (patch, batch, widths), each
   trained once per seed (``--seeds``) in its own seeded process on the same schedule:

   - ``UMambaBot2Click`` (``nnunetv2_mamba plans -a UMambaBot2Click``) with ``nnUNetTrainerClicks_acdc_cpu``: half
     of the patches unprompted, the others with U-Mamba2's simulated clicks (1-10 per class inside the structure,
     none for 10 %);
   - ``UMambaBot2`` (``-a UMambaBot2``) with ``nnUNetTrainerMamba_acdc_cpu``: no click branch.
3. Selection on val only: ``checkpoint_best.pth``, nnU-Net's pick by its online validation Dice on the val patients
   (the click model's validation patches carry simulated clicks too).
4. Test: the test patients' slices predicted (no test-time mirroring) by UMambaBot2 (``nnUNetPredictor``) and by
   the click model (``nnUNetClickPredictor``, what ``predict-clicks`` runs) without clicks, then in rounds as an
   annotator corrects: each round adds, per slice and class, one click at the centre of the largest region the
   previous round's prediction misses (:func:`nnunetv2_mamba.data.simulate_clicks.correction_clicks`; written as
   click files) and predicts again with all clicks so far. The model is 2D, so clicks are per slice: N clicks per
   class means N per class in every slice where the class was missed. Predictions are stacked into volumes and scored
   per volume (Dice per class and mean, HD95 and ASD in mm at the converter's spacing). ``--on val`` scores the val
   patients instead.
   Targets, decided on test with at least two seeds: 3 clicks per class >= no clicks + 0.05; the click model's
   unprompted Dice no more than 0.01 below UMambaBot2's.

Budgets: ``smoke`` (the CI check: ``nnUNetTrainerClicks_smoke`` and ``nnUNetTrainerMamba_smoke``, 2 x 2 iterations,
patch 128, batch 2, features / 16; numbers mean nothing) and ``cpu`` (about an hour per seed on 2 CPU cores; its
iterations in ``describe``).

``--background-clicks`` trains the click model with ``background_clicks`` (its own plans,
``nnUNetPlans_<budget>_UMambaBot2ClickBackground``), whose correction rounds click background's misses (false
positives) too; it reuses UMambaBot2 and writes its own rows and outputs (``..._background``).

Outputs in ``<work>/<budget>/``: ``acdc_clicks_<budget>_<on>.md`` (tables), ``.json`` (rows, per-seed numbers, the
clicks -> Dice curve; ``tables(payload)`` renders it) and ``.png`` (the curve); models in ``seed<N>/``, click files
(``clicks/`` or ``clicks_background/``), predictions and evaluations in ``<on>/seed<N>/``; logs in ``<work>/logs``.

    python benchmarks/acdc_clicks.py --budget cpu [--seeds 0 1] [--clicks 1 3 5] [--on test|val]
        [--background-clicks] [--data DIR] [--splits FILE] [--work DIR] [--patients N] [--processes 2]
        [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acdc_dense import (CONVERTED, Training, add_arguments, case_name, conversion_source, convert, evaluate_volumes,
                        predict, predictor_for, schedule_of, train, scored_set, start, summarise, verdict,
                        volume_metrics, write_network_plans)
from acdc_scribble import (BUDGETS, CHECKPOINT, CONFIGURATION, DEFAULT_SPLITS, DIGITS, Say, cell,
                           plan_and_preprocess, pyplot, run_steps, write_dense_twin)

if TYPE_CHECKING:
    import torch

HERE = Path(__file__).resolve().parent
DEFAULT_WORK = HERE / "results" / "acdc_clicks"
DATASET_ID, DATASET = 29, "Dataset029_ACDCClicks2D"
CLICK_ARCHITECTURE, PLAIN_ARCHITECTURE = "UMambaBot2Click", "UMambaBot2"
BACKGROUND_PLANS = "Background"  # plans-name suffix of the click model with background clicks
PLAIN = "UMambaBot2 (no click branch)"
TARGET_CLICKS, TARGET_GAIN, TARGET_TOLERANCE = 3, 0.05, 0.01
TRAINERS = {"smoke": {CLICK_ARCHITECTURE: "nnUNetTrainerClicks_smoke", PLAIN_ARCHITECTURE: "nnUNetTrainerMamba_smoke"},
            "cpu": {CLICK_ARCHITECTURE: "nnUNetTrainerClicks_acdc_cpu",
                    PLAIN_ARCHITECTURE: "nnUNetTrainerMamba_acdc_cpu"}}  # by budget and network
COLUMN_DIGITS = {**DIGITS, "clicks per slice": 2}  # other columns: 3


def click_model(background: bool) -> str:
    """The click model's name in rows and folders."""
    return f"{CLICK_ARCHITECTURE} with background clicks" if background else CLICK_ARCHITECTURE


def condition(clicks: int, background: bool = False) -> str:
    """The row of the click model after ``clicks`` rounds."""
    return f"{click_model(background)}, " + (f"{clicks} click{'s' * (clicks != 1)} per class" if clicks else
                                             "no clicks")


def trainings(budget: str, background: bool = False) -> dict[str, Training]:
    """The two networks' trainings, by architecture, at the budget's plans (written by :func:`main`; the click
    model's with ``BACKGROUND_PLANS`` appended when it takes background clicks)."""
    return {architecture: Training(trainer, f"{BUDGETS[budget].plans}_{architecture}"
                                   + (BACKGROUND_PLANS if background and architecture == CLICK_ARCHITECTURE else ""),
                                   DATASET)
            for architecture, trainer in TRAINERS[budget].items()}


def write_background_plans(plans_name: str) -> None:
    """A copy of the click model's plans ``plans_name`` whose network takes background clicks."""
    folder = Path(os.environ["nnUNet_preprocessed"]) / DATASET
    plans = json.loads((folder / f"{plans_name}.json").read_text())
    plans["plans_name"] += BACKGROUND_PLANS
    plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]["background_clicks"] = True
    (folder / f"{plans['plans_name']}.json").write_text(json.dumps(plans, indent=1))


def describe(budget: str) -> str:
    """The budget in one line: plans edits and both trainings' iterations."""
    edits, s = BUDGETS[budget], schedule_of(TRAINERS[budget][CLICK_ARCHITECTURE])
    return (f"budget {budget}: plans {edits.plans}_<network> = nnU-Net's 2d plans with patch "
            f"{'x'.join(map(str, edits.patch_size))} (stages as nnU-Net plans them), batch {edits.batch_size}, "
            f"features / {edits.width_divisor}, then nnunetv2_mamba plans -a {CLICK_ARCHITECTURE} or "
            f"{PLAIN_ARCHITECTURE}; each network {s.epochs} epochs x {s.iterations_per_epoch} iterations = "
            f"{s.epochs * s.iterations_per_epoch} iterations ({s.val_iterations_per_epoch} validation iterations per "
            f"epoch), mirroring {'on' if s.mirroring else 'off'}")


# ------------------------------------------------------------------------------------------------------- clicks

def read_clicks(file: Path) -> list:
    """The clicks of one of our click files, back in array (row, column) order."""
    from nnunetv2_mamba.nets.click_channels import Click

    return [Click(c["label"], tuple(c["point"][::-1])) for c in json.loads(file.read_text())["clicks"]]


def write_correction_clicks(previous: Path, labels: Path, clicks: Path, target: Path, classes: list[int]) -> None:
    """For every slice predicted in ``previous``: its clicks so far (``clicks/CASE.json``, none if absent) plus one
    :func:`correction_clicks` round on the prediction against ``labels/CASE``, into ``target/CASE.json``."""
    import SimpleITK as sitk

    from nnunetv2_mamba.data.simulate_clicks import correction_clicks

    target.mkdir(parents=True, exist_ok=True)
    for file in sorted(previous.glob("*.nii.gz")):
        case = file.name.removesuffix(".nii.gz")
        earlier = read_clicks(clicks / f"{case}.json") if (clicks / f"{case}.json").is_file() else []
        prediction, reference = (sitk.GetArrayFromImage(sitk.ReadImage(str(folder / file.name)))
                                 for folder in (previous, labels))
        new = correction_clicks(prediction, reference, classes, [c.point for c in earlier])
        points = [{"label": c.label, "point": [int(v) for v in c.point[::-1]]} for c in earlier + new]
        (target / f"{case}.json").write_text(json.dumps({"space": "voxel", "clicks": points}))


def score_seed(models: dict[str, Training], seed_folder: Path, images: list[Path], labels: Path, folder: Path,
               rounds: int, log_file: Path, device: torch.device, say: Say,
               background: bool = False) -> dict[str, dict]:
    """UMambaBot2 unprompted, and the click model unprompted and after each of ``rounds`` correction rounds, scored
    per volume; every round's evaluation (``folder/evaluations/<name>.json``) marks it done. With ``background``,
    the rounds click background's misses (false positives) too. Returns the evaluations by row name, with the mean
    number of clicks per slice."""
    from nnunetv2_mamba.utilities.output import output_to

    def slug(name: str) -> str:
        return "".join(c if c.isalnum() else "_" for c in name)

    dataset_json = Path(os.environ["nnUNet_raw"]) / DATASET / "dataset.json"
    classes = [int(v) for v in json.loads(dataset_json.read_text())["labels"].values() if v] + [0] * background
    clicks_folder = folder / ("clicks_background" if background else "clicks")
    jobs = [(PLAIN, models[PLAIN_ARCHITECTURE], 0)] + \
        [(condition(k, background), models[CLICK_ARCHITECTURE], k) for k in range(rounds + 1)]
    predictors: dict[Training, Any] = {}
    results = {}
    for name, training, clicks in jobs:
        evaluation = folder / "evaluations" / slug(name)
        click_files = clicks_folder / str(clicks) if clicks else None
        if not evaluation.with_suffix(".json").is_file():
            if click_files:
                write_correction_clicks(folder / "predictions" / slug(condition(clicks - 1, background)), labels,
                                        clicks_folder / str(clicks - 1), click_files, classes)
            say(f"{name}: predicting {len(images)} slices with {training.trainer} ({CHECKPOINT})")
            with open(log_file, "a") as log, output_to(log):
                if training not in predictors:
                    predictors[training] = predictor_for(training, seed_folder, device)
                predict(predictors[training], images, folder / "predictions" / slug(name), click_files)
            evaluate_volumes(folder / "predictions" / slug(name), labels, folder, dataset_json, evaluation)
        results[name] = json.loads(evaluation.with_suffix(".json").read_text())
        results[name]["clicks per slice"] = (sum(len(json.loads(f.read_text())["clicks"])
                                                 for f in click_files.glob("*.json")) / len(images)
                                             if click_files else 0.0)
        say(f"{name}: per-volume foreground Dice {results[name]['foreground_mean']['Dice']:.4f}")
    return results


# ------------------------------------------------------------------------------------------------------- report

def targets(summaries: dict[str, dict], seeds: int, scored: str, background: bool = False) -> list[dict[str, Any]]:
    """The benchmark's targets on the mean per-volume Dice over seeds."""
    dice = {name: s["mean Dice"]["mean"] for name, s in summaries.items()}
    unprompted = dice[condition(0, background)]
    checks = [(f"{TARGET_CLICKS} clicks per class >= no clicks + {TARGET_GAIN}",
               dice.get(condition(TARGET_CLICKS, background)),
               unprompted, lambda a, b: a >= b + TARGET_GAIN),
              (f"click model without clicks >= UMambaBot2 - {TARGET_TOLERANCE}", unprompted, dice[PLAIN],
               lambda a, b: a >= b - TARGET_TOLERANCE)]
    return [{"target": target, "value": value, "comparator": comparator,
             "verdict": verdict(holds(value, comparator), seeds, scored) if value is not None else
             f"not run (--clicks without {TARGET_CLICKS})"}
            for target, value, comparator, holds in checks]


def tables(payload: dict[str, Any]) -> str:
    """The results table and the targets of a run's JSON: its report's and the documentation's."""
    from common import format_table

    rows = payload["results"]
    checks = [{k: round(v, 3) if isinstance(v, float) else v for k, v in c.items()} for c in payload["targets"]]
    return (format_table(rows, list(rows[0])) + "\n\nTargets (mean per-volume Dice over seeds):\n\n"
            + format_table(checks, ["target", "value", "comparator", "verdict"]))


def plot(curve: list[dict[str, Any]], plain: dict[str, Any], classes: list[str], path: Path,
         model: str = CLICK_ARCHITECTURE) -> None:
    """Per-volume Dice against clicks per class (mean ± sd over seeds; per class dotted), UMambaBot2's as a line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 6))
    clicks = [point["clicks"] for point in curve]
    ax.errorbar(clicks, [p["mean Dice"]["mean"] for p in curve], [p["mean Dice"]["sd"] or 0 for p in curve],
                marker="o", capsize=3, label=f"{model}, mean Dice")
    for name in classes:
        ax.plot(clicks, [p[name]["mean"] for p in curve], ":", marker=".", label=f"{model}, {name}")
    ax.axhline(plain["mean Dice"]["mean"], color="grey", linestyle="--", label=f"{PLAIN}, mean Dice")
    ax.set(xlabel="correction clicks per class and slice", ylabel="per-volume Dice", ylim=(0, 1),
           title="clicks -> Dice (mean ± sd over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def prepare_dataset(work: Path, processes: int) -> None:
    """The conversion's dense twin (train patients' slices, val patients as fold-0 validation), planned and
    preprocessed."""
    write_dense_twin(work / CONVERTED, Path(os.environ["nnUNet_raw"]) / DATASET)
    plan_and_preprocess(DATASET_ID, processes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, DEFAULT_WORK)
    parser.add_argument("--clicks", type=int, nargs="+", default=[1, 3, 5],
                        help="clicks per class reported (rounds up to the largest run) (default: %(default)s)")
    parser.add_argument("--background-clicks", action="store_true",
                        help="the click model also takes background clicks (arch_kwargs background_clicks), and the "
                             "correction rounds click false positives too; its own plans, rows and outputs "
                             "(acdc_clicks_<budget>_<on>_background)")
    args = parser.parse_args()
    if min(args.clicks) < 1:
        parser.error("--clicks counts start at 1 (no clicks is always scored)")
    run = start(args, describe(args.budget))
    import torch
    from common import machine_info, write_json

    from nnunetv2_mamba.data.convert_h5 import ACDC_LABELS

    started = time.perf_counter()
    splits_file = args.splits or args.data / DEFAULT_SPLITS
    source = conversion_source(args.data, splits_file, args.patients)
    preparation = run_steps(run.work, source, {"convert": partial(convert, source, run.work),
                                               f"dataset {DATASET}": partial(prepare_dataset, run.work,
                                                                             args.processes)}, run.say)
    for architecture in TRAINERS[args.budget]:
        written = write_network_plans(DATASET, BUDGETS[args.budget], architecture)
        if args.background_clicks and architecture == CLICK_ARCHITECTURE:
            write_background_plans(written)
    models = trainings(args.budget, args.background_clicks)
    images, labels = scored_set(args.on, run.work, DATASET)
    rounds = max(args.clicks)
    per_seed: dict[str, list[dict]] = {}
    for seed in args.seeds:
        seed_folder = run.folder / f"seed{seed}"
        timings = {architecture: train(training, seed, seed_folder, run.logs, run.device, run.say)
                   for architecture, training in models.items()}
        results = score_seed(models, seed_folder, images, labels, run.folder / args.on / f"seed{seed}", rounds,
                             run.logs / f"predict_seed{seed}.log", run.device, run.say, args.background_clicks)
        for name, result in results.items():
            timing = timings[PLAIN_ARCHITECTURE if name == PLAIN else CLICK_ARCHITECTURE]
            per_seed.setdefault(name, []).append({**volume_metrics(result),
                                                  "clicks per slice": result["clicks per slice"],
                                                  "iterations": timing["iterations"], "train s": timing["seconds"]})

    summaries = {name: summarise(values) for name, values in per_seed.items()}
    shown = [PLAIN] + [condition(k, args.background_clicks) for k in [0, *sorted(set(args.clicks))]]
    results = [{"method": name, **{key: cell(summary, COLUMN_DIGITS.get(key, 3))
                                   for key, summary in summaries[name].items()}} for name in shown]
    curve = [{"clicks": k, **summaries[condition(k, args.background_clicks)]} for k in range(rounds + 1)]
    checks = targets(summaries, len(args.seeds), args.on, args.background_clicks)
    name = f"acdc_clicks_{args.budget}_{args.on}" + "_background" * args.background_clicks
    scored_patients = sorted({case_name(image).split("_frame")[0] for image in images})
    payload = {"budget": describe(args.budget), "seeds": args.seeds, "splits": str(splits_file), "on": args.on,
               "scored patients": scored_patients, "slices": len(images), "checkpoint": CHECKPOINT,
               "trainings": {architecture: t._asdict() for architecture, t in models.items()},
               "preparation_seconds": preparation, "machine": machine_info(torch.get_num_threads()),
               "results": results, "summaries": summaries, "per_seed": per_seed, "curve": curve, "targets": checks}
    markdown = (f"{describe(args.budget)}\n\nScored per volume on the {args.on} patients "
                f"({', '.join(scored_patients)}; {len(images)} 2D slices stacked into volumes at the converter's "
                f"spacing), predicted with {CHECKPOINT} (selected on the val patients); mean ± sd over seeds "
                f"{args.seeds}. Clicks: correction rounds, one click per slice and class the previous prediction "
                f"misses, at the centre of its largest missed region; clicks per slice: the mean number given. "
                f"train s: wall-clock of the training's epochs.\n\n" + tables(payload))
    (run.folder / f"{name}.md").write_text(markdown + "\n")
    write_json(name, payload, run.folder)
    plot(curve, summaries[PLAIN], [c for c, value in ACDC_LABELS.items() if value], run.folder / f"{name}.png",
         click_model(args.background_clicks))
    run.say(f"\n{markdown}\n\nwrote {run.folder / name}.md, .json and .png "
            f"({time.perf_counter() - started:.0f} s this run)")


if __name__ == "__main__":
    main()

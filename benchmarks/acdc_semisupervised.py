"""ACDC with few labelled patients: U-Mamba2-SSL's recipe against supervised training, under the scribble benchmark's
protocol (acdc_scribble.py).

One command, resumable: a re-run skips the conversion, the preprocessing, every training whose checkpoint_final.pth
exists (an interrupted one resumes from its latest checkpoint) and every evaluation whose JSON exists. A table
can also grow over several runs (a work folder that does not outlive its machine): ``--rows`` trains and scores
only some rows (e.g. ``consistency recipe`` after a change to stage 2), and ``--reuse`` adds an earlier run's rows
and labelled settings that this run does not measure, from its JSON, which must match the budget, schedules, seeds
and scored patients; the table then names each row's run (date and CPU).

1. Data: the WSL4MIS HDF5 volumes (``--data``) converted once by ``convert_h5 --mode 2d`` with ``--splits`` (default
   the folder's ``splits_heldout.json``: train 60 / val 10 / test 10 patients). Per labelled setting N of
   ``--labelled`` (default 3 and 7, SSL4MIS's ACDC settings): a dense nnU-Net dataset whose training cases are the
   slices of N train patients, evenly spread over the sorted train list (ACDC numbers its patients by pathology, 20
   to a group: the first N would share one), its fold-0 validation cases the val patients, and the other train
   patients' images in ``imagesTr_unlabeled`` (``move_to_unlabeled``), preprocessed by ``preprocess-unlabeled``.
2. Network: UMambaBot2 (``nnunetv2_mamba plans -a UMambaBot2``) on nnU-Net's 2d plans with the budget's edits of the
   scribble benchmark (patch, batch, widths). Rows, per labelled setting and seed (``--seeds``), each training in its
   own seeded process:

   - supervised only: ``nnUNetTrainerSupervised_acdc_<budget>`` (``nnUNetTrainerMamba``) on the labelled slices;
   - DAE -> supervised: the same, initialised from ``nnUNetTrainerDAE_acdc_<budget>`` (pre-trained on the labelled
     and unlabeled images) through nnU-Net's ``-pretrained_weights``;
   - DAE -> consistency: the recipe's stage 2, ``nnUNetTrainerConsistency_acdc_<budget>`` from the DAE;
   - full recipe: stage 3, ``nnUNetTrainerPseudoLabel_acdc_<budget>``, continuing stage 2.

   Supervised only and the full recipe get equal segmentation iterations (stage 2 + stage 3 = the supervised
   schedule): the fair comparison of what the unlabeled images add per optimiser step; the DAE pre-training and the
   unlabeled batches' second forward pass are extra compute the recipe spends. Each stage's gain is the per-seed
   difference of mean Dice to the row before.
3. Selection on val only: ``checkpoint_best.pth``, nnU-Net's pick by its online validation Dice on the val patients.
4. Test: the test patients' slices predicted (``nnUNetPredictor``, no test-time mirroring), stacked into volumes
   and scored per volume: Dice per class and mean, HD95 and ASD in mm at the converter's spacing. ``--on val``
   scores the val patients instead, for decisions. Tables give mean ± sd over the seeds; the target (full recipe >=
   supervised only + 0.03 with 7 labelled patients) is decided on test with at least two seeds.

Budgets: ``smoke`` (the CI check: the ``_smoke`` trainers, 2 x 3 iterations a stage, patch 128, batch 2, features /
16; numbers mean nothing) and ``cpu`` (about two hours per seed and labelled setting on 2 CPU cores, nearly all of
it training; its iterations in ``describe``).

Outputs in ``<work>/<budget>/``: ``acdc_semisupervised_<budget>_<on>.md`` (tables), ``.json`` (rows, per-seed
numbers, training curves; ``tables(payload)`` renders it) and ``.png``; models in ``seed<N>/``, predictions and
evaluations in ``<on>/seed<N>/``; logs in ``<work>/logs``.

    python benchmarks/acdc_semisupervised.py --budget cpu [--labelled 3 7] [--seeds 0 1] [--on test|val]
        [--data DIR] [--splits FILE] [--work DIR] [--patients N] [--processes 2] [--device auto]
        [--rows supervised dae-supervised consistency recipe] [--reuse EARLIER.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from acdc_dense import (CONVERTED, Training, add_arguments, case_name, conversion_source, convert, evaluate_volumes,
                        predict, predictor_for, schedule_of, scored_set, train, start, summarise, verdict,
                        volume_metrics, write_network_plans)
from acdc_scribble import (BUDGETS, CHECKPOINT, CONFIGURATION, DEFAULT_SPLITS, DIGITS, FOLD, Say, cell, mean_sd,
                           plan_and_preprocess, plot, run_steps, training_curves, write_dense_twin)

if TYPE_CHECKING:
    import torch

HERE = Path(__file__).resolve().parent
DEFAULT_WORK = HERE / "results" / "acdc_semisupervised"
ARCHITECTURE = "UMambaBot2"
TARGET_LABELLED, TARGET_GAIN = 7, 0.03
STAGES = ("DAE", "Consistency", "PseudoLabel", "Supervised")
TRAINERS = {"smoke": {**{stage: f"nnUNetTrainer{stage}_smoke" for stage in STAGES[:3]},
                      "Supervised": "nnUNetTrainerSupervised_acdc_smoke"},
            "cpu": {stage: f"nnUNetTrainer{stage}_acdc_cpu" for stage in STAGES}}  # by budget and stage
COLUMN_DIGITS = {**DIGITS, "segmentation iterations": 0, "DAE iterations": 0}  # other columns: 3


def dataset_id(labelled: int) -> int:
    return 400 + labelled


def dataset_name(labelled: int) -> str:
    return f"Dataset{dataset_id(labelled)}_ACDCSemi{labelled}L"


def choose_labelled(train: list[str], count: int) -> list[str]:
    """``count`` patients evenly spread over the sorted ``train`` patients (one from each of ``count`` equal stretches,
    its middle): ACDC numbers patients by pathology, so the first ``count`` would all share one."""
    ordered = sorted(train)
    if not 0 < count < len(ordered):
        raise SystemExit(f"--labelled {count}: needs 1 to {len(ordered) - 1} of the {len(ordered)} train patients "
                         f"(the rest are the unlabeled images)")
    return [ordered[int((i + 0.5) * len(ordered) / count)] for i in range(count)]


def trainer_schedules(budget: str) -> dict[str, Any]:
    """The schedule of each stage's trainer at the budget."""
    return {stage: schedule_of(trainer) for stage, trainer in TRAINERS[budget].items()}


def schedule_fields(budget: str) -> dict[str, dict[str, Any]]:
    """Each stage's schedule as the JSON records it (and ``--reuse`` compares it)."""
    return {stage: schedule._asdict() for stage, schedule in trainer_schedules(budget).items()}


def describe(budget: str) -> str:
    """The budget in one line: plans edits and the iterations of every row."""
    edits = BUDGETS[budget]
    s = {stage: schedule.epochs * schedule.iterations_per_epoch
         for stage, schedule in trainer_schedules(budget).items()}
    supervised = trainer_schedules(budget)["Supervised"]
    return (f"budget {budget}: plans {edits.plans}_{ARCHITECTURE} = nnU-Net's 2d plans with patch "
            f"{'x'.join(map(str, edits.patch_size))} (stages as nnU-Net plans them), batch {edits.batch_size}, "
            f"features / {edits.width_divisor}, then nnunetv2_mamba plans -a {ARCHITECTURE}; iterations: supervised "
            f"only {s['Supervised']}; DAE -> supervised {s['DAE']} + {s['Supervised']}; DAE -> consistency "
            f"{s['DAE']} + {s['Consistency']}; full recipe {s['DAE']} + {s['Consistency']} + {s['PseudoLabel']} "
            f"(segmentation iterations equal to supervised only; the DAE and the unlabeled batches' teacher pass are "
            f"extra compute); {supervised.val_iterations_per_epoch} validation iterations per epoch, mirroring "
            f"{'on' if supervised.mirroring else 'off'}")


# ---------------------------------------------------------------------------------------------------- preparation

def write_semisupervised_dataset(converted: Path, target: Path, labelled: list[str]) -> None:
    """The dense twin of the conversion with only the ``labelled`` train patients' slices labelled: the other train
    patients' images move to ``imagesTr_unlabeled`` and leave the split's training cases."""
    from nnunetv2_mamba.data.convert_h5 import patient_of
    from nnunetv2_mamba.data.unlabeled import move_to_unlabeled

    write_dense_twin(converted, target)
    splits = json.loads((target / "splits_final.json").read_text())
    unlabeled = [case for case in splits[FOLD]["train"] if patient_of(case) not in labelled]
    move_to_unlabeled(target, unlabeled)
    splits[FOLD]["train"] = [case for case in splits[FOLD]["train"] if patient_of(case) in labelled]
    (target / "splits_final.json").write_text(json.dumps(splits, indent=1))


def preprocess(labelled: int, processes: int) -> None:
    """nnU-Net's planning and preprocessing of the labelled cases, then ``preprocess-unlabeled``."""
    from nnunetv2_mamba.data.unlabeled import preprocess_unlabeled

    plan_and_preprocess(dataset_id(labelled), processes)
    preprocess_unlabeled(dataset_name(labelled), [CONFIGURATION], num_processes=processes)


def prepare(source: dict[str, Any], work: Path, settings: dict[int, list[str]], processes: int,
            say: Say) -> dict[str, float]:
    """Convert once; per labelled setting its dataset, planned and preprocessed; each step once."""
    raw = Path(os.environ["nnUNet_raw"])
    steps = {"convert": partial(convert, source, work)}
    for labelled, patients in settings.items():
        steps[f"dataset {dataset_name(labelled)}"] = partial(write_semisupervised_dataset, work / CONVERTED,
                                                             raw / dataset_name(labelled), patients)
        steps[f"preprocess {dataset_name(labelled)}"] = partial(preprocess, labelled, processes)
    return run_steps(work, source, steps, say)


# --------------------------------------------------------------------------------------------------------- rows

class Row(NamedTuple):
    """One row of the table: its ``--rows`` key, its name and the trainings that make its model, in order (the last
    one is predicted)."""

    key: str
    name: str
    chain: tuple[Training, ...]


ROW_KEYS = ("supervised", "dae-supervised", "consistency", "recipe")
SUPERVISED, RECIPE = "supervised only", "full recipe: DAE -> consistency -> pseudo labels"


def rows(budget: str, plans: str, dataset: str) -> list[Row]:
    """The table's rows for one labelled setting, in training order."""
    def training(stage: str, **kwargs: Any) -> Training:
        return Training(TRAINERS[budget][stage], plans, dataset, **kwargs)

    dae = training("DAE")
    consistency = training("Consistency", pretrained=dae)
    supervised_from_dae = training("Supervised", results="nnUNet_results_dae_init", pretrained=dae)
    return [Row("supervised", SUPERVISED, (training("Supervised"),)),
            Row("dae-supervised", "DAE -> supervised", (dae, supervised_from_dae)),
            Row("consistency", "DAE -> consistency (stage 2)", (dae, consistency)),
            Row("recipe", RECIPE, (dae, consistency, training("PseudoLabel")))]


def earlier_run(path: Path | None, budget: str, seeds: list[int], on: str, scored: list[str],
                labelled: dict[int, list[str]]) -> dict[str, Any] | None:
    """The ``--reuse`` JSON, checked to be the same measurement: budget, schedules, seeds, scored patients and, for
    the settings both runs have, labelled patients (an error names what differs). Whoever reuses it vouches that
    the trainers of the rows not measured again did not change."""
    if path is None:
        return None
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"--reuse {path}: cannot read it as JSON ({e})") from e
    expected = {"budget": describe(budget), "schedules": schedule_fields(budget), "seeds": seeds, "on": on,
                "scored patients": scored}
    for key, value in expected.items():
        if earlier.get(key) != value:
            raise SystemExit(f"--reuse {path}: its {key} {earlier.get(key)!r} differ from this run's {value!r}")
    for n, patients in labelled.items():
        setting = earlier["settings"].get(str(n))
        if setting is not None and setting["labelled patients"] != patients:
            raise SystemExit(f"--reuse {path}: its {n} labelled patients {setting['labelled patients']} differ from "
                             f"this run's {patients}")
    return earlier


def run_stamp(machine: dict[str, Any]) -> str:
    """A run's date and CPU, which the table names for each row when its rows come from several runs."""
    return f"{machine['date']} ({machine['cpu']})"


def measured_on(earlier: dict[str, Any], labelled: str, name: str) -> str:
    """When and where the earlier run's row ``name`` of a labelled setting was measured (that run may have reused
    it too)."""
    return earlier.get("measured", {}).get(labelled, {}).get(name, run_stamp(earlier["machine"]))


def earlier_curves(earlier: dict[str, Any] | None, labelled: int) -> dict[str, dict]:
    """The earlier run's first-seed curves if they are the ``labelled`` setting's (a run keeps its largest's)."""
    if earlier is None:
        return {}
    setting = earlier.get("curves_setting", max(map(int, earlier["settings"])))
    return earlier["curves_first_seed"] if setting == labelled else {}


def predict_and_evaluate(row: Row, seed_folder: Path, images: list[Path], labels: Path, folder: Path,
                         log_file: Path, device: torch.device, say: Say) -> dict:
    """The row's model (``CHECKPOINT``) predicts the scored slices into ``folder/predictions/<row>``, scored per
    volume into ``folder/evaluations/<row>.json``, which marks the row done; returns the evaluation."""
    from nnunetv2_mamba.utilities.output import output_to

    slug = "".join(c if c.isalnum() else "_" for c in row.name)
    evaluation = folder / "evaluations" / slug
    if evaluation.with_suffix(".json").is_file():
        return json.loads(evaluation.with_suffix(".json").read_text())
    model = row.chain[-1]
    say(f"{row.name}: nnUNetv2_predict -chk {CHECKPOINT} -tr {model.trainer} ({len(images)} slices)")
    with open(log_file, "a") as log, output_to(log):
        predict(predictor_for(model, seed_folder, device), images, folder / "predictions" / slug, None)
    dataset_json = Path(os.environ["nnUNet_raw"]) / model.dataset / "dataset.json"
    results = evaluate_volumes(folder / "predictions" / slug, labels, folder, dataset_json, evaluation)
    say(f"  per-volume foreground Dice {results['foreground_mean']['Dice']:.4f}")
    return results


def seed_rows(table: list[Row], results: dict[str, dict], timings: dict[Training, dict]) -> dict[str, dict]:
    """One seed's numbers per row: per-volume metrics, segmentation and DAE iterations, training seconds."""
    def iterations(row: Row, dae: bool) -> int:
        return sum(timings[t]["iterations"] for t in row.chain if t.trainer.startswith("nnUNetTrainerDAE") == dae)

    return {row.name: {**volume_metrics(results[row.name]), "segmentation iterations": iterations(row, False),
                       "DAE iterations": iterations(row, True),
                       "train s": sum(timings[t]["seconds"] for t in row.chain)} for row in table}


def segmentation_curves(row: Row, seed_folder: Path) -> dict[str, list[float]]:
    """Online validation Dice and training loss per epoch of the row's segmentation trainings one after the other
    (stage 3 continues stage 2)."""
    curves = [training_curves(t.model_folder(seed_folder)) for t in row.chain if not t.trainer.startswith(
        "nnUNetTrainerDAE")]
    return {key: [value for curve in curves for value in curve[key]] for key in ("mean_fg_dice", "train_losses")}


def gains(per_seed: dict[str, list[dict]], names: list[str]) -> list[dict[str, Any]]:
    """Each stage's gain in mean Dice over the row before it, and the full recipe's over supervised only: per-seed
    differences, mean ± sd."""
    pairs = [("DAE pre-training", names[1], names[0]), ("consistency (stage 2)", names[2], names[1]),
             ("pseudo labels (stage 3)", names[3], names[2]), ("full recipe over supervised only", names[3], names[0])]
    return [{"stage": stage, "gain": mean_sd([a["mean Dice"] - b["mean Dice"]
                                              for a, b in zip(per_seed[row], per_seed[before])])}
            for stage, row, before in pairs if row in per_seed and before in per_seed]


def targets(settings: dict[str, dict], seeds: int, scored: str) -> list[dict[str, Any]]:
    """The benchmark's target on the mean per-volume Dice over seeds."""
    name = f"full recipe >= supervised only + {TARGET_GAIN} with {TARGET_LABELLED} labelled patients"
    setting = settings.get(str(TARGET_LABELLED))
    if setting is None:
        return [{"target": name, "verdict": f"not run (--labelled without {TARGET_LABELLED})"}]
    summaries = setting["summaries"]
    missing = [row for row in (SUPERVISED, RECIPE) if row not in summaries]
    if missing:
        return [{"target": name, "verdict": f"not run (no row {' and '.join(missing)})"}]
    recipe, supervised = (summaries[row]["mean Dice"]["mean"] for row in (RECIPE, SUPERVISED))
    return [{"target": name, "full recipe": recipe, "supervised only": supervised,
             "verdict": verdict(recipe >= supervised + TARGET_GAIN, seeds, scored)}]


# ------------------------------------------------------------------------------------------------------- report

def tables(payload: dict[str, Any]) -> str:
    """The results table, the stage gains and the target of a run's JSON: its report's and the documentation's."""
    from common import format_table

    results = payload["results"]
    gain_rows = [{"labelled patients": labelled, "stage": g["stage"], "gain in mean Dice": cell(g["gain"], 3)}
                 for labelled, setting in payload["settings"].items() for g in setting["gains"]]
    checks = [{k: round(v, 3) if isinstance(v, float) else v for k, v in c.items()} for c in payload["targets"]]
    dates = {(labelled, name): date for labelled, setting in payload.get("measured", {}).items()
             for name, date in setting.items()}
    provenance = "" if len(set(dates.values())) < 2 else (
        "\n\nMeasured by different runs of this benchmark (`--rows` / `--reuse`; the trainers unchanged): "
        + "; ".join(f"{labelled} labelled, {name}: {date}" for (labelled, name), date in dates.items()) + ".")
    gain_table = "" if not gain_rows else ("\n\nGain of each stage (per-seed differences):\n\n"
                                           + format_table(gain_rows, list(gain_rows[0])))
    return (format_table(results, list(results[0])) + gain_table + "\n\nTarget (mean per-volume Dice over seeds):\n\n"
            + format_table(checks, ["target", "full recipe", "supervised only", "verdict"]) + provenance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, DEFAULT_WORK)
    parser.add_argument("--labelled", type=int, nargs="+", default=[3, 7],
                        help="labelled train patients, one setting each (default: %(default)s)")
    parser.add_argument("--rows", nargs="+", choices=ROW_KEYS, default=list(ROW_KEYS),
                        help="the rows to train and score (default: all)")
    parser.add_argument("--reuse", type=Path,
                        help="an earlier run's JSON (same budget, seeds and scored patients): its rows outside "
                             "--rows and its settings outside --labelled join this run's table")
    args = parser.parse_args()
    run = start(args, describe(args.budget))
    import torch
    from common import machine_info, write_json

    from nnunetv2_mamba.data.convert_h5 import ACDC_LABELS

    started = time.perf_counter()
    splits_file = args.splits or args.data / DEFAULT_SPLITS
    source = conversion_source(args.data, splits_file, args.patients)
    labelled = {n: choose_labelled(source["splits"]["train"], n) for n in sorted(set(args.labelled))}
    earlier = earlier_run(args.reuse, args.budget, args.seeds, args.on, source["splits"][args.on], labelled)
    reused_settings = earlier["settings"] if earlier else {}
    preparation = prepare(source, run.work, labelled, args.processes, run.say)
    machine = machine_info(torch.get_num_threads())
    settings: dict[str, dict] = {}
    dates: dict[str, dict[str, str]] = {}
    curves: dict[int, dict[str, dict]] = {}
    for n in labelled:
        dataset = dataset_name(n)
        table = rows(args.budget, write_network_plans(dataset, BUDGETS[args.budget], ARCHITECTURE), dataset)
        images, labels = scored_set(args.on, run.work, dataset)
        reused = reused_settings.get(str(n), {}).get("per_seed", {})
        measured = [row for row in table if row.key in args.rows]
        present = [row for row in table if row in measured or row.name in reused]
        per_seed: dict[str, list[dict]] = {row.name: [] if row in measured else reused[row.name] for row in present}
        for seed in args.seeds:
            seed_folder, scored = run.folder / f"seed{seed}", run.folder / args.on / f"seed{seed}" / f"{n}L"
            timings = {t: train(t, seed, seed_folder, run.logs, run.device, run.say)
                       for t in dict.fromkeys(t for row in measured for t in row.chain)}
            results = {row.name: predict_and_evaluate(row, seed_folder, images, labels, scored,
                                                      run.logs / f"predict_seed{seed}_{n}L.log", run.device, run.say)
                       for row in measured}
            for name, values in seed_rows(measured, results, timings).items():
                per_seed[name].append(values)
        settings[str(n)] = {"labelled patients": labelled[n], "dataset": dataset, "plans": table[0].chain[0].plans,
                            "summaries": {name: summarise(values) for name, values in per_seed.items()},
                            "per_seed": per_seed, "gains": gains(per_seed, [row.name for row in table])}
        dates[str(n)] = {row.name: run_stamp(machine) if row in measured else measured_on(earlier, str(n), row.name)
                         for row in present}
        reused_curves = earlier_curves(earlier, n)
        curves[n] = {row.name: segmentation_curves(row, run.folder / f"seed{args.seeds[0]}") if row in measured
                     else reused_curves[row.name] for row in present if row in measured or row.name in reused_curves}
    for n, setting in reused_settings.items():
        if int(n) not in labelled:
            settings[n], curves[int(n)] = setting, earlier_curves(earlier, int(n))
            dates[n] = {name: measured_on(earlier, n, name) for name in setting["per_seed"]}
    settings = dict(sorted(settings.items(), key=lambda item: int(item[0])))
    curves_setting = max(curves, key=lambda n: (bool(curves[n]), n))  # the largest setting with curves

    results = [{"labelled": n, "method": name, **{key: cell(summary, COLUMN_DIGITS.get(key, 3))
                                                  for key, summary in summaries.items()}}
               for n, setting in settings.items() for name, summaries in setting["summaries"].items()]
    checks = targets(settings, len(args.seeds), args.on)
    name = f"acdc_semisupervised_{args.budget}_{args.on}"
    scored_patients = sorted({case_name(image).split("_frame")[0] for image in images})
    payload = {"budget": describe(args.budget), "seeds": args.seeds, "splits": str(splits_file), "on": args.on,
               "scored patients": scored_patients, "slices": len(images), "checkpoint": CHECKPOINT,
               "schedules": schedule_fields(args.budget),
               "preparation_seconds": preparation, "machine": machine, "measured": dates, "results": results,
               "settings": settings, "targets": checks, "curves_setting": curves_setting,
               "curves_first_seed": curves[curves_setting]}
    markdown = (f"{describe(args.budget)}\n\nScored per volume on the {args.on} patients "
                f"({', '.join(scored_patients)}; {len(images)} 2D slices stacked into volumes at the converter's "
                f"spacing), predicted with {CHECKPOINT} (selected on the val patients); mean ± sd over seeds "
                f"{args.seeds}. Labelled patients per setting: "
                + "; ".join(f"{n}: {', '.join(s['labelled patients'])}" for n, s in settings.items())
                + ". train s: wall-clock of the row's trainings' epochs (the DAE counted in every row it starts). "
                  "Plot: the first seed's curves are those of the largest setting, per segmentation iteration.\n\n"
                + tables(payload))
    (run.folder / f"{name}.md").write_text(markdown + "\n")
    write_json(name, payload, run.folder)
    plot([{"method": f"{n} labelled: {row}", **summary} for n, setting in settings.items()
          for row, summary in setting["summaries"].items()], [c for c, value in ACDC_LABELS.items() if value],
         curves[curves_setting], trainer_schedules(args.budget)["Supervised"].iterations_per_epoch,
         run.folder / f"{name}.png")
    run.say(f"\n{markdown}\n\nwrote {run.folder / name}.md, .json and .png "
            f"({time.perf_counter() - started:.0f} s this run)")


if __name__ == "__main__":
    main()

"""Do WeakMamba's member weights, chosen on held-out patients, beat the plain mean softmax?

Reads a work folder of ``benchmarks/acdc_scribble.py`` after its run, predicts the test slices once more with each
WeakMamba network alone and the probabilities saved (``checkpoint_best.pth``), and cross-fits
:func:`~nnunetv2_mamba.inference.ensemble_weights.choose_weights` over the test patients: they are dealt into
``--folds`` groups, each group is segmented with the weights chosen on the other groups' dense labels, and the union
is evaluated like the benchmark's rows (``evaluate_folders``). No test patient's labels choose its own weights.
Beside it: the equal weights (the mean of the members' softmaxes, which differs slightly from the benchmark's
ensemble row: there nnU-Net's sliding window averages the ensemble's log-probabilities) and the weights chosen on
every test patient (an optimistic bound, not a result). The predictions take about 3 minutes on 2 CPU cores, the
choices a few more.

    python benchmarks/ensemble_weights.py --work benchmarks/results/acdc_scribble --budget cpu
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import torch

from acdc_scribble import (BUDGETS, CHECKPOINT, DATASETS, DEFAULT_WORK, FOLD, IMAGE_SUFFIX, Method, methods,
                           test_set)


def predict_probabilities(members: list[Method], model_folder: Path, images: list[list[str]], folder: Path,
                          log: Path, device: torch.device) -> list[Path]:
    """``folder/<member>/CASE.npz`` (nnU-Net's saved probabilities) for each WeakMamba network alone (rows of one
    training); members already complete are kept. nnU-Net's messages go to ``log``."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunetv2_mamba.utilities.output import output_to

    outputs = [folder / row.slug for row in members]
    todo = [(row, output) for row, output in zip(members, outputs) if len(list(output.glob("*.npz"))) < len(images)]
    if todo:
        with open(log, "a") as stream, output_to(stream):
            predictor = nnUNetPredictor(device=device, perform_everything_on_device=device.type == "cuda",
                                        allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(str(model_folder), (FOLD,), CHECKPOINT)
    for row, output in todo:
        print(f"{row.name}: predicting {len(images)} cases with probabilities", flush=True)
        predictor.network.inference_output = row.member
        shutil.rmtree(output, ignore_errors=True)
        output.mkdir(parents=True)
        with open(log, "a") as stream, output_to(stream):
            predictor.predict_from_files_sequential(
                images, [str(output / Path(case[0]).name[:-len(IMAGE_SUFFIX)]) for case in images],
                save_probabilities=True)
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=BUDGETS, default="cpu", help="(default: %(default)s)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help="work folder of benchmarks/acdc_scribble.py (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the benchmark's seed whose WeakMamba training to weight (default: %(default)s)")
    parser.add_argument("--on", choices=("test", "val"), default="test",
                        help="the benchmark's scored patients (default: %(default)s)")
    parser.add_argument("--test-images", type=Path, help="the benchmark's --test-images (instead of --on)")
    parser.add_argument("--test-labels", type=Path, help="the benchmark's --test-labels")
    parser.add_argument("--folds", type=int, default=2, help="groups of test patients (default: %(default)s)")
    parser.add_argument("--step", type=float, default=0.1, help="grid step of the weights (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    args = parser.parse_args()
    if (args.test_images is None) != (args.test_labels is None):
        parser.error("--test-images and --test-labels go together")
    if args.folds < 2:
        parser.error("--folds must be 2 or more: a group's weights are chosen on the other groups")

    from common import format_table, write_json

    from nnunetv2_mamba.data.convert_h5 import patient_of
    from nnunetv2_mamba.utilities.nnunet_environment import set_environment
    from nnunetv2_mamba.evaluation.metrics import evaluate_folders
    from nnunetv2_mamba.inference.ensemble_weights import (EnsembleWeights, choose_weights, ensemble_folders,
                                                           labelled_cases)

    budget = BUDGETS[args.budget]
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    work = args.work.resolve()
    set_environment(work)
    folder = work / budget.name
    test_name, images, labels = test_set(args.on, args.test_images, args.test_labels)
    scored = folder / test_name / f"seed{args.seed}"
    rows = methods(budget, ablation=False)
    weak = next(row for row in rows if row.member is None and row.training.trainer == budget.weak_mamba.__name__)
    members = [row for row in rows if row.training == weak.training and row.member]
    sources = predict_probabilities(members, weak.training.model_folder(folder / f"seed{args.seed}"), images,
                                    scored / "probabilities",
                                    work / "logs" / "predict_probabilities.log", device)
    dataset_json = Path(os.environ["nnUNet_raw"]) / DATASETS[False] / "dataset.json"
    cases = sorted(Path(case[0]).name[:-len(IMAGE_SUFFIX)] for case in images)
    patients = sorted({patient_of(case) for case in cases})
    if len(patients) < args.folds:
        raise SystemExit(f"{labels}: {len(patients)} test patients ({', '.join(patients)}) cannot make "
                         f"{args.folds} groups: pass fewer --folds (2 or more) or more test patients")
    groups = [[c for c in cases if patient_of(c) in patients[k::args.folds]] for k in range(args.folds)]

    print(f"{weak.name}: choosing weights of {', '.join(m.member for m in members)}", flush=True)
    labelled = dict(zip(cases, labelled_cases(sources, labels, cases)))
    chosen = [choose_weights([labelled[c] for c in cases if c not in group], args.step) for group in groups]
    for k, (weights, dice) in enumerate(chosen):
        print(f"  chosen without group {k}: {weights.values} (Dice {dice:.4f} there)", flush=True)
    everyone = choose_weights(list(labelled.values()), args.step)
    del labelled
    table = []
    for kind, parts in {"equal weights": [(EnsembleWeights.equal(len(sources)), cases)],
                        "cross-fitted": [(w, group) for (w, _), group in zip(chosen, groups)],
                        "chosen on the test patients": [(everyone[0], cases)]}.items():
        output = scored / "predictions" / f"{weak.slug}__{kind.replace(' ', '_').replace('-', '_')}"
        shutil.rmtree(output, ignore_errors=True)
        for weights, part in parts:
            ensemble_folders(sources, output, weights, part)
        result = evaluate_folders(labels, output, dataset_json, use_spacing=False, progress=False)
        table.append({"method": weak.name, "weights": kind,
                      **{c["name"]: c["mean"]["Dice"] for label, c in result["per_class"].items() if int(label) != 0},
                      "mean Dice": result["foreground_mean"]["Dice"], "HD95 (px)": result["foreground_mean"]["HD95"]})
    details = {"members": [m.member for m in members],
               "groups": [sorted({patient_of(c) for c in group}) for group in groups],
               "chosen": [{"weights": w.values, "dice": d} for w, d in chosen],
               "chosen on the test patients": {"weights": everyone[0].values, "dice": everyone[1]}}
    markdown = format_table(table, list(table[0]))
    name = f"ensemble_weights_{budget.name}_{test_name}_seed{args.seed}"
    (folder / f"{name}.md").write_text(markdown + "\n")
    write_json(name, {"budget": budget.name, "folds": args.folds, "step": args.step, "results": table, **details},
               folder)
    print(f"\n{markdown}\n\nwrote {folder / name}.md and .json")


if __name__ == "__main__":
    main()

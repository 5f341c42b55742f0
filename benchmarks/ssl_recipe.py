"""U-Mamba2-SSL's recipe against supervised training with few labels, on a CPU.

The synthetic 2D dataset (nnunetv2_mamba.data.synthetic, 64 x 64 pixels) with 4 labelled, 12 unlabeled and 8 test
cases; a U-Mamba2 shrunk for a CPU (the plans of ``nnunetv2_mamba plans -a UMambaBot2`` with a quarter of the
features and one block per stage); the ``_cpu`` schedules of nnunetv2_mamba.training.variants.recipes, fold ``all``:

- supervised: ``nnUNetTrainerSupervised_cpu`` (15 epochs of 25 iterations);
- SSL: ``nnUNetTrainerDAE_cpu`` (10 epochs) -> ``nnUNetTrainerConsistency_cpu`` (10 epochs, from the DAE's weights)
  -> ``nnUNetTrainerPseudoLabel_cpu`` (5 epochs, continuing the consistency model): as many segmentation epochs.

Both are predicted with nnUNetv2_predict and evaluated on the test cases with ``nnunetv2_mamba evaluate``'s metrics.
Prints a markdown table and writes benchmarks/results/ssl_recipe.json. Takes tens of minutes on 2 CPU cores.

    python benchmarks/ssl_recipe.py [--work DIR] [--seed 0]

Results: documentation/benchmarks.md ("The semi-supervised recipe"), rendered from
documentation/results/ssl_recipe_seed*.json; readings: documentation/case_studies/ssl.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from common import (RESULTS_DIR, format_table, machine_info, nnunet_environment, planning_environment,
                    run_logged, shrink_plans, write_json)

from nnunetv2_mamba.data.synthetic import write_synthetic_dataset
from nnunetv2_mamba.data.unlabeled import move_to_unlabeled
from nnunetv2_mamba.evaluation.metrics import evaluate_folders

DATASET_ID, DATASET = "995", "Dataset995_SSLRecipe"
PLANS = "nnUNetPlans_UMambaBot2Small"
LABELED, UNLABELED, TEST = 4, 12, 8
ARMS = {"supervised": ["nnUNetTrainerSupervised_cpu"],
        "ssl": ["nnUNetTrainerDAE_cpu", "nnUNetTrainerConsistency_cpu", "nnUNetTrainerPseudoLabel_cpu"]}


def prepare(work: Path, env: dict, seed: int) -> None:
    raw = write_synthetic_dataset(work / "raw" / DATASET, dims=2, dense=True, num_training=LABELED + UNLABELED,
                                  num_test=TEST, seed=seed)
    move_to_unlabeled(raw, [f"case_{i:03d}" for i in range(LABELED, LABELED + UNLABELED)])
    run_logged(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "-np", "2"],
               planning_environment(env), work / "plan.log")
    cli = [sys.executable, "-m", "nnunetv2_mamba.cli"]
    run_logged(cli + ["plans", "-d", DATASET_ID, "-a", "UMambaBot2"], env, work / "plans.log")
    base = work / "preprocessed" / DATASET
    shrink_plans(base / "nnUNetPlans_UMambaBot2.json", base / f"{PLANS}.json", 4)
    run_logged(cli + ["preprocess-unlabeled", "-d", DATASET_ID, "-c", "2d"], env, work / "unlabeled.log")


def train_and_predict(arm: str, work: Path, env: dict) -> dict:
    seconds = {}
    for trainer in ARMS[arm]:
        command = ["nnUNetv2_train", DATASET_ID, "2d", "all", "-p", PLANS, "-tr", trainer, "-device", "cpu"]
        if trainer == "nnUNetTrainerConsistency_cpu":  # starts from the DAE; the pseudo-label stage continues itself
            dae = work / "results" / DATASET / f"nnUNetTrainerDAE_cpu__{PLANS}__2d" / "fold_all"
            command += ["-pretrained_weights", str(dae / "checkpoint_final.pth")]
        seconds[trainer] = run_logged(command, env, work / f"{trainer}.log")
    predictions = work / f"predictions_{arm}"
    run_logged(["nnUNetv2_predict", "-i", str(work / "raw" / DATASET / "imagesTs"), "-o", str(predictions), "-d",
                DATASET_ID, "-c", "2d", "-p", PLANS, "-tr", ARMS[arm][-1], "-f", "all", "-device", "cpu", "-npp", "1",
                "-nps", "1"], env, work / f"predict_{arm}.log")
    results = evaluate_folders(work / "raw" / DATASET / "labelsTs", predictions, predictions / "dataset.json",
                               progress=False)
    return {"training_seconds": seconds, "per_class": results["per_class"],
            "foreground_mean": results["foreground_mean"]}


def tables(payload: dict) -> str:
    """Dice per class, foreground Dice and HD95, training seconds per arm: the printed table and
    documentation/benchmarks.md's."""
    rows = [{"arm": arm,
             **{c["name"]: c["mean"]["Dice"] for label, c in result["per_class"].items() if int(label) != 0},
             "foreground Dice": result["foreground_mean"]["Dice"], "foreground HD95": result["foreground_mean"]["HD95"],
             "train s": sum(result["training_seconds"].values())} for arm, result in payload["arms"].items()]
    return format_table(rows, list(rows[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=RESULTS_DIR / "ssl_recipe_work",
                        help="working folder, replaced (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset (default: %(default)s)")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    env = nnunet_environment(args.work)
    prepare(args.work, env, args.seed)
    arms = {arm: train_and_predict(arm, args.work, env) for arm in ARMS}
    payload = {"labeled": LABELED, "unlabeled": UNLABELED, "test": TEST, "seed": args.seed, "plans": PLANS,
               "machine": machine_info(torch.get_num_threads()), "arms": arms}
    print(tables(payload))
    print(f"wrote {write_json('ssl_recipe', payload)}")


if __name__ == "__main__":
    main()

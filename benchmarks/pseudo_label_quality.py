"""How good are Weak-Mamba-UNet's pseudo labels, and where do they err?

Reads a work folder of ``benchmarks/acdc_scribble.py`` after WeakMamba trained there and scores, on random crops of
the train patients (the budget's patch size, nnU-Net's preprocessed images, uniformly placed; the training's sampler
also oversamples foreground), each network's prediction and the pseudo labels of the trainer's rules against the
dense labels, which training never sees: Dice per class and mean, and as shares of the true foreground area the
pixels missed (FN: within 3 pixels of a structure's boundary, deeper, or in structures missed entirely) and the false
foreground (FP). A pseudo label with a margin (``pseudo_label_margin``) is scored on the pixels it supervises; its
"left out" column is the share of the true foreground in the unsupervised band. About a minute on 2 CPU cores.

    python benchmarks/pseudo_label_quality.py --work benchmarks/results/acdc_scribble --budget cpu
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from acdc_scribble import BUDGETS, CHECKPOINT, DATASETS, DEFAULT_WORK, FOLD, Training

SHALLOW = 3  # pixels: a miss this close to the true boundary is a boundary error


def random_crops(work: Path, patch: list[int], count: int, seed: int) -> dict[str, torch.Tensor]:
    """``count`` crops of the train split's preprocessed images, scribbles and dense labels (zero-padded where a
    slice is smaller than ``patch``; labels outside the image's nonzero region -1 -> 0, as nnU-Net's training
    transforms do): {"image", "scribble", "dense"}, each (count, channels, *patch)."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    def folder(dense: bool) -> Path:
        return work / "nnUNet_preprocessed" / DATASETS[dense]

    keys = json.loads((folder(False) / "splits_final.json").read_text())[FOLD]["train"]
    scribbled = nnUNetDatasetBlosc2(str(folder(False) / "nnUNetPlans_2d"), keys)
    dense = nnUNetDatasetBlosc2(str(folder(True) / "nnUNetPlans_2d"), keys)
    rng = np.random.default_rng(seed)
    crops: dict[str, list[np.ndarray]] = {"image": [], "scribble": [], "dense": []}
    for key in rng.choice(keys, count):
        image, scribble = (np.asarray(a)[:, 0] for a in scribbled.load_case(key)[:2])
        truth = np.asarray(dense.load_case(key)[1])[:, 0]
        scribble, truth = (np.maximum(labels, 0) for labels in (scribble, truth))
        corner = [rng.integers(0, max(n - p, 0) + 1) for n, p in zip(image.shape[1:], patch)]
        window = (slice(None),) + tuple(slice(c, c + p) for c, p in zip(corner, patch))
        for name, array in (("image", image), ("scribble", scribble), ("dense", truth)):
            part = array[window]
            crops[name].append(np.pad(part, [(0, 0)] + [(0, p - n) for p, n in zip(patch, part.shape[1:])]))
    return {name: torch.from_numpy(np.stack(arrays)) for name, arrays in crops.items()}


def score(labels: torch.Tensor, truth: torch.Tensor, classes: dict[int, str],
          supervised: torch.Tensor) -> dict[str, float]:
    """Dice per class and mean over the ``supervised`` pixels, and the error shares of the module docstring."""
    labels, truth, supervised = (t[:, 0].numpy() for t in (labels, truth, supervised))
    true_area = sum(int((truth == c).sum()) for c in classes)
    row: dict[str, float] = {}
    counts = dict.fromkeys(("FN", f"FN <= {SHALLOW} px", f"FN > {SHALLOW} px", "FN whole", "FP", "left out"), 0.0)
    for c in classes:
        predicted, true = (labels == c) & supervised, (truth == c) & supervised
        row[classes[c]] = 2 * (predicted & true).sum() / max(predicted.sum() + true.sum(), 1)
        counts["FP"] += (predicted & ~true).sum()
        counts["left out"] += ((truth == c) & ~supervised).sum()
        for sample, label, scored in zip(truth == c, labels == c, supervised):
            structures, count = ndimage.label(sample, np.ones((3,) * sample.ndim))
            missed = sample & ~label & scored
            whole = [i for i in range(1, count + 1) if not label[structures == i].any()]
            entirely = np.isin(structures, whole)
            depth = ndimage.distance_transform_edt(np.pad(sample, 1))[(slice(1, -1),) * sample.ndim]
            counts["FN whole"] += (entirely & scored).sum()
            counts[f"FN <= {SHALLOW} px"] += (missed & ~entirely & (depth <= SHALLOW)).sum()
            counts[f"FN > {SHALLOW} px"] += (missed & ~entirely & (depth > SHALLOW)).sum()
    counts["FN"] = counts["FN whole"] + counts[f"FN <= {SHALLOW} px"] + counts[f"FN > {SHALLOW} px"]
    row["mean Dice"] = float(np.mean([row[name] for name in classes.values()]))
    return {**{k: round(float(v), 3) for k, v in row.items()},
            **{k: round(float(v) / max(true_area, 1), 3) for k, v in counts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=BUDGETS, default="cpu", help="(default: %(default)s)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help="work folder of benchmarks/acdc_scribble.py (default: %(default)s)")
    parser.add_argument("--model", type=Path, help="WeakMamba's model folder, e.g. an archived one (default: the "
                                                   "work folder's, for the budget and --training-seed)")
    parser.add_argument("--training-seed", type=int, default=0,
                        help="the benchmark's seed whose WeakMamba training to score (default: %(default)s)")
    parser.add_argument("--crops", type=int, default=384, help="(default: %(default)s)")
    parser.add_argument("--margins", type=int, nargs="+", default=[1, 2],
                        help="pseudo-label margins to score (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--out", type=Path, help="JSON file (default: WORK/BUDGET/pseudo_label_quality_BUDGET.json)")
    args = parser.parse_args()

    from common import format_table, write_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunetv2_mamba.utilities.nnunet_environment import set_environment
    from nnunetv2_mamba.nets.network_ensemble import full_resolution
    from nnunetv2_mamba.training.loss.cross_supervision_loss import (CrossSupervisionLoss, clean_pseudo_label,
                                                                near_class_boundary, pseudo_label)

    budget = BUDGETS[args.budget]
    work = args.work.resolve()
    set_environment(work)
    trainer = budget.weak_mamba
    model = (args.model.resolve() if args.model else Training(trainer.__name__, budget.plans).model_folder(
        work / budget.name / f"seed{args.training_seed}"))
    if not (model / f"fold_{FOLD}" / CHECKPOINT).is_file():
        raise SystemExit(f"{model / f'fold_{FOLD}' / CHECKPOINT} does not exist: run benchmarks/acdc_scribble.py "
                         f"--budget {budget.name} --work {args.work} first")
    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False)
    predictor.initialize_from_trained_model_folder(str(model), (FOLD,), CHECKPOINT)
    members = predictor.network.members
    patch = list(predictor.configuration_manager.patch_size)
    crops = random_crops(work, patch, args.crops, args.seed)
    probabilities = {name: [] for name in members}
    predictor.network.eval()
    with torch.no_grad():
        for start in range(0, args.crops, 16):
            for name, member in members.items():
                logits = full_resolution(member(crops["image"][start:start + 16].float()))
                probabilities[name].append(logits.float().softmax(1))
    probabilities = {name: torch.cat(p) for name, p in probabilities.items()}
    num_classes = next(iter(probabilities.values())).shape[1]
    classes = {int(v): k for k, v in predictor.dataset_json["labels"].items() if k != "ignore" and int(v) > 0}

    torch.manual_seed(args.seed)  # one draw of the training's pseudo-label weights per crop
    draw = CrossSupervisionLoss(None).draw_weights
    random_mix = torch.cat([pseudo_label([p[i:i + 1] for p in probabilities.values()],
                                         draw(len(members), torch.device("cpu"))) for i in range(args.crops)])
    equal_mix = pseudo_label(list(probabilities.values()), torch.ones(len(members)))
    scribbles = crops["scribble"]

    def clean(labels: torch.Tensor, keep_scribbles: bool = False) -> torch.Tensor:
        return clean_pseudo_label(labels, scribbles, num_classes, trainer.pseudo_label_components, keep_scribbles,
                                  predictor.label_manager.ignore_label)

    cleaning = f", {trainer.pseudo_label_components} components" if trainer.pseudo_label_components else ""
    everywhere = torch.ones_like(scribbles, dtype=torch.bool)
    keeps = trainer.pseudo_label_keeps_scribbles
    kept = {True: ", scribbles kept", False: ""}
    trained = clean(random_mix, keeps)  # what the trainer supervises with, before its margin
    candidates: dict[str, tuple[torch.Tensor, torch.Tensor]] = {
        **{f"{name} alone": (p.argmax(1, keepdim=True), everywhere) for name, p in probabilities.items()},
        "mix (random weights)": (random_mix, everywhere),
        f"mix (random weights){kept[keeps]}{cleaning}": (trained, everywhere),
        f"mix (random weights){kept[not keeps]}{cleaning}": (clean(random_mix, not keeps), everywhere),
        f"mix (equal weights){cleaning}": (clean(equal_mix), everywhere),
        f"true labels{cleaning}": (clean(crops["dense"].long()), everywhere),
        **{f"mix (random weights){kept[keeps]}{cleaning}, margin {margin}":
           (trained, ~near_class_boundary(trained, num_classes, margin)) for margin in args.margins},
    }
    rows = [{"pseudo label": name, **score(labels, crops["dense"], classes, supervised)}
            for name, (labels, supervised) in candidates.items()]
    print(f"{trainer.__name__} ({model}, {CHECKPOINT}), {args.crops} random {'x'.join(map(str, patch))} crops of the "
          f"train patients; Dice per class and mean; errors as shares of the true foreground area\n")
    print(format_table(rows, list(rows[0])))
    out = args.out or work / budget.name / f"pseudo_label_quality_{budget.name}.json"
    write_json(out.stem, {"model": str(model), "trainer": trainer.__name__, "checkpoint": CHECKPOINT,
                          "crops": args.crops, "patch": patch, "seed": args.seed, "rows": rows}, out.parent)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    os.environ.setdefault("nnUNet_compile", "false")
    main()

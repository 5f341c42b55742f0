"""Choose the weights of an ensemble's members on labelled cases that are not your test cases (e.g. the fold's
validation cases), from each member's probabilities: ``nnUNetv2_predict --save_probabilities`` into one folder per
member (for nnUNetTrainerWeakMamba: ``nnUNet_ensemble_member=cnn`` / ``vit`` / ``mamba``), or a training's
validation folders after ``nnUNetv2_train ... --npz``. Writes a JSON for ``nnunetv2_mamba ensemble``. See
documentation/scribble_supervision.md.

Example:
  nnunetv2_mamba ensemble-weights -i fold_0/validation_cnn fold_0/validation_vit fold_0/validation_mamba \\
      -r $nnUNet_raw/Dataset027_X/labelsTr_dense -o weights.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "choose the weights of an ensemble's members on labelled held-out cases"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", type=Path, nargs="+", required=True,
                        help="one folder of saved probabilities (CASE.npz) per member, two or more")
    parser.add_argument("-r", "--references", type=Path, required=True, help="folder of the cases' dense labels")
    parser.add_argument("-o", "--output", type=Path, required=True, help="weights JSON to write")
    parser.add_argument("--step", type=float, default=0.1, help="grid step of the weights (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from nnunetv2_mamba.inference.ensemble_weights import EnsembleWeights, choose_weights, labelled_cases, \
        weights_dice

    if len(args.input) < 2:
        print("error: weights are chosen among two or more members; pass one folder per member")
        return 2
    try:
        cases = labelled_cases(args.input, args.references)
        weights, dice = choose_weights(cases, args.step)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}")
        return 2
    plain = weights_dice(cases, EnsembleWeights.equal(len(args.input)))
    weights.save(args.output, members=[str(f) for f in args.input], dice=dice, plain_dice=plain, cases=len(cases),
                 references=str(args.references))
    print(f"weights {', '.join(f'{f.name} {w:g}' for f, w in zip(args.input, weights.values))}: mean foreground "
          f"Dice {dice:.4f} on {len(cases)} cases (equal weights {plain:.4f})")
    print(f"wrote {args.output}")
    return 0

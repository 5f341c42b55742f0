"""Segment cases with an ensemble of members' saved probabilities (``nnUNetv2_predict --save_probabilities``, one
folder per member), weighted as ``nnunetv2_mamba ensemble-weights`` chose; without weights, the plain mean softmax
(as ``nnUNetv2_ensemble``). The members must be given in the order the weights were chosen in.

Example:
  nnunetv2_mamba ensemble -i test_cnn/ test_vit/ test_mamba/ -o test_ensemble/ -w weights.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "segment from members' saved probabilities with a weighted ensemble"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", type=Path, nargs="+", required=True,
                        help="one folder of saved probabilities (CASE.npz, CASE.pkl) per member")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the segmentations")
    parser.add_argument("-w", "--weights", type=Path, help="JSON of ensemble-weights (default: equal weights)")


def run(args: argparse.Namespace) -> int:
    from nnunetv2_mamba.inference.ensemble_weights import EnsembleWeights, ensemble_folders

    try:
        weights = EnsembleWeights.load(args.weights) if args.weights else EnsembleWeights.equal(len(args.input))
        if len(weights.values) != len(args.input):
            raise ValueError(f"{args.weights} has {len(weights.values)} weights for {len(args.input)} member folders")
        written = ensemble_folders(args.input, args.output, weights)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}")
        return 2
    print(f"wrote {len(written)} segmentations to {args.output} (weights {', '.join(map(str, weights.values))})")
    return 0

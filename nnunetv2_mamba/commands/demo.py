"""Train and evaluate every architecture through nnU-Net on a synthetic dataset, in a few minutes on a CPU:
dataset -> nnU-Net planning and preprocessing -> our plans -> training -> nnUNetPredictor -> Dice, then a table
(architecture, parameters, seconds per iteration, test Dice). Everything lands in one folder with its own
nnUNet_raw/preprocessed/results, which you can inspect or reuse with the nnU-Net commands the demo prints.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

HELP = "train and evaluate every architecture on a synthetic dataset through nnU-Net (minutes on a CPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--folder", type=Path, default=None,
                        help="where to work (default: a new temporary folder, kept afterwards)")
    parser.add_argument("--only", nargs="+", default=None, metavar="ARCH",
                        help="run only these architectures (names as in the table, e.g. UMambaBot2 'nnU-Net U-Net')")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--width-divisor", type=int, default=None,
                        help="divide every network's widths by this (default: 4 on a CPU, 1 on a GPU)")


def run(args: argparse.Namespace) -> int:
    from nnunetv2_mamba.demo import RUNS, run_demo

    runs = [r for r in RUNS if args.only is None or r.name in args.only]
    if not runs:
        print(f"error: --only {args.only} matches none of {sorted({r.name for r in RUNS})}")
        return 2
    folder = args.folder or Path(tempfile.mkdtemp(prefix="nnunetv2_mamba_demo_"))
    folder.mkdir(parents=True, exist_ok=True)
    run_demo(folder, runs, args.device, args.width_divisor)
    return 0

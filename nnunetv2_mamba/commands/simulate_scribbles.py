"""Simulate scribbles for a densely labeled nnU-Net raw dataset, giving a scribble dataset to try scribble
supervision on (and to compare with full supervision on the same images).

One stroke per connected component of every class, background included, slice by slice (3D volumes along their
coarsest axis): a contiguous part (--fraction) of the component's centre line (a circle inside compact structures),
--width pixels wide, always inside the component; background is scribbled in a band around the foreground. The
dense labels are kept in labelsTr_dense. Seeded per case: the same --seed gives the same scribbles. Details:
documentation/scribble_supervision.md.

Example:
  nnunetv2_mamba simulate-scribbles -i Dataset004_Hippocampus -d 504
"""

from __future__ import annotations

import argparse

from nnunetv2_mamba.commands._arguments import add_output_dataset_arguments, output_dataset_folder
from nnunetv2_mamba.data.scribble_dataset import raw_dataset_folder
from nnunetv2_mamba.data.simulate_scribbles import ScribbleStyle, simulate_scribbles

HELP = "turn a dense nnU-Net raw dataset into a scribble dataset with simulated scribbles"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = ScribbleStyle()
    parser.add_argument("-i", "--input", required=True,
                        help="the dense raw dataset: id, name (Dataset004_Hippocampus) or folder")
    add_output_dataset_arguments(parser, "the input's name + Scribbles")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--fraction", type=float, default=default.fraction,
                        help="share of each component's centre line drawn (default: %(default)s)")
    parser.add_argument("--width", type=int, default=default.width,
                        help="stroke width in pixels (default: %(default)s)")
    parser.add_argument("--background-band", type=float, default=default.background_band,
                        help="width of the band around the foreground where background is scribbled, in units of "
                             "the foreground's equivalent radius (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    source = raw_dataset_folder(args.input)
    style = ScribbleStyle(args.fraction, args.width, args.background_band)
    target = output_dataset_folder(args, source.name.split("_", 1)[-1] + "Scribbles")
    target = simulate_scribbles(source, target, args.seed, style, args.overwrite)
    print(f"wrote {target}")

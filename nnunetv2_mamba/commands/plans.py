"""Write nnU-Net plans for one of our architectures next to a dataset's existing plans, e.g.

    nnunetv2_mamba plans -d 501 -a UMambaBot2            # -> nnUNetPlans_UMambaBot2.json
    nnUNetv2_train 501 3d_fullres 0 -p nnUNetPlans_UMambaBot2

The new plans reuse the preprocessed data of the base plans (same data_identifier); each configuration's topology is
translated into the network's arch_kwargs. Configurations the architecture cannot run (e.g. 2d for SegMamba) are
skipped with a note, or refused if named with -c. See documentation/plans.md.
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "write nnUNetPlans_<Arch>.json for one of our architectures (reuses the preprocessed data)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunetv2_mamba.plans import architectures

    parser.add_argument("-d", "--dataset", required=True, help="dataset ID or name (e.g. 501 or Dataset501_Name)")
    parser.add_argument("-a", "--architecture", required=True, metavar="ARCH",
                        help=f"one of: {', '.join(architectures())}")
    parser.add_argument("-c", "--configurations", nargs="+", default=None, metavar="CONFIG",
                        help="configurations to derive (default: all the architecture supports)")
    parser.add_argument("--base-plans", default="nnUNetPlans",
                        help="plans identifier to derive from (default: nnUNetPlans; e.g. nnUNetResEncUNetMPlans)")


def run(args: argparse.Namespace) -> int:
    from nnunetv2_mamba.plans import PlansError, write_plans

    try:
        path, notes = write_plans(args.dataset, args.architecture, args.configurations, args.base_plans)
    except PlansError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}")
    plans_name = path.stem
    configurations = list(json.loads(path.read_text())["configurations"])
    print(f"wrote {path} (configurations: {', '.join(configurations)})")
    print(f"train with: nnUNetv2_train {args.dataset} {configurations[0]} 0 -p {plans_name}")
    return 0

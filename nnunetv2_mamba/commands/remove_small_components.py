"""Remove connected components smaller than a per-class minimum number of voxels from a folder of predictions
(set to background), writing the result to another folder. The minimum sizes are the ``min_component_size`` section
of a domain_knowledge.json (-k), or by default of the one stored in the predicting model's plans.json, which
nnUNetv2_predict copies into the prediction folder. See documentation/training_recipes.md.

Examples:
  nnunetv2_mamba remove-small-components -i predictions/ -o predictions_pp/
  nnunetv2_mamba remove-small-components -i predictions/ -o predictions_pp/ \\
      -k $nnUNet_preprocessed/Dataset501_Teeth/domain_knowledge.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "remove connected components below per-class voxel counts from a prediction folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", type=Path, required=True, help="folder of predicted segmentations")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the cleaned segmentations")
    parser.add_argument("-k", "--knowledge", type=Path,
                        help="domain_knowledge.json with a min_component_size section (default: the one stored in "
                             "INPUT/plans.json)")
    parser.add_argument("-djfile", "--dataset-json", type=Path,
                        help="dataset.json giving labels and file ending (default: INPUT/dataset.json)")
    parser.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from nnunetv2_mamba.data.domain_knowledge import DomainKnowledgeError
    from nnunetv2_mamba.postprocessing.small_components import remove_small_components_folder, stored_min_sizes

    dataset_json_file = args.dataset_json or args.input / "dataset.json"
    if not dataset_json_file.is_file():
        print(f"error: {dataset_json_file} does not exist; pass -djfile")
        return 1
    dataset_json = json.loads(dataset_json_file.read_text())
    try:
        min_sizes = stored_min_sizes(args.input, dataset_json, args.knowledge)
        removed = remove_small_components_folder(args.input, args.output, min_sizes, dataset_json,
                                                 args.num_processes)
    except (DomainKnowledgeError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}")
        return 2
    names = {v: k for k, v in dataset_json["labels"].items()}
    for label, count in removed.items():
        print(f"{names.get(label, label)} ({label}): removed {count} component(s) below {min_sizes[label]} voxels")
    print(f"wrote {args.output}")
    return 0

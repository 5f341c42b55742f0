"""Real nnU-Net plans for network tests: nnU-Net's own ResEnc (M) planner (or another, e.g. the default
``ExperimentPlanner`` of ``nnUNetPlans``) run on the fingerprint of an ACDC-like dataset (cine MRI, 1.5625 mm in-plane,
5-10 mm slices, about 18 x 237 x 208 voxels after resampling; no image files are needed). It yields nnU-Net's
documented ACDC ResEnc configurations: 2d patch 256 x 224, 3d_fullres 20 x 256 x 224.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import \
    nnUNetPlannerResEncM
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

DATASET = "Dataset999_FakeACDC"
CASES = 4
# half of the cases with 10 mm slices, half with 5 mm: nnU-Net picks 5 mm (the 10th percentile) for the slice axis
SPACINGS = [[10.0, 1.5625, 1.5625], [5.0, 1.5625, 1.5625]] * (CASES // 2)
SHAPES = [[9, 237, 208], [18, 237, 208]] * (CASES // 2)


def acdc_like_configurations(root: Path, planner: type[ExperimentPlanner] = nnUNetPlannerResEncM) -> dict[str, dict]:
    """The '2d' and '3d_fullres' configurations ``planner`` (nnU-Net's ResEnc M planner by default) writes for an
    ACDC-like dataset."""
    raw, preprocessed = root / "raw" / DATASET, root / "preprocessed" / DATASET
    raw.mkdir(parents=True)
    preprocessed.mkdir(parents=True)
    dataset = {f"case{i}": {"images": [f"imagesTr/case{i}_0000.nii.gz"], "label": f"labelsTr/case{i}.nii.gz"}
               for i in range(CASES)}
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "cineMRI"}, "labels": {"background": 0, "RV": 1, "MLV": 2, "LVC": 3},
        "numTraining": CASES, "file_ending": ".nii.gz", "dataset": dataset}))
    (preprocessed / "dataset_fingerprint.json").write_text(json.dumps({
        "spacings": SPACINGS, "shapes_after_crop": SHAPES, "median_relative_size_after_cropping": 1.0,
        "foreground_intensity_properties_per_channel": {"0": {"mean": 0.0, "std": 1.0, "median": 0.0, "min": -1.0,
                                                              "max": 1.0, "percentile_00_5": -1.0,
                                                              "percentile_99_5": 1.0}}}))
    paths = default_experiment_planner.nnUNet_raw, default_experiment_planner.nnUNet_preprocessed
    default_experiment_planner.nnUNet_raw = str(root / "raw")
    default_experiment_planner.nnUNet_preprocessed = str(root / "preprocessed")
    threads = torch.get_num_threads()
    try:
        planned = planner(DATASET)
        voxels = 18 * 237 * 208 * CASES
        return {"2d": planned.get_plans_for_configuration([1.5625, 1.5625], [237, 208], "2d", voxels, {}),
                "3d_fullres": planned.get_plans_for_configuration([5.0, 1.5625, 1.5625], [18, 237, 208],
                                                                  "3d_fullres", voxels, {})}
    finally:
        default_experiment_planner.nnUNet_raw, default_experiment_planner.nnUNet_preprocessed = paths
        torch.set_num_threads(threads)  # the planner sets the number of threads while it estimates memory


def build(architecture: dict, network_class_name: str | None = None, input_channels: int = 1,
          num_classes: int = 4, deep_supervision: bool = True, **extra_arch_kwargs) -> torch.nn.Module:
    """The network of a plans ``architecture`` block, as nnU-Net's trainer builds it (through JSON, strings resolved
    by ``_kw_requires_import``), optionally with another class and extra ``arch_kwargs``."""
    architecture = json.loads(json.dumps(architecture))
    return get_network_from_plans(network_class_name or architecture["network_class_name"],
                                  {**architecture["arch_kwargs"], **extra_arch_kwargs},
                                  architecture["_kw_requires_import"], input_channels, num_classes,
                                  allow_init=True, deep_supervision=deep_supervision)


def deep_supervision_shapes(patch_size: list[int], strides: list[list[int]]) -> list[tuple[int, ...]]:
    """Output shapes nnU-Net's trainer expects with deep supervision: the patch divided by the cumulative strides of
    stages 0..n-2 (``nnUNetTrainer._get_deep_supervision_scales``)."""
    shapes, size = [], list(patch_size)
    for stride in strides[:-1]:
        size = [s // st for s, st in zip(size, stride)]
        shapes.append(tuple(size))
    return shapes

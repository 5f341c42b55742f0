"""Changing only ``network_class_name`` in the plans nnU-Net's planners wrote trains every architecture through
``nnUNetv2_train``, with the stock ``nnUNetTrainer`` and with ours; a misspelled class name is reported by name.

CPU budget: tiny synthetic datasets (5 training cases, 32 x 32 pixels or 12 x 24 x 24 voxels) planned by nnU-Net's
own CLIs (default and ResEnc M planner, sharing the preprocessed data), 2 epochs of 2 iterations each.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from nnunetv2_mamba.data.synthetic import write_synthetic_dataset
from nnunetv2_mamba.plans import load_override
from helpers.scribble_nnunet import nnunet_environment, run

pytestmark = pytest.mark.slow

DATASETS = {"2d": (988, "Dataset988_ClassSwap2D"), "3d_fullres": (989, "Dataset989_ClassSwap3D")}
RESENC = "nnUNetResEncUNetMPlans"
STOCK, OURS = "nnUNetTrainerDense_smoke", "nnUNetTrainerMamba_smoke"  # stock nnUNetTrainer / ours, 2 x 2 iterations
LOGGED = "built from nnU-Net planner arch_kwargs"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """Both datasets planned and preprocessed by nnU-Net (nnUNetPlans) and planned by its ResEnc M planner."""
    root = tmp_path_factory.mktemp("class_swap")
    env = nnunet_environment(root, root / "results")
    planning = {**env, "nnUNet_n_proc_DA": "1"}  # nnU-Net's planner sets torch's threads from it: 0 would fail
    for configuration, (dataset_id, name) in DATASETS.items():
        dims = 2 if configuration == "2d" else 3
        write_synthetic_dataset(root / "raw" / name, dims=dims, num_training=5, num_test=0, dense=True,
                                shape=(32, 32) if dims == 2 else (12, 24, 24))
        run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", configuration, "-np", "1", "-npfp", "1"],
            planning)
        run(["nnUNetv2_plan_experiment", "-d", str(dataset_id), "-pl", "nnUNetPlannerResEncM"], planning)
    return env


def swapped_plans(env: dict[str, str], configuration: str, base: str, class_name: str, plans_name: str) -> None:
    """``base`` plans with ``network_class_name`` of every configuration set to ``class_name``, and nothing else
    changed but the plans name, saved as ``plans_name``."""
    folder = Path(env["nnUNet_preprocessed"]) / DATASETS[configuration][1]
    plans = json.loads((folder / f"{base}.json").read_text())
    plans["plans_name"] = plans_name
    for config in plans["configurations"].values():
        if "architecture" in config:
            config["architecture"]["network_class_name"] = class_name
    (folder / f"{plans_name}.json").write_text(json.dumps(plans, indent=1))


def nnunet_train(env: dict[str, str], configuration: str, plans_name: str,
                 trainer: str) -> subprocess.CompletedProcess:
    command = ["nnUNetv2_train", str(DATASETS[configuration][0]), configuration, "0", "-tr", trainer, "-p", plans_name,
               "-device", "cpu"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("architecture, configuration, base, trainer, logged", [
    ("MambaUNet", "2d", "nnUNetPlans", STOCK, 1),
    ("SwinUNet", "2d", RESENC, OURS, 1),
    ("UMambaBot", "2d", "nnUNetPlans", OURS, 1),
    ("UMambaBot2Click", "2d", RESENC, STOCK, 0),  # ResEnc plans are its own arguments: nothing to report
    ("UMambaBot2", "3d_fullres", "nnUNetPlans", STOCK, 1),
    ("SegMamba", "3d_fullres", RESENC, OURS, 1)])
def test_only_the_class_name_changed_trains(env, architecture, configuration, base, trainer, logged):
    plans_name = f"{base}_{architecture}Swap"
    swapped_plans(env, configuration, base, load_override(architecture)["architecture"]["network_class_name"],
                  plans_name)
    result = nnunet_train(env, configuration, plans_name, trainer)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert output.count(LOGGED) == logged, output[-4000:]
    if logged:
        assert f"{architecture}: {LOGGED}; ignores " in output
    name = DATASETS[configuration][1]
    fold = Path(env["nnUNet_results"]) / name / f"{trainer}__{plans_name}__{configuration}" / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert checkpoint["current_epoch"] == 2
    assert checkpoint["init_args"]["plans"]["configurations"][configuration]["architecture"]["network_class_name"] \
        .endswith(f".{architecture}")


def test_misspelled_class_name_is_named(env):
    swapped_plans(env, "2d", "nnUNetPlans", "nnunetv2_mamba.nets.mamba_unet.MambaUnet", "nnUNetPlans_Misspelled")
    result = nnunet_train(env, "2d", "nnUNetPlans_Misspelled", OURS)
    assert result.returncode != 0
    assert ("ImportError: network_class_name 'nnunetv2_mamba.nets.mamba_unet.MambaUnet' in plans "
            "'nnUNetPlans_Misspelled' is not a class that can be imported. Did you mean "
            "'nnunetv2_mamba.nets.mamba_unet.MambaUNet'? Our architectures: MambaUNet") in result.stderr, \
        result.stderr[-4000:]

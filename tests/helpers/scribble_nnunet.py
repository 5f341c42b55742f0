"""A planned and preprocessed nnU-Net scribble dataset for trainer tests: the 2D synthetic dataset of
:mod:`nnunetv2_mamba.data.synthetic`, planned by nnU-Net's own CLI, plus ``nnUNetPlans_tiny`` (the same configuration
and preprocessed data with a CNN of 8..64 features) so that training steps take seconds on a shared CPU. Planning
costs a minute on a busy machine, so the dataset is prepared once per test session and shared by the test modules.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_mamba.data.synthetic import synthetic_dataset_name, write_synthetic_dataset

DATASET_ID = 990
DATASET = synthetic_dataset_name(2)
TINY_PLANS = "nnUNetPlans_tiny"


def nnunet_environment(root: Path, results: Path) -> dict[str, str]:
    """Environment for nnU-Net's CLIs: the dataset under ``root``, results in ``results``, our trainers, one process
    everywhere, no compile, and OpenMP threads that sleep instead of spinning while they wait: on a shared machine
    spinning threads slow small ops 10-100x (nnUNetv2_train -device cpu uses every core)."""
    ext_trainers = subprocess.run(["nnunetv2_mamba", "ext-trainer-path"], check=True, capture_output=True,
                                  text=True).stdout.strip()
    return {**os.environ, "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
            "nnUNet_results": str(results), "nnUNet_extTrainer": ext_trainers, "nnUNet_compile": "False",
            "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def run(command: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a CLI; on failure the assertion shows the end of its output."""
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{(result.stdout + result.stderr)[-6000:]}"
    return result


def scribble_environment(tmp_path_factory, name: str) -> dict[str, str]:
    """The environment of a test module: the dataset, prepared once per test session (the first module to ask
    pays for nnU-Net's planning), and results of its own."""
    root = tmp_path_factory.getbasetemp() / "scribble_dataset"
    tiny_plans = root / "preprocessed" / DATASET / f"{TINY_PLANS}.json"
    env = nnunet_environment(root, tmp_path_factory.mktemp(name))
    if not tiny_plans.is_file():
        for folder in ("raw", "preprocessed"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        write_synthetic_dataset(root / "raw" / DATASET, dims=2, overwrite=True)
        # nnU-Net's planner sets torch's threads to nnUNet_n_proc_DA, which must not be 0 there
        run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "-np", "1"],
            {**env, "nnUNet_n_proc_DA": "1"})
        plans = json.loads((tiny_plans.parent / "nnUNetPlans.json").read_text())
        plans["plans_name"] = TINY_PLANS
        arch = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
        arch["features_per_stage"] = [min(8 * 2 ** i, 64) for i in range(arch["n_stages"])]
        tiny_plans.write_text(json.dumps(plans, indent=1))
    return env


def load_plans(env: dict[str, str]) -> tuple[dict, dict]:
    """(tiny plans, dataset.json) of the prepared dataset, as nnUNetv2_train hands them to a trainer."""
    folder = Path(env["nnUNet_preprocessed"]) / DATASET
    plans = json.loads((folder / f"{TINY_PLANS}.json").read_text())
    plans["continue_training"] = False
    return plans, json.loads((folder / "dataset.json").read_text())


def make_trainer(cls: type[nnUNetTrainer], env: dict[str, str]) -> nnUNetTrainer:
    plans, dataset_json = load_plans(env)
    return cls(plans, "2d", 0, dataset_json, torch.device("cpu"))


def scribble_batch(trainer: nnUNetTrainer, seed: int, batch_size: int = 2) -> dict:
    """Random images and scribbles (a tenth of the pixels labeled) with nnU-Net's deep-supervision targets."""
    generator = torch.Generator().manual_seed(seed)
    patch = trainer.configuration_manager.patch_size
    data = torch.randn(batch_size, 1, *patch, generator=generator)
    seg = torch.randint(0, 4, (batch_size, 1, *patch), generator=generator)
    seg[torch.rand(seg.shape, generator=generator) > 0.1] = trainer.label_manager.ignore_label
    downsample = DownsampleSegForDSTransform(trainer._get_deep_supervision_scales())
    per_sample = [downsample(segmentation=s)["segmentation"] for s in seg]
    return {"data": data, "target": [torch.stack(scales) for scales in zip(*per_sample)]}

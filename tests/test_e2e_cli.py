"""End to end through the real command lines, as a user runs them: nnUNetv2_plan_and_preprocess, `nnunetv2_mamba
plans` for every architecture, nnUNetv2_train (2d and 3d_fullres, resuming with --c), nnUNetv2_predict,
nnUNetv2_export_model_to_zip / nnUNetv2_install_pretrained_model_from_zip, `nnunetv2_mamba slim-checkpoint` and
`challenge-predict`, on the synthetic datasets.

CPU budget: tiny images, networks 4x narrower than planned (nnunetv2_mamba.plans.narrow.narrow_plans, applied to the
plans files after they are written), 2 epochs of 2 iterations (nnUNetTrainerMamba_smoke), one worker process each.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunetv2_mamba.data.synthetic import synthetic_dataset_name, write_synthetic_dataset
from nnunetv2_mamba.plans.narrow import narrow_plans
from nnunetv2_mamba.ext_trainers import EXT_TRAINER_DIR

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainerMamba_smoke"
ID_2D, ID_3D = 992, 993  # the dense synthetic variants
NAME_2D, NAME_3D = synthetic_dataset_name(2, dense=True), synthetic_dataset_name(3, dense=True)


def cli(*args: str | os.PathLike, env: dict[str, str], expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == expect, (f"{' '.join(map(str, args))} exited with {result.returncode}:\n"
                                         f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def model_folder(results: Path, dataset: str, plans: str, configuration: str) -> Path:
    return results / dataset / f"{TRAINER}__{plans}__{configuration}"


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """Both synthetic datasets planned and preprocessed by nnU-Net, our plans written by the command line."""
    root = tmp_path_factory.mktemp("e2e")
    env = {**os.environ, "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results"), "nnUNet_extTrainer": str(EXT_TRAINER_DIR),
           "nnUNet_compile": "False", "nnUNet_def_n_proc": "1", "OMP_NUM_THREADS": "2"}
    write_synthetic_dataset(root / "raw" / NAME_2D, dims=2, num_training=8, num_test=2, dense=True)
    write_synthetic_dataset(root / "raw" / NAME_3D, dims=3, num_training=5, num_test=1, shape=(12, 24, 24),
                            dense=True)
    for dataset, configuration in ((ID_2D, "2d"), (ID_3D, "3d_fullres")):
        cli("nnUNetv2_plan_and_preprocess", "-d", dataset, "-c", configuration, "-npfp", "1", "-np", "1", env=env)

    outputs = {}
    for dataset, architecture, configurations in ((ID_2D, "UMambaBot2", ["-c", "2d"]), (ID_2D, "MambaUNet", []),
                                                  (ID_2D, "SwinUNet", []), (ID_2D, "UMambaBot", []),
                                                  (ID_3D, "UMambaBot2", ["-c", "3d_fullres"]),
                                                  (ID_3D, "SegMamba", [])):
        outputs[dataset, architecture] = cli("nnunetv2_mamba", "plans", "-d", dataset, "-a", architecture,
                                             *configurations, env=env).stdout
    for name in (NAME_2D, NAME_3D):
        for plans_file in (root / "preprocessed" / name).glob("nnUNetPlans_*.json"):
            plans_file.write_text(json.dumps(narrow_plans(json.loads(plans_file.read_text()), 4), indent=4))
    env["nnUNet_n_proc_DA"] = "0"  # training only: nnU-Net's planner refuses 0 (torch.set_num_threads)
    return {"root": root, "env": env, "plans_output": outputs}


def test_plans_command(workspace):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    root, env, outputs = workspace["root"], workspace["env"], workspace["plans_output"]
    assert "note: skipped 2d: SegMamba cannot run configuration '2d'" in outputs[ID_3D, "SegMamba"]
    assert f"wrote {root / 'preprocessed' / NAME_3D / 'nnUNetPlans_SegMamba.json'} (configurations: 3d_fullres)" \
        in outputs[ID_3D, "SegMamba"]
    base = PlansManager(str(root / "preprocessed" / NAME_2D / "nnUNetPlans.json")).get_configuration("2d")
    for architecture in ("UMambaBot2", "MambaUNet", "SwinUNet", "UMambaBot"):
        ours = PlansManager(str(root / "preprocessed" / NAME_2D / f"nnUNetPlans_{architecture}.json"))
        assert ours.plans_name == f"nnUNetPlans_{architecture}"
        assert ours.get_configuration("2d").data_identifier == base.data_identifier
    refused = cli("nnunetv2_mamba", "plans", "-d", ID_3D, "-a", "MambaUNet", "-c", "3d_fullres", env=env, expect=2)
    assert "error: MambaUNet cannot run configuration '3d_fullres': it is 3d and MambaUNet supports 2d only" \
        in refused.stderr


@pytest.mark.parametrize("dataset, architecture, configuration", [
    (NAME_2D, "MambaUNet", "2d"), (NAME_2D, "SwinUNet", "2d"),
    (NAME_3D, "UMambaBot2", "3d_fullres"), (NAME_3D, "SegMamba", "3d_fullres")])
def test_training_with_final_validation(workspace, dataset, architecture, configuration):
    """nnUNetv2_train finds our trainer, trains, and validates with nnU-Net's sliding window and mirroring."""
    env, results = workspace["env"], workspace["root"] / "results"
    cli("nnUNetv2_train", dataset[7:10], configuration, "0", "-tr", TRAINER, "-p", f"nnUNetPlans_{architecture}",
        "-device", "cpu", env=env)
    fold = model_folder(results, dataset, f"nnUNetPlans_{architecture}", configuration) / "fold_0"
    assert torch.load(fold / "checkpoint_final.pth", weights_only=False)["current_epoch"] == 2
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2", "3"}


def test_train_resume_predict_export_import_slim(workspace, tmp_path):
    """UMambaBot2 2d through the whole life of a model."""
    root, env = workspace["root"], workspace["env"]
    plans = "nnUNetPlans_UMambaBot2"
    train = ("nnUNetv2_train", str(ID_2D), "2d", "0", "-tr", TRAINER, "-p", plans, "-device", "cpu")
    cli(*train, env=env)
    folder = model_folder(root / "results", NAME_2D, plans, "2d")
    fold = folder / "fold_0"

    # --c: make the run look interrupted after its first epoch, then resume it
    checkpoint = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    checkpoint["current_epoch"] = 1
    checkpoint["logging"] = {key: values[:1] for key, values in checkpoint["logging"].items()}
    torch.save(checkpoint, fold / "checkpoint_latest.pth")
    (fold / "checkpoint_final.pth").unlink()
    logs_before = set(fold.glob("training_log_*.txt"))
    resumed = cli(*train, "--c", env=env)
    resumed_log = "".join(p.read_text() for p in set(fold.glob("training_log_*.txt")) - logs_before) or resumed.stdout
    assert "Epoch 1" in resumed_log and "Epoch 0" not in resumed_log
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert final["current_epoch"] == 2
    assert len(final["logging"]["train_losses"]) == 2
    assert final["logging"]["train_losses"][0] == checkpoint["logging"]["train_losses"][0]

    images = root / "raw" / NAME_2D / "imagesTs"
    predict = ("nnUNetv2_predict", "-i", images, "-d", str(ID_2D), "-c", "2d", "-tr", TRAINER, "-p", plans,
               "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1")
    cli(*predict, "-o", tmp_path / "first", env=env)
    cases = sorted(p.name for p in (root / "raw" / NAME_2D / "labelsTs").glob("*.nii.gz"))
    first = {case: read(tmp_path / "first" / case) for case in cases}
    for case, labels in first.items():
        assert labels.shape == read(images / case.replace(".nii.gz", "_0000.nii.gz")).shape
        assert set(np.unique(labels)) <= {0, 1, 2, 3}

    # share the model: export, install into fresh results, predict the same
    cli("nnUNetv2_export_model_to_zip", "-d", str(ID_2D), "-o", tmp_path / "model.zip", "-c", "2d", "-tr", TRAINER,
        "-p", plans, "-f", "0", env=env)
    installed_env = {**env, "nnUNet_results": str(tmp_path / "installed")}
    cli("nnUNetv2_install_pretrained_model_from_zip", tmp_path / "model.zip", env=installed_env)
    cli(*predict, "-o", tmp_path / "second", env=installed_env)
    for case, labels in first.items():
        np.testing.assert_array_equal(read(tmp_path / "second" / case), labels)

    # challenge submission: slim checkpoints, container entry point on .mha files named like grand-challenge's
    installed = model_folder(tmp_path / "installed", NAME_2D, plans, "2d")
    cli("nnunetv2_mamba", "slim-checkpoint", installed / "fold_0" / "checkpoint_final.pth", env=env)
    cli("nnunetv2_mamba", "slim-checkpoint", installed / "fold_0" / "checkpoint_final.pth", "--fp16",
        "-o", installed / "fold_0" / "checkpoint_final_fp16.pth", env=env)
    slim = torch.load(installed / "fold_0" / "checkpoint_final_slim.pth", weights_only=False)
    assert "optimizer_state" not in slim and "logging" not in slim
    sizes = [(installed / "fold_0" / f"checkpoint_final_{n}.pth").stat().st_size for n in ("fp16", "slim")]
    assert sizes[0] < 0.6 * sizes[1]  # half-size weights, shared tensors stored once
    inputs = tmp_path / "input"
    inputs.mkdir()
    for index, case in enumerate(cases):
        sitk.WriteImage(sitk.ReadImage(str(images / case.replace(".nii.gz", "_0000.nii.gz"))),
                        str(inputs / f"uuid-{index}.mha"))
    no_ext_env = {k: v for k, v in env.items() if k != "nnUNet_extTrainer"}  # the entry point needs none
    for checkpoint_name, output in (("checkpoint_final_slim.pth", "slim"), ("checkpoint_final_fp16.pth", "fp16")):
        cli("nnunetv2_mamba", "challenge-predict", "-i", inputs, "-o", tmp_path / output, "-m", installed, "-f", "0",
            "-chk", checkpoint_name, "--device", "cpu", env=no_ext_env)
    for index, (case, labels) in enumerate(first.items()):
        np.testing.assert_array_equal(read(tmp_path / "slim" / f"uuid-{index}.mha"), labels)
        assert np.mean(read(tmp_path / "fp16" / f"uuid-{index}.mha") == labels) > 0.99

"""End to end through the command lines, as a user runs it: nnU-Net plans and preprocesses a tiny synthetic dataset,
``nnunetv2_mamba plans`` derives UMambaBot2Click plans, ``nnUNetv2_train`` trains with simulated clicks
(``nnUNetTrainerClicks_smoke``), ``nnunetv2_mamba predict-clicks`` predicts with and without click files, and
``nnunetv2_mamba evaluate`` scores the predictions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_mamba.data.simulate_clicks import simulate_clicks
from nnunetv2_mamba.data.synthetic import synthetic_dataset_name, write_synthetic_dataset

pytestmark = pytest.mark.slow


def run(command: list[str], env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def write_click_files(labels_folder: Path, clicks_folder: Path) -> None:
    """Clicks simulated from the reference labels, as an annotator would give them, in x, y voxel order."""
    clicks_folder.mkdir()
    for label_file in sorted(labels_folder.glob("*.nii.gz")):
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
        clicks = simulate_clicks(label, [1, 2, 3], np.random.default_rng(0))
        content = {"space": "voxel", "clicks": [{"label": c.label, "point": list(c.point[::-1])} for c in clicks]}
        (clicks_folder / label_file.name.replace(".nii.gz", ".json")).write_text(json.dumps(content))


def test_train_and_predict_with_clicks(tmp_path):
    env = {**os.environ, "nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "preprocessed"),
           "nnUNet_results": str(tmp_path / "results"), "nnUNet_compile": "False", "nnUNet_def_n_proc": "1",
           "OMP_NUM_THREADS": "2"}
    raw = tmp_path / "raw" / synthetic_dataset_name(2, dense=True)
    write_synthetic_dataset(raw, dims=2, dense=True, num_training=6, num_test=2, shape=(48, 48))
    dataset = raw.name.split("_")[0][len("Dataset"):]
    cli = [sys.executable, "-m", "nnunetv2_mamba.cli"]
    env["nnUNet_extTrainer"] = run([*cli, "ext-trainer-path"], env, tmp_path).strip()

    run(["nnUNetv2_plan_and_preprocess", "-d", dataset, "-c", "2d", "-np", "1"], env, tmp_path)
    out = run([*cli, "plans", "-d", dataset, "-a", "UMambaBot2Click"], env, tmp_path)
    assert "nnUNetPlans_UMambaBot2Click" in out
    # nnU-Net's planner fails with nnUNet_n_proc_DA=0, so data augmentation in the main process only for training
    run(["nnUNetv2_train", dataset, "2d", "0", "-p", "nnUNetPlans_UMambaBot2Click", "-tr",
         "nnUNetTrainerClicks_smoke", "-device", "cpu"], {**env, "nnUNet_n_proc_DA": "0"}, tmp_path)

    write_click_files(raw / "labelsTs", tmp_path / "clicks")
    predict = [*cli, "predict-clicks", "-i", str(raw / "imagesTs"), "-d", dataset, "-c", "2d", "-f", "0",
               "-tr", "nnUNetTrainerClicks_smoke", "-device", "cpu"]
    run([*predict, "-o", str(tmp_path / "with_clicks"), "--clicks", str(tmp_path / "clicks"), "--click-radius", "1"],
        env, tmp_path)
    run([*predict, "-o", str(tmp_path / "without_clicks")], env, tmp_path)
    bad = tmp_path / "bad_clicks"
    bad.mkdir()
    (bad / "test_000.json").write_text(json.dumps({"clicks": [{"label": "tumour", "point": [3, 4]}]}))
    refused = subprocess.run([*predict, "-o", str(tmp_path / "refused"), "--clicks", str(bad)], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "test_000.json" in refused.stdout and "ring" in refused.stdout, refused
    for folder in ("with_clicks", "without_clicks"):
        predictions = sorted((tmp_path / folder).glob("*.nii.gz"))
        assert [p.name for p in predictions] == ["test_000.nii.gz", "test_001.nii.gz"]
        for prediction in predictions:
            segmentation = sitk.ReadImage(str(prediction))
            reference = sitk.ReadImage(str(raw / "labelsTs" / prediction.name))
            assert segmentation.GetSize() == reference.GetSize()
            assert segmentation.GetSpacing() == reference.GetSpacing()
            assert set(np.unique(sitk.GetArrayFromImage(segmentation))) <= {0, 1, 2, 3}
        run([*cli, "evaluate", "-ref", str(raw / "labelsTs"), "-pred", str(tmp_path / folder), "-djfile",
             str(raw / "dataset.json")], env, tmp_path)
        assert (tmp_path / folder / "metrics.json").is_file()

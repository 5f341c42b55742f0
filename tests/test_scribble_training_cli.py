"""End to end through nnU-Net's command line on the synthetic scribble dataset: WeakMamba (the default configuration)
training with dense-label validation of every network, ``--c`` resume, ``nnUNetv2_predict`` with the ensemble and
with one network, evaluation against dense labels; and the stock-nnU-Net baseline with the same validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.scribble_nnunet import DATASET, DATASET_ID, TINY_PLANS, run, scribble_environment

from nnunetv2_mamba.evaluation.metrics import evaluate_folders
from nnunetv2_mamba.training.dense_validation import SCRIBBLE_SUMMARY
from nnunetv2_mamba.training.nnUNetTrainerWeakMamba import MEMBER_ENVIRONMENT_VARIABLE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return scribble_environment(tmp_path_factory, "scribble_cli_results")


def train(env: dict[str, str], trainer: str, *extra: str, device: tuple[str, ...] = ("-device", "cpu")) -> Path:
    run(["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", trainer, "-p", TINY_PLANS, *device, *extra], env)
    return Path(env["nnUNet_results"]) / DATASET / f"{trainer}__{TINY_PLANS}__2d" / "fold_0"


def assert_scored_against_dense_labels(env: dict[str, str], validation: Path) -> None:
    """summary.json is nnU-Net's evaluation against labelsTr_dense (our metrics agree), the scribble one kept."""
    raw = Path(env["nnUNet_raw"]) / DATASET
    summary = json.loads((validation / "summary.json").read_text())
    assert (validation / SCRIBBLE_SUMMARY).is_file()
    ours = evaluate_folders(raw / "labelsTr_dense", validation, raw / "dataset.json", progress=False)
    assert len(ours["per_case"]) == 4  # fold 0 of nnU-Net's 5-fold split of 16 cases
    assert summary["foreground_mean"]["Dice"] == pytest.approx(ours["foreground_mean"]["Dice"], abs=1e-6)


def test_weak_mamba_trains_resumes_predicts_and_evaluates(env, tmp_path):
    fold = train(env, "nnUNetTrainerWeakMamba_smoke")
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "Validation against the dense labels" in log and "Validation Dice per network" in log
    # the default configuration: one optimizer per network, the pseudo label ramped up
    assert "Learning rates: cnn 0.010000, vit 0.001000, mamba 0.001000" in log and "Pseudo-label weight" in log
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "progress.png").is_file()
    assert (fold / "progress_networks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # every network's Dice
    assert_scored_against_dense_labels(env, fold / "validation")  # the ensemble (the smoke variant skips the networks)

    # an interrupted run: the final checkpoint as if written after the first of the two epochs
    checkpoint = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    checkpoint["current_epoch"] = 1
    torch.save(checkpoint, fold / "checkpoint_latest.pth")
    (fold / "checkpoint_final.pth").unlink()
    logs_before = set(fold.glob("training_log_*.txt"))
    # nnUNetv2_train's default device is CUDA: without a GPU our trainers run on the CPU instead of failing
    without_flag = () if not torch.cuda.is_available() else ("-device", "cpu")
    train(env, "nnUNetTrainerWeakMamba_smoke", "--c", device=without_flag)
    resumed_log = "".join(p.read_text() for p in set(fold.glob("training_log_*.txt")) - logs_before)
    assert "Epoch 1" in resumed_log and "Epoch 0" not in resumed_log
    assert "Resuming from checkpoint_latest.pth at epoch 1 of 2" in resumed_log
    assert torch.load(fold / "checkpoint_final.pth", weights_only=False)["current_epoch"] == 2

    raw = Path(env["nnUNet_raw"]) / DATASET
    probabilities = {}
    for member in ("ensemble", "mamba"):
        output = tmp_path / member
        run(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(output), "-d", str(DATASET_ID), "-c", "2d",
             "-tr", "nnUNetTrainerWeakMamba_smoke", "-p", TINY_PLANS, "-f", "0", "-device", "cpu", "--disable_tta",
             "-npp", "0", "-nps", "0", "--save_probabilities"], {**env, MEMBER_ENVIRONMENT_VARIABLE: member})
        assert len(list(output.glob("test_*.nii.gz"))) == 4
        probabilities[member] = np.load(output / "test_000.npz")["probabilities"]
        run(["nnunetv2_mamba", "evaluate", "-ref", str(raw / "labelsTs"), "-pred", str(output)], env)
        assert json.loads((output / "metrics.json").read_text())["foreground_mean"]["Dice"] is not None
    assert np.allclose(probabilities["ensemble"].sum(0), 1, atol=1e-3)
    assert not np.allclose(probabilities["ensemble"], probabilities["mamba"], atol=1e-3)


def test_stock_nnunet_baseline_is_validated_against_dense_labels(env):
    fold = train(env, "nnUNetTrainerScribbleBaseline_smoke")
    assert_scored_against_dense_labels(env, fold / "validation")
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "Validation Dice against the DENSE labels" in log

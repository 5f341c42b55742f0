"""U-Mamba2-SSL's recipe end to end through the command lines, on a tiny synthetic dataset with unlabeled cases and a
domain_knowledge.json: preprocess-unlabeled -> DAE pre-training -> consistency training fine-tuning the DAE's
weights (-pretrained_weights) -> pseudo-label stage continuing the consistency model -> prediction (the model loaded as
nnUNetv2_predict loads it, with label-swap mirroring) -> remove-small-components -> evaluate. Short schedules
(2 epochs of 3 iterations) of a shrunken U-Mamba2 at 32 x 32 pixels; the supervised domain-knowledge trainer's wiring
is tested in-process in test_training_recipes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from nnunetv2_mamba.data.synthetic import write_synthetic_dataset
from nnunetv2_mamba.data.unlabeled import move_to_unlabeled
from nnunetv2_mamba.ext_trainers import EXT_TRAINER_DIR

pytestmark = pytest.mark.slow

DATASET = "Dataset994_RecipeCLI"
PLANS = "nnUNetPlans_UMambaBot2Tiny"
KNOWLEDGE = {"label_smoothing": {"amount": 0.1, "related": {"ring": ["cavity"], "cavity": ["ring"]}},
             "class_weights": {"blob": 2},
             "mirror": {"axis": "x", "pairs": [["ring", "blob"]]},
             "min_component_size": {"blob": 8, "ring": 4}}


def run(command: list[str], env: dict, log: Path, expected_rc: int = 0) -> str:
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    log.write_text(result.stdout + result.stderr)
    output = result.stdout + result.stderr
    assert result.returncode == expected_rc, f"{' '.join(command)} exited {result.returncode}:\n{output[-4000:]}"
    return output


def predict_test_cases(model: Path, raw: Path, output: Path) -> None:
    """What nnUNetv2_predict does for each test image, in this process; writes the folder it would write."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False)
    predictor.initialize_from_trained_model_folder(str(model), (0,))
    assert predictor.allowed_mirroring_axes == (0,) and predictor.network._forward_hooks  # x is the network's
    output.mkdir()
    for name in ("dataset.json", "plans.json"):
        shutil.copy(model / name, output / name)
    for image in sorted((raw / "imagesTs").glob("*_0000.nii.gz")):
        data, properties = SimpleITKIO().read_images([str(image)])
        segmentation = predictor.predict_single_npy_array(data, properties)
        SimpleITKIO().write_seg(segmentation, str(output / image.name.replace("_0000", "")), properties)


def trained(env: dict, trainer: str) -> Path:
    return Path(env["nnUNet_results"]) / DATASET / f"{trainer}__{PLANS}__2d"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """nnU-Net folders with the planned, preprocessed dataset (6 labelled, 4 unlabeled, 2 test cases), a tiny
    U-Mamba2 plans file and the dataset's domain knowledge."""
    root = tmp_path_factory.mktemp("recipes")
    env = {**os.environ, "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results"), "nnUNet_compile": "False", "nnUNet_def_n_proc": "1",
           "nnUNet_extTrainer": str(EXT_TRAINER_DIR), "OMP_NUM_THREADS": "2"}
    env.pop("nnUNet_n_proc_DA", None)  # nnU-Net's planner sets torch's thread count from it: 0 would fail
    raw = write_synthetic_dataset(root / "raw" / DATASET, dims=2, dense=True, num_training=10, num_test=2,
                                  shape=(32, 32))
    move_to_unlabeled(raw, [f"case_{i:03d}" for i in range(6, 10)])
    run(["nnUNetv2_plan_and_preprocess", "-d", "994", "-c", "2d", "-np", "1"], env, root / "plan.log")
    run([sys.executable, "-m", "nnunetv2_mamba.cli", "plans", "-d", "994", "-a", "UMambaBot2"], env,
        root / "plans.log")
    base = root / "preprocessed" / DATASET
    plans = json.loads((base / "nnUNetPlans_UMambaBot2.json").read_text())
    arch = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
    arch.update(features_per_stage=[f // 4 for f in arch["features_per_stage"]],
                n_blocks_per_stage=[1] * arch["n_stages"], d_state=8, headdim=16)
    (base / f"{PLANS}.json").write_text(json.dumps({**plans, "plans_name": PLANS}))
    (base / "domain_knowledge.json").write_text(json.dumps(KNOWLEDGE))
    return {**env, "nnUNet_n_proc_DA": "0"}


def test_ssl_recipe_through_the_command_lines(env, monkeypatch):
    root = Path(env["nnUNet_raw"]).parent
    cli = [sys.executable, "-m", "nnunetv2_mamba.cli"]
    out = run(cli + ["preprocess-unlabeled", "-d", "994", "-c", "2d"], env, root / "unlabeled.log")
    assert "2d: 4 unlabeled cases" in out
    assert len(list((Path(env["nnUNet_preprocessed"]) / DATASET / "nnUNetPlans_2d").glob("*.pkl"))) == 6

    def train(trainer: str, pretrained: str | None = None) -> str:
        command = ["nnUNetv2_train", "994", "2d", "0", "-p", PLANS, "-tr", trainer, "-device", "cpu"]
        return run(command + (["-pretrained_weights", pretrained] if pretrained else []), env,
                   root / f"{trainer}.log")

    out = train("nnUNetTrainerDAE_smoke")
    assert re.search(r"DAE pre-training on \d labelled and 4 unlabeled cases", out)
    assert re.search(r"Reconstruction L1 [\d.]+, disrupted input's L1 [\d.]+", out)
    dae = trained(env, "nnUNetTrainerDAE_smoke") / "fold_0" / "checkpoint_final.pth"
    assert torch.load(dae, weights_only=False)["network_weights"]["decoder.seg_layers.0.weight"].shape[0] == 1

    out = train("nnUNetTrainerConsistency_smoke", str(dae))  # fine-tunes the DAE's weights
    assert "Loading pretrained weights" in out and "Domain knowledge: label smoothing 0.1" in out
    assert "unlabeled batches: 1/3" in out and "consistency_weight 50" in out and "Mean Validation Dice" in out
    consistency = trained(env, "nnUNetTrainerConsistency_smoke") / "fold_0" / "checkpoint_final.pth"
    assert torch.load(consistency, weights_only=False)["inference_allowed_mirroring_axes"] == (0,)

    out = train("nnUNetTrainerPseudoLabel_smoke")  # continues from the consistency model, heads included
    assert f"Continuing from {consistency}" in out
    assert "unlabeled batches: 2/3" in out and "confident" in out and "Current learning rate: 0.001" in out
    model = trained(env, "nnUNetTrainerPseudoLabel_smoke")
    assert json.loads((model / "plans.json").read_text())["domain_knowledge"]["mirror"]["pairs"] == [[1, 3]]

    # nnUNetv2_predict's own model loading (in-process: its worker processes cost half a minute here) rebuilds the
    # label-swapping network from the model folder alone
    predictions, cleaned = root / "predictions", root / "cleaned"
    monkeypatch.setenv("nnUNet_extTrainer", env["nnUNet_extTrainer"])
    predict_test_cases(model, Path(env["nnUNet_raw"]) / DATASET, predictions)
    out = run(cli + ["remove-small-components", "-i", str(predictions), "-o", str(cleaned)], env,
              root / "components.log")
    assert "blob (3): removed" in out and "below 8 voxels" in out
    run(cli + ["evaluate", "-ref", str(Path(env["nnUNet_raw"]) / DATASET / "labelsTs"), "-pred", str(cleaned)], env,
        root / "evaluate.log")
    metrics = json.loads((cleaned / "metrics.json").read_text())
    assert len(metrics["per_case"]) == 2

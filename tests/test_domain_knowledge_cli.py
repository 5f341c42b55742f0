"""nnUNetTrainerDomainKnowledge_smoke through nnU-Net's command lines on a dataset with a left and a right structure:
its domain_knowledge.json (related labels, class weights, the x axis and the left/right pair) must reach the loss,
the augmentation and the prediction, not merely be read. nnUNetv2_train runs with one augmentation worker, as users
run it: the label-swapping transform travels to the worker pickled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers.left_right_dataset import LABELS, write_left_right_dataset
from helpers.scribble_nnunet import nnunet_environment, run

pytestmark = pytest.mark.slow

DATASET_ID, DATASET = 987, "Dataset987_LeftRight"
TRAINER = "nnUNetTrainerDomainKnowledge_smoke"
KNOWLEDGE = {"label_smoothing": {"amount": 0.1, "related": {"left": ["right"], "right": ["left"]}},
             "class_weights": {"body": 3},
             "mirror": {"axis": "x", "pairs": [["left", "right"]]}}
SWAP = [0, 2, 1, 3]  # left <-> right


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """The planned and preprocessed dataset (8 training, 2 test cases of 32 x 32 pixels) with its domain knowledge."""
    root = tmp_path_factory.mktemp("left_right")
    env = {**nnunet_environment(root, root / "results"), "nnUNet_n_proc_DA": "1"}
    write_left_right_dataset(root / "raw" / DATASET, num_training=8, num_test=2)
    run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "-np", "1"], env)
    (root / "preprocessed" / DATASET / "domain_knowledge.json").write_text(json.dumps(KNOWLEDGE))
    return env


def mirrored_test_images(raw: Path, folder: Path) -> list[str]:
    """The test images and their mirror images along x (columns) in ``folder``; returns the case names."""
    folder.mkdir()
    cases = []
    for image in sorted((raw / "imagesTs").glob("*_0000.nii.gz")):
        case = image.name.removesuffix("_0000.nii.gz")
        shutil.copy(image, folder / image.name)
        itk = sitk.ReadImage(str(image))
        mirrored = sitk.GetImageFromArray(sitk.GetArrayFromImage(itk)[:, ::-1].copy())
        mirrored.CopyInformation(itk)
        sitk.WriteImage(mirrored, str(folder / f"{case}_mirrored_0000.nii.gz"))
        cases.append(case)
    return cases


def test_domain_knowledge_reaches_loss_augmentation_and_prediction(env, tmp_path):
    run(["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu"], env)
    model = Path(env["nnUNet_results"]) / DATASET / f"{TRAINER}__nnUNetPlans__2d"
    fold = model / "fold_0"
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    debug = json.loads((fold / "debug.json").read_text())  # nnU-Net's dump of the trainer after initialisation

    # related-label smoothing and class weights: the cross-entropy the training minimised
    assert "(ce): RelatedClassCrossEntropy()" in debug["loss"]
    assert ("Cross-entropy with domain knowledge: soft targets {1: {1: 0.9, 2: 0.1}, 2: {1: 0.1, 2: 0.9}}, class "
            "weights [1.0, 1.0, 1.0, 3.0]") in log
    # mirroring augmentation swaps left and right: the transform of the data loader the worker runs
    assert ("LabelSwapMirrorTransform( allowed_axes = (0, 1), swap_axis = 1, permutation = tensor([0, 2, 1, 3]) )"
            in debug["dataloader_train.generator.transforms"])
    assert "Mirroring augmentation swaps labels [(1, 2)] when it flips patch axis 1" in log
    # test-time mirroring: nnU-Net mirrors y only, the network itself mirrors x and swaps the labels back
    checkpoint = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert checkpoint["inference_allowed_mirroring_axes"] == (0,) and checkpoint["current_epoch"] == 2
    assert json.loads((model / "plans.json").read_text())["domain_knowledge"]["mirror"] == {"axis": "x",
                                                                                            "pairs": [[1, 2]]}
    assert "Mean Validation Dice" in log

    images, predictions = tmp_path / "images", tmp_path / "predictions"
    cases = mirrored_test_images(Path(env["nnUNet_raw"]) / DATASET, images)
    run(["nnUNetv2_predict", "-i", str(images), "-o", str(predictions), "-d", str(DATASET_ID), "-c", "2d", "-tr",
         TRAINER, "-f", "0", "-device", "cpu", "--save_probabilities", "-npp", "0", "-nps", "0"], env)
    for case in cases:
        segmentation = sitk.GetArrayFromImage(sitk.ReadImage(str(predictions / f"{case}.nii.gz")))
        assert segmentation.shape == (32, 32) and set(np.unique(segmentation)) <= set(LABELS.values())
        # the mirror image's prediction is the prediction mirrored with left and right swapped, as nnU-Net's plain
        # mirroring (no swap) would not give it; exact but for nnU-Net's float16 sums of its Gaussian-weighted tiles
        probabilities = np.load(predictions / f"{case}.npz")["probabilities"]
        mirrored = np.load(predictions / f"{case}_mirrored.npz")["probabilities"]
        np.testing.assert_allclose(mirrored, probabilities[SWAP][..., ::-1], atol=0.02)
        assert not np.allclose(mirrored, probabilities[..., ::-1], atol=0.1)

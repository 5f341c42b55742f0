"""Ensemble weights: their Dice is the evaluation's, the search finds the weights of crafted cases whose best choice
is known, and the commands choose and apply them on prediction folders as nnUNetv2_predict writes them."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunetv2_mamba.cli import main
from nnunetv2_mamba.evaluation.metrics import case_metrics, summarize
from nnunetv2_mamba.inference.ensemble_weights import (EnsembleWeights, choose_weights, folder_json,
                                                       mean_foreground_dice, weight_grid, weighted_probabilities)


def test_mean_foreground_dice_is_the_evaluation_summary():
    rng = np.random.default_rng(0)
    references = [rng.integers(0, 4, (1, 9, 7)) for _ in range(5)]
    predictions = [rng.integers(0, 4, (1, 9, 7)) for _ in range(5)]
    references[1][references[1] == 3] = 0  # class 3 absent from reference and prediction: left out of its mean
    predictions[1][predictions[1] == 3] = 0
    references[2][references[2] == 2] = 0  # class 2 only predicted: Dice 0
    expected = summarize([case_metrics(r, p, range(4), (1, 1, 1)) for r, p in zip(references, predictions)],
                         {c: str(c) for c in range(4)})["foreground_mean"]["Dice"]
    flat = [torch.from_numpy(np.concatenate([a.reshape(-1) for a in arrays])) for arrays in (predictions, references)]
    case_index = torch.arange(5).repeat_interleave(63)
    assert mean_foreground_dice(*flat, case_index, 5, 4) == pytest.approx(expected, rel=1e-12)


def test_weighted_probabilities():
    a, b = torch.rand(3, 4, 5), torch.rand(3, 4, 5)
    torch.testing.assert_close(weighted_probabilities([a, b], EnsembleWeights.equal(2)), (a + b) / 2)
    torch.testing.assert_close(weighted_probabilities([a, b], EnsembleWeights((0.25, 0.75))), 0.25 * a + 0.75 * b)
    with pytest.raises(ValueError, match="2 members' probabilities for 3 weights"):
        weighted_probabilities([a, b], EnsembleWeights.equal(3))


@pytest.mark.parametrize("values, message", [((0.5, 0.6), "sum to 1"), ((1.5, -0.5), "non-negative"), ((), "got")])
def test_ensemble_weights_reject_invalid_values(values, message):
    with pytest.raises(ValueError, match=message):
        EnsembleWeights(values)


def test_weight_grid_covers_the_simplex():
    grid = weight_grid(3, 0.1)
    assert len(grid) == math.comb(12, 2) == len(set(grid))  # compositions of 10 into 3 parts
    assert all(math.isclose(sum(w), 1) for w in grid) and (1.0, 0.0, 0.0) in grid and (0.3, 0.3, 0.4) in grid
    with pytest.raises(ValueError, match="divide 1"):
        weight_grid(2, 0.3)


def one_hot(labels: np.ndarray, confidence: float, classes: int = 2) -> np.ndarray:
    """Probabilities that give ``labels`` ``confidence`` and share the rest among the other classes."""
    probabilities = np.full((classes, *labels.shape), (1 - confidence) / (classes - 1), dtype=np.float32)
    np.put_along_axis(probabilities, labels[None], confidence, axis=0)
    return probabilities


def square_case() -> np.ndarray:
    truth = np.zeros((1, 8, 8), dtype=np.int64)
    truth[0, 2:6, 2:6] = 1
    return truth


def test_choose_weights_follows_the_member_that_is_right():
    truth = square_case()
    right, wrong = one_hot(truth, 0.9), one_hot(1 - truth, 0.9)
    weights, dice = choose_weights([([right, wrong], truth)], step=0.25)
    # more than half on `right` is needed; the grid lists (0.75, 0.25) before (1.0, 0.0), and ties keep the first
    assert weights == EnsembleWeights((0.75, 0.25)) and dice == 1
    weights, _ = choose_weights([([right, right], truth)])  # nothing to gain: the plain mean softmax is kept
    assert weights == EnsembleWeights.equal(2)


def test_choose_weights_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match=r"reference labels must lie in 0..1, found 2...2"):
        choose_weights([([one_hot(square_case(), 0.9)], np.full((1, 8, 8), 2))])


def prediction_folder(folder, probabilities: dict[str, np.ndarray]) -> None:
    """What nnUNetv2_predict --save_probabilities writes for 2D slices: CASE.npz, CASE.pkl, dataset.json, plans.json."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    folder.mkdir()
    dataset = {"labels": {"background": 0, "heart": 1}, "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    (folder / "plans.json").write_text(json.dumps({"image_reader_writer": "SimpleITKIO"}))
    for case, p in probabilities.items():
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros(p.shape[1:], np.float32)), str(folder / "image.nii.gz"))
        _, properties = SimpleITKIO().read_images([str(folder / "image.nii.gz")])
        np.savez_compressed(folder / f"{case}.npz", probabilities=p)
        (folder / f"{case}.pkl").write_bytes(pickle.dumps(properties))
    (folder / "image.nii.gz").unlink()


def test_ensemble_weights_and_ensemble_commands_segment_with_the_chosen_weights(tmp_path, capsys):
    rng = np.random.default_rng(1)
    references, right, noise = tmp_path / "labels", {}, {}
    references.mkdir()
    for case in ("a", "b", "c"):
        truth = np.zeros((1, 12, 10), dtype=np.int64)
        truth[0, rng.integers(0, 5):8, rng.integers(0, 5):7] = 1
        sitk.WriteImage(sitk.GetImageFromArray(truth.astype(np.uint8)), str(references / f"{case}.nii.gz"))
        right[case] = one_hot(truth, 0.7)
        noise[case] = one_hot(rng.integers(0, 2, truth.shape), 0.9)
    prediction_folder(tmp_path / "right", right)
    prediction_folder(tmp_path / "noise", noise)
    folders = [str(tmp_path / "right"), str(tmp_path / "noise")]
    weights = tmp_path / "weights.json"
    assert main(["ensemble-weights", "-i", *folders, "-r", str(references), "-o", str(weights), "--step", "0.5"]) == 0
    stored = json.loads(weights.read_text())
    # equal weights follow the confident noise where it disagrees; (0, 1) is noise alone
    assert (stored["weights"], stored["dice"], stored["cases"]) == ([1.0, 0.0], 1.0, 3) and stored["plain_dice"] < 1
    assert main(["ensemble", "-i", *folders, "-o", str(tmp_path / "out"), "-w", str(weights)]) == 0
    for case in ("a", "b", "c"):
        written = sitk.ReadImage(str(tmp_path / "out" / f"{case}.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(written),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(references / f"{case}.nii.gz"))))
    assert {"dataset.json", "plans.json"} <= {p.name for p in (tmp_path / "out").iterdir()}

    capsys.readouterr()
    assert main(["ensemble-weights", "-i", folders[0], "-r", str(references), "-o", str(weights)]) == 2
    assert "two or more members" in capsys.readouterr().out
    (references / "b.nii.gz").unlink()
    assert main(["ensemble-weights", "-i", *folders, "-r", str(references), "-o", str(weights)]) == 2
    assert f"{references / 'b.nii.gz'} does not exist" in capsys.readouterr().out
    (tmp_path / "noise" / "c.npz").unlink()
    assert main(["ensemble", "-i", *folders, "-o", str(tmp_path / "o2")]) == 2
    assert "hold probabilities of different cases, e.g. ['c']" in capsys.readouterr().out
    assert main(["ensemble", "-i", folders[0], "-o", str(tmp_path / "o3"), "-w", str(weights)]) == 2
    assert "has 2 weights for 1 member folders" in capsys.readouterr().out


def test_a_training_validation_folder_reads_its_model_folders_json(tmp_path):
    validation = tmp_path / "model" / "fold_0" / "validation_cnn"
    validation.parent.mkdir(parents=True)
    prediction_folder(validation, {"a": one_hot(square_case(), 0.9)})
    (validation / "plans.json").rename(tmp_path / "model" / "plans.json")
    assert folder_json(validation, "plans.json") == {"image_reader_writer": "SimpleITKIO"}
    (tmp_path / "model" / "plans.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"{validation / 'plans.json'} does not exist"):
        folder_json(validation, "plans.json")

"""Per-volume scoring of 2D predictions: slices stacked back in index order with the stated spacing, scored in mm
as one 3D case; bad folders refused with the volume named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_mamba.data.scribble_dataset import write_image
from nnunetv2_mamba.evaluation.metrics import binary_metrics, evaluate_folders
from nnunetv2_mamba.cli import main
from nnunetv2_mamba.evaluation.volumes import slices_by_volume, stack_references, stack_slices

DATASET_JSON = {"labels": {"background": 0, "A": 1, "B": 2}, "file_ending": ".nii.gz", "channel_names": {"0": "x"}}


def two_volumes() -> tuple[np.ndarray, np.ndarray]:
    """A reference with structure A over slices 1-2 and B on every slice, and a prediction with one slice too many
    of A (10 mm beyond its top at 10 mm between slices)."""
    reference = np.zeros((4, 20, 20), np.uint8)
    reference[1:3, 5:15, 5:15] = 1
    reference[0:4, 2:4, 2:4] = 2
    prediction = reference.copy()
    prediction[3, 5:15, 5:15] = 1
    return reference, prediction


def write_slices(folder, volume: str, array: np.ndarray, spacing=(1.5, 1.25)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for z, image in enumerate(array):
        write_image(image, spacing, folder / f"{volume}_slice{z:02d}.nii.gz")


def test_slices_are_grouped_by_volume_in_index_order():
    names = ["p1_frame01_slice10", "p1_frame01_slice02", "p2_frame01_slice00", "p1_frame01_slice00"]
    assert slices_by_volume(names) == {"p1_frame01": [(0, "p1_frame01_slice00"), (2, "p1_frame01_slice02"),
                                                      (10, "p1_frame01_slice10")],
                                       "p2_frame01": [(0, "p2_frame01_slice00")]}
    with pytest.raises(ValueError, match="case 'p3' is not named <volume>_slice<NN>"):
        slices_by_volume(["p3"])


def test_stacked_volume_holds_the_slices_in_order_with_the_slice_spacing(tmp_path):
    rng = np.random.default_rng(0)
    volumes = {"p1_frame01": rng.integers(0, 3, (12, 9, 7)).astype(np.uint8),
               "p1_frame12": rng.integers(0, 3, (3, 9, 7)).astype(np.uint8)}
    for name, array in volumes.items():
        write_slices(tmp_path / "slices", name, array)
    assert stack_slices(tmp_path / "slices", tmp_path / "volumes", 10.0) == sorted(volumes)
    for name, array in volumes.items():
        image = sitk.ReadImage(str(tmp_path / "volumes" / f"{name}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)  # slice 10 after slice 9, not slice 1
        assert image.GetSpacing() == (1.25, 1.5, 10.0)  # SimpleITK's (x, y, z)


def test_per_volume_metrics_are_the_3d_metrics_in_mm(tmp_path):
    reference, prediction = two_volumes()
    for folder, array in (("reference", reference), ("prediction", prediction)):
        write_slices(tmp_path / folder, "p1_frame01", array)
        stack_slices(tmp_path / folder, tmp_path / f"{folder}_3d", 10.0)
    results = evaluate_folders(tmp_path / "reference_3d", tmp_path / "prediction_3d", DATASET_JSON, progress=False)
    (case,) = results["per_case"]
    expected = binary_metrics(reference == 1, prediction == 1, (10.0, 1.5, 1.25))
    assert case["metrics"][1]["Dice"] == pytest.approx(2 * 200 / 500) == pytest.approx(expected["Dice"])
    assert case["metrics"][1]["HD95"] == pytest.approx(expected["HD95"]) and expected["HD95"] == pytest.approx(10.0)
    assert case["metrics"][2]["Dice"] == 1.0


def test_evaluate_scores_slices_per_volume_on_request(tmp_path):
    """Only the predicted slices' references are stacked: the reference folder holds another volume too."""
    reference, prediction = two_volumes()
    write_slices(tmp_path / "reference", "p1_frame01", reference)
    write_slices(tmp_path / "reference", "p2_frame01", reference)
    write_slices(tmp_path / "prediction", "p1_frame01", prediction)
    (tmp_path / "dataset.json").write_text(json.dumps(DATASET_JSON))
    common = ["evaluate", "-ref", str(tmp_path / "reference"), "-pred", str(tmp_path / "prediction"), "-djfile",
              str(tmp_path / "dataset.json")]
    assert main([*common, "--volumes", "10", "-o", str(tmp_path / "volumes")]) == 0
    assert main([*common, "-o", str(tmp_path / "slices")]) == 0
    volumes, slices = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("volumes", "slices"))
    assert [c["case"] for c in volumes["per_case"]] == ["p1_frame01"] and len(slices["per_case"]) == 4
    assert volumes["per_case"][0]["metrics"]["1"]["Dice"] == pytest.approx(0.8)
    assert volumes["per_case"][0]["metrics"]["1"]["HD95"] == pytest.approx(10.0)


def test_references_of_missing_slices_are_an_error(tmp_path):
    write_slices(tmp_path / "reference", "p1_frame01", np.zeros((2, 4, 4), np.uint8))
    assert stack_references(tmp_path / "reference", ["p1_frame01_slice01.nii.gz"], tmp_path / "out", 5.0) == \
        ["p1_frame01"]
    with pytest.raises(FileNotFoundError, match=r"no reference for prediction\(s\) \['p1_frame01_slice07.nii.gz'\]"):
        stack_references(tmp_path / "reference", ["p1_frame01_slice07.nii.gz"], tmp_path / "out2", 5.0)


def test_a_run_of_consecutive_slices_is_a_volume(tmp_path):
    array = np.arange(5 * 3 * 2, dtype=np.uint8).reshape(5, 3, 2)
    write_slices(tmp_path / "slices", "p1_frame01", array)
    for z in (0, 4):
        (tmp_path / "slices" / f"p1_frame01_slice{z:02d}.nii.gz").unlink()
    stack_slices(tmp_path / "slices", tmp_path / "volumes", 5.0)
    stacked = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "volumes" / "p1_frame01.nii.gz")))
    np.testing.assert_array_equal(stacked, array[1:4])


def test_gaps_and_mixed_shapes_are_refused_with_the_volume_named(tmp_path):
    write_slices(tmp_path / "gap", "p1_frame01", np.zeros((3, 4, 4), np.uint8))
    (tmp_path / "gap" / "p1_frame01_slice01.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"volume p1_frame01 has slices \[0, 2\], with a gap"):
        stack_slices(tmp_path / "gap", tmp_path / "out", 10.0)
    write_slices(tmp_path / "shapes", "p2_frame01", np.zeros((2, 4, 4), np.uint8))
    write_image(np.zeros((5, 4), np.uint8), (1.0, 1.0), tmp_path / "shapes" / "p2_frame01_slice02.nii.gz")
    with pytest.raises(ValueError, match=r"the slices of volume p2_frame01 differ in shape"):
        stack_slices(tmp_path / "shapes", tmp_path / "out", 10.0)
    with pytest.raises(FileNotFoundError, match="no files ending in .nii.gz"):
        stack_slices(tmp_path / "empty", tmp_path / "out", 10.0)

"""The scribble-dataset checks name the file and the value of every problem; the atomic writer leaves nothing
half-written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_mamba.cli import main
from nnunetv2_mamba.data.scribble_dataset import (ScribbleDatasetError, atomic_dataset_folder, ignore_label_of,
                                                  new_raw_dataset_folder, validate_scribble_dataset,
                                                  with_ignore_label)
from nnunetv2_mamba.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "clean", num_training=3, num_test=1,
                                   shape=(32, 32))


@pytest.fixture
def dataset(clean, tmp_path):
    """A fresh copy of a small valid scribble dataset, to break."""
    return shutil.copytree(clean, tmp_path / "Dataset001_Broken")


def set_labels(folder, labels):
    dataset_json = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**dataset_json, "labels": labels}))


def rewrite(path, change):
    image = sitk.ReadImage(str(path))
    array = change(sitk.GetArrayFromImage(image))
    new = sitk.GetImageFromArray(array)
    new.SetSpacing(image.GetSpacing())
    sitk.WriteImage(new, str(path))


def test_ignore_label_declaration():
    assert ignore_label_of({"background": 0, "a": 1, "ignore": 2}) == 2
    assert with_ignore_label({"background": 0, "a": 1, "b": 2}) == {"background": 0, "a": 1, "b": 2, "ignore": 3}
    with pytest.raises(ScribbleDatasetError, match=r"x.json: no 'ignore' label.*add \"ignore\": 2"):
        ignore_label_of({"background": 0, "a": 1}, "x.json")
    with pytest.raises(ScribbleDatasetError, match=r"'ignore' label is 1 but must be .* \(2\)"):
        ignore_label_of({"background": 0, "a": 1, "ignore": 1})
    with pytest.raises(ScribbleDatasetError, match="consecutive"):
        ignore_label_of({"background": 0, "a": 2, "ignore": 3})
    with pytest.raises(ScribbleDatasetError, match="not a dense dataset"):
        with_ignore_label({"background": 0, "ignore": 1})


def test_valid_dataset_summary(clean, capsys):
    summary = validate_scribble_dataset(clean, progress=False)
    assert (summary.num_training, summary.num_dense, summary.num_test) == (3, 3, 1)
    assert 0 < summary.labeled_fraction < 0.5
    assert main(["check-scribbles", "-d", str(clean)]) == 0
    assert "valid scribble dataset" in capsys.readouterr().out


@pytest.mark.parametrize("labels, message", [
    ({"background": 0, "ring": 1, "cavity": 2, "blob": 3}, "no 'ignore' label"),
    ({"background": 0, "ring": 1, "cavity": 2, "blob": 3, "ignore": 7}, "'ignore' label is 7"),
])
def test_wrong_ignore_label(dataset, labels, message, capsys):
    set_labels(dataset, labels)
    with pytest.raises(ScribbleDatasetError, match=message):
        validate_scribble_dataset(dataset, progress=False)
    assert main(["check-scribbles", "-d", str(dataset)]) == 1
    assert message in capsys.readouterr().out


def test_scribble_value_outside_the_labels(dataset):
    rewrite(dataset / "labelsTr" / "case_001.nii.gz", lambda a: np.where(a == 3, 9, a).astype(np.uint8))
    with pytest.raises(ScribbleDatasetError, match=r"labelsTr/case_001.nii.gz: values \[9\] are not declared"):
        validate_scribble_dataset(dataset, progress=False)


def test_dense_labels_must_not_hold_the_ignore_label(dataset):
    rewrite(dataset / "labelsTs" / "test_000.nii.gz", lambda a: np.where(a == 0, 4, a).astype(np.uint8))
    rewrite(dataset / "labelsTr_dense" / "case_002.nii.gz", lambda a: np.where(a == 0, 4, a).astype(np.uint8))
    with pytest.raises(ScribbleDatasetError, match=r"2 problem\(s\)") as error:
        validate_scribble_dataset(dataset, progress=False)
    assert "labelsTs/test_000.nii.gz: values [4]" in str(error.value)
    assert "labelsTr_dense/case_002.nii.gz: values [4]" in str(error.value)


def test_shape_and_spacing_mismatch(dataset):
    rewrite(dataset / "labelsTr" / "case_000.nii.gz", lambda a: a[:-2])
    label = dataset / "labelsTr_dense" / "case_001.nii.gz"
    image = sitk.ReadImage(str(label))
    image.SetSpacing((1.0, 2.5))
    sitk.WriteImage(image, str(label))
    with pytest.raises(ScribbleDatasetError) as error:
        validate_scribble_dataset(dataset, progress=False)
    assert "labelsTr/case_000.nii.gz: shape (1, 30, 32) differs from its image case_000_0000.nii.gz (1, 32, 32)" \
           in str(error.value)
    assert "labelsTr_dense/case_001.nii.gz: spacing" in str(error.value)


def test_missing_label_and_wrong_count(dataset):
    (dataset / "labelsTr" / "case_002.nii.gz").unlink()
    with pytest.raises(ScribbleDatasetError, match=r"labelsTr/case_002.nii.gz: missing \(scribbles of case_002_0000"):
        validate_scribble_dataset(dataset, progress=False)
    (dataset / "imagesTr" / "case_002_0000.nii.gz").unlink()
    with pytest.raises(ScribbleDatasetError, match="numTraining is 3 but imagesTr holds 2 cases"):
        validate_scribble_dataset(dataset, progress=False)


def test_atomic_folder_leaves_nothing_on_failure_and_keeps_the_old_dataset(tmp_path):
    target = tmp_path / "Dataset002_X"
    with pytest.raises(RuntimeError, match="injected"):
        with atomic_dataset_folder(target) as tmp:
            (tmp / "dataset.json").write_text("{}")
            raise RuntimeError("injected")
    assert list(tmp_path.iterdir()) == []
    with atomic_dataset_folder(target) as tmp:
        (tmp / "old").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"):
        with atomic_dataset_folder(target):
            pass
    with pytest.raises(KeyboardInterrupt):
        with atomic_dataset_folder(target, overwrite=True) as tmp:
            (tmp / "new").write_text("new")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == [target.name] and (target / "old").is_file()
    with atomic_dataset_folder(target, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == [target.name] and [p.name for p in target.iterdir()] == ["new"]


def test_new_dataset_ids_must_be_unambiguous(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    (tmp_path / "Dataset027_ACDC").mkdir()
    assert new_raw_dataset_folder(28, "ACDCScribble") == tmp_path / "Dataset028_ACDCScribble"
    assert new_raw_dataset_folder(27, "ACDC") == tmp_path / "Dataset027_ACDC"
    with pytest.raises(FileExistsError, match="already used by Dataset027_ACDC"):
        new_raw_dataset_folder(27, "ACDCScribble")
    with pytest.raises(ValueError, match="1-999"):
        new_raw_dataset_folder(1000, "X")

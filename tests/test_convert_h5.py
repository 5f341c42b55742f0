"""convert-h5 on real ACDC volumes (2D and 3D) and on crafted files: layout, ignore label, spacing, splits, dense
labels, atomicity, errors."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

import nnunetv2_mamba.data.convert_h5 as convert_module
from nnunetv2_mamba.cli import main
from nnunetv2_mamba.data.convert_h5 import convert_h5, patient_of, read_splits
from nnunetv2_mamba.data.scribble_dataset import validate_scribble_dataset

SPLITS = {"train": ["patient003", "patient004"], "val": ["patient002"], "test": ["patient005"]}


def read(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image.GetSpacing()


def h5(path):
    with h5py.File(path) as f:
        return {k: f[k][()] for k in ("image", "label", "scribble")}


@pytest.fixture
def crafted(tmp_path):
    """Six small volumes of three patients in the WSL4MIS layout (4 = unlabeled), with a splits.json."""
    source = tmp_path / "h5"
    source.mkdir()
    rng = np.random.default_rng(0)
    for patient in ("patient001", "patient002", "patient003"):
        for frame in ("01", "12"):
            label = rng.integers(0, 4, (3, 16, 12)).astype(np.uint8)
            scribble = np.where(rng.random(label.shape) < 0.1, label, 4).astype(np.uint16)
            with h5py.File(source / f"{patient}_frame{frame}.h5", "w") as f:
                f["image"] = rng.random(label.shape).astype(np.float32)
                f["label"], f["scribble"] = label, scribble
    (source / "splits.json").write_text(json.dumps({"train": ["patient001", "patient003"], "val": ["patient002"]}))
    return source


@pytest.mark.acdc
def test_acdc_3d(acdc_dir, tmp_path):
    target = convert_h5(acdc_dir, tmp_path / "Dataset027_ACDCScribble", splits=SPLITS)
    dataset_json = json.loads((target / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "RV": 1, "MYO": 2, "LV": 3, "ignore": 4}
    assert dataset_json["numTraining"] == 6 and dataset_json["numTest"] == 2
    assert json.loads((target / "splits_final.json").read_text()) == [{
        "train": ["patient003_frame01", "patient003_frame15", "patient004_frame01", "patient004_frame15"],
        "val": ["patient002_frame01", "patient002_frame12"]}]
    source = h5(acdc_dir / "patient003_frame15.h5")
    image, spacing = read(target / "imagesTr" / "patient003_frame15_0000.nii.gz")
    assert spacing == (1.5, 1.5, 10.0)  # SimpleITK order (x, y, z): 1.5 mm in plane, 10 mm between slices
    np.testing.assert_array_equal(image, source["image"])
    np.testing.assert_array_equal(read(target / "labelsTr" / "patient003_frame15.nii.gz")[0], source["scribble"])
    np.testing.assert_array_equal(read(target / "labelsTr_dense" / "patient003_frame15.nii.gz")[0], source["label"])
    test = h5(acdc_dir / "patient005_frame13.h5")
    np.testing.assert_array_equal(read(target / "labelsTs" / "patient005_frame13.nii.gz")[0], test["label"])
    assert not (target / "labelsTr" / "patient005_frame13.nii.gz").exists()
    summary = validate_scribble_dataset(target, progress=False)
    assert summary.num_dense == 6 and summary.num_test == 2 and 0.005 < summary.labeled_fraction < 0.03


@pytest.mark.acdc
def test_acdc_2d_through_the_command(acdc_dir, tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"train": ["patient003"], "val": ["patient002"]}))
    target = tmp_path / "Dataset028_ACDC2D"
    assert main(["convert-h5", str(acdc_dir), "-o", str(target), "--mode", "2d", "--splits", str(splits),
                 "--spacing", "8", "1.25", "1.4"]) == 0
    volumes = {name: h5(acdc_dir / f"{name}.h5") for name in
               ("patient002_frame01", "patient002_frame12", "patient003_frame01", "patient003_frame15")}
    num_slices = {name: len(v["image"]) for name, v in volumes.items()}
    fold = json.loads((target / "splits_final.json").read_text())[0]
    assert len(fold["val"]) == num_slices["patient002_frame01"] + num_slices["patient002_frame12"]
    assert all(case.startswith("patient003_") for case in fold["train"])
    assert len(fold["train"]) == num_slices["patient003_frame01"] + num_slices["patient003_frame15"]
    scribble, spacing = read(target / "labelsTr" / "patient002_frame12_slice04.nii.gz")
    assert spacing == pytest.approx((1.4, 1.25)) and scribble.shape == volumes["patient002_frame12"]["image"].shape[1:]
    np.testing.assert_array_equal(scribble, volumes["patient002_frame12"]["scribble"][4])
    dense, _ = read(target / "labelsTr_dense" / "patient002_frame12_slice04.nii.gz")
    np.testing.assert_array_equal(dense, volumes["patient002_frame12"]["label"][4])
    assert not (target / "imagesTs").exists()
    verify_dataset_integrity(str(target), num_processes=1)


def test_splits_and_patients():
    assert patient_of("patient090_frame04") == "patient090" and patient_of("case7") == "case7"
    assert read_splits({"train": ["a"], "val": ["b"]}) == {"train": ["a"], "val": ["b"], "test": []}
    with pytest.raises(ValueError, match="patient a is in both 'train' and 'test'"):
        read_splits({"train": ["a"], "test": ["a"]})
    with pytest.raises(ValueError, match="no 'train' patients"):
        read_splits({"val": ["a"]})
    with pytest.raises(ValueError, match="no 'train' patients"):
        read_splits({"train": [], "test": []})
    assert read_splits({"test": ["a"]}) == {"train": [], "val": [], "test": ["a"]}


def test_held_out_patients_convert_alone_through_the_command(crafted, tmp_path):
    """A splits file with test patients only gives imagesTs/labelsTs (dense) and a dataset.json, nothing to train."""
    splits = tmp_path / "held_out.json"
    splits.write_text(json.dumps({"test": ["patient003"]}))
    target = tmp_path / "Dataset903_HeldOut"
    main(["convert-h5", str(crafted), "-o", str(target), "--mode", "2d", "--splits", str(splits)])
    assert sorted(p.name for p in target.iterdir()) == ["dataset.json", "imagesTs", "labelsTs"]
    assert sorted(p.name for p in (target / "labelsTs").iterdir()) == [
        f"patient003_frame{f}_slice{z:02d}.nii.gz" for f in ("01", "12") for z in range(3)]
    dense = read(target / "labelsTs" / "patient003_frame12_slice01.nii.gz")[0]
    np.testing.assert_array_equal(dense, h5(crafted / "patient003_frame12.h5")["label"][1])
    dataset_json = json.loads((target / "dataset.json").read_text())
    assert dataset_json["numTraining"] == 0 and dataset_json["numTest"] == 6
    assert validate_scribble_dataset(target, progress=False).num_test == 6


def test_crafted_default_splits_and_nnunet_copies_them_when_planning(crafted, tmp_path, monkeypatch):
    """The raw folder's splits_final.json reaches nnUNet_preprocessed through nnU-Net's own planner."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    raw, preprocessed = tmp_path / "raw", tmp_path / "preprocessed"
    target = convert_h5(crafted, raw / "Dataset901_Crafted", spacing=(5.0, 1.0, 2.0))
    fold = json.loads((target / "splits_final.json").read_text())[0]
    assert fold["val"] == ["patient002_frame01", "patient002_frame12"] and len(fold["train"]) == 4
    assert read(target / "imagesTr" / "patient001_frame01_0000.nii.gz")[1] == (2.0, 1.0, 5.0)
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    (preprocessed / target.name).mkdir(parents=True)
    (preprocessed / target.name / "dataset_fingerprint.json").write_text("{}")  # the planner only checks it exists
    ExperimentPlanner(901)
    assert json.loads((preprocessed / target.name / "splits_final.json").read_text())[0] == fold


def test_a_failed_conversion_leaves_nothing_behind(crafted, tmp_path, monkeypatch):
    target = tmp_path / "out" / "Dataset902_Crafted"
    convert_h5(crafted, target)
    before = sorted(p.relative_to(target) for p in target.rglob("*"))
    calls = []

    def failing_write(array, spacing, path):
        calls.append(path)
        if len(calls) == 5:
            raise OSError("disk full (injected)")

    monkeypatch.setattr(convert_module, "write_image", failing_write)
    with pytest.raises(OSError, match="injected"):
        convert_h5(crafted, target, mode="2d", overwrite=True)
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary folder left
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before  # the old dataset untouched
    with pytest.raises(OSError, match="injected"):
        calls.clear()
        convert_h5(crafted, tmp_path / "out" / "Dataset903_New")
    assert [p.name for p in target.parent.iterdir()] == [target.name]


@pytest.mark.parametrize("change, message", [
    (lambda f: f.__delitem__("scribble"), r"patient001_frame01.h5: missing dataset\(s\) \['scribble'\]"),
    (lambda f: f["scribble"].__setitem__((0, 0, 0), 7), r"patient001_frame01.h5: 'scribble' holds values \[7\]"),
    (lambda f: f["label"].__setitem__((0, 0, 0), 4), r"patient001_frame01.h5: 'label' holds values \[4\]"),
])
def test_bad_source_files(crafted, tmp_path, change, message):
    with h5py.File(crafted / "patient001_frame01.h5", "r+") as f:
        change(f)
    with pytest.raises(ValueError, match=message):
        convert_h5(crafted, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_hdf5_is_named_without_a_traceback(crafted, tmp_path, capsys):
    (crafted / "patient002_frame12.h5").write_bytes(b"not hdf5")
    assert main(["convert-h5", str(crafted), "-o", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "patient002_frame12.h5: not a readable HDF5 file" in error and "Traceback" not in error
    assert "--debug" in error and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="patient002_frame12.h5: not a readable HDF5 file"):
        main(["--debug", "convert-h5", str(crafted), "-o", str(tmp_path / "out")])


def test_bad_arguments(crafted, tmp_path):
    with pytest.raises(ValueError, match=r"no .h5 file for patient\(s\) \['patient009'\]"):
        convert_h5(crafted, tmp_path / "out", splits={"train": ["patient001", "patient009"]})
    with pytest.raises(ValueError, match="spacing must be three positive numbers"):
        convert_h5(crafted, tmp_path / "out", spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="cannot read the splits file"):
        convert_h5(crafted, tmp_path / "out", splits=tmp_path / "missing.json")
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_h5(crafted, tmp_path / "out")

"""The embedded synthetic dataset: valid for nnU-Net and for the scribble validator, seeded, small and quick."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_mamba.data.scribble_dataset import validate_scribble_dataset
from nnunetv2_mamba.data.synthetic import LABELS, synthetic_dataset_name, write_synthetic_dataset


def read(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image.GetSpacing()


def test_2d_scribble_dataset_passes_nnunet_and_our_checks(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    start = time.perf_counter()
    folder = write_synthetic_dataset(tmp_path / synthetic_dataset_name(2))
    assert time.perf_counter() - start < 10
    assert folder.name == "Dataset990_SyntheticScribbles"
    verify_dataset_integrity(str(folder), num_processes=1)
    summary = validate_scribble_dataset(folder, progress=False)
    assert (summary.num_training, summary.num_dense, summary.num_test) == (16, 16, 4)
    assert summary.agreeing_pixels == summary.compared_pixels > 0  # simulated scribbles never contradict
    assert all(n > 0 for n in summary.labeled_pixels.values()) and not summary.cases_without_scribbles
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["labels"] == {**LABELS, "ignore": 4} and dataset_json["numTraining"] == 16
    image, spacing = read(folder / "imagesTr" / "case_000_0000.nii.gz")
    dense, _ = read(folder / "labelsTr_dense" / "case_000.nii.gz")
    assert image.shape == (64, 64) and image.dtype == np.float32 and spacing == (1.0, 1.0)
    for case in range(16):  # every training case shows every class
        dense, _ = read(folder / "labelsTr_dense" / f"case_{case:03d}.nii.gz")
        assert set(np.unique(dense)) == {0, 1, 2, 3}
    assert len(list((folder / "imagesTs").iterdir())) == len(list((folder / "labelsTs").iterdir())) == 4


def test_3d_dense_variant_shares_images_and_labels_with_the_scribble_variant(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    dense = write_synthetic_dataset(tmp_path / synthetic_dataset_name(3, dense=True), dims=3, dense=True,
                                    num_training=3, num_test=1)
    scribbles = write_synthetic_dataset(tmp_path / "scribbles", dims=3, num_training=3, num_test=0)
    assert dense.name == "Dataset993_SyntheticDense3D"
    verify_dataset_integrity(str(dense), num_processes=1)
    assert "ignore" not in json.loads((dense / "dataset.json").read_text())["labels"]
    image, spacing = read(dense / "imagesTr" / "case_001_0000.nii.gz")
    assert image.shape == (32, 48, 48) and spacing == (1.0, 1.0, 2.0)  # SimpleITK order (x, y, z)
    np.testing.assert_array_equal(image, read(scribbles / "imagesTr" / "case_001_0000.nii.gz")[0])
    labels = read(dense / "labelsTr" / "case_001.nii.gz")[0]
    np.testing.assert_array_equal(labels, read(scribbles / "labelsTr_dense" / "case_001.nii.gz")[0])
    np.testing.assert_array_equal(labels, read(dense / "labelsTr_dense" / "case_001.nii.gz")[0])
    scribble = read(scribbles / "labelsTr" / "case_001.nii.gz")[0]
    assert set(np.unique(scribble)) == {0, 1, 2, 3, 4} and np.all((scribble == 4) | (scribble == labels))
    assert not (scribbles / "imagesTs").exists()
    validate_scribble_dataset(scribbles, progress=False)


def test_seeded(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", num_training=2, num_test=0, shape=(40, 48), seed=3)
    b = write_synthetic_dataset(tmp_path / "b", num_training=2, num_test=0, shape=(40, 48), seed=3)
    c = write_synthetic_dataset(tmp_path / "c", num_training=2, num_test=0, shape=(40, 48), seed=4)
    for sub, name in (("imagesTr", "case_001_0000.nii.gz"), ("labelsTr", "case_001.nii.gz")):
        np.testing.assert_array_equal(read(a / sub / name)[0], read(b / sub / name)[0])
        assert not np.array_equal(read(a / sub / name)[0], read(c / sub / name)[0])
    assert read(a / "imagesTr" / "case_001_0000.nii.gz")[0].shape == (40, 48)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="dims must be 2 or 3"):
        write_synthetic_dataset(tmp_path / "x", dims=4)
    with pytest.raises(ValueError, match="shape"):
        write_synthetic_dataset(tmp_path / "x", dims=3, shape=(32, 32))
    write_synthetic_dataset(tmp_path / "x", num_training=1, num_test=0)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_synthetic_dataset(tmp_path / "x", num_training=1, num_test=0)
    write_synthetic_dataset(tmp_path / "x", num_training=2, num_test=0, overwrite=True)
    assert len(list((tmp_path / "x" / "imagesTr").iterdir())) == 2


@pytest.mark.parametrize("dims", [2, 3])
def test_decoy_blob_looks_like_the_blob_and_is_background(dims):
    """The decoy variant keeps the labels and the image of the same seed and adds, in the image only, a second blob
    of the labelled blob's brightness, away from it."""
    from scipy import ndimage

    from nnunetv2_mamba.data.synthetic import SHAPE_2D, SHAPE_3D, SPACING_2D, SPACING_3D, synthetic_case

    shape, spacing = (SHAPE_2D, SPACING_2D) if dims == 2 else (SHAPE_3D, SPACING_3D)
    for seed in range(5):
        image, label = synthetic_case(np.random.default_rng(seed), shape, spacing)
        twin_image, twin_label = synthetic_case(np.random.default_rng(seed), shape, spacing, decoy=True)
        np.testing.assert_array_equal(twin_label, label)
        changed = np.abs(twin_image - image) > 0.2  # noise and shading are the same draws
        decoy = ndimage.binary_erosion(changed)
        assert decoy.sum() >= 10 and (label[decoy] == 0).all()
        assert not ndimage.binary_dilation(label == 3, iterations=2)[decoy].any()  # apart from the labelled blob
        # background (0.2) -> blob (0.65) brightness, times the case's contrast factor in [0.9, 1.1]
        assert 0.9 * 0.45 - 0.05 < (twin_image - image)[decoy].mean() < 1.1 * 0.45 + 0.05

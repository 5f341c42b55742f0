"""Simulated scribbles: inside their structures, every present class scribbled, background near the foreground,
seeded; and the simulate-scribbles command on a dense dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunetv2_mamba.cli import main
from nnunetv2_mamba.data.scribble_dataset import validate_scribble_dataset
from nnunetv2_mamba.data.simulate_scribbles import (ScribbleStyle, case_rng, scribble_slice, simulate_scribbles,
                                                    simulate_scribbles_array, slice_axis_of)
from nnunetv2_mamba.data.synthetic import write_synthetic_dataset

IGNORE = 4


def crafted_slice() -> np.ndarray:
    """Background, a thin ring (1) around a disk (2), two separate blobs of class 3 (one a single pixel)."""
    yy, xx = np.mgrid[:80, :90]
    r = np.hypot(yy - 40, xx - 35)
    label = np.zeros((80, 90), np.int64)
    label[r <= 20] = 1
    label[r <= 16] = 2
    label[(yy - 20) ** 2 + (xx - 75) ** 2 <= 36] = 3
    label[70, 80] = 3
    return label


@pytest.mark.parametrize("style", [ScribbleStyle(), ScribbleStyle(fraction=1.0, width=1),
                                   ScribbleStyle(fraction=0.1, width=5, background_band=2.0)])
def test_scribbles_lie_inside_their_structures_and_cover_every_component(style):
    label = crafted_slice()
    scribble = scribble_slice(label, [0, 1, 2, 3], IGNORE, np.random.default_rng(0), style)
    labeled = scribble != IGNORE
    assert np.array_equal(scribble[labeled], label[labeled])
    for c in range(4):
        components, n = ndimage.label(label == c, np.ones((3, 3)))
        assert set(np.unique(components[scribble == c])) == set(range(1, n + 1)) if c else True
        assert (scribble == c).any()
    assert scribble[70, 80] == 3  # a one-pixel component keeps its pixel
    assert 0.005 < labeled.mean() < 0.25


def test_background_is_scribbled_in_a_band_around_the_foreground():
    label = crafted_slice()
    style = ScribbleStyle(background_band=0.5)
    scribble = scribble_slice(label, [0, 1, 2, 3], IGNORE, np.random.default_rng(1), style)
    radius = np.sqrt((label > 0).sum() / np.pi)
    distance = ndimage.distance_transform_edt(label == 0)
    assert distance[scribble == 0].max() <= style.background_band * radius
    empty = scribble_slice(np.zeros((30, 30), np.int64), [0, 1], 2, np.random.default_rng(0))
    assert (empty == 0).any() and set(np.unique(empty)) == {0, 2}  # a slice without foreground: background only


def test_strokes_are_contiguous_and_take_the_requested_share():
    ring = crafted_slice() == 1
    label = ring.astype(np.int64)
    full = scribble_slice(label, [1], 2, np.random.default_rng(0), ScribbleStyle(fraction=1.0, width=1)) == 1
    half = scribble_slice(label, [1], 2, np.random.default_rng(0), ScribbleStyle(fraction=0.5, width=1)) == 1
    assert ndimage.label(half, np.ones((3, 3)))[1] == 1
    assert half.sum() == pytest.approx(full.sum() / 2, abs=2)
    # a ring's stroke follows its centre line, away from both borders
    depth = ndimage.distance_transform_edt(ring)
    assert depth[full].min() >= 2


def test_seeded_and_3d_along_the_coarsest_axis():
    label = np.stack([crafted_slice()] * 3 + [np.zeros((80, 90), np.int64)])
    a = simulate_scribbles_array(label, [0, 1, 2, 3], IGNORE, case_rng(0, "x"), slice_axis=0)
    b = simulate_scribbles_array(label, [0, 1, 2, 3], IGNORE, case_rng(0, "x"), slice_axis=0)
    c = simulate_scribbles_array(label, [0, 1, 2, 3], IGNORE, case_rng(1, "x"), slice_axis=0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a[0], a[1])  # each slice drawn anew
    assert all(set(np.unique(a[z])) == {0, 1, 2, 3, IGNORE} for z in range(3))
    assert set(np.unique(a[3])) == {0, IGNORE}
    assert slice_axis_of((1.0, 1.0, 3.0)) == 2 and slice_axis_of((2.0, 2.0, 2.0)) == 0
    across = simulate_scribbles_array(np.moveaxis(label, 0, 2), [0, 1, 2, 3], IGNORE, case_rng(0, "x"), slice_axis=2)
    np.testing.assert_array_equal(np.moveaxis(across, 2, 0), a)


@pytest.mark.parametrize("dims", [2, 3])
def test_simulate_scribbles_command_on_a_dense_dataset(tmp_path, dims):
    dense = write_synthetic_dataset(tmp_path / "Dataset010_Dense", dims=dims, dense=True, num_training=3,
                                    num_test=1, shape=(40, 40) if dims == 2 else (8, 32, 32))
    splits = [{"train": ["case_000", "case_001"], "val": ["case_002"]}]
    (dense / "splits_final.json").write_text(json.dumps(splits))
    assert main(["simulate-scribbles", "-i", str(dense), "-o", str(tmp_path / "out"), "--seed", "5"]) == 0
    out = tmp_path / "out"
    summary = validate_scribble_dataset(out, progress=False)
    assert summary.num_dense == 3 and summary.num_test == 1 and summary.agreeing_pixels == summary.compared_pixels
    assert json.loads((out / "dataset.json").read_text())["labels"]["ignore"] == 4
    assert json.loads((out / "splits_final.json").read_text()) == splits
    read = lambda p: sitk.GetArrayFromImage(sitk.ReadImage(str(p)))  # noqa: E731
    np.testing.assert_array_equal(read(out / "labelsTr_dense" / "case_001.nii.gz"),
                                  read(dense / "labelsTr" / "case_001.nii.gz"))
    np.testing.assert_array_equal(read(out / "imagesTr" / "case_001_0000.nii.gz"),
                                  read(dense / "imagesTr" / "case_001_0000.nii.gz"))
    scribble = sitk.ReadImage(str(out / "labelsTr" / "case_001.nii.gz"))
    assert scribble.GetSpacing() == sitk.ReadImage(str(dense / "labelsTr" / "case_001.nii.gz")).GetSpacing()
    again = simulate_scribbles(dense, tmp_path / "again", seed=5)
    np.testing.assert_array_equal(read(again / "labelsTr" / "case_001.nii.gz"), sitk.GetArrayFromImage(scribble))


@pytest.mark.acdc
def test_density_is_close_to_manual_acdc_scribbles(acdc_dir):
    import h5py

    simulated = manual = total = 0
    for name in ("patient003_frame01", "patient004_frame15"):
        with h5py.File(acdc_dir / f"{name}.h5") as f:
            label, scribble = f["label"][()], f["scribble"][()]
        ours = simulate_scribbles_array(label.astype(np.int64), [0, 1, 2, 3], 4, case_rng(0, name), slice_axis=0)
        assert np.all((ours == 4) | (ours == label))
        simulated, manual, total = simulated + (ours < 4).sum(), manual + (scribble < 4).sum(), total + label.size
    assert 0.5 < simulated / manual < 2 and 0.005 < simulated / total < 0.03

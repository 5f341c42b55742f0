"""Metrics on crafted masks with known values, against a brute-force reference of the surface distances, and the
evaluate command end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunetv2_mamba.cli import main
from nnunetv2_mamba.evaluation.metrics import METRICS, binary_metrics, case_metrics, evaluate_folders, summarize


def brute_force_distances(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Surface distances by comparing every pair of surface voxels (float64), the definition written out."""
    cross = ndimage.generate_binary_structure(a.ndim, 1)
    surfaces = [np.argwhere(m & ~ndimage.binary_erosion(m, cross, border_value=0)) * np.asarray(spacing)
                for m in (a, b)]
    pairwise = np.linalg.norm(surfaces[0][:, None] - surfaces[1][None], axis=-1)
    return pairwise.min(1), pairwise.min(0)


def square(shape, lo, hi) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(l, h) for l, h in zip(lo, hi))] = True
    return mask


def test_overlap_metrics_of_a_shifted_square():
    reference = square((30, 30), (5, 5), (15, 15))  # 100 pixels
    prediction = square((30, 30), (5, 7), (15, 17))  # shifted 2 columns: 80 overlap, 20 fp, 20 fn
    m = binary_metrics(reference, prediction, (1.0, 1.0))
    tp, fp, fn, tn = 80, 20, 20, 900 - 120
    assert m["Dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["IoU"] == pytest.approx(tp / (tp + fp + fn))
    assert m["accuracy"] == pytest.approx((tp + tn) / 900)
    assert m["precision"] == pytest.approx(0.8) and m["sensitivity"] == pytest.approx(0.8)
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert (m["n_ref"], m["n_pred"]) == (100, 100)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (2.0, 0.7), (10.0, 1.5, 1.5), (1.0, 3.0, 0.5)])
def test_surface_distances_match_brute_force(spacing):
    rng = np.random.default_rng(len(spacing) * 10 + int(spacing[0]))
    shape = (7, 24, 20) if len(spacing) == 3 else (40, 36)
    for _ in range(4):
        a = ndimage.gaussian_filter(rng.standard_normal(shape), 2) > 0.1
        b = ndimage.gaussian_filter(rng.standard_normal(shape), 2) > 0.1
        from_pred, from_ref = brute_force_distances(b, a, spacing)
        pooled = np.concatenate([from_pred, from_ref])
        m = binary_metrics(a, b, spacing)
        assert m["HD95"] == pytest.approx(np.percentile(pooled, 95), rel=1e-12)
        assert m["ASD"] == pytest.approx(from_pred.mean(), rel=1e-12)
        assert m["ASSD"] == pytest.approx(pooled.mean(), rel=1e-12)


@pytest.mark.parametrize("shape, a, b, spacing, distance", [
    ((20, 20), (5, 5), (5, 9), (2.0, 3.0), 12.0),  # single pixels 4 columns apart, 3 mm each
    ((6, 9, 9), (1, 2, 3), (4, 2, 3), (10.0, 1.5, 1.5), 30.0),  # single voxels 3 slices of 10 mm apart
    ((6, 9, 9), (1, 2, 3), (1, 6, 6), (10.0, 1.5, 2.0), math.hypot(4 * 1.5, 3 * 2.0)),
])
def test_distances_of_single_voxels(shape, a, b, spacing, distance):
    ref, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    ref[a], pred[b] = True, True
    m = binary_metrics(ref, pred, spacing)
    assert m["HD95"] == pytest.approx(distance) and m["ASD"] == pytest.approx(distance)
    assert m["ASSD"] == pytest.approx(distance) and m["Dice"] == 0


def test_concentric_squares_and_cubes():
    """Every surface voxel of the inner square lies exactly 5 pixels from the outer one's surface."""
    outer, inner = square((40, 40), (10, 10), (31, 31)), square((40, 40), (15, 15), (26, 26))
    m = binary_metrics(outer, inner, (1.0, 1.0))
    assert m["ASD"] == pytest.approx(5.0)  # from the prediction (inner) to the reference
    assert 5.0 < m["HD95"] <= 5 * math.sqrt(2) and m["Dice"] == pytest.approx(2 * 121 / (121 + 441))
    outer3, inner3 = square((20, 20, 20), (3, 3, 3), (16, 16, 16)), square((20, 20, 20), (6, 6, 6), (13, 13, 13))
    assert binary_metrics(outer3, inner3, (2.0, 2.0, 2.0))["ASD"] == pytest.approx(6.0)


def test_shifted_disk_and_sphere_have_hd95_near_the_shift():
    yy, xx = np.mgrid[:64, :64]
    disk = (yy - 32) ** 2 + (xx - 30) ** 2 <= 15 ** 2
    shifted = np.roll(disk, 4, axis=1)
    m = binary_metrics(disk, shifted, (0.5, 0.5))
    assert m["HD95"] == pytest.approx(2.0, abs=0.5) and m["HD95"] <= 2.0 + 1e-9  # 4 pixels of 0.5 mm
    zz, yy, xx = np.mgrid[:24, :40, :40]
    ball = ((zz - 12) * 2.0) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 12 ** 2  # spacing (2, 1, 1)
    assert binary_metrics(ball, np.roll(ball, 3, axis=0), (2.0, 1.0, 1.0))["HD95"] == pytest.approx(6.0, abs=1.0)


def test_empty_masks_follow_the_documented_convention():
    empty, blob = np.zeros((10, 10), bool), square((10, 10), (2, 2), (5, 5))
    both_empty = binary_metrics(empty, empty, (1.0, 1.0))
    assert all(math.isnan(both_empty[k]) for k in ("Dice", "IoU", "precision", "sensitivity", "HD95", "ASD", "ASSD"))
    assert both_empty["accuracy"] == 1 and both_empty["specificity"] == 1
    false_positive = binary_metrics(empty, blob, (1.0, 1.0))
    assert false_positive["Dice"] == 0 and false_positive["precision"] == 0
    assert math.isnan(false_positive["sensitivity"]) and math.isnan(false_positive["HD95"])
    missed = binary_metrics(blob, empty, (1.0, 1.0))
    assert missed["Dice"] == 0 and missed["sensitivity"] == 0 and math.isnan(missed["precision"])
    assert math.isnan(missed["ASD"]) and missed["n_pred"] == 0


def test_singleton_axes_are_dropped():
    """A 2D image read by nnU-Net as (1, y, x) with spacing 999 must be evaluated in 2D, not as a one-slice slab."""
    a, b = square((30, 30), (5, 5), (20, 20)), square((30, 30), (8, 6), (22, 19))
    assert binary_metrics(a[None], b[None], (999.0, 1.0, 1.0)) == binary_metrics(a, b, (1.0, 1.0))


def test_summaries_leave_nan_out_and_average_classes():
    ref = np.array([[0, 1, 1], [0, 2, 2]])
    cases = [case_metrics(ref, ref, [0, 1, 2], (1.0, 1.0)),
             case_metrics(ref, np.where(ref == 2, 0, ref), [0, 1, 2], (1.0, 1.0)),
             case_metrics(np.where(ref == 2, 0, ref), np.where(ref == 2, 0, ref), [0, 1, 2], (1.0, 1.0))]
    summary = summarize(cases, {0: "background", 1: "a", 2: "b"})
    b = summary["per_class"][2]
    assert b["mean"]["Dice"] == pytest.approx(0.5)  # 1 and 0; NaN (absent from both) left out
    assert (b["num_empty_reference"], b["num_empty_prediction"]) == (1, 2)
    assert b["mean"]["HD95"] == 0  # only the first case defines it
    fg = summary["foreground_mean"]["Dice"]
    assert fg == pytest.approx((summary["per_class"][1]["mean"]["Dice"] + 0.5) / 2)
    assert summary["mean_with_background"]["Dice"] == pytest.approx(
        np.mean([summary["per_class"][c]["mean"]["Dice"] for c in (0, 1, 2)]))


def write(array: np.ndarray, spacing, path) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(list(reversed(spacing)))
    sitk.WriteImage(image, str(path))


@pytest.fixture
def folders(tmp_path):
    """Two 3D cases (spacing 5 x 1 x 2 mm) with predictions, a dataset.json with an ignore label."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir(), pred_dir.mkdir()
    spacing = (5.0, 1.0, 2.0)
    for i, shift in enumerate((0, 2)):
        ref = np.zeros((6, 20, 20), np.uint8)
        ref[1:5, 4:12, 4:12] = 1
        ref[2:4, 14:18, 5:9] = 2
        pred = np.roll(ref, shift, axis=2)
        if i == 1:
            pred[pred == 2] = 0  # class 2 missed
        write(ref, spacing, ref_dir / f"case{i}.nii.gz")
        write(pred, spacing, pred_dir / f"case{i}.nii.gz")
    dataset_json = {"labels": {"background": 0, "a": 1, "b": 2, "ignore": 3}, "file_ending": ".nii.gz",
                    "channel_names": {"0": "x"}, "numTraining": 2}
    (tmp_path / "dataset.json").write_text(json.dumps(dataset_json))
    return ref_dir, pred_dir, tmp_path / "dataset.json"


def test_evaluate_command_writes_json_csv_and_table(folders, tmp_path, capsys):
    ref_dir, pred_dir, dataset_json = folders
    assert main(["evaluate", "-ref", str(ref_dir), "-pred", str(pred_dir), "-djfile", str(dataset_json),
                 "-o", str(tmp_path / "out" / "metrics")]) == 0
    printed = capsys.readouterr().out
    assert "foreground mean" in printed and "HD95 (mm)" in printed and "b: 0 empty reference(s), 1 empty" in printed
    results = json.loads((tmp_path / "out" / "metrics.json").read_text())
    case1 = {c["case"]: c for c in results["per_case"]}["case1"]["metrics"]
    assert case1["2"]["Dice"] == 0 and case1["2"]["HD95"] is None  # NaN is written as null
    ref, pred = (sitk.GetArrayFromImage(sitk.ReadImage(str(d / "case1.nii.gz"))) == 1 for d in (ref_dir, pred_dir))
    expected = binary_metrics(ref, pred, (5.0, 1.0, 2.0))  # spacing in array order (z, y, x)
    assert expected["ASD"] != binary_metrics(ref, pred, (2.0, 1.0, 5.0))["ASD"]  # the order matters here
    assert all(case1["1"][k] == pytest.approx(expected[k]) for k in METRICS)
    assert results["per_class"]["1"]["mean"]["HD95"] == pytest.approx(expected["HD95"] / 2)  # case0 is perfect
    rows = (tmp_path / "out" / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["case", "label", "name", "Dice"] and len(rows) == 1 + 2 * 3 + 3 + 2


def test_evaluate_in_pixels_and_default_dataset_json(folders):
    ref_dir, pred_dir, dataset_json = folders
    results = evaluate_folders(ref_dir, pred_dir, dataset_json, use_spacing=False, progress=False)
    assert results["settings"]["distance_unit"] == "pixel"
    ref, pred = (sitk.GetArrayFromImage(sitk.ReadImage(str(d / "case1.nii.gz"))) == 1 for d in (ref_dir, pred_dir))
    assert results["per_case"][1]["metrics"][1]["ASSD"] == pytest.approx(
        binary_metrics(ref, pred, (1.0, 1.0, 1.0))["ASSD"])
    (pred_dir / "dataset.json").write_text(dataset_json.read_text())  # nnU-Net puts one beside its predictions
    assert main(["evaluate", "-ref", str(ref_dir), "-pred", str(pred_dir), "--pixels"]) == 0
    assert (pred_dir / "metrics.json").is_file() and (pred_dir / "metrics.csv").is_file()


def test_evaluate_rejects_scribble_references_and_missing_files(folders):
    ref_dir, pred_dir, dataset_json = folders
    scribble = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_dir / "case0.nii.gz")))
    scribble[0] = 3  # the ignore label
    write(scribble, (5.0, 1.0, 2.0), ref_dir / "case0.nii.gz")
    with pytest.raises(ValueError, match=r"case0.nii.gz: reference values \[3\].*labelsTr_dense"):
        evaluate_folders(ref_dir, pred_dir, dataset_json, progress=False)
    (ref_dir / "case1.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"no reference for prediction\(s\) \['case1.nii.gz'\]"):
        evaluate_folders(ref_dir, pred_dir, dataset_json, progress=False)


def test_a_perfect_prediction_scores_perfectly():
    m = binary_metrics(np.eye(5, dtype=bool), np.eye(5, dtype=bool), (1.0, 1.0))
    assert set(METRICS) <= set(m)
    assert [m[k] for k in METRICS] == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_worker_processes_give_the_same_results(folders):
    ref_dir, pred_dir, dataset_json = folders
    one = evaluate_folders(ref_dir, pred_dir, dataset_json, progress=False)
    two = evaluate_folders(ref_dir, pred_dir, dataset_json, num_processes=2, progress=False)
    assert json.dumps(one, default=str) == json.dumps(two, default=str)

"""benchmarks/acdc_scribble.py at its smoke budget on real ACDC data (one patient per split of splits_heldout.json),
so that the benchmark cannot rot: every method trains (the equal wall-clock baseline as long as WeakMamba), predicts a
user's own held-out slices, is scored per volume and per slice and lands in the table, the JSON and the plot; a
second run resumes, i.e. trains nothing again. benchmarks/pseudo_label_quality.py then scores the pseudo labels of
that WeakMamba training, and benchmarks/ensemble_weights.py cross-fits its member weights over the test patients."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers.benchmark_scripts import BENCHMARKS, run_script
from scipy import ndimage

from nnunetv2_mamba.data.convert_h5 import convert_h5

pytestmark = [pytest.mark.slow, pytest.mark.acdc]

METHODS = {"nnU-Net (scribbles)", "nnU-Net (scribbles), equal wall-clock", "WeakMamba ensemble",
           "WeakMamba cnn alone", "WeakMamba vit alone", "WeakMamba mamba alone", "nnU-Net (dense, upper bound)",
           "MambaUNet alone (scribbles)", "SwinUNet alone (scribbles)"}


def own_test_slices(acdc_dir: Path, folder: Path) -> tuple[Path, Path]:
    """Eight mid-ventricle slices of two val patients the smoke run does not use (it takes the first of each split), as
    a user would pass their own held-out patients: converted alone by convert-h5, images and dense labels in two
    folders."""
    splits = json.loads((acdc_dir / "splits_heldout.json").read_text())
    raw = convert_h5(acdc_dir, folder / "raw", mode="2d", splits={"test": sorted(splits["val"])[1:3]})
    images, labels = folder / "images", folder / "labels"
    images.mkdir()
    labels.mkdir()
    for frame in sorted({p.name.split("_slice")[0] for p in (raw / "labelsTs").iterdir()}):
        slices = sorted((raw / "labelsTs").glob(f"{frame}_slice*.nii.gz"))
        for label in slices[len(slices) // 2 - 1: len(slices) // 2 + 1]:
            case = label.name.removesuffix(".nii.gz")
            os.link(label, labels / label.name)
            os.link(raw / "imagesTs" / f"{case}_0000.nii.gz", images / f"{case}_0000.nii.gz")
    return images, labels


def largest_components(segmentation: np.ndarray) -> np.ndarray:
    """What nnU-Net's largest-component post-processing keeps of each class: its 8-connected components of the
    largest size (all of them where several share it); the rest becomes background."""
    result = np.zeros_like(segmentation)
    for c in (1, 2, 3):
        components, count = ndimage.label(segmentation == c, np.ones((3,) * segmentation.ndim))
        if count:
            sizes = np.bincount(components.ravel())[1:]
            result[np.isin(components, 1 + np.flatnonzero(sizes == sizes.max()))] = c
    return result


def test_error_breakdown_splits_false_positives_by_their_distance_to_the_heart(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from acdc_scribble import error_breakdown

    reference, prediction = np.zeros((2, 32, 32), np.uint8), np.zeros((2, 32, 32), np.uint8)
    reference[0, 10:20, 10:20] = 3  # LV, 100 pixels; the second case holds no structure
    prediction[0, 10:19, 10:21] = 3  # misses row 19 (10 pixels), adds column 20 (9, adjacent)
    prediction[0, 12, 12] = 2  # MYO inside the LV: one more missed and one false positive next to the heart
    prediction[0, 0:2, 28:32] = 3  # 8 pixels at least 12.7 pixels from the LV: a false blob
    prediction[1, 5:7, 5:7] = 1  # 4 pixels of RV where there is no heart: far
    for name, volume in (("references", reference), ("predictions", prediction)):
        (tmp_path / name).mkdir()
        for case, image in enumerate(volume):
            sitk.WriteImage(sitk.GetImageFromArray(image), str(tmp_path / name / f"case{case}.nii.gz"))
    errors = error_breakdown(tmp_path / "predictions", tmp_path / "references", [1, 2, 3])
    assert errors == pytest.approx({"FN": 0.11, "FP near": 0.10, "FP far": 0.12})
    (tmp_path / "predictions" / "case0.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"references holds no foreground of classes \[1, 2, 3\]"):
        error_breakdown(tmp_path / "predictions", tmp_path / "references", [1, 2, 3])


def test_pseudo_label_quality_splits_misses_by_depth_and_scores_the_supervised_pixels(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from pseudo_label_quality import score

    truth, label = torch.zeros(1, 1, 12, 12, dtype=torch.long), torch.zeros(1, 1, 12, 12, dtype=torch.long)
    truth[0, 0, 4:10, 4:10] = 1  # a 36-pixel structure ...
    truth[0, 0, :2, :2] = 1  # ... and a 4-pixel one, not predicted at all
    label[0, 0, 5:9, 5:10] = 1  # misses the structure's top and bottom rows and left column: 16 boundary pixels
    label[0, 0, 11, 0] = 1  # one false positive
    everywhere = torch.ones_like(truth, dtype=torch.bool)
    assert score(label, truth, {1: "A"}, everywhere) == {
        "A": round(40 / 61, 3), "mean Dice": round(40 / 61, 3), "FN": 0.5, "FN <= 3 px": 0.4, "FN > 3 px": 0.0,
        "FN whole": 0.1, "FP": 0.025, "left out": 0.0}
    supervised = everywhere.clone()
    supervised[0, 0, 9] = False  # the bottom row (6 missed pixels) unsupervised
    assert score(label, truth, {1: "A"}, supervised) == {
        "A": round(40 / 55, 3), "mean Dice": round(40 / 55, 3), "FN": 0.35, "FN <= 3 px": 0.25, "FN > 3 px": 0.0,
        "FN whole": 0.1, "FP": 0.025, "left out": 0.15}


def test_smoke_budget_reports_every_method_and_resumes(acdc_dir, tmp_path):
    images, labels = own_test_slices(acdc_dir, tmp_path / "test")
    work = tmp_path / "work"
    arguments = ["--budget", "smoke", "--patients", "1", "--processes", "1", "--ablation", "--data", str(acdc_dir),
                 "--work", str(work), "--test-images", str(images), "--test-labels", str(labels), "--device", "cpu",
                 "--seeds", "0"]
    first = run_script("acdc_scribble", arguments)
    # WeakMamba, baseline, equal wall-clock baseline, dense upper bound, two ablation networks
    assert first.count("nnUNetv2_train") == 6
    preparation = json.loads((work / "preparation.json").read_text())
    heldout = json.loads((acdc_dir / "splits_heldout.json").read_text())
    assert preparation["source"]["splits"] == {k: sorted(heldout[k])[:1] for k in ("train", "val", "test")}

    (table,) = (work / "smoke").glob("acdc_scribble_smoke_test-*.md")
    results = json.loads(table.with_suffix(".json").read_text())
    assert {row["method"] for row in results["results"]} == METHODS
    assert all(name in table.read_text() for name in METHODS)
    assert results["test"]["slices"] == 8 and results["test"]["patients"] == ["patient019", "patient028"]
    assert len(results["test"]["volumes"]) == 4  # two frames of two patients, two slices each
    assert [t["target"] for t in results["targets"]] == [
        "WeakMamba >= nnU-Net (scribbles) + 0.03, equal iterations",
        "WeakMamba >= nnU-Net (scribbles), equal wall-clock", "WeakMamba >= 0.95 x the dense bound"]
    assert all(t["verdict"] == "undecided (1 seed; 3 decide)" for t in results["targets"])
    equal_time = json.loads((work / "smoke" / "seed0" / "equal_time.json").read_text())
    assert equal_time["epochs"] > 2  # WeakMamba's epochs take longer than the baseline's
    for method, (row,) in results["per_seed"].items():
        for key in ("RV", "MYO", "LV", "mean Dice", "slice Dice", "slice Dice, LCC"):
            assert 0 <= row[key] <= 1, (method, key, row[key])
        assert row["HD95 (mm)"] is None or row["HD95 (mm)"] >= 0
        assert 0 <= row["FN"] <= 1 and row["FP near"] >= 0 and row["FP far"] >= 0, row
        assert row["train s"] > 0
        assert row["iterations"] == (2 * equal_time["epochs"] if method.endswith("equal wall-clock") else 4), method
        assert results["summaries"][method]["mean Dice"]["mean"] == row["mean Dice"]
    assert set(results["curves_first_seed"]) == {"WeakMamba", "nnU-Net (scribbles)",
                                                 "nnU-Net (scribbles), equal wall-clock",
                                                 "nnU-Net (dense, upper bound)", "MambaUNet alone (scribbles)",
                                                 "SwinUNet alone (scribbles)"}
    assert len(results["curves_first_seed"]["WeakMamba"]["mean_fg_dice_mamba"]) == 2  # one per epoch, per member
    scored = next((work / "smoke").glob("test-*")) / "seed0"
    postprocessed = sorted((scored / "predictions" / "WeakMamba_ensemble__largest_component").glob("*.nii.gz"))
    assert len(postprocessed) == 8
    for file in postprocessed:
        raw = sitk.GetArrayFromImage(sitk.ReadImage(str(file.parent.with_name("WeakMamba_ensemble") / file.name)))
        kept = sitk.GetArrayFromImage(sitk.ReadImage(str(file)))
        assert np.array_equal(kept, largest_components(raw))
    volume = sitk.ReadImage(str(next((scored / "volumes" / "WeakMamba_ensemble").glob("*.nii.gz"))))
    assert volume.GetSize()[2] == 2 and volume.GetSpacing()[2] == 10.0  # the converter's stated slice spacing
    assert table.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    quality = work / "pseudo_label_quality.json"
    run_script("pseudo_label_quality",
               ["--budget", "smoke", "--work", str(work), "--crops", "4", "--margins", "1", "--out", str(quality)])
    rows = {row["pseudo label"]: row for row in json.loads(quality.read_text())["rows"]}
    cleaned = ", scribbled components"  # the default configuration's rule, which the smoke variant trains with
    assert set(rows) == {"cnn alone", "vit alone", "mamba alone", "mix (random weights)",
                         f"mix (random weights){cleaned}", f"mix (random weights), scribbles kept{cleaned}",
                         f"mix (equal weights){cleaned}", f"true labels{cleaned}",
                         f"mix (random weights){cleaned}, margin 1"}
    truth = rows[f"true labels{cleaned}"]  # the rule removes whole components without a scribble, adds nothing
    assert truth["FP"] == truth["FN <= 3 px"] == truth["FN > 3 px"] == 0 and truth["FN"] == truth["FN whole"]
    for row in rows.values():
        assert row["FN"] == pytest.approx(row["FN <= 3 px"] + row["FN > 3 px"] + row["FN whole"], abs=2e-3), row
    # 1 where an untrained mix is all boundary
    assert 0 <= rows[f"mix (random weights){cleaned}, margin 1"]["left out"] <= 1

    run_script("ensemble_weights", ["--budget", "smoke", "--work", str(work), "--test-images", str(images),
                                    "--test-labels", str(labels), "--step", "0.5"])
    (weights,) = (work / "smoke").glob("ensemble_weights_smoke_test-*_seed0.json")
    weights = json.loads(weights.read_text())
    assert [row["weights"] for row in weights["results"]] == ["equal weights", "cross-fitted",
                                                              "chosen on the test patients"]
    assert all(0 <= row["mean Dice"] <= 1 for row in weights["results"])
    # the members' mean softmax is the ensemble up to where nnU-Net's sliding-window windows overlap
    ensemble = results["per_seed"]["WeakMamba ensemble"][0]
    assert weights["results"][0]["mean Dice"] == pytest.approx(ensemble["slice Dice"], abs=0.005)
    assert weights["members"] == ["cnn", "vit", "mamba"] and len(weights["groups"]) == 2
    assert all(len(c["weights"]) == 3 and math.isclose(sum(c["weights"]), 1) for c in weights["chosen"])

    second = run_script("acdc_scribble", arguments)
    assert "nnUNetv2_train" not in second and "nnUNetv2_predict" not in second and "convert ..." not in second
    assert json.loads(table.with_suffix(".json").read_text())["per_seed"] == results["per_seed"]

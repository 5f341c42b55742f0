"""benchmarks/acdc_clicks.py at its smoke budget on real ACDC data (two patients per split of splits_heldout.json),
so that the benchmark cannot rot: the click model and the network without clicks train, the click model predicts the
test patients unprompted and in correction rounds whose click files grow by one click per missed class, every
condition is scored per volume and lands in the table, the JSON (which the docs renderer reads through ``tables``)
and the plot; a second run resumes, i.e. trains and predicts nothing again."""

from __future__ import annotations

import json

import pytest
import SimpleITK as sitk
from helpers.benchmark_scripts import BENCHMARKS, run_script

pytestmark = [pytest.mark.slow, pytest.mark.acdc]

ROWS = ["UMambaBot2 (no click branch)", "UMambaBot2Click, no clicks", "UMambaBot2Click, 1 click per class",
        "UMambaBot2Click, 3 clicks per class"]


def test_smoke_budget_scores_every_click_round_and_resumes(acdc_dir, tmp_path, monkeypatch):
    work = tmp_path / "work"
    arguments = ["--budget", "smoke", "--patients", "2", "--seeds", "0", "--clicks", "1", "3", "--processes", "1",
                 "--device", "cpu", "--data", str(acdc_dir), "--work", str(work)]
    first = run_script("acdc_clicks", arguments)
    assert first.count("nnUNetv2_train") == 2
    payload = json.loads((work / "smoke" / "acdc_clicks_smoke_test.json").read_text())
    heldout = json.loads((acdc_dir / "splits_heldout.json").read_text())
    assert payload["scored patients"] == sorted(heldout["test"])[:2]
    assert [row["method"] for row in payload["results"]] == ROWS
    assert [point["clicks"] for point in payload["curve"]] == [0, 1, 2, 3]
    clicks_given = []
    for name, (row,) in payload["per_seed"].items():
        for key in ("RV", "MYO", "LV", "mean Dice"):
            assert 0 <= row[key] <= 1, (name, key, row[key])
        assert row["iterations"] == 4 and row["train s"] > 0
        clicks_given.append(row["clicks per slice"])
    assert clicks_given[:2] == [0, 0] and clicks_given[2:] == sorted(clicks_given[2:])
    assert clicks_given[2] <= 3  # one click per missed class and slice in a round
    assert [t["verdict"] for t in payload["targets"]] == ["undecided (1 seed; 2 decide)"] * 2

    scored = work / "smoke" / "test" / "seed0"
    labels = work / "converted" / "Dataset400_ACDC2D" / "labelsTs"
    for file in sorted((scored / "clicks" / "3").glob("*.json")):
        final = json.loads(file.read_text())["clicks"]
        first_round = json.loads((scored / "clicks" / "1" / file.name).read_text())["clicks"]
        assert final[:len(first_round)] == first_round  # rounds add clicks, never move them
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(labels / file.name.replace(".json", ".nii.gz"))))
        for click in final:
            column, row = click["point"]
            assert reference[row, column] == click["label"]  # on the structure it names, in (x, y) order
    table = (work / "smoke" / "acdc_clicks_smoke_test.md").read_text()
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from acdc_clicks import tables

    assert tables(payload) in table and all(name in table for name in ROWS)
    assert (work / "smoke" / "acdc_clicks_smoke_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    second = run_script("acdc_clicks", arguments)
    assert "nnUNetv2_train" not in second and "predicting" not in second and "convert ..." not in second
    assert json.loads((work / "smoke" / "acdc_clicks_smoke_test.json").read_text())["per_seed"] == payload["per_seed"]

    third = run_script("acdc_clicks", arguments + ["--background-clicks"])  # only the new click model trains
    assert third.count("nnUNetv2_train") == 1 and "UMambaBot2ClickBackground" in third
    background = json.loads((work / "smoke" / "acdc_clicks_smoke_test_background.json").read_text())
    assert [row["method"] for row in background["results"]] == [ROWS[0]] + [
        row.replace("UMambaBot2Click", "UMambaBot2Click with background clicks") for row in ROWS[1:]]
    for file in sorted((scored / "clicks_background" / "3").glob("*.json")):
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(labels / file.name.replace(".json", ".nii.gz"))))
        for click in json.loads(file.read_text())["clicks"]:
            column, row = click["point"]
            assert reference[row, column] == click["label"]  # background clicks on background

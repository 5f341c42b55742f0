"""benchmarks/acdc_semisupervised.py at its smoke budget on real ACDC data (two patients per split of
splits_heldout.json, one of the two train patients labelled), so that the benchmark cannot rot: every stage of the
recipe trains (the DAE's weights start the fine-tuning and stage 2, stage 3 continues stage 2), every row is scored
per volume on the test patients and lands in the table, the JSON (which the docs renderer reads through ``tables``)
and the plot; a second run resumes, i.e. trains and predicts nothing again; ``--rows`` re-measures some rows and takes
the others from an earlier run's JSON, which must be the same measurement."""

from __future__ import annotations

import json
import math

import pytest
from helpers.benchmark_scripts import BENCHMARKS, run_script

ROWS = ["supervised only", "DAE -> supervised", "DAE -> consistency (stage 2)",
        "full recipe: DAE -> consistency -> pseudo labels"]


@pytest.fixture
def semisupervised(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import acdc_semisupervised

    return acdc_semisupervised


def test_labelled_patients_spread_over_the_pathology_groups(semisupervised):
    choose_labelled = semisupervised.choose_labelled

    train = [f"patient{i:03d}" for i in range(1, 61)]
    assert choose_labelled(train, 3) == ["patient011", "patient031", "patient051"]
    assert choose_labelled(list(reversed(train)), 2) == ["patient016", "patient046"]
    with pytest.raises(SystemExit, match="needs 1 to 59"):
        choose_labelled(train, 60)


def test_reused_runs_must_be_the_same_measurement(semisupervised, tmp_path):
    labelled = {7: ["patient010", "patient023"]}
    schedules = {stage: s._asdict() for stage, s in semisupervised.trainer_schedules("cpu").items()}
    earlier = {"budget": semisupervised.describe("cpu"), "schedules": schedules, "seeds": [0, 1], "on": "test",
               "scored patients": ["patient005"], "settings": {"7": {"labelled patients": labelled[7]}}}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier))

    def reuse(file=path, seeds=(0, 1), on="test", scored=("patient005",), patients=labelled):
        return semisupervised.earlier_run(file, "cpu", list(seeds), on, list(scored), patients)

    assert reuse() == earlier
    assert reuse(patients={3: ["patient011"]}) == earlier  # a new setting joins the earlier one
    assert reuse(file=None) is None
    with pytest.raises(SystemExit, match=r"its seeds \[0, 1\] differ from this run's \[0\]"):
        reuse(seeds=[0])
    with pytest.raises(SystemExit, match="its on 'test' differ from this run's 'val'"):
        reuse(on="val")
    with pytest.raises(SystemExit, match=r"its scored patients \['patient005'\] differ from this run's \['patient015'"):
        reuse(scored=["patient015"])
    with pytest.raises(SystemExit, match=r"its 7 labelled patients .* differ from this run's \['patient011'"):
        reuse(patients={7: ["patient011", "patient023"]})
    path.write_text(json.dumps({**earlier, "schedules": {**schedules, "DAE": {}}}))
    with pytest.raises(SystemExit, match="its schedules"):
        reuse()
    path.write_text("{")
    with pytest.raises(SystemExit, match=f"--reuse {path}: cannot read it as JSON"):
        reuse()


@pytest.mark.slow
@pytest.mark.acdc
def test_smoke_budget_reports_every_row_and_resumes(acdc_dir, tmp_path, monkeypatch):
    work = tmp_path / "work"
    arguments = ["--budget", "smoke", "--labelled", "1", "--patients", "2", "--seeds", "0", "--processes", "1",
                 "--device", "cpu", "--data", str(acdc_dir), "--work", str(work)]
    first = run_script("acdc_semisupervised", arguments)
    assert first.count("nnUNetv2_train") == 5  # supervised, DAE, DAE -> supervised, consistency, pseudo labels
    assert first.count("-pretrained_weights") == 2

    payload = json.loads((work / "smoke" / "acdc_semisupervised_smoke_test.json").read_text())
    heldout = json.loads((acdc_dir / "splits_heldout.json").read_text())
    assert payload["scored patients"] == sorted(heldout["test"])[:2]
    setting = payload["settings"]["1"]
    assert setting["labelled patients"] == [sorted(heldout["train"])[1]]
    assert [row["method"] for row in payload["results"]] == ROWS
    for name in ROWS:
        (row,) = setting["per_seed"][name]
        for key in ("RV", "MYO", "LV", "mean Dice"):
            assert 0 <= row[key] <= 1, (name, key, row[key])
        assert row["HD95 (mm)"] is None or math.isnan(row["HD95 (mm)"]) or row["HD95 (mm)"] >= 0
        assert row["train s"] > 0
    iterations = {name: (r[0]["segmentation iterations"], r[0]["DAE iterations"])
                  for name, r in setting["per_seed"].items()}
    assert iterations == {ROWS[0]: (12, 0), ROWS[1]: (12, 6), ROWS[2]: (6, 6), ROWS[3]: (12, 6)}
    assert [g["stage"] for g in setting["gains"]] == ["DAE pre-training", "consistency (stage 2)",
                                                        "pseudo labels (stage 3)", "full recipe over supervised only"]
    assert payload["targets"] == [{"target": "full recipe >= supervised only + 0.03 with 7 labelled patients",
                                   "verdict": "not run (--labelled without 7)"}]
    table = (work / "smoke" / "acdc_semisupervised_smoke_test.md").read_text()
    assert all(name in table for name in ROWS)
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from acdc_semisupervised import tables

    assert tables(payload) in table
    assert (work / "smoke" / "acdc_semisupervised_smoke_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    volumes = list((work / "smoke" / "test" / "seed0" / "1L" / "volumes" / "reference").glob("*.nii.gz"))
    assert len(volumes) == 4  # two frames of two test patients

    second = run_script("acdc_semisupervised", arguments)
    assert "nnUNetv2_train" not in second and "nnUNetv2_predict" not in second and "convert ..." not in second
    again = json.loads((work / "smoke" / "acdc_semisupervised_smoke_test.json").read_text())
    assert again["settings"]["1"]["per_seed"] == setting["per_seed"]

    # Re-measure stages 2 and 3 only: the supervised rows (their evaluations gone) come from the first run's JSON,
    # and so does a labelled setting this run does not have.
    earlier = tmp_path / "earlier.json"
    other = {**setting, "labelled patients": ["patient999"]}
    earlier.write_text(json.dumps({**payload, "settings": {"5": other, **payload["settings"]}}))
    evaluations = work / "smoke" / "test" / "seed0" / "1L" / "evaluations"
    for slug in ("supervised_only", "DAE____supervised"):
        (evaluations / f"{slug}.json").unlink()
    third = run_script("acdc_semisupervised", arguments + ["--rows", "consistency", "recipe", "--reuse", str(earlier)])
    assert "nnUNetv2_train" not in third and "nnUNetv2_predict" not in third
    assert not (evaluations / "supervised_only.json").exists()
    reused = json.loads((work / "smoke" / "acdc_semisupervised_smoke_test.json").read_text())
    assert reused["settings"]["1"]["per_seed"] == setting["per_seed"] and reused["settings"]["5"] == other
    assert [(row["labelled"], row["method"]) for row in reused["results"]] == [(n, r) for n in "15" for r in ROWS]
    assert reused["curves_setting"] == 1 and reused["curves_first_seed"] == payload["curves_first_seed"]
    first_run, this_run = (f"{p['machine']['date']} ({p['machine']['cpu']})" for p in (payload, reused))
    dates = {n: {name: reused["measured"][n][name] for name in ROWS} for n in "15"}
    assert dates == {"1": {**{name: first_run for name in ROWS[:2]}, **{name: this_run for name in ROWS[2:]}},
                     "5": {name: first_run for name in ROWS}}

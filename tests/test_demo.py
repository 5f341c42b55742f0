"""The README's main job, `nnunetv2_mamba demo`, on two of its runs with the smoke schedule: the whole chain (dataset,
nnU-Net planning and preprocessing, our plans, training, prediction, evaluation, table) must keep working."""

from __future__ import annotations

import io
import json

import pytest

from nnunetv2_mamba.cli import main
from nnunetv2_mamba.demo import DemoRun, run_demo

pytestmark = pytest.mark.slow


def test_demo_trains_predicts_evaluates_and_prints_its_table(tmp_path, monkeypatch):
    # run_demo sets these for its folder; monkeypatch restores them afterwards
    for name, value in (("nnUNet_raw", ""), ("nnUNet_preprocessed", ""), ("nnUNet_results", ""),
                        ("nnUNet_extTrainer", ""), ("nnUNet_n_proc_DA", "1")):
        monkeypatch.setenv(name, value)
    runs = (DemoRun(None, "2d", trainer="nnUNetTrainerMamba_smoke"),
            DemoRun("UMambaBot2", "2d", trainer="nnUNetTrainerMamba_smoke"))
    out = io.StringIO()
    results = run_demo(tmp_path, runs, device="cpu", out=out)

    printed = out.getvalue()
    assert "| architecture | configuration | trainer | params | s/iter | iterations | Dice (test) |" in printed
    assert [r["architecture"] for r in results] == ["nnU-Net U-Net", "UMambaBot2"]
    for result in results:
        assert result["iterations"] == 4  # nnUNetTrainerMamba_smoke: 2 epochs x 2 iterations
        assert 0.0 <= result["dice"] <= 1.0 and result["params"] > 0
    assert json.loads((tmp_path / "demo_results.json").read_text()) == results
    assert (tmp_path / "logs" / "02_UMambaBot2_2d.log").stat().st_size > 0


def test_demo_command_refuses_an_unknown_architecture(capsys):
    assert main(["demo", "--only", "NoSuchNet"]) == 2
    assert "matches none of" in capsys.readouterr().out

"""The benchmarks' training lock (benchmarks/acdc_scribble.py's ``run_training``, used by every ACDC benchmark): a
second run on a work folder stops with the lock's path while the first trains, and a finished training is reused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from filelock import FileLock

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


class FakeTraining(NamedTuple):
    slug: str = "Dataset001_X__nnUNetTrainerX__nnUNetPlans__nnUNet_results"

    def model_folder(self, seed_folder: Path) -> Path:
        return seed_folder / "model"


@pytest.fixture
def run_training(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from acdc_scribble import run_training

    return run_training


def finished(seed_folder: Path, training: FakeTraining) -> dict:
    """A training's checkpoint and cost record, as a completed run leaves them."""
    (seed_folder / "model" / "fold_0").mkdir(parents=True)
    (seed_folder / "model" / "fold_0" / "checkpoint_final.pth").touch()
    (seed_folder / "training").mkdir()
    record = {"iterations": 3, "seconds": 1.5}
    (seed_folder / "training" / f"{training.slug}.json").write_text(json.dumps(record))
    return record


def test_a_second_run_stops_while_the_first_holds_the_lock(tmp_path, run_training):
    training = FakeTraining()
    finished(tmp_path, training)
    lock_path = tmp_path / "training" / f"{training.slug}.lock"
    with FileLock(lock_path):  # the first run, still training
        with pytest.raises(SystemExit) as stop:
            run_training(training, 0, tmp_path, tmp_path, torch.device("cpu"), print)
    assert str(lock_path) in str(stop.value) and "another process is training" in str(stop.value)
    assert training.slug in str(stop.value) and "--work" in str(stop.value)


def test_a_finished_training_is_reused_and_its_lock_released(tmp_path, run_training):
    training = FakeTraining()
    record = finished(tmp_path, training)
    said: list[str] = []
    assert run_training(training, 0, tmp_path, tmp_path, torch.device("cpu"), said.append) == record
    assert said == []  # nothing trained
    with FileLock(tmp_path / "training" / f"{training.slug}.lock", timeout=0):  # released: no Timeout
        pass

"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before torch (and OpenMP) load, inherited by the command lines the tests start: the xdist workers of pytest.ini
# share the cores, and busy-waiting OpenMP threads would slow each other several-fold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from helpers.scan_paths import use_scan
from helpers.scribble_nnunet import scribble_environment

REPO = Path(__file__).resolve().parents[1]
ACDC_DIR = Path(os.environ.get("NNUNETV2_MAMBA_ACDC", REPO.parent / "shared" / "data" / "acdc_scribble"))


THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)


@pytest.fixture
def acdc_dir() -> Path:
    """The real ACDC scribble data (WSL4MIS HDF5 layout); skips where it is not present (a user's machine)."""
    if not (ACDC_DIR / "splits.json").is_file():
        pytest.skip(f"ACDC scribble data not found at {ACDC_DIR} (set NNUNETV2_MAMBA_ACDC to its folder); "
                    "it is only available in this project's CI")
    return ACDC_DIR


@pytest.fixture(params=["pytorch", "fused"])
def scan_impl(request, monkeypatch) -> str:
    """Run a test with each selective-scan implementation (see :func:`helpers.scan_paths.use_scan`)."""
    return use_scan(request.param, monkeypatch)


@pytest.fixture(scope="module")
def scribble_env(tmp_path_factory) -> dict[str, str]:
    """The planned and preprocessed synthetic scribble dataset (prepared once per session), results per module."""
    return scribble_environment(tmp_path_factory, "weak_mamba_results")


@pytest.fixture
def nnunet_paths(scribble_env, monkeypatch) -> dict[str, str]:
    """nnU-Net's folders of :func:`scribble_env` in this test's environment."""
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, scribble_env[key])
    return scribble_env
